//! UDP without smoltcp sockets: datagrams are parsed and built with smoltcp's wire `Repr`s,
//! so terminate mode can take datagrams to any address and answer from that address.

use std::net::SocketAddr;
use std::ops::Range;

use crate::error::StackError;
use crate::event::{Event, UdpDatagram, Unreachable};
use crate::stack::is_unicast;
use crate::wire::{self, Parsed};
use crate::{Mode, Stack};

impl Stack {
    /// Client mode: reserve a local UDP port for datagrams (`0` picks an ephemeral one) and
    /// return it. Datagrams to unbound ports are answered with ICMP port unreachable.
    pub fn udp_bind(&mut self, port: u16) -> Result<u16, StackError> {
        if self.config.mode != Mode::Client {
            return Err(StackError::WrongMode {
                op: "udp_bind",
                mode: self.config.mode,
            });
        }
        if port == 0 {
            return self.allocate_port(true).ok_or(StackError::PortsExhausted);
        }
        if self.udp_ports.insert(port) {
            Ok(port)
        } else {
            Err(StackError::UdpPortInUse(port))
        }
    }

    /// Client mode: release a port reserved with [`udp_bind`](Self::udp_bind).
    pub fn udp_unbind(&mut self, port: u16) {
        self.udp_ports.remove(&port);
    }

    /// Largest UDP payload that fits one packet to `dst`.
    pub fn max_udp_payload(&self, dst: SocketAddr) -> usize {
        self.config
            .mtu
            .saturating_sub(wire::ip_header_len(dst.ip()) + smoltcp::wire::UDP_HEADER_LEN)
    }

    /// Send a UDP datagram into the tunnel.
    ///
    /// Client mode: `src` is this stack's address (or unspecified, to pick the one of `dst`'s
    /// family) and a port. Terminate mode: `src` is any address, normally the destination of
    /// the datagram being answered, so the reply comes from where the client sent to.
    pub fn udp_send(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> Result<(), StackError> {
        if dst.port() == 0 || !is_unicast(dst.ip()) {
            return Err(StackError::InvalidDestination(dst));
        }
        let src = match self.config.mode {
            Mode::Client if src.ip().is_unspecified() => SocketAddr::new(
                self.source_for(dst.ip())
                    .ok_or(StackError::NoSourceAddress(dst))?,
                src.port(),
            ),
            Mode::Client if !self.is_local(src.ip()) => return Err(StackError::ForeignSource(src)),
            Mode::Terminate if !is_unicast(src.ip()) => {
                return Err(StackError::InvalidDestination(src))
            }
            _ => src,
        };
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(StackError::FamilyMismatch { src, dst });
        }
        let max = self.max_udp_payload(dst);
        if payload.len() > max {
            return Err(StackError::DatagramTooLarge {
                len: payload.len(),
                max,
            });
        }
        if !self.dev.tx_has_room() {
            self.stats.udp_dropped += 1;
            return Err(StackError::TxQueueFull);
        }
        self.push_packet(wire::udp(src, dst, payload));
        self.stats.udp_out += 1;
        Ok(())
    }

    /// Refuse a received datagram: answer with ICMP destination unreachable for `reason`,
    /// sent from the datagram's destination address.
    pub fn refuse_udp(&mut self, datagram: &UdpDatagram, reason: Unreachable) {
        self.stats.udp_dropped += 1;
        if let Some(packet) =
            wire::icmp_unreachable(datagram.src, datagram.dst, &datagram.payload, reason)
        {
            self.push_packet(packet);
        }
    }

    /// Report a datagram from the tunnel, or refuse it.
    pub(crate) fn receive_udp(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        if !is_unicast(src.ip()) || !is_unicast(dst.ip()) || src.port() == 0 || dst.port() == 0 {
            self.stats.unsupported_dropped += 1;
            return;
        }
        let accepted = match self.config.mode {
            Mode::Client => {
                if !self.is_local(dst.ip()) {
                    self.stats.unsupported_dropped += 1;
                    return;
                }
                self.udp_ports.contains(&dst.port())
            }
            Mode::Terminate => {
                if self.source_for(dst.ip()).is_none() {
                    self.stats.unsupported_dropped += 1;
                    return;
                }
                true
            }
        };
        if !accepted {
            let packet = wire::icmp_unreachable(src, dst, payload, Unreachable::Port);
            self.stats.udp_dropped += 1;
            if let Some(packet) = packet {
                self.push_packet(packet);
            }
            return;
        }
        if self.events.len() >= self.config.max_events {
            self.stats.udp_dropped += 1;
            return;
        }
        self.stats.udp_in += 1;
        self.events.push_back(Event::Udp(UdpDatagram {
            src,
            dst,
            payload: spare::copy_of(payload),
        }));
    }

    /// Client mode: report an ICMP unreachable about a datagram this stack sent.
    pub(crate) fn receive_udp_unreachable(&mut self, local: SocketAddr, remote: SocketAddr) {
        if self.config.mode == Mode::Client
            && self.is_local(local.ip())
            && self.udp_ports.contains(&local.port())
            && self.events.len() < self.config.max_events
        {
            self.events
                .push_back(Event::UdpUnreachable { local, remote });
        } else {
            self.stats.unsupported_dropped += 1;
        }
    }
}

/// A datagram from the tunnel that terminate mode takes as it is, found without a [`Stack`]:
/// an egress relays UDP without running one. The payload is `packet[payload]`, so a caller
/// that owns the packet sends it on without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainUdp {
    /// The client's address and port.
    pub src: SocketAddr,
    /// Where the datagram goes.
    pub dst: SocketAddr,
    /// Where the payload lies in the packet.
    pub payload: Range<usize>,
}

/// The datagram in `packet` if [`Mode::Terminate`] would take it as it is: well formed,
/// checksum valid, unicast both ways, both ports set. `None` for everything else (TCP, ICMP,
/// fragments, malformed or odd datagrams), which a [`Stack`] handles or drops and counts.
pub fn plain_udp(packet: &[u8]) -> Option<PlainUdp> {
    match wire::parse(packet) {
        Ok(Parsed::Udp {
            src,
            dst,
            payload,
            payload_at,
        }) if is_unicast(src.ip())
            && is_unicast(dst.ip())
            && src.port() != 0
            && dst.port() != 0 =>
        {
            Some(PlainUdp {
                src,
                dst,
                payload: payload_at..payload_at + payload.len(),
            })
        }
        _ => None,
    }
}

/// The ICMP destination unreachable that refuses a datagram from `src` to `dst`, sent from
/// `dst`: what [`Stack::refuse_udp`] sends, for a caller that relays UDP without a stack.
pub fn unreachable(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    reason: Unreachable,
) -> Option<Vec<u8>> {
    wire::icmp_unreachable(src, dst, payload, reason)
}
