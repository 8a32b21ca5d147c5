//! The relay's command line, shared by `openrelay relay` and the standalone
//! `openrelay-relay` executable (the measured image).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::config::{ConfigError, RelayConfig};
use crate::run::{run_egress, run_egress_tun, run_ingress, ExitSettings, RelayHandle};

/// Which relay to run.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Run an ingress (first hop): accepts clients, forwards their inner datagrams to the
    /// egresses listed in the directory, and nowhere else.
    ///
    /// The ingress sees a client's address and which egress it uses, never the
    /// destination or the payload.
    Ingress(RelayArgs),
    /// Run an egress (second hop): relays clients' UDP datagrams and, through a userspace
    /// TCP/IP stack, their TCP connections over ordinary sockets (no root needed).
    ///
    /// The egress sees the destination and the ingress's address, never the client's.
    /// Loopback, private, link-local, multicast and the relay's own addresses are refused
    /// unless listed in `allow_destinations`. With `tun = "NAME"` in the config it forwards
    /// in the kernel with NAT instead (root and nftables needed), with the same refusals.
    Egress(RelayArgs),
}

/// Options common to both relay roles.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Relay config file (TOML). Fields: private_key or private_key_file, listen, mtu,
    /// lifetime_secs, max_sessions, report_interval_secs; ingress: directory and
    /// directory_keys (or egresses); egress: allow_destinations, own_addresses. See
    /// README.md for an example.
    #[arg(long, short, value_name = "FILE")]
    pub config: PathBuf,
}

/// Why a relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening socket could not be bound.
    #[error(
        "cannot listen on the configured address: {0} (is another relay running on that port?)"
    )]
    Bind(#[from] std::io::Error),
}

/// Starts the relay `cmd` names; it runs until its handle's shutdown is sent.
pub async fn start(cmd: &RelayCommand) -> Result<RelayHandle, StartError> {
    match cmd {
        RelayCommand::Ingress(a) => {
            let settings = RelayConfig::load(&a.config)?.ingress()?;
            Ok(run_ingress(settings).await?)
        }
        RelayCommand::Egress(a) => {
            let config = RelayConfig::load(&a.config)?;
            let settings = config.egress()?;
            match config.tun {
                Some(tun) => Ok(run_egress_tun(settings, ExitSettings { tun }).await?),
                None => Ok(run_egress(settings).await?),
            }
        }
    }
}

/// Runs the relay until SIGINT or SIGTERM, then logs its final counters.
pub async fn run_until_signal(cmd: &RelayCommand) -> Result<(), StartError> {
    raise_open_file_limit();
    let handle = start(cmd).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = handle.shutdown.send(());
    let _ = handle.task.await;
    Ok(())
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does for every
/// program. A relay holds a socket per session (ingress) or per UDP flow and TCP
/// connection (egress); the usual soft limit of 1,024 would refuse new flows after a few
/// hundred clients, while the hard limit is usually far higher.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // The kernel refuses more than fs.nr_open, 2^20 by default, even under an unlimited
    // hard limit.
    const MOST: u64 = 1 << 20;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = hard.min(MOST);
    if soft >= want {
        return;
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
        tracing::warn!(
            "cannot raise the open-file limit from {soft} to {want} ({e}): each UDP flow and \
             TCP connection needs one; raise it with `ulimit -n` or LimitNOFILE= under systemd"
        );
    }
}

/// Logging for relays: counters at info, nothing from dependencies below warn, and never
/// the userspace stack's packet traces (they contain addresses).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPENRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The default log filter: OpenRelay at info, dependencies at warn, smoltcp silent.
pub const DEFAULT_LOG_FILTER: &str = "warn,openrelay=info,relay=info,client=info,smoltcp=off";
