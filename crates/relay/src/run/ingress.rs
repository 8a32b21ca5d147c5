use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use super::{report, IngressSettings, Observation, RelayHandle};
use crate::ingress::{Ingress, IngressOutput};
use crate::table::SessionId;

const MAX_DATAGRAM: usize = 65_535;
/// Egress replies taken per turn of the loop, to send to clients together.
const BATCH: usize = 64;

/// Starts an ingress on the current tokio runtime.
pub async fn run_ingress(settings: IngressSettings) -> io::Result<RelayHandle> {
    let c = &settings.common;
    let (socket, table) = c.bind_batch().await?;
    let local_addr = socket.local_addr()?;
    let ingress = Ingress::new(table, settings.egresses.clone());
    let (counters_tx, counters) = watch::channel(*ingress.counters());
    let (shutdown, shutdown_rx) = oneshot::channel();
    let task = tokio::spawn(event_loop(
        settings,
        socket,
        ingress,
        counters_tx,
        shutdown_rx,
    ));
    tracing::info!("ingress listening");
    Ok(RelayHandle {
        local_addr,
        counters,
        shutdown,
        task,
    })
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
    let mut forwards: HashMap<SessionId, (Arc<UdpSocket>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    let mut observed = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut to_clients: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut report_tick = tokio::time::interval(c.report_interval);
    report_tick.tick().await;
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
            }
            _ = tokio::time::sleep_until(deadline) => ingress.handle_timeout(Instant::now(), &mut out),
            _ = report_tick.tick() => report("ingress", ingress.counters()),
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
        }
        for o in out.drain(..) {
            match o {
                IngressOutput::ToClient { to, datagram } => to_clients.push((to, datagram)),
                IngressOutput::OpenForward(id) => match UdpSocket::bind((forward_ip, 0)).await {
                    Ok(s) => {
                        let s = Arc::new(s);
                        let reader = tokio::spawn(read_forward(id, s.clone(), fwd_tx.clone()));
                        forwards.insert(id, (s, reader));
                    }
                    Err(e) => tracing::warn!("cannot open a forwarding socket: {e}"),
                },
                IngressOutput::Forward { id, to, payload } => {
                    if let Some((s, _)) = forwards.get(&id) {
                        if let (Some(obs), true) = (&c.observer, observed.insert(id)) {
                            if let Some(client) = ingress.table().peer_addr(id) {
                                let _ = obs.send(Observation::Ingress { client, egress: to });
                            }
                        }
                        let _ = s.send_to(&payload, to).await;
                    }
                }
                IngressOutput::CloseForward(id) => {
                    if let Some((_, reader)) = forwards.remove(&id) {
                        reader.abort();
                    }
                }
            }
        }
        socket.send_all(&to_clients).await;
        to_clients.clear();
        counters_tx.send_replace(*ingress.counters());
    }
    report("ingress", ingress.counters());
    for (_, (_, reader)) in forwards {
        reader.abort();
    }
}

async fn read_forward(
    id: SessionId,
    socket: Arc<UdpSocket>,
    tx: mpsc::Sender<(SessionId, SocketAddr, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let payload = buf.get(..n).unwrap_or_default().to_vec();
                if tx.send((id, from, payload)).await.is_err() {
                    return;
                }
            }
            Err(_) => continue,
        }
    }
}
