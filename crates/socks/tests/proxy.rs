//! The proxy end to end over real sockets: a `Dialer` backed by the OS, a local HTTP-ish
//! origin and UDP echo server, and real `curl` or a small SOCKS5 client as the application.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socks::wire::{self, Command, Decoded, Reply, ReplyCode, Request};
use socks::{DatagramSocket, Dialer, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{lookup_host, TcpListener, TcpStream, UdpSocket};
use tokio::process::Command as Process;
use tokio::time::timeout;

const BODY: &str = "hello through the proxy";
const CURL: &str = "/usr/bin/curl";
const WAIT: Duration = Duration::from_secs(10);

/// Dials with the OS, recording what it was asked for.
#[derive(Default)]
struct OsDialer {
    targets: Mutex<Vec<Target>>,
    live_udp: Arc<AtomicUsize>,
}

impl OsDialer {
    fn targets(&self) -> Vec<Target> {
        self.targets.lock().unwrap().clone()
    }
}

impl Dialer for OsDialer {
    type Stream = TcpStream;
    type Datagram = OsDatagram;

    async fn connect(&self, target: Target) -> io::Result<TcpStream> {
        self.targets.lock().unwrap().push(target.clone());
        let addrs: Vec<SocketAddr> = match target {
            Target::Ip(addr) => vec![addr],
            Target::Domain(host, port) => lookup_host((host.as_str(), port)).await?.collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "name resolved to nothing");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn udp(&self) -> io::Result<OsDatagram> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        self.live_udp.fetch_add(1, Ordering::SeqCst);
        Ok(OsDatagram {
            socket,
            live: Arc::clone(&self.live_udp),
        })
    }
}

/// An IPv4 UDP socket that counts itself while alive.
struct OsDatagram {
    socket: UdpSocket,
    live: Arc<AtomicUsize>,
}

impl Drop for OsDatagram {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DatagramSocket for OsDatagram {
    async fn send_to(&self, payload: &[u8], target: Target) -> io::Result<()> {
        let addr = match target {
            Target::Ip(addr) => addr,
            Target::Domain(host, port) => lookup_host((host.as_str(), port))
                .await?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"))?,
        };
        self.socket.send_to(payload, addr).await.map(drop)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket.recv_from(buf).await
    }
}

/// A proxy on 127.0.0.1 serving until the test ends.
async fn start_proxy() -> (SocketAddr, Arc<OsDialer>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dialer = Arc::new(OsDialer::default());
    let serving = Arc::clone(&dialer);
    tokio::spawn(async move { socks::serve(listener, serving).await });
    (addr, dialer)
}

/// An origin that answers every request with [`BODY`] and closes.
async fn start_http() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// A UDP server that sends every datagram back to where it came from.
async fn start_udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            socket.send_to(&buf[..n], from).await.unwrap();
        }
    });
    addr
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn curl(proxy_flag: &str, proxy: SocketAddr, url: &str) -> std::process::Output {
    Process::new(CURL)
        .args([
            "-sS",
            "--max-time",
            "10",
            proxy_flag,
            &proxy.to_string(),
            url,
        ])
        .output()
        .await
        .expect("run curl")
}

async fn assert_curl_fetches(proxy_flag: &str, proxy: SocketAddr, url: &str) {
    let out = curl(proxy_flag, proxy, url).await;
    assert!(
        out.status.success(),
        "curl {proxy_flag} {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), BODY);
}

/// Connects to the proxy and completes method negotiation.
async fn negotiated(proxy: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(&[5, 1, wire::METHOD_NO_AUTH])
        .await
        .unwrap();
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [5, wire::METHOD_NO_AUTH]);
    stream
}

async fn send_request(stream: &mut TcpStream, command: Command, target: Target) {
    let mut bytes = Vec::new();
    wire::encode_request(&Request { command, target }, &mut bytes).unwrap();
    stream.write_all(&bytes).await.unwrap();
}

/// Reads one reply, leaving anything after it unread.
async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    loop {
        if let Decoded::Complete(reply, _) = wire::parse_reply(&buf).unwrap() {
            return reply;
        }
        let byte = timeout(WAIT, stream.read_u8()).await.unwrap().unwrap();
        buf.push(byte);
    }
}

async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "unexpected bytes {rest:?}");
}

#[tokio::test]
async fn curl_socks5_hostname_sends_the_domain() {
    let (proxy, dialer) = start_proxy().await;
    let origin = start_http().await;
    let url = format!("http://localhost:{}/", origin.port());
    assert_curl_fetches("--socks5-hostname", proxy, &url).await;
    assert_eq!(
        dialer.targets(),
        [Target::Domain("localhost".into(), origin.port())]
    );
}

#[tokio::test]
async fn curl_socks5_hostname_with_an_ip_url() {
    let (proxy, dialer) = start_proxy().await;
    let origin = start_http().await;
    assert_curl_fetches("--socks5-hostname", proxy, &format!("http://{origin}/")).await;
    assert_eq!(dialer.targets(), [Target::Ip(origin)]);
}

#[tokio::test]
async fn curl_socks5_resolves_locally_and_sends_an_ip() {
    let (proxy, dialer) = start_proxy().await;
    let origin = start_http().await;
    assert_curl_fetches("--socks5", proxy, &format!("http://{origin}/")).await;
    assert_eq!(dialer.targets(), [Target::Ip(origin)]);
}

#[tokio::test]
async fn refused_connection_fails_curl_and_the_proxy_stays_up() {
    let (proxy, _dialer) = start_proxy().await;
    let origin = start_http().await;
    let closed = closed_port().await;

    let out = curl("--socks5", proxy, &format!("http://127.0.0.1:{closed}/")).await;
    assert!(
        !out.status.success(),
        "curl should fail on a refused target"
    );
    assert!(out.stdout.is_empty());

    // The same failure seen by a raw client: reply code 0x05, then the proxy closes.
    let mut stream = negotiated(proxy).await;
    let target = Target::Ip(SocketAddr::from(([127, 0, 0, 1], closed)));
    send_request(&mut stream, Command::Connect, target).await;
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::ConnectionRefused
    );
    assert_closed(&mut stream).await;

    // With data pipelined behind the request, the client still gets the reply.
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut bytes = vec![5, 1, wire::METHOD_NO_AUTH];
    let request = Request {
        command: Command::Connect,
        target: Target::Ip(SocketAddr::from(([127, 0, 0, 1], closed))),
    };
    wire::encode_request(&request, &mut bytes).unwrap();
    bytes.extend_from_slice(&[b'x'; 4096]);
    stream.write_all(&bytes).await.unwrap();
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::ConnectionRefused
    );
    assert_closed(&mut stream).await;

    assert_curl_fetches("--socks5-hostname", proxy, &format!("http://{origin}/")).await;
}

#[tokio::test]
async fn pipelined_greeting_request_and_data() {
    let (proxy, _dialer) = start_proxy().await;
    let origin = start_http().await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let mut bytes = Vec::new();
    wire::encode_greeting(&[0x02, wire::METHOD_NO_AUTH], &mut bytes).unwrap();
    wire::encode_request(
        &Request {
            command: Command::Connect,
            target: Target::Ip(origin),
        },
        &mut bytes,
    )
    .unwrap();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: origin\r\n\r\n");
    stream.write_all(&bytes).await.unwrap();

    let mut rest = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&rest[..2], [5, wire::METHOD_NO_AUTH]);
    let Decoded::Complete(reply, used) = wire::parse_reply(&rest[2..]).unwrap() else {
        panic!("no reply in {rest:?}");
    };
    assert_eq!(reply.code, ReplyCode::Succeeded);
    let http = String::from_utf8(rest[2 + used..].to_vec()).unwrap();
    assert!(http.starts_with("HTTP/1.1 200 OK"), "{http}");
    assert!(http.ends_with(BODY), "{http}");
}

#[tokio::test]
async fn bind_is_not_supported() {
    let (proxy, dialer) = start_proxy().await;
    let mut stream = negotiated(proxy).await;
    let target = Target::Ip(SocketAddr::from(([0, 0, 0, 0], 0)));
    send_request(&mut stream, Command::Bind, target).await;
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::CommandNotSupported
    );
    assert_closed(&mut stream).await;
    assert!(dialer.targets().is_empty());
}

#[tokio::test]
async fn malformed_requests_get_their_reply_codes() {
    let (proxy, dialer) = start_proxy().await;

    let mut stream = negotiated(proxy).await;
    stream.write_all(&[5, 0x09, 0, 1]).await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::CommandNotSupported
    );
    assert_closed(&mut stream).await;

    let mut stream = negotiated(proxy).await;
    stream.write_all(&[5, 1, 0, 0x07]).await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::AddressTypeNotSupported
    );
    assert_closed(&mut stream).await;

    let mut stream = negotiated(proxy).await;
    stream.write_all(&[5, 1, 0, 3, 0, 0, 80]).await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await.code,
        ReplyCode::GeneralFailure
    );
    assert_closed(&mut stream).await;

    assert!(dialer.targets().is_empty());
}

#[tokio::test]
async fn clients_without_no_auth_are_refused() {
    let (proxy, _dialer) = start_proxy().await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(&[5, 1, 0x02]).await.unwrap();
    let mut answer = [0u8; 2];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [5, wire::METHOD_NONE_ACCEPTABLE]);
    assert_closed(&mut stream).await;

    // Not SOCKS5 at all: closed without an answer.
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert_closed(&mut stream).await;
}

/// Sends one datagram through the association and returns what comes back.
async fn round_trip(client: &UdpSocket, relay: SocketAddr, to: &Target, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::new();
    wire::encode_udp_datagram(to, payload, &mut datagram).unwrap();
    client.send_to(&datagram, relay).await.unwrap();
    recv(client).await.expect("no UDP reply")
}

async fn recv(client: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(Duration::from_millis(500), client.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some(buf[..n].to_vec())
}

#[tokio::test]
async fn udp_associate_round_trip_and_teardown() {
    let (proxy, dialer) = start_proxy().await;
    let echo = start_udp_echo().await;

    let mut control = negotiated(proxy).await;
    let unknown = Target::Ip(SocketAddr::from(([0, 0, 0, 0], 0)));
    send_request(&mut control, Command::UdpAssociate, unknown).await;
    let reply = read_reply(&mut control).await;
    assert_eq!(reply.code, ReplyCode::Succeeded);
    let Target::Ip(relay) = reply.bound else {
        panic!("relay address is {:?}", reply.bound);
    };
    assert_eq!(relay.ip(), proxy.ip());
    assert_eq!(dialer.live_udp.load(Ordering::SeqCst), 1);

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // By IP: the reply carries the echo server's address as its source.
    let back = round_trip(&client, relay, &Target::Ip(echo), b"ping").await;
    let parsed = wire::parse_udp_datagram(&back).unwrap();
    assert_eq!(parsed.frag, 0);
    assert_eq!(parsed.target, Target::Ip(echo));
    assert_eq!(parsed.payload, b"ping");

    // By name, resolved by the dialer.
    let by_name = Target::Domain("localhost".into(), echo.port());
    let back = round_trip(&client, relay, &by_name, b"by name").await;
    let parsed = wire::parse_udp_datagram(&back).unwrap();
    assert_eq!(parsed.target, Target::Ip(echo));
    assert_eq!(parsed.payload, b"by name");

    // Fragments are dropped.
    let mut fragment = Vec::new();
    wire::encode_udp_datagram(&Target::Ip(echo), b"fragment", &mut fragment).unwrap();
    fragment[2] = 1;
    client.send_to(&fragment, relay).await.unwrap();
    assert_eq!(recv(&client).await, None);

    // Once the first datagram has arrived, other source ports are strangers.
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut datagram = Vec::new();
    wire::encode_udp_datagram(&Target::Ip(echo), b"stranger", &mut datagram).unwrap();
    stranger.send_to(&datagram, relay).await.unwrap();
    assert_eq!(recv(&stranger).await, None);
    assert_eq!(recv(&client).await, None);

    // The association still works, and ends with its control connection.
    let back = round_trip(&client, relay, &Target::Ip(echo), b"still here").await;
    assert_eq!(
        wire::parse_udp_datagram(&back).unwrap().payload,
        b"still here"
    );
    drop(control);
    timeout(WAIT, async {
        while dialer.live_udp.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("association not torn down after the control connection closed");
    client.send_to(&datagram, relay).await.unwrap();
    assert_eq!(recv(&client).await, None);
}

#[tokio::test]
async fn udp_associate_honours_the_announced_port() {
    let (proxy, _dialer) = start_proxy().await;
    let echo = start_udp_echo().await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let mut control = negotiated(proxy).await;
    let announced = Target::Ip(client.local_addr().unwrap());
    send_request(&mut control, Command::UdpAssociate, announced).await;
    let Target::Ip(relay) = read_reply(&mut control).await.bound else {
        panic!("relay address is not an IP");
    };

    let mut datagram = Vec::new();
    wire::encode_udp_datagram(&Target::Ip(echo), b"wrong port", &mut datagram).unwrap();
    other.send_to(&datagram, relay).await.unwrap();
    assert_eq!(recv(&other).await, None);

    let back = round_trip(&client, relay, &Target::Ip(echo), b"right port").await;
    assert_eq!(
        wire::parse_udp_datagram(&back).unwrap().payload,
        b"right port"
    );
}
