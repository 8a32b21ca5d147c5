//! Which destinations the egress relays to.
//!
//! By default only public unicast addresses: a client must not reach the relay host's
//! loopback services, its LAN, cloud metadata endpoints or the relay itself. Tests and the
//! demo open specific networks with an explicit allowlist.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 127.0.0.0/8 or ::1.
    #[error("loopback destination")]
    Loopback,
    /// RFC 1918, RFC 6598 shared space, unique-local IPv6.
    #[error("private-network destination")]
    Private,
    /// 169.254.0.0/16 (cloud metadata lives here) or fe80::/10.
    #[error("link-local destination")]
    LinkLocal,
    /// Multicast or broadcast.
    #[error("multicast or broadcast destination")]
    Multicast,
    /// 0.0.0.0, ::, or port 0.
    #[error("unspecified destination")]
    Unspecified,
    /// One of the relay's own addresses.
    #[error("the relay's own address")]
    OwnAddress,
    /// Reserved ranges that are never on the internet (documentation, 240/4, ...).
    #[error("reserved destination")]
    Reserved,
}

/// The egress's destination rules.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    allow: Vec<IpNet>,
    own: Vec<IpAddr>,
}

impl DestinationPolicy {
    /// Refuses non-public destinations and `own` addresses, except those inside `allow`.
    pub fn new(allow: Vec<IpNet>, own: Vec<IpAddr>) -> Self {
        Self { allow, own }
    }

    /// Networks reachable although normally refused.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// The relay's own addresses.
    pub fn own(&self) -> &[IpAddr] {
        &self.own
    }

    /// Adds an address of the relay itself (its listening address, once bound).
    pub fn add_own(&mut self, ip: IpAddr) {
        if !ip.is_unspecified() && !self.own.contains(&ip) {
            self.own.push(ip);
        }
    }

    /// Whether the egress may open a flow to `dst`.
    pub fn check(&self, dst: SocketAddr) -> Result<(), Refusal> {
        let ip = canonical(dst.ip());
        if dst.port() == 0 || ip.is_unspecified() {
            return Err(Refusal::Unspecified);
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if self.own.iter().any(|o| canonical(*o) == ip) {
            return Err(Refusal::OwnAddress);
        }
        classify(ip)
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Networks never relayed to, and why. One list serves the userspace check and the
/// kernel (nftables) rules of TUN mode, so both refuse the same destinations.
pub const REFUSED: &[(&str, Refusal)] = &[
    ("0.0.0.0/8", Refusal::Reserved),
    ("10.0.0.0/8", Refusal::Private),
    ("100.64.0.0/10", Refusal::Private),
    ("127.0.0.0/8", Refusal::Loopback),
    ("169.254.0.0/16", Refusal::LinkLocal),
    ("172.16.0.0/12", Refusal::Private),
    ("192.0.0.0/24", Refusal::Reserved),
    ("192.0.2.0/24", Refusal::Reserved),
    ("192.168.0.0/16", Refusal::Private),
    ("198.51.100.0/24", Refusal::Reserved),
    ("203.0.113.0/24", Refusal::Reserved),
    ("224.0.0.0/4", Refusal::Multicast),
    // Broadcast comes before 240.0.0.0/4, which contains it: the first match decides.
    ("255.255.255.255/32", Refusal::Multicast),
    ("240.0.0.0/4", Refusal::Reserved),
    ("::/128", Refusal::Unspecified),
    ("::1/128", Refusal::Loopback),
    ("fc00::/7", Refusal::Private),
    ("fe80::/10", Refusal::LinkLocal),
    ("ff00::/8", Refusal::Multicast),
    ("2001:db8::/32", Refusal::Reserved),
];

/// The refused networks, parsed.
pub fn refused_networks() -> impl Iterator<Item = (IpNet, Refusal)> {
    REFUSED
        .iter()
        .filter_map(|(net, why)| net.parse().ok().map(|n| (n, *why)))
}

fn classify(ip: IpAddr) -> Result<(), Refusal> {
    match refused_networks().find(|(net, _)| net.contains(&ip)) {
        Some((_, why)) => Err(why),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &DestinationPolicy, s: &str) -> Result<(), Refusal> {
        p.check(s.parse().unwrap())
    }

    #[test]
    fn refuses_non_public_by_default() {
        let p = DestinationPolicy::new(vec![], vec!["203.0.113.5".parse().unwrap()]);
        assert_eq!(check(&p, "127.0.0.1:80"), Err(Refusal::Loopback));
        assert_eq!(check(&p, "[::1]:80"), Err(Refusal::Loopback));
        assert_eq!(check(&p, "[::ffff:127.0.0.1]:80"), Err(Refusal::Loopback));
        assert_eq!(check(&p, "10.1.2.3:80"), Err(Refusal::Private));
        assert_eq!(check(&p, "192.168.1.1:80"), Err(Refusal::Private));
        assert_eq!(check(&p, "172.16.0.1:80"), Err(Refusal::Private));
        assert_eq!(check(&p, "100.64.0.1:80"), Err(Refusal::Private));
        assert_eq!(check(&p, "[fd00::1]:80"), Err(Refusal::Private));
        assert_eq!(check(&p, "169.254.169.254:80"), Err(Refusal::LinkLocal));
        assert_eq!(check(&p, "[fe80::1]:80"), Err(Refusal::LinkLocal));
        assert_eq!(check(&p, "224.0.0.1:80"), Err(Refusal::Multicast));
        assert_eq!(check(&p, "255.255.255.255:80"), Err(Refusal::Multicast));
        assert_eq!(check(&p, "0.0.0.0:80"), Err(Refusal::Unspecified));
        assert_eq!(check(&p, "1.1.1.1:0"), Err(Refusal::Unspecified));
        assert_eq!(check(&p, "203.0.113.5:80"), Err(Refusal::OwnAddress));
        assert_eq!(check(&p, "1.1.1.1:443"), Ok(()));
        assert_eq!(check(&p, "[2606:4700::1111]:443"), Ok(()));
    }

    #[test]
    fn every_refused_network_parses() {
        assert_eq!(refused_networks().count(), REFUSED.len());
    }

    #[test]
    fn allowlist_opens_exactly_its_networks() {
        let p = DestinationPolicy::new(vec!["127.0.0.1/32".parse().unwrap()], vec![]);
        assert_eq!(check(&p, "127.0.0.1:8080"), Ok(()));
        assert_eq!(check(&p, "127.0.0.2:8080"), Err(Refusal::Loopback));
        assert_eq!(check(&p, "10.0.0.1:80"), Err(Refusal::Private));
    }
}
