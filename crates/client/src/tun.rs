//! Whole-host mode: a TUN device carries the host's IP traffic into the tunnel.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};
use tunnel::wire::Address;

/// Packets one TUN read can split into.
const SEGMENTS: usize = 128;

use crate::run::Local;

/// Packets queued between the TUN device and the tunnel.
const QUEUE: usize = 1024;

/// Packets the TUN side refused to send into the tunnel.
#[derive(Debug, Default)]
pub struct TunCounters {
    /// IPv6 packets: the tunnel carries IPv4 only, so IPv6 is blocked, never leaked.
    pub dropped_ipv6: AtomicU64,
    /// Packets from an address other than the host's tunnel address.
    pub dropped_source: AtomicU64,
    /// Packets while no connection is up (the kill switch holds them back from the link).
    pub dropped_not_ready: AtomicU64,
}

/// The host's address on the TUN device and the session's address in the tunnel.
///
/// The device keeps the first session's address for as long as it exists; a later session
/// (after a reconnect) may be given another, and packets are readdressed between the two.
/// Changing the device's address instead would leave connections that the host opened
/// while reconnecting stuck on the old one until they time out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Addresses {
    host: Ipv4Addr,
    tunnel: Ipv4Addr,
}

/// The TUN device and the tasks that move its packets.
pub struct TunLocal {
    dev: Arc<AsyncDevice>,
    addr: watch::Sender<Option<Addresses>>,
    to_tun: mpsc::Sender<Vec<u8>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What was dropped, and why.
    pub counters: Arc<TunCounters>,
}

impl TunLocal {
    /// Creates the TUN device `name` (up, no address until a session is admitted) and
    /// returns it with the receiver of the packets it reads.
    pub fn create(name: &str, mtu: u16) -> std::io::Result<(Self, mpsc::Receiver<Vec<u8>>)> {
        // With the virtio-net header the kernel hands over up to 64 KiB of one TCP flow per
        // read (split here into packets) and takes coalesced writes.
        let dev = Arc::new(
            DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .offload(true)
                .build_async()?,
        );
        dev.enabled(true)?;
        let (addr, addr_rx) = watch::channel(None);
        let (to_tunnel, from_tun) = mpsc::channel(QUEUE);
        let (to_tun, mut writer_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let counters = Arc::new(TunCounters::default());
        let reader = tokio::spawn(read_tun(dev.clone(), addr_rx, to_tunnel, counters.clone()));
        let writer_dev = dev.clone();
        let writer = tokio::spawn(async move {
            let mut batch = tunio::WriteBatch::new();
            while let Some(ip) = writer_rx.recv().await {
                batch.push(&ip);
                spare::give(ip);
                while !batch.is_full() {
                    let Ok(ip) = writer_rx.try_recv() else {
                        break;
                    };
                    batch.push(&ip);
                    spare::give(ip);
                }
                let _ = batch.flush(&writer_dev);
            }
        });
        Ok((
            Self {
                dev,
                addr,
                to_tun,
                tasks: vec![reader, writer],
                counters,
            },
            from_tun,
        ))
    }

    /// The device's name.
    pub fn name(&self) -> std::io::Result<String> {
        self.dev.name()
    }
}

impl Drop for TunLocal {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Local for TunLocal {
    fn ready(&mut self, inner: &control::Admission, mtu: u16) -> std::io::Result<()> {
        let tunnel = inner.tunnel_addr;
        let host = match *self.addr.borrow() {
            Some(a) => a.host,
            None => {
                self.dev.add_address_v4(tunnel, 32)?;
                tunnel
            }
        };
        self.dev.set_mtu(mtu)?;
        self.addr.send_replace(Some(Addresses { host, tunnel }));
        Ok(())
    }

    fn deliver(&mut self, mut ip: Vec<u8>) {
        if let Some(a) = *self.addr.borrow() {
            if a.host != a.tunnel
                && tunnel::wire::ip_addrs(&ip).map(|(_, dst)| dst) == Some(IpAddr::V4(a.tunnel))
                && tunnel::wire::readdress_v4(&mut ip, Address::Destination, a.host).is_err()
            {
                return;
            }
        }
        let _ = self.to_tun.try_send(ip);
    }

    fn lost(&mut self) {}
}

async fn read_tun(
    dev: Arc<AsyncDevice>,
    addr: watch::Receiver<Option<Addresses>>,
    to_tunnel: mpsc::Sender<Vec<u8>>,
    counters: Arc<TunCounters>,
) {
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs: Vec<Vec<u8>> = (0..SEGMENTS).map(|_| vec![0u8; 9_100]).collect();
    let mut sizes = vec![0usize; SEGMENTS];
    loop {
        let Ok(n) = dev.recv_multiple(&mut raw, &mut bufs, &mut sizes, 0).await else {
            return;
        };
        for (buf, &len) in bufs.iter().zip(&sizes).take(n) {
            let packet = buf.get(..len).unwrap_or_default();
            classify(packet, &addr, &to_tunnel, &counters);
        }
    }
}

/// Passes a packet from the host into the tunnel, if it is IPv4 from the host's tunnel
/// address, with the session's address as its source.
fn classify(
    packet: &[u8],
    addr: &watch::Receiver<Option<Addresses>>,
    to_tunnel: &mpsc::Sender<Vec<u8>>,
    counters: &TunCounters,
) {
    let current = *addr.borrow();
    match tunnel::wire::ip_addrs(packet) {
        Some((IpAddr::V4(src), _)) if current.is_some_and(|a| a.host == src) => {
            let mut packet = {
                let mut b = spare::take(packet.len());
                b.extend_from_slice(packet);
                b
            };
            if let Some(a) = current.filter(|a| a.host != a.tunnel) {
                if tunnel::wire::readdress_v4(&mut packet, Address::Source, a.tunnel).is_err() {
                    counters.dropped_source.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if to_tunnel.try_send(packet).is_err() {
                counters.dropped_not_ready.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some((IpAddr::V6(_), _)) => {
            counters.dropped_ipv6.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            counters.dropped_source.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn after_a_reconnect_the_host_keeps_its_address_and_packets_are_readdressed() {
        let (host, tunnel) = (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(100, 64, 0, 3));
        let dest: std::net::SocketAddr = "198.51.100.7:53".parse().unwrap();
        let (_tx, addr) = watch::channel(Some(Addresses { host, tunnel }));
        let (to_tunnel, mut out) = mpsc::channel(4);
        let counters = TunCounters::default();
        let from_host = tunnel::wire::build_udp((host, 5000).into(), dest, b"query").unwrap();
        classify(&from_host, &addr, &to_tunnel, &counters);
        let sent = out.try_recv().unwrap();
        let d = tunnel::wire::parse_udp(&sent).unwrap();
        assert_eq!(
            d.src,
            (tunnel, 5000).into(),
            "the session's address goes out"
        );
        assert_eq!(d.payload, b"query");
        // A packet from the session's address itself is not the host's: dropped.
        let stray = tunnel::wire::build_udp((tunnel, 5000).into(), dest, b"x").unwrap();
        classify(&stray, &addr, &to_tunnel, &counters);
        assert!(out.try_recv().is_err());
        assert_eq!(counters.dropped_source.load(Ordering::Relaxed), 1);
    }
}
