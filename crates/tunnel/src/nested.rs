//! The client's two sessions, one inside the other.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use crate::wire::{self, parse_udp, UdpChecksum};
use crate::{Action, Session, TunnelError};

/// UDP port the client uses, inside the outer tunnel, for inner WireGuard datagrams.
pub const INNER_PORT: u16 = 51820;

/// What the nested tunnel asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NestedEvent {
    /// Send this datagram to the ingress.
    ToIngress(Vec<u8>),
    /// An IP packet from the ingress itself (not from the egress): control traffic.
    Outer(Vec<u8>),
    /// An IP packet out of the inner tunnel: from the egress or the internet behind it.
    Inner(Vec<u8>),
}

/// Outer session (client ↔ ingress) carrying the inner session (client ↔ egress).
///
/// The inner session's messages become UDP datagrams from the client's outer tunnel
/// address to the egress endpoint; the ingress forwards them without being able to read
/// them.
pub struct Nested {
    outer: Session,
    inner: Session,
    egress: SocketAddr,
    outer_addr: Ipv4Addr,
    /// What the outer session asks for while sending; reused so packets allocate no list.
    scratch: Vec<Action>,
    /// What the inner session asks for.
    inner_scratch: Vec<Action>,
    /// What the outer session asks for while receiving.
    rx_scratch: Vec<Action>,
    last_outer_rx: Option<Instant>,
    last_inner_rx: Option<Instant>,
}

impl Nested {
    /// Joins an outer session (to the ingress) and an inner one (to the egress at
    /// `egress`, the endpoint the ingress forwards to).
    pub fn new(outer: Session, inner: Session, egress: SocketAddr) -> Self {
        Self {
            outer,
            inner,
            egress,
            outer_addr: Ipv4Addr::UNSPECIFIED,
            scratch: Vec::new(),
            inner_scratch: Vec::new(),
            rx_scratch: Vec::new(),
            last_outer_rx: None,
            last_inner_rx: None,
        }
    }

    /// The address the ingress assigned in the outer tunnel; inner datagrams come from it.
    pub fn set_outer_addr(&mut self, addr: Ipv4Addr) {
        self.outer_addr = addr;
    }

    /// The egress endpoint that inner datagrams go to.
    pub fn egress(&self) -> SocketAddr {
        self.egress
    }

    /// When the ingress last sent an authenticated message (keepalives included).
    pub fn last_outer_rx(&self) -> Option<Instant> {
        self.last_outer_rx
    }

    /// When the egress last sent an authenticated message (keepalives included).
    pub fn last_inner_rx(&self) -> Option<Instant> {
        self.last_inner_rx
    }

    /// The outer session.
    pub fn outer(&self) -> &Session {
        &self.outer
    }

    /// The inner session.
    pub fn inner(&self) -> &Session {
        &self.inner
    }

    /// Starts the outer handshake.
    pub fn connect(&mut self, now: Instant, out: &mut Vec<NestedEvent>) {
        self.outer.connect(now, &mut self.scratch);
        self.flush_outer(out);
    }

    /// Sends an IP packet to the ingress itself (control messages).
    pub fn send_outer(&mut self, now: Instant, ip_packet: &[u8], out: &mut Vec<NestedEvent>) {
        self.outer.encapsulate(now, ip_packet, &mut self.scratch);
        self.flush_outer(out);
    }

    /// Sends an IP packet through both tunnels, to the egress and beyond.
    pub fn send_inner(&mut self, now: Instant, ip_packet: &[u8], out: &mut Vec<NestedEvent>) {
        let mut inner_out = std::mem::take(&mut self.inner_scratch);
        self.inner.encapsulate(now, ip_packet, &mut inner_out);
        self.carry_inner(now, &mut inner_out, out);
        self.inner_scratch = inner_out;
    }

    /// Erases both sessions' keys (see [`Session::rest`]); the next packet either way
    /// sets them up again, outer first.
    pub fn rest(&mut self, now: Instant) {
        self.inner.rest(now);
        self.outer.rest(now);
    }

    /// Processes one datagram from the ingress.
    pub fn receive(
        &mut self,
        now: Instant,
        datagram: &[u8],
        out: &mut Vec<NestedEvent>,
    ) -> Result<(), TunnelError> {
        let mut outer_out = std::mem::take(&mut self.rx_scratch);
        let mut res = self.outer.decapsulate(now, datagram, &mut outer_out);
        if res.is_ok() {
            self.last_outer_rx = Some(now);
        }
        for action in outer_out.drain(..) {
            match action {
                Action::Transmit(d) => out.push(NestedEvent::ToIngress(d)),
                Action::Deliver(ip) => res = res.and(self.demux_outer(now, ip, out)),
                Action::NewIndex(_) => {}
            }
        }
        self.rx_scratch = outer_out;
        res
    }

    /// Runs both sessions' timers.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        out: &mut Vec<NestedEvent>,
    ) -> Result<(), TunnelError> {
        let outer = self.outer.handle_timeout(now, &mut self.scratch);
        self.flush_outer(out);
        let mut inner_out = std::mem::take(&mut self.inner_scratch);
        let inner = self.inner.handle_timeout(now, &mut inner_out);
        self.carry_inner(now, &mut inner_out, out);
        self.inner_scratch = inner_out;
        outer.and(inner)
    }

    /// The earlier of both sessions' timer deadlines.
    pub fn poll_timeout(&self) -> Instant {
        self.outer.poll_timeout().min(self.inner.poll_timeout())
    }

    fn demux_outer(
        &mut self,
        now: Instant,
        ip: Vec<u8>,
        out: &mut Vec<NestedEvent>,
    ) -> Result<(), TunnelError> {
        let payload = match parse_udp(&ip) {
            Ok(d) if d.src == self.egress && d.dst.port() == INNER_PORT => d.payload,
            _ => {
                out.push(NestedEvent::Outer(ip));
                return Ok(());
            }
        };
        let mut inner_out = std::mem::take(&mut self.inner_scratch);
        let res = self.inner.decapsulate(now, payload, &mut inner_out);
        spare::give(ip);
        if res.is_ok() {
            self.last_inner_rx = Some(now);
        }
        self.carry_inner(now, &mut inner_out, out);
        self.inner_scratch = inner_out;
        res
    }

    fn carry_inner(&mut self, now: Instant, actions: &mut Vec<Action>, out: &mut Vec<NestedEvent>) {
        let src = SocketAddr::V4(SocketAddrV4::new(self.outer_addr, INNER_PORT));
        for action in actions.drain(..) {
            match action {
                Action::Transmit(msg) => {
                    // Inner messages are at most MTU-sized, so they always fit one datagram.
                    // Its UDP checksum is left out: the outer tunnel authenticates it, and
                    // the egress the message inside. Written straight into the buffer that
                    // the outer session encrypts.
                    if let Ok(len) = wire::udp_packet_len(src, self.egress, msg.len()) {
                        let egress = self.egress;
                        self.outer.encapsulate_with(
                            now,
                            len,
                            |buf| {
                                let built =
                                    wire::emit_udp(src, egress, &msg, UdpChecksum::Omit, buf);
                                debug_assert!(built.is_ok(), "the buffer has the packet's size");
                            },
                            &mut self.scratch,
                        );
                    }
                    spare::give(msg);
                }
                Action::Deliver(ip) => out.push(NestedEvent::Inner(ip)),
                Action::NewIndex(_) => {}
            }
        }
        self.flush_outer(out);
    }

    fn flush_outer(&mut self, out: &mut Vec<NestedEvent>) {
        for action in self.scratch.drain(..) {
            if let Action::Transmit(d) = action {
                out.push(NestedEvent::ToIngress(d));
            }
        }
    }
}
