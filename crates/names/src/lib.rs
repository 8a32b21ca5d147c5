//! Name resolution through the tunnel, sans-IO.
//!
//! A host name given to the client (SOCKS5 with `--socks5-hostname`, or the host's resolver
//! in whole-host mode) must not be looked up on the user's network: that would tell the
//! local resolver every site visited. The client sends a DNS query inside the tunnel to the
//! egress's in-tunnel address ([`SERVER`]); the egress resolves it with its host's
//! resolver and answers. This crate builds and checks those messages (with hickory-proto's
//! codec); sockets and the actual lookup belong to the callers.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Where the egress answers DNS inside the tunnel: its in-tunnel address, port 53.
pub const SERVER: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::new(100, 64, 0, 1), 53);

/// Most addresses in one answer.
pub const MAX_ANSWER_ADDRS: usize = 16;

/// [`SERVER`] as a socket address.
pub fn server() -> SocketAddr {
    SocketAddr::V4(SERVER)
}

/// Which addresses a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IPv4 (A records).
    A,
    /// IPv6 (AAAA records).
    Aaaa,
    /// Any other record type: the egress answers "not implemented".
    Other(u16),
}

impl Kind {
    fn record_type(self) -> RecordType {
        match self {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Other(t) => RecordType::from(t),
        }
    }
}

/// A query as the egress sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id, echoed in the answer.
    pub id: u16,
    /// The name, lowercase, without the trailing dot.
    pub name: String,
    /// What is asked for.
    pub kind: Kind,
}

/// DNS response codes the egress sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The query was malformed.
    FormErr,
    /// The lookup failed.
    ServFail,
    /// The name does not exist.
    NxDomain,
    /// Not a query type the egress answers.
    NotImp,
    /// Refused by policy.
    Refused,
}

/// What was wrong with a DNS message or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// Not a valid host name.
    #[error("{name:?} is not a valid host name (at most 253 characters, labels of 1-63)")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// Bytes that do not decode as a DNS message.
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// A message of the wrong shape (not one question of class IN, not a standard query).
    #[error("unsupported DNS message: {0}")]
    Unsupported(&'static str),
    /// An answer for another query.
    #[error("DNS answer with id {got} does not match the query's id {expected}")]
    WrongId {
        /// The query's id.
        expected: u16,
        /// The answer's id.
        got: u16,
    },
    /// The name does not exist.
    #[error("{name} does not exist (NXDOMAIN)")]
    NoSuchName {
        /// The name.
        name: String,
    },
    /// The egress could not resolve the name.
    #[error("the egress could not resolve {name}: {code}")]
    ServerFailure {
        /// The name.
        name: String,
        /// The response code, in words.
        code: String,
    },
}

fn parse_name(name: &str) -> Result<Name, DnsError> {
    let invalid = || DnsError::InvalidName {
        name: name.to_string(),
    };
    let bare = name.strip_suffix('.').unwrap_or(name);
    let labels_ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| (1..=63).contains(&l.len()));
    if !labels_ok {
        return Err(invalid());
    }
    let mut n = Name::from_ascii(bare).map_err(|_| invalid())?;
    n.set_fqdn(true);
    Ok(n)
}

/// Client side: a recursive query for `name`.
pub fn build_query(id: u16, name: &str, kind: Kind) -> Result<Vec<u8>, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Question::query(parse_name(name)?, kind.record_type()));
    m.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))
}

/// Client side: the addresses in the answer to query `id` (only of the asked family).
pub fn parse_response(
    bytes: &[u8],
    id: u16,
    name: &str,
    kind: Kind,
) -> Result<(Vec<IpAddr>, Duration), DnsError> {
    let m = Message::from_vec(bytes).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if m.metadata.id != id {
        return Err(DnsError::WrongId {
            expected: id,
            got: m.metadata.id,
        });
    }
    if m.metadata.message_type != MessageType::Response {
        return Err(DnsError::Unsupported("expected a response, got a query"));
    }
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Err(DnsError::NoSuchName {
                name: name.to_string(),
            })
        }
        other => {
            return Err(DnsError::ServerFailure {
                name: name.to_string(),
                code: other.to_string(),
            })
        }
    }
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for r in &m.answers {
        let addr = match (&r.data, kind) {
            (RData::A(a), Kind::A) => IpAddr::V4(a.0),
            (RData::AAAA(a), Kind::Aaaa) => IpAddr::V6(a.0),
            _ => continue,
        };
        ttl = ttl.min(r.ttl);
        addrs.push(addr);
    }
    let ttl = if addrs.is_empty() { 0 } else { ttl };
    Ok((addrs, Duration::from_secs(u64::from(ttl))))
}

/// Egress side: reads a query. Anything but one IN question in a standard query is an
/// error; answer it with [`build_error`] or [`build_format_error`].
pub fn parse_query(bytes: &[u8]) -> Result<Query, DnsError> {
    let m = Message::from_vec(bytes).map_err(|e| DnsError::Malformed(e.to_string()))?;
    if m.metadata.message_type != MessageType::Query {
        return Err(DnsError::Unsupported("not a query"));
    }
    if m.metadata.op_code != OpCode::Query {
        return Err(DnsError::Unsupported("not a standard query"));
    }
    let [q] = m.queries.as_slice() else {
        return Err(DnsError::Unsupported(
            "a query must have exactly one question",
        ));
    };
    if q.query_class != DNSClass::IN {
        return Err(DnsError::Unsupported("only class IN is answered"));
    }
    let kind = match q.query_type {
        RecordType::A => Kind::A,
        RecordType::AAAA => Kind::Aaaa,
        other => Kind::Other(u16::from(other)),
    };
    let name = q.name.to_lowercase().to_ascii();
    let name = name.strip_suffix('.').unwrap_or(&name).to_string();
    Ok(Query {
        id: m.metadata.id,
        name,
        kind,
    })
}

fn response_to(query: &Query) -> Result<Message, DnsError> {
    let mut m = Message::new(query.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Question::query(
        parse_name(&query.name)?,
        query.kind.record_type(),
    ));
    Ok(m)
}

/// Egress side: the answer with `addrs` (those of the asked family; none gives an empty
/// NOERROR answer, as for a name without such records).
pub fn build_answer(query: &Query, addrs: &[IpAddr], ttl: Duration) -> Result<Vec<u8>, DnsError> {
    let mut m = response_to(query)?;
    let name = parse_name(&query.name)?;
    let ttl = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
    // At most MAX_ANSWER_ADDRS addresses keep every answer well under 1232 bytes.
    for a in addrs.iter().take(MAX_ANSWER_ADDRS) {
        let data = match (a, query.kind) {
            (IpAddr::V4(v4), Kind::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), Kind::Aaaa) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        m.add_answer(Record::from_rdata(name.clone(), ttl, data));
    }
    m.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))
}

/// Egress side: an error answer to a query that was understood.
pub fn build_error(query: &Query, rcode: Rcode) -> Result<Vec<u8>, DnsError> {
    let mut m = response_to(query)?;
    m.metadata.response_code = code(rcode);
    m.to_vec().map_err(|e| DnsError::Malformed(e.to_string()))
}

/// Egress side: FORMERR for bytes that are not a usable query, echoing their id; `None`
/// when there is not even a DNS header to answer.
pub fn build_format_error(raw: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*raw.first()?, *raw.get(1)?]);
    // A response (QR bit set) is never answered, so two resolvers cannot loop.
    if raw.len() < 12 || raw.get(2).is_some_and(|flags| flags & 0x80 != 0) {
        return None;
    }
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

fn code(r: Rcode) -> ResponseCode {
    match r {
        Rcode::FormErr => ResponseCode::FormErr,
        Rcode::ServFail => ResponseCode::ServFail,
        Rcode::NxDomain => ResponseCode::NXDomain,
        Rcode::NotImp => ResponseCode::NotImp,
        Rcode::Refused => ResponseCode::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::CNAME;
    use proptest::prelude::*;

    #[test]
    fn query_and_answer_round_trip() {
        for (name, kind, addrs) in [
            (
                "Example.COM.",
                Kind::A,
                vec![
                    "93.184.216.34".parse::<IpAddr>().unwrap(),
                    "93.184.216.35".parse().unwrap(),
                ],
            ),
            (
                "v6.example.org",
                Kind::Aaaa,
                vec!["2001:db8::1".parse().unwrap()],
            ),
        ] {
            let q = build_query(7, name, kind).unwrap();
            let parsed = parse_query(&q).unwrap();
            assert_eq!(parsed.id, 7);
            assert_eq!(parsed.name, name.trim_end_matches('.').to_lowercase());
            assert_eq!(parsed.kind, kind);
            let a = build_answer(&parsed, &addrs, Duration::from_secs(60)).unwrap();
            let (got, ttl) = parse_response(&a, 7, name, kind).unwrap();
            assert_eq!(got, addrs);
            assert_eq!(ttl, Duration::from_secs(60));
        }
    }

    #[test]
    fn only_the_asked_family_is_answered() {
        let q = parse_query(&build_query(1, "a.test", Kind::A).unwrap()).unwrap();
        let a = build_answer(
            &q,
            &["::1".parse().unwrap(), "10.0.0.1".parse().unwrap()],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            parse_response(&a, 1, "a.test", Kind::A).unwrap().0,
            vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn errors_map_to_their_own_kinds() {
        let q = parse_query(&build_query(9, "nope.test", Kind::A).unwrap()).unwrap();
        let nx = build_error(&q, Rcode::NxDomain).unwrap();
        assert_eq!(
            parse_response(&nx, 9, "nope.test", Kind::A),
            Err(DnsError::NoSuchName {
                name: "nope.test".into()
            })
        );
        let sf = build_error(&q, Rcode::ServFail).unwrap();
        assert!(matches!(
            parse_response(&sf, 9, "nope.test", Kind::A),
            Err(DnsError::ServerFailure { .. })
        ));
        assert!(matches!(
            parse_response(&sf, 10, "nope.test", Kind::A),
            Err(DnsError::WrongId {
                expected: 10,
                got: 9
            })
        ));
        assert!(matches!(
            parse_response(
                &build_query(9, "x.test", Kind::A).unwrap(),
                9,
                "x.test",
                Kind::A
            ),
            Err(DnsError::Unsupported(_))
        ));
        let fe = build_format_error(&[0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).unwrap();
        assert_eq!(Message::from_vec(&fe).unwrap().metadata.id, 0x1234);
        assert_eq!(build_format_error(&[1, 2, 3]), None);
        let response = build_error(&q, Rcode::ServFail).unwrap();
        assert_eq!(
            build_format_error(&response),
            None,
            "responses are never answered"
        );
        let many: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let (got, _) = parse_response(
            &build_answer(&q, &many, Duration::from_secs(1)).unwrap(),
            9,
            "nope.test",
            Kind::A,
        )
        .unwrap();
        assert_eq!(got.len(), MAX_ANSWER_ADDRS);
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            ".",
            "a..b",
            &"x".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert!(
                matches!(
                    build_query(1, bad, Kind::A),
                    Err(DnsError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_resolvers_answer_with_cname_yields_only_addresses() {
        let name = Name::from_ascii("www.example.com.").unwrap();
        let target = Name::from_ascii("cdn.example.net.").unwrap();
        let mut m = Message::new(42, MessageType::Response, OpCode::Query);
        m.add_query(Question::query(name.clone(), RecordType::A));
        m.add_answer(Record::from_rdata(
            name,
            300,
            RData::CNAME(CNAME(target.clone())),
        ));
        m.add_answer(Record::from_rdata(
            target.clone(),
            30,
            RData::A(A("192.0.2.10".parse().unwrap())),
        ));
        m.add_answer(Record::from_rdata(
            target,
            60,
            RData::A(A("192.0.2.11".parse().unwrap())),
        ));
        let (addrs, ttl) =
            parse_response(&m.to_vec().unwrap(), 42, "www.example.com", Kind::A).unwrap();
        assert_eq!(
            addrs,
            vec![
                "192.0.2.10".parse::<IpAddr>().unwrap(),
                "192.0.2.11".parse().unwrap()
            ]
        );
        assert_eq!(ttl, Duration::from_secs(30));
    }

    #[test]
    fn other_record_types_are_reported() {
        let mut m = Message::new(3, MessageType::Query, OpCode::Query);
        m.add_query(Question::query(
            Name::from_ascii("mx.test.").unwrap(),
            RecordType::MX,
        ));
        let q = parse_query(&m.to_vec().unwrap()).unwrap();
        assert_eq!(q.kind, Kind::Other(15));
        assert!(build_error(&q, Rcode::NotImp).is_ok());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), id: u16) {
            let _ = parse_query(&bytes);
            let _ = parse_response(&bytes, id, "x.test", Kind::A);
            let _ = build_format_error(&bytes);
        }

        #[test]
        fn round_trip_for_any_valid_name(labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 1..5),
                                          v4 in proptest::collection::vec(any::<[u8; 4]>(), 0..5), id: u16) {
            let name = labels.join(".");
            let q = parse_query(&build_query(id, &name, Kind::A).unwrap()).unwrap();
            prop_assert_eq!(&q.name, &name);
            let addrs: Vec<IpAddr> = v4.iter().map(|o| IpAddr::from(*o)).collect();
            let (got, _) = parse_response(&build_answer(&q, &addrs, Duration::from_secs(1)).unwrap(), id, &name, Kind::A).unwrap();
            prop_assert_eq!(got, addrs);
        }
    }
}
