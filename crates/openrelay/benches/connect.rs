//! Two-hop connect time on loopback, both attestations included, and the part of it spent
//! attesting: `cargo bench -p openrelay --bench connect`.
//!
//! A benchmark, not a test: it prints medians over many connects and asserts nothing about
//! speed (shared machines are noisy). The target is a whole connect under 250 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use openrelay::demo::{DemoNetwork, DemoOptions};

const RUNS: usize = 25;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut setups, mut attesting) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for _ in 0..RUNS {
            let mut net = DemoNetwork::start(DemoOptions::default()).await.unwrap();
            let status = net.wait_connected(Duration::from_secs(20)).await.unwrap();
            let client::run::Status::Connected {
                setup,
                attesting: a,
                ..
            } = status
            else {
                unreachable!("wait_connected returns Connected")
            };
            setups.push(setup);
            attesting.push(a);
            net.shutdown().await;
        }
    });
    let (setup, attest) = (median(setups.clone()), median(attesting));
    println!("two-hop connect on loopback, sim TEE at both hops, {RUNS} connects:");
    println!(
        "  whole connect (2 handshakes, 2 attestations, 2 admissions): median {:.2} ms, max {:.2} ms",
        setup.as_secs_f64() * 1e3,
        setups.iter().max().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  added by attestation (Attest → Evidence round trips, evidence, verification): median {:.2} ms ({:.0}% of the connect)",
        attest.as_secs_f64() * 1e3,
        100.0 * attest.as_secs_f64() / setup.as_secs_f64()
    );
    println!(
        "  target: whole connect under 250 ms: {}",
        if setup < Duration::from_millis(250) {
            "met"
        } else {
            "NOT met"
        }
    );
}
