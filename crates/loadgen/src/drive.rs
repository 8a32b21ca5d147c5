//! The driver: paces new clients, multiplexes them over a few UDP sockets, routes replies
//! by receiver index, and retries clients that make no progress.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tunnel::PublicKey;

use crate::client::{receiver_index, Client, Output, Phase, Progress, Traffic};

/// How often the driver starts paced clients and looks for clients to retry.
const TICK: Duration = Duration::from_millis(5);
/// WireGuard's message type of a cookie reply.
const COOKIE_REPLY: u8 = 3;
/// Most new handshakes started at once, as time at the paced rate.
const BURST: Duration = Duration::from_millis(20);
/// Datagrams queued from the socket readers to the driver.
const QUEUE: usize = 65_536;
/// How often the clients run their WireGuard timers, as the real client does. gotatun stamps
/// what a session receives with the time of its last timer run, so rarer runs would date an
/// `Admitted` back and send its keepalive at once, in bursts that overflow the relay's
/// socket buffer.
const TIMER_TICK: Duration = tunnel::TIMER_TICK;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The egress's UDP endpoint.
    pub target: SocketAddr,
    /// The egress's WireGuard public key.
    pub relay_key: PublicKey,
    /// Client sessions to open.
    pub sessions: usize,
    /// UDP sockets the sessions share (session `n` uses socket `n % sockets`).
    pub sockets: usize,
    /// New handshakes per second. Relays answer at most 1000 initiations per second from
    /// one source address without a cookie round trip, so stay below that.
    pub rate: f64,
    /// Most sessions under way (started, not yet admitted) at once. New handshakes wait
    /// while this many are pending, so a relay that falls behind slows the generator down
    /// instead of drowning in retries.
    pub window: usize,
    /// What each client sends once admitted.
    pub traffic: Traffic,
    /// A client that makes no progress for this long tries again; the wait doubles with
    /// every attempt.
    pub retry_after: Duration,
    /// Attempts per client before it counts as failed.
    pub max_attempts: u32,
    /// The whole run gives up after this long.
    pub deadline: Duration,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sessions admitted.
    pub admitted: usize,
    /// Sessions that were not admitted after every attempt (or before the deadline).
    pub failed: usize,
    /// Retries made with a fresh handshake (no handshake response in time).
    pub handshake_retries: u64,
    /// Retries made by repeating `Hello` (no `Admitted` in time).
    pub hello_retries: u64,
    /// Cookie replies received: the relay was under load and asked for a cookie round trip.
    pub cookie_replies: u64,
    /// `Refused` replies received.
    pub refused: u64,
    /// Datagrams the clients could not use.
    pub bad_datagrams: u64,
    /// Datagrams that named no known client.
    pub unrouted: u64,
    /// Datagrams that could not be sent (the driver retries them as a whole).
    pub send_errors: u64,
    /// From the first handshake to the last admission (or the deadline).
    pub elapsed: Duration,
    /// Per admitted session, from its first handshake initiation to `Admitted`, sorted.
    pub setup_latencies: Vec<Duration>,
}

impl Outcome {
    /// The `q` quantile (0.0 to 1.0) of the setup latencies.
    pub fn latency(&self, q: f64) -> Option<Duration> {
        let n = self.setup_latencies.len();
        let last = n.checked_sub(1)?;
        // Rounding a fraction of `last` stays within 0..=last.
        let i = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
        self.setup_latencies.get(i).copied()
    }
}

/// Runs the plan until every session is admitted or has failed, or the deadline passes.
/// The admitted sessions stay open at the relay (idle) after this returns; the clients
/// stay silent unless [`Idle::keep_for`] runs them.
pub async fn drive(plan: &Plan) -> io::Result<(Outcome, Idle<'_>)> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mut sockets = Vec::new();
    let mut readers = Vec::new();
    let bind: SocketAddr = match plan.target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    for _ in 0..plan.sockets.max(1) {
        let s = Arc::new(UdpSocket::bind(bind).await?);
        readers.push(tokio::spawn(read(s.clone(), plan.target, tx.clone())));
        sockets.push(s);
    }
    drop(tx);
    let mut d = Driver {
        plan,
        sockets,
        clients: Vec::with_capacity(plan.sessions),
        by_index: HashMap::new(),
        pending: BTreeSet::new(),
        gave_up: 0,
        outcome: Outcome::default(),
        out: Vec::new(),
        sent: 0,
    };
    let start = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last = start;
    let mut last_tick = start;
    let mut last_timers = start;
    let mut credit = 1.0;
    while d.outcome.admitted + d.gave_up < plan.sessions {
        let now = Instant::now();
        if now.duration_since(start) > plan.deadline {
            break;
        }
        tokio::select! {
            Some(datagram) = rx.recv() => {
                let now = Instant::now();
                d.receive(now, &datagram).await;
                last = now;
                // Drain what is already queued before the next tick.
                while let Ok(datagram) = rx.try_recv() {
                    d.receive(Instant::now(), &datagram).await;
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                // Pacing: credit accrues at `rate`, but never more than BURST's worth, so a
                // stall (a full window, a slow tick) is not followed by a burst.
                credit = (credit + now.duration_since(last_tick).as_secs_f64() * plan.rate)
                    .min((plan.rate * BURST.as_secs_f64()).max(1.0));
                last_tick = now;
                while credit >= 1.0
                    && d.clients.len() < plan.sessions
                    && d.pending.len() < plan.window.max(1)
                {
                    d.start(now).await;
                    credit -= 1.0;
                }
                d.retry(now).await;
                // The clients' tunnels run meanwhile: keepalives are due 10 s after
                // `Admitted`, and the relay starts a handshake at 15 s without one.
                if now.duration_since(last_timers) >= TIMER_TICK {
                    last_timers = now;
                    d.run_timers(now).await;
                }
            }
        }
    }
    d.outcome.failed = plan.sessions - d.outcome.admitted;
    d.outcome.elapsed = last.duration_since(start);
    d.outcome.setup_latencies.sort();
    let outcome = std::mem::take(&mut d.outcome);
    Ok((
        outcome,
        Idle {
            driver: d,
            rx,
            readers,
        },
    ))
}

/// The clients after setup, still listening: what a relay's idle sessions have at the
/// other end.
pub struct Idle<'a> {
    driver: Driver<'a>,
    rx: mpsc::Receiver<Vec<u8>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// What the clients did while idle.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdleOutcome {
    /// Datagrams received from the relay.
    pub received: u64,
    /// Datagrams the clients sent (keepalives, handshake answers).
    pub sent: u64,
}

impl Idle<'_> {
    /// Keeps every client's tunnel running for `period`: each answers what the relay sends
    /// and runs its timers, as a real idle client does, so that sessions stay as a relay
    /// would see them idle rather than vanished.
    pub async fn keep_for(&mut self, period: Duration) -> IdleOutcome {
        let end = tokio::time::Instant::now() + period;
        let mut tick = tokio::time::interval(TIMER_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut idle = IdleOutcome::default();
        let sent_before = self.driver.sent;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                Some(datagram) = self.rx.recv() => {
                    idle.received += 1;
                    self.driver.receive(Instant::now(), &datagram).await;
                }
                _ = tick.tick() => self.driver.run_timers(Instant::now()).await,
            }
        }
        idle.sent = self.driver.sent - sent_before;
        idle
    }
}

impl Idle<'_> {
    /// Clients whose TCP connection got its whole answer and is open.
    pub fn tcp_replied(&self) -> usize {
        self.driver
            .clients
            .iter()
            .filter_map(Client::tcp)
            .filter(|c| c.replied() && c.state() == crate::tcp::State::Established)
            .count()
    }
}

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

struct Driver<'a> {
    plan: &'a Plan,
    sockets: Vec<Arc<UdpSocket>>,
    clients: Vec<Client>,
    by_index: HashMap<u32, usize>,
    /// Clients not yet admitted, by slot.
    pending: BTreeSet<usize>,
    /// Clients that used up their attempts.
    gave_up: usize,
    outcome: Outcome,
    out: Vec<Output>,
    /// Datagrams sent, for [`IdleOutcome`].
    sent: u64,
}

impl Driver<'_> {
    async fn start(&mut self, now: Instant) {
        let slot = self.clients.len();
        let client = Client::start(now, self.plan.relay_key, &mut self.out);
        self.clients.push(client);
        self.pending.insert(slot);
        self.flush(slot).await;
    }

    async fn receive(&mut self, now: Instant, datagram: &[u8]) {
        if datagram.first() == Some(&COOKIE_REPLY) {
            self.outcome.cookie_replies += 1;
        }
        let Some(slot) = receiver_index(datagram).and_then(|i| self.by_index.get(&i).copied())
        else {
            self.outcome.unrouted += 1;
            return;
        };
        let Some(client) = self.clients.get_mut(slot) else {
            return;
        };
        let first = client.started();
        match client.receive(now, datagram, &self.plan.traffic, &mut self.out) {
            Ok(Progress::Admitted(_)) => {
                self.pending.remove(&slot);
                self.outcome.admitted += 1;
                self.outcome.setup_latencies.push(now.duration_since(first));
            }
            Ok(Progress::Refused(_)) => self.outcome.refused += 1,
            Ok(Progress::Established | Progress::None) => {}
            Err(_) => self.outcome.bad_datagrams += 1,
        }
        self.flush(slot).await;
    }

    /// Retries clients that made no progress for `retry_after`; gives up after
    /// `max_attempts`.
    async fn retry(&mut self, now: Instant) {
        let stale: Vec<usize> = self
            .pending
            .iter()
            .copied()
            .filter(|&slot| {
                self.clients.get(slot).is_some_and(|c| {
                    let backoff = 1u32 << c.attempts().clamp(1, 4).saturating_sub(1);
                    c.phase() < Phase::Idle
                        && now.duration_since(c.last_attempt()) >= self.plan.retry_after * backoff
                })
            })
            .collect();
        for slot in stale {
            let Some(client) = self.clients.get_mut(slot) else {
                continue;
            };
            if client.attempts() >= self.plan.max_attempts {
                self.pending.remove(&slot);
                self.gave_up += 1;
                continue;
            }
            if client.phase() == Phase::Handshake {
                for i in client.indices() {
                    self.by_index.remove(i);
                }
                self.outcome.handshake_retries += 1;
            } else {
                self.outcome.hello_retries += 1;
            }
            client.retry(now, self.plan.relay_key, &mut self.out);
            self.flush(slot).await;
        }
    }

    /// Runs every client's WireGuard timers and sends what they ask for.
    async fn run_timers(&mut self, now: Instant) {
        for slot in 0..self.clients.len() {
            if let Some(client) = self.clients.get_mut(slot) {
                client.handle_timeout(now, &self.plan.traffic, &mut self.out);
            }
            if !self.out.is_empty() {
                self.flush(slot).await;
            }
        }
    }

    /// Carries out what a client asked for.
    async fn flush(&mut self, slot: usize) {
        let socket = self.sockets[slot % self.sockets.len()].clone();
        for o in self.out.drain(..) {
            match o {
                Output::Index(i) => {
                    self.by_index.insert(i, slot);
                }
                Output::Send(d) => {
                    self.sent += 1;
                    if socket.send_to(&d, self.plan.target).await.is_err() {
                        self.outcome.send_errors += 1;
                    }
                }
            }
        }
    }
}

/// Forwards every datagram from the relay to the driver.
async fn read(socket: Arc<UdpSocket>, relay: SocketAddr, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) if from == relay => {
                let Some(d) = buf.get(..n) else { continue };
                if tx.send(d.to_vec()).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            // ICMP errors (the relay is not up yet) surface here; the retries cover them.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}
