//! Two sans-IO stacks back to back (client ↔ terminate) on a fake clock, shared by the
//! tests that drive flows through them.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use netstack::{Event, FlowError, FlowId, Mode, Stack, StackConfig, TcpState};

pub(crate) const CLIENT_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
pub(crate) const CLIENT_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
pub(crate) const EGRESS_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
pub(crate) const EGRESS_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));

pub(crate) fn dst() -> SocketAddr {
    "93.184.216.34:443".parse().expect("literal")
}

/// A client stack and a terminate stack wired together, on a clock that only moves when told.
pub(crate) struct Pair {
    pub(crate) client: Stack,
    pub(crate) server: Stack,
    pub(crate) now: Instant,
    pub(crate) client_events: Vec<Event>,
    pub(crate) server_events: Vec<Event>,
    /// Packets that crossed, both ways.
    pub(crate) crossed: usize,
}

impl Pair {
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(crate) fn with(tweak: impl Fn(&mut StackConfig)) -> Self {
        let now = Instant::now();
        let mut c = StackConfig::new(Mode::Client, vec![CLIENT_V4, CLIENT_V6]);
        c.seed = 1;
        tweak(&mut c);
        let mut s = StackConfig::new(Mode::Terminate, vec![EGRESS_V4, EGRESS_V6]);
        s.seed = 2;
        tweak(&mut s);
        Self {
            client: Stack::new(c, now).expect("client config"),
            server: Stack::new(s, now).expect("server config"),
            now,
            client_events: Vec::new(),
            server_events: Vec::new(),
            crossed: 0,
        }
    }

    /// Poll both sides and move packets until nothing moves.
    pub(crate) fn pump(&mut self) {
        for _ in 0..100_000 {
            self.client.poll(self.now);
            self.server.poll(self.now);
            let mut moved = false;
            while let Some(p) = self.client.pop_transmit() {
                self.server.receive(&p);
                moved = true;
                self.crossed += 1;
            }
            while let Some(p) = self.server.pop_transmit() {
                self.client.receive(&p);
                moved = true;
                self.crossed += 1;
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("stacks never went idle");
    }

    /// Move the clock forward in steps (so timers fire in order), pumping at each.
    pub(crate) fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            let next = [self.client.poll_at(self.now), self.server.poll_at(self.now)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .clamp(self.now + Duration::from_millis(1), end);
            self.now = next;
            self.pump();
        }
    }

    pub(crate) fn incoming(&mut self) -> Vec<(FlowId, SocketAddr, SocketAddr)> {
        let mut out = Vec::new();
        self.server_events.retain(|e| match e {
            Event::TcpIncoming { flow, src, dst } => {
                out.push((*flow, *src, *dst));
                false
            }
            _ => true,
        });
        out
    }

    /// Times each end (client, server) gave an idle flow's buffers back.
    pub(crate) fn given_back(&self) -> (u64, u64) {
        (
            self.client.stats().buffers_given_back,
            self.server.stats().buffers_given_back,
        )
    }

    /// Connect and accept one flow; returns (client flow, server flow).
    pub(crate) fn open(&mut self, to: SocketAddr) -> (FlowId, FlowId) {
        let c = self.client.connect(to).expect("connect");
        self.pump();
        let incoming = self.incoming();
        assert_eq!(incoming.len(), 1, "one SYN reported");
        let (s, src, d) = incoming[0];
        assert_eq!(d, to);
        assert_eq!(Some((src, to)), self.client.endpoints(c));
        self.server.accept(s).expect("accept");
        self.pump();
        assert_eq!(self.client.state(c), Some(TcpState::Established));
        assert_eq!(self.server.state(s), Some(TcpState::Established));
        (c, s)
    }
}

/// Write all of `data` from one side and read it on the other, pumping between.
pub(crate) fn transfer(
    pair: &mut Pair,
    from_client: bool,
    from: FlowId,
    to: FlowId,
    data: &[u8],
) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    for _ in 0..100_000 {
        let (tx, rx) = if from_client {
            (&mut pair.client, &mut pair.server)
        } else {
            (&mut pair.server, &mut pair.client)
        };
        if sent < data.len() {
            match tx.send(from, &data[sent..]) {
                Ok(n) => sent += n,
                Err(FlowError::WouldBlock) => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        loop {
            match rx.recv(to, &mut buf) {
                Ok(0) => panic!("unexpected EOF"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(FlowError::WouldBlock) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        if got.len() == data.len() {
            return got;
        }
        pair.pump();
    }
    panic!("transfer stalled at {} of {} bytes", got.len(), data.len());
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
