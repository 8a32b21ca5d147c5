//! One two-hop connection, sans-IO.
//!
//! Setup, in order: outer handshake and `Hello` → `Admitted` with the ingress (over the
//! outer tunnel); then inner handshake and `Hello` → `Admitted` with the egress (over the
//! inner tunnel, through the ingress). Only then does user traffic flow. Each step is a
//! state that consumes itself (see `control::setup`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::{
    Admission, ClientSetup, ExpectAdmitted, Message, RefuseReason, SetupError, CLIENT_VERSION,
};
use tunnel::wire::{build_udp, parse_udp};
use tunnel::{Nested, NestedEvent, PublicKey, Session, SessionConfig, StaticSecret, TunnelError};

/// How long each setup step may take before the connection counts as failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// With user traffic sent and nothing heard back for this long, a hop counts as dead.
/// WireGuard itself retries the handshake after 15 s of silence (keepalive 10 s + rekey
/// timeout 5 s); a live relay answers that within a second or two.
pub const DEAD_AFTER: Duration = Duration::from_secs(22);

/// Quiet time after incoming traffic before the client checks that both relays still know
/// the session.
pub const PROBE_AFTER: Duration = Duration::from_secs(5);
/// Probing stops once no user packet has come in for this long (an idle client sends
/// nothing), or once the connection rests, whichever is sooner.
pub const PROBE_WHILE_ACTIVE: Duration = Duration::from_secs(60);

/// Client port for control messages inside each tunnel.
const CONTROL_CLIENT_PORT: u16 = 51822;

/// Which relay a problem is with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The first hop.
    Ingress,
    /// The second hop.
    Egress,
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hop::Ingress => "ingress",
            Hop::Egress => "egress",
        })
    }
}

/// Why a connection ended or could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// A relay refused the session.
    #[error("the {hop} refused the session: {source}")]
    Setup {
        /// Which relay.
        hop: Hop,
        /// What it said.
        source: SetupError,
    },
    /// A relay did not complete a step in time.
    #[error(
        "the {hop} did not answer within {:?}; it may be down or unreachable",
        SETUP_TIMEOUT
    )]
    Timeout {
        /// Which relay.
        hop: Hop,
    },
    /// The relay no longer knows the session (it restarted).
    #[error("the {hop} no longer knows this session (it probably restarted); reconnecting")]
    Forgotten {
        /// Which relay.
        hop: Hop,
    },
    /// The UDP socket towards the ingress failed.
    #[error("cannot reach the ingress: {0}")]
    Socket(#[from] std::io::Error),
    /// A relay's TEE evidence did not verify or is not approved: nothing is sent to it.
    #[error("the {hop} failed attestation: {reason}; no user traffic was sent")]
    Attestation {
        /// Which relay.
        hop: Hop,
        /// What failed.
        reason: String,
    },
    /// A relay stopped answering while user traffic was flowing.
    #[error(
        "the {hop} stopped answering (nothing for {:?} while sending); it may be down",
        DEAD_AFTER
    )]
    Silent {
        /// Which relay.
        hop: Hop,
    },
    /// The WireGuard session expired.
    #[error("the tunnel expired: {0}")]
    Tunnel(#[from] TunnelError),
}

impl ConnectionError {
    /// The relay the error is about, where one is to blame.
    pub fn hop(&self) -> Option<Hop> {
        match self {
            Self::Setup { hop, .. }
            | Self::Timeout { hop }
            | Self::Forgotten { hop }
            | Self::Silent { hop }
            | Self::Attestation { hop, .. } => Some(*hop),
            Self::Socket(_) => Some(Hop::Ingress),
            Self::Tunnel(_) => None,
        }
    }
}

/// What the connection asks its edge to do.
#[derive(Debug)]
pub enum ConnEvent {
    /// Send this datagram to the ingress.
    ToIngress(Vec<u8>),
    /// An IP packet for the local TCP/IP stack.
    Packet(Vec<u8>),
    /// Both hops admitted the session: user traffic may flow from `addr`.
    Ready {
        /// The ingress's admission.
        outer: Admission,
        /// The egress's admission: the address the local stack uses.
        inner: Admission,
        /// MTU for the local side: what fits through both tunnels without fragments.
        mtu: u16,
        /// What the ingress's and the egress's evidence showed, in that order.
        attested: Vec<attest::Claims>,
        /// From `start` to ready.
        setup: Duration,
        /// Of which attesting both relays: the Attest → Evidence round trips after the
        /// handshakes, the relays' evidence and its verification.
        attesting: Duration,
    },
    /// Idle for the rest time: both hops were told `Rest` and both sessions' keys are
    /// erased, here and at the relays. The next packet either way makes new ones.
    Rested,
    /// The connection is over; set up a new one (fresh keys) if wanted.
    Lost(ConnectionError),
}

enum Phase {
    OuterAttest(Attesting),
    Outer(ExpectAdmitted),
    InnerAttest(Attesting),
    Inner(ExpectAdmitted),
    Ready,
    Done,
}

/// Waiting for a relay's evidence.
struct Attesting {
    nonce: [u8; 32],
    parts: control::EvidenceAssembler,
}

impl Attesting {
    fn new() -> Self {
        Self {
            nonce: rand::random(),
            parts: control::EvidenceAssembler::default(),
        }
    }
}

/// How a connection judges the relays' evidence.
#[derive(Debug, Clone)]
pub struct Verification {
    /// Approved images and TCB rules (from the directory).
    pub policy: attest::Policy,
    /// Sim TEE vendors to trust (development only; from the directory).
    pub sim_vendors: Vec<ed25519_dalek::VerifyingKey>,
    /// Wall-clock time (Unix seconds) against which collateral validity is checked.
    pub now_secs: u64,
}

impl Verification {
    /// Verifies `blob` (encoded evidence) and judges it: genuine, approved, and bound to
    /// `relay`'s key, our session key `ours` and `nonce`. The reason for a refusal is for
    /// the user.
    pub fn check(
        &self,
        blob: &[u8],
        relay: &PublicKey,
        ours: &PublicKey,
        nonce: &[u8; 32],
    ) -> Result<attest::Claims, String> {
        let claims = attest::Evidence::decode(blob)
            .and_then(|e| attest::verify(&e, self.now_secs, &self.sim_vendors))
            .map_err(|e| e.to_string())?;
        let expected = attest::binding(relay.as_bytes(), ours.as_bytes(), nonce);
        self.policy
            .check(&claims, &expected)
            .map_err(|e| e.to_string())?;
        Ok(claims)
    }
}

/// What a connection needs to know about its route.
#[derive(Debug, Clone)]
pub struct RouteKeys {
    /// The ingress's WireGuard key.
    pub ingress_key: PublicKey,
    /// The egress's WireGuard key.
    pub egress_key: PublicKey,
    /// The egress endpoint, as the ingress reaches it.
    pub egress_endpoint: SocketAddr,
    /// How to judge both relays' TEE evidence; no user byte flows without it passing.
    pub verification: Verification,
    /// Session keys and tokens bound to them, ingress then egress; `None` for relays that
    /// take no tokens (fresh keys, no `Redeem`).
    pub tickets: Option<[Ticket; 2]>,
}

/// What a client spends at one relay: the session key a token was issued for, and the
/// token with its challenge.
#[derive(Clone)]
pub struct Ticket {
    /// The WireGuard key of the session (fresh, used once).
    pub session_secret: StaticSecret,
    /// The encoded token challenge (names the relay and the session key).
    pub challenge: Vec<u8>,
    /// The encoded token.
    pub token: Vec<u8>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").finish_non_exhaustive()
    }
}

/// A two-hop connection.
pub struct Connection {
    nested: Nested,
    phase: Phase,
    step_deadline: Instant,
    inner_addr: Option<Ipv4Addr>,
    outer_admission: Option<Admission>,
    /// (relay key, this connection's session key) per hop, for the evidence binding.
    keys: [(PublicKey, PublicKey); 2],
    /// The `Redeem` to send each hop after its evidence verified.
    redeem: [Option<Message>; 2],
    verification: Verification,
    attested: Vec<attest::Claims>,
    ready_at: Option<Instant>,
    /// When `start` ran, for the setup time.
    started_at: Option<Instant>,
    /// When each hop first answered (its handshake response), ingress first.
    hop_up: [Option<Instant>; 2],
    /// When the current hop's `Attest` went out.
    attest_sent: Option<Instant>,
    /// What attesting added to the setup, both hops: from each hop's handshake response
    /// (when the queued `Attest` goes out) to its verified evidence.
    attesting: Duration,
    /// `Lost` was reported; nothing more happens. (Not the phase: `on_control` parks the
    /// phase at `Done` while it decides.)
    ended: bool,
    /// The first user packet sent since the egress was last heard from.
    unanswered_since: Option<Instant>,
    last_probe: Option<Instant>,
    /// The last user packet that came in.
    last_user_rx: Option<Instant>,
    /// The last user packet either way.
    last_traffic: Option<Instant>,
    /// Quiet time after which the connection rests; `None`: never.
    rest_after: Option<Duration>,
    /// When the connection last rested.
    rested_at: Option<Instant>,
    /// When the first datagram after the last rest came in: the relays (or the client's own
    /// next packet, through their answers) woke the connection then.
    woken_at: Option<Instant>,
    /// User packets dropped because the connection was not ready.
    pub dropped_not_ready: u64,
    /// What the tunnel asks for on the data path; reused so packets allocate no list.
    events: Vec<NestedEvent>,
}

impl Connection {
    /// A connection with fresh keys for both sessions (the tickets' keys, themselves made
    /// for one session each), so that no two connections of one user share a key.
    pub fn new(now: Instant, route: RouteKeys) -> Self {
        let cfg = SessionConfig::default();
        let (outer_key, inner_key, redeem) = match route.tickets {
            Some([outer, inner]) => {
                let msg = |t: &Ticket| {
                    Some(Message::Redeem {
                        challenge: t.challenge.clone(),
                        token: t.token.clone(),
                    })
                };
                let redeem = [msg(&outer), msg(&inner)];
                (outer.session_secret, inner.session_secret, redeem)
            }
            None => (
                StaticSecret::generate(),
                StaticSecret::generate(),
                [None, None],
            ),
        };
        let outer = Session::initiator(now, &outer_key, route.ingress_key, cfg);
        let inner = Session::initiator(now, &inner_key, route.egress_key, cfg);
        Self {
            nested: Nested::new(outer, inner, route.egress_endpoint),
            phase: Phase::OuterAttest(Attesting::new()),
            keys: [
                (route.ingress_key, outer_key.public_key()),
                (route.egress_key, inner_key.public_key()),
            ],
            verification: route.verification,
            redeem,
            attested: Vec::new(),
            step_deadline: now + SETUP_TIMEOUT,
            inner_addr: None,
            outer_admission: None,
            ready_at: None,
            started_at: None,
            attest_sent: None,
            hop_up: [None; 2],
            attesting: Duration::ZERO,
            ended: false,
            unanswered_since: None,
            last_probe: None,
            last_user_rx: None,
            last_traffic: None,
            rest_after: Some(control::REST_AFTER),
            rested_at: None,
            woken_at: None,
            dropped_not_ready: 0,
            events: Vec::new(),
        }
    }

    /// Rests after this much quiet instead of [`control::REST_AFTER`]; `None`: never (keys
    /// then live until WireGuard's own 180 s).
    pub fn set_rest_after(&mut self, after: Option<Duration>) {
        self.rest_after = after;
    }

    /// Starts the setup: the outer handshake, carrying `Attest` to the ingress.
    pub fn start(&mut self, now: Instant, out: &mut Vec<ConnEvent>) {
        let Phase::OuterAttest(a) = &self.phase else {
            return;
        };
        let ip = control_packet(Ipv4Addr::UNSPECIFIED, &Message::Attest { nonce: a.nonce });
        let mut ev = Vec::new();
        self.nested.send_outer(now, &ip, &mut ev);
        self.started_at = Some(now);
        self.attest_sent = Some(now);
        self.step_deadline = now + SETUP_TIMEOUT;
        self.map(now, &mut ev, out);
    }

    /// Whether user traffic can flow.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The nested tunnel (for handshake times and keys in status output).
    pub fn tunnel(&self) -> &Nested {
        &self.nested
    }

    /// One datagram from the ingress.
    pub fn receive(&mut self, now: Instant, datagram: &[u8], out: &mut Vec<ConnEvent>) {
        let mut ev = std::mem::take(&mut self.events);
        // Undecryptable datagrams (stale, forged) are ignored: WireGuard's own timers
        // notice a dead session.
        let heard = self.nested.receive(now, datagram, &mut ev).is_ok();
        if heard && self.rested_at.is_some() && self.woken_at.is_none() {
            self.woken_at = Some(now);
        }
        for (up, rx) in self
            .hop_up
            .iter_mut()
            .zip([self.nested.last_outer_rx(), self.nested.last_inner_rx()])
        {
            if up.is_none() && rx.is_some() {
                *up = Some(now);
            }
        }
        self.map(now, &mut ev, out);
        self.events = ev;
    }

    /// A user IP packet from the local stack.
    pub fn send(&mut self, now: Instant, ip: &[u8], out: &mut Vec<ConnEvent>) {
        if !self.is_ready() {
            self.dropped_not_ready += 1;
            return;
        }
        let answered = |since: Instant| self.nested.last_inner_rx().is_some_and(|rx| rx > since);
        if self.unanswered_since.is_none_or(answered) {
            self.unanswered_since = Some(now);
        }
        self.last_traffic = Some(now);
        let mut ev = std::mem::take(&mut self.events);
        self.nested.send_inner(now, ip, &mut ev);
        self.map(now, &mut ev, out);
        self.events = ev;
    }

    /// Sends a raw IP packet inside the outer tunnel only, to the ingress itself.
    ///
    /// Not used by the client; it lets tests check that the ingress refuses to forward
    /// anything but inner datagrams to listed egresses.
    pub fn send_outer_raw(&mut self, now: Instant, ip: &[u8], out: &mut Vec<ConnEvent>) {
        let mut ev = Vec::new();
        self.nested.send_outer(now, ip, &mut ev);
        self.map(now, &mut ev, out);
    }

    /// Runs timers: WireGuard's, and the setup deadline.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<ConnEvent>) {
        if matches!(self.phase, Phase::Done) {
            return;
        }
        let mut ev = Vec::new();
        let res = self.nested.handle_timeout(now, &mut ev);
        self.map(now, &mut ev, out);
        if let Err(e) = res {
            return self.fail(ConnectionError::Tunnel(e), out);
        }
        if let Some(hop) = self.silent_hop(now) {
            return self.fail(ConnectionError::Silent { hop }, out);
        }
        if self.probe_due(now) {
            self.probe(now, out);
        }
        if self.rest_due(now) {
            self.rest(now, out);
        }
        if now >= self.step_deadline {
            match self.phase {
                Phase::OuterAttest(_) | Phase::Outer(_) => {
                    self.fail(ConnectionError::Timeout { hop: Hop::Ingress }, out)
                }
                Phase::InnerAttest(_) | Phase::Inner(_) => {
                    self.fail(ConnectionError::Timeout { hop: Hop::Egress }, out)
                }
                Phase::Ready | Phase::Done => {}
            }
        }
    }

    /// When [`Connection::handle_timeout`] should run.
    pub fn poll_timeout(&self) -> Instant {
        match self.phase {
            Phase::OuterAttest(_) | Phase::Outer(_) | Phase::InnerAttest(_) | Phase::Inner(_) => {
                self.nested.poll_timeout().min(self.step_deadline)
            }
            _ => self.nested.poll_timeout(),
        }
    }

    /// Whether to check that the relays still know the session: traffic came in recently
    /// but has stopped (a download stalls silently when a relay restarts, since the
    /// receiving client sends nothing that could notice).
    ///
    /// Quiet counts from the last user packet in: the `Pong` answers must not keep the
    /// probing going.
    fn probe_due(&self, now: Instant) -> bool {
        let (Some(_), Some(rx)) = (self.ready_at, self.last_user_rx) else {
            return false;
        };
        let quiet = now.saturating_duration_since(rx);
        let probed_recently = self
            .last_probe
            .is_some_and(|p| now.saturating_duration_since(p) < PROBE_AFTER);
        let until = self
            .rest_after
            .map_or(PROBE_WHILE_ACTIVE, |r| r.min(PROBE_WHILE_ACTIVE));
        quiet >= PROBE_AFTER && quiet < until && !probed_recently && !self.is_resting()
    }

    /// Whether the connection rested and nothing has come in or gone out since.
    fn is_resting(&self) -> bool {
        let Some(rested) = self.rested_at else {
            return false;
        };
        let heard = self.nested.last_outer_rx().max(self.nested.last_inner_rx());
        self.last_traffic.is_none_or(|t| t <= rested) && heard.is_none_or(|h| h <= rested)
    }

    /// Whether the connection has been quiet, no user packet either way, for the rest time.
    /// A wake after a rest counts as activity: the relays wake the connection for a packet,
    /// which comes only after the handshakes, and resting at the first of those would erase
    /// the keys the packet comes with (and the next wake would meet the same fate).
    fn rest_due(&self, now: Instant) -> bool {
        let (Some(after), Some(ready)) = (self.rest_after, self.ready_at) else {
            return false;
        };
        let last = [self.last_traffic, self.woken_at]
            .into_iter()
            .flatten()
            .fold(ready, Instant::max);
        now.saturating_duration_since(last) >= after && !self.is_resting()
    }

    /// Tells each hop whose keys are live to erase them (`Rest`), then erases ours. The
    /// relays keep the admissions, so the next packet costs a handshake per hop and no
    /// new token.
    fn rest(&mut self, now: Instant, out: &mut Vec<ConnEvent>) {
        let ip = control_packet(Ipv4Addr::UNSPECIFIED, &Message::Rest);
        let mut ev = Vec::new();
        if self.nested.inner().is_established() {
            self.nested.send_inner(now, &ip, &mut ev);
        }
        if self.nested.outer().is_established() {
            self.nested.send_outer(now, &ip, &mut ev);
        }
        self.nested.rest(now);
        self.rested_at = Some(now);
        // The next datagram heard wakes it: cleared here rather than compared with the
        // rest's time, which a wake in the same instant equals (each later `Pong` then
        // counted as a new wake and put the next rest off by up to a minute).
        self.woken_at = None;
        self.unanswered_since = None;
        self.map(now, &mut ev, out);
        out.push(ConnEvent::Rested);
    }

    /// Pings both relays: a relay that knows the session answers `Pong`; one that
    /// restarted answers, after a new handshake, `Refused(NotAdmitted)`; one that is gone
    /// does not answer at all (and the silence check ends the connection).
    fn probe(&mut self, now: Instant, out: &mut Vec<ConnEvent>) {
        self.last_probe = Some(now);
        if self.unanswered_since.is_none() {
            self.unanswered_since = Some(now);
        }
        let ping = Message::Ping {
            nonce: rand::random(),
        };
        let ip = control_packet(Ipv4Addr::UNSPECIFIED, &ping);
        let mut ev = Vec::new();
        self.nested.send_outer(now, &ip, &mut ev);
        self.nested.send_inner(now, &ip, &mut ev);
        self.map(now, &mut ev, out);
    }

    /// A hop that has been silent for [`DEAD_AFTER`] since user traffic went out to it.
    fn silent_hop(&self, now: Instant) -> Option<Hop> {
        self.ready_at?;
        let since = self.unanswered_since?;
        let heard_since = |rx: Option<Instant>| rx.is_some_and(|rx| rx > since);
        if heard_since(self.nested.last_inner_rx())
            || now.saturating_duration_since(since) < DEAD_AFTER
        {
            return None;
        }
        Some(if heard_since(self.nested.last_outer_rx()) {
            Hop::Egress
        } else {
            Hop::Ingress
        })
    }

    fn fail(&mut self, e: ConnectionError, out: &mut Vec<ConnEvent>) {
        self.phase = Phase::Done;
        if !self.ended {
            self.ended = true;
            out.push(ConnEvent::Lost(e));
        }
    }

    fn map(&mut self, now: Instant, events: &mut Vec<NestedEvent>, out: &mut Vec<ConnEvent>) {
        for e in events.drain(..) {
            match e {
                NestedEvent::ToIngress(d) => out.push(ConnEvent::ToIngress(d)),
                NestedEvent::Outer(ip) => {
                    if let Some(msg) = control_message(&ip) {
                        self.on_control(now, Hop::Ingress, msg, out);
                    }
                }
                NestedEvent::Inner(ip) => match control_message(&ip) {
                    Some(msg) => self.on_control(now, Hop::Egress, msg, out),
                    None if self.is_ready() && self.is_for_us(&ip) => {
                        self.last_user_rx = Some(now);
                        self.last_traffic = Some(now);
                        out.push(ConnEvent::Packet(ip))
                    }
                    None => {}
                },
            }
        }
    }

    fn is_for_us(&self, ip: &[u8]) -> bool {
        matches!(tunnel::wire::ip_addrs(ip), Some((_, std::net::IpAddr::V4(dst))) if Some(dst) == self.inner_addr)
    }

    fn on_control(&mut self, now: Instant, hop: Hop, msg: Message, out: &mut Vec<ConnEvent>) {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        self.phase = match (phase, hop) {
            (Phase::OuterAttest(a), Hop::Ingress) | (Phase::InnerAttest(a), Hop::Egress) => {
                return self.on_evidence(now, hop, a, msg, out);
            }
            (Phase::Outer(expect), Hop::Ingress) => match expect.handle(msg) {
                Ok(outer) => {
                    self.nested.set_outer_addr(outer.tunnel_addr);
                    self.outer_admission = Some(outer);
                    let a = Attesting::new();
                    let ip =
                        control_packet(Ipv4Addr::UNSPECIFIED, &Message::Attest { nonce: a.nonce });
                    let mut ev = Vec::new();
                    self.nested.send_inner(now, &ip, &mut ev);
                    self.step_deadline = now + SETUP_TIMEOUT;
                    self.attest_sent = Some(now);
                    self.phase = Phase::InnerAttest(a);
                    self.map(now, &mut ev, out);
                    return;
                }
                Err(source) => return self.fail(ConnectionError::Setup { hop, source }, out),
            },
            (Phase::Inner(expect), Hop::Egress) => match expect.handle(msg) {
                Ok(inner) => {
                    self.inner_addr = Some(inner.tunnel_addr);
                    let outer = self.outer_admission.unwrap_or(inner);
                    self.ready_at = Some(now);
                    let mtu = local_mtu(outer.mtu, inner.mtu);
                    out.push(ConnEvent::Ready {
                        outer,
                        inner,
                        mtu,
                        attested: self.attested.clone(),
                        setup: now - self.started_at.unwrap_or(now),
                        attesting: self.attesting,
                    });
                    Phase::Ready
                }
                Err(source) => return self.fail(ConnectionError::Setup { hop, source }, out),
            },
            (Phase::Ready, hop) => {
                let known = match hop {
                    Hop::Ingress => self.outer_admission.map(|a| a.tunnel_addr),
                    Hop::Egress => self.inner_addr,
                };
                let forgotten = match msg {
                    Message::Refused {
                        reason: RefuseReason::NotAdmitted,
                        ..
                    } => true,
                    // An admission with another address means a new session: the old one
                    // is gone.
                    Message::Admitted { tunnel_addr, .. } => Some(tunnel_addr) != known,
                    _ => false,
                };
                self.phase = Phase::Ready;
                if forgotten {
                    return self.fail(ConnectionError::Forgotten { hop }, out);
                }
                return;
            }
            (other, _) => other,
        };
    }
}

impl Connection {
    /// A part of a relay's evidence; once whole, it is verified before `Hello` is sent.
    fn on_evidence(
        &mut self,
        now: Instant,
        hop: Hop,
        mut a: Attesting,
        msg: Message,
        out: &mut Vec<ConnEvent>,
    ) {
        let (part, parts, bytes) = match msg {
            Message::Evidence { part, parts, bytes } => (part, parts, bytes),
            Message::Refused { reason, detail } => {
                // A relay that cannot prove what it runs is treated like one whose proof
                // failed.
                let reason = format!("it gave no evidence ({reason:?}: {detail})");
                return self.fail(ConnectionError::Attestation { hop, reason }, out);
            }
            _ => {
                self.phase = match hop {
                    Hop::Ingress => Phase::OuterAttest(a),
                    Hop::Egress => Phase::InnerAttest(a),
                };
                return;
            }
        };
        let blob = match a.parts.add(part, parts, bytes) {
            Ok(Some(blob)) => blob,
            Ok(None) => {
                self.phase = match hop {
                    Hop::Ingress => Phase::OuterAttest(a),
                    Hop::Egress => Phase::InnerAttest(a),
                };
                return;
            }
            Err(e) => {
                return self.fail(
                    ConnectionError::Attestation {
                        hop,
                        reason: e.to_string(),
                    },
                    out,
                )
            }
        };
        let (relay, ours) = self.keys[match hop {
            Hop::Ingress => 0,
            Hop::Egress => 1,
        }];
        let claims = match self.verification.check(&blob, &relay, &ours, &a.nonce) {
            Ok(c) => c,
            Err(reason) => return self.fail(ConnectionError::Attestation { hop, reason }, out),
        };
        if matches!(
            claims.tcb_status,
            attest::TcbStatus::OutOfDate | attest::TcbStatus::OutOfDateConfigurationNeeded
        ) {
            tracing::warn!(
                "the {hop}'s TEE platform is out of date ({:?}): it has known vulnerabilities that are fixed in newer firmware; accepted because the directory or --accept-out-of-date allows it",
                claims.tcb_status
            );
        }
        // `Attest` waits in the tunnel for the handshake and goes out when it completes:
        // what attestation adds is the time since the hop first answered.
        let up = match hop {
            Hop::Ingress => self.hop_up[0],
            Hop::Egress => self.hop_up[1],
        };
        self.attesting += now - up.or(self.attest_sent).unwrap_or(now);
        self.attested.push(claims);
        // Only now, with the relay verified, does its token go out; then Hello.
        let (expect, hello) = ClientSetup::new(CLIENT_VERSION).start();
        let i = match hop {
            Hop::Ingress => 0,
            Hop::Egress => 1,
        };
        let mut ev = Vec::new();
        for msg in self.redeem[i].take().iter().chain([&hello]) {
            let ip = control_packet(Ipv4Addr::UNSPECIFIED, msg);
            match hop {
                Hop::Ingress => self.nested.send_outer(now, &ip, &mut ev),
                Hop::Egress => self.nested.send_inner(now, &ip, &mut ev),
            }
        }
        self.phase = match hop {
            Hop::Ingress => Phase::Outer(expect),
            Hop::Egress => Phase::Inner(expect),
        };
        self.step_deadline = now + SETUP_TIMEOUT;
        self.map(now, &mut ev, out);
    }
}

/// Bytes an inner packet grows by inside the outer tunnel: the inner WireGuard data header
/// and tag (32) and a UDP/IPv6 header (48; IPv4 needs 28).
pub const NESTING_OVERHEAD: u16 = 80;

/// The largest local packet that, wrapped for the egress and carried through the ingress,
/// fits both relays' MTUs.
pub fn local_mtu(outer: u16, inner: u16) -> u16 {
    outer.saturating_sub(NESTING_OVERHEAD).min(inner).max(576)
}

/// A control message as an IP packet to the relay's control address, from the client's
/// control port at `src`.
pub fn control_packet(src: Ipv4Addr, msg: &Message) -> Vec<u8> {
    let src = SocketAddr::V4(SocketAddrV4::new(src, CONTROL_CLIENT_PORT));
    // A control message is at most 1200 bytes, so it always fits one packet.
    build_udp(
        src,
        SocketAddr::V4(control::control_endpoint()),
        &msg.encode(),
    )
    .unwrap_or_default()
}

/// The control message in a packet from a relay's control address, if it is one.
pub(crate) fn control_message(ip: &[u8]) -> Option<Message> {
    let d = parse_udp(ip).ok()?;
    if d.src != SocketAddr::V4(control::control_endpoint()) {
        return None;
    }
    Message::decode(d.payload).ok()
}
