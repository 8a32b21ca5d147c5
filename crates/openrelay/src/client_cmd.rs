//! `openrelay client`: the SOCKS5 proxy over two hops.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use directory::DirectorySource;

/// Client options.
#[derive(Debug, Args)]
#[command(after_long_help = "WHOLE-HOST MODE AND THE KILL SWITCH\n\n\
With --tun (as root) the client creates the TUN device ortun0, routes all IPv4 and IPv6 \
traffic of the host into it (policy routing: table 51820, rule `not fwmark 51820`), points \
/etc/resolv.conf at the egress's resolver (100.64.0.1) and blocks everything else with \
the nftables table `inet openrelay`, from the moment it starts until it exits cleanly \
(SIGINT or SIGTERM restore routes and DNS, then lift the block). IPv6 is blocked, never \
leaked: the tunnel carries IPv4.\n\n\
If the client crashes or is killed with SIGKILL, the block stays and the host is offline \
on purpose. Run `openrelay client --unblock` (as root) to remove the block, the routes \
and the DNS change.")]
pub(crate) struct ClientArgs {
    /// The signed relay directory.
    #[arg(long, value_name = "FILE", required_unless_present = "unblock")]
    directory: Option<PathBuf>,
    /// A public key trusted to sign the directory (base64, from `openrelay directory
    /// keygen`). Repeatable. The client refuses a directory signed by any other key.
    #[arg(long, value_name = "KEY", required_unless_present = "unblock")]
    trust: Vec<String>,
    /// Whole-host mode: route all of this host's traffic through the tunnel, with a kill
    /// switch (needs root and nftables). See below.
    #[arg(long, conflicts_with = "unblock")]
    tun: bool,
    /// In whole-host mode, leave the host's DNS configuration alone.
    #[arg(long, requires = "tun")]
    no_dns: bool,
    /// When a relay fails attestation, try other relays instead of stopping.
    #[arg(long)]
    try_other_relays: bool,
    /// Accept relays whose TEE platform is out of date (its TCB lacks published security
    /// fixes). Weakens the attestation guarantee; a warning is printed for each such relay.
    #[arg(long)]
    accept_out_of_date: bool,
    /// Remove what a crashed whole-host client left behind (kill switch, routes, DNS),
    /// then exit. Needs root.
    #[arg(long)]
    unblock: bool,
    /// Where whole-host mode keeps the original /etc/resolv.conf while the tunnel is up
    /// (--unblock looks there too). Keep it on tmpfs.
    #[arg(long, value_name = "DIR", default_value = client::whole_host::STATE_DIR)]
    state_dir: PathBuf,
    /// Where the token stock is (see `openrelay account tokens`) [default: as for
    /// `openrelay account`].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where the SOCKS5 proxy listens. Keep it on loopback: anyone who can reach it can
    /// use your tunnel.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
}

pub(crate) async fn run(args: ClientArgs) -> anyhow::Result<()> {
    if args.unblock {
        let done = client::whole_host::unblock(&args.state_dir)
            .context("cannot undo the whole-host changes")?;
        for d in done {
            println!("{d}");
        }
        println!("the network is back to normal");
        return Ok(());
    }
    let Some(directory_path) = args.directory.clone() else {
        anyhow::bail!("--directory is required");
    };
    let keys = args
        .trust
        .iter()
        .map(|k| directory::decode_verifying_key(k))
        .collect::<Result<Vec<_>, _>>()
        .context("a --trust key is unusable")?;
    let dir = directory::FileSource::new(directory_path.clone(), keys)
        .load()
        .with_context(|| format!("the directory {} is refused", directory_path.display()))?;
    let mut settings = client::run::ClientSettings::new(dir, args.socks);
    settings.stock = Some(crate::account_cmd::stock_path(
        &args
            .data_dir
            .clone()
            .unwrap_or_else(crate::account_cmd::default_data_dir),
    ));
    settings.retry_after_attestation_failure = args.try_other_relays;
    settings.accept_out_of_date = args.accept_out_of_date;
    if args.accept_out_of_date {
        say("warning: --accept-out-of-date: relays on TEE platforms with known, unpatched vulnerabilities will be accepted");
    }
    if args.tun {
        return whole_host(settings, !args.no_dns, args.state_dir).await;
    }
    let handle = client::run::run_client(settings)
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
                let now = status.borrow_and_update().clone();
                say(&describe(&now));
                if matches!(now, client::run::Status::AttestationFailed { .. }) {
                    let _ = handle.shutdown.send(());
                    let _ = handle.task.await;
                    anyhow::bail!("a relay failed attestation; nothing was sent through it (use --try-other-relays to try others)");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    let _ = handle.shutdown.send(());
    let _ = handle.task.await;
    Ok(())
}

/// Whole-host mode until SIGINT or SIGTERM.
async fn whole_host(
    settings: client::run::ClientSettings,
    dns: bool,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let mut wh = client::whole_host::WholeHostSettings::new(settings);
    wh.dns = dns;
    wh.state_dir = state_dir;
    let (status_tx, mut status) = tokio::sync::watch::channel(client::run::Status::Retrying {
        reason: "starting".into(),
    });
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(client::whole_host::run_whole_host(wh, status_tx, stop_rx));
    println!(
        "whole-host mode: kill switch on; all traffic goes through the tunnel device {}",
        client::whole_host::TUN_NAME
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut stop = Some(stop);
    loop {
        tokio::select! {
            r = status.changed(), if stop.is_some() => {
                if r.is_err() {
                    continue;
                }
                say(&describe(&status.borrow_and_update()));
            }
            _ = tokio::signal::ctrl_c(), if stop.is_some() => { let _ = stop.take().map(|s| s.send(())); }
            _ = term.recv(), if stop.is_some() => { let _ = stop.take().map(|s| s.send(())); }
            r = &mut task => {
                r.context("the whole-host task failed")?.context("whole-host mode failed; the kill switch was lifted")?;
                println!("routes and DNS restored, kill switch off");
                return Ok(());
            }
        }
    }
}

/// Prints a status line; a closed standard output must not stop the client (in whole-host
/// mode that would skip restoring the host).
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub(crate) fn describe(s: &client::run::Status) -> String {
    s.to_string()
}
