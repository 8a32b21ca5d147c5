use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use super::{IngressSettings, Observation, RelayHandle};
use crate::ingress::{Ingress, IngressOutput};
use crate::table::SessionId;
use crate::udp::BatchSocket;

/// Egress replies taken per turn of the loop, to send to clients together.
const BATCH: usize = 64;

/// Starts an ingress on the current tokio runtime: one event loop per worker.
pub async fn run_ingress(settings: IngressSettings) -> io::Result<RelayHandle> {
    let c = &settings.common;
    let (local_addr, shards) = c.bind_workers()?;
    let n = shards.len();
    let handle = super::spawn_workers(
        "ingress",
        local_addr,
        c.report_interval,
        shards,
        |_, socket, table, counters_tx, shutdown_rx| {
            let ingress = Ingress::new(table, settings.egresses.clone());
            event_loop(settings.clone(), socket, ingress, counters_tx, shutdown_rx)
        },
    );
    tracing::info!("ingress listening ({n} workers)");
    Ok(handle)
}

async fn event_loop(
    settings: IngressSettings,
    mut socket: crate::udp::BatchSocket,
    mut ingress: Ingress,
    counters_tx: watch::Sender<crate::counters::Counters>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let c = settings.common;
    let forward_ip: IpAddr = c.listen.ip();
    let (fwd_tx, mut fwd_rx) = mpsc::channel::<(SessionId, SocketAddr, Vec<u8>)>(1024);
    // Late drops on the sessions' forwarding sockets, together.
    let forward_late = Arc::new(AtomicU64::new(0));
    let mut forwards: HashMap<SessionId, (Arc<BatchSocket>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    // Datagrams to egresses this turn, per session's socket, sent together.
    let mut to_egress: HashMap<SessionId, Vec<(SocketAddr, Vec<u8>)>> = HashMap::new();
    let mut observed = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut to_clients: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut attester = super::Attester::new(ingress.table().evidence_source());
    loop {
        let deadline = tokio::time::Instant::from_std(ingress.poll_timeout());
        let mut received = false;
        tokio::select! {
            r = socket.recv() => match r {
                Ok(()) => received = true,
                Err(e) => tracing::debug!("receive error: {}", e.kind()),
            },
            Some((id, from, payload)) = fwd_rx.recv() => {
                ingress.handle_egress(Instant::now(), id, from, &payload, &mut out);
                spare::give(payload);
            }
            _ = tokio::time::sleep_until(deadline) => ingress.handle_timeout(Instant::now(), &mut out),
            (req, evidence) = attester.done() => ingress.answer_attest(Instant::now(), &req, evidence, &mut out),
            _ = &mut shutdown => break,
        }
        if received {
            let now = Instant::now();
            for (from, d) in socket.received() {
                ingress.handle_client(now, from, d, &mut out);
            }
        }
        // Egress replies that are already waiting go back to clients together.
        for _ in 0..BATCH {
            let Ok((id, from, payload)) = fwd_rx.try_recv() else {
                break;
            };
            ingress.handle_egress(Instant::now(), id, from, &payload, &mut out);
            spare::give(payload);
        }
        for o in out.drain(..) {
            match o {
                IngressOutput::ToClient { to, datagram } => to_clients.push((to, datagram)),
                IngressOutput::OpenForward(id) => match UdpSocket::bind((forward_ip, 0)).await {
                    Ok(s) => {
                        let socket = match BatchSocket::new(s, c.offload) {
                            Ok(socket) => Arc::new(socket),
                            Err(e) => {
                                tracing::warn!("cannot open a forwarding socket: {e}");
                                continue;
                            }
                        };
                        let task = tokio::spawn(read_forward(
                            id,
                            socket.clone(),
                            fwd_tx.clone(),
                            forward_late.clone(),
                        ));
                        forwards.insert(id, (socket, task));
                    }
                    Err(e) => tracing::warn!("cannot open a forwarding socket: {e}"),
                },
                IngressOutput::Forward { id, to, payload } => {
                    if forwards.contains_key(&id) {
                        if let (Some(obs), true) = (&c.observer, observed.insert(id)) {
                            if let Some(client) = ingress.table().peer_addr(id) {
                                let _ = obs.send(Observation::Ingress { client, egress: to });
                            }
                        }
                        to_egress.entry(id).or_default().push((to, payload));
                    }
                }
                IngressOutput::CloseForward(id) => {
                    if let Some((_, reader)) = forwards.remove(&id) {
                        reader.abort();
                    }
                }
                IngressOutput::Attest(req) => attester.start(req),
            }
        }
        socket.send_all(&to_clients).await;
        for (_, d) in to_clients.drain(..) {
            spare::give(d);
        }
        for (id, batch) in to_egress.iter_mut() {
            if let Some((s, _)) = forwards.get(id) {
                s.send_all(batch).await;
            }
            for (_, d) in batch.drain(..) {
                spare::give(d);
            }
        }
        to_egress.retain(|id, _| forwards.contains_key(id));
        let mut c = *ingress.counters();
        c.dropped_late = socket.late.load(Ordering::Relaxed) + forward_late.load(Ordering::Relaxed);
        counters_tx.send_replace(c);
    }
    for (_, (_, reader)) in forwards {
        reader.abort();
    }
}

/// Relays one session's datagrams from egresses to the event loop. The socket receives
/// into its thread's shared buffers (`recv_each`): with buffers of its own, every
/// forwarding session would hold 2 MiB.
async fn read_forward(
    id: SessionId,
    socket: Arc<BatchSocket>,
    tx: mpsc::Sender<(SessionId, SocketAddr, Vec<u8>)>,
    late: Arc<AtomicU64>,
) {
    loop {
        // The list is the thread's, taken once replies are there: a session waiting for
        // replies holds none.
        let mut batch = None;
        // An error (say, an ICMP error queued on the socket) loses nothing: wait again.
        let received = socket
            .recv_each(|from, d| {
                let mut buf = spare::take(d.len());
                buf.extend_from_slice(d);
                batch
                    .get_or_insert_with(|| FORWARDED.take())
                    .push((from, buf));
            })
            .await;
        late.fetch_add(received.unwrap_or(0), Ordering::Relaxed);
        if let Some(mut batch) = batch {
            for (from, d) in batch.drain(..) {
                if tx.send((id, from, d)).await.is_err() {
                    return;
                }
            }
            FORWARDED.set(batch);
        }
    }
}

thread_local! {
    /// One receive's datagrams on their way from [`read_forward`] to the event loop.
    static FORWARDED: RefCell<Vec<(SocketAddr, Vec<u8>)>> = const { RefCell::new(Vec::new()) };
}
