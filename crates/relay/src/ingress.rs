//! The ingress: first hop. It sees the client's address and which egress it uses, never
//! the destination or the payload.
//!
//! It decrypts the outer layer and forwards the inner UDP datagram, unchanged, to a listed
//! egress from its own address, with a source port per session (the edge owns one socket
//! per admitted session). Anything else is dropped and counted.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use tunnel::wire::{emit_udp, parse_udp, udp_packet_len, UdpChecksum};

use crate::counters::{Counters, Drop};
use crate::table::{
    AttestRequest, SessionId, SessionTable, TableEvent, TrustedKeyMap, TrustedKeySet,
};

/// What the ingress asks its edge to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngressOutput {
    /// Send a datagram to a client from the relay's public socket.
    ToClient {
        /// The client's address.
        to: SocketAddr,
        /// The WireGuard message.
        datagram: Vec<u8>,
    },
    /// Open this session's forwarding socket (own source port).
    OpenForward(SessionId),
    /// Send an inner datagram to an egress from the session's forwarding socket.
    Forward {
        /// The session, naming the socket to send from.
        id: SessionId,
        /// A listed egress endpoint.
        to: SocketAddr,
        /// The inner WireGuard message, as the client sent it.
        payload: Vec<u8>,
    },
    /// Close this session's forwarding socket.
    CloseForward(SessionId),
    /// Make TEE evidence off the event loop, then hand it to [`Ingress::answer_attest`].
    Attest(AttestRequest),
}

/// Where a session's replies go back to inside the outer tunnel.
struct Forwarding {
    client_port: u16,
}

/// The ingress relay, sans-IO.
pub struct Ingress {
    table: SessionTable,
    egresses: TrustedKeySet<SocketAddr>,
    forwards: TrustedKeyMap<SessionId, Forwarding>,
    /// Reused for every call, so the packet path does not allocate a list.
    events: Vec<TableEvent>,
}

impl Ingress {
    /// An ingress forwarding only to `egresses` (the directory's egress endpoints).
    pub fn new(table: SessionTable, egresses: impl IntoIterator<Item = SocketAddr>) -> Self {
        Self {
            table,
            egresses: egresses.into_iter().collect(),
            forwards: TrustedKeyMap::default(),
            events: Vec::new(),
        }
    }

    /// Replaces the list of egress endpoints (a new directory was loaded).
    pub fn set_egresses(&mut self, egresses: impl IntoIterator<Item = SocketAddr>) {
        self.egresses = egresses.into_iter().collect();
    }

    /// Totals since start.
    pub fn counters(&self) -> &Counters {
        &self.table.counters
    }

    /// The session table (for the relay's key and session count).
    pub fn table(&self) -> &SessionTable {
        &self.table
    }

    /// A datagram from a client.
    pub fn handle_client(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Vec<IngressOutput>,
    ) {
        let mut events = std::mem::take(&mut self.events);
        self.table.handle_datagram(now, from, datagram, &mut events);
        self.apply(&mut events, out);
        self.events = events;
    }

    /// A datagram that arrived on a session's forwarding socket.
    pub fn handle_egress(
        &mut self,
        now: Instant,
        id: SessionId,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<IngressOutput>,
    ) {
        self.table.counters.rx_datagrams += 1;
        if !self.egresses.contains(&from) {
            return self.table.counters.drop(Drop::NotEgress);
        }
        let (Some(addr), Some(fwd)) = (self.table.admitted_addr(id), self.forwards.get(&id)) else {
            return self.table.counters.drop(Drop::NoSession);
        };
        let to = SocketAddr::V4(SocketAddrV4::new(addr, fwd.client_port));
        // No UDP checksum: the session's encryption authenticates the packet, and the
        // egress's the message inside.
        let Ok(len) = udp_packet_len(from, to, payload.len()) else {
            // An IPv6 egress cannot be answered inside an IPv4 outer tunnel.
            return self.table.counters.drop(Drop::NotIp);
        };
        let mut events = std::mem::take(&mut self.events);
        // Written straight into the buffer that the session encrypts.
        self.table.send_with(
            now,
            id,
            len,
            |buf| {
                let built = emit_udp(from, to, payload, UdpChecksum::Omit, buf);
                debug_assert!(built.is_ok(), "the buffer has the packet's size");
            },
            &mut events,
        );
        self.apply(&mut events, out);
        self.events = events;
    }

    /// Evidence that [`IngressOutput::Attest`] asked for, made.
    pub fn answer_attest(
        &mut self,
        now: Instant,
        req: &AttestRequest,
        evidence: Result<attest::Evidence, String>,
        out: &mut Vec<IngressOutput>,
    ) {
        let mut events = std::mem::take(&mut self.events);
        self.table.answer_attest(now, req, evidence, &mut events);
        self.apply(&mut events, out);
        self.events = events;
    }

    /// Runs timers.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<IngressOutput>) {
        let mut events = std::mem::take(&mut self.events);
        self.table.handle_timeout(now, &mut events);
        self.apply(&mut events, out);
        self.events = events;
    }

    /// When [`Ingress::handle_timeout`] wants to run.
    pub fn poll_timeout(&self) -> Instant {
        self.table.poll_timeout()
    }

    fn apply(&mut self, events: &mut Vec<TableEvent>, out: &mut Vec<IngressOutput>) {
        for ev in events.drain(..) {
            match ev {
                TableEvent::Transmit { to, datagram } => {
                    out.push(IngressOutput::ToClient { to, datagram })
                }
                TableEvent::Admitted { id, .. } => {
                    self.forwards.insert(id, Forwarding { client_port: 0 });
                    out.push(IngressOutput::OpenForward(id));
                }
                TableEvent::Packet { id, ip } => self.forward(id, ip, out),
                TableEvent::Closed { id } => {
                    if self.forwards.remove(&id).is_some() {
                        out.push(IngressOutput::CloseForward(id));
                    }
                }
                TableEvent::Attest(req) => out.push(IngressOutput::Attest(req)),
            }
        }
    }

    /// Sends the inner datagram on, cut out of the decrypted packet in place (no copy into
    /// a new buffer).
    fn forward(&mut self, id: SessionId, mut ip: Vec<u8>, out: &mut Vec<IngressOutput>) {
        let Ok(d) = parse_udp(&ip) else {
            return self.table.counters.drop(Drop::NotEgress);
        };
        if !self.egresses.contains(&d.dst) {
            return self.table.counters.drop(Drop::NotEgress);
        }
        let Some(fwd) = self.forwards.get_mut(&id) else {
            return self.table.counters.drop(Drop::NoSession);
        };
        fwd.client_port = d.src.port();
        let (to, len, start) = (d.dst, d.payload.len(), d.payload_at);
        self.table.counters.tx_datagrams += 1;
        self.table.counters.forwarded += 1;
        self.table.counters.forwarded_bytes += len as u64;
        ip.truncate(start + len);
        ip.drain(..start);
        out.push(IngressOutput::Forward {
            id,
            to,
            payload: ip,
        });
    }
}
