use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

use super::outbound::Outbound;
use super::ready::{Polled, Ready};
use super::{IngressSettings, Observation, RelayHandle};
use crate::ingress::{Ingress, IngressOutput};
use crate::table::{SessionId, TrustedKeyMap, TrustedKeySet};
use crate::udp::BatchSocket;

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
    // Each session's forwarding socket, read in this loop when its waker lists it: the
    // egress's replies are sealed straight from the thread's receive buffers, with no
    // copy, channel or task per session in between.
    let ready = Arc::new(Ready::default());
    let mut forwards: TrustedKeyMap<SessionId, Arc<Forward>> = TrustedKeyMap::default();
    let mut woken = Vec::new();
    // Late drops on the sessions' forwarding sockets, together.
    let mut forward_late = 0;
    // Datagrams to egresses this turn, per session's socket, sent together.
    let mut to_egress = Outbound::default();
    // Sessions the demo's observer has been told about; kept only when there is one.
    let mut observed = TrustedKeySet::default();
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
            () = std::future::poll_fn(|cx| ready.poll_woken(cx)) => {}
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
        ready.take(&mut woken);
        for id in woken.drain(..) {
            let Some(fwd) = forwards.get(&id) else {
                continue;
            };
            let now = Instant::now();
            let got = fwd.read(|socket, cx| {
                socket.poll_recv_each(cx, |from, d| {
                    ingress.handle_egress(now, id, from, d, &mut out)
                })
            });
            match got {
                Poll::Ready(Ok(late)) => forward_late += late,
                // An error (say, an ICMP error queued on the socket) loses nothing.
                Poll::Ready(Err(e)) => tracing::debug!("forward receive error: {}", e.kind()),
                Poll::Pending => {}
            }
        }
        for o in out.drain(..) {
            match o {
                IngressOutput::ToClient { to, datagram } => to_clients.push((to, datagram)),
                IngressOutput::OpenForward(id) => match UdpSocket::bind((forward_ip, 0)).await {
                    Ok(s) => match BatchSocket::new(s, c.udp()) {
                        Ok(socket) => {
                            forwards.insert(id, ready.add(id, socket));
                        }
                        Err(e) => tracing::warn!("cannot open a forwarding socket: {e}"),
                    },
                    Err(e) => tracing::warn!("cannot open a forwarding socket: {e}"),
                },
                IngressOutput::Forward { id, to, payload } => {
                    if forwards.contains_key(&id) {
                        if let Some(obs) = &c.observer {
                            if observed.insert(id) {
                                if let Some(client) = ingress.table().peer_addr(id) {
                                    let _ = obs.send(Observation::Ingress { client, egress: to });
                                }
                            }
                        }
                        to_egress.push(id, to, payload);
                    }
                }
                IngressOutput::CloseForward(id) => {
                    forwards.remove(&id);
                    observed.remove(&id);
                }
                IngressOutput::Attest(req) => attester.start(req),
            }
        }
        socket.send_all(&to_clients).await;
        for (_, d) in to_clients.drain(..) {
            spare::give(d);
        }
        let mut turn = to_egress.take();
        for (id, batch) in turn.iter_mut() {
            if let Some(fwd) = forwards.get(id) {
                fwd.send_all(batch).await;
            }
            for (_, d) in batch.drain(..) {
                spare::give(d);
            }
        }
        to_egress.recycle(turn);
        let mut c = *ingress.counters();
        c.dropped_late = socket.late.load(Ordering::Relaxed) + forward_late;
        counters_tx.send_replace(c);
    }
}

/// One session's socket towards egresses, listed for the loop when it becomes readable.
/// Its receives use the thread's shared buffers (`poll_recv_each`): with buffers of its
/// own, every forwarding session would hold 2 MiB.
type Forward = Polled<SessionId, BatchSocket>;
