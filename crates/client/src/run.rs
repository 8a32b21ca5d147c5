//! The client's tokio edge: a UDP socket to the ingress, a userspace TCP/IP stack, a
//! SOCKS5 proxy on loopback, and a supervisor that reconnects.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use directory::{Directory, PublicKey32, Relay};
use netstack::driver::{StackHandle, TcpFlow};
use netstack::{Mode, Stack, StackConfig};
use rand::SeedableRng;
use socks::{DatagramSocket, Dialer, Target};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tunnel::PublicKey;

use crate::connection::{ConnEvent, Connection, ConnectionError, Hop, RouteKeys};
use crate::local::LocalRx;
use crate::refill::{RefillSettings, RefillStatus};

/// How long a SOCKS5 request waits for the tunnel to be up.
const WAIT_FOR_TUNNEL: Duration = Duration::from_secs(15);
/// How long a TCP connect through the tunnel may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Failures in a row after which a relay is avoided and another is picked.
const FAILURES_BEFORE_SWITCH: u32 = 2;
/// DNS queries sent to the egress before a name counts as unresolvable.
const RESOLVE_ATTEMPTS: u32 = 3;
/// How long one DNS query waits for the egress's answer.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Packets queued between the tunnel and the stack.
const STACK_QUEUE: usize = 1024;

/// What the client needs to run.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The verified directory.
    pub directory: Directory,
    /// Where the SOCKS5 proxy listens (keep it on loopback).
    pub socks: SocketAddr,
    /// Seed for route selection (tests); random when `None`.
    pub seed: Option<u64>,
    /// Firewall mark for the socket to the ingress (TUN mode's policy routing).
    pub fwmark: Option<u32>,
    /// After a relay fails attestation, try other relays (otherwise stop and say why).
    pub retry_after_attestation_failure: bool,
    /// The token stock file, spent from when the directory's relays require tokens.
    pub stock: Option<std::path::PathBuf>,
    /// Accept relays on `OutOfDate` TEE platforms (known, fixed vulnerabilities not yet
    /// patched there); a warning is logged for each.
    pub accept_out_of_date: bool,
    /// Refill `stock` from this account by itself (when the directory lists an issuer).
    pub refill: Option<RefillSettings>,
    /// Quiet time after which a connection rests (erases its keys at both relays and
    /// here); `None`: never.
    pub rest_after: Option<Duration>,
}

impl ClientSettings {
    /// Settings with the defaults: random routes, no mark, stop at a failed attestation.
    pub fn new(directory: Directory, socks: SocketAddr) -> Self {
        Self {
            directory,
            socks,
            seed: None,
            fwmark: None,
            retry_after_attestation_failure: false,
            accept_out_of_date: false,
            stock: None,
            refill: None,
            rest_after: Some(control::REST_AFTER),
        }
    }
}

/// The client's verification rules: the directory's approved images and sim vendors, and
/// the user's choice on out-of-date platforms.
pub fn verification(
    directory: &Directory,
    accept_out_of_date: bool,
) -> crate::connection::Verification {
    let approved = directory
        .images
        .iter()
        .filter_map(|i| {
            let platform = match i.platform.as_str() {
                "sgx" => attest::Platform::Sgx,
                "tdx" => attest::Platform::Tdx,
                "sev-snp" => attest::Platform::SevSnp,
                "sim" => attest::Platform::Sim,
                _ => return None,
            };
            Some(attest::Approved {
                platform,
                measurement: i.measurement_bytes()?,
                accepted_advisories: i.accepted_advisories.clone(),
                accept_out_of_date: i.accept_out_of_date,
                min_snp_tcb: i.min_tcb.map(|t| attest::SnpTcb {
                    bootloader: t.bootloader,
                    tee: t.tee,
                    snp: t.snp,
                    microcode: t.microcode,
                }),
            })
        })
        .collect();
    let sim_vendors = directory
        .sim_vendors
        .iter()
        .filter_map(|k| directory::decode_verifying_key(k).ok())
        .collect();
    crate::connection::Verification {
        policy: attest::Policy {
            approved,
            accept_out_of_date,
        },
        sim_vendors,
        now_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// The client's state, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Setting up a connection through these relays (names from the directory).
    Connecting {
        /// The ingress's name.
        ingress: String,
        /// The egress's name.
        egress: String,
    },
    /// Both hops admitted the session.
    Connected {
        /// The ingress's name.
        ingress: String,
        /// The egress's name.
        egress: String,
        /// Connections set up before this one (0 for the first).
        reconnects: u32,
        /// What each hop's evidence showed (ingress first).
        attestation: Vec<HopAttestation>,
        /// How long setting up this connection took, both attestations included.
        setup: Duration,
        /// Of which attesting the two relays.
        attesting: Duration,
    },
    /// The connection was lost or refused; the client will try again.
    Retrying {
        /// What happened, for the user.
        reason: String,
    },
    /// A relay's TEE evidence failed; the client stopped (fail closed).
    AttestationFailed {
        /// Which relay and why.
        reason: String,
    },
    /// The directory's relays require tokens and none are left.
    NoTokens {
        /// What to do.
        reason: String,
    },
    /// No usable route in the directory.
    NoRoute {
        /// What is missing.
        reason: String,
    },
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Connecting { ingress, egress } => {
                write!(f, "connecting through {ingress} → {egress}")
            }
            Status::Connected {
                ingress,
                egress,
                reconnects,
                attestation,
                setup,
                attesting,
            } => {
                if *reconnects == 0 {
                    write!(f, "connected through {ingress} → {egress}")?;
                } else {
                    write!(
                        f,
                        "reconnected through {ingress} → {egress} (reconnect {reconnects})"
                    )?;
                }
                write!(
                    f,
                    " in {} ms ({} ms of it attesting both relays)",
                    setup.as_millis(),
                    attesting.as_millis()
                )?;
                for a in attestation {
                    write!(
                        f,
                        "\n  attested {}: {}, measurement {}, TCB {}, verified at {}",
                        a.relay,
                        a.platform,
                        a.measurement,
                        a.tcb_status,
                        humantime::format_rfc3339_seconds(a.verified_at)
                    )?;
                }
                Ok(())
            }
            Status::Retrying { reason } => write!(f, "connection lost: {reason}"),
            Status::AttestationFailed { reason } => write!(f, "stopped: {reason}"),
            Status::NoTokens { reason } => write!(f, "waiting for tokens: {reason}"),
            Status::NoRoute { reason } => write!(f, "no usable route: {reason}"),
        }
    }
}

/// One hop's verified evidence, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopAttestation {
    /// The relay's name.
    pub relay: String,
    /// Its TEE platform.
    pub platform: String,
    /// The approved measurement it showed, hex.
    pub measurement: String,
    /// Its TCB status.
    pub tcb_status: String,
    /// When the client verified it.
    pub verified_at: std::time::SystemTime,
}

/// A running client.
pub struct ClientHandle {
    /// The SOCKS5 proxy's address.
    pub socks: SocketAddr,
    /// The latest status.
    pub status: watch::Receiver<Status>,
    /// What the token refill last did (stays [`RefillStatus::Idle`] without a refill).
    pub refill: watch::Receiver<RefillStatus>,
    /// Stops the client.
    pub shutdown: oneshot::Sender<()>,
    /// Completes when the client has stopped.
    pub task: tokio::task::JoinHandle<()>,
}

/// Starts the client: SOCKS5 proxy plus the connection supervisor.
pub async fn run_client(settings: ClientSettings) -> io::Result<ClientHandle> {
    let listener = TcpListener::bind(settings.socks).await?;
    let socks_addr = listener.local_addr()?;
    let (stack_tx, stack_rx) = watch::channel(None);
    let dialer = Arc::new(TunnelDialer { stack: stack_rx });
    let (status_tx, status) = watch::channel(Status::Retrying {
        reason: "starting".into(),
    });
    let (refill_tx, refill) = watch::channel(RefillStatus::Idle);
    let (shutdown, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let proxy = tokio::spawn(socks::serve(listener, dialer));
        let (out_tx, from_local) = mpsc::channel(STACK_QUEUE);
        let mut from_local = LocalRx::Packets(from_local);
        let mut local = SocksLocal {
            stack_tx,
            out_tx,
            stack_in: None,
        };
        supervise(
            &settings,
            &mut local,
            &mut from_local,
            status_tx,
            refill_tx,
            shutdown_rx,
        )
        .await;
        proxy.abort();
    });
    Ok(ClientHandle {
        socks: socks_addr,
        status,
        refill,
        shutdown,
        task,
    })
}

/// The user's side of the tunnel: a userspace stack (SOCKS5 mode) or a TUN device.
pub trait Local: Send {
    /// Both hops admitted the session: set up for this tunnel address and MTU.
    fn ready(&mut self, inner: &control::Admission, mtu: u16) -> io::Result<()>;
    /// An IP packet from the tunnel.
    fn deliver(&mut self, ip: Vec<u8>);
    /// The connection is gone.
    fn lost(&mut self);
}

/// SOCKS5 mode: a fresh userspace stack for every connection.
struct SocksLocal {
    stack_tx: watch::Sender<Option<StackHandle>>,
    out_tx: mpsc::Sender<Vec<u8>>,
    stack_in: Option<mpsc::Sender<Vec<u8>>>,
}

impl Local for SocksLocal {
    fn ready(&mut self, inner: &control::Admission, mtu: u16) -> io::Result<()> {
        let mut config = StackConfig::new(Mode::Client, vec![IpAddr::V4(inner.tunnel_addr)]);
        config.mtu = usize::from(mtu);
        let stack = Stack::new(config, Instant::now()).map_err(io::Error::other)?;
        let (tx, rx) = mpsc::channel(STACK_QUEUE);
        let handle = netstack::driver::spawn(stack, rx, self.out_tx.clone());
        self.stack_in = Some(tx);
        self.stack_tx.send_replace(Some(handle));
        Ok(())
    }

    fn deliver(&mut self, ip: Vec<u8>) {
        if let Some(tx) = &self.stack_in {
            let _ = tx.try_send(ip);
        }
    }

    fn lost(&mut self) {
        // Dropping the sender ends the stack's task; its flows fail with BrokenPipe.
        self.stack_in = None;
        self.stack_tx.send_replace(None);
    }
}

/// Keeps a connection up until shutdown and, when configured, refills the token stock.
///
/// The refill runs in this task, joined with the connection loop: its changes to the stock
/// and the loop's (taking a connection's tickets) never interleave. At shutdown a refill
/// that is paying for a batch finishes and saves it first, so nothing paid is lost.
pub(crate) async fn supervise(
    settings: &ClientSettings,
    local: &mut impl Local,
    from_local: &mut LocalRx,
    status: watch::Sender<Status>,
    refill_status: watch::Sender<RefillStatus>,
    shutdown: oneshot::Receiver<()>,
) {
    let (level_tx, level_rx) = watch::channel(None);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let refilled = Notify::new();
    let connection = status.subscribe();
    let connections = async {
        keep_connected(
            settings, local, from_local, status, shutdown, &level_tx, &refilled,
        )
        .await;
        stopping_tx.send_replace(true);
    };
    let refill = async {
        let (Some(refill), Some(stock), Some(_)) = (
            &settings.refill,
            &settings.stock,
            &settings.directory.issuer,
        ) else {
            return;
        };
        let links = crate::refill::run::Links {
            level: level_rx,
            stopping: stopping_rx,
            report: &refill_status,
            refilled: &refilled,
            connection,
        };
        crate::refill::run::drive(settings, refill, stock, links).await;
    };
    tokio::join!(connections, refill);
}

/// Picks routes and keeps a connection up until shutdown. Reports the stock level (in
/// connections) after each change to `stock_level`; `refilled` ends a wait for tokens.
async fn keep_connected(
    settings: &ClientSettings,
    local: &mut impl Local,
    from_local: &mut LocalRx,
    status: watch::Sender<Status>,
    mut shutdown: oneshot::Receiver<()>,
    stock_level: &watch::Sender<Option<usize>>,
    refilled: &Notify,
) {
    let mut rng = match settings.seed {
        Some(s) => rand::rngs::StdRng::seed_from_u64(s),
        None => rand::rngs::StdRng::from_os_rng(),
    };
    let mut failures: HashMap<PublicKey32, u32> = HashMap::new();
    let mut excluded: Vec<PublicKey32> = Vec::new();
    let mut reconnects = 0u32;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut tickets = None;
        if settings.directory.issuer.is_some() {
            let next = next_tickets(settings);
            if let Ok((_, left)) = &next {
                stock_level.send_replace(Some(*left));
            }
            match next {
                Ok((Some((route, t)), _)) => {
                    tickets = Some((route, t));
                }
                other => {
                    let reason = match other {
                        Err(e) => e.to_string(),
                        Ok(_) if settings.refill.is_some() => {
                            "no tokens left; waiting for the refill (see its `tokens:` line)".into()
                        }
                        Ok(_) => "no tokens left; buy some with `openrelay account tokens`".into(),
                    };
                    status.send_replace(Status::NoTokens { reason });
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = refilled.notified() => continue,
                        _ = &mut shutdown => return,
                    }
                }
            }
        }
        let route = match tickets
            .as_ref()
            .map(|(r, _)| Ok(r.clone()))
            .unwrap_or_else(|| directory::pick_route(&settings.directory, &mut rng, &excluded))
        {
            Ok(r) => r,
            Err(e) if !excluded.is_empty() => {
                tracing::warn!("{e}; trying the relays that failed before again");
                excluded.clear();
                continue;
            }
            Err(e) => {
                status.send_replace(Status::NoRoute {
                    reason: e.to_string(),
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = &mut shutdown => return,
                }
            }
        };
        status.send_replace(Status::Connecting {
            ingress: route.ingress.name.clone(),
            egress: route.egress.name.clone(),
        });
        let outcome = tokio::select! {
            o = connect_once(settings, &route.ingress, &route.egress, tickets.map(|(_, t)| t), local, from_local, &status, reconnects) => o,
            _ = &mut shutdown => {
                local.lost();
                return;
            }
        };
        local.lost();
        let (was_ready, err) = match outcome {
            Ok(o) => o,
            Err(e) => (false, ConnectionError::Socket(e)),
        };
        tracing::warn!("{err}");
        status.send_replace(Status::Retrying {
            reason: err.to_string(),
        });
        let blamed = match err.hop() {
            Some(Hop::Ingress) => Some(&route.ingress),
            Some(Hop::Egress) => Some(&route.egress),
            None => None,
        };
        if let Some(relay) = blamed {
            let n = failures.entry(relay.wg_public_key).or_default();
            *n += 1;
            if matches!(err, ConnectionError::Attestation { .. })
                && !settings.retry_after_attestation_failure
            {
                // Fail closed: say which relay failed and why, and connect nowhere else
                // unless the user allowed it.
                status.send_replace(Status::AttestationFailed {
                    reason: err.to_string(),
                });
                let _ = (&mut shutdown).await;
                return;
            }
            // A relay that does not answer, or whose evidence failed, is avoided at once;
            // one that refused or restarted gets another chance.
            let unreachable = matches!(
                err,
                ConnectionError::Timeout { .. }
                    | ConnectionError::Silent { .. }
                    | ConnectionError::Attestation { .. }
            );
            if unreachable || *n >= FAILURES_BEFORE_SWITCH {
                tracing::warn!(
                    "{} failed {n} times in a row; picking another relay",
                    relay.name
                );
                excluded.push(relay.wg_public_key);
                failures.remove(&relay.wg_public_key);
            }
        }
        if was_ready {
            reconnects += 1;
            backoff = Duration::from_millis(100);
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// A connection's route and its tickets.
type Tickets = (directory::Route, [crate::connection::Ticket; 2]);

/// The next connection's route and tickets from the stock, which is saved without them
/// first (under the stock's lock), so a ticket is never spent twice even if this process
/// dies; and the connections left in the stock.
fn next_tickets(
    settings: &ClientSettings,
) -> Result<(Option<Tickets>, usize), crate::tickets::AccountError> {
    let Some(path) = &settings.stock else {
        return Ok((None, 0));
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (prepaid, left) = crate::tickets::Stock::update(path, |stock| {
        stock.prune(&settings.directory, unix);
        let prepaid = stock.take();
        (prepaid, stock.len())
    })?;
    let Some(p) = prepaid else {
        return Ok((None, left));
    };
    if left < 2 && settings.refill.is_none() {
        tracing::warn!(
            "tokens left for {left} more connection(s); buy more ahead of time with `openrelay account tokens`"
        );
    }
    let find = |name: &str| {
        settings
            .directory
            .relays
            .iter()
            .find(|r| r.name == name)
            .cloned()
    };
    match (find(&p.ingress), find(&p.egress)) {
        (Some(ingress), Some(egress)) => Ok((
            Some((directory::Route { ingress, egress }, p.tickets)),
            left,
        )),
        _ => Ok((None, left)),
    }
}

/// One connection, from the first handshake until it is lost. Returns whether it was ever
/// ready, and why it ended.
#[allow(clippy::too_many_arguments)]
async fn connect_once(
    settings: &ClientSettings,
    ingress: &Relay,
    egress: &Relay,
    tickets: Option<[crate::connection::Ticket; 2]>,
    local: &mut impl Local,
    from_local: &mut LocalRx,
    status: &watch::Sender<Status>,
    reconnects: u32,
) -> io::Result<(bool, ConnectionError)> {
    let mut socket = udpio::BatchSocket::new(
        ingress_socket(ingress.endpoint, settings.fwmark).await?,
        udpio::Offload::On,
    )?;
    let now = Instant::now();
    let mut conn = Connection::new(
        now,
        RouteKeys {
            ingress_key: PublicKey::from_bytes(ingress.wg_public_key.0),
            egress_key: PublicKey::from_bytes(egress.wg_public_key.0),
            egress_endpoint: egress.endpoint,
            verification: verification(&settings.directory, settings.accept_out_of_date),
            tickets,
        },
    );
    conn.set_rest_after(settings.rest_after);
    let mut events = Vec::new();
    conn.start(now, &mut events);
    let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut ready = false;
    loop {
        for ev in events.drain(..) {
            match ev {
                // Sent together below; a send error (no route, refused) is transient, and
                // WireGuard retries.
                ConnEvent::ToIngress(d) => sends.push((ingress.endpoint, d)),
                ConnEvent::Packet(ip) => local.deliver(ip),
                ConnEvent::Ready {
                    inner,
                    mtu,
                    attested,
                    setup,
                    attesting,
                    ..
                } => {
                    local.ready(&inner, mtu)?;
                    ready = true;
                    tracing::info!("connected through {} and {}", ingress.name, egress.name);
                    let verified_at = std::time::SystemTime::now();
                    let attestation = attested
                        .iter()
                        .zip([&ingress.name, &egress.name])
                        .map(|(c, name)| HopAttestation {
                            relay: name.clone(),
                            platform: format!("{:?}", c.platform),
                            measurement: c.measurement.iter().map(|b| format!("{b:02x}")).collect(),
                            tcb_status: format!("{:?}", c.tcb_status),
                            verified_at,
                        })
                        .collect();
                    status.send_replace(Status::Connected {
                        ingress: ingress.name.clone(),
                        egress: egress.name.clone(),
                        reconnects,
                        attestation,
                        setup,
                        attesting,
                    });
                }
                ConnEvent::Rested => {
                    tracing::info!("idle: erased the session keys here and at both relays; the next packet sets up new ones");
                }
                ConnEvent::Lost(e) => {
                    socket.send_all(&sends).await;
                    return Ok((ready, e));
                }
            }
        }
        socket.send_all(&sends).await;
        for (_, d) in sends.drain(..) {
            spare::give(d);
        }
        let deadline = tokio::time::Instant::from_std(conn.poll_timeout());
        let mut received = false;
        let mut taken = 0;
        tokio::select! {
            // ICMP errors (ingress down) surface here; the timers decide when to give up.
            r = socket.recv() => received = r.is_ok(),
            Some(packets) = from_local.recv() => {
                let now = Instant::now();
                taken = packets.for_each(|ip| conn.send(now, ip, &mut events));
            }
            _ = tokio::time::sleep_until(deadline) => conn.handle_timeout(Instant::now(), &mut events),
        }
        let now = Instant::now();
        if received {
            for (_, d) in socket.received() {
                conn.receive(now, d, &mut events);
            }
        }
        // User packets already waiting go out together (one segmented send).
        from_local.take_waiting(taken, |ip| conn.send(now, ip, &mut events));
    }
}

/// The runtime a client runs on: one worker thread. The TUN edge's tasks and the
/// connection loop then wake each other on one thread, which costs less per packet than
/// handing batches between two (more throughput and fewer CPU seconds per GB in the
/// benchmark, bench/NOTES.md), and one core carries more than most links.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("openrelay-client")
        .enable_all()
        .build()
}

/// The UDP socket towards the ingress. In TUN mode it carries `fwmark`, so policy routing
/// sends it out of the physical interface instead of back into the tunnel.
async fn ingress_socket(endpoint: SocketAddr, fwmark: Option<u32>) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match endpoint.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(mark) = fwmark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    let socket = UdpSocket::from_std(socket.into())?;
    socket.connect(endpoint).await?;
    Ok(socket)
}

/// Makes SOCKS5 connections through the tunnel's userspace stack.
struct TunnelDialer {
    stack: watch::Receiver<Option<StackHandle>>,
}

impl TunnelDialer {
    async fn stack(&self) -> io::Result<StackHandle> {
        let mut rx = self.stack.clone();
        let found = match tokio::time::timeout(WAIT_FOR_TUNNEL, rx.wait_for(Option::is_some)).await
        {
            Ok(Ok(s)) => s.clone(),
            _ => None,
        };
        found.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the tunnel is not up; check the client's output for the reason",
            )
        })
    }
}

/// Resolves a name at the egress (through the tunnel), never on the local network.
async fn resolve(stack: &StackHandle, target: Target) -> io::Result<SocketAddr> {
    let (name, port) = match target {
        Target::Ip(a) => return Ok(a),
        Target::Domain(name, port) => (name, port),
    };
    let socket = stack.udp_socket()?;
    let id: u16 = rand::random();
    let query = names::build_query(id, &name, names::Kind::A)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    for _ in 0..RESOLVE_ATTEMPTS {
        socket.send_to(&query, names::server()).await?;
        let Ok(reply) = tokio::time::timeout(RESOLVE_TIMEOUT, socket.recv_from()).await else {
            continue;
        };
        let (bytes, from) = reply?;
        if from != names::server() {
            continue;
        }
        match names::parse_response(&bytes, id, &name, names::Kind::A) {
            Ok((addrs, _)) => {
                return addrs
                    .first()
                    .map(|ip| SocketAddr::new(*ip, port))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::HostUnreachable,
                            format!("{name} has no IPv4 address"),
                        )
                    })
            }
            Err(names::DnsError::WrongId { .. }) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::HostUnreachable,
                    e.to_string(),
                ))
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the egress did not answer the DNS query for {name}"),
    ))
}

impl Dialer for TunnelDialer {
    type Stream = TcpFlow;
    type Datagram = TunnelUdp;

    async fn connect(&self, target: Target) -> io::Result<TcpFlow> {
        let stack = self.stack().await?;
        let addr = resolve(&stack, target).await?;
        tokio::time::timeout(CONNECT_TIMEOUT, stack.connect(addr))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    async fn udp(&self) -> io::Result<TunnelUdp> {
        let stack = self.stack().await?;
        Ok(TunnelUdp {
            socket: stack.udp_socket()?,
            stack,
        })
    }
}

/// A UDP socket on the tunnel address, for SOCKS5 UDP ASSOCIATE.
struct TunnelUdp {
    socket: netstack::driver::UdpSocket,
    stack: StackHandle,
}

impl DatagramSocket for TunnelUdp {
    async fn send_to(&self, payload: &[u8], target: Target) -> io::Result<()> {
        let to = resolve(&self.stack, target).await?;
        self.socket.send_to(payload, to).await.map(|_| ())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (bytes, from) = self.socket.recv_from().await?;
        let n = bytes.len().min(buf.len());
        buf.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(bytes.get(..n).unwrap_or_default());
        spare::give(bytes);
        Ok((n, from))
    }
}
