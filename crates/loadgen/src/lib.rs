//! A load generator for one egress relay (issue 6, item 5).
//!
//! It opens many client sessions against a running egress over UDP: for each, a WireGuard
//! handshake, `Hello` → `Admitted` on the control address, a few UDP packets through the
//! egress to a local sink, then nothing (idle). Sessions are told apart by their WireGuard
//! receiver indices, so a handful of sockets carries all of them.
//!
//! - [`client`]: one session's steps, sans-IO.
//! - [`drive`](fn@drive): pacing, sockets, routing by receiver index, retries.
//! - [`Sink`]: the UDP destination that counts what arrives.
//! - [`proc`]: CPU time and resident memory of the relay's process, from `/proc`.
//!
//! The `openrelay-loadgen` executable starts an `openrelay-relay egress` process (or attaches
//! to one) and prints handshakes per CPU-second and resident memory per idle session.

pub mod client;
mod drive;
pub mod proc;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use drive::{drive, Idle, IdleOutcome, Outcome, Plan};

/// A UDP socket that counts the datagrams the egress relays to it.
pub struct Sink {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Binds a sink on `127.0.0.1` and starts counting on the current tokio runtime.
    pub async fn start() -> io::Result<Self> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while socket.recv_from(&mut buf).await.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// Where clients send their packets.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
