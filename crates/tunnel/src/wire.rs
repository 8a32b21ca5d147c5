//! UDP-in-IP packets, the unit that crosses each tunnel.
//!
//! Inner WireGuard messages ride in UDP datagrams inside the outer tunnel, and control
//! messages ride in UDP datagrams to a relay's in-tunnel address. Parsing goes through
//! smoltcp's checked views, so a short or lying header is an error, never a panic.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    IpAddress, IpProtocol, IpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, UdpPacket, UdpRepr,
};

/// Hop limit of packets built here; they only cross one tunnel hop.
const HOP_LIMIT: u8 = 64;

/// What was wrong with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Neither a valid IPv4 nor IPv6 header.
    #[error("not a valid IPv4 or IPv6 packet")]
    NotIp,
    /// A valid IP packet carrying something other than UDP.
    #[error("IP packet does not carry UDP")]
    NotUdp,
    /// UDP header or checksum invalid.
    #[error("malformed UDP datagram (length or checksum)")]
    BadUdp,
    /// Source and destination are of different IP families.
    #[error("source and destination addresses are of different IP families")]
    MixedFamilies,
    /// The datagram would not fit in one IP packet.
    #[error("payload of {0} bytes does not fit in one IP packet")]
    TooLarge(usize),
    /// The buffer to write a packet into is not the packet's size.
    #[error("a {needed}-byte packet cannot be written into a {given}-byte buffer")]
    BufferSize {
        /// The packet's length.
        needed: usize,
        /// The buffer's.
        given: usize,
    },
}

/// A parsed UDP datagram borrowing its payload from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
    /// Where the payload starts in the packet (IP and UDP headers before it), so a caller
    /// that owns the packet can keep just the payload without copying it.
    pub payload_at: usize,
}

/// Parses an IPv4 or IPv6 packet carrying UDP, checking lengths and checksums.
pub fn parse_udp(packet: &[u8]) -> Result<UdpDatagram<'_>, WireError> {
    let caps = ChecksumCapabilities::default();
    let (src_ip, dst_ip, proto, payload, header): (IpAddr, IpAddr, _, &[u8], usize) =
        match packet.first() {
            Some(b) if b >> 4 == 4 => {
                let ip = Ipv4Packet::new_checked(packet).map_err(|_| WireError::NotIp)?;
                let repr = Ipv4Repr::parse(&ip, &caps).map_err(|_| WireError::NotIp)?;
                (
                    repr.src_addr.into(),
                    repr.dst_addr.into(),
                    repr.next_header,
                    ip.payload(),
                    usize::from(ip.header_len()),
                )
            }
            Some(b) if b >> 4 == 6 => {
                let ip = Ipv6Packet::new_checked(packet).map_err(|_| WireError::NotIp)?;
                let repr = Ipv6Repr::parse(&ip).map_err(|_| WireError::NotIp)?;
                (
                    repr.src_addr.into(),
                    repr.dst_addr.into(),
                    repr.next_header,
                    ip.payload(),
                    ip.header_len(),
                )
            }
            _ => return Err(WireError::NotIp),
        };
    if proto != IpProtocol::Udp {
        return Err(WireError::NotUdp);
    }
    let udp = UdpPacket::new_checked(payload).map_err(|_| WireError::BadUdp)?;
    let repr = UdpRepr::parse(&udp, &src_ip.into(), &dst_ip.into(), &caps)
        .map_err(|_| WireError::BadUdp)?;
    Ok(UdpDatagram {
        src: SocketAddr::new(src_ip, repr.src_port),
        dst: SocketAddr::new(dst_ip, repr.dst_port),
        payload: udp.payload(),
        payload_at: header + repr.header_len(),
    })
}

/// Which address of a packet [`readdress_v4`] changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Address {
    /// The source address.
    Source,
    /// The destination address.
    Destination,
}

/// Changes an IPv4 packet's source or destination address in place. The IPv4 header
/// checksum is recomputed and a TCP or UDP checksum adjusted for the change (RFC 1624, no
/// pass over the payload), so a host can keep one tunnel address while its session uses
/// another.
pub fn readdress_v4(packet: &mut [u8], which: Address, to: Ipv4Addr) -> Result<(), WireError> {
    let mut ip = Ipv4Packet::new_checked(&mut *packet).map_err(|_| WireError::NotIp)?;
    let from = match which {
        Address::Source => ip.src_addr(),
        Address::Destination => ip.dst_addr(),
    };
    if from == to {
        return Ok(());
    }
    match which {
        Address::Source => ip.set_src_addr(to),
        Address::Destination => ip.set_dst_addr(to),
    }
    ip.fill_checksum();
    let (proto, header, total) = (
        ip.next_header(),
        usize::from(ip.header_len()),
        usize::from(ip.total_len()),
    );
    // Later fragments carry no transport header.
    if ip.frag_offset() != 0 {
        return Ok(());
    }
    let at = match proto {
        IpProtocol::Tcp => 16,
        IpProtocol::Udp => 6,
        _ => return Ok(()),
    };
    let Some(field) = packet
        .get_mut(header..total)
        .and_then(|l4| l4.get_mut(at..at + 2))
        .and_then(|f| <&mut [u8; 2]>::try_from(f).ok())
    else {
        return Ok(());
    };
    let old = u16::from_be_bytes(*field);
    // A UDP checksum of zero means none was computed.
    if proto == IpProtocol::Udp && old == 0 {
        return Ok(());
    }
    let ([f0, f1, f2, f3], [t0, t1, t2, t3]) = (from.octets(), to.octets());
    let mut sum = u32::from(!old);
    for (f, t) in [([f0, f1], [t0, t1]), ([f2, f3], [t2, t3])] {
        sum += u32::from(!u16::from_be_bytes(f));
        sum += u32::from(u16::from_be_bytes(t));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut new = !(sum as u16);
    if proto == IpProtocol::Udp && new == 0 {
        new = 0xffff;
    }
    *field = new.to_be_bytes();
    Ok(())
}

/// Builds an IP packet carrying one UDP datagram, with checksums filled in.
pub fn build_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::new();
    build_udp_into(src, dst, payload, UdpChecksum::Compute, &mut buf)?;
    Ok(buf)
}

/// Whether [`build_udp_into`] computes the UDP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpChecksum {
    /// Computed over the whole datagram.
    Compute,
    /// Left at zero, "none computed" (RFC 768), for datagrams that travel only inside a
    /// tunnel whose AEAD already protects them: it saves a pass over every byte at each
    /// end. IPv4 only; IPv6 requires a checksum and gets one.
    Omit,
}

/// Like [`build_udp`], into `buf` (replacing what it held), so a caller can reuse buffers.
pub fn build_udp_into(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    checksum: UdpChecksum,
    buf: &mut Vec<u8>,
) -> Result<(), WireError> {
    let len = udp_packet_len(src, dst, payload.len())?;
    buf.clear();
    buf.resize(len, 0);
    emit_udp(src, dst, payload, checksum, buf)
}

/// The length of the IP packet that carries `payload_len` bytes of UDP from `src` to `dst`.
pub fn udp_packet_len(
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
) -> Result<usize, WireError> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(WireError::MixedFamilies);
    }
    let (ip_header_len, udp_len) = (ip_repr(src, dst, payload_len).header_len(), 8 + payload_len);
    // IPv4 counts its header in the 16-bit total length; IPv6 counts only the payload.
    let counted = if src.is_ipv4() {
        ip_header_len + udp_len
    } else {
        udp_len
    };
    if counted > usize::from(u16::MAX) {
        return Err(WireError::TooLarge(payload_len));
    }
    Ok(ip_header_len + udp_len)
}

/// Writes the IP packet carrying `payload` over UDP into `buf`, which must be
/// [`udp_packet_len`] long: a caller that owns the buffer to be encrypted writes straight
/// into it.
pub fn emit_udp(
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    checksum: UdpChecksum,
    buf: &mut [u8],
) -> Result<(), WireError> {
    let len = udp_packet_len(src, dst, payload.len())?;
    if buf.len() != len {
        return Err(WireError::BufferSize {
            needed: len,
            given: buf.len(),
        });
    }
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let mut caps = ChecksumCapabilities::default();
    if checksum == UdpChecksum::Omit && src.is_ipv4() {
        caps.udp = smoltcp::phy::Checksum::None;
    }
    let ip = ip_repr(src, dst, payload.len());
    ip.emit(&mut *buf, &caps);
    let (_, udp_buf) = buf.split_at_mut(ip.header_len());
    udp.emit(
        &mut UdpPacket::new_unchecked(udp_buf),
        &IpAddress::from(src.ip()),
        &IpAddress::from(dst.ip()),
        payload.len(),
        |p| p.copy_from_slice(payload),
        &caps,
    );
    Ok(())
}

fn ip_repr(src: SocketAddr, dst: SocketAddr, payload_len: usize) -> IpRepr {
    IpRepr::new(
        src.ip().into(),
        dst.ip().into(),
        IpProtocol::Udp,
        8 + payload_len,
        HOP_LIMIT,
    )
}

/// The length an IP packet declares, so padding added by WireGuard can be cut off.
pub fn ip_len(packet: &[u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 => Some(usize::from(
            Ipv4Packet::new_checked(packet).ok()?.total_len(),
        )),
        6 => Some(Ipv6Packet::new_checked(packet).ok()?.total_len()),
        _ => None,
    }
}

/// Source and destination addresses of an IP packet.
pub fn ip_addrs(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let p = Ipv4Packet::new_checked(packet).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        6 => {
            let p = Ipv6Packet::new_checked(packet).ok()?;
            Some((p.src_addr().into(), p.dst_addr().into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_packet_written_in_place_is_the_built_one_and_needs_its_exact_size() {
        for (src, dst) in [
            ("100.64.0.2:4000", "198.51.100.7:51820"),
            ("[fd00::2]:4000", "[2001:db8::7]:51820"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let payload = [0xa5; 1000];
            let mut built = Vec::new();
            build_udp_into(src, dst, &payload, UdpChecksum::Omit, &mut built).unwrap();
            let len = udp_packet_len(src, dst, payload.len()).unwrap();
            assert_eq!(len, built.len());
            let mut in_place = vec![0xff; len];
            emit_udp(src, dst, &payload, UdpChecksum::Omit, &mut in_place).unwrap();
            assert_eq!(in_place, built);
            let mut short = vec![0; len - 1];
            assert_eq!(
                emit_udp(src, dst, &payload, UdpChecksum::Omit, &mut short),
                Err(WireError::BufferSize {
                    needed: len,
                    given: len - 1
                })
            );
        }
        let v4: SocketAddr = "100.64.0.2:4000".parse().unwrap();
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(udp_packet_len(v4, v6, 1), Err(WireError::MixedFamilies));
        assert_eq!(
            udp_packet_len(v4, v4, 65_535),
            Err(WireError::TooLarge(65_535))
        );
    }

    #[test]
    fn udp_round_trip_v4_and_v6() {
        for (src, dst) in [
            ("100.64.0.2:4000", "127.0.0.1:51820"),
            ("[fd00::2]:4000", "[::1]:51820"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let pkt = build_udp(src, dst, b"hello").unwrap();
            let d = parse_udp(&pkt).unwrap();
            assert_eq!((d.src, d.dst, d.payload), (src, dst, &b"hello"[..]));
            assert_eq!(&pkt[d.payload_at..], b"hello");
            assert_eq!(ip_len(&pkt), Some(pkt.len()));
            assert_eq!(ip_addrs(&pkt), Some((src.ip(), dst.ip())));
        }
    }

    #[test]
    fn an_omitted_checksum_is_zero_on_ipv4_and_accepted() {
        let (src, dst): (SocketAddr, SocketAddr) = (
            "100.64.0.2:51820".parse().unwrap(),
            "192.0.2.7:51820".parse().unwrap(),
        );
        let mut pkt = vec![1u8; 3];
        build_udp_into(src, dst, b"inner message", UdpChecksum::Omit, &mut pkt).unwrap();
        assert_eq!(&pkt[26..28], [0, 0], "the UDP checksum field");
        assert_eq!(pkt, {
            let mut full = build_udp(src, dst, b"inner message").unwrap();
            full[26..28].copy_from_slice(&[0, 0]);
            full
        });
        let d = parse_udp(&pkt).unwrap();
        assert_eq!((d.src, d.dst, d.payload), (src, dst, &b"inner message"[..]));
        // IPv6 requires the checksum, so it is computed anyway.
        let (src6, dst6): (SocketAddr, SocketAddr) = (
            "[fd00::2]:1".parse().unwrap(),
            "[fd00::1]:2".parse().unwrap(),
        );
        build_udp_into(src6, dst6, b"x", UdpChecksum::Omit, &mut pkt).unwrap();
        assert_eq!(pkt, build_udp(src6, dst6, b"x").unwrap());
    }

    #[test]
    fn corrupted_checksum_is_rejected() {
        let src: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let mut pkt = build_udp(src, dst, b"payload").unwrap();
        let last = pkt.len() - 1;
        pkt[last] ^= 1;
        assert_eq!(parse_udp(&pkt), Err(WireError::BadUdp));
        assert_eq!(
            build_udp(src, "[::1]:1".parse().unwrap(), b""),
            Err(WireError::MixedFamilies)
        );
    }

    #[test]
    fn readdressed_tcp_keeps_a_valid_checksum() {
        use smoltcp::wire::{TcpPacket, TcpRepr, TcpSeqNumber};
        let (a, b, c) = (
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(198, 51, 100, 7),
            Ipv4Addr::new(100, 64, 0, 3),
        );
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control: smoltcp::wire::TcpControl::Psh,
            seq_number: TcpSeqNumber(7),
            ack_number: Some(TcpSeqNumber(9)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: a,
            dst_addr: b,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.header_len() + payload.len(),
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut pkt = vec![0u8; ip.buffer_len() + tcp.buffer_len()];
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut pkt[..]), &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(&mut pkt[ip.buffer_len()..]),
            &a.into(),
            &b.into(),
            &caps,
        );
        readdress_v4(&mut pkt, Address::Source, c).unwrap();
        let parsed = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert!(parsed.verify_checksum());
        assert_eq!(parsed.src_addr(), c);
        let seg = TcpPacket::new_checked(parsed.payload()).unwrap();
        assert!(seg.verify_checksum(&c.into(), &b.into()));
        assert_eq!(seg.payload(), payload);
        // And back, on the way in.
        readdress_v4(&mut pkt, Address::Source, a).unwrap();
        let parsed = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        let seg = TcpPacket::new_checked(parsed.payload()).unwrap();
        assert!(seg.verify_checksum(&a.into(), &b.into()));
        assert_eq!(
            readdress_v4(&mut [0u8; 10], Address::Source, c),
            Err(WireError::NotIp)
        );
    }

    proptest! {
        #[test]
        fn readdressed_udp_still_parses(payload in proptest::collection::vec(any::<u8>(), 0..1400),
                                        a in any::<[u8; 4]>(), b in any::<[u8; 4]>(),
                                        c in any::<[u8; 4]>(), p in 1u16.., q in 1u16..,
                                        dst in any::<bool>()) {
            let (src, dstaddr) = (SocketAddr::from((a, p)), SocketAddr::from((b, q)));
            let mut pkt = build_udp(src, dstaddr, &payload).unwrap();
            let which = if dst { Address::Destination } else { Address::Source };
            readdress_v4(&mut pkt, which, Ipv4Addr::from(c)).unwrap();
            let d = parse_udp(&pkt).unwrap();
            let (want_src, want_dst) = if dst {
                (src, SocketAddr::from((c, q)))
            } else {
                (SocketAddr::from((c, p)), dstaddr)
            };
            prop_assert_eq!(d.src, want_src);
            prop_assert_eq!(d.dst, want_dst);
            prop_assert_eq!(d.payload, &payload[..]);
        }

        #[test]
        fn readdress_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                  c in any::<[u8; 4]>()) {
            let _ = readdress_v4(&mut bytes, Address::Source, Ipv4Addr::from(c));
            let _ = readdress_v4(&mut bytes, Address::Destination, Ipv4Addr::from(c));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse_udp(&bytes);
            let _ = ip_len(&bytes);
            let _ = ip_addrs(&bytes);
        }

        #[test]
        fn build_then_parse(payload in proptest::collection::vec(any::<u8>(), 0..1400),
                            a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in 1u16.., q in 1u16..) {
            let src = SocketAddr::from((a, p));
            let dst = SocketAddr::from((b, q));
            let pkt = build_udp(src, dst, &payload).unwrap();
            let d = parse_udp(&pkt).unwrap();
            prop_assert_eq!(d.src, src);
            prop_assert_eq!(d.dst, dst);
            prop_assert_eq!(d.payload, &payload[..]);
            prop_assert_eq!(&pkt[d.payload_at..d.payload_at + payload.len()], &payload[..]);
        }
    }
}
