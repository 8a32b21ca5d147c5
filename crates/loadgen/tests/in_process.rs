//! The load generator against an egress, and an ingress, in this process: every session is
//! admitted and its packets reach the sink.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use loadgen::client::Traffic;
use loadgen::{drive, Plan, Sink};
use relay::config::RelayConfig;
use relay::run::{run_egress, run_ingress};
use tunnel::StaticSecret;

const SESSIONS: usize = 300;
const PACKETS: usize = 3;

/// Egress settings built from a config file's text as `openrelay relay egress` builds them:
/// no TEE, no directory (so no tokens), 127.0.0.1 reachable for the sink.
fn egress_settings(key: &StaticSecret, workers: usize) -> relay::run::EgressSettings {
    let config = format!(
        "private_key = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_sessions = 1000\n\
         report_interval_secs = 3600\nallow_destinations = [\"127.0.0.1/32\"]\n\
         workers = {workers}\n",
        key.to_base64()
    );
    RelayConfig::parse(&config, Path::new("loadgen-test.toml"))
        .unwrap()
        .egress()
        .unwrap()
}

/// An egress with two workers.
async fn start_egress(key: &StaticSecret) -> relay::run::RelayHandle {
    run_egress(egress_settings(key, 2)).await.unwrap()
}

/// `sessions` against `egress`, each sending `packets` to `sink` once admitted.
fn plan(
    egress: &relay::run::RelayHandle,
    key: &StaticSecret,
    sink: &Sink,
    sessions: usize,
    packets: usize,
) -> Plan {
    Plan {
        target: egress.local_addr,
        relay_key: key.public_key(),
        sessions,
        // Sessions from 16 ports: the kernel spreads them over both workers.
        sockets: 16,
        rate: 200.0,
        window: 64,
        traffic: Traffic {
            sink: sink.addr(),
            packets,
            payload_len: 32,
            rest_after: None,
            tcp_sink: None,
        },
        retry_after: Duration::from_secs(2),
        max_attempts: 5,
        deadline: Duration::from_secs(40),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_sessions_are_admitted_and_send_their_packets() {
    let key = StaticSecret::generate();
    let egress = start_egress(&key).await;
    let sink = Sink::start().await.unwrap();
    let plan = plan(&egress, &key, &sink, SESSIONS, PACKETS);

    let (outcome, _) = drive(&plan).await.unwrap();
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
    assert_sink_gets(&sink, want, &outcome, &egress).await;
}

/// Waits up to 10 s for `want` datagrams at the sink, and fails saying what the relay counted.
async fn assert_sink_gets(
    sink: &Sink,
    want: u64,
    outcome: &loadgen::Outcome,
    relay: &relay::run::RelayHandle,
) {
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
        relay.current()
    );
}

/// `openrelay-loadgen --role ingress`: an ingress that lists the sink as its one egress
/// admits every session and forwards each one's packets to the sink, from a socket of the
/// session's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_admits_every_session_and_forwards_its_packets() {
    let key = StaticSecret::generate();
    let sink = Sink::start().await.unwrap();
    let config = format!(
        "private_key = \"{}\"\nlisten = \"127.0.0.1:0\"\nmax_sessions = 1000\n\
         report_interval_secs = 3600\negresses = [\"{}\"]\nworkers = 2\n",
        key.to_base64(),
        sink.addr()
    );
    let settings = RelayConfig::parse(&config, Path::new("loadgen-test.toml"))
        .unwrap()
        .ingress()
        .unwrap();
    let ingress = run_ingress(settings).await.unwrap();
    let plan = plan(&ingress, &key, &sink, SESSIONS, PACKETS);

    let (outcome, _) = drive(&plan).await.unwrap();
    assert_eq!(outcome.admitted, SESSIONS, "{outcome:?}");
    assert_eq!(outcome.failed, 0);
    let want = (SESSIONS * PACKETS) as u64;
    assert_sink_gets(&sink, want, &outcome, &ingress).await;
    let c = ingress.current();
    assert_eq!(c.forwarded, want, "{c}");
    assert_eq!(c.dropped_not_egress, 0, "{c}");
}

/// Idle clients keep their tunnels running: each answers `Admitted` with WireGuard's
/// keepalive (10 s after the relay's last data), which the egress authenticates, and the
/// sessions stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_answer_like_real_tunnels() {
    const IDLE_SESSIONS: usize = 20;
    let key = StaticSecret::generate();
    let egress = start_egress(&key).await;
    let sink = Sink::start().await.unwrap();
    let plan = plan(&egress, &key, &sink, IDLE_SESSIONS, 0);
    let (outcome, mut clients) = drive(&plan).await.unwrap();
    assert_eq!(outcome.admitted, IDLE_SESSIONS, "{outcome:?}");
    let before = egress.current();
    let idle = clients.keep_for(Duration::from_secs(13)).await;
    let after = egress.current();
    assert!(idle.sent >= IDLE_SESSIONS as u64, "{idle:?}");
    assert!(
        after.rx_datagrams >= before.rx_datagrams + IDLE_SESSIONS as u64,
        "the keepalives did not reach the egress: {after}"
    );
    assert_eq!(after.dropped(), 0, "{after}");
    assert_eq!(after.sessions_closed, 0, "{after}");
}

/// Sim evidence that takes as long as a slow TEE quote.
struct SlowQuote {
    inner: relay::evidence::Sim,
    delay: Duration,
}

impl relay::evidence::EvidenceSource for SlowQuote {
    fn evidence(
        &self,
        report_data: &[u8; 64],
    ) -> Result<attest::Evidence, relay::evidence::EvidenceError> {
        std::thread::sleep(self.delay);
        self.inner.evidence(report_data)
    }
}

/// Receives one datagram (waiting at most `wait` for `what`) and hands it to `session`.
async fn receive(
    sock: &tokio::net::UdpSocket,
    session: &mut tunnel::Session,
    actions: &mut Vec<tunnel::Action>,
    wait: Duration,
    what: &str,
) {
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {wait:?}"))
        .unwrap();
    session
        .decapsulate(std::time::Instant::now(), &buf[..n], actions)
        .unwrap();
}

/// Sends the datagrams among `actions` to `to` (and drops the rest).
async fn transmit(sock: &tokio::net::UdpSocket, actions: &mut Vec<tunnel::Action>, to: SocketAddr) {
    for act in actions.drain(..) {
        if let tunnel::Action::Transmit(d) = act {
            sock.send_to(&d, to).await.unwrap();
        }
    }
}

/// One session's Attest waits two seconds for its quote; meanwhile the same worker
/// handshakes and admits other sessions as fast as without it, and then the evidence
/// arrives, bound to the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_quote_does_not_hold_up_other_sessions() {
    use tokio::net::UdpSocket;
    use tunnel::wire::parse_udp;
    use tunnel::{Action, Session, SessionConfig};

    const QUOTE: Duration = Duration::from_secs(2);
    let key = StaticSecret::generate();
    // One worker: a blocked event loop would hold up every session.
    let mut settings = egress_settings(&key, 1);
    let vendor = attest::SimVendor::new(ed25519_dalek::SigningKey::from_bytes(&[3; 32]));
    let vendor_key = vendor.verifying_key();
    settings.common.evidence = Some(std::sync::Arc::new(SlowQuote {
        inner: relay::evidence::Sim::with_measurement(vendor, [9; 32]),
        delay: QUOTE,
    }));
    let egress = run_egress(settings).await.unwrap();

    // Session A: handshake, then Attest.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client_key = StaticSecret::generate();
    let mut a = Session::initiator(
        std::time::Instant::now(),
        &client_key,
        key.public_key(),
        SessionConfig::default(),
    );
    let mut actions = Vec::new();
    a.connect(std::time::Instant::now(), &mut actions);
    while !a.is_established() {
        transmit(&sock, &mut actions, egress.local_addr).await;
        let wait = Duration::from_secs(5);
        receive(&sock, &mut a, &mut actions, wait, "handshake response").await;
    }
    actions.clear();
    let nonce = [7u8; 32];
    let attest = control::Message::Attest { nonce };
    let ip = client::connection::control_packet(std::net::Ipv4Addr::UNSPECIFIED, &attest);
    a.encapsulate(std::time::Instant::now(), &ip, &mut actions);
    let asked = std::time::Instant::now();
    transmit(&sock, &mut actions, egress.local_addr).await;

    // Twenty other sessions while the quote is being made.
    let sink = Sink::start().await.unwrap();
    let plan = Plan {
        sockets: 4,
        window: 20,
        max_attempts: 3,
        deadline: Duration::from_secs(10),
        ..plan(&egress, &key, &sink, 20, 1)
    };
    let (outcome, _) = drive(&plan).await.unwrap();
    assert_eq!(outcome.admitted, 20, "{outcome:?}");
    assert!(
        asked.elapsed() < QUOTE,
        "the other sessions waited for the quote ({:?})",
        asked.elapsed()
    );
    let slowest = outcome.latency(1.0).unwrap();
    assert!(slowest < QUOTE / 2, "a session took {slowest:?}");

    // Then A's evidence: made by the slow source, bound to A's keys and nonce.
    let mut parts = control::EvidenceAssembler::default();
    let evidence = 'recv: loop {
        receive(
            &sock,
            &mut a,
            &mut actions,
            Duration::from_secs(10),
            "evidence",
        )
        .await;
        for act in actions.drain(..) {
            let Action::Deliver(ip) = act else { continue };
            let d = parse_udp(&ip).unwrap();
            let msg = control::Message::decode(d.payload).unwrap();
            if let control::Message::Evidence {
                part,
                parts: total,
                bytes,
            } = msg
            {
                if let Some(blob) = parts.add(part, total, bytes).unwrap() {
                    break 'recv attest::Evidence::decode(&blob).unwrap();
                }
            }
        }
    };
    assert!(
        asked.elapsed() >= QUOTE,
        "evidence before the quote was made"
    );
    let binding = attest::binding(
        key.public_key().as_bytes(),
        client_key.public_key().as_bytes(),
        &nonce,
    );
    let claims = attest::verify_sim(&evidence.quote, &[vendor_key]).unwrap();
    assert_eq!(claims.report_data, binding);
    // The counters reach the handle after the evidence went out: wait for them.
    let mut counters = egress.counters.clone();
    let counted = tokio::time::timeout(
        Duration::from_secs(5),
        counters.wait_for(|c| c.attestations >= 1),
    )
    .await
    .expect("the attestation is counted")
    .unwrap()
    .attestations;
    assert_eq!(counted, 1);
}

/// Drives `n` sessions, each opening one connection through the egress's userspace stack to
/// a TCP sink that answers with `answer` bytes, and waits until every client has the whole
/// answer (they then keep the connection open). Returns the egress and the sink.
async fn tcp_sessions(n: usize, answer: usize) -> (relay::run::RelayHandle, loadgen::TcpSink) {
    let key = StaticSecret::generate();
    let egress = start_egress(&key).await;
    let sink = Sink::start().await.unwrap();
    let tcp = loadgen::TcpSink::start(answer).await.unwrap();
    let mut plan = plan(&egress, &key, &sink, n, 0);
    plan.traffic.tcp_sink = Some(tcp.target());

    let (outcome, mut clients) = drive(&plan).await.unwrap();
    assert_eq!((outcome.admitted, outcome.failed), (n, 0), "{outcome:?}");
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while clients.tcp_replied() < n && tokio::time::Instant::now() < end {
        clients.keep_for(Duration::from_millis(100)).await;
    }
    assert_eq!(clients.tcp_replied(), n, "clients with all {answer} bytes");
    (egress, tcp)
}

/// With a TCP sink, every admitted session opens one connection through the egress's
/// userspace stack, gets the whole answer to its request and keeps the connection open;
/// without UDP packets, it opens no UDP flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_a_tcp_sink_hold_one_open_connection_each() {
    const N: usize = 50;
    let (egress, tcp) = tcp_sessions(N, loadgen::tcp::REQUEST.len()).await;
    assert_eq!(tcp.accepted(), N as u64);
    let c = egress.current();
    assert_eq!(c.stacks_started - c.stacks_stopped, N as u64, "{c}");
    assert_eq!(c.udp_flows_opened, 0);
}

/// A large answer (more than the egress's 256 KiB send buffer) reaches every client in
/// order through the generator's minimal TCP, which acknowledges each segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_get_an_answer_larger_than_the_egress_buffer() {
    tcp_sessions(6, 300 * 1024).await;
}
