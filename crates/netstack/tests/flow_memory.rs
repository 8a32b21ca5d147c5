//! What one open TCP flow holds besides its two buffers, counted with dhat, open and then
//! quiet: an egress keeps one per connection a client holds open, however long it stays
//! idle.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use netstack::{Event, Mode, Stack, StackConfig};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));

/// Both ends' flow state, less their buffers: 4,192 bytes since the flow tables are sorted
/// vectors with room for one entry at first (4,940 with hash maps, which make room for
/// three). It was 10,252 while each stack's socket set grew to four slots for its first
/// socket (smoltcp's `SocketSet` on an empty `Vec`; a slot is 768 bytes), and 5,644 while
/// the flow table held its flows inline (four 168-byte slots for one flow).
const MAX_BOTH_ENDS: usize = 4_400;
/// The same once the flow has been quiet past the idle time: 2,840 bytes (3,448 with hash
/// maps; 5,004 before the stacks' empty queues gave back what they grew to, while it
/// carried a request and its answer).
const MAX_BOTH_ENDS_QUIET: usize = 3_072;

/// Moves packets between the two stacks until neither sends.
fn pump(client: &mut Stack, server: &mut Stack, now: Instant, events: &mut Vec<Event>) {
    for _ in 0..1000 {
        client.poll(now);
        server.poll(now);
        let mut moved = false;
        while let Some(p) = client.pop_transmit() {
            server.receive(&p);
            moved = true;
        }
        while let Some(p) = server.pop_transmit() {
            client.receive(&p);
            moved = true;
        }
        while let Some(e) = server.poll_event() {
            events.push(e);
        }
        while client.poll_event().is_some() {}
        if !moved {
            return;
        }
    }
    panic!("the stacks never went quiet");
}

fn an_open_flow_holds_little_beside_its_buffers_and_less_once_quiet() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = Instant::now();
    let client_config = StackConfig::new(Mode::Client, vec![CLIENT]);
    let server_config = StackConfig::new(Mode::Terminate, vec![EGRESS]);
    let buffers = 2 * (client_config.tcp_rx_buffer + client_config.tcp_tx_buffer);
    let mut client = Stack::new(client_config, now).unwrap();
    let mut server = Stack::new(server_config, now).unwrap();
    let mut events = Vec::with_capacity(16);
    let dst: SocketAddr = "93.184.216.34:443".parse().unwrap();
    pump(&mut client, &mut server, now, &mut events);

    let before = dhat::HeapStats::get().curr_bytes;
    let flow = client.connect(dst).unwrap();
    pump(&mut client, &mut server, now, &mut events);
    let incoming = events
        .iter()
        .find_map(|e| match e {
            Event::TcpIncoming { flow, .. } => Some(*flow),
            _ => None,
        })
        .expect("the SYN reached the egress's stack");
    server.accept(incoming).unwrap();
    pump(&mut client, &mut server, now, &mut events);
    assert_eq!(
        client.state(flow),
        Some(netstack::TcpState::Established),
        "the flow opened"
    );
    let held = dhat::HeapStats::get().curr_bytes - before;
    let beside = held.saturating_sub(buffers);
    assert!(
        held >= buffers && beside <= MAX_BOTH_ENDS,
        "{held} bytes for one flow, {beside} beside its buffers (at most {MAX_BOTH_ENDS})"
    );

    // A request and its answer, then quiet past the idle time.
    assert_eq!(client.send(flow, b"request"), Ok(7));
    pump(&mut client, &mut server, now, &mut events);
    let mut buf = [0u8; 64];
    assert_eq!(server.recv(incoming, &mut buf), Ok(7));
    assert_eq!(server.send(incoming, b"answer"), Ok(6));
    pump(&mut client, &mut server, now, &mut events);
    assert_eq!(client.recv(flow, &mut buf), Ok(6));
    // Past the delayed ACKs.
    pump(
        &mut client,
        &mut server,
        now + std::time::Duration::from_millis(200),
        &mut events,
    );
    let busy = dhat::HeapStats::get().curr_bytes - before;
    let later = now + StackConfig::DEFAULT_IDLE_BUFFERS_AFTER + std::time::Duration::from_secs(1);
    pump(&mut client, &mut server, later, &mut events);
    let quiet = dhat::HeapStats::get().curr_bytes - before;
    assert_eq!(
        (
            client.stats().buffers_given_back,
            server.stats().buffers_given_back
        ),
        (1, 1),
        "both ends went quiet"
    );
    let quiet_beside = quiet.saturating_sub(buffers);
    assert!(
        quiet < busy && quiet_beside <= MAX_BOTH_ENDS_QUIET,
        "{quiet_beside} bytes beside the buffers once quiet (at most {MAX_BOTH_ENDS_QUIET}), \
         {} while busy",
        busy - buffers
    );
}

fn main() {
    testbed::run_alone(an_open_flow_holds_little_beside_its_buffers_and_less_once_quiet);
}
