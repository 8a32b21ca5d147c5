//! Heap allocations per packet on the data path, counted with dhat's testing mode.
//!
//! One test in this file: dhat counts the whole process, so nothing may run beside it.
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

#[test]
fn data_packets_cost_one_allocation_each_way_and_none_to_decrypt_into_spares() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let now = Instant::now();
    let support::Pair {
        mut relay,
        mut client,
        mut server,
        from,
    } = pair(now);
    let mut out = Vec::with_capacity(16);

    let ip = build_udp(
        "10.0.0.2:1000".parse().unwrap(),
        "10.0.0.1:2000".parse().unwrap(),
        &[0x5a; 1200],
    )
    .unwrap();
    // Warm up: the first data packets confirm the session and fill the buffer pool.
    let mut datagrams = Vec::with_capacity(PACKETS as usize);
    for _ in 0..8 {
        client.encapsulate(now, &ip, &mut out);
        let d = transmitted(&mut out);
        server.decapsulate(now, &d, &mut out).unwrap();
        out.clear();
    }

    let before = blocks();
    for _ in 0..PACKETS {
        client.encapsulate(now, &ip, &mut out);
        datagrams.push(transmitted(&mut out));
    }
    let encapsulate = blocks() - before;

    let before = blocks();
    let mut delivered = 0;
    for d in &datagrams {
        // The way relays take datagrams: classified first, then given to their session.
        let Classified::Index { msg, .. } = relay.classify(now, from, d).unwrap() else {
            panic!("a data message");
        };
        server.receive(now, msg, &mut out).unwrap();
        for a in out.drain(..) {
            if let Action::Deliver(p) = a {
                assert_eq!(p, ip, "the packet comes out as it went in");
                delivered += 1;
            }
        }
    }
    let decapsulate = blocks() - before;
    assert_eq!(delivered, PACKETS);

    // A relay gives back what it has sent and passed on: then decryption takes no new
    // buffer at all.
    for d in datagrams.drain(..) {
        spare::give(d);
    }
    for _ in 0..PACKETS {
        client.encapsulate(now, &ip, &mut out);
        datagrams.push(transmitted(&mut out));
    }
    let before = blocks();
    let mut delivered = 0;
    for d in datagrams.drain(..) {
        let Classified::Index { msg, .. } = relay.classify(now, from, &d).unwrap() else {
            panic!("a data message");
        };
        spare::give(d);
        server.receive(now, msg, &mut out).unwrap();
        for a in out.drain(..) {
            if let Action::Deliver(p) = a {
                assert_eq!(p, ip, "the packet comes out as it went in");
                delivered += 1;
                spare::give(p);
            }
        }
    }
    let recycled = blocks() - before;
    assert_eq!(delivered, PACKETS);
    assert_eq!(
        recycled, 0,
        "allocations for {PACKETS} decapsulations into spares"
    );

    // gotatun allocates each encrypted message (upstream `format_packet_data`); the input
    // buffer comes from the pool and the message becomes the `Vec` without a copy.
    assert!(
        encapsulate <= PACKETS,
        "{encapsulate} allocations for {PACKETS} encapsulations"
    );
    // The datagram is copied once into a buffer that is decrypted in place and handed out.
    assert!(
        decapsulate <= PACKETS,
        "{decapsulate} allocations for {PACKETS} decapsulations"
    );
}
