//! `openrelay demo`: the whole network on loopback, and what each hop saw.

pub mod fetch;
pub mod http;
pub mod network;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use relay::run::Observation;

pub use network::{DemoNetwork, DemoOptions};

/// Demo options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the network running after the fetch and print the SOCKS5 address, so you can
    /// point your own curl or browser at it. Stop with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("demo: starting a web server, two egress relays (operators east-net and west-net), an ingress (north-net) and a client on loopback");
    let mut net = DemoNetwork::start(DemoOptions {
        accounts: true,
        ..DemoOptions::default()
    })
    .await?;
    println!(
        "demo: directory signed by {} and verified by the client",
        net.directory_key
    );
    for r in &net.directory.relays {
        println!(
            "demo:   {:<14} {:<8?} {:<22} operator {}",
            r.name, r.role, r.endpoint, r.operator
        );
    }
    if let Some(i) = &net.issuer {
        println!(
            "demo: token issuer (attested like a relay) at {}; account {} created with OPAQUE (the password never left the client)",
            i.handle.relay.local_addr, i.account
        );
        println!(
            "demo: the operator credited {} units; logged in and bought tickets for {} connections ({} blind-signed tokens), {} units left",
            i.credited,
            i.connections_bought,
            2 * i.connections_bought,
            i.balance
        );
    }
    println!(
        "demo: client's SOCKS5 proxy on {}; connecting...",
        net.client.socks
    );
    let status = net.wait_connected(Duration::from_secs(20)).await?;
    println!("demo: {}", describe(&status));
    println!("demo: every relay runs in the sim TEE (development only): the client accepts it because the signed directory lists the sim vendor key and approves this executable's SHA-256 (what `openrelay image hash` prints for it); a relay with any other measurement is refused");

    let (line, body) = fetch::get_via_socks(net.client.socks, net.web, "/")
        .await
        .context("the fetch through two hops failed")?;
    let page = String::from_utf8_lossy(&body);
    if !line.contains("200") || !page.contains(http::PAGE_MARKER) {
        bail!("the page fetched through two hops is not the demo page: {line}");
    }
    println!(
        "demo: fetched http://{}/ through the SOCKS5 proxy: {line}, {} bytes",
        net.web,
        body.len()
    );

    // Give the relays' observer messages a moment to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut seen = BTreeSet::new();
    while let Ok(o) = net.observations.try_recv() {
        if !seen.insert(format!("{o:?}")) {
            continue;
        }
        match o {
            Observation::Ingress { client, egress } => {
                println!("demo: hop 1, ingress saw: client {client} → egress {egress}   (not the destination, not the page)")
            }
            Observation::Egress { peer, destination } => {
                println!("demo: hop 2, egress saw:  ingress {peer} → destination {destination}   (not the client's address)")
            }
        }
    }
    if let Some(i) = &net.issuer {
        let spent = net.ingress.current().tokens_redeemed
            + net
                .egresses
                .iter()
                .filter_map(|e| e.handle.as_ref())
                .map(|h| h.current().tokens_redeemed)
                .sum::<u64>();
        let left = client::tickets::Stock::load(&i.stock).map_or(0, |s| s.len());
        println!(
            "demo: tokens spent: {spent} (one at each hop; neither relay can link it to the account), tickets left for {left} more connections"
        );
    }
    println!("demo: ingress counters: {}", net.ingress.current());
    for e in &net.egresses {
        if let Some(h) = &e.handle {
            println!("demo: {} counters: {}", e.name, h.current());
        }
    }
    if args.keep {
        println!("socks5: {}", net.client.socks);
        println!("web: http://{}/", net.web);
        println!(
            "demo: network is up; try: curl --socks5-hostname {} http://{}/   (Ctrl-C to stop)",
            net.client.socks, net.web
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    net.shutdown().await;
    println!("demo: two-hop fetch ok");
    Ok(())
}

fn describe(s: &client::run::Status) -> String {
    s.to_string()
}
