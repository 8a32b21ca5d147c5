//! One WireGuard session with one peer, driven by the caller's clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::tun::MtuWatcher;
use gotatun::x25519;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::buffers;
use crate::clock::SessionClock;
use crate::{wire, PublicKey, StaticSecret, TunnelError};

/// How often [`Session::handle_timeout`] wants to run. gotatun's timers have a resolution of
/// about a second; a quarter of that keeps retries and keepalives on time.
pub const TIMER_TICK: Duration = Duration::from_millis(250);

/// WireGuard's Reject-After-Time: no key is used longer than this after its handshake, so a
/// session that has heard nothing from its peer for this long holds no usable key.
pub const KEYS_EXPIRE: Duration = Duration::from_secs(180);

/// WireGuard's Reject-After-Time × 3: a session with no new handshake for this long is over
/// (gotatun then reports it expired from [`Session::handle_timeout`]).
pub const SESSION_EXPIRES: Duration = Duration::from_secs(540);

/// Handshake initiations per second that a relay answers before it demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 1_000;

/// What a session asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this WireGuard message to the peer.
    Transmit(Vec<u8>),
    /// An IP packet came out of the tunnel.
    Deliver(Vec<u8>),
    /// The session now answers to this receiver index too; a relay routes data to it.
    NewIndex(u32),
}

/// Settings of one session.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Seconds between keepalives even when idle (`None`: only when needed).
    pub persistent_keepalive: Option<u16>,
    /// MTU of the tunnel; packets are padded up to a multiple of 16 within it.
    pub mtu: u16,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            persistent_keepalive: None,
            mtu: 1420,
        }
    }
}

/// A WireGuard session: gotatun's Noise state machine, with time from the caller.
pub struct Session {
    tunn: Tunn<Jitter>,
    clock: SessionClock,
    /// What a new state machine for [`Session::rest`] is made from, shared by all sessions
    /// of a responder.
    origin: Arc<Origin>,
    mtu: MtuWatcher,
    next_tick: Instant,
    indices: Vec<u32>,
}

/// What every session of one end has in common: the local key, the index table, the
/// handshake rate limiter and the keepalive setting. A relay keeps a session (boxed) for
/// every client; with these in one `Arc` instead of copied into each, a session is 1,016
/// bytes, inside the relay allocator's 1,024-byte size class (it was 1,096, in the
/// 1,280-byte one).
struct Origin {
    local: StaticSecret,
    index_table: IndexTable,
    limiter: Arc<RateLimiter>,
    keepalive: Option<u16>,
}

impl Session {
    /// A session that initiates the handshake (the client side).
    pub fn initiator(
        now: Instant,
        local: &StaticSecret,
        peer: PublicKey,
        cfg: SessionConfig,
    ) -> Self {
        let public = x25519::PublicKey::from(local.x25519());
        let origin = Arc::new(Origin {
            local: local.clone(),
            index_table: IndexTable::from_os_rng(),
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            keepalive: cfg.persistent_keepalive,
        });
        Self::build(now, origin, peer, cfg.mtu)
    }

    fn build(now: Instant, origin: Arc<Origin>, peer: PublicKey, mtu: u16) -> Self {
        Self {
            tunn: new_tunn(&origin, peer),
            clock: SessionClock::new(now),
            origin,
            mtu: MtuWatcher::new(mtu),
            next_tick: now + TIMER_TICK,
            indices: Vec::new(),
        }
    }

    /// The peer's static public key.
    pub fn peer(&self) -> PublicKey {
        PublicKey::from_bytes(self.tunn.peer_static_public().to_bytes())
    }

    /// Receiver indices this session has announced, newest last.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// Whether a handshake has completed and the current keys are usable.
    pub fn is_established(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }

    /// Starts a handshake now, if none is under way.
    pub fn connect(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.clock.enter(now);
        if let Some(init) = self.tunn.format_handshake_initiation(false) {
            self.push_network(WgKind::HandshakeInit(init), out);
        }
    }

    /// Encrypts one IP packet for the peer. Without a session the packet is queued and a
    /// handshake starts; it goes out once the handshake completes.
    pub fn encapsulate(&mut self, now: Instant, ip_packet: &[u8], out: &mut Vec<Action>) {
        self.clock.enter(now);
        self.send(buffers::sealable(ip_packet), out);
    }

    /// Like [`Session::encapsulate`] for a packet of `len` bytes that `fill` writes into the
    /// buffer to be encrypted: a packet built only to be sent here is not built twice.
    pub fn encapsulate_with(
        &mut self,
        now: Instant,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
        out: &mut Vec<Action>,
    ) {
        self.clock.enter(now);
        self.send(buffers::sealable_with(len, fill), out);
    }

    /// Sends a packet placed behind room for its header ([`buffers::sealable`]).
    fn send(&mut self, packet: Packet, out: &mut Vec<Action>) {
        if let Some(msg) = self
            .tunn
            .handle_outgoing_placed(packet, Some(&mut self.mtu))
        {
            self.push_network(msg, out);
        }
    }

    /// Processes one datagram from the peer.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), TunnelError> {
        let len = datagram.len();
        let msg = Packet::from_bytes(buffers::copy_of(datagram))
            .try_into_wg()
            .map_err(|_| TunnelError::NotWireGuard { len })?;
        self.receive(now, Incoming(msg), out)
    }

    /// Processes a message that a [`Responder`] has already parsed and checked.
    pub fn receive(
        &mut self,
        now: Instant,
        msg: Incoming,
        out: &mut Vec<Action>,
    ) -> Result<(), TunnelError> {
        self.clock.enter(now);
        match self.tunn.handle_incoming_packet(msg.0) {
            TunnResult::Done => {}
            TunnResult::Err(e) => return Err(e.into()),
            TunnResult::WriteToNetwork(reply) => {
                self.push_network(reply, out);
                let queued: Vec<WgKind> = self.tunn.get_queued_packets(&mut self.mtu).collect();
                for msg in queued {
                    self.push_network(msg, out);
                }
            }
            TunnResult::WriteToTunnel(mut packet) => {
                if !packet.is_empty() {
                    let len = wire::ip_len(&packet).ok_or(TunnelError::NotIp)?;
                    if len > packet.len() {
                        return Err(TunnelError::NotIp);
                    }
                    packet.truncate(len);
                    out.push(Action::Deliver(buffers::into_vec(packet)));
                }
            }
        }
        Ok(())
    }

    /// Runs the WireGuard timers: handshake retries, rekeys and keepalives.
    ///
    /// Returns [`TunnelError::Expired`] when the session can no longer be used (no
    /// handshake for too long); the caller then drops it or sets up a new one.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> Result<(), TunnelError> {
        self.clock.enter(now);
        self.next_tick = now + TIMER_TICK;
        match self.tunn.update_timers() {
            Ok(Some(msg)) => self.push_network(msg, out),
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// When [`Session::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// Erases the session's keys, handshake state and queued packets: the session is as
    /// new, and its next packet starts a handshake. For a peer that agreed to forget the
    /// keys too (an idle client's `Rest`); the receiver indices go with them.
    ///
    /// A new state machine, not gotatun's `Tunn::reset`, which keeps the last handshake
    /// timestamp seen from the peer. The peer forgets too and starts from a new state
    /// machine of its own, whose timestamps count from when it was made: after a step
    /// back of its clock (or in simulated time) they can be older than the last one seen,
    /// and every handshake it started would be refused as a replay.
    pub fn rest(&mut self, now: Instant) {
        self.clock.enter(now);
        self.tunn = new_tunn(&self.origin, self.peer());
        self.indices.clear();
    }

    /// Time since the last completed handshake, if any.
    pub fn since_handshake(&self) -> Option<Duration> {
        self.tunn.time_since_last_handshake()
    }

    fn push_network(&mut self, msg: WgKind, out: &mut Vec<Action>) {
        let index = match &msg {
            WgKind::HandshakeInit(p) => Some(p.sender_idx.get()),
            WgKind::HandshakeResp(p) => Some(p.sender_idx.get()),
            _ => None,
        };
        if let Some(index) = index {
            if !self.indices.contains(&index) {
                // A handful of recent indices is enough: older sessions have been rotated out.
                if self.indices.len() >= 4 {
                    self.indices.remove(0);
                }
                self.indices.push(index);
                out.push(Action::NewIndex(index));
            }
        }
        out.push(Action::Transmit(buffers::into_vec(Packet::from(msg))));
    }
}

/// The generator a `Tunn` draws its handshake-retry jitter from. The jitter only spreads
/// retries in time and needs no secrecy: gotatun's default (ChaCha12, seeded from the
/// operating system for every `Tunn`) kept 320 bytes in every session and made a system
/// call for every new, waking or resting session; this one is 32 bytes, seeded from the
/// thread's generator.
type Jitter = SmallRng;

/// A state machine with no keys between `local` and `peer`.
fn new_tunn(origin: &Origin, peer: PublicKey) -> Tunn<Jitter> {
    Tunn::new_with_rng(
        origin.local.x25519().clone(),
        peer.to_x25519(),
        None,
        origin.keepalive,
        origin.index_table.clone(),
        origin.limiter.clone(),
        SmallRng::from_rng(&mut rand::rng()),
    )
}

/// A WireGuard message checked by a [`Responder`], ready for [`Session::receive`].
pub struct Incoming(WgKind);

/// Where a message from the network belongs, as a relay sees it.
pub enum Classified {
    /// A handshake initiation from this client key: create or find its session.
    Handshake {
        /// The initiator's static public key (fresh per client session).
        peer: PublicKey,
        /// The message, for [`Session::receive`].
        msg: Incoming,
    },
    /// A message for the session that announced this receiver index.
    Index {
        /// Receiver index named by the message.
        index: u32,
        /// The message, for [`Session::receive`].
        msg: Incoming,
    },
    /// The relay is under load: send this cookie reply back instead of answering.
    CookieReply(Vec<u8>),
}

/// The relay side: accepts handshakes from any client key.
///
/// Relays admit anonymous clients, each with a fresh key, so the peer is not known in
/// advance: the initiator's key is read from the handshake itself (`parse_handshake_anon`).
pub struct Responder {
    /// The relay's key, index table and rate limiter, shared with every session.
    origin: Arc<Origin>,
    /// Derived once: a scalar multiplication per datagram would cost more than the
    /// decryption (it did: half of an egress's CPU).
    public: x25519::PublicKey,
    clock: SessionClock,
    /// Each session's tunnel MTU (the keepalive setting is in `origin`).
    mtu: u16,
}

impl Responder {
    /// A responder with the relay's static key.
    pub fn new(now: Instant, secret: StaticSecret, cfg: SessionConfig) -> Self {
        let public = x25519::PublicKey::from(secret.x25519());
        Self {
            origin: Arc::new(Origin {
                local: secret,
                index_table: IndexTable::from_os_rng(),
                limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                keepalive: cfg.persistent_keepalive,
            }),
            clock: SessionClock::new(now),
            public,
            mtu: cfg.mtu,
        }
    }

    /// The relay's public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_bytes(self.public.to_bytes())
    }

    /// Checks a datagram's type, size and MAC, applies the handshake rate limit and says
    /// which session it belongs to.
    pub fn classify(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Classified, TunnelError> {
        self.clock.enter(now);
        let len = datagram.len();
        let packet = Packet::from_bytes(buffers::copy_of(datagram));
        let msg = match self.origin.limiter.verify_packet(from, packet) {
            Ok(msg) => msg,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                return Ok(Classified::CookieReply(buffers::into_vec(Packet::from(
                    cookie,
                ))))
            }
            Err(TunnResult::Err(e)) => {
                return Err(match e {
                    gotatun::noise::errors::WireGuardError::InvalidPacket => {
                        TunnelError::NotWireGuard { len }
                    }
                    e => e.into(),
                })
            }
            Err(_) => return Err(TunnelError::NotWireGuard { len }),
        };
        Ok(match msg {
            WgKind::HandshakeInit(p) => {
                let half = parse_handshake_anon(self.origin.local.x25519(), &self.public, &p)?;
                Classified::Handshake {
                    peer: PublicKey::from_bytes(half.peer_static_public),
                    msg: Incoming(WgKind::HandshakeInit(p)),
                }
            }
            WgKind::HandshakeResp(p) => Classified::Index {
                index: p.receiver_idx.get(),
                msg: Incoming(WgKind::HandshakeResp(p)),
            },
            WgKind::CookieReply(p) => Classified::Index {
                index: p.receiver_idx.get(),
                msg: Incoming(WgKind::CookieReply(p)),
            },
            WgKind::Data(p) => Classified::Index {
                index: p.header.receiver_idx.get(),
                msg: Incoming(WgKind::Data(p)),
            },
        })
    }

    /// A new session for a client whose handshake initiation was just classified.
    pub fn session(&self, now: Instant, peer: PublicKey) -> Session {
        Session::build(now, self.origin.clone(), peer, self.mtu)
    }
}

#[cfg(test)]
mod tests {
    use super::Session;

    /// A relay boxes a session for every client; mimalloc (the relay image's allocator)
    /// serves it from its 1,024-byte size class only while it fits (1,096 bytes, in the
    /// 1,280-byte class, before a session shared what all sessions of a responder have in
    /// common).
    #[test]
    fn a_session_fits_the_1024_byte_size_class() {
        let size = std::mem::size_of::<Session>();
        assert!(size <= 1_024, "a session is {size} bytes");
    }
}
