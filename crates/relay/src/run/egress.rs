use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netstack::driver::{IncomingTcp, StackHandle};
use netstack::{Mode, Stack, StackConfig, UdpDatagram, Unreachable};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{EgressSettings, Observation, Observer, RelayHandle};
use crate::counters::Counters;
use crate::policy::DestinationPolicy;
use crate::table::{SessionId, SessionTable, TableEvent};

/// Packets taken from the stacks' queue per turn of the loop, to send together.
const BATCH: usize = 64;
/// How long the egress waits for a destination to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A UDP flow with no traffic for this long releases its socket.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Packets queued from the tunnel towards one session's stack.
const STACK_QUEUE: usize = 1024;

/// Flow counters kept by the flow tasks, merged into [`Counters`] for reports.
#[derive(Default)]
struct FlowCounters {
    refused_policy: AtomicU64,
    connect_failed: AtomicU64,
}

/// One admitted session's userspace stack and the tasks around it.
struct SessionStack {
    ip_in: mpsc::Sender<Vec<u8>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SessionStack {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts an egress on the current tokio runtime: one event loop per worker.
pub async fn run_egress(settings: EgressSettings) -> io::Result<RelayHandle> {
    let c = &settings.common;
    let (local_addr, shards) = c.bind_workers()?;
    let n = shards.len();
    let mut policy = settings.policy.clone();
    policy.add_own(local_addr.ip());
    let report_interval = c.report_interval;
    let handle = super::spawn_workers(
        "egress",
        local_addr,
        report_interval,
        shards,
        |_, socket, table, counters_tx, shutdown_rx| {
            event_loop(
                settings.clone(),
                policy.clone(),
                socket,
                table,
                counters_tx,
                shutdown_rx,
            )
        },
    );
    tracing::info!("egress listening ({n} workers)");
    Ok(handle)
}

async fn event_loop(
    settings: EgressSettings,
    policy: DestinationPolicy,
    mut socket: crate::udp::BatchSocket,
    mut table: SessionTable,
    counters_tx: watch::Sender<Counters>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let c = settings.common;
    let policy = Arc::new(policy);
    let flows = Arc::new(FlowCounters::default());
    let (out_tx, mut out_rx) = mpsc::channel::<(SessionId, Vec<u8>)>(4096);
    let mut stacks: HashMap<SessionId, SessionStack> = HashMap::new();
    let mut events = Vec::new();
    let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        let deadline = tokio::time::Instant::from_std(table.poll_timeout());
        let mut received = false;
        tokio::select! {
            r = socket.recv() => match r {
                Ok(()) => received = true,
                Err(e) => tracing::debug!("receive error: {}", e.kind()),
            },
            Some((id, ip)) = out_rx.recv() => table.send(Instant::now(), id, &ip, &mut events),
            _ = tokio::time::sleep_until(deadline) => table.handle_timeout(Instant::now(), &mut events),
            _ = &mut shutdown => break,
        }
        if received {
            let now = Instant::now();
            for (from, d) in socket.received() {
                table.handle_datagram(now, from, d, &mut events);
            }
        }
        // Packets the stacks have ready go out together (one segmented send per peer).
        for _ in 0..BATCH {
            let Ok((id, ip)) = out_rx.try_recv() else {
                break;
            };
            table.send(Instant::now(), id, &ip, &mut events);
        }
        for ev in events.drain(..) {
            match ev {
                TableEvent::Transmit { to, datagram } => sends.push((to, datagram)),
                TableEvent::Admitted { id, addr } => {
                    let peer = table.peer_addr(id);
                    let ctx = FlowContext {
                        policy: policy.clone(),
                        flows: flows.clone(),
                        observer: c.observer.clone().zip(peer),
                        mtu: c.admit.mtu,
                    };
                    match start_stack(id, addr, c.admit.mtu, out_tx.clone(), ctx) {
                        Ok(s) => {
                            stacks.insert(id, s);
                        }
                        Err(e) => tracing::warn!("cannot start a session's stack: {e}"),
                    }
                }
                TableEvent::Packet { id, ip } => {
                    let len = ip.len() as u64;
                    match stacks.get(&id).map(|s| s.ip_in.try_send(ip)) {
                        Some(Ok(())) => {
                            table.counters.forwarded += 1;
                            table.counters.forwarded_bytes += len;
                        }
                        // A full queue drops, as a full NIC ring would; TCP retransmits.
                        Some(Err(_)) => table.counters.drop(crate::counters::Drop::Capacity),
                        None => table.counters.drop(crate::counters::Drop::NoSession),
                    }
                }
                TableEvent::Closed { id } => {
                    stacks.remove(&id);
                }
            }
        }
        socket.send_all(&sends).await;
        sends.clear();
        counters_tx.send_replace(merged(&table, &flows));
    }
}

fn merged(table: &SessionTable, flows: &FlowCounters) -> Counters {
    let mut c = table.counters;
    c.dropped_policy += flows.refused_policy.load(Ordering::Relaxed);
    c
}

#[derive(Clone)]
struct FlowContext {
    policy: Arc<DestinationPolicy>,
    flows: Arc<FlowCounters>,
    /// The session's tunnel MTU: no reply larger than that fits back into the tunnel.
    mtu: u16,
    observer: Option<(Observer, SocketAddr)>,
}

fn start_stack(
    id: SessionId,
    addr: Ipv4Addr,
    mtu: u16,
    out_tx: mpsc::Sender<(SessionId, Vec<u8>)>,
    ctx: FlowContext,
) -> Result<SessionStack, netstack::ConfigError> {
    let mut config = StackConfig::new(Mode::Terminate, vec![IpAddr::V4(addr)]);
    config.mtu = usize::from(mtu);
    let stack = Stack::new(config, Instant::now())?;
    let (ip_in, ip_in_rx) = mpsc::channel(STACK_QUEUE);
    let (ip_out_tx, mut ip_out_rx) = mpsc::channel::<Vec<u8>>(STACK_QUEUE);
    let handle = netstack::driver::spawn(stack, ip_in_rx, ip_out_tx);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(async move {
        while let Some(ip) = ip_out_rx.recv().await {
            if out_tx.send((id, ip)).await.is_err() {
                return;
            }
        }
    }));
    if let Some(mut incoming) = handle.incoming() {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(flow) = incoming.recv().await {
                tokio::spawn(relay_tcp(flow, ctx.clone()));
            }
        }));
    }
    if let Some(datagrams) = handle.incoming_udp() {
        tasks.push(tokio::spawn(relay_udp(handle.clone(), datagrams, ctx)));
    }
    Ok(SessionStack { ip_in, tasks })
}

/// One TCP flow: policy, a real connection, then bytes both ways.
async fn relay_tcp(flow: IncomingTcp, ctx: FlowContext) {
    let dst = flow.dst();
    if ctx.policy.check(dst).is_err() {
        ctx.flows.refused_policy.fetch_add(1, Ordering::Relaxed);
        return flow.refuse();
    }
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        _ => {
            ctx.flows.connect_failed.fetch_add(1, Ordering::Relaxed);
            return flow.refuse();
        }
    };
    if let Some((obs, peer)) = &ctx.observer {
        let _ = obs.send(Observation::Egress {
            peer: *peer,
            destination: dst,
        });
    }
    let _ = stream.set_nodelay(true);
    let Ok(mut tunnel_side) = flow.accept().await else {
        return;
    };
    let mut stream = stream;
    let _ = tokio::io::copy_bidirectional(&mut tunnel_side, &mut stream).await;
}

/// UDP: one OS socket per client source endpoint, released when idle.
async fn relay_udp(
    handle: StackHandle,
    mut datagrams: mpsc::Receiver<UdpDatagram>,
    ctx: FlowContext,
) {
    let mut sockets: HashMap<(SocketAddr, bool), (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    while let Some(d) = datagrams.recv().await {
        if d.dst == names::server() {
            let handle = handle.clone();
            tokio::spawn(async move {
                if let Some(reply) = super::resolve::answer(&d.payload).await {
                    let _ = handle.udp_reply(d.dst, d.src, &reply);
                }
            });
            continue;
        }
        if ctx.policy.check(d.dst).is_err() {
            ctx.flows.refused_policy.fetch_add(1, Ordering::Relaxed);
            handle.refuse_udp(&d, Unreachable::Prohibited);
            continue;
        }
        sockets.retain(|_, (_, reader)| !reader.is_finished());
        let key = (d.src, d.dst.is_ipv4());
        let socket = match sockets.entry(key) {
            Entry::Occupied(e) => e.get().0.clone(),
            Entry::Vacant(v) => {
                let bind: SocketAddr = if d.dst.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let Ok(s) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let s = Arc::new(s);
                let reader = tokio::spawn(udp_replies(handle.clone(), s.clone(), d.src, ctx.mtu));
                if let Some((obs, peer)) = &ctx.observer {
                    let _ = obs.send(Observation::Egress {
                        peer: *peer,
                        destination: d.dst,
                    });
                }
                v.insert((s.clone(), reader));
                s
            }
        };
        let _ = socket.send_to(&d.payload, d.dst).await;
    }
    for (_, (_, reader)) in sockets {
        reader.abort();
    }
}

/// Relays a flow's replies into the session's stack. The buffer holds one tunnel MTU (and a
/// byte to notice more): a reply that does not fit an IP packet of that size could not go
/// back through the tunnel anyway, and a 64 KiB buffer per flow was most of an idle
/// session's memory.
async fn udp_replies(handle: StackHandle, socket: Arc<UdpSocket>, client: SocketAddr, mtu: u16) {
    let mut buf = vec![0u8; usize::from(mtu) + 1];
    while let Ok(Ok((n, from))) = tokio::time::timeout(UDP_IDLE, socket.recv_from(&mut buf)).await {
        if n > usize::from(mtu) {
            continue;
        }
        if handle
            .udp_reply(from, client, buf.get(..n).unwrap_or_default())
            .is_err()
        {
            return;
        }
    }
}
