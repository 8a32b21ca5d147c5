use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netstack::driver::{Incoming, IncomingTcp, StackHandle, StackInput};
use netstack::{Mode, Stack, StackConfig, UdpDatagram, Unreachable};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{EgressSettings, Observation, Observer, RelayHandle};
use crate::counters::Counters;
use crate::policy::DestinationPolicy;
use crate::table::{SessionId, SessionTable, TableEvent};
use crate::udp::BatchSocket;

/// Packets taken from the stacks' queue per turn of the loop, to send together.
const BATCH: usize = 64;
/// How long the egress waits for a destination to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two looks for idle stacks.
const SWEEP: Duration = Duration::from_secs(5);
/// Packets queued from the tunnel towards one session's stack.
const STACK_QUEUE: usize = 1024;

/// Flow counters kept by the flow tasks, merged into [`Counters`] for reports.
#[derive(Default)]
struct FlowCounters {
    refused_policy: AtomicU64,
    connect_failed: AtomicU64,
    udp_segmented: AtomicU64,
    /// Replies the flows' sockets dropped as late.
    late: AtomicU64,
}

/// An admitted session: what its stack needs, and the stack while it runs.
struct Slot {
    addr: Ipv4Addr,
    ctx: FlowContext,
    stack: Option<SessionStack>,
    last_packet: Instant,
}

/// One admitted session's userspace stack and the tasks around it.
struct SessionStack {
    input: StackInput,
    tasks: Vec<JoinHandle<()>>,
    /// Every open flow and name lookup holds a clone: one reference means none is open.
    busy: Arc<()>,
}

impl SessionStack {
    fn is_idle(&self) -> bool {
        Arc::strong_count(&self.busy) == 1
    }
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
    let idle = settings.idle;
    let (out_tx, mut out_rx) = mpsc::channel::<(SessionId, Vec<u8>)>(4096);
    let mut slots: HashMap<SessionId, Slot> = HashMap::new();
    let mut attester = super::Attester::new(table.evidence_source());
    let mut sweep = tokio::time::interval(idle.stack.min(SWEEP));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            Some((id, ip)) = out_rx.recv() => {
                table.send(Instant::now(), id, &ip, &mut events);
                spare::give(ip);
            }
            _ = tokio::time::sleep_until(deadline) => table.handle_timeout(Instant::now(), &mut events),
            _ = sweep.tick() => stop_idle(&mut slots, Instant::now(), idle.stack, &mut table),
            (req, evidence) = attester.done() => table.answer_attest(Instant::now(), &req, evidence, &mut events),
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
            spare::give(ip);
        }
        let now = Instant::now();
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
                        udp_idle: idle.udp_flow,
                        offload: c.offload,
                    };
                    let slot = Slot {
                        addr,
                        ctx,
                        stack: None,
                        last_packet: now,
                    };
                    slots.insert(id, slot);
                }
                TableEvent::Packet { id, ip } => {
                    let len = ip.len() as u64;
                    let stack = slots
                        .get_mut(&id)
                        .and_then(|slot| slot_stack(id, slot, now, &out_tx, &mut table));
                    // A dropped packet's buffer goes back to the thread's spares: under
                    // overload a drop per packet must not also cost an allocation per packet.
                    match stack {
                        Some(s) => match s.input.push(ip) {
                            Ok(()) => {
                                table.counters.forwarded += 1;
                                table.counters.forwarded_bytes += len;
                            }
                            // A full queue drops, as a full NIC ring would; TCP retransmits.
                            Err(ip) => {
                                spare::give(ip);
                                table.counters.drop(crate::counters::Drop::Capacity);
                            }
                        },
                        None => {
                            spare::give(ip);
                            table.counters.drop(crate::counters::Drop::NoSession);
                        }
                    }
                }
                TableEvent::Closed { id } => {
                    if slots.remove(&id).and_then(|s| s.stack).is_some() {
                        table.counters.stacks_stopped += 1;
                    }
                }
                TableEvent::Attest(req) => attester.start(req),
            }
        }
        socket.send_all(&sends).await;
        for (_, d) in sends.drain(..) {
            spare::give(d);
        }
        table.counters.dropped_late = socket.late.load(Ordering::Relaxed);
        counters_tx.send_replace(merged(&table, &flows));
    }
}

/// The session's running stack, started now if it has none. Starting on the first packet
/// rather than at admission keeps sessions that never send anything small.
fn slot_stack<'a>(
    id: SessionId,
    slot: &'a mut Slot,
    now: Instant,
    out_tx: &mpsc::Sender<(SessionId, Vec<u8>)>,
    table: &mut SessionTable,
) -> Option<&'a SessionStack> {
    slot.last_packet = now;
    if slot.stack.is_none() {
        match start_stack(id, slot.addr, out_tx.clone(), slot.ctx.clone()) {
            Ok(s) => {
                slot.stack = Some(s);
                table.counters.stacks_started += 1;
            }
            Err(e) => tracing::warn!("cannot start a session's stack: {e}"),
        }
    }
    slot.stack.as_ref()
}

/// Stops the stacks that have had no open flow and no packet for `after`; the session stays
/// admitted and its next packet starts a new stack.
fn stop_idle(
    slots: &mut HashMap<SessionId, Slot>,
    now: Instant,
    after: Duration,
    table: &mut SessionTable,
) {
    for slot in slots.values_mut() {
        let idle = slot.stack.as_ref().is_some_and(SessionStack::is_idle);
        if idle && now.duration_since(slot.last_packet) >= after {
            slot.stack = None;
            table.counters.stacks_stopped += 1;
        }
    }
}

fn merged(table: &SessionTable, flows: &FlowCounters) -> Counters {
    let mut c = table.counters;
    c.dropped_policy += flows.refused_policy.load(Ordering::Relaxed);
    c.udp_segmented += flows.udp_segmented.load(Ordering::Relaxed);
    c.dropped_late += flows.late.load(Ordering::Relaxed);
    c
}

#[derive(Clone)]
struct FlowContext {
    policy: Arc<DestinationPolicy>,
    flows: Arc<FlowCounters>,
    /// The session's tunnel MTU: no reply larger than that fits back into the tunnel.
    mtu: u16,
    /// A UDP flow with no traffic for this long releases its socket.
    udp_idle: Duration,
    /// Whether flows' sockets use UDP GSO and GRO.
    offload: crate::udp::Offload,
    observer: Option<(Observer, SocketAddr)>,
}

fn start_stack(
    id: SessionId,
    addr: Ipv4Addr,
    out_tx: mpsc::Sender<(SessionId, Vec<u8>)>,
    ctx: FlowContext,
) -> Result<SessionStack, netstack::ConfigError> {
    let mut config = StackConfig::new(Mode::Terminate, vec![IpAddr::V4(addr)]);
    config.mtu = usize::from(ctx.mtu);
    let busy = Arc::new(());
    let stack = Stack::new(config, Instant::now())?;
    // The stack's packets go straight into the worker's channel, tagged with the session:
    // a channel and a forwarding task per stack were 2 KiB of every running session, and a
    // channel into it 1.3 KiB more.
    let (handle, input) =
        netstack::driver::spawn_fed(stack, STACK_QUEUE, out_tx, move |ip| (id, ip));
    let mut tasks = Vec::new();
    if let Some(mut incoming) = handle.incoming() {
        let ctx = ctx.clone();
        let busy = Arc::downgrade(&busy);
        tasks.push(tokio::spawn(async move {
            while let Some(flow) = incoming.recv().await {
                let Some(busy) = busy.upgrade() else { return };
                tokio::spawn(relay_tcp(flow, ctx.clone(), busy));
            }
        }));
    }
    if let Some(datagrams) = handle.incoming_udp() {
        let busy = Arc::downgrade(&busy);
        tasks.push(tokio::spawn(relay_udp(
            handle.clone(),
            datagrams,
            ctx,
            busy,
        )));
    }
    Ok(SessionStack { input, tasks, busy })
}

/// One TCP flow: policy, a real connection, then bytes both ways. `_busy` keeps the stack
/// running while the flow is open, however long it stays quiet.
async fn relay_tcp(flow: IncomingTcp, ctx: FlowContext, _busy: Arc<()>) {
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

/// UDP: one OS socket per client source endpoint, released when idle. Datagrams waiting in
/// the stack's queue are taken together, and a run of them for one socket goes out in one
/// batched (segmented, where they are of one size) send.
async fn relay_udp(
    handle: StackHandle,
    mut datagrams: Incoming<UdpDatagram>,
    ctx: FlowContext,
    busy: std::sync::Weak<()>,
) {
    let mut sockets = UdpFlows::default();
    while let Some(first) = datagrams.recv().await {
        // The lists are the thread's, taken while in use: a session waiting for its next
        // datagram holds none.
        let mut batch = UDP_BATCH.take();
        let mut run = UDP_RUN.take();
        batch.push(first);
        while batch.len() < BATCH {
            let Some(d) = datagrams.try_recv() else { break };
            batch.push(d);
        }
        let mut run_socket: Option<Arc<BatchSocket>> = None;
        for d in batch.drain(..) {
            let Some(socket) = udp_socket_for(&handle, &mut sockets, &ctx, &busy, &d).await else {
                continue;
            };
            if !run_socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, &socket)) {
                if let Some(s) = run_socket.take() {
                    send_run(&s, &mut run, &ctx.flows).await;
                }
                run_socket = Some(socket);
            }
            run.push((d.dst, d.payload));
        }
        if let Some(s) = run_socket.take() {
            send_run(&s, &mut run, &ctx.flows).await;
        }
        UDP_BATCH.set(batch);
        UDP_RUN.set(run);
    }
}

/// Sends a run of datagrams for one flow together and gives their buffers back.
async fn send_run(
    socket: &BatchSocket,
    run: &mut Vec<(SocketAddr, Vec<u8>)>,
    flows: &FlowCounters,
) {
    let before = socket.segmented.load(Ordering::Relaxed);
    socket.send_all(run).await;
    let segmented = socket
        .segmented
        .load(Ordering::Relaxed)
        .saturating_sub(before);
    flows.udp_segmented.fetch_add(segmented, Ordering::Relaxed);
    for (_, payload) in run.drain(..) {
        spare::give(payload);
    }
}

thread_local! {
    /// Datagrams taken from a stack's queue in one turn of [`relay_udp`].
    static UDP_BATCH: RefCell<Vec<UdpDatagram>> = const { RefCell::new(Vec::new()) };
    /// A run of them for one flow's socket, sent together.
    static UDP_RUN: RefCell<Vec<(SocketAddr, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}

/// The socket that sends `d` on, opened for its client endpoint if need be; `None` when
/// the datagram was handled here (a name lookup, or refused by policy) or cannot be sent.
async fn udp_socket_for(
    handle: &StackHandle,
    sockets: &mut UdpFlows,
    ctx: &FlowContext,
    busy: &std::sync::Weak<()>,
    d: &UdpDatagram,
) -> Option<Arc<BatchSocket>> {
    if d.dst == names::server() {
        let token = busy.upgrade()?;
        let handle = handle.clone();
        let (query, from, to) = (d.payload.clone(), d.src, d.dst);
        tokio::spawn(async move {
            let _busy = token;
            if let Some(reply) = super::resolve::answer(&query).await {
                let _ = handle.udp_reply(to, from, &reply);
            }
        });
        return None;
    }
    if ctx.policy.check(d.dst).is_err() {
        ctx.flows.refused_policy.fetch_add(1, Ordering::Relaxed);
        handle.refuse_udp(d, Unreachable::Prohibited);
        return None;
    }
    sockets.0.retain(|_, (_, reader)| !reader.is_finished());
    let key = (d.src, d.dst.is_ipv4());
    match sockets.0.entry(key) {
        Entry::Occupied(e) => Some(e.get().0.clone()),
        Entry::Vacant(v) => {
            let token = busy.upgrade()?;
            let bind: SocketAddr = if d.dst.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).await.ok()?;
            let socket = Arc::new(BatchSocket::new(socket, ctx.offload).ok()?);
            let replies = tokio::spawn(udp_replies(
                handle.clone(),
                socket.clone(),
                d.src,
                ctx.clone(),
                token,
            ));
            if let Some((obs, peer)) = &ctx.observer {
                let _ = obs.send(Observation::Egress {
                    peer: *peer,
                    destination: d.dst,
                });
            }
            v.insert((socket.clone(), replies));
            Some(socket)
        }
    }
}

/// A session's UDP flows by client endpoint (and address family), each with the task that
/// relays its replies. Dropping it, also when its task is aborted, stops those tasks.
#[derive(Default)]
struct UdpFlows(HashMap<(SocketAddr, bool), (Arc<BatchSocket>, JoinHandle<()>)>);

impl Drop for UdpFlows {
    fn drop(&mut self) {
        for (_, reader) in self.0.values() {
            reader.abort();
        }
    }
}

/// Relays a flow's replies into the session's stack until the flow has been quiet for
/// `udp_idle`. The socket receives into its thread's shared buffers (`recv_each`), so an
/// idle flow holds no buffer (one of 64 KiB per flow was once most of an idle session's
/// memory). A reply larger than the tunnel MTU could not go back through the tunnel and
/// is dropped.
async fn udp_replies(
    handle: StackHandle,
    socket: Arc<BatchSocket>,
    client: SocketAddr,
    ctx: FlowContext,
    _busy: Arc<()>,
) {
    let mtu = usize::from(ctx.mtu);
    loop {
        let mut stack_gone = false;
        let replies = socket.recv_each(|from, d| {
            if d.len() <= mtu && handle.udp_reply(from, client, d).is_err() {
                stack_gone = true;
            }
        });
        match tokio::time::timeout(ctx.udp_idle, replies).await {
            Ok(Ok(late)) if !stack_gone => {
                ctx.flows.late.fetch_add(late, Ordering::Relaxed);
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::udp::Offload;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    const BURST: usize = 8;

    /// Queues a burst of same-size datagrams of one flow for a session's stack at once, as
    /// a batch of decrypted packets arrives; returns what the destination got, in order,
    /// the replies that came back into the tunnel, and the segmented sends counted.
    async fn burst(offload: Offload) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, u64) {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = dest.local_addr().unwrap();
        let flows = Arc::new(FlowCounters::default());
        let ctx = FlowContext {
            policy: Arc::new(DestinationPolicy::new(
                vec!["127.0.0.0/8".parse().unwrap()],
                Vec::new(),
            )),
            flows: flows.clone(),
            mtu: 1420,
            udp_idle: Duration::from_secs(30),
            offload,
            observer: None,
        };
        let (out_tx, mut out_rx) = mpsc::channel(64);
        let stack = start_stack(SessionId(1), CLIENT, out_tx, ctx).unwrap();
        let from = SocketAddr::from((CLIENT, 40_000));
        let sent: Vec<Vec<u8>> = (0..BURST as u8).map(|i| vec![i; 1000]).collect();
        for payload in &sent {
            let ip = tunnel::wire::build_udp(from, to, payload).unwrap();
            stack.input.push(ip).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < BURST {
            let (n, peer) = tokio::time::timeout(Duration::from_secs(5), dest.recv_from(&mut buf))
                .await
                .expect("the burst reaches the destination")
                .unwrap();
            got.push(buf[..n].to_vec());
            dest.send_to(&buf[..n], peer).await.unwrap();
        }
        let mut replies = Vec::new();
        while replies.len() < BURST {
            let (id, ip) = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
                .await
                .expect("the replies come back into the tunnel")
                .unwrap();
            assert_eq!(id, SessionId(1));
            let d = tunnel::wire::parse_udp(&ip).unwrap();
            assert_eq!(
                (d.src, d.dst),
                (to, from),
                "a reply comes from where it was sent"
            );
            replies.push(d.payload.to_vec());
        }
        (got, replies, flows.udp_segmented.load(Ordering::Relaxed))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_one_flow_leaves_in_one_segmented_send_in_order() {
        let (got, replies, segmented) = burst(Offload::On).await;
        let sent: Vec<Vec<u8>> = (0..BURST as u8).map(|i| vec![i; 1000]).collect();
        assert_eq!(got, sent, "byte-exact and in order");
        assert_eq!(replies, sent, "replies byte-exact and in order");
        let probe =
            BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap(), Offload::On).unwrap();
        if probe.max_segments() > 1 {
            assert!(segmented >= 1, "the burst went out segmented");
            assert!(
                segmented < BURST as u64,
                "{segmented} segmented sends for {BURST}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_offloads_off_a_burst_goes_out_datagram_by_datagram_in_order() {
        let (got, replies, segmented) = burst(Offload::Off).await;
        let sent: Vec<Vec<u8>> = (0..BURST as u8).map(|i| vec![i; 1000]).collect();
        assert_eq!(got, sent);
        assert_eq!(replies, sent);
        assert_eq!(segmented, 0);
    }
}
