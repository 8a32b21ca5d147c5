//! Reading and writing the few packets the stack handles outside smoltcp's sockets: SYNs it
//! must see first, UDP datagrams, ICMP unreachables and RSTs. Only smoltcp's checked views and
//! `Repr`s are used, so a short or lying header is a [`Malformed`] error, never a panic.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, Icmpv6DstUnreachable, Icmpv6Packet, Icmpv6Repr,
    IpAddress, IpProtocol, IpRepr, IpVersion, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
    TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr, UDP_HEADER_LEN,
};

use crate::event::Unreachable;

/// Hop limit of packets the stack builds itself.
const HOP_LIMIT: u8 = 64;
/// An ICMPv4 error stays within the 576 bytes every IPv4 host accepts (RFC 1812 4.3.2.3).
const ICMPV4_MAX_LEN: usize = 576;
/// An ICMPv6 error stays within the IPv6 minimum MTU (RFC 4443 2.4(c)).
const ICMPV6_MAX_LEN: usize = 1280;
/// Length of an ICMP error header before the quoted packet (both versions).
const ICMP_ERROR_HEADER_LEN: usize = 8;

/// A packet that does not parse: truncated, inconsistent lengths or a bad checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

impl From<smoltcp::wire::Error> for Malformed {
    fn from(_: smoltcp::wire::Error) -> Self {
        Malformed
    }
}

/// What an incoming packet is, as far as the stack's own dispatch cares.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A TCP segment; `syn` is set (with its checksum verified) for a connection request.
    Tcp {
        src: SocketAddr,
        dst: SocketAddr,
        syn: Option<Syn>,
        rst: bool,
    },
    /// A UDP datagram with a valid checksum.
    Udp {
        src: SocketAddr,
        dst: SocketAddr,
        payload: &'a [u8],
        /// Where the payload starts in the packet.
        payload_at: usize,
    },
    /// An ICMP destination unreachable about a UDP datagram we sent from `local` to `remote`.
    UdpUnreachable {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// Well formed, but nothing the stack handles (fragments, other protocols, other ICMP).
    Unsupported,
}

/// The part of a SYN needed to answer it with RST later.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Syn {
    /// Sequence number the RST acknowledges: the SYN's sequence plus its segment length.
    pub(crate) ack: TcpSeqNumber,
}

/// The IP layer of a packet.
struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    /// The IP header's length: where `payload` starts in the packet.
    header_len: usize,
    payload: &'a [u8],
}

/// Classify one IP packet from the tunnel.
pub(crate) fn parse(packet: &[u8]) -> Result<Parsed<'_>, Malformed> {
    let caps = ChecksumCapabilities::default();
    let Some(ip) = parse_ip(packet, &caps)? else {
        return Ok(Parsed::Unsupported);
    };
    let (src_ip, dst_ip) = (IpAddress::from(ip.src), IpAddress::from(ip.dst));
    match ip.protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(ip.payload)?;
            let src = SocketAddr::new(ip.src, tcp.src_port());
            let dst = SocketAddr::new(ip.dst, tcp.dst_port());
            let syn = if tcp.syn() && !tcp.ack() && !tcp.rst() {
                let repr = TcpRepr::parse(&tcp, &src_ip, &dst_ip, &caps)?;
                Some(Syn {
                    ack: repr.seq_number + repr.segment_len(),
                })
            } else {
                None
            };
            Ok(Parsed::Tcp {
                src,
                dst,
                syn,
                rst: tcp.rst(),
            })
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(ip.payload)?;
            let repr = UdpRepr::parse(&udp, &src_ip, &dst_ip, &caps)?;
            Ok(Parsed::Udp {
                src: SocketAddr::new(ip.src, repr.src_port),
                dst: SocketAddr::new(ip.dst, repr.dst_port),
                payload: udp.payload(),
                payload_at: ip.header_len + UDP_HEADER_LEN,
            })
        }
        IpProtocol::Icmp => {
            let icmp = Icmpv4Packet::new_checked(ip.payload)?;
            match Icmpv4Repr::parse(&icmp, &caps)? {
                Icmpv4Repr::DstUnreachable { header, data, .. } => Ok(quoted_udp(
                    header.next_header,
                    header.src_addr.into(),
                    header.dst_addr.into(),
                    data,
                )),
                _ => Ok(Parsed::Unsupported),
            }
        }
        IpProtocol::Icmpv6 => {
            let (IpAddr::V6(src), IpAddr::V6(dst)) = (ip.src, ip.dst) else {
                return Err(Malformed);
            };
            let icmp = Icmpv6Packet::new_checked(ip.payload)?;
            match Icmpv6Repr::parse(&src, &dst, &icmp, &caps)? {
                Icmpv6Repr::DstUnreachable { header, data, .. } => Ok(quoted_udp(
                    header.next_header,
                    header.src_addr.into(),
                    header.dst_addr.into(),
                    data,
                )),
                _ => Ok(Parsed::Unsupported),
            }
        }
        _ => Ok(Parsed::Unsupported),
    }
}

/// The IP header and payload, or `None` for a fragment (which this stack does not reassemble).
fn parse_ip<'a>(
    packet: &'a [u8],
    caps: &ChecksumCapabilities,
) -> Result<Option<Ip<'a>>, Malformed> {
    if packet.is_empty() {
        return Err(Malformed);
    }
    match IpVersion::of_packet(packet)? {
        IpVersion::Ipv4 => {
            let p = Ipv4Packet::new_checked(packet)?;
            if p.more_frags() || p.frag_offset() != 0 {
                return Ok(None);
            }
            let repr = Ipv4Repr::parse(&p, caps)?;
            Ok(Some(Ip {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                protocol: repr.next_header,
                header_len: usize::from(p.header_len()),
                payload: p.payload(),
            }))
        }
        IpVersion::Ipv6 => {
            let p = Ipv6Packet::new_checked(packet)?;
            let repr = Ipv6Repr::parse(&p)?;
            Ok(Some(Ip {
                src: repr.src_addr.into(),
                dst: repr.dst_addr.into(),
                protocol: repr.next_header,
                header_len: p.header_len(),
                payload: p.payload(),
            }))
        }
    }
}

/// The UDP endpoints quoted in an ICMP error, if it is about UDP.
fn quoted_udp(protocol: IpProtocol, src: IpAddr, dst: IpAddr, data: &[u8]) -> Parsed<'static> {
    if protocol != IpProtocol::Udp || data.len() < UDP_HEADER_LEN {
        return Parsed::Unsupported;
    }
    // The quote is cut short, so its length field may exceed it: read only the ports, which
    // the length check above guarantees are present.
    let udp = UdpPacket::new_unchecked(data);
    Parsed::UdpUnreachable {
        local: SocketAddr::new(src, udp.src_port()),
        remote: SocketAddr::new(dst, udp.dst_port()),
    }
}

/// Build an IP packet of `protocol` whose payload `emit` writes into a buffer of `len` bytes.
fn ip_packet(
    src: IpAddr,
    dst: IpAddr,
    protocol: IpProtocol,
    len: usize,
    emit: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let repr = IpRepr::new(src.into(), dst.into(), protocol, len, HOP_LIMIT);
    let mut packet = spare::zeroed(repr.buffer_len());
    let header_len = repr.header_len();
    repr.emit(&mut packet[..], &ChecksumCapabilities::default());
    emit(&mut packet[header_len..]);
    packet
}

/// The RST that refuses a SYN from `to` addressed to `from`, acknowledging it like a host
/// with no listener does (RFC 9293 3.10.7.1).
pub(crate) fn rst(from: SocketAddr, to: SocketAddr, syn: Syn) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: from.port(),
        dst_port: to.port(),
        control: TcpControl::Rst,
        seq_number: TcpSeqNumber(0),
        ack_number: Some(syn.ack),
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let (src_ip, dst_ip) = (from.ip().into(), to.ip().into());
    ip_packet(
        from.ip(),
        to.ip(),
        IpProtocol::Tcp,
        repr.buffer_len(),
        |buf| {
            repr.emit(
                &mut TcpPacket::new_unchecked(buf),
                &src_ip,
                &dst_ip,
                &ChecksumCapabilities::default(),
            );
        },
    )
}

/// Length of the IP header for addresses of `ip`'s family.
pub(crate) fn ip_header_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => smoltcp::wire::IPV4_HEADER_LEN,
        IpAddr::V6(_) => smoltcp::wire::IPV6_HEADER_LEN,
    }
}

/// Build a UDP datagram. The caller has checked that both addresses are of one family.
pub(crate) fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    ip_packet(
        src.ip(),
        dst.ip(),
        IpProtocol::Udp,
        UDP_HEADER_LEN + payload.len(),
        |buf| udp_segment(src, dst, payload, buf),
    )
}

/// Write the UDP header and payload into `buf` (exactly `8 + payload.len()` bytes).
fn udp_segment(src: SocketAddr, dst: SocketAddr, payload: &[u8], buf: &mut [u8]) {
    let repr = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    repr.emit(
        &mut UdpPacket::new_unchecked(buf),
        &src.ip().into(),
        &dst.ip().into(),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
}

/// The ICMP destination unreachable that answers the datagram `src` → `dst`, sent from `dst`'s
/// address and quoting as much of the datagram as the minimum MTU allows.
pub(crate) fn icmp_unreachable(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    reason: Unreachable,
) -> Option<Vec<u8>> {
    let mut quoted = vec![0; UDP_HEADER_LEN + payload.len()];
    udp_segment(src, dst, payload, &mut quoted);
    let caps = ChecksumCapabilities::default();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let room = ICMPV4_MAX_LEN - 2 * smoltcp::wire::IPV4_HEADER_LEN - ICMP_ERROR_HEADER_LEN;
            quoted.truncate(room);
            let repr = Icmpv4Repr::DstUnreachable {
                reason: match reason {
                    Unreachable::Port => Icmpv4DstUnreachable::PortUnreachable,
                    Unreachable::Host => Icmpv4DstUnreachable::HostUnreachable,
                    Unreachable::Prohibited => Icmpv4DstUnreachable::CommProhibited,
                },
                header: Ipv4Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Udp,
                    payload_len: quoted.len(),
                    hop_limit: HOP_LIMIT,
                },
                data: &quoted,
            };
            Some(ip_packet(
                dst.ip(),
                src.ip(),
                IpProtocol::Icmp,
                repr.buffer_len(),
                |buf| {
                    repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                },
            ))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let room = ICMPV6_MAX_LEN - 2 * smoltcp::wire::IPV6_HEADER_LEN - ICMP_ERROR_HEADER_LEN;
            quoted.truncate(room);
            let repr = Icmpv6Repr::DstUnreachable {
                reason: match reason {
                    Unreachable::Port => Icmpv6DstUnreachable::PortUnreachable,
                    Unreachable::Host => Icmpv6DstUnreachable::AddrUnreachable,
                    Unreachable::Prohibited => Icmpv6DstUnreachable::AdminProhibit,
                },
                header: Ipv6Repr {
                    src_addr: s,
                    dst_addr: d,
                    next_header: IpProtocol::Udp,
                    payload_len: quoted.len(),
                    hop_limit: HOP_LIMIT,
                },
                data: &quoted,
            };
            Some(ip_packet(
                dst.ip(),
                src.ip(),
                IpProtocol::Icmpv6,
                repr.buffer_len(),
                |buf| {
                    repr.emit(&d, &s, &mut Icmpv6Packet::new_unchecked(buf), &caps);
                },
            ))
        }
        _ => None,
    }
}
