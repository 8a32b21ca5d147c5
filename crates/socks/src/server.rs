//! The async side: accepting clients, driving the handshake and relaying.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};

use crate::dialer::{DatagramSocket, Dialer};
use crate::error::SessionError;
use crate::wire::{self, Command, Decoded, ReplyCode, Request, Target};

/// How long a client has from connecting to finishing its request.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`fail`] waits for a client to stop sending after a failure reply.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How many bytes [`fail`] discards at most after a failure reply.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Largest UDP payload plus header.
const MAX_DATAGRAM: usize = 65_535;

/// The bound address sent when there is nothing better to say.
const UNSPECIFIED: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// Serves SOCKS5 on `listener`, each client in its own task, until accepting fails.
///
/// Errors that concern one pending connection (it was aborted or reset before it was
/// accepted) are skipped; any other accept error is returned. Sessions already running
/// keep running after this returns.
pub async fn serve<D: Dialer>(listener: TcpListener, dialer: Arc<D>) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) =>
            {
                debug!(error = %e, "skipping a connection that failed before accept");
                continue;
            }
            Err(e) => return Err(e),
        };
        let dialer = Arc::clone(&dialer);
        tokio::spawn(async move {
            match serve_connection(stream, &*dialer).await {
                Ok(()) => debug!(%peer, "SOCKS session ended"),
                Err(e) => debug!(%peer, error = %e, "SOCKS session failed"),
            }
        });
    }
}

/// Runs one client's SOCKS5 session on an accepted connection, to the end.
///
/// For UDP ASSOCIATE the relay socket is bound on the connection's local IP, so a proxy
/// listening on loopback relays datagrams on loopback only.
pub async fn serve_connection<D: Dialer>(
    mut client: TcpStream,
    dialer: &D,
) -> Result<(), SessionError> {
    // Latency matters more than segment count for proxied interactive traffic; failing to
    // set it changes nothing else.
    let _ = client.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(512);
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut client, &mut buf))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)??;
    debug!(command = ?request.command, target = %request.target, "SOCKS request");
    match request.command {
        Command::Connect => connect(client, buf, dialer, request.target).await,
        Command::Bind => {
            fail(&mut client, ReplyCode::CommandNotSupported).await;
            Err(SessionError::BindNotSupported)
        }
        Command::UdpAssociate => associate(client, dialer, request.target).await,
    }
}

/// Reads the greeting, selects "no authentication" and reads the request. Bytes after the
/// request stay in `buf`.
async fn handshake(client: &mut TcpStream, buf: &mut BytesMut) -> Result<Request, SessionError> {
    // A greeting with the wrong version is not a SOCKS5 client: close without a reply,
    // which a SOCKS4 or HTTP client would misread anyway.
    let greeting = read_message(client, buf, wire::parse_greeting)
        .await?
        .map_err(SessionError::Malformed)?;
    if !greeting.offers(wire::METHOD_NO_AUTH) {
        let answer = wire::encode_method_selection(wire::METHOD_NONE_ACCEPTABLE);
        let _ = client.write_all(&answer).await;
        let _ = client.shutdown().await;
        return Err(SessionError::NoAcceptableMethod {
            offered: greeting.methods().to_vec(),
        });
    }
    client
        .write_all(&wire::encode_method_selection(wire::METHOD_NO_AUTH))
        .await
        .map_err(SessionError::Client)?;

    match read_message(client, buf, wire::parse_request).await? {
        Ok(request) => Ok(request),
        Err(e) => {
            if let Some(code) = e.reply_code() {
                fail(client, code).await;
            }
            Err(SessionError::Malformed(e))
        }
    }
}

/// Reads until `parse` finds a whole message at the front of `buf`, and removes it.
///
/// The outer error is the connection failing; the inner one is the bytes being wrong.
/// `buf` stays bounded because parsers only ask for more while the input is a strict
/// prefix of a (bounded) message.
async fn read_message<T>(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    parse: fn(&[u8]) -> Result<Decoded<T>, wire::WireError>,
) -> Result<Result<T, wire::WireError>, SessionError> {
    loop {
        match parse(buf) {
            Ok(Decoded::Complete(message, used)) => {
                buf.advance(used);
                return Ok(Ok(message));
            }
            Ok(Decoded::Incomplete) => {}
            Err(e) => return Ok(Err(e)),
        }
        let n = client.read_buf(buf).await.map_err(SessionError::Client)?;
        if n == 0 {
            return Err(SessionError::ClosedDuringHandshake);
        }
    }
}

/// Sends a failure reply and closes the sending side; errors are moot at this point.
///
/// Then it briefly discards what the client still sends (optimistic data behind a failed
/// request): closing a socket with unread bytes resets the connection, and the client
/// could lose the reply.
async fn fail(client: &mut TcpStream, code: ReplyCode) {
    let mut reply = Vec::with_capacity(10);
    wire::encode_reply(code, UNSPECIFIED, &mut reply);
    let _ = client.write_all(&reply).await;
    let _ = client.shutdown().await;
    let mut scratch = [0u8; 1024];
    let mut budget = DRAIN_LIMIT;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Ok(n @ 1..) = client.read(&mut scratch).await {
            budget = budget.saturating_sub(n);
            if budget == 0 {
                break;
            }
        }
    })
    .await;
}

/// CONNECT: dials, replies, then relays both ways until both sides are done.
async fn connect<D: Dialer>(
    mut client: TcpStream,
    pipelined: BytesMut,
    dialer: &D,
    target: Target,
) -> Result<(), SessionError> {
    let mut upstream = match dialer.connect(target.clone()).await {
        Ok(stream) => stream,
        Err(source) => {
            fail(&mut client, ReplyCode::from_io_error(&source)).await;
            return Err(SessionError::Connect { target, source });
        }
    };
    let mut reply = Vec::with_capacity(10);
    wire::encode_reply(ReplyCode::Succeeded, UNSPECIFIED, &mut reply);
    client
        .write_all(&reply)
        .await
        .map_err(SessionError::Client)?;
    // Data a client sent before seeing the reply (optimistic data) belongs to the target.
    if !pipelined.is_empty() {
        upstream
            .write_all(&pipelined)
            .await
            .map_err(|source| SessionError::Relay {
                target: target.clone(),
                source,
            })?;
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            debug!(%target, up, down, "CONNECT relay finished");
            Ok(())
        }
        Err(source) => Err(SessionError::Relay { target, source }),
    }
}

/// UDP ASSOCIATE: relays datagrams until the control connection closes.
async fn associate<D: Dialer>(
    mut client: TcpStream,
    dialer: &D,
    requested: Target,
) -> Result<(), SessionError> {
    let setup = async {
        let peer = client.peer_addr()?;
        let local = client.local_addr()?;
        let relay = UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await?;
        let relay_addr = relay.local_addr()?;
        io::Result::Ok((peer, relay, relay_addr))
    };
    let (peer, relay, relay_addr) = match setup.await {
        Ok(ok) => ok,
        Err(e) => {
            fail(&mut client, ReplyCode::GeneralFailure).await;
            return Err(SessionError::Udp(e));
        }
    };
    let upstream = match dialer.udp().await {
        Ok(socket) => socket,
        Err(e) => {
            fail(&mut client, ReplyCode::from_io_error(&e)).await;
            return Err(SessionError::Udp(e));
        }
    };
    let mut reply = Vec::with_capacity(22);
    wire::encode_reply(ReplyCode::Succeeded, relay_addr, &mut reply);
    client
        .write_all(&reply)
        .await
        .map_err(SessionError::Client)?;
    debug!(%relay_addr, %peer, "UDP association open");

    let filter = ClientFilter {
        ip: peer.ip().to_canonical(),
        port: requested.port(),
        locked: OnceLock::new(),
    };
    let result = tokio::select! {
        () = control_closed(&mut client) => Ok(()),
        r = uplink(&relay, &upstream, &filter) => r,
        r = downlink(&relay, &upstream, &filter) => r,
    };
    debug!(%relay_addr, "UDP association closed");
    result.map_err(SessionError::Udp)
}

/// Which datagrams on the relay socket come from the association's client.
struct ClientFilter {
    /// The control connection's peer IP: only it may use the association.
    ip: IpAddr,
    /// The port the client announced in its request, or 0 if it did not know it.
    port: u16,
    /// The exact source of the first accepted datagram; after that only it is accepted,
    /// and replies go there.
    locked: OnceLock<SocketAddr>,
}

impl ClientFilter {
    fn accept(&self, source: SocketAddr) -> bool {
        if let Some(locked) = self.locked.get() {
            return *locked == source;
        }
        if source.ip().to_canonical() != self.ip || (self.port != 0 && source.port() != self.port) {
            return false;
        }
        // Another datagram cannot race this one: uplink is the only caller.
        self.locked.get_or_init(|| source) == &source
    }
}

/// Resolves once the client closes (or breaks) the control connection. RFC 1928 gives
/// the connection nothing else to carry, so stray bytes are discarded.
async fn control_closed(client: &mut TcpStream) {
    let mut scratch = [0u8; 64];
    loop {
        match client.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Client to target: unwraps SOCKS UDP datagrams and sends their payloads.
async fn uplink<S: DatagramSocket>(
    relay: &UdpSocket,
    upstream: &S,
    filter: &ClientFilter,
) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, source) = match relay.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if transient(&e) => continue,
            Err(e) => return Err(e),
        };
        if !filter.accept(source) {
            debug!(%source, "dropping UDP datagram from a stranger");
            continue;
        }
        let datagram = match wire::parse_udp_datagram(buf.get(..n).unwrap_or_default()) {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "dropping malformed SOCKS UDP datagram");
                continue;
            }
        };
        if datagram.frag != 0 {
            debug!(
                frag = datagram.frag,
                "dropping fragmented SOCKS UDP datagram"
            );
            continue;
        }
        if let Err(e) = upstream
            .send_to(datagram.payload, datagram.target.clone())
            .await
        {
            debug!(target = %datagram.target, error = %e, "UDP send failed, datagram dropped");
        }
    }
}

/// Target to client: wraps received datagrams with their source and forwards them.
async fn downlink<S: DatagramSocket>(
    relay: &UdpSocket,
    upstream: &S,
    filter: &ClientFilter,
) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::with_capacity(MAX_DATAGRAM + wire::MAX_IP_UDP_HEADER_LEN);
    loop {
        let (n, source) = match upstream.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if transient(&e) => continue,
            Err(e) => return Err(e),
        };
        let Some(&client) = filter.locked.get() else {
            debug!(%source, "dropping UDP reply: the client has not sent anything yet");
            continue;
        };
        out.clear();
        wire::encode_udp_header(source, &mut out);
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Err(e) = relay.send_to(&out, client).await {
            if !transient(&e) {
                warn!(%client, error = %e, "UDP send to local client failed, datagram dropped");
            }
        }
    }
}

/// Errors a UDP socket reports for an earlier datagram (ICMP port unreachable and the
/// like): the socket itself still works.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
