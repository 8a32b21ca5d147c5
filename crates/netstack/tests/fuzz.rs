//! `receive` must never panic, whatever the tunnel delivers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netstack::{Mode, Stack, StackConfig};
use proptest::prelude::*;

fn stacks(now: Instant) -> (Stack, Stack) {
    let client = Stack::new(
        StackConfig::new(Mode::Client, vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2))]),
        now,
    )
    .expect("config");
    let server = Stack::new(
        StackConfig::new(
            Mode::Terminate,
            vec![
                IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)),
                "fd00::1".parse().expect("literal"),
            ],
        ),
        now,
    )
    .expect("config");
    (client, server)
}

/// Real packets of a connection and a datagram, to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let now = Instant::now();
    let (mut client, mut server) = stacks(now);
    let dst: SocketAddr = "192.0.2.1:443".parse().expect("literal");
    let _ = client.connect(dst).expect("connect");
    let port = client.udp_bind(0).expect("bind");
    client
        .udp_send(
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            "192.0.2.53:53".parse().expect("literal"),
            b"query",
        )
        .expect("send");
    client.poll(now);
    let mut out = Vec::new();
    while let Some(p) = client.pop_transmit() {
        server.receive(&p);
        out.push(p);
    }
    server.poll(now);
    while let Some(e) = server.poll_event() {
        if let netstack::Event::TcpIncoming { flow, .. } = e {
            server.accept(flow).expect("accept");
        }
    }
    server.poll(now);
    while let Some(p) = server.pop_transmit() {
        out.push(p);
    }
    out
}

fn feed(packets: &[Vec<u8>]) {
    let now = Instant::now();
    let (mut client, mut server) = stacks(now);
    for (i, p) in packets.iter().enumerate() {
        client.receive(p);
        server.receive(p);
        let t = now + Duration::from_millis(i as u64 * 300);
        client.poll(t);
        server.poll(t);
        while let Some(e) = server.poll_event() {
            if let netstack::Event::TcpIncoming { flow, .. } = e {
                if i % 2 == 0 {
                    let _ = server.accept(flow);
                } else {
                    let _ = server.refuse(flow);
                }
            }
        }
        while client.pop_transmit().is_some() {}
        while server.pop_transmit().is_some() {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8)) {
        feed(&packets);
    }

    #[test]
    fn mutated_real_packets_never_panic(
        which in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>(), 0usize..64), 1..8),
    ) {
        let seeds = seeds();
        let packets: Vec<Vec<u8>> = which
            .into_iter()
            .map(|(packet, at, value, cut)| {
                let mut p = packet.get(&seeds).clone();
                let i = at.index(p.len());
                p[i] = value;
                // Sometimes truncate, to test length checks.
                let keep = p.len().saturating_sub(cut % 8);
                p.truncate(keep);
                p
            })
            .collect();
        feed(&packets);
    }
}
