//! The egress's DNS service at its in-tunnel address: queries from clients are answered
//! with the relay host's resolver, so a client's names are never looked up on its own
//! network.

use std::net::IpAddr;
use std::time::Duration;

use names::{Kind, Rcode};

/// How long answers may be cached by clients.
const TTL: Duration = Duration::from_secs(60);

/// The answer to one DNS message from a client, if it deserves one.
pub(crate) async fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = match names::parse_query(query) {
        Ok(q) => q,
        Err(_) => return names::build_format_error(query),
    };
    if matches!(q.kind, Kind::Other(_)) {
        return names::build_error(&q, Rcode::NotImp).ok();
    }
    let lookup = tokio::net::lookup_host(format!("{}:0", q.name)).await;
    match lookup {
        Ok(addrs) => {
            let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            names::build_answer(&q, &addrs, TTL).ok()
        }
        Err(e) => {
            // getaddrinfo says "Name or service not known" for names that do not exist.
            let msg = e.to_string();
            let rcode = if msg.contains("not known") || msg.contains("No address") {
                Rcode::NxDomain
            } else {
                Rcode::ServFail
            };
            names::build_error(&q, rcode).ok()
        }
    }
}

/// The answer to a query the egress has no room to look up now: "server failure", which a
/// resolver retries, or a format error for a message that is not a query.
pub(crate) fn busy(query: &[u8]) -> Option<Vec<u8>> {
    match names::parse_query(query) {
        Ok(q) => names::build_error(&q, Rcode::ServFail).ok(),
        Err(_) => names::build_format_error(query),
    }
}
