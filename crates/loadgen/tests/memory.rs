//! Memory that an egress frees for resting clients goes back to the system, with mimalloc
//! as in the relay image: each worker and the tasks it spawns run on one thread, so every
//! block is freed on the thread that allocated it. The sessions' UDP first goes through
//! flows of the worker's own, with no stack, which close once idle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use loadgen::client::Traffic;
use loadgen::{drive, Plan, Sink};
use relay::config::RelayConfig;
use relay::run::{run_egress, Idle};
use tunnel::StaticSecret;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 2_000;
/// What each rested session must give back at least: its boxed `tunnel::Session` is
/// dropped, and 2,586 to 2,715 bytes per session came back here (three debug runs,
/// 2026-12-07, with gotatun's keys kept as bytes; about 5 KiB while they were ring's
/// 544-byte keys, 11 to 12 KiB while the key slots were inline); without the egress acting
/// on `Rest`, nothing.
const MIN_FREED_PER_REST: u64 = 1536;
/// The clients' rest time here.
const REST_AFTER: Duration = Duration::from_secs(3);

fn rss() -> u64 {
    loadgen::proc::rss(std::process::id()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_close_when_idle_and_rested_sessions_give_their_memory_back() {
    let key = StaticSecret::generate();
    let config = format!(
        "private_key = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_sessions = 10000\n\
         report_interval_secs = 3600\nallow_destinations = [\"127.0.0.1/32\"]\nworkers = 2\n",
        key.to_base64()
    );
    let mut settings = RelayConfig::parse(&config, Path::new("memory-test.toml"))
        .unwrap()
        .egress()
        .unwrap();
    settings.idle = Idle {
        udp_flow: Duration::from_secs(1),
        stack: Duration::from_secs(1),
    };
    let egress = run_egress(settings).await.unwrap();
    let sink = Sink::start().await.unwrap();
    let plan = Plan {
        target: egress.local_addr,
        relay_key: key.public_key(),
        sessions: SESSIONS,
        sockets: 16,
        rate: 400.0,
        window: 64,
        traffic: Traffic {
            sink: sink.addr(),
            packets: 3,
            payload_len: 32,
            rest_after: Some(REST_AFTER),
            tcp_sink: None,
        },
        retry_after: Duration::from_secs(2),
        max_attempts: 8,
        deadline: Duration::from_secs(120),
    };
    // The clients stay alive to the end, so their memory is not what comes back. They are
    // not polled until they are to rest.
    let (outcome, mut clients) = drive(&plan).await.unwrap();
    assert_eq!(
        (outcome.admitted, outcome.failed),
        (SESSIONS, 0),
        "sessions admitted, failed"
    );
    let mut counters = egress.counters.clone();
    let opened = tokio::time::timeout(
        Duration::from_secs(20),
        counters.wait_for(|c| c.udp_flows_opened == SESSIONS as u64),
    )
    .await
    .expect("every session opens a UDP flow")
    .unwrap()
    .udp_flows_opened;
    assert_eq!(egress.current().stacks_started, 0, "UDP needs no stack");
    tokio::time::timeout(
        Duration::from_secs(30),
        counters.wait_for(|c| c.udp_flows_closed == opened),
    )
    .await
    .expect("every flow closes once idle")
    .unwrap();
    let stopped = settled_rss().await;

    // Every client has been quiet for longer than its rest time: run them, and they rest,
    // all in one timer tick. Some of that burst of `Rest`s may not fit the egress's socket
    // buffers; those sessions keep their keys until they expire, as after any lost `Rest`.
    clients.keep_for(Duration::from_secs(1)).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        counters.wait_for(|c| c.sessions_rested == SESSIONS as u64),
    )
    .await;
    let rested_sessions = egress.current().sessions_rested;
    assert!(
        rested_sessions >= SESSIONS as u64 * 9 / 10,
        "only {rested_sessions} of {SESSIONS} sessions rested"
    );
    let rested = settled_rss().await;
    let freed = stopped.saturating_sub(rested);
    eprintln!(
        "RSS after {rested_sessions} sessions rested {} KiB: {} bytes per session back",
        rested / 1024,
        freed / rested_sessions
    );
    assert!(
        freed >= rested_sessions * MIN_FREED_PER_REST,
        "only {freed} bytes came back from {rested_sessions} rested sessions (RSS {stopped} -> {rested})"
    );
    let c = egress.current();
    assert_eq!(c.sessions_closed, 0);
    assert_eq!(c.sessions_asleep, rested_sessions);
}

/// The resident size once freed pages have gone back. mimalloc hands them back once they
/// have been free for a second, the next time any thread takes or frees a page. A relay
/// in service does that all the time; this one is otherwise quiet, so the test takes and
/// frees pages itself.
async fn settled_rss() -> u64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // (Untouched, so that they add no resident memory of their own.)
    drop(
        (0..64)
            .map(|_| Vec::<u8>::with_capacity(256 * 1024))
            .collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    rss()
}
