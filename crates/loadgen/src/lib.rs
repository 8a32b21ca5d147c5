//! A load generator for one egress relay (issue 6, item 5).
//!
//! It opens many client sessions against a running egress over UDP: for each, a WireGuard
//! handshake, `Hello` → `Admitted` on the control address, a few UDP packets through the
//! egress to a local sink (and, with a TCP sink, one TCP connection held open), then
//! nothing (idle). Sessions are told apart by their WireGuard
//! receiver indices, so a handful of sockets carries all of them.
//!
//! - [`client`]: one session's steps, sans-IO.
//! - [`drive`](fn@drive): pacing, sockets, routing by receiver index, retries.
//! - [`tcp`]: the one TCP connection a client may hold, sans-IO.
//! - [`Sink`]: the UDP destination that counts what arrives; [`TcpSink`], the TCP one.
//! - [`proc`]: CPU time and resident memory of the relay's process, from `/proc`.
//!
//! The `openrelay-loadgen` executable starts an `openrelay-relay egress` process (or attaches
//! to one) and prints handshakes per CPU-second and resident memory per idle session.

pub mod client;
mod drive;
pub mod proc;
pub mod tcp;

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

/// A TCP listener that answers each connection's request with a given number of bytes and
/// then keeps the connection open until the client or the egress closes it, as a server of
/// idle connections does.
pub struct TcpSink {
    target: tcp::Target,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpSink {
    /// Listens on `127.0.0.1` on the current tokio runtime; answers each request with
    /// `answer_len` bytes.
    pub async fn start(answer_len: usize) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let target = tcp::Target {
            addr: listener.local_addr()?,
            answer_len,
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut request = vec![0u8; tcp::REQUEST.len()];
                    if stream.read_exact(&mut request).await.is_ok() {
                        let mut answer = tokio::io::repeat(b'.').take(answer_len as u64);
                        if tokio::io::copy(&mut answer, &mut stream).await.is_err() {
                            return;
                        }
                    }
                    let mut rest = [0u8; 64];
                    while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
                });
            }
        });
        Ok(Self {
            target,
            accepted,
            task,
        })
    }

    /// Where clients connect, and how much each is answered.
    pub fn target(&self) -> tcp::Target {
        self.target
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
