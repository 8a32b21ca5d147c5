//! `openrelay-bench-peer`: OpenRelay at both ends of one hop, for the benchmark's
//! "OpenRelay 1 hop" row. It is the client's data path with the ingress taken out: the
//! whole-host TUN edge (`client::tun::TunLocal`, with virtio-net offloads), batched UDP
//! (`udpio`, GSO and GRO) and one `tunnel::Session` straight to a TUN-mode egress, which
//! admits it with a Hello.
//!
//! Not a product mode: a single hop shows the egress who the user is, which is why
//! `openrelay client` always takes two. It prints `admitted <tunnel address>` once the
//! egress has admitted it; the harness then routes through the device.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use client::run::Local;
use client::tun::TunLocal;
use control::{Admission, Message};
use tunnel::{Action, PublicKey, Session, SessionConfig, StaticSecret};
use udpio::{BatchSocket, Offload};

/// One WireGuard hop from a TUN device to an OpenRelay egress, for benchmarks only.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The egress's WireGuard endpoint.
    #[arg(long)]
    egress: SocketAddr,
    /// The egress's public key (base64, as `openrelay keygen` prints it).
    #[arg(long)]
    egress_key: String,
    /// Name of the TUN device to create.
    #[arg(long, default_value = "orpeer0")]
    tun: String,
    /// Seconds to wait for the handshake and the admission.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// The tunnel MTU asked for until the egress assigns one.
const MTU: u16 = 1420;
/// How often the Hello is sent again while no answer has come.
const HELLO_RETRY: Duration = Duration::from_millis(500);

fn main() {
    let args = Args::parse();
    // On the client's runtime, its connection on a worker thread, as `openrelay client`.
    let result = client::run::runtime()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async { tokio::spawn(run(args)).await })
                .context("the peer's task failed")?
        });
    if let Err(e) = result {
        eprintln!("openrelay-bench-peer: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let egress_key = PublicKey::from_base64(args.egress_key.trim())
        .context("--egress-key is not a WireGuard public key (base64 of 32 bytes)")?;
    let bind: SocketAddr = (Ipv4Addr::UNSPECIFIED, 0).into();
    let udp = tokio::net::UdpSocket::bind(bind).await?;
    udp.connect(args.egress).await?;
    let mut socket = BatchSocket::new(udp, Offload::On)?;
    let (mut tun, mut from_tun) = TunLocal::create(&args.tun, MTU)
        .with_context(|| format!("cannot create the TUN device {}", args.tun))?;

    let start = Instant::now();
    let config = SessionConfig {
        persistent_keepalive: None,
        mtu: MTU,
    };
    let mut session = Session::initiator(start, &StaticSecret::generate(), egress_key, config);
    let mut out = Vec::new();
    session.connect(start, &mut out);
    let mut sends: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut admitted = false;
    let mut next_hello = start;
    loop {
        for action in out.drain(..) {
            match action {
                Action::Transmit(d) => sends.push((args.egress, d)),
                Action::Deliver(ip) if admitted => tun.deliver(ip),
                Action::Deliver(ip) => {
                    if let Some(a) = admission(&ip)? {
                        tun.ready(&a, a.mtu)?;
                        admitted = true;
                        println!("admitted {}", a.tunnel_addr);
                    }
                }
                Action::NewIndex(_) => {}
            }
        }
        let now = Instant::now();
        if !admitted {
            if now.duration_since(start) > Duration::from_secs(args.timeout) {
                bail!(
                    "no admission from the egress at {} within {} s",
                    args.egress,
                    args.timeout
                );
            }
            if session.is_established() && now >= next_hello {
                let hello = Message::Hello {
                    client_version: control::CLIENT_VERSION,
                };
                let ip = client::connection::control_packet(Ipv4Addr::UNSPECIFIED, &hello);
                session.encapsulate(now, &ip, &mut out);
                next_hello = now + HELLO_RETRY;
                continue;
            }
        }
        socket.send_all(&sends).await;
        for (_, d) in sends.drain(..) {
            spare::give(d);
        }
        let wake = if admitted {
            session.poll_timeout()
        } else {
            session.poll_timeout().min(next_hello)
        };
        let mut received = false;
        let mut taken = 0;
        tokio::select! {
            r = socket.recv() => received = r.is_ok(),
            Some(packets) = from_tun.recv() => {
                let now = Instant::now();
                taken = packets.for_each(|ip| session.encapsulate(now, ip, &mut out));
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                session
                    .handle_timeout(Instant::now(), &mut out)
                    .context("the session with the egress expired")?;
            }
        }
        let now = Instant::now();
        if received {
            for (_, d) in socket.received() {
                // A datagram that does not decrypt is dropped, as WireGuard does.
                let _ = session.decapsulate(now, d, &mut out);
            }
        }
        // Packets already waiting on the TUN side go out together (one segmented send).
        from_tun.take_waiting(taken, |ip| session.encapsulate(now, ip, &mut out));
    }
}

/// The admission in a packet from the egress's control address, if it is one; an error if
/// the egress refused.
fn admission(ip: &[u8]) -> Result<Option<Admission>> {
    let Ok(d) = tunnel::wire::parse_udp(ip) else {
        return Ok(None);
    };
    if d.src != SocketAddr::V4(control::control_endpoint()) {
        return Ok(None);
    }
    match Message::decode(d.payload) {
        Ok(Message::Admitted {
            tunnel_addr,
            mtu,
            lifetime_secs,
        }) => Ok(Some(Admission {
            tunnel_addr,
            mtu,
            lifetime: Duration::from_secs(lifetime_secs.into()),
        })),
        Ok(Message::Refused { reason, detail }) => {
            bail!("the egress refused the session: {reason:?} {detail}")
        }
        _ => Ok(None),
    }
}
