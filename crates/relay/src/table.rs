//! Sessions of one relay: handshakes from any client key, the control exchange, and
//! admission. Shared by the ingress and the egress; neither role sees user traffic of a
//! session that is not admitted.
//!
//! A session that has heard nothing from its client for [`KEYS_EXPIRE`] holds no usable key,
//! only gotatun's state machine (about 19 KiB, most of it empty key slots). It goes to sleep:
//! the state machine is dropped and the admission kept, so the client's next handshake
//! wakes it with a fresh one and carries on with the same address, without a new token.
//! The fresh one has not seen the client's earlier handshakes, so a replayed initiation can
//! wake a sleeping session (its 19 KiB again, until it sleeps) but not use it: the replayer
//! lacks the client's private keys.
//!
//! A client that has been idle for a while says so sooner (`Rest`, after
//! `control::REST_AFTER`): it has erased its keys, and the relay erases its own and sleeps
//! the session at once, the same way.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use control::{AdmitPolicy, Detail, Message, RefuseReason};
use tunnel::wire::{build_udp, parse_udp};
use tunnel::{
    Action, Classified, PublicKey, Responder, Session, TunnelError, KEYS_EXPIRE, SESSION_EXPIRES,
    TIMER_TICK,
};

use crate::counters::{Counters, Drop};
use crate::pool::AddressPool;

/// A relay-local session number. Never sent anywhere; it names a session to the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// A map looked up for every packet whose keys no client chooses (session ids, receiver
/// indices and addresses the relay picked, the directory's egresses): hashed with foldhash,
/// seeded per process, rather than SipHash, which took about 1.3 % of the tunnel processes'
/// time in a two-hop upload. A key that a client picks (its public key) stays under
/// SipHash, so that no client can choose keys that crowd one bucket.
pub type TrustedKeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A set like [`TrustedKeyMap`].
pub type TrustedKeySet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Least time between two `Refused(NotAdmitted)` replies to one session.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// What the table asks of its role and edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableEvent {
    /// Send a datagram to the session's peer.
    Transmit {
        /// The peer's current address.
        to: SocketAddr,
        /// The WireGuard message.
        datagram: Vec<u8>,
    },
    /// A session was admitted with this tunnel address.
    Admitted {
        /// The session.
        id: SessionId,
        /// Its tunnel address.
        addr: Ipv4Addr,
    },
    /// A user packet from an admitted session, source address checked.
    Packet {
        /// The session.
        id: SessionId,
        /// The IP packet.
        ip: Vec<u8>,
    },
    /// A session is gone; release what the edge holds for it.
    Closed {
        /// The session.
        id: SessionId,
    },
    /// Make TEE evidence off the event loop (the source is slow), then hand it to
    /// [`SessionTable::answer_attest`].
    Attest(AttestRequest),
}

/// Evidence a session asked for: what to bind, and where the answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestRequest {
    /// The session that sent Attest.
    pub id: SessionId,
    /// The client's control endpoint inside the tunnel.
    pub reply_to: SocketAddr,
    /// The binding of relay key, session key and nonce ([`attest::binding`]).
    pub report_data: [u8; 64],
}

struct Entry {
    /// gotatun's state machine; `None` while the session sleeps (see the module docs).
    /// Boxed, so that a sleeping entry is small.
    session: Option<Box<Session>>,
    /// The client's key for this session.
    peer: PublicKey,
    /// Last time the session heard from its client, or woke.
    last_active: Instant,
    peer_addr: SocketAddr,
    admitted: Option<Admitted>,
    last_refusal: Option<Instant>,
    /// Attest requests answered on this session (each may cost a TEE quote).
    attests: u8,
    /// A valid token was redeemed for this session.
    redeemed: bool,
    /// A `Hello` that came before the session's token (datagrams may be reordered), where
    /// to answer it, and when it came: answered once the token is redeemed, refused after
    /// [`HELLO_WAITS_FOR_TOKEN`]. Boxed: rare and brief, and 96 bytes in every entry
    /// inline.
    parked_hello: Option<Box<(Message, SocketAddr, Instant)>>,
}

/// How long a `Hello` waits for the session's `Redeem`.
pub const HELLO_WAITS_FOR_TOKEN: Duration = Duration::from_secs(2);

/// Attest requests a session may make: a client needs one, a retry or two covers loss.
/// Quotes from a real TEE are slow, so more would let one peer keep the relay busy.
pub const MAX_ATTESTS_PER_SESSION: u8 = 4;

#[derive(Clone, Copy)]
struct Admitted {
    addr: Ipv4Addr,
    until: Instant,
}

/// All sessions of one relay.
pub struct SessionTable {
    responder: Responder,
    entries: TrustedKeyMap<SessionId, Entry>,
    by_index: TrustedKeyMap<u32, SessionId>,
    by_peer: HashMap<PublicKey, SessionId>,
    by_addr: TrustedKeyMap<Ipv4Addr, SessionId>,
    pool: AddressPool,
    admit: AdmitPolicy,
    max_sessions: usize,
    next_id: u64,
    next_sweep: Instant,
    evidence: Option<std::sync::Arc<dyn crate::evidence::EvidenceSource>>,
    /// Token checks; `None`: the relay admits without tokens (no issuer configured).
    tokens: Option<token::Redeemer>,
    /// Wall-clock anchor for token epochs: (instant, Unix seconds at that instant).
    wall_clock: (Instant, u64),
    /// Totals for the whole relay; roles add their own drops here.
    pub counters: Counters,
    /// Reused for every session call, so the packet path does not allocate a list.
    actions: Vec<Action>,
}

impl SessionTable {
    /// A table answering handshakes with `responder`'s key.
    pub fn new(
        now: Instant,
        responder: Responder,
        admit: AdmitPolicy,
        max_sessions: usize,
    ) -> Self {
        Self {
            responder,
            entries: TrustedKeyMap::default(),
            by_index: TrustedKeyMap::default(),
            by_peer: HashMap::new(),
            by_addr: TrustedKeyMap::default(),
            pool: AddressPool::new(),
            admit,
            max_sessions,
            next_id: 1,
            next_sweep: now + TIMER_TICK,
            evidence: None,
            tokens: None,
            wall_clock: (now, 0),
            counters: Counters::default(),
            actions: Vec::new(),
        }
    }

    /// The evidence source, for an edge that makes slow evidence off its event loop.
    pub fn evidence_source(&self) -> Option<std::sync::Arc<dyn crate::evidence::EvidenceSource>> {
        self.evidence.clone()
    }

    /// Answers Attest with evidence from `source`. A slow source
    /// ([`EvidenceSource::is_slow`](crate::evidence::EvidenceSource::is_slow)) is not
    /// called here: the table asks its edge with [`TableEvent::Attest`].
    pub fn with_evidence(
        mut self,
        source: std::sync::Arc<dyn crate::evidence::EvidenceSource>,
    ) -> Self {
        self.evidence = Some(source);
        self
    }

    /// Admits only sessions that redeem a valid, unspent token checked by `redeemer`.
    /// `unix_secs` is the wall-clock time at `now`, for the tokens' epochs.
    pub fn with_tokens(mut self, redeemer: token::Redeemer, now: Instant, unix_secs: u64) -> Self {
        self.tokens = Some(redeemer);
        self.wall_clock = (now, unix_secs);
        self
    }

    /// Makes this table worker `k`'s of `n`: its share of the tunnel addresses and at most
    /// `max_sessions` sessions.
    pub fn share(mut self, k: usize, n: usize, max_sessions: usize) -> Self {
        self.pool = AddressPool::share(k, n);
        self.max_sessions = max_sessions;
        self
    }

    /// New issuer keys (from a new directory); spent tokens stay spent.
    pub fn set_issuer_keys(&mut self, keys: Vec<token::IssuerPublicKey>) {
        if let Some(t) = &mut self.tokens {
            t.set_keys(keys);
        }
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        let (at, secs) = self.wall_clock;
        secs + now.saturating_duration_since(at).as_secs()
    }

    /// The relay's WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.responder.public_key()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The peer's current address (for the demo's observer only; never logged).
    pub fn peer_addr(&self, id: SessionId) -> Option<SocketAddr> {
        Some(self.entries.get(&id)?.peer_addr)
    }

    /// The admitted session that owns a tunnel address (routing replies in TUN mode).
    pub fn session_for_addr(&self, addr: Ipv4Addr) -> Option<SessionId> {
        self.by_addr.get(&addr).copied()
    }

    /// The tunnel address of an admitted session.
    pub fn admitted_addr(&self, id: SessionId) -> Option<Ipv4Addr> {
        self.entries.get(&id)?.admitted.map(|a| a.addr)
    }

    /// Handles one datagram from the network.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<TableEvent>,
    ) {
        self.counters.rx_datagrams += 1;
        let classified = match self.responder.classify(now, from, datagram) {
            Ok(c) => c,
            Err(e) => return self.count_error(&e),
        };
        let (id, msg) = match classified {
            Classified::CookieReply(c) => {
                return self.transmit(from, c, out);
            }
            Classified::Handshake { peer, msg } => match self.by_peer.get(&peer) {
                Some(id) => (*id, msg),
                None => {
                    if self.entries.len() >= self.max_sessions {
                        return self.counters.drop(Drop::Capacity);
                    }
                    let id = SessionId(self.next_id);
                    self.next_id += 1;
                    let entry = Entry {
                        session: Some(Box::new(self.responder.session(now, peer))),
                        peer,
                        last_active: now,
                        peer_addr: from,
                        admitted: None,
                        last_refusal: None,
                        attests: 0,
                        redeemed: false,
                        parked_hello: None,
                    };
                    self.entries.insert(id, entry);
                    self.by_peer.insert(peer, id);
                    self.counters.sessions_created += 1;
                    (id, msg)
                }
            },
            Classified::Index { index, msg } => match self.by_index.get(&index) {
                Some(id) => (*id, msg),
                None => return self.counters.drop(Drop::NoSession),
            },
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return self.counters.drop(Drop::NoSession);
        };
        let mut actions = std::mem::take(&mut self.actions);
        let res =
            wake(entry, &self.responder, now, &mut self.counters).receive(now, msg, &mut actions);
        if let Err(e) = res {
            actions.clear();
            self.actions = actions;
            // A failed message from a brand-new key leaves an empty session behind; it
            // expires with the timers.
            return self.count_error(&e);
        }
        // WireGuard authenticated the datagram: the peer may have roamed.
        entry.peer_addr = from;
        entry.last_active = now;
        self.apply(now, id, &mut actions, out);
        self.actions = actions;
    }

    /// Encrypts a packet for an admitted session (the role's replies to the client).
    pub fn send(&mut self, now: Instant, id: SessionId, ip: &[u8], out: &mut Vec<TableEvent>) {
        self.send_with(now, id, ip.len(), |buf| buf.copy_from_slice(ip), out);
    }

    /// Like [`SessionTable::send`] for a packet of `len` bytes that `fill` writes straight
    /// into the buffer to be encrypted (see `tunnel::Session::encapsulate_with`).
    pub fn send_with(
        &mut self,
        now: Instant,
        id: SessionId,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        out: &mut Vec<TableEvent>,
    ) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return self.counters.drop(Drop::NoSession);
        };
        if entry.admitted.is_none() {
            return self.counters.drop(Drop::Unadmitted);
        }
        self.counters.forwarded += 1;
        self.counters.forwarded_bytes += len as u64;
        let mut actions = std::mem::take(&mut self.actions);
        // A sleeping session has no key: the relay starts a handshake, as gotatun does when
        // keys expired.
        wake(entry, &self.responder, now, &mut self.counters).encapsulate_with(
            now,
            len,
            fill,
            &mut actions,
        );
        self.apply(now, id, &mut actions, out);
        self.actions = actions;
    }

    /// Runs session timers, puts sessions without keys to sleep and removes expired ones.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<TableEvent>) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + TIMER_TICK;
        let ids: Vec<SessionId> = self.entries.keys().copied().collect();
        for id in ids {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            if let Some((_, reply_to, _)) = entry
                .parked_hello
                .take_if(|parked| now >= parked.2 + HELLO_WAITS_FOR_TOKEN)
                .map(|parked| *parked)
            {
                let refused = Message::Refused {
                    reason: RefuseReason::Token,
                    detail: Detail::truncate(
                        "no token was redeemed for this session; send Redeem before Hello",
                    ),
                };
                self.reply_control(now, id, reply_to.ip(), reply_to.port(), &refused, out);
            }
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            let lifetime_over = entry.admitted.is_some_and(|a| now >= a.until);
            let quiet = now.saturating_duration_since(entry.last_active);
            let Some(session) = entry.session.as_mut() else {
                // Asleep: over when gotatun's awake session would have expired.
                if lifetime_over || quiet >= SESSION_EXPIRES {
                    self.remove(id, out);
                }
                continue;
            };
            let mut actions = std::mem::take(&mut self.actions);
            let res = session.handle_timeout(now, &mut actions);
            if lifetime_over || res.is_err() {
                actions.clear();
                self.actions = actions;
                self.remove(id, out);
                continue;
            }
            self.apply(now, id, &mut actions, out);
            self.actions = actions;
            self.sleep_if_keyless(id, quiet);
        }
    }

    /// Drops the state machine of a session that has heard nothing for [`KEYS_EXPIRE`]
    /// and has no current key. Its receiver indices go with it: data for them could not be
    /// decrypted any more.
    fn sleep_if_keyless(&mut self, id: SessionId, quiet: Duration) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let keyless = entry
            .session
            .as_ref()
            .is_some_and(|s| s.since_handshake().is_none());
        if quiet < KEYS_EXPIRE || !keyless {
            return;
        }
        self.sleep(id);
    }

    /// Drops an awake session's state machine and its receiver indices, keeping the entry.
    fn sleep(&mut self, id: SessionId) {
        let Some(session) = self.entries.get_mut(&id).and_then(|e| e.session.take()) else {
            return;
        };
        for index in session.indices() {
            self.by_index.remove(index);
        }
        self.counters.sessions_slept += 1;
        self.counters.sessions_asleep += 1;
    }

    /// The client erased its keys (`Rest`): an admitted session sleeps now, keeping its
    /// address for the next handshake; one that was never admitted has nothing to keep.
    fn rest(&mut self, id: SessionId, out: &mut Vec<TableEvent>) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        if entry.admitted.is_none() {
            return self.remove(id, out);
        }
        if entry.session.is_some() {
            self.sleep(id);
            self.counters.sessions_rested += 1;
        }
    }

    /// When [`SessionTable::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    fn remove(&mut self, id: SessionId, out: &mut Vec<TableEvent>) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        match &entry.session {
            Some(session) => {
                for index in session.indices() {
                    self.by_index.remove(index);
                }
            }
            None => self.counters.sessions_asleep -= 1,
        }
        self.by_peer.remove(&entry.peer);
        if let Some(a) = entry.admitted {
            self.by_addr.remove(&a.addr);
            self.pool.release(a.addr);
        }
        self.counters.sessions_closed += 1;
        out.push(TableEvent::Closed { id });
    }

    fn apply(
        &mut self,
        now: Instant,
        id: SessionId,
        actions: &mut Vec<Action>,
        out: &mut Vec<TableEvent>,
    ) {
        for action in actions.drain(..) {
            match action {
                Action::NewIndex(index) => {
                    // Not for a session that rested while these actions were queued.
                    if self.entries.get(&id).is_some_and(|e| e.session.is_some()) {
                        self.by_index.insert(index, id);
                    }
                    self.counters.handshakes += 1;
                }
                Action::Transmit(d) => {
                    if let Some(e) = self.entries.get(&id) {
                        let to = e.peer_addr;
                        self.transmit(to, d, out);
                    }
                }
                Action::Deliver(ip) => self.inbound(now, id, ip, out),
            }
        }
    }

    fn transmit(&mut self, to: SocketAddr, datagram: Vec<u8>, out: &mut Vec<TableEvent>) {
        self.counters.tx_datagrams += 1;
        out.push(TableEvent::Transmit { to, datagram });
    }

    /// A packet that came out of a session's tunnel.
    fn inbound(&mut self, now: Instant, id: SessionId, ip: Vec<u8>, out: &mut Vec<TableEvent>) {
        let control = control::control_endpoint();
        match parse_udp(&ip) {
            Ok(d) if d.dst == SocketAddr::V4(control) => {
                let reply_to = d.src;
                match Message::decode(d.payload) {
                    Ok(msg) => {
                        self.counters.control += 1;
                        self.control(now, id, reply_to, &msg, out);
                    }
                    Err(_) => self.counters.drop(Drop::BadControl),
                }
                return;
            }
            _ => {}
        }
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let Some(admitted) = entry.admitted else {
            self.counters.drop(Drop::Unadmitted);
            let due = entry
                .last_refusal
                .is_none_or(|t| now >= t + REFUSAL_INTERVAL);
            if due {
                entry.last_refusal = Some(now);
                if let Some((src, _)) = tunnel::wire::ip_addrs(&ip) {
                    let refused = Message::Refused {
                        reason: RefuseReason::NotAdmitted,
                        detail: Detail::truncate("this session is not admitted; send Hello first"),
                    };
                    self.reply_control(now, id, src, control::CONTROL_PORT, &refused, out);
                }
            }
            return;
        };
        match tunnel::wire::ip_addrs(&ip) {
            Some((IpAddr::V4(src), _)) if src == admitted.addr => {
                // The role counts it as forwarded once it really goes on.
                out.push(TableEvent::Packet { id, ip });
            }
            Some(_) => self.counters.drop(Drop::Spoofed),
            None => self.counters.drop(Drop::NotIp),
        }
    }

    fn control(
        &mut self,
        now: Instant,
        id: SessionId,
        reply_to: SocketAddr,
        msg: &Message,
        out: &mut Vec<TableEvent>,
    ) {
        match msg {
            Message::Attest { nonce } => return self.attest(now, id, reply_to, nonce, out),
            Message::Redeem { challenge, token } => {
                return self.redeem(now, id, reply_to, challenge, token, out)
            }
            // No answer: the client has no keys left to read one with.
            Message::Rest => return self.rest(id, out),
            _ => {}
        }
        let tokens_required = self.tokens.is_some();
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let reply = match (msg, entry.admitted) {
            // A repeated Hello (the Admitted reply was lost) gets the same address again.
            (Message::Hello { .. }, Some(a)) => self.admit.respond(msg, a.addr),
            // No token yet: it may still be on its way (reordered); wait for it.
            (Message::Hello { .. }, None) if tokens_required && !entry.redeemed => {
                entry.parked_hello = Some(Box::new((msg.clone(), reply_to, now)));
                return;
            }
            (Message::Hello { .. }, None) => {
                let Some(addr) = self.pool.allocate() else {
                    self.counters.drop(Drop::Capacity);
                    return;
                };
                let reply = self.admit.respond(msg, addr);
                if matches!(reply, Message::Admitted { .. }) {
                    entry.admitted = Some(Admitted {
                        addr,
                        until: now + self.admit.lifetime,
                    });
                    self.counters.sessions_admitted += 1;
                    self.by_addr.insert(addr, id);
                    out.push(TableEvent::Admitted { id, addr });
                } else {
                    self.pool.release(addr);
                }
                reply
            }
            (Message::Ping { nonce }, Some(_)) => Message::Pong { nonce: *nonce },
            (Message::Ping { .. }, None) => Message::Refused {
                reason: RefuseReason::NotAdmitted,
                detail: Detail::truncate("this session is not admitted; send Hello first"),
            },
            _ => Message::Refused {
                reason: RefuseReason::Unsupported,
                detail: Detail::truncate(
                    "relays accept only Attest, Redeem, Hello, Ping and Rest on the control address",
                ),
            },
        };
        self.reply_control(now, id, reply_to.ip(), reply_to.port(), &reply, out);
    }

    /// Checks a token for this session. A valid one admits the session's `Hello`, parked
    /// or still to come; a bad one is refused with the reason, and the session stays
    /// unadmitted.
    fn redeem(
        &mut self,
        now: Instant,
        id: SessionId,
        reply_to: SocketAddr,
        challenge: &[u8],
        token: &[u8],
        out: &mut Vec<TableEvent>,
    ) {
        let unix_secs = self.unix_secs(now);
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.redeemed {
            return;
        }
        let peer = entry.peer;
        let verdict = match &mut self.tokens {
            // A relay without an issuer admits without tokens.
            None => Ok(false),
            Some(t) => t
                .redeem(unix_secs, challenge, token, peer.as_bytes())
                .map(|_epoch| true),
        };
        match verdict {
            Ok(checked) => {
                entry.redeemed = true;
                let parked = entry.parked_hello.take().map(|parked| *parked);
                if checked {
                    self.counters.tokens_redeemed += 1;
                }
                if let Some((hello, reply_to, _)) = parked {
                    self.control(now, id, reply_to, &hello, out);
                }
            }
            Err(e) => {
                self.counters.tokens_refused += 1;
                let refused = Message::Refused {
                    reason: RefuseReason::Token,
                    detail: Detail::truncate(&e.to_string()),
                };
                self.reply_control(now, id, reply_to.ip(), reply_to.port(), &refused, out);
            }
        }
    }

    /// Evidence bound to this relay's key, the session's (client's) key and the nonce,
    /// sent in parts; or a refusal saying why there is none.
    fn attest(
        &mut self,
        now: Instant,
        id: SessionId,
        reply_to: SocketAddr,
        nonce: &[u8; 32],
        out: &mut Vec<TableEvent>,
    ) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if entry.attests >= MAX_ATTESTS_PER_SESSION {
            self.counters.drop(Drop::BadControl);
            let refusal = Message::Refused {
                reason: RefuseReason::Policy,
                detail: Detail::truncate(
                    "too many Attest requests on this session; set up a new one",
                ),
            };
            return self.reply_control(now, id, reply_to.ip(), reply_to.port(), &refusal, out);
        }
        entry.attests += 1;
        let peer = entry.peer;
        let report_data = attest::binding(
            self.responder.public_key().as_bytes(),
            peer.as_bytes(),
            nonce,
        );
        let req = AttestRequest {
            id,
            reply_to,
            report_data,
        };
        let evidence = match &self.evidence {
            None => Err(crate::evidence::NO_EVIDENCE.to_string()),
            Some(source) if source.is_slow() => return out.push(TableEvent::Attest(req)),
            Some(source) => crate::evidence::obtain(source.as_ref(), &report_data),
        };
        self.answer_attest(now, &req, evidence, out);
    }

    /// Sends the evidence for `req` in parts, or a refusal with the reason (as
    /// [`crate::evidence::obtain`] words it). A session that closed in the meantime gets
    /// nothing.
    pub fn answer_attest(
        &mut self,
        now: Instant,
        req: &AttestRequest,
        evidence: Result<attest::Evidence, String>,
        out: &mut Vec<TableEvent>,
    ) {
        let parts = evidence
            .and_then(|ev| control::split_evidence(&ev.encode()).map_err(|e| e.to_string()));
        let messages = parts.unwrap_or_else(|why| {
            vec![Message::Refused {
                reason: RefuseReason::Unsupported,
                detail: Detail::truncate(&why),
            }]
        });
        self.counters.attestations += 1;
        let to = req.reply_to;
        for m in &messages {
            self.reply_control(now, req.id, to.ip(), to.port(), m, out);
        }
    }

    fn reply_control(
        &mut self,
        now: Instant,
        id: SessionId,
        to: IpAddr,
        port: u16,
        msg: &Message,
        out: &mut Vec<TableEvent>,
    ) {
        let IpAddr::V4(to) = to else {
            return;
        };
        let src = SocketAddr::V4(control::control_endpoint());
        let Ok(ip) = build_udp(src, SocketAddr::from((to, port)), &msg.encode()) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let mut actions = std::mem::take(&mut self.actions);
        wake(entry, &self.responder, now, &mut self.counters).encapsulate(now, &ip, &mut actions);
        self.apply(now, id, &mut actions, out);
        self.actions = actions;
    }

    fn count_error(&mut self, e: &TunnelError) {
        self.counters.drop(match e {
            TunnelError::NotWireGuard { .. } | TunnelError::NotIp | TunnelError::Protocol(_) => {
                Drop::Malformed
            }
            TunnelError::Replay => Drop::Replay,
            TunnelError::Authentication(_) => Drop::Auth,
            TunnelError::NoSession(_) | TunnelError::Expired => Drop::NoSession,
        });
    }
}

/// The entry's state machine, a fresh one if the session was asleep.
fn wake<'a>(
    entry: &'a mut Entry,
    responder: &Responder,
    now: Instant,
    counters: &mut Counters,
) -> &'a mut Session {
    if entry.session.is_none() {
        counters.sessions_asleep -= 1;
        entry.last_active = now;
    }
    entry
        .session
        .get_or_insert_with(|| Box::new(responder.session(now, entry.peer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session has an entry, awake or asleep, and the table keeps room for about 1.6
    /// per session: what is rare or large (the state machine, a parked `Hello`) is boxed.
    /// 144 bytes when written (232 with the parked `Hello` inline).
    #[test]
    fn a_sleeping_entry_does_not_hold_the_state_machine_inline() {
        assert!(
            std::mem::size_of::<Entry>() <= 160,
            "Entry is {} bytes",
            std::mem::size_of::<Entry>()
        );
    }
}
