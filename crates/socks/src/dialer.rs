//! How the proxy reaches the outside: the traits a tunnel (or a test) implements.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::wire::Target;

/// Opens outgoing connections and datagram sockets on the proxy's behalf.
///
/// The proxy calls [`Dialer::connect`] once per CONNECT request and [`Dialer::udp`] once per
/// UDP ASSOCIATE request. Domain names arrive unresolved in [`Target::Domain`], so the dialer
/// decides where name resolution happens (inside the tunnel, to avoid DNS leaks).
///
/// The returned futures are not cancelled by the proxy except when the client goes away;
/// a dialer that can hang should apply its own timeout.
pub trait Dialer: Send + Sync + 'static {
    /// A connected byte stream to the target.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A datagram socket for one UDP association.
    type Datagram: DatagramSocket;

    /// Connects to `target`.
    ///
    /// The error's [`io::ErrorKind`] picks the SOCKS reply code
    /// (see [`crate::wire::ReplyCode::from_io_error`]): `ConnectionRefused`,
    /// `HostUnreachable`, `NetworkUnreachable`, `PermissionDenied` and `TimedOut` are told
    /// apart, everything else is a general failure.
    fn connect(&self, target: Target) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Opens a datagram socket for a new UDP association.
    fn udp(&self) -> impl Future<Output = io::Result<Self::Datagram>> + Send;
}

/// An unconnected datagram socket, as used by one UDP association.
///
/// The proxy sends and receives concurrently through a shared reference, so both methods
/// take `&self`. `recv_from` is only dropped mid-way when the association ends.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Sends one datagram carrying `payload` to `target`.
    fn send_to(
        &self,
        payload: &[u8],
        target: Target,
    ) -> impl Future<Output = io::Result<()>> + Send;

    /// Receives one datagram into `buf`, returning its length and where it came from.
    fn recv_from(
        &self,
        buf: &mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
}
