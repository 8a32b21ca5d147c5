use std::fmt::Write;
use std::net::SocketAddr;

use crate::{HostError, Runner};

/// The nftables table of the kill switch. `openrelay client --unblock` deletes it.
pub const TABLE: &str = "openrelay";

/// What may leave the host while the kill switch holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockPolicy {
    /// UDP endpoints that may be reached (the ingress relays).
    pub allowed_endpoints: Vec<SocketAddr>,
    /// The tunnel device, through which everything else goes.
    pub tunnel_interface: Option<String>,
}

/// Interface names go into rules: letters, digits, `-`, `_`, `.`, 1 to 15 of them.
pub fn valid_interface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The kill switch's ruleset: one transaction that replaces the table, so there is never a
/// moment without the block.
///
/// Output and forwarding drop everything except loopback, the tunnel device, UDP to the
/// allowed endpoints, DHCP and IPv6 neighbour/router discovery (so the host keeps its
/// link). Input accepts loopback, the tunnel, replies to allowed traffic and the same
/// discovery messages.
pub fn ruleset(policy: &BlockPolicy) -> Result<String, HostError> {
    let mut out_allow = String::new();
    let mut in_allow = String::new();
    for e in &policy.allowed_endpoints {
        let family = if e.is_ipv4() { "ip" } else { "ip6" };
        let _ = writeln!(
            out_allow,
            "    {family} daddr {} udp dport {} accept",
            e.ip(),
            e.port()
        );
        let _ = writeln!(
            in_allow,
            "    {family} saddr {} udp sport {} accept",
            e.ip(),
            e.port()
        );
    }
    if let Some(tun) = &policy.tunnel_interface {
        if !valid_interface(tun) {
            return Err(HostError::Invalid {
                what: "interface name",
                value: tun.clone(),
            });
        }
        let _ = writeln!(out_allow, "    oifname \"{tun}\" accept");
        let _ = writeln!(in_allow, "    iifname \"{tun}\" accept");
    }
    let discovery = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept";
    let mut r = String::new();
    let _ = writeln!(r, "table inet {TABLE} {{}}");
    let _ = writeln!(r, "delete table inet {TABLE}");
    let _ = writeln!(r, "table inet {TABLE} {{");
    let _ = writeln!(r, "  chain output {{");
    let _ = writeln!(r, "    type filter hook output priority 0; policy drop;");
    let _ = writeln!(r, "    oifname \"lo\" accept");
    let _ = writeln!(r, "    udp sport 68 udp dport 67 accept");
    let _ = writeln!(r, "    {discovery}");
    r.push_str(&out_allow);
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "  chain input {{");
    let _ = writeln!(r, "    type filter hook input priority 0; policy drop;");
    let _ = writeln!(r, "    iifname \"lo\" accept");
    let _ = writeln!(r, "    udp sport 67 udp dport 68 accept");
    let _ = writeln!(r, "    {discovery}");
    r.push_str(&in_allow);
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "  chain forward {{");
    let _ = writeln!(r, "    type filter hook forward priority 0; policy drop;");
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "}}");
    Ok(r)
}

/// The kill switch.
#[derive(Debug, Clone)]
pub struct Firewall {
    runner: Runner,
}

impl Firewall {
    /// A kill switch applied through `runner`.
    pub fn new(runner: Runner) -> Self {
        Self { runner }
    }

    /// Blocks everything but `policy` (replacing any earlier block atomically).
    pub fn block(&self, policy: &BlockPolicy) -> Result<(), HostError> {
        self.runner
            .run("nft", &["-f", "-"], Some(&ruleset(policy)?))
            .map(|_| ())
    }

    /// Removes the block; nothing happens if there is none.
    pub fn unblock(&self) -> Result<(), HostError> {
        let text = format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n");
        self.runner
            .run("nft", &["-f", "-"], Some(&text))
            .map(|_| ())
    }

    /// Whether the block is in place.
    pub fn is_blocking(&self) -> Result<bool, HostError> {
        let tables = self.runner.run("nft", &["list", "tables"], None)?;
        Ok(tables
            .lines()
            .any(|l| l.trim() == format!("table inet {TABLE}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_allows_only_the_endpoints_and_the_tunnel() {
        let r = ruleset(&BlockPolicy {
            allowed_endpoints: vec![
                "198.18.2.2:51820".parse().unwrap(),
                "[2001:db8::2]:51820".parse().unwrap(),
            ],
            tunnel_interface: Some("ortun0".into()),
        })
        .unwrap();
        for needle in [
            "policy drop;",
            "ip daddr 198.18.2.2 udp dport 51820 accept",
            "ip6 daddr 2001:db8::2 udp dport 51820 accept",
            "oifname \"ortun0\" accept",
            "oifname \"lo\" accept",
            "delete table inet openrelay",
        ] {
            assert!(r.contains(needle), "missing {needle:?}:\n{r}");
        }
        assert_eq!(r.matches("policy drop;").count(), 3);
        assert!(
            !r.contains("ct state"),
            "no blanket accept of established traffic"
        );
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for bad in ["", "a\" accept; chain x", "abcdefghijklmnop", "tun 0"] {
            let p = BlockPolicy {
                allowed_endpoints: vec![],
                tunnel_interface: Some(bad.into()),
            };
            assert!(
                matches!(ruleset(&p), Err(HostError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
