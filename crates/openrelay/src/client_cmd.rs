//! `openrelay client`: the SOCKS5 proxy over two hops.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use directory::DirectorySource;

/// Client options.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The signed relay directory.
    #[arg(long, value_name = "FILE")]
    directory: PathBuf,
    /// A public key trusted to sign the directory (base64, from `openrelay directory
    /// keygen`). Repeatable. The client refuses a directory signed by any other key.
    #[arg(long, value_name = "KEY", required = true)]
    trust: Vec<String>,
    /// Where the SOCKS5 proxy listens. Keep it on loopback: anyone who can reach it can
    /// use your tunnel.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
}

pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<()> {
    let keys = args
        .trust
        .iter()
        .map(|k| directory::decode_verifying_key(k))
        .collect::<Result<Vec<_>, _>>()
        .context("a --trust key is unusable")?;
    let dir = directory::FileSource::new(args.directory.clone(), keys)
        .load()
        .with_context(|| format!("the directory {} is refused", args.directory.display()))?;
    let handle = client::run::run_client(client::run::ClientSettings {
        directory: dir,
        socks: args.socks,
        seed: None,
        fwmark: None,
    })
    .await
    .with_context(|| format!("cannot listen on {} for SOCKS5", args.socks))?;
    println!("SOCKS5 proxy on {}", handle.socks);
    let mut status = handle.status.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = status.changed() => {
                if r.is_err() {
                    break;
                }
                println!("{}", describe(&status.borrow_and_update()));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = handle.shutdown.send(());
    let _ = handle.task.await;
    Ok(())
}

pub(crate) fn describe(s: &client::run::Status) -> String {
    use client::run::Status;
    match s {
        Status::Connecting { ingress, egress } => {
            format!("connecting through {ingress} → {egress}")
        }
        Status::Connected {
            ingress,
            egress,
            reconnects: 0,
        } => format!("connected through {ingress} → {egress}"),
        Status::Connected {
            ingress,
            egress,
            reconnects,
        } => {
            format!("reconnected through {ingress} → {egress} (reconnect {reconnects})")
        }
        Status::Retrying { reason } => format!("connection lost: {reason}"),
        Status::NoRoute { reason } => format!("no usable route: {reason}"),
    }
}
