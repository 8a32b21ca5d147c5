//! OpenRelay's client.
//!
//! [`connection::Connection`] is the sans-IO two-hop connection: outer session to the
//! ingress, inner session to the egress, and the control exchange at each hop. The
//! userspace edge ([`run`]) puts a SOCKS5 proxy on 127.0.0.1 in front of it, with a
//! userspace TCP/IP stack, and reconnects when a relay restarts. [`refill`] keeps the
//! token stock filled from an account, at random times ahead of need.

pub mod connection;
pub mod issuer_client;
pub mod issuer_link;
pub mod local;
pub mod refill;
pub mod run;
pub mod tickets;
pub mod tun;
pub mod whole_host;
