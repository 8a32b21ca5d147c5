//! The tokio driver: a client stack and a terminate stack joined by channels, the terminate
//! side bridged to real loopback sockets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use netstack::driver::{self, Incoming, IncomingTcp, StackHandle, TcpFlow};
use netstack::{Mode, Stack, StackConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
const EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
const MIB: usize = 1024 * 1024;

/// Start both stacks, wired back to back.
fn pair() -> (StackHandle, StackHandle) {
    pair_with(|_| {})
}

/// [`pair`] with both stacks' configs adjusted by `tweak`.
fn pair_with(tweak: impl Fn(&mut StackConfig)) -> (StackHandle, StackHandle) {
    let now = std::time::Instant::now();
    let mut client_config = StackConfig::new(Mode::Client, vec![CLIENT]);
    tweak(&mut client_config);
    let mut server_config = StackConfig::new(Mode::Terminate, vec![EGRESS]);
    tweak(&mut server_config);
    let client = Stack::new(client_config, now).expect("config");
    let server = Stack::new(server_config, now).expect("config");
    let (c2s_tx, c2s_rx) = mpsc::channel(512);
    let (s2c_tx, s2c_rx) = mpsc::channel(512);
    (
        driver::spawn(client, s2c_rx, c2s_tx),
        driver::spawn(server, c2s_rx, s2c_tx),
    )
}

/// Accepts the next flow the terminate stack reports.
async fn accept_next(incoming: &mut Incoming<IncomingTcp>) -> TcpFlow {
    incoming
        .recv()
        .await
        .expect("flow")
        .accept()
        .await
        .expect("accept")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Read everything until EOF and hash it.
async fn read_hash(mut r: impl tokio::io::AsyncRead + Unpin) -> ([u8; 32], usize) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (hasher.finalize().into(), total);
        }
        total += n;
        hasher.update(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_each_way_through_a_real_socket() {
    let (client, relay) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = listener.local_addr().expect("addr");
    let virtual_dst: SocketAddr = "198.51.100.7:443".parse().expect("literal");
    let down = pattern(8 * MIB, 9);
    let up = pattern(8 * MIB, 3);

    // The destination: sends `down`, hashes what it receives.
    let server_down = down.clone();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        let (r, mut w) = sock.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&server_down).await.expect("write");
            w.shutdown().await.expect("shutdown");
        });
        let got = read_hash(r).await;
        writer.await.expect("writer");
        got
    });

    // The egress relay: accept the flow for the virtual destination, bridge to the origin.
    let mut incoming = relay.incoming().expect("terminate mode");
    let bridge = tokio::spawn(async move {
        let request = incoming.recv().await.expect("a flow");
        assert_eq!(request.dst(), virtual_dst);
        assert_eq!(request.src().ip(), CLIENT);
        let mut upstream = TcpStream::connect(origin).await.expect("connect origin");
        let mut flow = request.accept().await.expect("accept");
        tokio::io::copy_bidirectional(&mut flow, &mut upstream)
            .await
            .expect("bridge")
    });

    let flow = client.connect(virtual_dst).await.expect("connect");
    assert_eq!(flow.peer_addr(), virtual_dst);
    let (r, mut w) = tokio::io::split(flow);
    let up_clone = up.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&up_clone).await.expect("write");
        w.shutdown().await.expect("shutdown");
        w
    });
    let (client_got, client_len) = tokio::time::timeout(Duration::from_secs(120), read_hash(r))
        .await
        .expect("download in time");
    let _w = writer.await.expect("writer");
    let (server_got, server_len) = tokio::time::timeout(Duration::from_secs(120), server)
        .await
        .expect("upload in time")
        .expect("server");
    assert_eq!(client_len, down.len());
    assert_eq!(client_got, sha(&down));
    assert_eq!(server_len, up.len());
    assert_eq!(server_got, sha(&up));
    let (a, b) = bridge.await.expect("bridge");
    assert_eq!((a as usize, b as usize), (up.len(), down.len()));
}

#[tokio::test]
async fn refused_connect_is_connection_refused_promptly() {
    let (client, relay) = pair();
    let mut incoming = relay.incoming().expect("terminate mode");
    tokio::spawn(async move {
        while let Some(request) = incoming.recv().await {
            request.refuse();
        }
    });
    let started = std::time::Instant::now();
    let err = client
        .connect("203.0.113.9:25".parse().expect("literal"))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(relay.stats().flows_refused, 1);
}

#[tokio::test]
async fn take_incoming_hands_every_flow_to_its_function() {
    let (client, relay) = pair();
    // A flow that arrives before the function is given waits and is handed over with it.
    let early = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .connect("198.51.100.1:7".parse().expect("literal"))
                .await
        })
    };
    // One thread: once the SYN is in, a few turns let the stack's task report the flow.
    while relay.stats().packets_in == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    assert!(
        !client.take_incoming(|_| {}),
        "client mode has no incoming flows"
    );
    // Port 7 is echoed by a task per flow; any other port is refused by the function itself,
    // which takes the stack's lock: it must be called without it held.
    assert!(relay.take_incoming(|flow| {
        if flow.dst().port() != 7 {
            return flow.refuse();
        }
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(flow.accept().await.expect("accept"));
            tokio::io::copy(&mut r, &mut w).await.expect("echo");
        });
    }));
    assert!(relay.incoming().is_none(), "the flows are the function's");
    assert!(!relay.take_incoming(|_| {}), "only one function takes them");

    let late = client
        .connect("198.51.100.2:7".parse().expect("literal"))
        .await
        .expect("connect");
    let early = early.await.expect("task").expect("connect");
    for (n, flow) in [early, late].into_iter().enumerate() {
        let data = pattern(10_000, n as u8);
        let (mut r, mut w) = tokio::io::split(flow);
        w.write_all(&data).await.expect("write");
        let mut back = vec![0; data.len()];
        r.read_exact(&mut back).await.expect("echoed");
        assert!(back == data, "flow {n}: the echo matches");
    }
    let err = client
        .connect("198.51.100.3:25".parse().expect("literal"))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn unheard_incoming_flows_are_refused() {
    let (client, relay) = pair();
    drop(relay.incoming());
    let err = client
        .connect("203.0.113.9:80".parse().expect("literal"))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn udp_round_trip() {
    let (client, relay) = pair();
    let mut datagrams = relay.incoming_udp().expect("terminate mode");
    let responder = relay.clone();
    tokio::spawn(async move {
        while let Some(d) = datagrams.recv().await {
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(&d.payload);
            responder.udp_reply(d.dst, d.src, &reply).expect("reply");
        }
    });
    let socket = client.udp_socket().expect("socket");
    let dst: SocketAddr = "198.51.100.53:53".parse().expect("literal");
    socket.send_to(b"ping", dst).await.expect("send");
    let (payload, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from())
        .await
        .expect("in time")
        .expect("reply");
    assert_eq!(&payload[..], b"re:ping");
    assert_eq!(from, dst);
}

#[tokio::test]
async fn fin_gives_eof_and_dropped_flows_are_freed() {
    let (client, relay) = pair();
    let mut incoming = relay.incoming().expect("terminate mode");
    let relay_side = tokio::spawn(async move {
        let mut flow = accept_next(&mut incoming).await;
        let mut got = Vec::new();
        flow.read_to_end(&mut got).await.expect("read");
        flow.write_all(b"bye").await.expect("write");
        flow.shutdown().await.expect("shutdown");
        got
    });
    let mut flow = client
        .connect("198.51.100.1:7".parse().expect("literal"))
        .await
        .expect("connect");
    flow.write_all(b"hello").await.expect("write");
    flow.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    flow.read_to_end(&mut back).await.expect("read");
    assert_eq!(back, b"bye");
    assert_eq!(relay_side.await.expect("relay"), b"hello");
    drop(flow);
    tokio::time::timeout(Duration::from_secs(5), async {
        while client.stats().flows_released < 1 || relay.stats().flows_released < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both sides free the flow");
}

/// A quiet flow's stacks wake by themselves to give its buffers' pages back (no packet
/// arrives to make them poll), and the flow carries data as before afterwards.
#[tokio::test]
async fn quiet_flows_give_their_buffers_back_on_their_own() {
    let (client, relay) = pair_with(|c| c.idle_buffers_after = Some(Duration::from_millis(200)));
    let mut incoming = relay.incoming().expect("terminate mode");
    let echo = tokio::spawn(async move {
        let flow = accept_next(&mut incoming).await;
        let (mut r, mut w) = tokio::io::split(flow);
        tokio::io::copy(&mut r, &mut w).await.expect("echo")
    });
    let flow = client
        .connect("198.51.100.1:7".parse().expect("literal"))
        .await
        .expect("connect");
    let (mut r, mut w) = tokio::io::split(flow);
    for (round, len) in [(1, 300 * 1024), (2, 100 * 1024)] {
        let data = pattern(len, round);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w
        });
        let mut back = vec![0; len];
        r.read_exact(&mut back).await.expect("echoed");
        w = writer.await.expect("writer");
        assert!(back == data, "round {round}: the echo matches");
        let given_back = u64::from(round);
        tokio::time::timeout(Duration::from_secs(5), async {
            while client.stats().buffers_given_back < given_back
                || relay.stats().buffers_given_back < given_back
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("both stacks give the quiet flow's buffers back");
    }
    w.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.expect("eof");
    assert_eq!(echo.await.expect("echo"), 400 * 1024);
}

/// Like [`pair`], with the way into the terminate stack through a task of the test's:
/// aborting it closes the stack's input, and the stack stops.
fn pair_with_cut() -> (StackHandle, StackHandle, tokio::task::JoinHandle<()>) {
    let now = std::time::Instant::now();
    let client = Stack::new(StackConfig::new(Mode::Client, vec![CLIENT]), now).expect("config");
    let server = Stack::new(StackConfig::new(Mode::Terminate, vec![EGRESS]), now).expect("config");
    let (c2s_tx, mut c2s_rx) = mpsc::channel::<Vec<u8>>(512);
    let (to_server, server_in) = mpsc::channel(512);
    let (s2c_tx, s2c_rx) = mpsc::channel(512);
    let cut = tokio::spawn(async move {
        while let Some(p) = c2s_rx.recv().await {
            if to_server.send(p).await.is_err() {
                return;
            }
        }
    });
    (
        driver::spawn(client, s2c_rx, c2s_tx),
        driver::spawn(server, server_in, s2c_tx),
        cut,
    )
}

/// Sends datagrams numbered `0..n` (a big-endian u16 each), a few at a time so that the
/// client's transmit queue never overflows, and waits until the terminate stack has read
/// them all.
async fn send_numbered(client: &StackHandle, relay: &StackHandle, n: u16) {
    let socket = client.udp_socket().expect("socket");
    let dst: SocketAddr = "198.51.100.53:4000".parse().expect("literal");
    for i in 0..n {
        socket.send_to(&i.to_be_bytes(), dst).await.expect("send");
        if i % 16 == 15 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while relay.stats().udp_in < u64::from(n) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the terminate stack reads every datagram");
}

fn number(d: &netstack::UdpDatagram) -> u16 {
    u16::from_be_bytes([d.payload[0], d.payload[1]])
}

#[tokio::test]
async fn datagrams_wait_for_their_receiver_in_order_up_to_the_depth() {
    let (client, relay) = pair();
    send_numbered(&client, &relay, 300).await;
    // Taken only now: the first 256 waited, in order; the rest were dropped.
    let mut datagrams = relay.incoming_udp().expect("terminate mode");
    assert!(relay.incoming_udp().is_none(), "one receiver");
    let mut got = Vec::new();
    while let Some(d) = datagrams.try_recv() {
        got.push(number(&d));
    }
    assert_eq!(got, (0..256).collect::<Vec<u16>>());
}

#[tokio::test]
async fn a_stopped_stack_hands_over_what_was_waiting_then_ends() {
    let (client, relay, cut) = pair_with_cut();
    let mut datagrams = relay.incoming_udp().expect("terminate mode");
    let mut flows = relay.incoming().expect("terminate mode");
    send_numbered(&client, &relay, 5).await;

    cut.abort();
    tokio::time::timeout(Duration::from_secs(5), async {
        let (from, to) = (
            "198.51.100.53:4000".parse().expect("a"),
            "100.64.0.2:9".parse().expect("b"),
        );
        while relay.udp_reply(from, to, b"x").is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the stack stops once its input is closed");

    let mut got = Vec::new();
    while let Some(d) = tokio::time::timeout(Duration::from_secs(5), datagrams.recv())
        .await
        .expect("the receiver ends instead of waiting")
    {
        got.push(number(&d));
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    let end = tokio::time::timeout(Duration::from_secs(5), flows.recv()).await;
    assert!(matches!(end, Ok(None)), "no flow, and the end: {end:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_fed_stack_takes_up_to_its_depth_and_ends_once_its_input_is_dropped() {
    let now = std::time::Instant::now();
    let mut client = Stack::new(StackConfig::new(Mode::Client, vec![CLIENT]), now).expect("config");
    let port = client.udp_bind(0).expect("a port");
    let from = SocketAddr::new(CLIENT, port);
    let dst: SocketAddr = "198.51.100.53:4000".parse().expect("literal");
    let packets: Vec<Vec<u8>> = (0..6u16)
        .map(|i| {
            client.udp_send(from, dst, &i.to_be_bytes()).expect("send");
            client.pop_transmit().expect("a packet")
        })
        .collect();
    let server = Stack::new(StackConfig::new(Mode::Terminate, vec![EGRESS]), now).expect("config");
    let (out_tx, _out_rx) = mpsc::channel::<((), Vec<u8>)>(8);
    let (relay, input) = driver::spawn_fed(server, 4, out_tx, |p| ((), p));
    let mut datagrams = relay.incoming_udp().expect("terminate mode");

    // One thread: the stack's task has not run yet, so four wait and the rest come back.
    let sent = packets.clone();
    let refused: Vec<Vec<u8>> = packets
        .into_iter()
        .filter_map(|p| input.push(p).err())
        .collect();
    assert_eq!(
        refused,
        sent[4..],
        "the packets beyond the depth, given back whole"
    );

    drop(input);
    let mut got = Vec::new();
    while let Some(d) = tokio::time::timeout(Duration::from_secs(5), datagrams.recv())
        .await
        .expect("the stack ends instead of waiting for more input")
    {
        got.push(number(&d));
    }
    assert_eq!(got, vec![0, 1, 2, 3], "what was queued is taken, in order");
    let stopped = relay.udp_reply(dst, from, b"x");
    assert!(stopped.is_err(), "the stack has stopped: {stopped:?}");
}

#[tokio::test]
async fn fed_stacks_share_one_channel_to_the_tunnel() {
    // Two terminate stacks answer through one channel, as an egress's sessions do; each
    // packet carries its stack's tag, and a router hands it to that stack's client.
    let now = std::time::Instant::now();
    let (shared_tx, mut shared_rx) = mpsc::channel::<(u8, Vec<u8>)>(64);
    let mut clients = Vec::new();
    let mut to_clients = Vec::new();
    for tag in 0..2u8 {
        let client = Stack::new(StackConfig::new(Mode::Client, vec![CLIENT]), now).expect("config");
        let server =
            Stack::new(StackConfig::new(Mode::Terminate, vec![EGRESS]), now).expect("config");
        let (c2s_tx, mut c2s_rx) = mpsc::channel::<Vec<u8>>(64);
        let (to_client, client_in) = mpsc::channel(64);
        let client = driver::spawn(client, client_in, c2s_tx);
        let (server, input) = driver::spawn_fed(server, 64, shared_tx.clone(), move |p| (tag, p));
        tokio::spawn(async move {
            while let Some(packet) = c2s_rx.recv().await {
                let _ = input.push(packet);
            }
        });
        let mut datagrams = server.incoming_udp().expect("terminate mode");
        tokio::spawn(async move {
            while let Some(d) = datagrams.recv().await {
                let mut reply = vec![tag];
                reply.extend_from_slice(&d.payload);
                server.udp_reply(d.dst, d.src, &reply).expect("reply");
            }
        });
        clients.push(client);
        to_clients.push(to_client);
    }
    drop(shared_tx);
    tokio::spawn(async move {
        while let Some((tag, packet)) = shared_rx.recv().await {
            let _ = to_clients[usize::from(tag)].send(packet).await;
        }
    });
    let dst: SocketAddr = "198.51.100.53:53".parse().expect("literal");
    for (tag, client) in clients.iter().enumerate() {
        let socket = client.udp_socket().expect("socket");
        socket.send_to(b"ping", dst).await.expect("send");
        let (payload, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from())
            .await
            .expect("in time")
            .expect("reply");
        assert_eq!(&payload[..], &[&[tag as u8][..], b"ping"].concat()[..]);
        assert_eq!(from, dst);
    }
}
