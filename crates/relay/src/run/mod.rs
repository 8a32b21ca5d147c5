//! The relays' tokio edges: sockets, tasks and the clock around the sans-IO cores.

mod attester;
mod egress;
mod exit;
mod flows;
mod ingress;
mod outbound;
mod ready;
mod resolve;
mod splice;
mod workers;

use std::net::SocketAddr;
use std::time::Duration;

use control::AdmitPolicy;
use tokio::sync::mpsc;
use tunnel::StaticSecret;

pub use attester::{Answer, Attester};
pub use egress::run_egress;
pub use exit::{run_egress_tun, ExitSettings};
pub use ingress::run_ingress;

use crate::counters::Counters;
use crate::policy::DestinationPolicy;
use crate::table::SessionTable;

/// What one hop saw, for `openrelay demo` only.
///
/// A relay never logs addresses. The demo runs relays in its own process and passes an
/// observer so it can show a person what each hop can see; a relay started from a config
/// file has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The ingress forwarded a session's datagram: it knows both of these.
    Ingress {
        /// The client's address.
        client: SocketAddr,
        /// The egress the client uses.
        egress: SocketAddr,
    },
    /// The egress opened a flow: it knows both of these.
    Egress {
        /// The address the session's datagrams come from (the ingress).
        peer: SocketAddr,
        /// The destination of the flow.
        destination: SocketAddr,
    },
}

/// Sender half for [`Observation`]s.
pub type Observer = mpsc::UnboundedSender<Observation>;

/// Settings shared by both roles.
#[derive(Clone)]
pub struct Common {
    /// The relay's WireGuard key.
    pub key: StaticSecret,
    /// Where clients (ingress) or ingresses (egress) send datagrams.
    pub listen: SocketAddr,
    /// What admitted sessions are told.
    pub admit: AdmitPolicy,
    /// Session limit.
    pub max_sessions: usize,
    /// How often the counters are logged.
    pub report_interval: Duration,
    /// Demo-only observer.
    pub observer: Option<Observer>,
    /// Where the relay's TEE evidence comes from; without one, clients refuse the relay.
    pub evidence: Option<std::sync::Arc<dyn crate::evidence::EvidenceSource>>,
    /// The token issuer whose tokens admit sessions; `None`: admit without tokens.
    pub tokens: Option<Tokens>,
    /// UDP segmentation offloads on the relay's socket.
    pub offload: crate::udp::Offload,
    /// Bytes of kernel buffer each way on the relay's UDP sockets.
    pub socket_buffer: usize,
    /// Event loops, each with its own socket on the port and its own sessions; 0: one per
    /// core.
    pub workers: usize,
}

/// Which tokens a relay accepts: the directory's issuer and its keys.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The issuer's name, as token challenges carry it.
    pub issuer_name: String,
    /// Its keys, one per epoch.
    pub keys: Vec<token::IssuerPublicKey>,
}

/// Ingress settings.
#[derive(Clone)]
pub struct IngressSettings {
    /// Shared settings.
    pub common: Common,
    /// Egress endpoints the ingress forwards to.
    pub egresses: Vec<SocketAddr>,
}

/// Egress settings.
#[derive(Clone)]
pub struct EgressSettings {
    /// Shared settings.
    pub common: Common,
    /// Destination rules.
    pub policy: DestinationPolicy,
    /// When idle flows and stacks are released.
    pub idle: Idle,
}

/// When a userspace egress releases what an idle session holds. A session's stack starts
/// with its first packet and stops once it has no flows and no packets for `stack`, so that
/// thousands of idle sessions cost their tunnel state and not a TCP/IP stack each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle {
    /// A UDP flow with no traffic for this long releases its socket.
    pub udp_flow: std::time::Duration,
    /// A stack with no open flow and no packet for this long stops.
    pub stack: std::time::Duration,
}

impl Default for Idle {
    fn default() -> Self {
        Self {
            udp_flow: std::time::Duration::from_secs(60),
            stack: std::time::Duration::from_secs(30),
        }
    }
}

/// A running relay's address and live counters.
pub struct RelayHandle {
    /// The bound UDP address (useful with port 0).
    pub local_addr: SocketAddr,
    /// Latest counters (all workers together), updated as the relay runs.
    pub counters: tokio::sync::watch::Receiver<Counters>,
    /// Each worker's own counters.
    pub workers: Vec<tokio::sync::watch::Receiver<Counters>>,
    /// Stops the relay when dropped or sent.
    pub shutdown: tokio::sync::oneshot::Sender<()>,
    /// Completes when the relay has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Every worker's counters summed as they are now. `counters` may lag by up to the
    /// supervisor's publication gap (10 ms), in which a whole short exchange can finish; a
    /// reader that must see what it just caused (a test, a status query) reads this.
    pub fn current(&self) -> Counters {
        workers::sum(&self.workers)
    }
}

impl Common {
    /// How the relay's UDP sockets are set up: its offloads and its buffers.
    pub fn udp(&self) -> crate::udp::Setup {
        crate::udp::Setup {
            offload: self.offload,
            buffer: self.socket_buffer,
        }
    }

    /// Binds the relay's socket and makes its empty session table.
    pub async fn bind(
        &self,
    ) -> std::io::Result<(std::sync::Arc<tokio::net::UdpSocket>, SessionTable)> {
        let socket = tokio::net::UdpSocket::bind(self.listen).await?;
        Ok((std::sync::Arc::new(socket), self.table()))
    }

    /// The bound address, and one socket on it and one session table per worker (as many
    /// as `workers` says). The tables share the token spent set and split the tunnel
    /// addresses and the session limit.
    pub fn bind_workers(
        &self,
    ) -> std::io::Result<(SocketAddr, Vec<(crate::udp::BatchSocket, SessionTable)>)> {
        let n = workers::count(self.workers);
        let sockets = crate::udp::BatchSocket::bind_group(self.listen, n, self.udp())?;
        let local_addr = match sockets.first() {
            Some(s) => s.local_addr()?,
            None => return Err(std::io::Error::other("a relay needs one worker at least")),
        };
        let redeemer = self.redeemer();
        let limit = self.max_sessions.div_ceil(n);
        let shards = sockets
            .into_iter()
            .enumerate()
            .map(|(k, s)| (s, self.table_with(redeemer.clone()).share(k, n, limit)))
            .collect();
        Ok((local_addr, shards))
    }

    fn table(&self) -> SessionTable {
        self.table_with(self.redeemer())
    }

    fn redeemer(&self) -> Option<token::Redeemer> {
        self.tokens.as_ref().map(|t| {
            token::Redeemer::new(
                self.key.public_key().as_bytes(),
                &t.issuer_name,
                t.keys.clone(),
            )
        })
    }

    fn table_with(&self, redeemer: Option<token::Redeemer>) -> SessionTable {
        let now = std::time::Instant::now();
        let cfg = tunnel::SessionConfig {
            persistent_keepalive: None,
            mtu: self.admit.mtu,
        };
        let responder = tunnel::Responder::new(now, self.key.clone(), cfg);
        let mut table = SessionTable::new(now, responder, self.admit, self.max_sessions);
        if let Some(source) = &self.evidence {
            table = table.with_evidence(source.clone());
        }
        if let Some(redeemer) = redeemer {
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            table = table.with_tokens(redeemer, now, unix);
        }
        table
    }
}

/// Spawns one event loop per socket and table, each on a thread of its own with a
/// single-threaded runtime, and supervises them as one relay.
///
/// A thread per loop rather than tasks of the shared runtime: a block freed on another
/// thread than the one that allocated it stays with the allocator (with two shared
/// threads, 10,000 sessions' stopped stacks gave back nothing of 377 MiB; on one thread,
/// 132 MiB came back), a socket whose readiness wakes the loop on the same thread costs no
/// cross-thread wake-up (the ingress's forwarding sockets), and tokio does not move the loop between
/// threads (the TUN egress's loop did, both threads busy; bench/NOTES.md).
fn spawn_workers<F, Fut>(
    role: &'static str,
    local_addr: std::net::SocketAddr,
    report_interval: Duration,
    shards: Vec<(crate::udp::BatchSocket, SessionTable)>,
    mut event_loop: F,
) -> RelayHandle
where
    F: FnMut(
        usize,
        crate::udp::BatchSocket,
        SessionTable,
        tokio::sync::watch::Sender<Counters>,
        tokio::sync::oneshot::Receiver<()>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let workers = shards
        .into_iter()
        .enumerate()
        .map(|(k, (socket, table))| {
            let (counters_tx, counters) = tokio::sync::watch::channel(table.counters);
            let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
            // The socket was bound on this runtime; the worker's own takes it over.
            let task = workers::spawn_thread(format!("{role}-{k}"), || {
                let socket = socket.register_here()?;
                Ok(event_loop(k, socket, table, counters_tx, shutdown_rx))
            });
            workers::Worker {
                counters,
                shutdown,
                task,
            }
        })
        .collect();
    let s = workers::supervise(role, workers, report_interval);
    RelayHandle {
        local_addr,
        counters: s.counters,
        workers: s.per_worker,
        shutdown: s.shutdown,
        task: s.task,
    }
}

fn report(role: &str, counters: &Counters) {
    tracing::info!(target: "openrelay::counters", "{role} counters: {counters}");
}
