use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netstack::driver::{IncomingTcp, StackInput, TcpFlow};
use netstack::{Mode, Stack, StackConfig};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::flows::{FlowSettings, Sealer, UdpFlows};
use super::{EgressSettings, Observation, Observer, RelayHandle};
use crate::counters::Counters;
use crate::policy::DestinationPolicy;
use crate::table::{SessionId, SessionTable, TableEvent, TrustedKeyMap};

/// Packets taken from the stacks' queue per turn of the loop, to send together.
const BATCH: usize = 64;
/// How long the egress waits for a destination to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two looks for idle stacks.
const SWEEP: Duration = Duration::from_secs(5);
/// Packets queued from the tunnel towards one session's stack.
const STACK_QUEUE: usize = 1024;

/// Counters kept by the TCP flows' tasks, merged into [`Counters`] for reports.
#[derive(Default)]
struct FlowCounters {
    refused_policy: AtomicU64,
    connect_failed: AtomicU64,
}

/// An admitted session: what its stack needs, and the stack while it runs (for TCP; its
/// UDP goes through the worker's [`UdpFlows`]).
struct Slot {
    addr: Ipv4Addr,
    ctx: FlowContext,
    stack: Option<SessionStack>,
    last_packet: Instant,
}

/// One admitted session's userspace stack (its task spawns one per TCP flow).
struct SessionStack {
    input: StackInput,
    /// Every open TCP flow holds a clone: one reference means none is open.
    busy: Arc<()>,
}

impl SessionStack {
    fn is_idle(&self) -> bool {
        Arc::strong_count(&self.busy) == 1
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
    let mut slots: TrustedKeyMap<SessionId, Slot> = TrustedKeyMap::default();
    let (mut udp, mut answers) = UdpFlows::new(FlowSettings {
        policy: policy.clone(),
        mtu: c.admit.mtu,
        idle: idle.udp_flow,
        socket: c.udp(),
        observer: c.observer.clone(),
    });
    let udp_ready = udp.ready();
    let mut attester = super::Attester::new(table.evidence_source());
    let mut sweep = tokio::time::interval(idle.stack.min(idle.udp_flow).min(SWEEP));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = Vec::new();
    let mut turn = Vec::new();
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
            () = std::future::poll_fn(|cx| udp_ready.poll_woken(cx)) => {}
            Some(answer) = answers.recv() => {
                let now = Instant::now();
                udp.answer(&mut Sealer { table: &mut table, now, events: &mut events }, answer);
            }
            _ = tokio::time::sleep_until(deadline) => table.handle_timeout(Instant::now(), &mut events),
            _ = sweep.tick() => {
                let now = Instant::now();
                stop_idle(&mut slots, now, idle.stack, &mut table);
                udp.expire(now, &mut table.counters);
            }
            (req, evidence) = attester.done() => table.answer_attest(Instant::now(), &req, evidence, &mut events),
            _ = &mut shutdown => break,
        }
        if received {
            let now = Instant::now();
            for (from, d) in socket.received() {
                table.handle_datagram(now, from, d, &mut events);
            }
        }
        // Replies waiting on UDP flows, and packets the stacks have ready, go out together
        // (one segmented send per peer).
        let now = Instant::now();
        udp.receive(
            &mut Sealer {
                table: &mut table,
                now,
                events: &mut events,
            },
            now,
        );
        for _ in 0..BATCH {
            let Ok((id, ip)) = out_rx.try_recv() else {
                break;
            };
            table.send(Instant::now(), id, &ip, &mut events);
            spare::give(ip);
        }
        let now = Instant::now();
        // Handling an event may make more (a refused datagram's ICMP answer is sealed).
        while !events.is_empty() {
            std::mem::swap(&mut events, &mut turn);
            for ev in turn.drain(..) {
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
                        let slot = Slot {
                            addr,
                            ctx,
                            stack: None,
                            last_packet: now,
                        };
                        slots.insert(id, slot);
                    }
                    TableEvent::Packet { id, ip } => packet(
                        &mut slots,
                        &mut udp,
                        &mut table,
                        &out_tx,
                        now,
                        id,
                        ip,
                        &mut events,
                    ),
                    TableEvent::Closed { id } => {
                        if slots.remove(&id).and_then(|s| s.stack).is_some() {
                            table.counters.stacks_stopped += 1;
                        }
                        udp.close_session(id, &mut table.counters);
                    }
                    TableEvent::Attest(req) => attester.start(req),
                }
            }
        }
        socket.send_all(&sends).await;
        for (_, d) in sends.drain(..) {
            spare::give(d);
        }
        udp.flush(now, &mut table.counters).await;
        table.counters.dropped_late = socket.late.load(Ordering::Relaxed) + udp.late;
        counters_tx.send_replace(merged(&table, &flows));
    }
}

/// A packet from session `id`'s tunnel: a UDP datagram goes to its flow, anything else
/// into the session's stack, started now if need be. A dropped packet's buffer goes back
/// to the thread's spares: under overload a drop per packet must not also cost an
/// allocation per packet.
#[allow(clippy::too_many_arguments)]
fn packet(
    slots: &mut TrustedKeyMap<SessionId, Slot>,
    udp: &mut UdpFlows,
    table: &mut SessionTable,
    out_tx: &mpsc::Sender<(SessionId, Vec<u8>)>,
    now: Instant,
    id: SessionId,
    ip: Vec<u8>,
    events: &mut Vec<TableEvent>,
) {
    let Some(slot) = slots.get_mut(&id) else {
        spare::give(ip);
        return table.counters.drop(crate::counters::Drop::NoSession);
    };
    if let Some(d) = netstack::plain_udp(&ip) {
        return udp.take(&mut Sealer { table, now, events }, now, id, ip, d);
    }
    let len = ip.len() as u64;
    match slot_stack(id, slot, now, out_tx, table) {
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
    slots: &mut TrustedKeyMap<SessionId, Slot>,
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
    c.tcp_connect_failed += flows.connect_failed.load(Ordering::Relaxed);
    c
}

#[derive(Clone)]
struct FlowContext {
    policy: Arc<DestinationPolicy>,
    flows: Arc<FlowCounters>,
    /// The session's tunnel MTU: no packet larger than that fits back into the tunnel.
    mtu: u16,
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
    // Each new flow gets a task of its own, started by the stack's task: no task waits for
    // them (it was 256 bytes of every running session, and its queue up to 352 more).
    let open_flows = Arc::downgrade(&busy);
    handle.take_incoming(move |flow| {
        if let Some(busy) = open_flows.upgrade() {
            tokio::spawn(relay_tcp(Box::pin(open(flow, ctx.clone())), busy));
        }
    });
    Ok(SessionStack { input, busy })
}

/// One TCP flow: `open` (policy, a real connection), then bytes both ways. `_busy` keeps
/// the stack running while the flow is open, however long it stays quiet.
///
/// `open` comes boxed: its futures (the connect's, the timer's) are larger than all the rest,
/// a task keeps the size of its largest state for as long as it lives, and a task's arguments
/// stay in it throughout. An egress holds a task for every open connection, most of them
/// quiet: boxed, the task is 512 bytes instead of about 900 (heaptrack, 2,000 sessions).
async fn relay_tcp(
    open: Pin<Box<impl Future<Output = Option<(TcpFlow, TcpStream)>>>>,
    _busy: Arc<()>,
) {
    let Some((mut tunnel_side, mut stream)) = open.await else {
        return;
    };
    let _ = super::splice::both_ways(&mut tunnel_side, &mut stream).await;
}

/// Checks the flow's destination, connects to it and accepts the flow; refuses the flow
/// (the client gets RST) when either fails.
async fn open(flow: IncomingTcp, ctx: FlowContext) -> Option<(TcpFlow, TcpStream)> {
    let dst = flow.dst();
    if ctx.policy.check(dst).is_err() {
        ctx.flows.refused_policy.fetch_add(1, Ordering::Relaxed);
        flow.refuse();
        return None;
    }
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst)).await {
        Ok(Ok(s)) => s,
        _ => {
            ctx.flows.connect_failed.fetch_add(1, Ordering::Relaxed);
            flow.refuse();
            return None;
        }
    };
    if let Some((obs, peer)) = &ctx.observer {
        let _ = obs.send(Observation::Egress {
            peer: *peer,
            destination: dst,
        });
    }
    let _ = stream.set_nodelay(true);
    let tunnel_side = flow.accept().await.ok()?;
    Some((tunnel_side, stream))
}
