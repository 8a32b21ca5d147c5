//! Nested encapsulation through an in-memory ingress and egress, with a simulated clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use tunnel::wire::{build_udp, parse_udp};
use tunnel::{
    Action, Classified, Nested, NestedEvent, Responder, Session, SessionConfig, StaticSecret,
    TunnelError, INNER_PORT,
};

const INGRESS_FWD: &str = "192.0.2.1:40000";
const EGRESS: &str = "198.51.100.7:51820";
const CLIENT: &str = "203.0.113.9:5555";

/// A relay that keeps one session per client key, the way ingress and egress do.
struct Relay {
    responder: Responder,
    sessions: Vec<Session>,
    by_index: HashMap<u32, usize>,
}

impl Relay {
    fn new(now: Instant) -> Self {
        Self {
            responder: Responder::new(now, StaticSecret::generate(), SessionConfig::default()),
            sessions: Vec::new(),
            by_index: HashMap::new(),
        }
    }

    fn handle(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Vec<Action>, TunnelError> {
        let mut out = Vec::new();
        match self.responder.classify(now, from, datagram)? {
            Classified::Handshake { peer, msg } => {
                let i = match self.sessions.iter().position(|s| s.peer() == peer) {
                    Some(i) => i,
                    None => {
                        self.sessions.push(self.responder.session(now, peer));
                        self.sessions.len() - 1
                    }
                };
                self.sessions[i].receive(now, msg, &mut out)?;
                self.register(i, &out);
            }
            Classified::Index { index, msg } => {
                let i = *self.by_index.get(&index).expect("known index");
                self.sessions[i].receive(now, msg, &mut out)?;
            }
            Classified::CookieReply(c) => out.push(Action::Transmit(c)),
        }
        Ok(out)
    }

    fn register(&mut self, i: usize, out: &[Action]) {
        for a in out {
            if let Action::NewIndex(idx) = a {
                self.by_index.insert(*idx, i);
            }
        }
    }

    fn send(&mut self, now: Instant, ip: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.sessions[0].encapsulate(now, ip, &mut out);
        transmits(out)
    }
}

fn transmits(actions: Vec<Action>) -> Vec<Vec<u8>> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Transmit(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Client, ingress and egress in memory; records what crossed each hop.
struct Net {
    now: Instant,
    client: Nested,
    ingress: Relay,
    egress: Relay,
    /// Inner packets that came out at the egress.
    at_egress: Vec<Vec<u8>>,
    /// Inner packets that came back out at the client.
    at_client: Vec<Vec<u8>>,
    /// Every datagram seen on the client ↔ ingress link and the ingress ↔ egress link.
    wire_client_ingress: Vec<Vec<u8>>,
    wire_ingress_egress: Vec<Vec<u8>>,
}

impl Net {
    fn new() -> Self {
        let now = Instant::now();
        let ingress = Relay::new(now);
        let egress = Relay::new(now);
        let cfg = SessionConfig::default();
        let outer = Session::initiator(
            now,
            &StaticSecret::generate(),
            ingress.responder.public_key(),
            cfg,
        );
        let inner = Session::initiator(
            now,
            &StaticSecret::generate(),
            egress.responder.public_key(),
            cfg,
        );
        let mut client = Nested::new(outer, inner, EGRESS.parse().unwrap());
        client.set_outer_addr("100.64.0.2".parse().unwrap());
        Self {
            now,
            client,
            ingress,
            egress,
            at_egress: Vec::new(),
            at_client: Vec::new(),
            wire_client_ingress: Vec::new(),
            wire_ingress_egress: Vec::new(),
        }
    }

    /// Moves datagrams until nothing is in flight.
    fn run(&mut self, mut to_ingress: Vec<NestedEvent>) {
        while !to_ingress.is_empty() {
            let mut back_to_client = Vec::new();
            for ev in to_ingress.drain(..) {
                let NestedEvent::ToIngress(d) = ev else {
                    if let NestedEvent::Inner(ip) = ev {
                        self.at_client.push(ip);
                    }
                    continue;
                };
                self.wire_client_ingress.push(d.clone());
                let out = self
                    .ingress
                    .handle(self.now, CLIENT.parse().unwrap(), &d)
                    .unwrap();
                for a in out {
                    match a {
                        Action::Transmit(r) => back_to_client.push(r),
                        Action::Deliver(ip) => {
                            // The ingress forwards the inner datagram from its own address.
                            let dg = parse_udp(&ip).unwrap();
                            assert_eq!(dg.dst, EGRESS.parse::<SocketAddr>().unwrap());
                            let payload = dg.payload.to_vec();
                            self.wire_ingress_egress.push(payload.clone());
                            let replies = self
                                .egress
                                .handle(self.now, INGRESS_FWD.parse().unwrap(), &payload)
                                .unwrap();
                            for r in replies {
                                match r {
                                    Action::Transmit(w) => {
                                        back_to_client.extend(self.egress_reply(&w))
                                    }
                                    Action::Deliver(inner_ip) => self.at_egress.push(inner_ip),
                                    Action::NewIndex(_) => {}
                                }
                            }
                        }
                        Action::NewIndex(_) => {}
                    }
                }
            }
            for d in back_to_client {
                self.client.receive(self.now, &d, &mut to_ingress).unwrap();
            }
        }
    }

    /// A datagram from the egress goes back through the ingress into the outer tunnel.
    fn egress_reply(&mut self, wg: &[u8]) -> Vec<Vec<u8>> {
        self.wire_ingress_egress.push(wg.to_vec());
        let ip = build_udp(
            EGRESS.parse().unwrap(),
            SocketAddr::V4(SocketAddrV4::new("100.64.0.2".parse().unwrap(), INNER_PORT)),
            wg,
        )
        .unwrap();
        self.ingress.send(self.now, &ip)
    }

    fn send_inner(&mut self, ip: &[u8]) {
        let mut out = Vec::new();
        self.client.send_inner(self.now, ip, &mut out);
        self.run(out);
    }
}

fn inner_packet(marker: &[u8]) -> Vec<u8> {
    build_udp(
        "100.80.0.2:1234".parse().unwrap(),
        "93.184.216.34:53".parse().unwrap(),
        marker,
    )
    .unwrap()
}

#[test]
fn nested_round_trip_hides_payload_from_ingress() {
    let mut net = Net::new();
    let mut out = Vec::new();
    net.client.connect(net.now, &mut out);
    net.run(out);
    assert!(net.client.outer().is_established());

    let marker = b"SECRET-PAYLOAD-MARKER-0123456789";
    let pkt = inner_packet(marker);
    net.send_inner(&pkt);
    assert!(net.client.inner().is_established());
    assert_eq!(net.at_egress, vec![pkt.clone()]);

    // The reply travels egress → ingress → client through both layers.
    let reply = build_udp(
        "93.184.216.34:53".parse().unwrap(),
        "100.80.0.2:1234".parse().unwrap(),
        b"answer",
    )
    .unwrap();
    let wgs = net.egress.send(net.now, &reply);
    let mut to_client = Vec::new();
    for w in wgs {
        to_client.extend(net.egress_reply(&w));
    }
    let mut events = Vec::new();
    for d in to_client {
        net.client.receive(net.now, &d, &mut events).unwrap();
    }
    assert!(events.contains(&NestedEvent::Inner(reply)));

    // Neither link carries the marker in clear, and the ingress ↔ egress link never
    // carries the outer layer's ciphertext (each hop sees only its own layer).
    for d in net
        .wire_client_ingress
        .iter()
        .chain(&net.wire_ingress_egress)
    {
        assert!(!d.windows(marker.len()).any(|w| w == marker));
    }
    for d in &net.wire_client_ingress {
        assert!(!net.wire_ingress_egress.contains(d));
    }
}

#[test]
fn many_packets_both_ways_arrive_in_order() {
    let mut net = Net::new();
    let mut out = Vec::new();
    net.client.connect(net.now, &mut out);
    net.run(out);
    let sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| inner_packet(&i.to_be_bytes().repeat(100)))
        .collect();
    for p in &sent {
        net.send_inner(p);
    }
    assert_eq!(net.at_egress, sent);
}

#[test]
fn replayed_datagram_is_rejected() {
    let mut net = Net::new();
    let mut out = Vec::new();
    net.client.connect(net.now, &mut out);
    net.run(out);
    net.send_inner(&inner_packet(b"once"));
    let last = net.wire_client_ingress.last().unwrap().clone();
    let err = net
        .ingress
        .handle(net.now, CLIENT.parse().unwrap(), &last)
        .unwrap_err();
    assert!(matches!(err, TunnelError::Replay), "{err:?}");
    let err = net
        .ingress
        .handle(net.now, CLIENT.parse().unwrap(), b"garbage")
        .unwrap_err();
    assert!(
        matches!(err, TunnelError::NotWireGuard { len: 7 }),
        "{err:?}"
    );
}

#[test]
fn handshake_is_retried_on_the_callers_clock_then_expires() {
    let t0 = Instant::now();
    let relay = StaticSecret::generate();
    let mut s = Session::initiator(
        t0,
        &StaticSecret::generate(),
        relay.public_key(),
        SessionConfig::default(),
    );
    let mut out = Vec::new();
    s.connect(t0, &mut out);
    let inits = transmits(out);
    assert_eq!(inits.len(), 1);

    // Nothing before the retry timeout (5 s plus up to 333 ms jitter)...
    let mut out = Vec::new();
    s.handle_timeout(t0 + Duration::from_secs(4), &mut out)
        .unwrap();
    assert!(transmits(out).is_empty());
    // ...a fresh initiation after it, without any real time passing.
    let mut out = Vec::new();
    s.handle_timeout(t0 + Duration::from_secs(6), &mut out)
        .unwrap();
    let retry = transmits(out);
    assert_eq!(retry.len(), 1);
    assert_ne!(retry[0], inits[0]);

    // After 90 s of unanswered retries the session gives up.
    let mut t = t0 + Duration::from_secs(6);
    let mut result = Ok(());
    while t < t0 + Duration::from_secs(100) && result.is_ok() {
        t += Duration::from_secs(1);
        result = s.handle_timeout(t, &mut Vec::new());
    }
    assert!(matches!(result, Err(TunnelError::Expired)), "{result:?}");
    assert!(t >= t0 + Duration::from_secs(90));
}

#[test]
fn keepalive_and_rekey_follow_simulated_time() {
    let mut net = Net::new();
    let mut out = Vec::new();
    net.client.connect(net.now, &mut out);
    net.run(out);
    net.send_inner(&inner_packet(b"x"));

    // The ingress received data and sent nothing back: after 10 s it sends a keepalive.
    let t = net.now + Duration::from_secs(11);
    let mut out = Vec::new();
    net.ingress.sessions[0].handle_timeout(t, &mut out).unwrap();
    let keepalives = transmits(out);
    assert_eq!(keepalives.len(), 1);
    assert_eq!(
        keepalives[0].len(),
        32,
        "a keepalive is an empty data message"
    );

    // After 120 s the initiator sends a new handshake with its next data packet.
    let t = net.now + Duration::from_secs(125);
    let mut out = Vec::new();
    net.client.send_outer(t, &inner_packet(b"y"), &mut out);
    net.client.handle_timeout(t, &mut out).unwrap();
    let handshake_inits = out
        .iter()
        .filter(|e| matches!(e, NestedEvent::ToIngress(d) if d.len() == 148 && d[0] == 1))
        .count();
    assert!(
        handshake_inits >= 1,
        "no rekey after REKEY_AFTER_TIME: {out:?}"
    );
}

impl Relay {
    /// Forgets every session's keys, as a relay does when its client rests.
    fn rest(&mut self, now: Instant) {
        for s in &mut self.sessions {
            *s = self.responder.session(now, s.peer());
        }
        self.by_index.clear();
    }
}

fn is_handshake_initiation(datagram: &[u8]) -> bool {
    datagram.first() == Some(&1)
}

#[test]
fn after_a_rest_both_layers_shake_hands_again_before_the_next_packet() {
    let mut net = Net::new();
    let mut out = Vec::new();
    net.client.connect(net.now, &mut out);
    net.run(out);
    net.send_inner(&inner_packet(b"before"));
    assert!(net.client.inner().is_established());
    // What the ingress would still send with the keys it had.
    let stale = net.ingress.send(net.now, &inner_packet(b"stale"));

    net.now += Duration::from_secs(61);
    net.client.rest(net.now);
    assert!(!net.client.outer().is_established());
    assert!(!net.client.inner().is_established());
    for d in &stale {
        let err = net.client.receive(net.now, d, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, TunnelError::NoSession(_)), "{err:?}");
    }
    net.ingress.rest(net.now);
    net.egress.rest(net.now);

    let inits = |net: &Net| {
        let count = |link: &[Vec<u8>]| link.iter().filter(|d| is_handshake_initiation(d)).count();
        (
            count(&net.wire_client_ingress),
            count(&net.wire_ingress_egress),
        )
    };
    let (outer_before, inner_before) = inits(&net);
    let after = inner_packet(b"after");
    net.send_inner(&after);
    assert_eq!(net.at_egress.last(), Some(&after));
    assert_eq!(
        inits(&net),
        (outer_before + 1, inner_before + 1),
        "one new handshake per layer"
    );
    assert!(net.client.inner().is_established());
}
