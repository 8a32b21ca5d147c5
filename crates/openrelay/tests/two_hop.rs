//! The whole network over real UDP sockets on loopback, driven by real curl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use client::refill::RefillStatus;
use openrelay::demo::network::DemoAccount;
use openrelay::demo::{http, DemoNetwork, DemoOptions};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::process::Command;

async fn start() -> DemoNetwork {
    start_with(relay::udp::Offload::On).await
}

async fn start_with(offload: relay::udp::Offload) -> DemoNetwork {
    let mut net = DemoNetwork::start(DemoOptions {
        offload,
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    net
}

async fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "120"])
        .args(args)
        .output()
        .await
        .expect("curl is installed (apt-get install curl)")
}

fn proxy(net: &DemoNetwork) -> String {
    net.client.socks.to_string()
}

/// Fetches `url` through the client's SOCKS5 proxy, checks that curl succeeded, and
/// returns the body.
async fn fetch(net: &DemoNetwork, url: &str) -> String {
    let out = curl(&["--socks5-hostname", &proxy(net), url]).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_a_page_through_two_hops() {
    let net = start().await;
    fetch_page(&net).await;
    // The traffic really crossed both relays.
    let ingress = net.ingress.current();
    assert!(ingress.forwarded > 0, "{ingress}");
    assert!(egress_sum(&net, |c| c.forwarded) > 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_arrives_intact() {
    download_is_byte_exact(relay::udp::Offload::On, 50 * 1024 * 1024).await;
}

/// The relays' plain UDP path (no GSO/GRO, one datagram per call) carries the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_arrives_intact_with_offloads_off() {
    download_is_byte_exact(relay::udp::Offload::Off, 10 * 1024 * 1024).await;
}

async fn download_is_byte_exact(offload: relay::udp::Offload, size: usize) {
    let net = start_with(offload).await;
    let url = format!("http://{}/bytes/{size}", net.web);
    let direct = curl(&["--noproxy", "*", &url]).await;
    assert!(direct.status.success());
    assert_eq!(direct.stdout.len(), size);
    let tunneled = curl(&["--socks5-hostname", &proxy(&net), &url]).await;
    assert!(
        tunneled.status.success(),
        "{}",
        String::from_utf8_lossy(&tunneled.stderr)
    );
    assert_eq!(tunneled.stdout.len(), size);
    assert_eq!(
        Sha256::digest(&tunneled.stdout),
        Sha256::digest(&direct.stdout),
        "the download through two hops differs from the original"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associate_round_trips() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let net = start().await;

    // SOCKS5 UDP ASSOCIATE by hand.
    let mut ctl = tokio::net::TcpStream::connect(net.client.socks)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ctl.write_all(&[5, 1, 0]).await.unwrap();
    let mut sel = [0u8; 2];
    ctl.read_exact(&mut sel).await.unwrap();
    assert_eq!(sel, [5, 0]);
    ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut reply = [0u8; 10];
    ctl.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0, "UDP ASSOCIATE refused");
    let relay = SocketAddr::from((
        [reply[4], reply[5], reply[6], reply[7]],
        u16::from_be_bytes([reply[8], reply[9]]),
    ));

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = Vec::new();
    socks::wire::encode_udp_datagram(
        &socks::Target::Ip(echo_addr),
        b"ping through two hops",
        &mut msg,
    )
    .unwrap();
    let mut buf = [0u8; 2048];
    let mut got = None;
    for _ in 0..10 {
        sock.send_to(&msg, relay).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
        {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    let got = got.expect("no UDP reply through the tunnel");
    let d = socks::wire::parse_udp_datagram(&got).unwrap();
    assert_eq!(d.target, socks::Target::Ip(echo_addr));
    assert_eq!(d.payload, b"echo:ping through two hops");

    // A reply of 1,205 bytes fits one tunnel MTU and comes back.
    let big = vec![0x5a; 1200];
    let mut msg = Vec::new();
    socks::wire::encode_udp_datagram(&socks::Target::Ip(echo_addr), &big, &mut msg).unwrap();
    let mut echoed = None;
    for _ in 0..10 {
        sock.send_to(&msg, relay).await.unwrap();
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
        {
            echoed = Some(buf[..n].to_vec());
            break;
        }
    }
    let echoed = echoed.expect("no reply to the 1,200-byte datagram");
    let d = socks::wire::parse_udp_datagram(&echoed).unwrap();
    assert_eq!(d.payload.len(), 1205);
    assert_eq!(&d.payload[5..], &big[..]);

    // A burst of numbered datagrams: whatever arrives, arrives in the order sent, with
    // the relays running one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(net.ingress.workers.len(), cores);
    let mut order = Vec::new();
    for burst in 0..15u32 {
        for i in 0..20u32 {
            let mut msg = Vec::new();
            let n = burst * 20 + i;
            socks::wire::encode_udp_datagram(
                &socks::Target::Ip(echo_addr),
                &n.to_be_bytes(),
                &mut msg,
            )
            .unwrap();
            sock.send_to(&msg, relay).await.unwrap();
        }
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
        {
            let d = socks::wire::parse_udp_datagram(&buf[..n]).unwrap();
            if let Some(seq) = d.payload.strip_prefix(b"echo:") {
                order.push(u32::from_be_bytes(seq.try_into().unwrap()));
            }
        }
    }
    assert!(
        order.len() >= 150,
        "only {} of 300 echoes came back",
        order.len()
    );
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "reordered or duplicated: {order:?}"
    );
    drop(ctl);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_refuses_destinations_outside_its_allowlist() {
    let net = start().await;
    // Loopback addresses other than the allowlisted web server's, and private networks.
    let target = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let url = format!("http://{}/", target.local_addr().unwrap());
    let out = curl(&["--socks5-hostname", &proxy(&net), &url]).await;
    assert!(
        !out.status.success(),
        "a loopback destination that is not allowlisted was reached"
    );
    let out = curl(&[
        "--socks5-hostname",
        &proxy(&net),
        "--connect-timeout",
        "20",
        "http://10.255.255.1:80/",
    ])
    .await;
    assert!(!out.status.success());
    // Counters reach the handles a moment after the refusals went out.
    let refused = || egress_sum(&net, |c| c.dropped_policy);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while refused() < 2 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused(), 2, "each refused flow is counted once");
    // The allowlisted destination still works.
    let ok = curl(&[
        "--socks5-hostname",
        &proxy(&net),
        &format!("http://{}/", net.web),
    ])
    .await;
    assert!(ok.status.success());
    net.shutdown().await;
}

/// A destination the egress may reach but that refuses the connection: the client's
/// connection is refused too, and the egress counts it as a failed connection, not as a
/// policy refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_is_counted_and_refused_to_the_client() {
    let net = start().await;
    // A port on the allowlisted address with nothing listening on it.
    let closed = {
        let l = std::net::TcpListener::bind((net.web.ip(), 0)).unwrap();
        l.local_addr().unwrap()
    };
    let out = curl(&[
        "--socks5-hostname",
        &proxy(&net),
        &format!("http://{closed}/"),
    ])
    .await;
    assert!(!out.status.success(), "a closed port answered");
    let failed = || egress_sum(&net, |c| c.tcp_connect_failed);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while failed() < 1 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed(), 1, "the failed connection is counted once");
    assert_eq!(egress_sum(&net, |c| c.dropped_policy), 0);
    let shown = net
        .egresses
        .iter()
        .filter_map(|e| e.handle.as_ref())
        .map(|h| h.current().to_string())
        .collect::<String>();
    assert!(shown.contains("tcp_connect_failed=1"), "{shown}");
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_the_egress_restarts() {
    let mut net = start().await;
    let egress_name = match &*net.client.status.borrow() {
        client::run::Status::Connected { egress, .. } => egress.clone(),
        other => panic!("{other:?}"),
    };
    let i = net.egress_index(&egress_name).unwrap();
    net.stop_egress(i).await.unwrap();
    let allowed = vec![ipnet::IpNet::from(net.web.ip())];
    net.start_egress(i, allowed).await.unwrap();

    // The restarted egress has forgotten the session; the client notices, sets up a new
    // one with fresh keys, and a retried fetch succeeds.
    assert_reconnects(&net).await;
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reconnects_after_the_ingress_restarts() {
    let mut net = start().await;
    net.restart_ingress().await.unwrap();
    assert_eq!(
        net.ingress.current().sessions_created,
        0,
        "a restarted ingress starts empty"
    );
    assert_reconnects(&net).await;
    assert!(net.ingress.current().sessions_admitted >= 1);
    net.shutdown().await;
}

async fn assert_reconnects(net: &DemoNetwork) {
    let url = format!("http://{}/", net.web);
    let mut ok = false;
    for _ in 0..12 {
        let out = curl(&["--socks5-hostname", &proxy(net), "--max-time", "5", &url]).await;
        if out.status.success() {
            ok = true;
            break;
        }
    }
    assert!(ok, "no successful fetch after the egress restarted");
    let status = net.client.status.borrow().clone();
    assert!(
        matches!(status, client::run::Status::Connected { reconnects, .. } if reconnects >= 1),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_moves_to_another_operators_egress_when_its_egress_stays_down() {
    let mut net = start().await;
    let first = match &*net.client.status.borrow() {
        client::run::Status::Connected { egress, .. } => egress.clone(),
        other => panic!("{other:?}"),
    };
    let i = net.egress_index(&first).unwrap();
    net.stop_egress(i).await.unwrap();

    let url = format!("http://{}/", net.web);
    let mut ok = false;
    for _ in 0..20 {
        let out = curl(&["--socks5-hostname", &proxy(&net), "--max-time", "5", &url]).await;
        if out.status.success() {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "no successful fetch after the egress went down for good"
    );
    let status = net.client.status.borrow().clone();
    let client::run::Status::Connected { egress, .. } = status else {
        panic!("{status:?}");
    };
    assert_ne!(egress, first, "still on the dead egress");
    let operator = |name: &str| {
        net.egresses
            .iter()
            .find(|e| e.name == name)
            .unwrap()
            .operator
            .clone()
    };
    assert_ne!(
        operator(&egress),
        operator(&first),
        "the new egress is of the same operator"
    );
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_resolved_at_the_egress() {
    let net = start().await;
    // "localhost" resolves at the egress (to its loopback, which the demo allowlists).
    let url = format!("http://localhost:{}/", net.web.port());
    assert!(fetch(&net, &url).await.contains(http::PAGE_MARKER));
    // A name that does not exist fails promptly, with the proxy's "host unreachable".
    let started = std::time::Instant::now();
    let out = curl(&[
        "--socks5-hostname",
        &proxy(&net),
        "http://no-such-host.invalid/",
    ])
    .await;
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "resolution failure took {:?}",
        started.elapsed()
    );
    net.shutdown().await;
}

/// Starts the network with the relays `unapproved` running an unapproved image, and waits
/// for the client to give up.
async fn refused(unapproved: &[&str]) -> (DemoNetwork, String) {
    let net = DemoNetwork::start(DemoOptions {
        unapproved: unapproved.iter().map(|s| s.to_string()).collect(),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let mut status = net.client.status.clone();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = status.borrow_and_update().clone();
        seen.push(now.to_string());
        if matches!(now, client::run::Status::AttestationFailed { .. }) {
            return (net, now.to_string());
        }
        let changed = tokio::time::timeout_at(deadline, status.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "the client did not stop at the failed attestation; it said: {seen:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_ingress_gets_no_user_traffic() {
    let (net, status) = refused(&["ingress-north"]).await;
    assert!(
        status.contains("ingress failed attestation") && status.contains("not an approved image"),
        "{status}"
    );
    // The client cannot be used, and the ingress admitted nothing and forwarded nothing.
    let url = format!("http://{}/", net.web);
    let out = curl(&["--max-time", "3", "--socks5-hostname", &proxy(&net), &url]).await;
    assert!(!out.status.success());
    let ingress = net.ingress.current();
    assert_eq!(ingress.attestations, 1, "{ingress}");
    assert_eq!(ingress.sessions_admitted, 0, "{ingress}");
    assert_eq!(ingress.forwarded, 0, "{ingress}");
    for e in net.egresses.iter().filter_map(|e| e.handle.as_ref()) {
        assert_eq!(e.current().rx_datagrams, 0);
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_egress_gets_no_user_traffic() {
    let (net, status) = refused(&["egress-east", "egress-west"]).await;
    assert!(
        status.contains("egress failed attestation") && status.contains("not an approved image"),
        "{status}"
    );
    let url = format!("http://{}/", net.web);
    let out = curl(&["--max-time", "3", "--socks5-hostname", &proxy(&net), &url]).await;
    assert!(!out.status.success());
    // The egress gave its evidence and was told nothing more: no Hello, no payload.
    let egress: Vec<_> = net
        .egresses
        .iter()
        .filter_map(|e| e.handle.as_ref())
        .map(|h| h.current())
        .collect();
    assert_eq!(egress.iter().map(|c| c.attestations).sum::<u64>(), 1);
    for c in &egress {
        assert_eq!(c.sessions_admitted, 0, "{c}");
        assert_eq!(c.forwarded, 0, "{c}");
    }
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_try_other_relays_the_client_moves_past_an_unapproved_egress() {
    // Seeds until the first route picks egress-east, which runs an unapproved image.
    for seed in 0..64 {
        let mut net = DemoNetwork::start(DemoOptions {
            seed: Some(seed),
            unapproved: vec!["egress-east".into()],
            try_other_relays: true,
            ..DemoOptions::default()
        })
        .await
        .unwrap();
        let status = net.wait_connected(Duration::from_secs(20)).await.unwrap();
        let east = net.egresses[0].handle.as_ref().unwrap().current();
        if east.attestations == 0 {
            // The first route went to egress-west: not the case under test.
            net.shutdown().await;
            continue;
        }
        assert!(status.to_string().contains("→ egress-west"), "{status}");
        assert_eq!(east.sessions_admitted, 0, "{east}");
        assert_eq!(east.forwarded, 0, "{east}");
        fetch(&net, &format!("http://{}/", net.web)).await;
        net.shutdown().await;
        return;
    }
    panic!("no seed in 0..64 routed through egress-east first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_accounts_each_connection_spends_one_token_per_hop() {
    let mut net = DemoNetwork::start(DemoOptions {
        accounts: true,
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let issuer = net.issuer.as_ref().unwrap();
    assert_eq!(
        issuer.balance,
        issuer.credited - 2 * issuer.connections_bought as u64
    );
    let (stock, bought) = (issuer.stock.clone(), issuer.connections_bought);
    let left = |p: &std::path::Path| client::tickets::Stock::load(p).unwrap().len();
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    assert_eq!(left(&stock), bought - 1);
    let url = format!("http://{}/", net.web);
    fetch(&net, &url).await;
    assert_eq!(redeemed(&net), (1, 1));

    // The ingress restarts (forgetting everything): the client reconnects with its next
    // ticket, spending a fresh token at each hop.
    net.restart_ingress().await.unwrap();
    let mut status = net.client.status.clone();
    tokio::time::timeout(
        Duration::from_secs(40),
        status.wait_for(
            |s| matches!(s, client::run::Status::Connected { reconnects, .. } if *reconnects >= 1),
        ),
    )
    .await
    .expect("reconnected")
    .unwrap();
    assert_eq!(left(&stock), bought - 2);
    fetch(&net, &url).await;
    assert_eq!(
        net.ingress.current().tokens_redeemed,
        1,
        "the restarted ingress"
    );
    net.shutdown().await;
}

fn with_accounts() -> DemoOptions {
    DemoOptions {
        accounts: true,
        ..DemoOptions::default()
    }
}

/// Connections in the stock file.
fn in_stock(net: &DemoNetwork) -> usize {
    let path = &net.issuer.as_ref().unwrap().stock;
    client::tickets::Stock::load(path).unwrap().len()
}

/// Waits for the refill's first report.
async fn first_refill_report(net: &DemoNetwork) -> RefillStatus {
    let mut refill = net.client.refill.clone();
    let report = tokio::time::timeout(
        Duration::from_secs(40),
        refill.wait_for(|r| *r != RefillStatus::Idle),
    )
    .await
    .expect("the refill reported within 40 s")
    .unwrap()
    .clone();
    report
}

/// Tokens redeemed at the ingress and at the egresses.
fn redeemed(net: &DemoNetwork) -> (u64, u64) {
    (
        net.ingress.current().tokens_redeemed,
        egress_sum(net, |c| c.tokens_redeemed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_refill_the_client_buys_up_to_keep_while_it_fetches() {
    // One connection's tickets to start with; keeping 4, the stock is below the mark (2) as
    // soon as the client spends it.
    let keep = 4;
    let mut net = DemoNetwork::start_with(
        with_accounts(),
        DemoAccount {
            credit: 20,
            connections: 1,
            refill: Some((keep, Duration::ZERO..=Duration::ZERO)),
        },
    )
    .await
    .unwrap();
    let before = net.issuer.as_ref().unwrap().balance;
    assert_eq!(before, 20 - 2);
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    let report = first_refill_report(&net).await;
    let price = 2 * keep as u64;
    assert_eq!(
        report,
        RefillStatus::Bought {
            connections: keep,
            credit_left: before - price,
        }
    );
    assert_eq!(
        report.to_string(),
        format!(
            "tokens: bought {keep} connections ({} tokens), {} credit units left",
            2 * keep,
            before - price
        )
    );
    assert_eq!(in_stock(&net), keep);
    // The connection that spent the first ticket carries a page through both hops.
    fetch_page(&net).await;
    assert_eq!(redeemed(&net), (1, 1), "one connection, one token per hop");
    // The issuer charged exactly two tokens per connection bought, once.
    assert_eq!(net.account_credit().await.unwrap(), before - price);
    // At `keep`, above the mark: nothing more is bought.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(in_stock(&net), keep);
    assert_eq!(*net.client.refill.borrow(), report);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credit_the_refill_says_why_and_the_client_keeps_working() {
    // Two connections bought with all the credit; keeping 8, the refill starts at once.
    let mut net = DemoNetwork::start_with(
        with_accounts(),
        DemoAccount {
            credit: 4,
            connections: 2,
            refill: Some((8, Duration::ZERO..=Duration::ZERO)),
        },
    )
    .await
    .unwrap();
    assert_eq!(net.issuer.as_ref().unwrap().balance, 0);
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    let report = first_refill_report(&net).await;
    assert_eq!(
        report.to_string(),
        "tokens: refill failed: not enough credit (0 units); add credit, then it retries"
    );
    // The client goes on with what it has: the connection works, the one ticket left stays.
    fetch(&net, &format!("http://{}/", net.web)).await;
    assert!(matches!(
        *net.client.status.borrow(),
        client::run::Status::Connected { .. }
    ));
    assert_eq!(in_stock(&net), 1);
    assert_eq!(net.account_credit().await.unwrap(), 0);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_that_runs_out_of_credit_keeps_what_it_paid_for() {
    // After the first connection: 6 units, enough for one batch (two connections, 4
    // tokens) of the 8 connections wanted, not for the second.
    let mut net = DemoNetwork::start_with(
        with_accounts(),
        DemoAccount {
            credit: 8,
            connections: 1,
            refill: Some((8, Duration::ZERO..=Duration::ZERO)),
        },
    )
    .await
    .unwrap();
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    let report = first_refill_report(&net).await;
    assert_eq!(
        report,
        RefillStatus::Failed {
            bought: 2,
            reason: "not enough credit (2 units); add credit, then it retries".into(),
        }
    );
    assert_eq!(
        report.to_string(),
        "tokens: bought 2 connections (4 tokens), then the refill failed: not enough credit \
         (2 units); add credit, then it retries"
    );
    // The paid batch is in the stock, and paid once.
    assert_eq!(in_stock(&net), 2);
    assert_eq!(net.account_credit().await.unwrap(), 2);
    fetch(&net, &format!("http://{}/", net.web)).await;
    net.shutdown().await;
}

/// A counter summed over the running egresses.
fn egress_sum(net: &DemoNetwork, counter: impl Fn(&relay::counters::Counters) -> u64) -> u64 {
    net.egresses
        .iter()
        .filter_map(|e| e.handle.as_ref())
        .map(|h| counter(&h.current()))
        .sum()
}

/// Stacks started and stopped, summed over the running egresses.
fn stacks(net: &DemoNetwork) -> (u64, u64) {
    (
        egress_sum(net, |c| c.stacks_started),
        egress_sum(net, |c| c.stacks_stopped),
    )
}

/// Fetches the demo page through the proxy and checks that it came whole.
async fn fetch_page(net: &DemoNetwork) {
    let page = fetch(net, &format!("http://{}/", net.web)).await;
    assert!(page.contains(http::PAGE_MARKER));
}

async fn wait_stacks(net: &DemoNetwork, want: (u64, u64)) {
    wait_stacks_until(net, |s| s == want, &format!("{want:?}")).await;
}

/// Waits until `started` stacks have started (however many have stopped): the workers
/// publish their counters after the turn that answered, not with the answer.
async fn wait_started(net: &DemoNetwork, started: u64) {
    wait_stacks_until(net, |s| s.0 == started, &format!("({started}, _)")).await;
}

async fn wait_stacks_until(net: &DemoNetwork, done: impl Fn((u64, u64)) -> bool, want: &str) {
    wait_until(
        || done(stacks(net)),
        || format!("stacks (started, stopped) = {:?}, want {want}", stacks(net)),
    )
    .await;
}

/// Polls `done` for up to 15 s, for counters that the relays publish after the turn that
/// answered, not with the answer; `seen` says what was there instead.
async fn wait_until(done: impl Fn() -> bool, seen: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{}", seen());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fetches from `slow_web` through the proxy, in the background.
fn fetch_slowly(net: &DemoNetwork, slow: SocketAddr) -> tokio::task::JoinHandle<Output> {
    let url = format!("http://{slow}/");
    let proxy_addr = proxy(net);
    tokio::spawn(async move {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30"])
            .args(["--socks5-hostname", &proxy_addr, &url])
            .output()
            .await
            .unwrap()
    })
}

/// An HTTP server that answers after `delay`, so that a flow stays open and quiet.
async fn slow_web(delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let body = "late but whole";
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// An admitted session gets a userspace stack only once it sends a packet, keeps it while a
/// flow is open however quiet, loses it when idle, and gets a new one with its next packet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_stacks_start_on_first_packet_and_stop_when_idle() {
    let slow = slow_web(Duration::from_secs(4)).await;
    let mut net = DemoNetwork::start(DemoOptions {
        idle: relay::run::Idle {
            udp_flow: Duration::from_secs(1),
            stack: Duration::from_secs(1),
        },
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    net.wait_connected(Duration::from_secs(20)).await.unwrap();
    // The egress publishes its counters after the turn that admitted the client, which
    // may come after the client is connected.
    wait_until(
        || egress_sum(&net, |c| c.sessions_admitted) > 0,
        || "no admission counted".to_string(),
    )
    .await;
    assert_eq!(egress_sum(&net, |c| c.sessions_admitted), 1);
    // Admitted, attested and paid for, but no packet yet: no stack.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stacks(&net), (0, 0));

    fetch_page(&net).await;
    wait_started(&net, 1).await;
    // Nothing open, nothing sent: the stack stops and the session stays admitted.
    wait_stacks(&net, (1, 1)).await;

    // A flow that stays quiet for four idle periods keeps its stack, and completes.
    let fetch = fetch_slowly(&net, slow);
    wait_stacks(&net, (2, 1)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stacks(&net), (2, 1), "the open flow lost its stack");
    let out = fetch.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late but whole");
    wait_stacks(&net, (2, 2)).await;

    // The same session, a fresh stack.
    fetch_page(&net).await;
    wait_started(&net, 3).await;
    assert_eq!(
        egress_sum(&net, |c| c.sessions_admitted),
        1,
        "the client kept its one session"
    );
    net.shutdown().await;
}

/// Sessions rested so far at (the ingress, the egresses).
fn rested(net: &DemoNetwork) -> (u64, u64) {
    (
        net.ingress.current().sessions_rested,
        egress_sum(net, |c| c.sessions_rested),
    )
}

async fn wait_rested(net: &DemoNetwork, want: (u64, u64)) {
    wait_until(
        || rested(net) == want,
        || {
            format!(
                "sessions rested (ingress, egress) = {:?}, want {want:?}",
                rested(net)
            )
        },
    )
    .await;
}

/// An idle connection rests: both relays erase its keys at once. The next fetch wakes it
/// on the same session, without new tokens; and an answer that comes after the client
/// rested, on a flow still open, wakes it from the relays' side and arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_rests_and_wakes_from_either_side() {
    let slow = slow_web(Duration::from_secs(6)).await;
    let mut net = DemoNetwork::start(DemoOptions {
        rest_after: Some(Duration::from_secs(2)),
        ..with_accounts()
    })
    .await
    .unwrap();
    net.wait_connected(Duration::from_secs(30)).await.unwrap();
    fetch_page(&net).await;
    wait_rested(&net, (1, 1)).await;
    assert_eq!(net.ingress.current().sessions_asleep, 1);
    assert_eq!(egress_sum(&net, |c| c.sessions_asleep), 1);
    let tokens = redeemed(&net);
    assert_eq!(tokens, (1, 1));

    // The client wakes it.
    fetch_page(&net).await;
    assert_eq!(net.ingress.current().sessions_admitted, 1);
    assert_eq!(egress_sum(&net, |c| c.sessions_admitted), 1);
    assert_eq!(redeemed(&net), tokens, "waking spent tokens");
    wait_rested(&net, (2, 2)).await;

    // The relays wake it: the server answers 6 s after the request, long after the client
    // rested (2 s of quiet).
    let late = fetch_slowly(&net, slow);
    wait_rested(&net, (3, 3)).await;
    assert!(!late.is_finished(), "the answer came before the rest");
    let out = late.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late but whole");
    assert_eq!(egress_sum(&net, |c| c.sessions_admitted), 1);
    assert_eq!(redeemed(&net), tokens);
    net.shutdown().await;
}
