//! Whole-host mode: a TUN device carries the host's IP traffic into the tunnel.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, VIRTIO_NET_HDR_LEN};

/// Packets one TUN read can split into.
const SEGMENTS: usize = 128;
/// Packets written to the TUN device per batch.
const WRITE_BATCH: usize = 64;

use crate::run::Local;

/// Packets queued between the TUN device and the tunnel.
const QUEUE: usize = 1024;

/// Packets the TUN side refused to send into the tunnel.
#[derive(Debug, Default)]
pub struct TunCounters {
    /// IPv6 packets: the tunnel carries IPv4 only, so IPv6 is blocked, never leaked.
    pub dropped_ipv6: AtomicU64,
    /// Packets from an address other than the tunnel's (stale after a reconnect).
    pub dropped_source: AtomicU64,
    /// Packets while no connection is up (the kill switch holds them back from the link).
    pub dropped_not_ready: AtomicU64,
}

/// The TUN device and the tasks that move its packets.
pub struct TunLocal {
    dev: Arc<AsyncDevice>,
    addr: watch::Sender<Option<Ipv4Addr>>,
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
            let mut gro = GROTable::default();
            let mut batch: Vec<Vec<u8>> = Vec::new();
            while let Some(ip) = writer_rx.recv().await {
                batch.push(with_header_room(&ip));
                while batch.len() < WRITE_BATCH {
                    let Ok(ip) = writer_rx.try_recv() else {
                        break;
                    };
                    batch.push(with_header_room(&ip));
                }
                let _ = writer_dev
                    .send_multiple(&mut gro, &mut batch, VIRTIO_NET_HDR_LEN)
                    .await;
                batch.clear();
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
        let new = inner.tunnel_addr;
        let old = *self.addr.borrow();
        if old != Some(new) {
            if let Some(old) = old {
                let _ = self.dev.remove_address(IpAddr::V4(old));
            }
            self.dev.add_address_v4(new, 32)?;
        }
        self.dev.set_mtu(mtu)?;
        self.addr.send_replace(Some(new));
        Ok(())
    }

    fn deliver(&mut self, ip: Vec<u8>) {
        let _ = self.to_tun.try_send(ip);
    }

    fn lost(&mut self) {}
}

async fn read_tun(
    dev: Arc<AsyncDevice>,
    addr: watch::Receiver<Option<Ipv4Addr>>,
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

/// `ip` after empty room for the virtio-net header, as `send_multiple` wants it.
fn with_header_room(ip: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(VIRTIO_NET_HDR_LEN + ip.len());
    b.resize(VIRTIO_NET_HDR_LEN, 0);
    b.extend_from_slice(ip);
    b
}

/// Passes a packet from the host into the tunnel, if it is IPv4 from the tunnel address.
fn classify(
    packet: &[u8],
    addr: &watch::Receiver<Option<Ipv4Addr>>,
    to_tunnel: &mpsc::Sender<Vec<u8>>,
    counters: &TunCounters,
) {
    match tunnel::wire::ip_addrs(packet) {
        Some((IpAddr::V4(src), _)) if Some(src) == *addr.borrow() => {
            if to_tunnel.try_send(packet.to_vec()).is_err() {
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
