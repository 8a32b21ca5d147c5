//! The issuer's network edge: a WireGuard responder with TEE evidence, like a relay, whose
//! admitted sessions reach the issuer's [`Service`] at the in-tunnel service port.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use account::{AccountNumber, SourceId};
use relay::run::{Common, RelayHandle};
use relay::table::{SessionTable, TableEvent};
use tokio::sync::{mpsc, oneshot, watch};
use tunnel::wire::{build_udp, parse_udp};

use issuer::{Service, SERVICE_PORT};

const MAX_DATAGRAM: usize = 65_535;

/// An operator's command to a running issuer.
pub enum Admin {
    /// Adds credit to an account (the developer stand-in for payments).
    Credit {
        /// The account.
        account: AccountNumber,
        /// Units to add.
        units: u64,
        /// The new balance, or why not.
        reply: oneshot::Sender<Result<u64, String>>,
    },
}

/// A running issuer.
pub struct IssuerHandle {
    /// Address, counters, shutdown, as for a relay.
    pub relay: RelayHandle,
    /// Operator commands.
    pub admin: mpsc::Sender<Admin>,
}

/// Starts the issuer on the current tokio runtime: `common` as for a relay (key, listen
/// address, evidence; no tokens), serving `service`.
pub async fn run_issuer(common: Common, service: Service) -> io::Result<IssuerHandle> {
    let (socket, table) = common.bind().await?;
    let local_addr = socket.local_addr()?;
    let (counters_tx, counters) = watch::channel(table.counters);
    let (shutdown, shutdown_rx) = oneshot::channel();
    let (admin, admin_rx) = mpsc::channel(16);
    let task = tokio::spawn(event_loop(
        socket,
        table,
        service,
        counters_tx,
        admin_rx,
        shutdown_rx,
    ));
    tracing::info!("issuer listening");
    Ok(IssuerHandle {
        relay: RelayHandle {
            local_addr,
            workers: vec![counters.clone()],
            counters,
            shutdown,
            task,
        },
        admin,
    })
}

async fn event_loop(
    socket: std::sync::Arc<tokio::net::UdpSocket>,
    mut table: SessionTable,
    mut service: Service,
    counters_tx: watch::Sender<relay::counters::Counters>,
    mut admin: mpsc::Receiver<Admin>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut events = Vec::new();
    let mut attester = relay::run::Attester::new(table.evidence_source());
    loop {
        let deadline = tokio::time::Instant::from_std(table.poll_timeout());
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => table.handle_datagram(Instant::now(), from, buf.get(..n).unwrap_or_default(), &mut events),
                Err(e) => tracing::debug!("receive error: {}", e.kind()),
            },
            _ = tokio::time::sleep_until(deadline) => table.handle_timeout(Instant::now(), &mut events),
            (req, evidence) = attester.done() => table.answer_attest(Instant::now(), &req, evidence, &mut events),
            Some(cmd) = admin.recv() => match cmd {
                Admin::Credit { account, units, reply } => {
                    let _ = reply.send(service.accounts().credit(account, units).map_err(|e| e.to_string()));
                }
            },
            _ = &mut shutdown => break,
        }
        while !events.is_empty() {
            let mut next = Vec::new();
            for ev in events.drain(..) {
                match ev {
                    TableEvent::Transmit { to, datagram } => {
                        let _ = socket.send_to(&datagram, to).await;
                    }
                    TableEvent::Packet { id, ip } => {
                        let Ok(d) = parse_udp(&ip) else {
                            continue;
                        };
                        if d.dst.port() != SERVICE_PORT {
                            table.counters.drop(relay::counters::Drop::Policy);
                            continue;
                        }
                        let unix = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |t| t.as_secs());
                        let answer = service.handle(unix, SourceId(id.0), d.payload);
                        let (src, dst): (SocketAddr, SocketAddr) = (d.dst, d.src);
                        if let Ok(reply) = build_udp(src, dst, &answer) {
                            table.counters.forwarded += 1;
                            table.send(Instant::now(), id, &reply, &mut next);
                        }
                    }
                    TableEvent::Closed { id } => service.forget(SourceId(id.0)),
                    TableEvent::Attest(req) => attester.start(req),
                    TableEvent::Admitted { .. } => {}
                }
            }
            events = next;
        }
        counters_tx.send_replace(table.counters);
    }
    tracing::info!(target: "openrelay::counters", "issuer counters: {}", table.counters);
}
