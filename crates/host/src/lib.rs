//! Host configuration for the client's whole-host mode on Linux, as mechanism without
//! product policy (in the spirit of mullvad's `talpid-*` crates):
//!
//! - [`Firewall`]: an nftables table of our own that drops everything leaving the host
//!   except loopback, the tunnel device and the relays' endpoints (the kill switch);
//! - [`Routes`]: policy routing that sends all traffic into the tunnel device except the
//!   tunnel's own packets (marked with a firewall mark), as wg-quick does;
//! - [`Dns`]: points /etc/resolv.conf at the tunnel's resolver and puts it back exactly.
//!
//! Commands (`ip`, `nft`) go through a [`Runner`], which tests point at a network namespace.

mod dns;
mod error;
mod firewall;
mod routes;
mod runner;

pub use dns::{Dns, DnsGuard};
pub use error::HostError;
pub use firewall::{ruleset, valid_interface, BlockPolicy, Firewall, TABLE};
pub use routes::{RouteGuard, RoutePlan, Routes};
pub use runner::Runner;
