//! OpenRelay's relays.
//!
//! Both roles share a [`table::SessionTable`]: WireGuard handshakes from any client key, the
//! in-tunnel control exchange, and admission. The [`ingress`] forwards inner datagrams to
//! listed egresses; the egress hands admitted traffic to a userspace TCP/IP stack and
//! relays flows allowed by its [`policy`]. The cores are sans-IO; [`run`] holds the tokio
//! edges. Relays keep everything in RAM and report only [`counters`].

pub mod cli;
pub mod config;
pub mod counters;
pub mod evidence;
pub mod exit;
pub mod ingress;
pub mod policy;
mod pool;
pub mod run;
pub mod table;
pub use udpio as udp;
