//! Heap allocations per packet of TCP and UDP flows through two stacks, counted with dhat's
//! testing mode: packets are taken from and given back to the thread's spares, as the relays
//! do.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use netstack::{Event, FlowError, FlowId, Mode, Stack, StackConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// A client stack and a terminate stack back to back, with every buffer the test needs made
/// up front.
struct Rig {
    client: Stack,
    server: Stack,
    now: Instant,
    /// The server's events of the last pump.
    events: Vec<Event>,
    /// The client's events of the last pump.
    client_events: Vec<Event>,
    chunk: Vec<u8>,
    buf: Vec<u8>,
}

impl Rig {
    /// Moves packets both ways until none is left; returns how many crossed. Each packet is
    /// given back once the other side has read it, as a relay gives back what it has sent.
    fn pump(&mut self) -> u64 {
        self.events.clear();
        self.client_events.clear();
        let mut crossed = 0;
        loop {
            self.client.poll(self.now);
            self.server.poll(self.now);
            let mut moved = false;
            while let Some(p) = self.client.pop_transmit() {
                self.server.receive(&p);
                spare::give(p);
                moved = true;
                crossed += 1;
            }
            while let Some(p) = self.server.pop_transmit() {
                self.client.receive(&p);
                spare::give(p);
                moved = true;
                crossed += 1;
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.events.push(e);
            }
            if !moved {
                return crossed;
            }
        }
    }

    /// Streams `total` bytes from the server's flow to the client's, as a download does;
    /// returns how many packets crossed.
    fn download(&mut self, (c, s): (FlowId, FlowId), total: usize) -> u64 {
        let (mut sent, mut got, mut crossed) = (0, 0, 0);
        while got < total {
            if sent < total {
                let n = self.chunk.len().min(total - sent);
                match self.server.send(s, &self.chunk[..n]) {
                    Ok(n) => sent += n,
                    Err(FlowError::WouldBlock) => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
            crossed += self.pump();
            loop {
                match self.client.recv(c, &mut self.buf) {
                    Ok(0) => panic!("unexpected EOF"),
                    Ok(n) => {
                        assert!(self.buf[..n].iter().all(|&b| b == 0x5a), "bytes intact");
                        got += n;
                    }
                    Err(FlowError::WouldBlock) => break,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
        crossed
    }

    /// Sends `count` datagrams from the client's `port` to `dst` and answers each from the
    /// server, as the egress answers with a destination's reply; returns the replies read.
    fn echo_udp(&mut self, port: u16, dst: SocketAddr, count: usize) -> usize {
        let from = SocketAddr::new(CLIENT, port);
        let mut replies = 0;
        for _ in 0..count {
            self.client
                .udp_send(from, dst, &self.chunk[..1200])
                .unwrap();
            self.pump();
            let mut answered = false;
            for e in self.events.drain(..) {
                if let Event::Udp(d) = e {
                    assert_eq!((d.src, d.dst, d.payload.len()), (from, dst, 1200));
                    self.server.udp_send(d.dst, d.src, &d.payload).unwrap();
                    spare::give(d.payload);
                    answered = true;
                }
            }
            assert!(answered, "the datagram reaches the server");
            self.pump();
            for e in self.client_events.drain(..) {
                if let Event::Udp(d) = e {
                    assert_eq!((d.src, d.payload.len()), (dst, 1200));
                    spare::give(d.payload);
                    replies += 1;
                }
            }
        }
        replies
    }
}

fn warm_tcp_and_udp_flows_allocate_nothing_per_packet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = Instant::now();
    let mut c = StackConfig::new(Mode::Client, vec![CLIENT]);
    c.seed = 1;
    let mut s = StackConfig::new(Mode::Terminate, vec![EGRESS]);
    s.seed = 2;
    let mut rig = Rig {
        client: Stack::new(c, now).unwrap(),
        server: Stack::new(s, now).unwrap(),
        now,
        events: Vec::with_capacity(64),
        client_events: Vec::with_capacity(64),
        chunk: vec![0x5a; 16 * 1024],
        buf: vec![0; 64 * 1024],
    };

    let dst: SocketAddr = "192.0.2.7:443".parse().unwrap();
    let cf = rig.client.connect(dst).unwrap();
    rig.pump();
    let sf = rig
        .events
        .iter()
        .find_map(|e| match e {
            Event::TcpIncoming { flow, .. } => Some(*flow),
            _ => None,
        })
        .expect("the SYN is reported");
    rig.server.accept(sf).unwrap();
    rig.pump();

    // Warm up: smoltcp's buffers, the maps and the spares reach their working size.
    rig.download((cf, sf), 1 << 20);

    let before = blocks();
    let crossed = rig.download((cf, sf), 4 << 20);
    let allocated = blocks() - before;
    assert!(crossed > 2_000, "only {crossed} packets crossed");
    assert_eq!(
        allocated, 0,
        "{allocated} allocations for {crossed} TCP packets"
    );

    let port = rig.client.udp_bind(5353).unwrap();
    let dns: SocketAddr = "192.0.2.53:53".parse().unwrap();
    rig.echo_udp(port, dns, 16);
    let before = blocks();
    let replies = rig.echo_udp(port, dns, 500);
    let allocated = blocks() - before;
    assert_eq!(replies, 500);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations for 500 UDP round trips"
    );
}

fn main() {
    testbed::run_alone(warm_tcp_and_udp_flows_allocate_nothing_per_packet);
}
