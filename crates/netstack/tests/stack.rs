//! Two sans-IO stacks back to back (client ↔ terminate) on a fake clock.

mod support;
use support::{dst, pattern, transfer, Pair, CLIENT_V4, CLIENT_V6, EGRESS_V4};

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use netstack::{
    CloseReason, ConfigError, Event, FlowError, Mode, Stack, StackConfig, StackError, TcpState,
    Unreachable,
};

#[test]
fn handshake_data_both_ways_and_fin() {
    let mut pair = Pair::new();
    let (c, s) = pair.open(dst());
    assert!(pair
        .client_events
        .contains(&Event::TcpConnected { flow: c }));
    assert!(pair
        .server_events
        .contains(&Event::TcpConnected { flow: s }));

    let up = pattern(1_000_000, 1);
    assert_eq!(transfer(&mut pair, true, c, s, &up), up);
    let down = pattern(1_500_000, 2);
    assert_eq!(transfer(&mut pair, false, s, c, &down), down);

    // Client half-closes: the server reads EOF but can still send.
    pair.client.close(c).expect("close");
    pair.pump();
    let mut buf = [0; 16];
    assert_eq!(pair.server.recv(s, &mut buf), Ok(0));
    assert_eq!(pair.server.state(s), Some(TcpState::RemoteClosed));
    assert_eq!(pair.server.send(s, b"late"), Ok(4));
    pair.pump();
    assert_eq!(pair.client.recv(c, &mut buf), Ok(4));
    assert_eq!(&buf[..4], b"late");
    assert_eq!(pair.client.send(c, b"x"), Err(FlowError::Closed));

    pair.server.close(s).expect("close");
    // The client's ACK of the FIN is delayed (delayed ACK): let the clock run.
    pair.advance(Duration::from_millis(50));
    assert_eq!(pair.client.recv(c, &mut buf), Ok(0));
    assert_eq!(
        pair.server.state(s),
        Some(TcpState::Closed(CloseReason::Graceful))
    );
    assert!(pair.server_events.contains(&Event::TcpClosed {
        flow: s,
        reason: CloseReason::Graceful
    }));
    pair.client.release(c);
    pair.server.release(s);
    pair.pump();
    assert_eq!(
        (pair.client.flow_count(), pair.client.socket_count()),
        (0, 0)
    );
    assert_eq!(
        (pair.server.flow_count(), pair.server.socket_count()),
        (0, 0)
    );
    assert_eq!(pair.client.state(c), None);
    assert_eq!(pair.server.stats().flows_opened, 1);
}

#[test]
fn refused_syn_gets_rst_and_client_sees_refused() {
    let mut pair = Pair::new();
    let c = pair.client.connect(dst()).expect("connect");
    pair.pump();
    let (s, _, _) = pair.incoming()[0];
    assert_eq!(pair.server.state(s), Some(TcpState::Pending));
    pair.server.refuse(s).expect("refuse");
    pair.pump();
    assert_eq!(
        pair.client.state(c),
        Some(TcpState::Closed(CloseReason::Refused))
    );
    assert!(pair.client_events.contains(&Event::TcpClosed {
        flow: c,
        reason: CloseReason::Refused
    }));
    assert_eq!(pair.client.recv(c, &mut [0; 4]), Err(FlowError::Refused));
    assert_eq!(pair.server.flow_count(), 0);
    assert_eq!(pair.server.socket_count(), 0);
    assert_eq!(pair.server.stats().flows_refused, 1);
    assert_eq!(pair.server.refuse(s), Err(StackError::UnknownFlow(s)));
}

#[test]
fn retransmitted_syn_while_pending_is_reported_once() {
    let mut pair = Pair::new();
    let c = pair.client.connect(dst()).expect("connect");
    pair.pump();
    // The client retransmits its SYN while the relay decides.
    pair.advance(Duration::from_secs(4));
    let incoming = pair.incoming();
    assert_eq!(incoming.len(), 1);
    pair.server.accept(incoming[0].0).expect("accept");
    pair.pump();
    assert_eq!(pair.client.state(c), Some(TcpState::Established));
    assert_eq!(pair.server.socket_count(), 1);
}

#[test]
fn undecided_syn_times_out_with_rst() {
    let mut pair = Pair::with(|c| c.pending_timeout = Duration::from_secs(2));
    let c = pair.client.connect(dst()).expect("connect");
    pair.pump();
    let (s, _, _) = pair.incoming()[0];
    pair.advance(Duration::from_secs(3));
    assert!(pair.server_events.contains(&Event::TcpClosed {
        flow: s,
        reason: CloseReason::TimedOut
    }));
    assert_eq!(
        pair.client.state(c),
        Some(TcpState::Closed(CloseReason::Refused))
    );
    assert_eq!(pair.server.accept(s), Err(StackError::UnknownFlow(s)));
}

#[test]
fn abort_resets_the_peer() {
    let mut pair = Pair::new();
    let (c, s) = pair.open(dst());
    pair.server.abort(s).expect("abort");
    pair.pump();
    assert_eq!(
        pair.client.state(c),
        Some(TcpState::Closed(CloseReason::Reset))
    );
    assert_eq!(pair.client.send(c, b"x"), Err(FlowError::Reset));
    pair.server.release(s);
    pair.client.release(c);
    pair.pump();
    assert_eq!(pair.server.socket_count() + pair.client.socket_count(), 0);
}

#[test]
fn releasing_with_unread_data_resets() {
    let mut pair = Pair::new();
    let (c, s) = pair.open(dst());
    pair.client.send(c, b"unread").expect("send");
    pair.pump();
    pair.server.release(s);
    pair.pump();
    assert_eq!(
        pair.client.state(c),
        Some(TcpState::Closed(CloseReason::Reset))
    );
    assert_eq!(pair.server.socket_count(), 0);
}

#[test]
fn concurrent_flows_to_one_destination_do_not_cross() {
    let mut pair = Pair::new();
    let a = pair.client.connect(dst()).expect("connect");
    let b = pair.client.connect(dst()).expect("connect");
    pair.pump();
    let incoming = pair.incoming();
    assert_eq!(incoming.len(), 2);
    // Accept both before smoltcp sees either SYN.
    for (flow, _, _) in &incoming {
        pair.server.accept(*flow).expect("accept");
    }
    pair.pump();
    let server_of = |src: SocketAddr| {
        incoming
            .iter()
            .find(|(_, s, _)| *s == src)
            .map(|(f, _, _)| *f)
            .expect("flow")
    };
    let sa = server_of(pair.client.endpoints(a).expect("a").0);
    let sb = server_of(pair.client.endpoints(b).expect("b").0);
    let da = pattern(50_000, 3);
    let db = pattern(50_000, 4);
    assert_eq!(transfer(&mut pair, true, a, sa, &da), da);
    assert_eq!(transfer(&mut pair, true, b, sb, &db), db);
}

#[test]
fn five_hundred_flows_open_and_close_without_leaking() {
    let mut pair = Pair::with(|c| {
        c.tcp_rx_buffer = 16 * 1024;
        c.tcp_tx_buffer = 16 * 1024;
    });
    for round in 0..50 {
        let mut flows = Vec::new();
        for _ in 0..10 {
            flows.push(pair.client.connect(dst()).expect("connect"));
        }
        pair.pump();
        let incoming = pair.incoming();
        assert_eq!(incoming.len(), 10, "round {round}");
        for (flow, _, _) in &incoming {
            pair.server.accept(*flow).expect("accept");
        }
        pair.pump();
        for (c, (s, _, _)) in flows.iter().zip(&incoming) {
            pair.client.send(*c, b"hello").expect("send");
            pair.server.send(*s, b"world").expect("send");
        }
        pair.pump();
        for (c, (s, _, _)) in flows.iter().zip(&incoming) {
            let mut buf = [0; 5];
            assert_eq!(pair.client.recv(*c, &mut buf), Ok(5));
            assert_eq!(pair.server.recv(*s, &mut buf), Ok(5));
            pair.client.release(*c);
            pair.server.release(*s);
        }
        pair.advance(Duration::from_millis(50));
        eprintln!(
            "round {round}: client {} server {}",
            pair.client.socket_count(),
            pair.server.socket_count()
        );
        assert!(pair.client.socket_count() <= 10 && pair.server.socket_count() <= 10);
    }
    pair.advance(Duration::from_secs(15));
    assert_eq!(pair.client.socket_count(), 0);
    assert_eq!(pair.server.socket_count(), 0);
    assert_eq!(pair.client.flow_count(), 0);
    assert_eq!(pair.server.flow_count(), 0);
    assert_eq!(pair.server.stats().flows_opened, 500);
    assert_eq!(pair.server.stats().flows_released, 500);
}

#[test]
fn ipv6_flow_works() {
    let mut pair = Pair::new();
    let to: SocketAddr = "[2001:db8::80]:80".parse().expect("literal");
    let (c, s) = pair.open(to);
    let data = pattern(300_000, 5);
    assert_eq!(transfer(&mut pair, true, c, s, &data), data);
    assert_eq!(pair.client.endpoints(c).map(|e| e.0.ip()), Some(CLIENT_V6));
}

#[test]
fn udp_round_trip_and_refusal() {
    let mut pair = Pair::new();
    let port = pair.client.udp_bind(0).expect("bind");
    let to: SocketAddr = "9.9.9.9:53".parse().expect("literal");
    let from = SocketAddr::new(CLIENT_V4, port);
    pair.client
        .udp_send(
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            to,
            b"query",
        )
        .expect("send");
    pair.pump();
    let datagram = pair
        .server_events
        .iter()
        .find_map(|e| match e {
            Event::Udp(d) => Some(d.clone()),
            _ => None,
        })
        .expect("datagram reported");
    assert_eq!((datagram.src, datagram.dst), (from, to));
    assert_eq!(&datagram.payload[..], b"query");

    pair.server.udp_send(to, from, b"answer").expect("reply");
    pair.pump();
    assert!(pair.client_events.iter().any(|e| matches!(e,
        Event::Udp(d) if d.src == to && d.dst == from && &d.payload[..] == b"answer")));

    pair.server.refuse_udp(&datagram, Unreachable::Port);
    pair.pump();
    assert!(pair.client_events.contains(&Event::UdpUnreachable {
        local: from,
        remote: to
    }));

    // A datagram to a port the client did not bind is answered with ICMP, not reported.
    let before = pair.client_events.len();
    pair.server
        .udp_send(
            to,
            SocketAddr::new(CLIENT_V4, port.wrapping_add(1).max(1)),
            b"x",
        )
        .expect("send");
    pair.pump();
    assert_eq!(pair.client_events.len(), before);
    assert!(pair.client.stats().udp_dropped >= 1);

    let too_big = vec![0; 2000];
    assert!(matches!(
        pair.client.udp_send(from, to, &too_big),
        Err(StackError::DatagramTooLarge { .. })
    ));
}

#[test]
fn udp_over_ipv6_round_trip() {
    let mut pair = Pair::new();
    let port = pair.client.udp_bind(5353).expect("bind");
    let from = SocketAddr::new(CLIENT_V6, port);
    let to: SocketAddr = "[2001:db8::53]:53".parse().expect("literal");
    pair.client.udp_send(from, to, b"q6").expect("send");
    pair.pump();
    assert!(pair.server_events.iter().any(|e| matches!(e,
        Event::Udp(d) if d.src == from && d.dst == to)));
    let datagram = netstack::UdpDatagram {
        src: from,
        dst: to,
        payload: b"q6".to_vec(),
    };
    pair.server.refuse_udp(&datagram, Unreachable::Prohibited);
    pair.pump();
    assert!(pair.client_events.contains(&Event::UdpUnreachable {
        local: from,
        remote: to
    }));
}

#[test]
fn unsolicited_syn_to_client_gets_rst() {
    let mut pair = Pair::new();
    // Make a client-mode SYN aimed at the *client* by connecting from a second client stack.
    let mut other =
        Stack::new(StackConfig::new(Mode::Client, vec![EGRESS_V4]), pair.now).expect("config");
    let f = other
        .connect(SocketAddr::new(CLIENT_V4, 8080))
        .expect("connect");
    other.poll(pair.now);
    while let Some(p) = other.pop_transmit() {
        pair.client.receive(&p);
    }
    pair.client.poll(pair.now);
    while let Some(p) = pair.client.pop_transmit() {
        other.receive(&p);
    }
    other.poll(pair.now);
    assert_eq!(other.state(f), Some(TcpState::Closed(CloseReason::Refused)));
}

#[test]
fn malformed_packets_are_counted_not_fatal() {
    let mut pair = Pair::new();
    for bad in [
        &[][..],
        &[0x45][..],
        &[0x60, 0, 0][..],
        &[0xff; 40][..],
        &[
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ][..],
    ] {
        pair.server.receive(bad);
        pair.client.receive(bad);
    }
    pair.pump();
    assert_eq!(pair.server.stats().malformed_dropped, 5);
    assert_eq!(pair.client.stats().malformed_dropped, 5);
    assert_eq!(pair.server.stats().packets_in, 5);
    // A SYN with a corrupted checksum is not reported.
    let c = pair.client.connect(dst()).expect("connect");
    pair.client.poll(pair.now);
    let mut syn = pair.client.pop_transmit().expect("SYN");
    let last = syn.len() - 1;
    syn[last] ^= 0xff;
    pair.server.receive(&syn);
    pair.server.poll(pair.now);
    while pair.server.pop_transmit().is_some() {}
    assert_eq!(pair.server.stats().malformed_dropped, 6);
    assert!(
        pair.server.poll_event().is_none(),
        "a corrupt SYN is not reported"
    );
    assert_eq!(pair.client.state(c), Some(TcpState::Connecting));
}

#[test]
fn connect_errors_are_typed() {
    let mut pair = Pair::new();
    assert!(matches!(
        pair.server.connect(dst()),
        Err(StackError::WrongMode { .. })
    ));
    assert_eq!(
        pair.client.connect("0.0.0.0:80".parse().expect("literal")),
        Err(StackError::InvalidDestination(
            "0.0.0.0:80".parse().expect("literal")
        ))
    );
    let mut v4only =
        Stack::new(StackConfig::new(Mode::Client, vec![CLIENT_V4]), pair.now).expect("config");
    let v6: SocketAddr = "[2001:db8::1]:443".parse().expect("literal");
    assert_eq!(v4only.connect(v6), Err(StackError::NoSourceAddress(v6)));
    let mut limited = Pair::with(|c| c.max_flows = 1);
    limited.client.connect(dst()).expect("first");
    assert_eq!(
        limited.client.connect(dst()),
        Err(StackError::TooManyFlows { max: 1 })
    );
}

#[test]
fn config_errors_are_typed() {
    let now = Instant::now();
    assert!(matches!(
        Stack::new(StackConfig::new(Mode::Client, vec![]), now),
        Err(ConfigError::NoAddress)
    ));
    let mut c = StackConfig::new(Mode::Client, vec![CLIENT_V4]);
    c.mtu = 100;
    assert!(matches!(
        Stack::new(c, now),
        Err(ConfigError::InvalidMtu { .. })
    ));
    assert!(matches!(
        Stack::new(
            StackConfig::new(Mode::Terminate, vec![Ipv4Addr::UNSPECIFIED.into()]),
            now
        ),
        Err(ConfigError::InvalidAddress(_))
    ));
}

#[test]
fn idle_flows_give_their_buffers_back_and_carry_data_after() {
    let after = StackConfig::DEFAULT_IDLE_BUFFERS_AFTER;
    let mut pair = Pair::new();
    let (c, s) = pair.open(dst());
    // More than a buffer each way, so every page of both ends' buffers was written.
    let up = pattern(600 * 1024, 1);
    assert_eq!(transfer(&mut pair, true, c, s, &up), up);
    let down = pattern(600 * 1024, 2);
    assert_eq!(transfer(&mut pair, false, s, c, &down), down);

    pair.advance(after - Duration::from_millis(100));
    assert_eq!(
        pair.given_back(),
        (0, 0),
        "not before the flow was quiet for {after:?}"
    );
    pair.advance(Duration::from_millis(200));
    assert_eq!(pair.given_back(), (1, 1), "both ends, once each");
    pair.advance(after * 3);
    assert_eq!(
        pair.given_back(),
        (1, 1),
        "nothing moved since: nothing more to give"
    );

    // The connection carries data as before, both ways, and gives back again when quiet.
    let up = pattern(300 * 1024, 3);
    assert_eq!(transfer(&mut pair, true, c, s, &up), up);
    let down = pattern(300 * 1024, 4);
    assert_eq!(transfer(&mut pair, false, s, c, &down), down);
    pair.advance(after + Duration::from_millis(100));
    assert_eq!(pair.given_back(), (2, 2));
}

#[test]
fn a_flow_holding_data_keeps_its_buffers_until_it_is_read() {
    let after = StackConfig::DEFAULT_IDLE_BUFFERS_AFTER;
    let mut pair = Pair::new();
    let (c, s) = pair.open(dst());
    let data = pattern(100 * 1024, 5);
    assert_eq!(pair.client.send(c, &data), Ok(data.len()));
    pair.pump();
    assert_eq!(pair.server.recv_queue(s), data.len(), "arrived, unread");

    pair.advance(after * 3);
    assert_eq!(
        pair.server.stats().buffers_given_back,
        0,
        "unread data is kept"
    );
    assert_eq!(
        pair.client.stats().buffers_given_back,
        1,
        "the sender's are empty"
    );
    let mut got = vec![0; data.len()];
    let mut read = 0;
    while read < data.len() {
        read += pair.server.recv(s, &mut got[read..]).expect("recv");
    }
    assert_eq!(got, data, "what was held is intact");
    pair.advance(after + Duration::from_millis(100));
    assert_eq!(pair.server.stats().buffers_given_back, 1);
}

#[test]
fn idle_buffers_stay_when_giving_back_is_off() {
    let mut pair = Pair::with(|c| c.idle_buffers_after = None);
    let (c, s) = pair.open(dst());
    let data = pattern(64 * 1024, 6);
    assert_eq!(transfer(&mut pair, true, c, s, &data), data);
    pair.advance(StackConfig::DEFAULT_IDLE_BUFFERS_AFTER * 4);
    assert_eq!(pair.given_back(), (0, 0));
}

#[test]
fn a_quiet_flow_gives_its_buffers_back_while_another_stays_busy() {
    let after = StackConfig::DEFAULT_IDLE_BUFFERS_AFTER;
    let mut pair = Pair::new();
    let (busy_c, busy_s) = pair.open(dst());
    let (quiet_c, quiet_s) = pair.open(dst());
    let data = pattern(1000, 9);
    assert_eq!(transfer(&mut pair, true, quiet_c, quiet_s, &data), data);
    // The busy flow moves a little every second for three idle periods.
    let mut seen = Vec::new();
    for second in 0..(3 * after.as_secs()) {
        let chunk = pattern(100, second as u8);
        assert_eq!(transfer(&mut pair, false, busy_s, busy_c, &chunk), chunk);
        pair.advance(Duration::from_secs(1));
        seen.push(pair.given_back());
    }
    assert_eq!(
        seen.last(),
        Some(&(1, 1)),
        "only the quiet flow, at both ends: {seen:?}"
    );
    let first = seen.iter().position(|g| *g == (1, 1)).expect("given back");
    assert_eq!(first as u64 + 1, after.as_secs(), "{seen:?}");
    // The busy flow gives back once it goes quiet too.
    pair.advance(after + Duration::from_millis(100));
    assert_eq!(pair.given_back(), (2, 2));
}
