//! One simulated client, sans-IO: handshake, `Hello` → `Admitted`, a few UDP packets, then
//! idle, and after the rest time at rest (keys erased at both ends), as the real client.
//! It takes datagrams and `now` and returns datagrams to send; sockets, pacing and retries
//! belong to the driver ([`drive`](fn@crate::drive)).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::{Message, RefuseReason};
use tunnel::wire::{build_udp, parse_udp};
use tunnel::{Action, PublicKey, Session, SessionConfig, StaticSecret, TunnelError};

/// The client's UDP port for control messages (as `client::connection` uses).
const CONTROL_CLIENT_PORT: u16 = 51822;
/// The client's UDP port for the packets sent once admitted.
const DATA_PORT: u16 = 40_000;
/// The client's TCP port for its one connection (`Traffic::tcp_sink`).
const TCP_PORT: u16 = 40_001;

/// Where a client is in its setup, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Handshake initiation sent, no response yet.
    Handshake,
    /// Handshake done and `Hello` sent, no `Admitted` yet.
    AwaitAdmitted,
    /// Admitted and its packets sent; sends nothing more.
    Idle,
    /// Idle for the rest time: `Rest` sent and the keys erased.
    Resting,
}

/// What a client asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this WireGuard message to the relay.
    Send(Vec<u8>),
    /// Route messages naming this receiver index to this client.
    Index(u32),
}

/// What a received datagram changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing visible (a keepalive, a cookie, a duplicate).
    None,
    /// The handshake completed; `Hello` went out.
    Established,
    /// The relay admitted the session with this tunnel address; the packets went out.
    Admitted(Ipv4Addr),
    /// The relay refused the session.
    Refused(RefuseReason),
}

/// A datagram the client could not use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// WireGuard rejected the message (wrong key, replay, not WireGuard).
    #[error("tunnel: {0}")]
    Tunnel(#[from] TunnelError),
    /// A control message from the relay that could not be decoded.
    #[error("undecodable control message: {0}")]
    Control(#[from] control::DecodeError),
}

/// What every client sends once admitted.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// The UDP destination of the packets (the egress must allow it).
    pub sink: SocketAddr,
    /// How many packets.
    pub packets: usize,
    /// Payload bytes per packet.
    pub payload_len: usize,
    /// Quiet time after which a client rests, as `client::connection` does (`None`:
    /// never; the relay's sessions then sleep only once their keys expire).
    pub rest_after: Option<Duration>,
    /// Where each client opens one TCP connection once admitted and keeps it open, idle
    /// (`None`: no TCP).
    pub tcp_sink: Option<crate::tcp::Target>,
}

/// One client session against the relay.
pub struct Client {
    session: Session,
    phase: Phase,
    /// When this client's first handshake started (for setup latency).
    started: Instant,
    /// When the latest handshake or `Hello` went out (for retries).
    last_attempt: Instant,
    attempts: u32,
    /// When the client last sent or received a packet (not a WireGuard keepalive).
    last_traffic: Instant,
    /// Its TCP connection, once admitted with a TCP sink to connect to.
    tcp: Option<crate::tcp::Conn>,
}

impl Client {
    /// A new client with a fresh key; its handshake initiation goes into `out`.
    pub fn start(now: Instant, relay: PublicKey, out: &mut Vec<Output>) -> Self {
        let session = fresh_session(now, relay, out);
        Self {
            session,
            phase: Phase::Handshake,
            started: now,
            last_attempt: now,
            attempts: 1,
            last_traffic: now,
            tcp: None,
        }
    }

    /// Where the client is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the client's first attempt started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the latest attempt went out.
    pub fn last_attempt(&self) -> Instant {
        self.last_attempt
    }

    /// Attempts so far (1 for a client that never retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The client's TCP connection, if it opened one.
    pub fn tcp(&self) -> Option<&crate::tcp::Conn> {
        self.tcp.as_ref()
    }

    /// Receiver indices this client answers to, for the driver to forget on a retry.
    pub fn indices(&self) -> &[u32] {
        self.session.indices()
    }

    /// Tries again: a fresh key and handshake if the handshake never completed, otherwise
    /// the `Hello` again (the relay answers a repeated `Hello` with the same address).
    pub fn retry(&mut self, now: Instant, relay: PublicKey, out: &mut Vec<Output>) {
        self.attempts += 1;
        self.last_attempt = now;
        match self.phase {
            Phase::Handshake => self.session = fresh_session(now, relay, out),
            Phase::AwaitAdmitted => self.send_hello(now, out),
            Phase::Idle | Phase::Resting => {}
        }
    }

    /// Runs the client's WireGuard timers, as an idle client's tunnel does: the keepalive
    /// that answers `Admitted`, and handshakes the relay starts. A session that expired on
    /// the client's side sends nothing more. An idle client rests once its rest time is up.
    pub fn handle_timeout(&mut self, now: Instant, traffic: &Traffic, out: &mut Vec<Output>) {
        let rest_due = traffic
            .rest_after
            .is_some_and(|after| now.saturating_duration_since(self.last_traffic) >= after);
        if self.phase == Phase::Idle && rest_due {
            self.phase = Phase::Resting;
            self.send_control(now, &Message::Rest, out);
            self.session.rest(now);
            return;
        }
        if let Some(segment) = self.tcp.as_mut().and_then(|c| c.retransmit(now)) {
            self.last_traffic = now;
            self.encapsulate(now, &segment, out);
        }
        let mut actions = Vec::new();
        if self.session.handle_timeout(now, &mut actions).is_ok() {
            push(actions, out);
        }
    }

    /// Processes one datagram from the relay.
    pub fn receive(
        &mut self,
        now: Instant,
        datagram: &[u8],
        traffic: &Traffic,
        out: &mut Vec<Output>,
    ) -> Result<Progress, ClientError> {
        let mut actions = Vec::new();
        self.session.decapsulate(now, datagram, &mut actions)?;
        let mut progress = Progress::None;
        for action in actions {
            match action {
                Action::Transmit(d) => out.push(Output::Send(d)),
                Action::NewIndex(i) => out.push(Output::Index(i)),
                Action::Deliver(ip) => {
                    if let Some(p) = self.control(now, &ip, traffic, out)? {
                        progress = p;
                    }
                }
            }
        }
        if self.phase == Phase::Handshake && self.session.is_established() {
            self.phase = Phase::AwaitAdmitted;
            self.last_attempt = now;
            self.send_hello(now, out);
            progress = Progress::Established;
        }
        Ok(progress)
    }

    /// A packet out of the tunnel: only the relay's control replies matter.
    fn control(
        &mut self,
        now: Instant,
        ip: &[u8],
        traffic: &Traffic,
        out: &mut Vec<Output>,
    ) -> Result<Option<Progress>, ClientError> {
        if let Some(conn) = self.tcp.as_mut() {
            if let Some(reply) = conn.receive(ip) {
                self.last_traffic = now;
                self.encapsulate(now, &reply, out);
                return Ok(None);
            }
        }
        let Ok(d) = parse_udp(ip) else {
            return Ok(None);
        };
        if d.src != SocketAddr::V4(control::control_endpoint()) {
            self.last_traffic = now;
            return Ok(None);
        }
        match Message::decode(d.payload)? {
            Message::Admitted { tunnel_addr, .. } if self.phase < Phase::Idle => {
                self.phase = Phase::Idle;
                self.send_traffic(now, tunnel_addr, traffic, out);
                Ok(Some(Progress::Admitted(tunnel_addr)))
            }
            Message::Refused { reason, .. } => Ok(Some(Progress::Refused(reason))),
            _ => Ok(None),
        }
    }

    fn send_hello(&mut self, now: Instant, out: &mut Vec<Output>) {
        let hello = Message::Hello {
            client_version: control::CLIENT_VERSION,
        };
        self.send_control(now, &hello, out);
    }

    fn send_control(&mut self, now: Instant, msg: &Message, out: &mut Vec<Output>) {
        let src = SocketAddr::from((Ipv4Addr::UNSPECIFIED, CONTROL_CLIENT_PORT));
        let dst = SocketAddr::V4(control::control_endpoint());
        // A Hello or Rest of a few bytes always fits a UDP packet.
        if let Ok(ip) = build_udp(src, dst, &msg.encode()) {
            self.encapsulate(now, &ip, out);
        }
    }

    fn send_traffic(
        &mut self,
        now: Instant,
        addr: Ipv4Addr,
        traffic: &Traffic,
        out: &mut Vec<Output>,
    ) {
        let src = SocketAddr::from((addr, DATA_PORT));
        self.last_traffic = now;
        for n in 0..traffic.packets {
            let mut payload = format!("openrelay-loadgen {n} ").into_bytes();
            payload.resize(traffic.payload_len.max(payload.len()), b'.');
            if let Ok(ip) = build_udp(src, traffic.sink, &payload) {
                self.encapsulate(now, &ip, out);
            }
        }
        if let Some((sink, target)) = traffic
            .tcp_sink
            .and_then(|t| Some((crate::tcp::v4(t.addr)?, t)))
        {
            let local = SocketAddrV4::new(addr, TCP_PORT);
            let (conn, syn) = crate::tcp::Conn::connect(local, sink, target.answer_len);
            self.tcp = Some(conn);
            self.encapsulate(now, &syn, out);
        }
    }

    fn encapsulate(&mut self, now: Instant, ip: &[u8], out: &mut Vec<Output>) {
        let mut actions = Vec::new();
        self.session.encapsulate(now, ip, &mut actions);
        push(actions, out);
    }
}

fn fresh_session(now: Instant, relay: PublicKey, out: &mut Vec<Output>) -> Session {
    let key = StaticSecret::generate();
    let mut session = Session::initiator(now, &key, relay, SessionConfig::default());
    let mut actions = Vec::new();
    session.connect(now, &mut actions);
    push(actions, out);
    session
}

fn push(actions: Vec<Action>, out: &mut Vec<Output>) {
    for a in actions {
        match a {
            Action::Transmit(d) => out.push(Output::Send(d)),
            Action::NewIndex(i) => out.push(Output::Index(i)),
            // An initiator delivers only what it receives; nothing comes out here.
            Action::Deliver(_) => {}
        }
    }
}

/// The receiver index a message from the relay names: bytes 8..12 of a handshake response
/// (after its own sender index), bytes 4..8 of a cookie reply or data message.
pub fn receiver_index(datagram: &[u8]) -> Option<u32> {
    let range = match datagram.first()? {
        2 => 8..12,
        3 | 4 => 4..8,
        _ => return None,
    };
    let bytes: [u8; 4] = datagram.get(range)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_index_reads_each_message_type() {
        let mut resp = vec![2, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3, 4];
        resp.resize(92, 0);
        assert_eq!(receiver_index(&resp), Some(0x0403_0201));
        let data = [4, 0, 0, 0, 5, 0, 0, 0, 0, 0];
        assert_eq!(receiver_index(&data), Some(5));
        assert_eq!(receiver_index(&[1, 0, 0, 0, 1, 0, 0, 0]), None);
        assert_eq!(receiver_index(&[4, 0, 0]), None);
        assert_eq!(receiver_index(&[]), None);
    }
}
