//! SOCKS5 messages (RFC 1928) as pure functions over bytes.
//!
//! ```text
//! greeting          VER(5) NMETHODS METHODS...
//! method selection  VER(5) METHOD
//! request           VER(5) CMD RSV ATYP DST.ADDR DST.PORT
//! reply             VER(5) REP RSV ATYP BND.ADDR BND.PORT
//! UDP datagram      RSV(2) FRAG ATYP DST.ADDR DST.PORT DATA
//!
//! ATYP 1: 4-byte IPv4 address, 3: length byte + domain name, 4: 16-byte IPv6 address;
//! ports are big-endian u16.
//! ```
//!
//! Stream messages (greeting, request, reply) are parsed from whatever prefix of the stream
//! has arrived: [`Decoded::Incomplete`] asks for more bytes, [`Decoded::Complete`] says how
//! many bytes the message took, so bytes a client pipelined behind it are not lost. A UDP
//! datagram is always whole, so a short one is [`WireError::Truncated`].
//!
//! Nothing here panics on any input; every read is checked.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The protocol version byte that starts every stream message.
pub const VERSION: u8 = 5;

/// Authentication method "no authentication required".
pub const METHOD_NO_AUTH: u8 = 0x00;

/// Method-selection answer "no acceptable methods"; the server closes after sending it.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// Longest domain name an address field can carry (its length is one byte).
pub const MAX_DOMAIN_LEN: usize = 255;

/// Longest request: header, domain length byte, longest domain, port.
pub const MAX_REQUEST_LEN: usize = 4 + 1 + MAX_DOMAIN_LEN + 2;

/// Longest UDP header the server writes (IPv6 source): RSV, FRAG, ATYP, address, port.
pub const MAX_IP_UDP_HEADER_LEN: usize = 4 + 16 + 2;

mod atyp {
    pub(super) const IPV4: u8 = 0x01;
    pub(super) const DOMAIN: u8 = 0x03;
    pub(super) const IPV6: u8 = 0x04;
}

/// Where a request or datagram is going, or where a reply says the server is bound.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A domain name (not yet resolved) and port.
    Domain(String, u16),
}

impl Target {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Ip(addr) => addr.port(),
            Target::Domain(_, port) => *port,
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::Ip(addr)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(addr) => addr.fmt(f),
            Target::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}

/// The outcome of parsing a stream message from the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole message, and how many bytes of the input it took.
    Complete(T, usize),
    /// The input is a strict prefix of a message: read more and parse again.
    Incomplete,
}

/// Why bytes are not a SOCKS5 message, or why a message cannot be encoded.
///
/// Every variant is a client (or server) that does not speak SOCKS5 as RFC 1928 defines
/// it: sending the same bytes again does not help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The version byte is not 5.
    #[error("SOCKS version byte is {got}, expected 5; the peer does not speak SOCKS5")]
    BadVersion {
        /// The version byte found.
        got: u8,
    },

    /// The request's command is not CONNECT, BIND or UDP ASSOCIATE.
    #[error("unknown SOCKS5 command {got:#04x}")]
    UnknownCommand {
        /// The command byte found.
        got: u8,
    },

    /// The address type is not IPv4 (1), domain (3) or IPv6 (4).
    #[error("unknown SOCKS5 address type {got:#04x}")]
    UnknownAddressType {
        /// The address type byte found.
        got: u8,
    },

    /// A domain address of length zero.
    #[error("SOCKS5 domain address is empty")]
    EmptyDomain,

    /// A domain address that is not UTF-8 (host names are ASCII).
    #[error("SOCKS5 domain address is not valid UTF-8")]
    DomainNotUtf8,

    /// A domain too long for the one-byte length field (when encoding).
    #[error("domain is {len} bytes, longer than the {MAX_DOMAIN_LEN} a SOCKS5 address holds")]
    DomainTooLong {
        /// Length of the domain in bytes.
        len: usize,
    },

    /// More than 255 methods offered (when encoding a greeting).
    #[error("{len} methods offered, a SOCKS5 greeting holds at most 255")]
    TooManyMethods {
        /// Number of methods.
        len: usize,
    },

    /// A UDP datagram ends inside its header.
    #[error("SOCKS5 UDP datagram is {len} bytes, shorter than its header")]
    Truncated {
        /// Datagram length.
        len: usize,
    },

    /// The reserved field of a UDP datagram header is not zero.
    #[error("SOCKS5 UDP datagram has reserved field {got:#06x}, expected 0")]
    NonZeroReserved {
        /// The reserved field found.
        got: u16,
    },
}

impl WireError {
    /// The reply a server sends when a *request* fails to parse this way, if any.
    ///
    /// Unknown commands and address types have their own codes; other malformed requests
    /// get a general failure.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            WireError::UnknownCommand { .. } => Some(ReplyCode::CommandNotSupported),
            WireError::UnknownAddressType { .. } => Some(ReplyCode::AddressTypeNotSupported),
            WireError::BadVersion { .. }
            | WireError::EmptyDomain
            | WireError::DomainNotUtf8
            | WireError::DomainTooLong { .. } => Some(ReplyCode::GeneralFailure),
            WireError::TooManyMethods { .. }
            | WireError::Truncated { .. }
            | WireError::NonZeroReserved { .. } => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Greeting and method selection
// ---------------------------------------------------------------------------------------

/// The client's first message: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    methods: Vec<u8>,
}

impl Greeting {
    /// The offered method numbers, in the client's order.
    pub fn methods(&self) -> &[u8] {
        &self.methods
    }

    /// Whether `method` is offered.
    pub fn offers(&self, method: u8) -> bool {
        self.methods.contains(&method)
    }
}

/// Parses a greeting from the start of `buf`.
pub fn parse_greeting(buf: &[u8]) -> Result<Decoded<Greeting>, WireError> {
    stream(buf, |r| {
        version(r)?;
        let n = r.u8()?;
        let methods = r.take(usize::from(n))?.to_vec();
        Ok(Greeting { methods })
    })
}

/// Appends a greeting offering `methods`.
pub fn encode_greeting(methods: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    let n = u8::try_from(methods.len())
        .map_err(|_| WireError::TooManyMethods { len: methods.len() })?;
    out.extend_from_slice(&[VERSION, n]);
    out.extend_from_slice(methods);
    Ok(())
}

/// The server's answer to a greeting: the chosen method, or [`METHOD_NONE_ACCEPTABLE`].
pub fn encode_method_selection(method: u8) -> [u8; 2] {
    [VERSION, method]
}

/// Parses the server's method selection, returning the chosen method.
pub fn parse_method_selection(buf: &[u8]) -> Result<Decoded<u8>, WireError> {
    stream(buf, |r| {
        version(r)?;
        r.u8()
    })
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

/// What a request asks the server to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Open a TCP connection to the target and relay bytes.
    Connect,
    /// Listen for an incoming connection (not supported by this server).
    Bind,
    /// Relay UDP datagrams (RFC 1928 §7).
    UdpAssociate,
}

impl Command {
    /// The command byte.
    pub const fn code(self) -> u8 {
        match self {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
        }
    }

    /// The command for a command byte, if it is assigned.
    pub const fn from_code(code: u8) -> Option<Command> {
        match code {
            0x01 => Some(Command::Connect),
            0x02 => Some(Command::Bind),
            0x03 => Some(Command::UdpAssociate),
            _ => None,
        }
    }
}

/// A client request.
///
/// For UDP ASSOCIATE the target is the address the client will send datagrams from
/// (possibly all zeros when it does not know).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where to.
    pub target: Target,
}

/// Parses a request from the start of `buf`.
///
/// Fields are checked as they arrive, so a bad version or command is reported without
/// waiting for the rest. The reserved byte is ignored. On error,
/// [`WireError::reply_code`] gives the reply to send.
pub fn parse_request(buf: &[u8]) -> Result<Decoded<Request>, WireError> {
    stream(buf, |r| {
        version(r)?;
        let code = r.u8()?;
        let command =
            Command::from_code(code).ok_or(Fail::Bad(WireError::UnknownCommand { got: code }))?;
        let _reserved = r.u8()?;
        let target = address(r)?;
        Ok(Request { command, target })
    })
}

/// Appends a request.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) -> Result<(), WireError> {
    out.extend_from_slice(&[VERSION, request.command.code(), 0]);
    encode_address(&request.target, out)
}

// ---------------------------------------------------------------------------------------
// Reply
// ---------------------------------------------------------------------------------------

/// The REP field of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    /// 0x00: succeeded.
    Succeeded,
    /// 0x01: general SOCKS server failure.
    GeneralFailure,
    /// 0x02: connection not allowed by ruleset.
    NotAllowed,
    /// 0x03: network unreachable.
    NetworkUnreachable,
    /// 0x04: host unreachable.
    HostUnreachable,
    /// 0x05: connection refused.
    ConnectionRefused,
    /// 0x06: TTL expired.
    TtlExpired,
    /// 0x07: command not supported.
    CommandNotSupported,
    /// 0x08: address type not supported.
    AddressTypeNotSupported,
    /// 0x09 to 0xFF: unassigned.
    Unassigned(u8),
}

impl ReplyCode {
    /// The REP byte.
    pub const fn code(self) -> u8 {
        match self {
            ReplyCode::Succeeded => 0x00,
            ReplyCode::GeneralFailure => 0x01,
            ReplyCode::NotAllowed => 0x02,
            ReplyCode::NetworkUnreachable => 0x03,
            ReplyCode::HostUnreachable => 0x04,
            ReplyCode::ConnectionRefused => 0x05,
            ReplyCode::TtlExpired => 0x06,
            ReplyCode::CommandNotSupported => 0x07,
            ReplyCode::AddressTypeNotSupported => 0x08,
            ReplyCode::Unassigned(code) => code,
        }
    }

    /// The reply code for a REP byte.
    pub const fn from_code(code: u8) -> ReplyCode {
        match code {
            0x00 => ReplyCode::Succeeded,
            0x01 => ReplyCode::GeneralFailure,
            0x02 => ReplyCode::NotAllowed,
            0x03 => ReplyCode::NetworkUnreachable,
            0x04 => ReplyCode::HostUnreachable,
            0x05 => ReplyCode::ConnectionRefused,
            0x06 => ReplyCode::TtlExpired,
            0x07 => ReplyCode::CommandNotSupported,
            0x08 => ReplyCode::AddressTypeNotSupported,
            other => ReplyCode::Unassigned(other),
        }
    }

    /// The reply for a failed connect.
    ///
    /// A timeout is reported as "host unreachable": "TTL expired" would claim something
    /// about IP hops that the dialer does not know.
    pub fn from_io_error(error: &io::Error) -> ReplyCode {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut => ReplyCode::HostUnreachable,
            io::ErrorKind::NetworkUnreachable => ReplyCode::NetworkUnreachable,
            io::ErrorKind::PermissionDenied => ReplyCode::NotAllowed,
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// A server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Success, or why not.
    pub code: ReplyCode,
    /// The address the server bound (for UDP ASSOCIATE: where to send datagrams).
    pub bound: Target,
}

/// Appends a reply with an IP bound address (all this server ever sends).
pub fn encode_reply(code: ReplyCode, bound: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[VERSION, code.code(), 0]);
    encode_socket_addr(bound, out);
}

/// Parses a server reply from the start of `buf`.
pub fn parse_reply(buf: &[u8]) -> Result<Decoded<Reply>, WireError> {
    stream(buf, |r| {
        version(r)?;
        let code = ReplyCode::from_code(r.u8()?);
        let _reserved = r.u8()?;
        let bound = address(r)?;
        Ok(Reply { code, bound })
    })
}

// ---------------------------------------------------------------------------------------
// UDP datagram
// ---------------------------------------------------------------------------------------

/// A datagram on the client side of a UDP association, borrowed from its buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Fragment number; 0 for a standalone datagram. This server drops fragments.
    pub frag: u8,
    /// Destination (client to server) or source (server to client).
    pub target: Target,
    /// The payload.
    pub payload: &'a [u8],
}

/// Parses a whole datagram received on the association's UDP socket.
pub fn parse_udp_datagram(buf: &[u8]) -> Result<UdpDatagram<'_>, WireError> {
    let mut r = Reader::new(buf);
    let parsed = (|| {
        let reserved = r.u16()?;
        if reserved != 0 {
            return Err(Fail::Bad(WireError::NonZeroReserved { got: reserved }));
        }
        let frag = r.u8()?;
        let target = address(&mut r)?;
        Ok((frag, target))
    })();
    match parsed {
        Ok((frag, target)) => Ok(UdpDatagram {
            frag,
            target,
            payload: r.rest(),
        }),
        Err(Fail::Short) => Err(WireError::Truncated { len: buf.len() }),
        Err(Fail::Bad(e)) => Err(e),
    }
}

/// Appends a standalone (FRAG 0) datagram for `target` carrying `payload`.
pub fn encode_udp_datagram(
    target: &Target,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    out.extend_from_slice(&[0, 0, 0]);
    encode_address(target, out)?;
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends the header of a standalone datagram from `source`, as the server sends it.
pub fn encode_udp_header(source: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0, 0, 0]);
    encode_socket_addr(source, out);
}

// ---------------------------------------------------------------------------------------
// Addresses and the checked reader
// ---------------------------------------------------------------------------------------

fn encode_address(target: &Target, out: &mut Vec<u8>) -> Result<(), WireError> {
    match target {
        Target::Ip(addr) => encode_socket_addr(*addr, out),
        Target::Domain(name, port) => {
            let len = u8::try_from(name.len())
                .map_err(|_| WireError::DomainTooLong { len: name.len() })?;
            out.extend_from_slice(&[atyp::DOMAIN, len]);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&port.to_be_bytes());
        }
    }
    Ok(())
}

fn encode_socket_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(atyp::IPV4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(atyp::IPV6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads ATYP, the address and the port.
///
/// A domain that is an IP literal becomes [`Target::Ip`], so dialers see one form per
/// address.
fn address(r: &mut Reader<'_>) -> Result<Target, Fail> {
    let kind = r.u8()?;
    match kind {
        atyp::IPV4 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            Ok(Target::Ip(SocketAddr::new(ip.into(), r.u16()?)))
        }
        atyp::IPV6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            Ok(Target::Ip(SocketAddr::new(ip.into(), r.u16()?)))
        }
        atyp::DOMAIN => {
            let len = r.u8()?;
            let name = r.take(usize::from(len))?;
            let port = r.u16()?;
            if name.is_empty() {
                return Err(Fail::Bad(WireError::EmptyDomain));
            }
            let name = std::str::from_utf8(name).map_err(|_| WireError::DomainNotUtf8)?;
            Ok(match name.parse::<IpAddr>() {
                Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
                Err(_) => Target::Domain(name.to_owned(), port),
            })
        }
        got => Err(Fail::Bad(WireError::UnknownAddressType { got })),
    }
}

fn version(r: &mut Reader<'_>) -> Result<(), Fail> {
    match r.u8()? {
        VERSION => Ok(()),
        got => Err(Fail::Bad(WireError::BadVersion { got })),
    }
}

/// Runs a stream-message parser, turning running out of input into [`Decoded::Incomplete`].
fn stream<T>(
    buf: &[u8],
    parse: impl FnOnce(&mut Reader<'_>) -> Result<T, Fail>,
) -> Result<Decoded<T>, WireError> {
    let mut r = Reader::new(buf);
    match parse(&mut r) {
        Ok(value) => Ok(Decoded::Complete(value, r.pos)),
        Err(Fail::Short) => Ok(Decoded::Incomplete),
        Err(Fail::Bad(e)) => Err(e),
    }
}

/// Why an internal parse step stopped.
enum Fail {
    /// The input ended.
    Short,
    /// The input is wrong.
    Bad(WireError),
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Fail {
        Fail::Bad(e)
    }
}

/// A cursor whose reads fail with [`Fail::Short`] instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        let end = self.pos.checked_add(n).ok_or(Fail::Short)?;
        let bytes = self.buf.get(self.pos..end).ok_or(Fail::Short)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Fail> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, Fail> {
        Ok(u16::from_be_bytes(self.array::<2>()?))
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> Target {
        Target::Ip(s.parse().unwrap())
    }

    fn complete<T: fmt::Debug>(d: Result<Decoded<T>, WireError>, len: usize) -> T {
        match d.unwrap() {
            Decoded::Complete(value, used) => {
                assert_eq!(used, len, "consumed length");
                value
            }
            Decoded::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn greeting_parses_and_keeps_pipelined_bytes() {
        let bytes = [5, 2, 0x00, 0x02, 5, 1, 0];
        let g = complete(parse_greeting(&bytes), 4);
        assert_eq!(g.methods(), &[0x00, 0x02]);
        assert!(g.offers(METHOD_NO_AUTH));
        assert!(!g.offers(0x01));
    }

    #[test]
    fn greeting_with_no_methods_offers_nothing() {
        let g = complete(parse_greeting(&[5, 0]), 2);
        assert!(!g.offers(METHOD_NO_AUTH));
    }

    #[test]
    fn greeting_truncated_and_bad_version() {
        assert_eq!(parse_greeting(&[]), Ok(Decoded::Incomplete));
        assert_eq!(parse_greeting(&[5]), Ok(Decoded::Incomplete));
        assert_eq!(parse_greeting(&[5, 3, 0, 1]), Ok(Decoded::Incomplete));
        assert_eq!(
            parse_greeting(&[4, 1, 0]),
            Err(WireError::BadVersion { got: 4 })
        );
        // A SOCKS4 or HTTP client is rejected on the first byte.
        assert_eq!(
            parse_greeting(b"G"),
            Err(WireError::BadVersion { got: b'G' })
        );
    }

    #[test]
    fn request_ipv4() {
        let bytes = [5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        let req = complete(parse_request(&bytes), bytes.len());
        assert_eq!(req.command, Command::Connect);
        assert_eq!(req.target, v4("127.0.0.1:8080"));
    }

    #[test]
    fn request_ipv6() {
        let mut bytes = vec![5, 3, 0, 4];
        bytes.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        bytes.extend_from_slice(&53u16.to_be_bytes());
        let req = complete(parse_request(&bytes), bytes.len());
        assert_eq!(req.command, Command::UdpAssociate);
        assert_eq!(req.target, Target::Ip("[::1]:53".parse().unwrap()));
    }

    #[test]
    fn request_domain() {
        let mut bytes = vec![5, 2, 0, 3, 11];
        bytes.extend_from_slice(b"example.org");
        bytes.extend_from_slice(&443u16.to_be_bytes());
        bytes.extend_from_slice(b"pipelined");
        let req = complete(parse_request(&bytes), bytes.len() - 9);
        assert_eq!(req.command, Command::Bind);
        assert_eq!(req.target, Target::Domain("example.org".into(), 443));
    }

    #[test]
    fn request_domain_ip_literal_becomes_ip() {
        let mut bytes = vec![5, 1, 0, 3, 8];
        bytes.extend_from_slice(b"10.0.0.1");
        bytes.extend_from_slice(&80u16.to_be_bytes());
        let req = complete(parse_request(&bytes), bytes.len());
        assert_eq!(req.target, v4("10.0.0.1:80"));
    }

    #[test]
    fn request_truncated_at_every_length() {
        let mut bytes = vec![5, 1, 0, 3, 4];
        bytes.extend_from_slice(b"host");
        bytes.extend_from_slice(&80u16.to_be_bytes());
        for len in 0..bytes.len() {
            assert_eq!(
                parse_request(&bytes[..len]),
                Ok(Decoded::Incomplete),
                "{len}"
            );
        }
        complete(parse_request(&bytes), bytes.len());
    }

    #[test]
    fn request_errors_and_their_replies() {
        let bad_version = parse_request(&[4, 1, 0, 1]).unwrap_err();
        assert_eq!(bad_version, WireError::BadVersion { got: 4 });
        assert_eq!(bad_version.reply_code(), Some(ReplyCode::GeneralFailure));

        let bad_cmd = parse_request(&[5, 9]).unwrap_err();
        assert_eq!(bad_cmd, WireError::UnknownCommand { got: 9 });
        assert_eq!(bad_cmd.reply_code(), Some(ReplyCode::CommandNotSupported));

        let bad_atyp = parse_request(&[5, 1, 0, 2]).unwrap_err();
        assert_eq!(bad_atyp, WireError::UnknownAddressType { got: 2 });
        assert_eq!(
            bad_atyp.reply_code(),
            Some(ReplyCode::AddressTypeNotSupported)
        );

        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 80]),
            Err(WireError::EmptyDomain)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]),
            Err(WireError::DomainNotUtf8)
        );
    }

    #[test]
    fn reply_encoding() {
        let mut out = Vec::new();
        encode_reply(
            ReplyCode::Succeeded,
            "127.0.0.1:1080".parse().unwrap(),
            &mut out,
        );
        assert_eq!(out, [5, 0, 0, 1, 127, 0, 0, 1, 0x04, 0x38]);

        out.clear();
        encode_reply(
            ReplyCode::CommandNotSupported,
            "[::]:0".parse().unwrap(),
            &mut out,
        );
        let mut want = vec![5, 7, 0, 4];
        want.extend_from_slice(&[0; 18]);
        assert_eq!(out, want);
        let reply = complete(parse_reply(&out), out.len());
        assert_eq!(reply.code, ReplyCode::CommandNotSupported);
    }

    #[test]
    fn reply_codes_for_io_errors() {
        use io::ErrorKind as K;
        let cases = [
            (K::ConnectionRefused, 0x05),
            (K::HostUnreachable, 0x04),
            (K::NetworkUnreachable, 0x03),
            (K::PermissionDenied, 0x02),
            (K::TimedOut, 0x04),
            (K::Other, 0x01),
            (K::ConnectionReset, 0x01),
        ];
        for (kind, code) in cases {
            assert_eq!(
                ReplyCode::from_io_error(&kind.into()).code(),
                code,
                "{kind:?}"
            );
        }
        for code in 0..=255u8 {
            assert_eq!(ReplyCode::from_code(code).code(), code);
        }
    }

    #[test]
    fn method_selection() {
        assert_eq!(encode_method_selection(METHOD_NO_AUTH), [5, 0]);
        assert_eq!(
            parse_method_selection(&[5, 0xff]),
            Ok(Decoded::Complete(0xff, 2))
        );
        assert_eq!(parse_method_selection(&[5]), Ok(Decoded::Incomplete));
    }

    #[test]
    fn udp_datagram_each_address_type() {
        let ipv4 = [0, 0, 0, 1, 192, 0, 2, 1, 0, 53, b'h', b'i'];
        let d = parse_udp_datagram(&ipv4).unwrap();
        assert_eq!(d.frag, 0);
        assert_eq!(d.target, v4("192.0.2.1:53"));
        assert_eq!(d.payload, b"hi");

        let mut ipv6 = vec![0, 0, 0, 4];
        ipv6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        ipv6.extend_from_slice(&[0, 7]);
        let d = parse_udp_datagram(&ipv6).unwrap();
        assert_eq!(d.target, Target::Ip("[::1]:7".parse().unwrap()));
        assert_eq!(d.payload, b"");

        let domain = [0, 0, 2, 3, 1, b'a', 0, 9, 1, 2, 3];
        let d = parse_udp_datagram(&domain).unwrap();
        assert_eq!(d.frag, 2);
        assert_eq!(d.target, Target::Domain("a".into(), 9));
        assert_eq!(d.payload, &[1, 2, 3]);
    }

    #[test]
    fn udp_datagram_errors() {
        for len in 0..10 {
            let bytes = &[0, 0, 0, 1, 192, 0, 2, 1, 0, 53][..len];
            assert_eq!(
                parse_udp_datagram(bytes),
                Err(WireError::Truncated { len }),
                "{len}"
            );
        }
        assert_eq!(
            parse_udp_datagram(&[0, 1, 0, 1, 1, 1, 1, 1, 0, 1]),
            Err(WireError::NonZeroReserved { got: 1 })
        );
        assert_eq!(
            parse_udp_datagram(&[0, 0, 0, 5, 1, 1, 1, 1, 0, 1]),
            Err(WireError::UnknownAddressType { got: 5 })
        );
    }

    #[test]
    fn udp_header_encoding_round_trips() {
        let mut out = Vec::new();
        encode_udp_header("[2001:db8::1]:4242".parse().unwrap(), &mut out);
        assert_eq!(out.len(), MAX_IP_UDP_HEADER_LEN);
        out.extend_from_slice(b"data");
        let d = parse_udp_datagram(&out).unwrap();
        assert_eq!(d.target, Target::Ip("[2001:db8::1]:4242".parse().unwrap()));
        assert_eq!(d.payload, b"data");
    }

    #[test]
    fn encoding_rejects_oversized_fields() {
        let long = Target::Domain("a".repeat(256), 1);
        assert_eq!(
            encode_udp_datagram(&long, b"", &mut Vec::new()),
            Err(WireError::DomainTooLong { len: 256 })
        );
        assert_eq!(
            encode_greeting(&[0; 256], &mut Vec::new()),
            Err(WireError::TooManyMethods { len: 256 })
        );
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        prop_oneof![
            (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, p)| Target::Ip(SocketAddr::new(ip, p))),
            ("[a-z][a-z0-9.-]{0,254}", any::<u16>()).prop_map(|(d, p)| Target::Domain(d, p)),
        ]
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            Just(Command::Connect),
            Just(Command::Bind),
            Just(Command::UdpAssociate)
        ]
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_greeting(&bytes);
            let _ = parse_method_selection(&bytes);
            let _ = parse_reply(&bytes);
            if let Ok(Decoded::Complete(_, used)) = parse_request(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_REQUEST_LEN);
            }
            if let Ok(d) = parse_udp_datagram(&bytes) {
                prop_assert!(d.payload.len() <= bytes.len());
            }
        }

        #[test]
        fn request_fields_are_checked_whatever_follows(
            head in proptest::collection::vec(any::<u8>(), 0..8),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            // Every result on a prefix stays consistent with the longer input: an error on
            // the prefix is the same error on the whole, a complete message stays complete.
            let whole: Vec<u8> = head.iter().chain(&tail).copied().collect();
            match parse_request(&head) {
                Err(e) => prop_assert_eq!(parse_request(&whole), Err(e)),
                Ok(Decoded::Complete(req, used)) => {
                    prop_assert_eq!(parse_request(&whole), Ok(Decoded::Complete(req, used)));
                }
                Ok(Decoded::Incomplete) => {}
            }
        }

        #[test]
        fn request_round_trips_and_prefixes_are_incomplete(
            command in arb_command(),
            target in arb_target(),
            trailing in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let request = Request { command, target };
            let mut bytes = Vec::new();
            encode_request(&request, &mut bytes).unwrap();
            let len = bytes.len();
            for cut in 0..len {
                prop_assert_eq!(parse_request(&bytes[..cut]), Ok(Decoded::Incomplete));
            }
            bytes.extend_from_slice(&trailing);
            prop_assert_eq!(parse_request(&bytes), Ok(Decoded::Complete(request, len)));
        }

        #[test]
        fn udp_datagram_round_trips(
            target in arb_target(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = Vec::new();
            encode_udp_datagram(&target, &payload, &mut bytes).unwrap();
            let d = parse_udp_datagram(&bytes).unwrap();
            prop_assert_eq!(d.frag, 0);
            prop_assert_eq!(d.target, target);
            prop_assert_eq!(d.payload, &payload[..]);
        }
    }
}
