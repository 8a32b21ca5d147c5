//! Async UDP for client mode: an unconnected socket on the tunnel address.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};

use super::Inner;

/// A UDP socket bound to an ephemeral port of the client's tunnel address. Datagrams that
/// arrive while 256 are unread are dropped, as a full kernel buffer would.
pub struct UdpSocket {
    inner: Arc<Inner>,
    port: u16,
    rx: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
}

impl UdpSocket {
    pub(super) fn new(
        inner: Arc<Inner>,
        port: u16,
        rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    ) -> Self {
        Self {
            inner,
            port,
            rx: Mutex::new(rx),
        }
    }

    /// The bound local port.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Send `payload` to `dst`. A datagram the tunnel has no room for is dropped (UDP may
    /// lose datagrams); one too large for the MTU is an error.
    pub async fn send_to(&self, payload: &[u8], dst: SocketAddr) -> io::Result<usize> {
        let unspecified: IpAddr = if dst.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            Ipv6Addr::UNSPECIFIED.into()
        };
        self.inner
            .send_udp(SocketAddr::new(unspecified, self.port), dst, payload)?;
        Ok(payload.len())
    }

    /// Wait for the next datagram; returns its payload and sender.
    pub async fn recv_from(&self) -> io::Result<(Vec<u8>, SocketAddr)> {
        match self.rx.lock().await.recv().await {
            Some((src, payload)) => Ok((payload, src)),
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the tunnel's packet channels are closed; the stack has stopped",
            )),
        }
    }
}

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpSocket")
            .field("port", &self.port)
            .finish()
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        let mut shared = self.inner.lock();
        shared.udp_sockets.remove(&self.port);
        shared.stack.udp_unbind(self.port);
    }
}
