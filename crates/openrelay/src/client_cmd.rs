//! `openrelay client`: the SOCKS5 proxy over two hops.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
and the DNS change.\n\n\
TOKENS AND REFILLING\n\n\
When the directory lists a token issuer, every connection spends two prepaid tokens \
(one per relay) from the stock in --data-dir. With --refill-account and --password-file \
the client buys more by itself: once fewer than half of --keep connections are left, it \
waits a random time between 1 and 20 minutes, logs in (OPAQUE: the password never leaves \
this machine) and buys tokens up to --keep connections, in batches. Tokens are bought \
ahead of time, in batches, at a random delay, so the issuer, which sees when an account \
buys and from which address, cannot tie a purchase to a connection. A larger --keep \
means fewer, larger purchases. After a failure (no credit, issuer unreachable) it retries \
after 1 minute, doubling up to an hour; after a wrong password it stops refilling and \
says so. The password file must be readable by you only (`chmod 600 FILE`), or the \
client refuses to start.")]
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
    /// Refill the token stock by itself from this account (the number `openrelay account
    /// create` printed), ahead of need and at random times; see below.
    #[arg(long, value_name = "NUMBER", requires = "password_file")]
    refill_account: Option<String>,
    /// The refill account's password: the first line of FILE, which must be readable by
    /// you only (chmod 600 FILE).
    #[arg(long, value_name = "FILE", requires = "refill_account")]
    password_file: Option<PathBuf>,
    /// Connections to keep tokens for when refilling: a refill starts once fewer than
    /// half are left, and buys up to this many.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "refill_account",
          value_parser = clap::value_parser!(u16).range(1..=MAX_KEEP))]
    keep: u16,
    /// Tests only: wait at most this many seconds before a refill instead of 1 to 20
    /// minutes (a short wait lets the issuer match a purchase with the connection that
    /// used up the stock).
    #[arg(long, value_name = "SECS", hide = true, requires = "refill_account")]
    refill_delay_secs: Option<u64>,
    /// Seconds with no packet either way after which the connection rests: the client
    /// tells both relays, and all three erase the session's keys. Keys no longer in use
    /// then cannot be taken from a relay or from this host, and an idle session costs each
    /// relay a few hundred bytes instead of its WireGuard state. The next packet sets up
    /// new keys (a handshake per hop, no new tokens). 0: never rest; keys then live up to
    /// WireGuard's 180 s.
    #[arg(long, value_name = "SECS", default_value_t = control::REST_AFTER.as_secs())]
    rest_after: u64,
    /// Where the SOCKS5 proxy listens. Keep it on loopback: anyone who can reach it can
    /// use your tunnel.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
}

/// The random wait before each refill: long enough that a purchase says nothing about the
/// connection that made the stock run low.
const REFILL_DELAY: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(20 * 60);

/// The largest --keep: the issuer's default weekly cap is 500 tokens, 250 connections.
const MAX_KEEP: i64 = 250;

/// The refill settings from the arguments; refuses a password file others can read before
/// anything else happens.
fn refill_settings(args: &ClientArgs) -> anyhow::Result<Option<client::refill::RefillSettings>> {
    let (Some(account), Some(file)) = (&args.refill_account, &args.password_file) else {
        return Ok(None);
    };
    let account = account
        .parse::<account::AccountNumber>()
        .context("--refill-account is not an account number")?;
    let password = crate::password::read_private(Path::new(file))?;
    Ok(Some(client::refill::RefillSettings {
        account,
        password: client::refill::Password::new(password),
        keep: usize::from(args.keep),
        delay: match args.refill_delay_secs {
            Some(secs) => Duration::ZERO..=Duration::from_secs(secs),
            None => REFILL_DELAY,
        },
    }))
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
    let refill = refill_settings(&args)?;
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
    if refill.is_some() && settings.directory.issuer.is_none() {
        say("note: the directory lists no token issuer, so its relays need no tokens; --refill-account does nothing");
    }
    settings.refill = refill;
    settings.retry_after_attestation_failure = args.try_other_relays;
    settings.rest_after = (args.rest_after > 0).then(|| Duration::from_secs(args.rest_after));
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
    let mut refill = handle.refill.clone();
    let mut refill_open = true;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            r = refill.changed(), if refill_open => match r {
                Ok(()) => say(&refill.borrow_and_update().to_string()),
                Err(_) => refill_open = false,
            },
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
    let (refill_tx, mut refill) = tokio::sync::watch::channel(client::refill::RefillStatus::Idle);
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let mut task = tokio::spawn(client::whole_host::run_whole_host(
        wh, status_tx, refill_tx, stop_rx,
    ));
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
            r = refill.changed(), if stop.is_some() => {
                if r.is_err() {
                    continue;
                }
                say(&refill.borrow_and_update().to_string());
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ClientArgs,
    }

    fn args(extra: &[&str]) -> ClientArgs {
        let mut argv = vec!["client", "--directory", "d.toml", "--trust", "k"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn refilling_needs_an_account_and_a_private_password_file() {
        assert!(refill_settings(&args(&[])).unwrap().is_none());
        assert!(Cli::try_parse_from([
            "client",
            "--directory",
            "d",
            "--trust",
            "k",
            "--refill-account",
            "x"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["client", "--directory", "d", "--trust", "k", "--keep", "3"])
                .is_err()
        );

        let account = account::AccountNumber::from_bytes([9; 16]).to_string();
        let file = std::env::temp_dir().join(format!(
            "openrelay-refill-password-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&file, "pw\n").unwrap();
        let path = file.to_str().unwrap();
        let refill = ["--refill-account", &account, "--password-file", path];
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = refill_settings(&args(&refill)).unwrap_err().to_string();
        assert!(err.contains(&format!("chmod 600 {path}")), "{err}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings = refill_settings(&args(&refill)).unwrap().unwrap();
        assert_eq!(settings.keep, 8);
        assert_eq!(settings.delay, REFILL_DELAY);
        assert_eq!(settings.password.expose(), b"pw");
        let mut with_keep = refill.to_vec();
        with_keep.extend(["--keep", "20"]);
        assert_eq!(
            refill_settings(&args(&with_keep)).unwrap().unwrap().keep,
            20
        );
        let _ = std::fs::remove_file(&file);
    }
}
