//! Sessions that go quiet sleep without their keys and wake on the next handshake, with
//! their admission: one client session and a relay's table, sans-IO, on a simulated clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use client::connection::control_packet;
use control::{AdmitPolicy, Message};
use relay::table::{SessionId, SessionTable, TableEvent};
use tunnel::wire::{build_udp, parse_udp};
use tunnel::{Action, Responder, Session, SessionConfig, StaticSecret, KEYS_EXPIRE};

const CLIENT: &str = "203.0.113.10:40000";
const DESTINATION: &str = "93.184.216.34:443";

struct Pair {
    now: Instant,
    client: Session,
    table: SessionTable,
    /// User packets that came out of the session at the relay.
    at_relay: Vec<Vec<u8>>,
    /// Packets the client received.
    at_client: Vec<Vec<u8>>,
    closed: Vec<SessionId>,
    id: Option<SessionId>,
    addr: Option<Ipv4Addr>,
    /// Datagrams the relay sent (handshake messages included).
    relay_sent: usize,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let relay_key = StaticSecret::generate();
        let table = SessionTable::new(
            now,
            Responder::new(now, relay_key.clone(), SessionConfig::default()),
            AdmitPolicy {
                mtu: 1420,
                lifetime: Duration::from_secs(3600),
            },
            10,
        );
        let client = Session::initiator(
            now,
            &StaticSecret::generate(),
            relay_key.public_key(),
            SessionConfig::default(),
        );
        Self {
            now,
            client,
            table,
            at_relay: Vec::new(),
            at_client: Vec::new(),
            closed: Vec::new(),
            id: None,
            addr: None,
            relay_sent: 0,
        }
    }

    /// Handshake and `Hello` → `Admitted`.
    fn admit(&mut self) {
        let hello = Message::Hello { client_version: 1 };
        self.client_send(&control_packet(Ipv4Addr::UNSPECIFIED, &hello));
        let addr = self.addr.expect("the session was not admitted");
        let admitted = self.at_client.pop().expect("no Admitted reply");
        let reply = Message::decode(parse_udp(&admitted).unwrap().payload).unwrap();
        assert!(matches!(reply, Message::Admitted { .. }), "{reply:?}");
        assert_eq!(self.table.admitted_addr(self.id.unwrap()), Some(addr));
    }

    fn user_packet(&self, marker: &[u8]) -> Vec<u8> {
        let src = SocketAddr::from((self.addr.unwrap(), 5000));
        build_udp(src, DESTINATION.parse().unwrap(), marker).unwrap()
    }

    fn client_send(&mut self, ip: &[u8]) {
        let mut actions = Vec::new();
        self.client.encapsulate(self.now, ip, &mut actions);
        self.carry_to_relay(actions);
    }

    /// A reply from the destination, which the relay encrypts for the client.
    fn relay_send(&mut self, ip: &[u8]) {
        let mut ev = Vec::new();
        self.table.send(self.now, self.id.unwrap(), ip, &mut ev);
        self.carry_to_client(ev);
    }

    /// Carries the client's datagrams to the relay and everything that follows, both ways.
    fn carry_to_relay(&mut self, actions: Vec<Action>) {
        for a in actions {
            if let Action::Transmit(d) = a {
                let mut ev = Vec::new();
                self.table
                    .handle_datagram(self.now, CLIENT.parse().unwrap(), &d, &mut ev);
                self.carry_to_client(ev);
            }
        }
    }

    fn carry_to_client(&mut self, ev: Vec<TableEvent>) {
        for e in ev {
            match e {
                TableEvent::Transmit { to, datagram } => {
                    assert_eq!(to, CLIENT.parse::<SocketAddr>().unwrap());
                    self.relay_sent += 1;
                    let mut actions = Vec::new();
                    self.client
                        .decapsulate(self.now, &datagram, &mut actions)
                        .unwrap();
                    let mut replies = Vec::new();
                    for a in actions {
                        match a {
                            Action::Deliver(ip) => self.at_client.push(ip),
                            a => replies.push(a),
                        }
                    }
                    self.carry_to_relay(replies);
                }
                TableEvent::Admitted { id, addr } => {
                    self.id = Some(id);
                    self.addr = Some(addr);
                }
                TableEvent::Packet { ip, .. } => self.at_relay.push(ip),
                TableEvent::Closed { id } => self.closed.push(id),
                TableEvent::Attest(_) => {}
            }
        }
    }

    /// Moves the clock in timer ticks, running both sides' timers.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while self.now < end {
            self.now += tunnel::TIMER_TICK;
            let mut actions = Vec::new();
            // The client's own session expires too (after 540 s quiet); nothing to carry then.
            if self.client.handle_timeout(self.now, &mut actions).is_ok() {
                self.carry_to_relay(actions);
            }
            let mut ev = Vec::new();
            self.table.handle_timeout(self.now, &mut ev);
            self.carry_to_client(ev);
        }
    }
}

/// An admitted session whose client has said nothing since: asleep at the relay.
fn asleep() -> Pair {
    let mut p = Pair::new();
    p.admit();
    // The client answers Admitted with a keepalive after 10 s; quiet from there on.
    p.advance(KEYS_EXPIRE + Duration::from_secs(15));
    assert_eq!(p.table.counters.sessions_asleep, 1);
    p
}

#[test]
fn a_quiet_session_sleeps_and_the_clients_next_packet_wakes_it_with_its_address() {
    let mut p = Pair::new();
    p.admit();
    let first = p.user_packet(b"before the quiet spell");
    p.client_send(&first);
    assert_eq!(p.at_relay, vec![first]);

    p.advance(KEYS_EXPIRE - Duration::from_secs(5));
    assert_eq!(
        p.table.counters.sessions_asleep, 0,
        "asleep with usable keys"
    );
    p.advance(Duration::from_secs(10));
    assert_eq!(p.table.counters.sessions_asleep, 1);
    assert_eq!(p.table.counters.sessions_slept, 1);
    assert_eq!(p.table.len(), 1, "a sleeping session is still a session");
    assert!(p.closed.is_empty());
    assert!(
        p.table.counters.to_string().contains(" asleep=1/1"),
        "{}",
        p.table.counters
    );

    // The client's keys expired too: its packet waits for a new handshake, which wakes
    // the session at the relay; no new Hello, same address.
    let handshakes = p.table.counters.handshakes;
    let second = p.user_packet(b"after the quiet spell");
    p.client_send(&second);
    assert_eq!(p.at_relay.last(), Some(&second));
    assert_eq!(p.table.counters.handshakes, handshakes + 1);
    assert_eq!(p.table.counters.sessions_asleep, 0);
    assert_eq!(p.table.counters.sessions_created, 1);
    assert_eq!(p.table.counters.sessions_admitted, 1);
    assert_eq!(p.table.counters.dropped(), 0, "{}", p.table.counters);
}

#[test]
fn a_reply_for_a_sleeping_session_wakes_it_from_the_relay_side() {
    let mut p = asleep();

    let sent = p.relay_sent;
    let reply = build_udp(
        DESTINATION.parse().unwrap(),
        SocketAddr::from((p.addr.unwrap(), 5000)),
        b"a late reply",
    )
    .unwrap();
    p.relay_send(&reply);
    assert!(p.relay_sent > sent, "the relay sent no handshake");
    assert_eq!(p.table.counters.sessions_asleep, 0);
    assert_eq!(p.at_client.last(), Some(&reply));
}

#[test]
fn a_sleeping_session_ends_when_an_awake_one_would_have_expired() {
    let mut p = asleep();
    p.advance(tunnel::SESSION_EXPIRES - KEYS_EXPIRE);
    assert_eq!(p.closed, vec![p.id.unwrap()]);
    assert_eq!(p.table.len(), 0);
    assert_eq!(p.table.counters.sessions_asleep, 0);
    assert_eq!(p.table.session_for_addr(p.addr.unwrap()), None);
}

#[test]
fn a_resting_client_has_its_keys_erased_at_the_relay_at_once() {
    let mut p = Pair::new();
    p.admit();
    let mut actions = Vec::new();
    p.client
        .encapsulate(p.now, &p.user_packet(b"first"), &mut actions);
    let sent = actions.clone();
    p.carry_to_relay(actions);
    assert_eq!(p.at_relay.len(), 1);

    p.advance(Duration::from_secs(61));
    p.client_send(&control_packet(Ipv4Addr::UNSPECIFIED, &Message::Rest));
    p.client.rest(p.now);
    assert_eq!(p.table.counters.sessions_asleep, 1);
    assert_eq!(p.table.counters.sessions_rested, 1);
    assert!(p.closed.is_empty());

    // What the client sent with the old keys no longer opens at the relay.
    let no_session = p.table.counters.dropped_no_session;
    p.carry_to_relay(sent);
    assert_eq!(p.table.counters.dropped_no_session, no_session + 1);
    assert_eq!(p.at_relay.len(), 1);

    // The next packet: a new handshake, the same session and address, no new Hello.
    let addr = p.addr.unwrap();
    let next = p.user_packet(b"after the rest");
    p.client_send(&next);
    assert_eq!(p.at_relay.last(), Some(&next));
    assert_eq!(p.table.admitted_addr(p.id.unwrap()), Some(addr));
    assert_eq!(p.table.counters.sessions_asleep, 0);
    assert_eq!(p.table.counters.sessions_created, 1);
    assert_eq!(p.table.counters.sessions_admitted, 1);
}

#[test]
fn a_rest_from_a_session_never_admitted_ends_it() {
    let mut p = Pair::new();
    p.client_send(&control_packet(Ipv4Addr::UNSPECIFIED, &Message::Rest));
    assert_eq!(p.table.counters.sessions_created, 1);
    assert_eq!(p.closed.len(), 1);
    assert_eq!(p.table.len(), 0);
    assert_eq!(p.table.counters.sessions_rested, 0);
}
