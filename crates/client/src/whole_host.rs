//! Whole-host mode: every packet of the host goes through the two-hop tunnel, and nothing
//! leaves the host otherwise — while connecting, while reconnecting, and after a crash.
//!
//! Order matters. The kill switch goes up first and comes down last; a crash (or SIGKILL)
//! leaves it in place until `openrelay client --unblock`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use host::{BlockPolicy, Dns, Firewall, RoutePlan, Routes, Runner};
use tokio::sync::{oneshot, watch};

use crate::refill::RefillStatus;
use crate::run::{supervise, ClientSettings, Status};
use crate::tun::TunLocal;

/// Default name of the client's TUN device.
pub const TUN_NAME: &str = "ortun0";
/// Where the original resolver configuration is kept while the tunnel is up (tmpfs).
pub const STATE_DIR: &str = "/run/openrelay";

/// Whole-host settings.
#[derive(Debug, Clone)]
pub struct WholeHostSettings {
    /// Route selection and the directory.
    pub client: ClientSettings,
    /// The TUN device's name.
    pub tun: String,
    /// Where the resolver backup lives.
    pub state_dir: PathBuf,
    /// Whether to point the host's DNS at the egress.
    pub dns: bool,
}

impl WholeHostSettings {
    /// The usual settings for a directory.
    pub fn new(client: ClientSettings) -> Self {
        Self {
            client,
            tun: TUN_NAME.to_string(),
            state_dir: PathBuf::from(STATE_DIR),
            dns: true,
        }
    }

    fn plan(&self) -> RoutePlan {
        RoutePlan::new(&self.tun)
    }
}

/// Why whole-host mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum WholeHostError {
    /// A host change failed.
    #[error(transparent)]
    Host(#[from] host::HostError),
    /// The TUN device could not be made.
    #[error("cannot create the TUN device (run as root; is /dev/net/tun present?): {0}")]
    Tun(std::io::Error),
}

/// Runs until `shutdown`, then restores routes and DNS and lifts the kill switch. Reports
/// the connection on `status` and the token refill on `refill`.
pub async fn run_whole_host(
    mut settings: WholeHostSettings,
    status: watch::Sender<Status>,
    refill: watch::Sender<RefillStatus>,
    shutdown: oneshot::Receiver<()>,
) -> Result<(), WholeHostError> {
    let plan = settings.plan();
    settings.client.fwmark = Some(plan.fwmark);
    let firewall = Firewall::new(Runner::here());
    let ingresses: Vec<SocketAddr> = settings
        .client
        .directory
        .relays_with_role(directory::Role::Ingress)
        .map(|r| r.endpoint)
        .collect();
    firewall.block(&BlockPolicy {
        allowed_endpoints: ingresses,
        tunnel_interface: Some(settings.tun.clone()),
    })?;
    let result = run_blocked(&settings, &plan, status, refill, shutdown).await;
    // Only an orderly exit lifts the block; the routes and DNS are back by now.
    firewall.unblock()?;
    result
}

async fn run_blocked(
    settings: &WholeHostSettings,
    plan: &RoutePlan,
    status: watch::Sender<Status>,
    refill: watch::Sender<RefillStatus>,
    shutdown: oneshot::Receiver<()>,
) -> Result<(), WholeHostError> {
    let (mut local, mut from_tun) =
        TunLocal::create(&settings.tun, 1280).map_err(WholeHostError::Tun)?;
    let routes = Routes::new(Runner::here()).apply(plan)?;
    let dns = if settings.dns {
        Some(Dns::point_to(
            &[IpAddr::V4(*names::SERVER.ip())],
            &settings.state_dir,
        )?)
    } else {
        None
    };
    tracing::info!("all traffic of this host now goes through the tunnel");
    supervise(
        &settings.client,
        &mut local,
        &mut from_tun,
        status,
        refill,
        shutdown,
    )
    .await;
    if let Some(dns) = dns {
        dns.restore()?;
    }
    routes.restore();
    tracing::info!(
        "packets the TUN device kept out of the tunnel: {}",
        local.counters
    );
    drop(local);
    Ok(())
}

/// Removes what a crashed whole-host client left behind: the kill switch, the routes and
/// the resolver configuration.
pub fn unblock(state_dir: &std::path::Path) -> Result<Vec<&'static str>, host::HostError> {
    let mut done = Vec::new();
    if Dns::restore_from_backup(state_dir)? {
        done.push("restored the resolver configuration");
    }
    Routes::new(Runner::here()).cleanup(&RoutePlan::new(TUN_NAME));
    done.push("removed the tunnel's routes and rules");
    let fw = Firewall::new(Runner::here());
    if fw.is_blocking()? {
        fw.unblock()?;
        done.push("removed the kill switch (nftables table inet openrelay)");
    }
    Ok(done)
}
