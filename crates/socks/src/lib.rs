//! A SOCKS5 server (RFC 1928) that does not know how connections are made.
//!
//! The OpenRelay client offers a SOCKS5 proxy on `127.0.0.1` whose connections go through
//! the userspace tunnel rather than the operating system. This crate is the proxy half:
//! [`serve`] speaks SOCKS5 to local applications and hands every outgoing TCP connection
//! and UDP association to a [`Dialer`], which the caller backs with the tunnel's network
//! stack (or, in tests, with the OS).
//!
//! - [`wire`] holds the message formats as pure functions over bytes: no I/O, no panics on
//!   peer input.
//! - [`serve`] and [`serve_connection`] drive those messages over Tokio sockets:
//!   CONNECT (relayed with `copy_bidirectional`), UDP ASSOCIATE (RFC 1928 §7, torn down when
//!   the control connection closes) and BIND (refused with "command not supported").
//!
//! Only the "no authentication required" method is offered: the proxy is meant for a
//! loopback listener.

mod dialer;
mod error;
mod server;
pub mod wire;

pub use dialer::{DatagramSocket, Dialer};
pub use error::SessionError;
pub use server::{serve, serve_connection, HANDSHAKE_TIMEOUT};
pub use wire::Target;
