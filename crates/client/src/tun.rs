//! Whole-host mode: a TUN device carries the host's IP traffic into the tunnel.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, DeviceBuilder, VIRTIO_NET_HDR_LEN};
use tunnel::wire::Address;
use udpio::codel::Codel;

use crate::local::LocalRx;
use crate::run::Local;

/// Packets one TUN read can split into.
const PER_READ: usize = 128;

/// Packets after which a set of buffers goes to the connection even if the device has
/// more: about what the connection sends in one turn. Reads of single packets (UDP, ACKs)
/// go on into the same set until then; a set that took a whole burst of reads (up to 256
/// packets) let one turn encrypt hundreds before sending any (two-hop uploads lost 12 %).
const COALESCE: usize = 64;

/// Packets one set of buffers holds: a read that starts below [`COALESCE`] must fit.
const SEGMENTS: usize = COALESCE + PER_READ;

/// Sets of packets queued for the connection; more are dropped. A queue that stays long is
/// dropped from earlier, and one packet at a time ([`TunRead::police`]).
const READS_QUEUED: usize = 8;

/// Buffer sets a reader keeps at most: those queued, the one the connection is sending
/// from and the one being filled. They are made as traffic needs them.
const READ_SETS: usize = READS_QUEUED + 2;

/// Packets queued from the tunnel to the TUN device.
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
    /// Packets that waited too long for the connection, which fell behind the host
    /// (dropped early so that the host's TCP slows down before the queue is long).
    pub dropped_late: AtomicU64,
}

/// What the counters say, for the log when the device goes: a host that lost traffic
/// learns whether it was held back (IPv6, a reconnect) rather than lost on the way.
impl std::fmt::Display for TunCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} while no connection was up or the tunnel was behind, {} waited too long, {} \
             IPv6 (the tunnel carries IPv4 only), {} from an address other than the tunnel's",
            n(&self.dropped_not_ready),
            n(&self.dropped_late),
            n(&self.dropped_ipv6),
            n(&self.dropped_source)
        )
    }
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
    /// The device's MTU, which sizes the buffers that reads are split into.
    mtu: u16,
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
    pub fn create(name: &str, mtu: u16) -> std::io::Result<(Self, LocalRx)> {
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
        let (to_tunnel, from_tun) = mpsc::channel(READS_QUEUED);
        let (to_tun, mut writer_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let counters = Arc::new(TunCounters::default());
        let reader = tokio::spawn(read_tun(
            dev.clone(),
            mtu,
            addr_rx,
            to_tunnel,
            counters.clone(),
        ));
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
        let local_rx = LocalRx::Reads {
            rx: from_tun,
            codel: Codel::default(),
            counters: counters.clone(),
        };
        Ok((
            Self {
                dev,
                addr,
                to_tun,
                tasks: vec![reader, writer],
                counters,
            },
            local_rx,
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
        self.addr
            .send_replace(Some(Addresses { host, tunnel, mtu }));
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

/// The buffers of one TUN read.
struct Segments {
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl Segments {
    fn new() -> Self {
        Self {
            bufs: vec![Vec::new(); SEGMENTS],
            sizes: vec![0; SEGMENTS],
        }
    }

    /// Room in every buffer for a packet of the device's MTU (it grows once admitted).
    fn fit(&mut self, mtu: u16) {
        let len = usize::from(mtu).max(1500) + 64;
        if self.bufs.first().is_some_and(|b| b.len() < len) {
            for b in &mut self.bufs {
                b.resize(len, 0);
            }
        }
    }
}

/// The packets of one TUN read, in the buffers they were read into. Dropping it gives the
/// buffers back to the reader.
pub struct TunRead {
    segments: Option<Segments>,
    n: usize,
    back: mpsc::UnboundedSender<Segments>,
    /// When the device gave the packets: how long they waited for the connection.
    read_at: Instant,
}

impl TunRead {
    /// Lets `codel` judge each packet by how long it waited since the read; those it drops
    /// are left out like refused ones. Returns how many it dropped.
    pub fn police(&mut self, codel: &mut Codel, now: Instant) -> u64 {
        let Some(s) = self.segments.as_mut() else {
            return 0;
        };
        let sojourn = now.saturating_duration_since(self.read_at);
        let mut dropped = 0;
        for len in s.sizes.iter_mut().take(self.n).filter(|l| **l > 0) {
            if !codel.keep(now, sojourn, *len) {
                *len = 0;
                dropped += 1;
            }
        }
        dropped
    }

    /// The packets for the tunnel, in the order they were read; those refused are left out.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().flat_map(|s| {
            s.bufs
                .iter()
                .zip(&s.sizes)
                .take(self.n)
                .filter(|(_, &len)| len > 0)
                .map(|(b, &len)| b.get(..len).unwrap_or_default())
        })
    }
}

impl Drop for TunRead {
    fn drop(&mut self) {
        if let Some(s) = self.segments.take() {
            // A reader that has gone needs no buffers back.
            let _ = self.back.send(s);
        }
    }
}

async fn read_tun(
    dev: Arc<AsyncDevice>,
    mtu: u16,
    addr: watch::Receiver<Option<Addresses>>,
    to_tunnel: mpsc::Sender<TunRead>,
    counters: Arc<TunCounters>,
) {
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let (back, mut returned) = mpsc::unbounded_channel();
    let mut made = 0;
    loop {
        let mut segments = match returned.try_recv() {
            Ok(s) => s,
            Err(_) if made < READ_SETS => {
                made += 1;
                Segments::new()
            }
            Err(_) => match returned.recv().await {
                Some(s) => s,
                None => return,
            },
        };
        let current = *addr.borrow();
        segments.fit(current.map_or(mtu, |a| a.mtu));
        let Segments { bufs, sizes } = &mut segments;
        let Ok(mut n) = dev
            .recv_multiple(&mut raw, &mut bufs[..PER_READ], &mut sizes[..PER_READ], 0)
            .await
        else {
            return;
        };
        let read_at = Instant::now();
        while n < COALESCE {
            let (more, sizes) = (&mut bufs[n..n + PER_READ], &mut sizes[n..n + PER_READ]);
            match dev.try_recv_multiple(&mut raw, more, sizes, 0) {
                Ok(m) => n += m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        let current = *addr.borrow();
        let mut kept = 0;
        for (buf, len) in segments.bufs.iter_mut().zip(&mut segments.sizes).take(n) {
            if admit(buf.get_mut(..*len).unwrap_or_default(), current, &counters) {
                kept += 1;
            } else {
                *len = 0;
            }
        }
        let read = TunRead {
            segments: Some(segments),
            n,
            back: back.clone(),
            read_at,
        };
        if kept > 0 && to_tunnel.try_send(read).is_err() {
            counters
                .dropped_not_ready
                .fetch_add(kept, Ordering::Relaxed);
        }
    }
}

/// Whether a packet from the host goes into the tunnel: IPv4 from the host's tunnel
/// address. It is given the session's address as its source.
fn admit(packet: &mut [u8], current: Option<Addresses>, counters: &TunCounters) -> bool {
    match tunnel::wire::ip_addrs(packet) {
        Some((IpAddr::V4(src), _)) if current.is_some_and(|a| a.host == src) => {
            if let Some(a) = current.filter(|a| a.host != a.tunnel) {
                if tunnel::wire::readdress_v4(packet, Address::Source, a.tunnel).is_err() {
                    counters.dropped_source.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
            true
        }
        Some((IpAddr::V6(_), _)) => {
            counters.dropped_ipv6.fetch_add(1, Ordering::Relaxed);
            false
        }
        _ => {
            counters.dropped_source.fetch_add(1, Ordering::Relaxed);
            false
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
        let current = Some(Addresses {
            host,
            tunnel,
            mtu: 1340,
        });
        let counters = TunCounters::default();
        let mut from_host = tunnel::wire::build_udp((host, 5000).into(), dest, b"query").unwrap();
        assert!(admit(&mut from_host, current, &counters));
        let d = tunnel::wire::parse_udp(&from_host).unwrap();
        assert_eq!(
            d.src,
            (tunnel, 5000).into(),
            "the session's address goes out"
        );
        assert_eq!(d.payload, b"query");
        // A packet from the session's address itself is not the host's: dropped.
        let mut stray = tunnel::wire::build_udp((tunnel, 5000).into(), dest, b"x").unwrap();
        assert!(!admit(&mut stray, current, &counters));
        assert_eq!(counters.dropped_source.load(Ordering::Relaxed), 1);
        let summary = counters.to_string();
        assert!(
            summary.ends_with("1 from an address other than the tunnel's"),
            "{summary}"
        );
        assert!(summary.starts_with("0 while no connection"), "{summary}");
    }

    /// A read of `n` packets, read `waited` ago, whose buffers go back to `back`; `fill`
    /// writes the `i`th packet and says its length.
    fn read_with(
        n: usize,
        back: mpsc::UnboundedSender<Segments>,
        waited: std::time::Duration,
        fill: impl Fn(usize, &mut [u8]) -> usize,
    ) -> TunRead {
        let mut segments = Segments::new();
        segments.fit(1340);
        for (i, (buf, len)) in segments
            .bufs
            .iter_mut()
            .zip(&mut segments.sizes)
            .enumerate()
        {
            *len = fill(i, buf);
        }
        TunRead {
            segments: Some(segments),
            n,
            back,
            read_at: Instant::now() - waited,
        }
    }

    /// A read of `n` full-size packets numbered from `first`, read `waited` ago.
    fn read_of(n: usize, first: u8, waited: std::time::Duration) -> TunRead {
        read_with(n, mpsc::unbounded_channel().0, waited, |i, buf| {
            buf[0] = first.wrapping_add(i as u8);
            1300
        })
    }

    #[tokio::test]
    async fn reads_that_keep_waiting_lose_single_packets_and_the_rest_go_in_order() {
        let mut codel = Codel::default();
        let interval = udpio::codel::INTERVAL;
        let (mut kept, mut dropped, mut reads) = (Vec::new(), 0, 0);
        // Every read waited twice the target, for five intervals.
        let start = Instant::now();
        let mut i = 0u8;
        while start.elapsed() < interval * 5 {
            let mut read = read_of(64, i, udpio::codel::TARGET * 2);
            let late = read.police(&mut codel, Instant::now());
            assert!(late <= 1, "one drop per read at most, got {late}");
            dropped += late;
            kept.extend(read.packets().map(|p| p[0]));
            i = i.wrapping_add(64);
            reads += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(dropped > 0, "a queue that stays long is dropped from");
        assert_eq!(kept.len() as u64 + dropped, reads * 64);
        assert!(
            kept.windows(2)
                .all(|w| matches!(w[1].wrapping_sub(w[0]), 1 | 2)),
            "the rest in order, no two dropped in a row"
        );
        // Reads taken at once are never dropped from, however many.
        let mut fresh = Codel::default();
        for _ in 0..100 {
            let mut read = read_of(64, 0, std::time::Duration::ZERO);
            assert_eq!(read.police(&mut fresh, Instant::now()), 0);
            assert_eq!(read.packets().count(), 64);
        }
    }

    #[tokio::test]
    async fn a_read_gives_its_packets_in_order_without_the_refused_and_its_buffers_back() {
        let (back, mut returned) = mpsc::unbounded_channel();
        let read = read_with(4, back, std::time::Duration::ZERO, |i, buf| {
            buf[..3].copy_from_slice(&[i as u8; 3]);
            if i == 1 {
                0
            } else {
                3
            }
        });
        let mut got = Vec::new();
        crate::local::Outgoing::Read(read).for_each(|p| got.push(p.to_vec()));
        assert_eq!(got, [vec![0; 3], vec![2; 3], vec![3; 3]]);
        let again = returned.try_recv().expect("the buffers came back");
        assert_eq!(again.bufs.len(), SEGMENTS);
        assert!(again.bufs.iter().all(|b| b.len() >= 1340 + 64));
    }
}
