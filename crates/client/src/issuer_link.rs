//! A single-hop session to the token issuer, sans-IO: handshake, attestation, admission,
//! then request/response datagrams to the issuer's service port inside the tunnel.
//!
//! The issuer is attested like a relay, and nothing (not even the account number) is sent
//! before its evidence verifies, so the host around the issuer's TEE sees only ciphertext.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::{ClientSetup, ExpectAdmitted, Message, CLIENT_VERSION};
use tunnel::wire::{build_udp, parse_udp};
use tunnel::{Action, PublicKey, Session, SessionConfig, StaticSecret};

use crate::connection::{control_message, control_packet, Verification};

/// How long each setup step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's UDP port for issuer requests inside the tunnel.
const CLIENT_PORT: u16 = 51831;

/// What the link asks of its edge, or reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// Send this datagram to the issuer's endpoint.
    Transmit(Vec<u8>),
    /// The issuer is attested and admitted this session; requests may go out.
    Ready(Box<attest::Claims>),
    /// A response datagram from the issuer's service.
    Response(Vec<u8>),
    /// The link failed; why, for the user.
    Failed(String),
}

enum Phase {
    Attesting {
        nonce: [u8; 32],
        parts: control::EvidenceAssembler,
    },
    Hello(ExpectAdmitted, Box<attest::Claims>),
    Ready(Ipv4Addr),
    Failed,
}

/// The client's session with the issuer.
pub struct IssuerLink {
    session: Session,
    issuer_key: PublicKey,
    our_key: PublicKey,
    verification: Verification,
    phase: Phase,
    deadline: Instant,
}

impl IssuerLink {
    /// A link to the issuer with WireGuard key `issuer_key`, judged by `verification`.
    pub fn new(now: Instant, issuer_key: PublicKey, verification: Verification) -> Self {
        let secret = StaticSecret::generate();
        Self {
            session: Session::initiator(now, &secret, issuer_key, SessionConfig::default()),
            issuer_key,
            our_key: secret.public_key(),
            verification,
            phase: Phase::Attesting {
                nonce: rand::random(),
                parts: control::EvidenceAssembler::default(),
            },
            deadline: now + STEP_TIMEOUT,
        }
    }

    /// Starts the handshake, carrying `Attest`.
    pub fn start(&mut self, now: Instant, out: &mut Vec<LinkEvent>) {
        let Phase::Attesting { nonce, .. } = &self.phase else {
            return;
        };
        let ip = control_packet(Ipv4Addr::UNSPECIFIED, &Message::Attest { nonce: *nonce });
        self.encapsulate(now, &ip, out);
    }

    /// Whether requests may be sent.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready(_))
    }

    /// Sends one request to the issuer's service.
    pub fn request(&mut self, now: Instant, payload: &[u8], out: &mut Vec<LinkEvent>) {
        let Phase::Ready(addr) = self.phase else {
            return;
        };
        let src = SocketAddr::V4(SocketAddrV4::new(addr, CLIENT_PORT));
        let dst = SocketAddr::V4(SocketAddrV4::new(
            *control::control_endpoint().ip(),
            issuer::SERVICE_PORT,
        ));
        if let Ok(ip) = build_udp(src, dst, payload) {
            self.encapsulate(now, &ip, out);
        }
    }

    /// A datagram from the issuer's endpoint.
    pub fn receive(&mut self, now: Instant, datagram: &[u8], out: &mut Vec<LinkEvent>) {
        let mut actions = Vec::new();
        // Undecryptable datagrams are ignored; the step deadline notices a dead issuer.
        let _ = self.session.decapsulate(now, datagram, &mut actions);
        for a in actions {
            match a {
                Action::Transmit(d) => out.push(LinkEvent::Transmit(d)),
                Action::Deliver(ip) => self.deliver(now, &ip, out),
                Action::NewIndex(_) => {}
            }
        }
    }

    /// Runs timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<LinkEvent>) {
        if matches!(self.phase, Phase::Failed) {
            return;
        }
        let mut actions = Vec::new();
        if self.session.handle_timeout(now, &mut actions).is_err() {
            return self.fail("the session with the issuer expired".into(), out);
        }
        self.transmit(actions, out);
        if !self.is_ready() && now >= self.deadline {
            self.fail("the issuer did not answer within 10 s".into(), out);
        }
    }

    /// When [`IssuerLink::handle_timeout`] should run.
    pub fn poll_timeout(&self) -> Instant {
        let t = self.session.poll_timeout();
        if self.is_ready() {
            t
        } else {
            t.min(self.deadline)
        }
    }

    fn encapsulate(&mut self, now: Instant, ip: &[u8], out: &mut Vec<LinkEvent>) {
        let mut actions = Vec::new();
        self.session.encapsulate(now, ip, &mut actions);
        self.transmit(actions, out);
    }

    fn transmit(&mut self, actions: Vec<Action>, out: &mut Vec<LinkEvent>) {
        for a in actions {
            if let Action::Transmit(d) = a {
                out.push(LinkEvent::Transmit(d));
            }
        }
    }

    fn fail(&mut self, why: String, out: &mut Vec<LinkEvent>) {
        if !matches!(self.phase, Phase::Failed) {
            self.phase = Phase::Failed;
            out.push(LinkEvent::Failed(why));
        }
    }

    fn deliver(&mut self, now: Instant, ip: &[u8], out: &mut Vec<LinkEvent>) {
        if let Phase::Ready(addr) = self.phase {
            if let Ok(d) = parse_udp(ip) {
                let from_service = d.src.port() == issuer::SERVICE_PORT
                    && d.dst == SocketAddr::V4(SocketAddrV4::new(addr, CLIENT_PORT));
                if from_service {
                    out.push(LinkEvent::Response(d.payload.to_vec()));
                }
            }
            return;
        }
        let Some(msg) = control_message(ip) else {
            return;
        };
        match std::mem::replace(&mut self.phase, Phase::Failed) {
            Phase::Attesting { nonce, mut parts } => {
                let blob = match msg {
                    Message::Evidence {
                        part,
                        parts: n,
                        bytes,
                    } => match parts.add(part, n, bytes) {
                        Ok(Some(blob)) => blob,
                        Ok(None) => {
                            self.phase = Phase::Attesting { nonce, parts };
                            return;
                        }
                        Err(e) => {
                            return self
                                .failed(format!("the issuer's evidence is malformed: {e}"), out)
                        }
                    },
                    Message::Refused { detail, .. } => {
                        return self.failed(format!("the issuer gave no evidence: {detail}"), out)
                    }
                    _ => {
                        self.phase = Phase::Attesting { nonce, parts };
                        return;
                    }
                };
                match self
                    .verification
                    .check(&blob, &self.issuer_key, &self.our_key, &nonce)
                {
                    Ok(claims) => {
                        let (expect, hello) = ClientSetup::new(CLIENT_VERSION).start();
                        self.phase = Phase::Hello(expect, Box::new(claims));
                        self.deadline = now + STEP_TIMEOUT;
                        let ip = control_packet(Ipv4Addr::UNSPECIFIED, &hello);
                        self.encapsulate(now, &ip, out);
                    }
                    Err(reason) => {
                        self.failed(format!("the issuer failed attestation: {reason}"), out)
                    }
                }
            }
            Phase::Hello(expect, claims) => match expect.handle(msg) {
                Ok(admission) => {
                    self.phase = Phase::Ready(admission.tunnel_addr);
                    out.push(LinkEvent::Ready(claims));
                }
                Err(e) => self.failed(format!("the issuer refused the session: {e}"), out),
            },
            other => self.phase = other,
        }
    }

    fn failed(&mut self, why: String, out: &mut Vec<LinkEvent>) {
        self.phase = Phase::Failed;
        out.push(LinkEvent::Failed(why));
    }
}
