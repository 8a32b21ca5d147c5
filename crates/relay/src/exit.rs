//! Egress TUN mode: the kernel forwards admitted traffic with NAT, and nftables enforces
//! the same destination refusals as the userspace stack.
//!
//! Clients' packets are written to a TUN device whose address is the relay's in-tunnel
//! address; the kernel routes them out and masquerades them behind the relay's address.
//! Replies come back through the TUN device to the session owning the destination.

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::refused_networks;

/// The nftables table the egress owns.
pub const TABLE: &str = "openrelay-exit";

/// The relay's in-tunnel address: the TUN device's address, where DNS is answered.
pub const EXIT_ADDR: std::net::Ipv4Addr = control::CONTROL_ADDR;

/// Clients' tunnel addresses (RFC 6598 shared address space).
pub const CLIENT_NET: &str = "100.64.0.0/10";

/// A TUN interface name is used inside nftables rules: keep it to safe characters.
pub fn valid_interface(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The ruleset, applied in one `nft -f` transaction.
///
/// - forward from the TUN: allowlisted networks pass; refused networks (private,
///   loopback, link-local, metadata, multicast, reserved) and the relay's own addresses
///   get a TCP reset or an ICMP "administratively prohibited";
/// - input from the TUN: only DNS to the relay's in-tunnel address, so clients cannot
///   reach the relay host's own services;
/// - postrouting: masquerade clients behind the relay's address.
pub fn ruleset(tun: &str, allow: &[IpNet], own: &[IpAddr]) -> String {
    let v4 = |n: &IpNet| matches!(n, IpNet::V4(_));
    let refused: Vec<String> = refused_networks()
        .map(|(n, _)| n)
        .filter(v4)
        .map(|n| n.to_string())
        .chain(
            own.iter()
                .filter(|a| a.is_ipv4())
                .map(|a| format!("{a}/32")),
        )
        .collect();
    let allowed: Vec<String> = allow
        .iter()
        .filter(|n| v4(n))
        .map(|n| n.to_string())
        .collect();
    let mut r = String::new();
    let _ = writeln!(r, "table ip {TABLE} {{}}");
    let _ = writeln!(r, "delete table ip {TABLE}");
    let _ = writeln!(r, "table ip {TABLE} {{");
    let _ = writeln!(
        r,
        "  set refused {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}",
        refused.join(", ")
    );
    if !allowed.is_empty() {
        let _ = writeln!(
            r,
            "  set allowed {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {} }} }}",
            allowed.join(", ")
        );
    }
    let _ = writeln!(r, "  chain forward {{");
    let _ = writeln!(r, "    type filter hook forward priority 0; policy accept;");
    let _ = writeln!(r, "    iifname \"{tun}\" ip saddr != {CLIENT_NET} drop");
    if !allowed.is_empty() {
        let _ = writeln!(r, "    iifname \"{tun}\" ip daddr @allowed accept");
    }
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" ip daddr @refused meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" ip daddr @refused reject with icmp type admin-prohibited"
    );
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "  chain input {{");
    let _ = writeln!(r, "    type filter hook input priority 0; policy accept;");
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" ip daddr {EXIT_ADDR} udp dport 53 accept"
    );
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" ip daddr {EXIT_ADDR} tcp dport 53 accept"
    );
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" ct state established,related accept"
    );
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(
        r,
        "    iifname \"{tun}\" reject with icmp type admin-prohibited"
    );
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "  chain postrouting {{");
    let _ = writeln!(
        r,
        "    type nat hook postrouting priority 100; policy accept;"
    );
    let _ = writeln!(
        r,
        "    ip saddr {CLIENT_NET} oifname != \"{tun}\" masquerade"
    );
    let _ = writeln!(r, "  }}");
    let _ = writeln!(r, "}}");
    r
}

/// Removes the table (used on shutdown).
pub fn teardown() -> String {
    format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_refuses_private_ranges_and_own_address_and_masquerades() {
        let r = ruleset(
            "orexit0",
            &["198.18.4.0/24".parse().unwrap()],
            &["198.18.3.2".parse().unwrap()],
        );
        for needle in [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "127.0.0.0/8",
            "198.18.3.2/32",
            "elements = { 198.18.4.0/24 }",
            "reject with tcp reset",
            "masquerade",
            "iifname \"orexit0\" reject with icmp type admin-prohibited",
        ] {
            assert!(r.contains(needle), "missing {needle:?} in\n{r}");
        }
        assert!(
            !r.contains("fc00::/7"),
            "IPv6 networks do not belong in an ip table"
        );
        let bare = ruleset("orexit0", &[], &[]);
        assert!(!bare.contains("@allowed"));
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(valid_interface("orexit0"));
        assert!(!valid_interface(""));
        assert!(!valid_interface("a\"; flush ruleset"));
        assert!(!valid_interface("sixteen-chars-xx"));
    }
}
