use std::io;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tun_rs::{AsyncDevice, DeviceBuilder, SyncDevice, VIRTIO_NET_HDR_LEN};

use super::resolve::Lookups;
use super::{EgressSettings, RelayHandle};
use crate::counters::{Counters, Drop};
use crate::exit;
use crate::pool::AddressPool;
use crate::table::{SessionTable, TableEvent};

const MAX_DATAGRAM: usize = 65_535;
/// Packets one TUN read can split into (64 KiB of TCP at the smallest MSS we allow).
const TUN_SEGMENTS: usize = 128;
/// Replies queued for another worker (those the kernel gave the wrong queue).
const HANDOFF_QUEUE: usize = 1024;

/// The TUN device gets the relay's in-tunnel address, so the kernel routes clients' replies
/// (100.64.0.0/10) back into it and DNS can be answered there.
use crate::exit::EXIT_ADDR;

/// TUN mode settings.
#[derive(Debug, Clone)]
pub struct ExitSettings {
    /// Name of the TUN device.
    pub tun: String,
}

/// Starts an egress in TUN mode: kernel forwarding with NAT. Needs root (CAP_NET_ADMIN)
/// and nftables.
pub async fn run_egress_tun(
    settings: EgressSettings,
    exit_settings: ExitSettings,
) -> io::Result<RelayHandle> {
    if !exit::valid_interface(&exit_settings.tun) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the TUN name must be 1-15 letters, digits, '-', '_' or '.'",
        ));
    }
    let c = &settings.common;
    let (local_addr, shards) = c.bind_workers()?;
    let n = shards.len();
    let dev = DeviceBuilder::new()
        .name(&exit_settings.tun)
        .ipv4(EXIT_ADDR, 10, None)
        .mtu(c.admit.mtu)
        // TSO/GRO through the virtio-net header: the kernel hands over up to 64 KiB of one
        // TCP flow per read and takes coalesced writes.
        .offload(c.offload == crate::udp::Offload::On)
        // A queue per worker. The kernel sends a flow's replies to the queue that wrote
        // its packets (tun's flow steering); those it sends elsewhere are handed over.
        .multi_queue(n > 1)
        .build_sync()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create the TUN device {} (run as root): {e}",
                    exit_settings.tun
                ),
            )
        })?;
    dev.enabled(true)?;
    // Each worker registers its queue on its own runtime (`event_loop`).
    let mut queues = Vec::with_capacity(n);
    for _ in 1..n {
        queues.push(Some(dev.try_clone()?));
    }
    queues.insert(0, Some(dev));
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot enable IPv4 forwarding (run as root): {e}"),
        )
    })?;
    let mut own = settings.policy.own().to_vec();
    own.push(local_addr.ip());
    nft(&exit::ruleset(
        &exit_settings.tun,
        settings.policy.allowed(),
        &own,
    ))
    .await?;
    let dns = tokio::net::UdpSocket::bind(names::server())
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot answer DNS on {}: {e}", names::server()),
            )
        })?;
    let dns_task = tokio::spawn(serve_dns(Arc::new(dns), Lookups::default()));
    // Replies that reached another worker's queue go to the worker owning their address.
    let (handoff_tx, handoff_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| mpsc::channel::<Vec<u8>>(HANDOFF_QUEUE))
        .unzip();
    let handoff_tx = Arc::new(handoff_tx);
    let mut handoff_rx: Vec<_> = handoff_rx.into_iter().map(Some).collect();
    let mut handle = super::spawn_workers(
        "egress",
        local_addr,
        c.report_interval,
        shards,
        |k, socket, table, counters_tx, shutdown_rx| {
            let queue = queues.get_mut(k).and_then(Option::take);
            let worker = Worker {
                index: k,
                handoff_in: handoff_rx[k].take(),
                handoff_out: handoff_tx.clone(),
            };
            event_loop(
                settings.clone(),
                socket,
                queue,
                worker,
                table,
                counters_tx,
                shutdown_rx,
            )
        },
    );
    let workers = std::mem::replace(&mut handle.task, tokio::spawn(async {}));
    handle.task = tokio::spawn(async move {
        let _ = workers.await;
        dns_task.abort();
        if let Err(e) = nft(&exit::teardown()).await {
            tracing::warn!("cannot remove the egress's nftables table: {e}");
        }
    });
    tracing::info!("egress listening (TUN mode, {n} workers)");
    Ok(handle)
}

/// DNS for clients at the relay's in-tunnel address (the kernel delivers it from the TUN).
/// At most [`super::resolve::MAX_LOOKUPS`] lookups at once, as in the userspace egress; a
/// query beyond them is answered "server failure" at once.
async fn serve_dns(socket: Arc<tokio::net::UdpSocket>, lookups: Lookups) {
    let mut buf = vec![0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        match lookups.start(buf.get(..n).unwrap_or_default()) {
            Ok(lookup) => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    if let Some(reply) = lookup.await {
                        let _ = socket.send_to(&reply, from).await;
                    }
                });
            }
            Err(Some(reply)) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Err(None) => {}
        }
    }
}

/// Applies a ruleset in one transaction.
async fn nft(ruleset: &str) -> io::Result<()> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run nft (install the Debian package nftables): {e}"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "nft refused the egress rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// One worker's part of the TUN device and its way to the others.
struct Worker {
    index: usize,
    /// Replies that the kernel gave another worker's queue, for sessions of this one.
    handoff_in: Option<mpsc::Receiver<Vec<u8>>>,
    /// Every worker's handoff queue, by index (one per worker).
    handoff_out: Arc<Vec<mpsc::Sender<Vec<u8>>>>,
}

impl Worker {
    /// Encrypts a reply from the kernel for the session that owns its destination, or
    /// hands it to the worker that owns the address.
    fn deliver(
        &self,
        table: &mut SessionTable,
        now: Instant,
        ip: &[u8],
        events: &mut Vec<TableEvent>,
    ) {
        let Some((_, IpAddr::V4(dst))) = tunnel::wire::ip_addrs(ip) else {
            return table.counters.drop(Drop::NotIp);
        };
        if let Some(id) = table.session_for_addr(dst) {
            return table.send(now, id, ip, events);
        }
        let owner = AddressPool::worker_of(dst, self.handoff_out.len());
        match self.handoff_out.get(owner) {
            Some(tx) if owner != self.index => {
                // A full queue drops, as a full NIC ring would; TCP retransmits.
                if tx.try_send(ip.to_vec()).is_err() {
                    table.counters.drop(Drop::Capacity);
                }
            }
            _ => table.counters.drop(Drop::NoSession),
        }
    }
}

/// A handoff queue that never yields when there is none (one worker).
async fn handed_over(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes the batch, coalesced into as few writes as the kernel takes (GRO for TCP and UDP).
/// Never waits: a device that is down refuses at once, and its packets are dropped.
fn write_tun(dev: &AsyncDevice, batch: &mut tunio::WriteBatch, counters: &mut Counters) {
    let queued = batch.len() as u64;
    match batch.flush(dev) {
        Ok(done) => {
            counters.tun_packets += done.packets as u64;
            counters.tun_writes += done.writes as u64;
        }
        Err(e) => {
            counters.tun_refused += queued;
            tracing::debug!("TUN write error: {}", e.kind());
        }
    }
}

async fn event_loop(
    settings: EgressSettings,
    mut socket: crate::udp::BatchSocket,
    queue: Option<SyncDevice>,
    mut worker: Worker,
    mut table: SessionTable,
    counters_tx: watch::Sender<Counters>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let c = settings.common;
    // A TUN read: the raw buffer (virtio header and up to 64 KiB), split into packets.
    let mut tun_raw = vec![0u8; VIRTIO_NET_HDR_LEN + MAX_DATAGRAM];
    let seg_len = usize::from(c.admit.mtu).max(1500) + 64;
    let mut tun_bufs: Vec<Vec<u8>> = (0..TUN_SEGMENTS).map(|_| vec![0u8; seg_len]).collect();
    let mut tun_sizes = vec![0usize; TUN_SEGMENTS];
    let mut to_tun = tunio::WriteBatch::new();
    let mut events = Vec::new();
    let mut sends: Vec<(std::net::SocketAddr, Vec<u8>)> = Vec::new();
    // Registered here, on the worker's own runtime: its readiness wakes this thread.
    let dev = match queue.map(AsyncDevice::new) {
        Some(Ok(dev)) => dev,
        Some(Err(e)) => return tracing::error!("egress worker {}: TUN queue: {e}", worker.index),
        None => return tracing::error!("egress worker {}: no TUN queue", worker.index),
    };
    let mut handoff_in = worker.handoff_in.take();
    let mut attester = super::Attester::new(table.evidence_source());
    loop {
        let deadline = tokio::time::Instant::from_std(table.poll_timeout());
        let mut received = false;
        tokio::select! {
            r = socket.recv() => match r {
                Ok(()) => received = true,
                Err(e) => tracing::debug!("receive error: {}", e.kind()),
            },
            r = dev.recv_multiple(&mut tun_raw, &mut tun_bufs, &mut tun_sizes, 0) => match r {
                Ok(n) => {
                    let now = Instant::now();
                    // Replies handed over by other workers were read from the kernel before
                    // this batch: they go first, so that a flow whose steering moved to this
                    // queue keeps its order.
                    while let Some(ip) = handoff_in.as_mut().and_then(|rx| rx.try_recv().ok()) {
                        worker.deliver(&mut table, now, &ip, &mut events);
                    }
                    for (buf, &len) in tun_bufs.iter().zip(&tun_sizes).take(n) {
                        worker.deliver(&mut table, now, buf.get(..len).unwrap_or_default(), &mut events);
                    }
                }
                Err(e) => tracing::debug!("TUN read error: {}", e.kind()),
            },
            Some(ip) = handed_over(&mut handoff_in) => worker.deliver(&mut table, Instant::now(), &ip, &mut events),
            _ = tokio::time::sleep_until(deadline) => table.handle_timeout(Instant::now(), &mut events),
            (req, evidence) = attester.done() => table.answer_attest(Instant::now(), &req, evidence, &mut events),
            _ = &mut shutdown => break,
        }
        if received {
            let now = Instant::now();
            for (from, d) in socket.received() {
                table.handle_datagram(now, from, d, &mut events);
            }
        }
        for ev in events.drain(..) {
            match ev {
                TableEvent::Transmit { to, datagram } => sends.push((to, datagram)),
                TableEvent::Packet { ip, .. } => {
                    table.counters.forwarded += 1;
                    table.counters.forwarded_bytes += ip.len() as u64;
                    to_tun.push(&ip);
                    spare::give(ip);
                    if to_tun.is_full() {
                        write_tun(&dev, &mut to_tun, &mut table.counters);
                    }
                }
                TableEvent::Attest(req) => attester.start(req),
                TableEvent::Admitted { .. } | TableEvent::Closed { .. } => {}
            }
        }
        socket.send_all(&sends).await;
        for (_, d) in sends.drain(..) {
            spare::give(d);
        }
        if !to_tun.is_empty() {
            write_tun(&dev, &mut to_tun, &mut table.counters);
        }
        table.counters.dropped_late = socket.late.load(std::sync::atomic::Ordering::Relaxed);
        counters_tx.send_replace(table.counters);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_query_beyond_the_lookups_under_way_is_answered_servfail_at_once() {
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let lookups = Lookups::default();
        let _all = lookups.fill();
        let task = tokio::spawn(serve_dns(Arc::new(server), lookups));
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // A name the host answers itself: looked up, it would get an address.
        let query = names::build_query(7, "localhost", names::Kind::A).unwrap();
        client.send_to(&query, addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.recv_from(&mut buf),
        )
        .await
        .expect("an answer at once")
        .unwrap();
        let answer = names::parse_response(&buf[..n], 7, "localhost", names::Kind::A);
        assert!(
            matches!(answer, Err(names::DnsError::ServerFailure { .. })),
            "{answer:?}"
        );
        task.abort();
    }
}
