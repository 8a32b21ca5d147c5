//! Data messages are built in the buffer of the packet they carry (gotatun as patched in
//! vendor/gotatun moves the packet up by the header's length and encrypts it there). Every
//! length must still round-trip byte-exact and be padded as WireGuard pads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use tunnel::wire::build_udp;
use tunnel::{Action, Classified, SessionConfig};

mod support;
use support::{pair, transmitted};

/// Header (type, receiver index, counter) and Poly1305 tag around the encrypted packet.
const OVERHEAD: usize = 32;

#[test]
fn every_packet_length_round_trips_padded_to_sixteen_within_the_mtu() {
    let now = Instant::now();
    let mut p = pair(now);
    let mtu = usize::from(SessionConfig::default().mtu);
    let mut out = Vec::new();
    // IPv4 + UDP headers are 28 bytes: packets of 28 to 1,528 bytes, past the MTU.
    for payload_len in 0..=1500usize {
        let payload: Vec<u8> = (0..payload_len)
            .map(|i| (i * 7 + payload_len) as u8)
            .collect();
        let ip = build_udp(
            "10.0.0.2:1000".parse().unwrap(),
            "10.0.0.1:2000".parse().unwrap(),
            &payload,
        )
        .unwrap();
        if payload_len % 2 == 1 {
            // A small spare on top of the pool: a packet that outgrows it must still fit.
            spare::give(Vec::with_capacity(spare::MIN_CAPACITY));
        }
        p.client.encapsulate(now, &ip, &mut out);
        let d = transmitted(&mut out);

        let padded = ip.len().next_multiple_of(16).min(mtu).max(ip.len());
        assert_eq!(
            d.len(),
            OVERHEAD + padded,
            "message for a {}-byte packet",
            ip.len()
        );
        if payload_len >= 64 {
            assert!(
                !d.windows(32).any(|w| w == &payload[16..48]),
                "the payload is not visible in the message"
            );
        }

        let Classified::Index { msg, .. } = p.relay.classify(now, p.from, &d).unwrap() else {
            panic!("a data message");
        };
        p.server.receive(now, msg, &mut out).unwrap();
        let delivered: Vec<Vec<u8>> = out
            .drain(..)
            .filter_map(|a| match a {
                Action::Deliver(p) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![ip], "a {}-byte packet", 28 + payload_len);
        spare::give(d);
    }
}
