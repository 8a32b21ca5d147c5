//! Cost of one packet through the sans-IO tunnel, against the cipher alone:
//! `cargo bench -p openrelay-tunnel`.
//!
//! A benchmark, not a test: it prints the median of many runs and asserts nothing about
//! speed (shared machines are noisy). What is above the cipher's line is the work of the
//! tunnel around it (copies, buffers, bookkeeping), which the relays and the client pay per
//! packet on top of the cipher.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use tunnel::wire::build_udp;
use tunnel::{Action, Nested, NestedEvent};

// The benchmark uses the two sessions of a pair, not the relay that set them up.
#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;
use support::{pair, transmitted};

/// Packets per timed run.
const BATCH: usize = 1_000;
/// A full-size TCP segment of the client's tunnel (MTU 1340 inside two hops).
const PAYLOAD: usize = 1_300;

fn median_per_packet(mut f: impl FnMut(), runs: usize) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed() / BATCH as u32
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let now = Instant::now();
    let ip = build_udp(
        "10.0.0.2:1000".parse().unwrap(),
        "10.0.0.1:2000".parse().unwrap(),
        &[0x5a; PAYLOAD],
    )
    .unwrap();
    let runs = 200;

    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).unwrap());
    let mut buf = ip.clone();
    let mut counter = 0u64;
    let cipher = median_per_packet(
        || {
            for _ in 0..BATCH {
                counter += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&counter.to_le_bytes());
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        &mut buf,
                    )
                    .unwrap();
                let _ = std::hint::black_box(tag);
            }
        },
        runs,
    );

    let support::Pair {
        mut client,
        mut server,
        ..
    } = pair(now);
    let mut out = Vec::with_capacity(16);
    let mut sent = Vec::with_capacity(BATCH);
    let encapsulate = median_per_packet(
        || {
            for _ in 0..BATCH {
                client.encapsulate(now, &ip, &mut out);
                for a in out.drain(..) {
                    if let Action::Transmit(d) = a {
                        sent.push(d);
                    }
                }
            }
            for d in sent.drain(..) {
                spare::give(d);
            }
        },
        runs,
    );

    // Decryption needs fresh messages (the replay check refuses repeats): each run seals a
    // batch and opens it, and the line compares the pair with two cipher passes.
    let mut messages: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let decapsulate = median_per_packet(
        || {
            for _ in 0..BATCH {
                client.encapsulate(now, &ip, &mut out);
                messages.push(transmitted(&mut out));
            }
            for m in messages.drain(..) {
                server.decapsulate(now, &m, &mut out).unwrap();
                for a in out.drain(..) {
                    if let Action::Deliver(p) = a {
                        spare::give(p);
                    }
                }
                spare::give(m);
            }
        },
        runs,
    );

    let outer = pair(now).client;
    let inner = pair(now).client;
    let mut nested = Nested::new(outer, inner, "198.51.100.7:51820".parse().unwrap());
    nested.set_outer_addr("100.64.0.2".parse().unwrap());
    let mut events = Vec::with_capacity(16);
    let send_inner = median_per_packet(
        || {
            for _ in 0..BATCH {
                nested.send_inner(now, &ip, &mut events);
                for e in events.drain(..) {
                    if let NestedEvent::ToIngress(d) = e {
                        spare::give(d);
                    }
                }
            }
        },
        runs,
    );

    let c = cipher.as_nanos() as f64;
    let line = |name: &str, d: Duration, seals: f64| {
        let ns = d.as_nanos() as f64;
        println!(
            "{name:<40} {ns:>8.0} ns/packet  {:>5.2}x the cipher  {:>6.0} ns above it",
            ns / (c * seals),
            ns - c * seals
        );
    };
    println!(
        "{} B IP packets, median of {runs} runs of {BATCH}",
        ip.len()
    );
    line("ChaCha20-Poly1305 seal (ring)", cipher, 1.0);
    line("Session::encapsulate", encapsulate, 1.0);
    line("encapsulate + Session::decapsulate", decapsulate, 2.0);
    line("Nested::send_inner (two seals)", send_inner, 2.0);
}
