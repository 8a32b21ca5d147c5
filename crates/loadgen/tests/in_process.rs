//! The load generator against an egress in this process: every session is admitted and its
//! packets reach the sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use loadgen::client::Traffic;
use loadgen::{drive, Plan, Sink};
use relay::config::RelayConfig;
use relay::run::run_egress;
use tunnel::StaticSecret;

const SESSIONS: usize = 300;
const PACKETS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sessions_are_admitted_and_send_their_packets() {
    let key = StaticSecret::generate();
    // Built from a config file's text, as `openrelay relay egress` builds it: no TEE, no
    // directory (so no tokens), 127.0.0.1 reachable for the sink.
    let config = format!(
        "private_key = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_sessions = 1000\n\
         report_interval_secs = 3600\nallow_destinations = [\"127.0.0.1/32\"]\nworkers = 2\n",
        key.to_base64()
    );
    let settings = RelayConfig::parse(&config, Path::new("loadgen-test.toml"))
        .unwrap()
        .egress()
        .unwrap();
    let egress = run_egress(settings).await.unwrap();
    let sink = Sink::start().await.unwrap();
    let plan = Plan {
        target: egress.local_addr,
        relay_key: key.public_key(),
        sessions: SESSIONS,
        // Sessions from 16 ports: the kernel spreads them over both workers.
        sockets: 16,
        rate: 200.0,
        window: 64,
        traffic: Traffic {
            sink: sink.addr(),
            packets: PACKETS,
            payload_len: 32,
        },
        retry_after: Duration::from_secs(2),
        max_attempts: 5,
        deadline: Duration::from_secs(40),
    };

    let outcome = drive(&plan).await.unwrap();
    eprintln!(
        "admitted {} in {:?}, {} + {} retries",
        outcome.admitted, outcome.elapsed, outcome.handshake_retries, outcome.hello_retries
    );

    assert_eq!(outcome.admitted, SESSIONS, "{outcome:?}");
    assert_eq!(outcome.failed, 0);
    let mut counters = egress.counters.clone();
    let c = tokio::time::timeout(
        Duration::from_secs(10),
        counters.wait_for(|c| c.sessions_admitted >= SESSIONS as u64),
    )
    .await
    .expect("the egress counts every admission")
    .unwrap()
    .to_owned();
    assert_eq!(c.sessions_admitted, SESSIONS as u64);
    assert_eq!(c.dropped_capacity, 0);
    // Both workers served sessions, and each session stayed on its worker: a session that
    // moved would have been dropped as unknown by the other.
    assert_eq!(egress.workers.len(), 2);
    let per: Vec<u64> = egress
        .workers
        .iter()
        .map(|w| w.borrow().sessions_admitted)
        .collect();
    assert!(per.iter().all(|&n| n > 0), "{per:?}");
    assert_eq!(per.iter().sum::<u64>(), SESSIONS as u64);
    assert_eq!(c.dropped_no_session, 0);
    let want = (SESSIONS * PACKETS) as u64;
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        while sink.received() < want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "{} of {want} datagrams reached the sink; {outcome:?}; {}",
        sink.received(),
        *egress.counters.borrow()
    );
}
