//! Heap allocations per packet on the data path, counted with dhat's testing mode.
//!
//! One test in this file, run without libtest (`harness = false`, see `testbed::run_alone`):
//! dhat counts the whole process, so nothing may run beside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use tunnel::wire::build_udp;
use tunnel::{Action, Classified};

mod support;
use support::{pair, transmitted};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const PACKETS: u64 = 200;

fn blocks() -> u64 {
    dhat::HeapStats::get().total_blocks
}

fn data_packets_allocate_nothing_once_their_buffers_come_back() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = Instant::now();
    let support::Pair {
        mut relay,
        mut client,
        mut server,
        from,
    } = pair(now);
    let mut out = Vec::with_capacity(16);

    // 1,228 bytes: gotatun pads it to 1,232 in the buffer it encrypts in.
    let ip = build_udp(
        "10.0.0.2:1000".parse().unwrap(),
        "10.0.0.1:2000".parse().unwrap(),
        &[0x5a; 1200],
    )
    .unwrap();
    // Warm up: the first data packets confirm the session, and the first one classified
    // enters the relay's rate limiter's table of sources.
    for _ in 0..8 {
        client.encapsulate(now, &ip, &mut out);
        let d = transmitted(&mut out);
        let Classified::Index { msg, .. } = relay.classify(now, from, &d).unwrap() else {
            panic!("a data message");
        };
        server.receive(now, msg, &mut out).unwrap();
        out.clear();
    }

    // Nothing given back: each message and each decrypted packet takes one buffer.
    let mut datagrams = Vec::with_capacity(PACKETS as usize);
    let before = blocks();
    for _ in 0..PACKETS {
        client.encapsulate(now, &ip, &mut out);
        datagrams.push(transmitted(&mut out));
    }
    let encapsulate = blocks() - before;
    let mut delivered = Vec::with_capacity(PACKETS as usize);
    let before = blocks();
    for d in &datagrams {
        // The way relays take datagrams: classified first, then given to their session.
        let Classified::Index { msg, .. } = relay.classify(now, from, d).unwrap() else {
            panic!("a data message");
        };
        server.receive(now, msg, &mut out).unwrap();
        delivered.extend(out.drain(..).filter_map(|a| match a {
            Action::Deliver(p) => Some(p),
            _ => None,
        }));
    }
    let decapsulate = blocks() - before;
    assert_eq!(delivered.len() as u64, PACKETS);
    assert!(
        delivered.iter().all(|p| *p == ip),
        "packets come out as they went in"
    );
    assert!(
        encapsulate <= PACKETS,
        "{encapsulate} allocations for {PACKETS} encapsulations"
    );
    assert!(
        decapsulate <= PACKETS,
        "{decapsulate} allocations for {PACKETS} decapsulations"
    );

    // As a relay runs: what it has sent and passed on comes back as spares. Then the
    // packet to encrypt is written into a spare, encrypted in it and sent from it, and the
    // datagram to decrypt is copied into one: no new buffer at all.
    for b in datagrams.drain(..).chain(delivered.drain(..)) {
        spare::give(b);
    }
    let before = blocks();
    let mut passed = 0;
    for _ in 0..PACKETS {
        client.encapsulate(now, &ip, &mut out);
        let d = transmitted(&mut out);
        let Classified::Index { msg, .. } = relay.classify(now, from, &d).unwrap() else {
            panic!("a data message");
        };
        spare::give(d);
        server.receive(now, msg, &mut out).unwrap();
        for a in out.drain(..) {
            if let Action::Deliver(p) = a {
                assert_eq!(p, ip, "the packet comes out as it went in");
                passed += 1;
                spare::give(p);
            }
        }
    }
    let recycled = blocks() - before;
    assert_eq!(passed, PACKETS);
    assert_eq!(
        recycled, 0,
        "allocations for {PACKETS} packets through both ends with their buffers given back"
    );
}

fn main() {
    testbed::run_alone(data_packets_allocate_nothing_once_their_buffers_come_back);
}
