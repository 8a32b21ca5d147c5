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

/// Datagrams as a client sends them, over IPv4 and IPv6, with payloads of 0 to 1,200 bytes.
fn udp_seeds() -> Vec<Vec<u8>> {
    let now = Instant::now();
    let mut client = Stack::new(
        StackConfig::new(
            Mode::Client,
            vec![
                IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
                "fd00::2".parse().expect("literal"),
            ],
        ),
        now,
    )
    .expect("config");
    let port = client.udp_bind(0).expect("bind");
    let any = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
    let any6 = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port);
    for (from, to, len) in [
        (any, "192.0.2.53:53", 0),
        (any, "198.51.100.7:4433", 1200),
        (any6, "[2001:db8::1]:443", 17),
    ] {
        client
            .udp_send(from, to.parse().expect("literal"), &vec![0x5a; len])
            .expect("send");
    }
    client.poll(now);
    std::iter::from_fn(|| client.pop_transmit()).collect()
}

/// What a terminating stack reports for `packet`: its datagrams as (source, destination,
/// payload).
fn stack_datagrams(packet: &[u8]) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let (_, mut server) = stacks(Instant::now());
    server.receive(packet);
    std::iter::from_fn(|| server.poll_event())
        .filter_map(|e| match e {
            netstack::Event::Udp(d) => Some((d.src, d.dst, d.payload)),
            _ => None,
        })
        .collect()
}

/// Every datagram a client sends is taken, its payload found where it lies.
#[test]
fn plain_udp_takes_every_clean_datagram_and_finds_its_payload() {
    let seeds = udp_seeds();
    let lens: Vec<usize> = seeds
        .iter()
        .map(|p| {
            let d = netstack::plain_udp(p).expect("a clean datagram is taken");
            assert!(p[d.payload.clone()].iter().all(|&b| b == 0x5a));
            d.payload.len()
        })
        .collect();
    assert_eq!(lens, [0, 1200, 17]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The egress relays UDP without a stack on `plain_udp`'s word: it must take exactly
    /// the datagrams a terminating stack takes, with the same endpoints and payload, and
    /// leave everything else (to the stack, which drops and counts it).
    #[test]
    fn plain_udp_takes_what_a_terminating_stack_takes(
        seed in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        change in any::<bool>(),
        cut in 0usize..8,
    ) {
        let mut seeds = udp_seeds();
        seeds.extend(self::seeds());
        let mut p = seed.get(&seeds).clone();
        if change {
            let i = at.index(p.len());
            p[i] = value;
        }
        p.truncate(p.len() - cut.min(p.len()));
        let stack = stack_datagrams(&p);
        match netstack::plain_udp(&p) {
            Some(d) => prop_assert_eq!(stack, vec![(d.src, d.dst, p[d.payload].to_vec())]),
            None => prop_assert!(stack.is_empty(), "the stack took {:?}", stack),
        }
    }

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
