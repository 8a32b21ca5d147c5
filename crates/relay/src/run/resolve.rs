//! The egress's DNS service at its in-tunnel address: queries from clients are answered
//! with the relay host's resolver, so a client's names are never looked up on its own
//! network.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use names::{Kind, Rcode};
use tokio::sync::Semaphore;

/// How long answers may be cached by clients.
const TTL: Duration = Duration::from_secs(60);

/// Name lookups one egress worker (or the TUN egress's DNS server) runs at once. Each runs
/// getaddrinfo on a blocking thread: without a bound, a client sending queries fast could
/// make the relay start hundreds of threads. Queries beyond it are answered "server
/// failure" at once, which resolvers retry.
pub(crate) const MAX_LOOKUPS: usize = 64;

/// The lookups under way, at most [`MAX_LOOKUPS`]; clones share them.
#[derive(Clone)]
pub(crate) struct Lookups(Arc<Semaphore>);

impl Default for Lookups {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(MAX_LOOKUPS)))
    }
}

impl Lookups {
    /// Starts answering `query`: the answer to wait for, which holds its place among the
    /// lookups until it is done, or, with none free, the answer to send at once ([`busy`]).
    pub(crate) fn start(
        &self,
        query: &[u8],
    ) -> Result<impl Future<Output = Option<Vec<u8>>> + Send + 'static, Option<Vec<u8>>> {
        let Ok(place) = Arc::clone(&self.0).try_acquire_owned() else {
            return Err(busy(query));
        };
        let query = query.to_vec();
        Ok(async move {
            let reply = answer(&query).await;
            drop(place);
            reply
        })
    }

    /// Takes every place, as if [`MAX_LOOKUPS`] lookups were under way, until dropped.
    #[cfg(test)]
    pub(crate) fn fill(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.0)
            .try_acquire_many_owned(MAX_LOOKUPS as u32)
            .expect("no lookup under way")
    }
}

/// The answer to one DNS message from a client, if it deserves one.
async fn answer(query: &[u8]) -> Option<Vec<u8>> {
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
fn busy(query: &[u8]) -> Option<Vec<u8>> {
    match names::parse_query(query) {
        Ok(q) => names::build_error(&q, Rcode::ServFail).ok(),
        Err(_) => names::build_format_error(query),
    }
}
