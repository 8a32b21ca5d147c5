//! The egress's UDP flows, relayed by the worker's loop itself. A datagram needs no
//! userspace stack: it is parsed (`netstack::plain_udp`), sent on from a socket of its
//! flow's own (one per client endpoint, as a NAT keeps a mapping), and each reply is
//! written as an IP packet straight into the buffer the session seals. No task, channel or
//! stack per session or flow, so a session that only sends UDP holds a socket per flow and
//! nothing else; a datagram is sent on from the packet it came in, and a reply is copied
//! once, into that buffer.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use netstack::{PlainUdp, Unreachable};
use tokio::sync::mpsc;
use tunnel::wire::{emit_udp, udp_packet_len, UdpChecksum};

use super::ready::{Polled, Ready};
use super::resolve::Lookups;
use super::{Observation, Observer};
use crate::counters::Counters;
use crate::policy::DestinationPolicy;
use crate::table::{SessionId, SessionTable, TableEvent};
use crate::udp::{BatchSocket, Setup};

/// A flow: a session and the client's address and port it sends from.
pub(super) type FlowKey = (SessionId, SocketAddr);

/// A name lookup's answer for a session: (session, from the resolver's address, to the
/// client, the DNS message).
pub(super) type Answer = (SessionId, SocketAddr, SocketAddr, Vec<u8>);

/// Answers to name lookups that may wait for a worker's loop; a lookup's task waits when
/// there are more.
const ANSWERS: usize = 256;
/// Flows one session may have open. A flow is a client endpoint, not a destination (an
/// application's one port reaches any number of peers), so this is far beyond what a host
/// uses, and it keeps one session from taking the relay's file descriptors from the rest.
pub(super) const MAX_FLOWS_PER_SESSION: usize = 256;

/// The sessions whose packets the flows carry: the worker's [`SessionTable`] (through
/// [`Sealer`]), or a test's record.
pub(super) trait Sessions {
    /// Seals a packet of `len` bytes, which `fill` writes, for session `id`.
    fn seal(&mut self, id: SessionId, len: usize, fill: impl FnOnce(&mut [u8]));
    /// The session's client as this relay sees it, for the observer.
    fn peer(&self, id: SessionId) -> Option<SocketAddr>;
    fn counters(&mut self) -> &mut Counters;
}

/// The worker's session table at one moment, and where its sealed packets go.
pub(super) struct Sealer<'a> {
    pub table: &'a mut SessionTable,
    pub now: Instant,
    pub events: &'a mut Vec<TableEvent>,
}

impl Sessions for Sealer<'_> {
    fn seal(&mut self, id: SessionId, len: usize, fill: impl FnOnce(&mut [u8])) {
        self.table.send_with(self.now, id, len, fill, self.events);
    }

    fn peer(&self, id: SessionId) -> Option<SocketAddr> {
        self.table.peer_addr(id)
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.table.counters
    }
}

/// What the flows of one worker's sessions need to know.
pub(super) struct FlowSettings {
    pub policy: Arc<DestinationPolicy>,
    /// The tunnel MTU: no larger reply fits back into the tunnel.
    pub mtu: u16,
    /// A flow with no datagram either way for this long releases its socket.
    pub idle: Duration,
    /// How each flow's socket is set up.
    pub socket: Setup,
    pub observer: Option<Observer>,
}

/// One worker's UDP flows.
pub(super) struct UdpFlows {
    settings: FlowSettings,
    /// Flows in session order: a closed session's are a range, dropped at once. (A map per
    /// session held room for several flows where most sessions have one or a few.)
    flows: BTreeMap<FlowKey, Arc<Polled<FlowKey, Flow>>>,
    /// When the flows' last-activity times count from.
    epoch: Instant,
    ready: Arc<Ready<FlowKey>>,
    woken: Vec<FlowKey>,
    /// Datagrams taken this turn, in arrival order, for [`UdpFlows::flush`]. A list for
    /// the turn rather than one per flow: an idle flow holds no room for datagrams.
    outgoing: Vec<(FlowKey, SocketAddr, Payload)>,
    /// One flow's run of them, as its socket sends it.
    run: Vec<(SocketAddr, Payload)>,
    answers: mpsc::Sender<Answer>,
    /// The worker's name lookups under way.
    lookups: Lookups,
    /// Datagrams the flows' sockets dropped as late, for the counters.
    pub(super) late: u64,
}

/// A flow's socket, listed for the loop when it becomes readable (see [`Polled`]).
struct Flow {
    socket: BatchSocket,
    /// The last datagram either way, in milliseconds from [`UdpFlows::epoch`] (shared
    /// with the socket's waker, hence atomic).
    last: AtomicU64,
}

impl Flow {
    fn touch(&self, at: u64) {
        self.last.store(at, Ordering::Relaxed);
    }
}

/// A datagram's payload where it lies in the packet that brought it: sent without a copy.
pub(super) struct Payload {
    packet: Vec<u8>,
    at: Range<usize>,
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self.packet.get(self.at.clone()).unwrap_or_default()
    }
}

impl UdpFlows {
    /// The flows, and where name lookups' answers come back (for the loop to wait on).
    pub(super) fn new(settings: FlowSettings) -> (Self, mpsc::Receiver<Answer>) {
        let (answers, answers_rx) = mpsc::channel(ANSWERS);
        let flows = Self {
            settings,
            flows: BTreeMap::new(),
            epoch: Instant::now(),
            ready: Arc::new(Ready::default()),
            woken: Vec::new(),
            outgoing: Vec::new(),
            run: Vec::new(),
            answers,
            lookups: Lookups::default(),
            late: 0,
        };
        (flows, answers_rx)
    }

    /// The list of flows whose sockets have replies, for the loop to wait on.
    pub(super) fn ready(&self) -> Arc<Ready<FlowKey>> {
        Arc::clone(&self.ready)
    }

    /// Takes a datagram from session `id`'s tunnel: queued for its flow's socket (opened
    /// now if need be), answered here (names), or refused with ICMP (policy).
    pub(super) fn take(
        &mut self,
        sessions: &mut impl Sessions,
        now: Instant,
        id: SessionId,
        packet: Vec<u8>,
        d: PlainUdp,
    ) {
        let payload = Payload {
            packet,
            at: d.payload,
        };
        if d.dst == names::server() {
            match self.lookups.start(payload.as_ref()) {
                Ok(lookup) => {
                    let tx = self.answers.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = lookup.await {
                            let _ = tx.send((id, d.dst, d.src, reply)).await;
                        }
                    });
                }
                Err(busy) => {
                    sessions.counters().drop(crate::counters::Drop::Capacity);
                    if let Some(reply) = busy {
                        self.answer(sessions, (id, d.dst, d.src, reply));
                    }
                }
            }
            return spare::give(payload.packet);
        }
        if self.settings.policy.check(d.dst).is_err() {
            sessions.counters().drop(crate::counters::Drop::Policy);
            if let Some(icmp) =
                netstack::unreachable(d.src, d.dst, payload.as_ref(), Unreachable::Prohibited)
            {
                sessions.seal(id, icmp.len(), |buf| buf.copy_from_slice(&icmp));
            }
            return spare::give(payload.packet);
        }
        if !self.flows.contains_key(&(id, d.src)) {
            let open = if self.count(id) >= MAX_FLOWS_PER_SESSION {
                Err(std::io::Error::other("the session has too many UDP flows"))
            } else {
                open(d.dst, self.settings.socket)
            };
            let socket = match open {
                Ok(socket) => socket,
                // Dropped and counted; a log line per datagram would be a flood.
                Err(e) => {
                    tracing::debug!("cannot open a UDP flow: {e}");
                    sessions.counters().drop(crate::counters::Drop::Capacity);
                    return spare::give(payload.packet);
                }
            };
            let last = AtomicU64::new(millis(self.epoch, now));
            let flow = self.ready.add((id, d.src), Flow { socket, last });
            self.flows.insert((id, d.src), flow);
            sessions.counters().udp_flows_opened += 1;
            if let (Some(obs), Some(peer)) = (&self.settings.observer, sessions.peer(id)) {
                let _ = obs.send(Observation::Egress {
                    peer,
                    destination: d.dst,
                });
            }
        }
        let counters = sessions.counters();
        counters.forwarded += 1;
        counters.forwarded_bytes += payload.packet.len() as u64;
        self.outgoing.push(((id, d.src), d.dst, payload));
    }

    /// Sends what [`UdpFlows::take`] queued this turn, flow by flow in the order each
    /// flow's datagrams came: a run of one flow's datagrams to one destination, all of one
    /// size, goes out in one segmented send.
    pub(super) async fn flush(&mut self, now: Instant, counters: &mut Counters) {
        // Stable: each flow's datagrams keep their order.
        self.outgoing.sort_by_key(|(key, _, _)| *key);
        let mut queued = self.outgoing.drain(..).peekable();
        while let Some(((id, src), dst, payload)) = queued.next() {
            self.run.push((dst, payload));
            while let Some((_, dst, payload)) = queued.next_if(|(k, _, _)| *k == (id, src)) {
                self.run.push((dst, payload));
            }
            if let Some(flow) = self.flows.get(&(id, src)) {
                let before = flow.socket.segmented.load(Ordering::Relaxed);
                flow.socket.send_all(&self.run).await;
                let after = flow.socket.segmented.load(Ordering::Relaxed);
                counters.udp_segmented += after.saturating_sub(before);
                flow.touch(millis(self.epoch, now));
            }
            for (_, p) in self.run.drain(..) {
                spare::give(p.packet);
            }
        }
    }

    /// Reads the replies waiting on the flows whose sockets woke, and seals each for its
    /// session as an IP packet from the address that sent it.
    pub(super) fn receive(&mut self, sessions: &mut impl Sessions, now: Instant) {
        self.ready.take(&mut self.woken);
        let mtu = usize::from(self.settings.mtu);
        let at = millis(self.epoch, now);
        for (id, client) in self.woken.drain(..) {
            let Some(flow) = self.flows.get(&(id, client)) else {
                continue;
            };
            let got = flow.read(|flow, cx| {
                flow.socket.poll_recv_each(cx, |from, d| {
                    match udp_packet_len(from, client, d.len()) {
                        Ok(len) if len <= mtu => sessions.seal(id, len, |buf| {
                            let _ = emit_udp(from, client, d, UdpChecksum::Compute, buf);
                        }),
                        // Larger than the tunnel carries: dropped.
                        _ => sessions.counters().udp_too_large += 1,
                    }
                })
            });
            match got {
                Poll::Ready(Ok(late)) => {
                    self.late += late;
                    flow.touch(at);
                }
                // An error (an ICMP error queued on the socket, say) loses nothing.
                Poll::Ready(Err(e)) => tracing::debug!("UDP flow receive error: {}", e.kind()),
                Poll::Pending => {}
            }
        }
    }

    /// Seals a name lookup's answer for its session.
    pub(super) fn answer(&self, sessions: &mut impl Sessions, (id, from, to, reply): Answer) {
        match udp_packet_len(from, to, reply.len()) {
            Ok(len) if len <= usize::from(self.settings.mtu) => sessions.seal(id, len, |buf| {
                let _ = emit_udp(from, to, &reply, UdpChecksum::Compute, buf);
            }),
            _ => sessions.counters().udp_too_large += 1,
        }
    }

    /// The keys of a session's flows, in order.
    fn keys_of(&self, id: SessionId) -> impl Iterator<Item = FlowKey> + '_ {
        // The least address sorts first (IPv4 before IPv6).
        let first = (id, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        self.flows
            .range(first..)
            .map(|(k, _)| *k)
            .take_while(move |k| k.0 == id)
    }

    /// How many flows a session has open (counted up to the limit).
    fn count(&self, id: SessionId) -> usize {
        self.keys_of(id).take(MAX_FLOWS_PER_SESSION).count()
    }

    /// Closes a session's flows (the session is gone).
    pub(super) fn close_session(&mut self, id: SessionId, counters: &mut Counters) {
        let keys: Vec<FlowKey> = self.keys_of(id).collect();
        for k in &keys {
            self.flows.remove(k);
        }
        counters.udp_flows_closed += keys.len() as u64;
    }

    /// Closes the flows quiet for the idle time.
    pub(super) fn expire(&mut self, now: Instant, counters: &mut Counters) {
        let idle = u64::try_from(self.settings.idle.as_millis()).unwrap_or(u64::MAX);
        let now = millis(self.epoch, now);
        let before = self.flows.len();
        self.flows
            .retain(|_, f| now.saturating_sub(f.last.load(Ordering::Relaxed)) < idle);
        counters.udp_flows_closed += (before - self.flows.len()) as u64;
    }
}

/// `now` in milliseconds from `epoch`.
fn millis(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// A socket for a flow to `dst`, on an ephemeral port of its address family.
fn open(dst: SocketAddr, setup: Setup) -> std::io::Result<BatchSocket> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    BatchSocket::new(tokio::net::UdpSocket::from_std(socket)?, setup)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::Ipv4Addr;

    use tokio::net::UdpSocket;
    use tunnel::wire::{build_udp, parse_udp};

    use super::*;
    use crate::udp::Offload;

    const CLIENT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)), 40_000);
    const ID: SessionId = SessionId(7);
    const MTU: u16 = 1420;
    const IDLE: Duration = Duration::from_secs(60);

    /// Sessions that keep what is sealed for them.
    #[derive(Default)]
    struct Record {
        sealed: Vec<(SessionId, Vec<u8>)>,
        counters: Counters,
    }

    impl Sessions for Record {
        fn seal(&mut self, id: SessionId, len: usize, fill: impl FnOnce(&mut [u8])) {
            let mut buf = vec![0; len];
            fill(&mut buf);
            self.sealed.push((id, buf));
        }

        fn peer(&self, _: SessionId) -> Option<SocketAddr> {
            None
        }

        fn counters(&mut self) -> &mut Counters {
            &mut self.counters
        }
    }

    fn flows(offload: Offload, allowed: &str) -> UdpFlows {
        UdpFlows::new(FlowSettings {
            policy: Arc::new(DestinationPolicy::new(
                vec![allowed.parse().unwrap()],
                Vec::new(),
            )),
            mtu: MTU,
            idle: IDLE,
            socket: offload.into(),
            observer: None,
        })
        .0
    }

    /// A destination on loopback, and flows that may reach it.
    async fn setup(offload: Offload) -> (UdpSocket, SocketAddr, UdpFlows, Record) {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = dest.local_addr().unwrap();
        (dest, to, flows(offload, "127.0.0.0/8"), Record::default())
    }

    /// Hands `payload` from the client to `to` to the flows, as the tunnel delivers it.
    fn take(
        flows: &mut UdpFlows,
        sessions: &mut Record,
        now: Instant,
        to: SocketAddr,
        payload: &[u8],
    ) {
        let ip = build_udp(CLIENT, to, payload).unwrap();
        let d = netstack::plain_udp(&ip).expect("a plain datagram");
        flows.take(sessions, now, ID, ip, d);
    }

    /// Reads replies until `n` are sealed, waiting for the flows' sockets as the loop does.
    async fn replies(flows: &mut UdpFlows, sessions: &mut Record, n: usize) {
        let ready = flows.ready();
        while sessions.sealed.len() < n {
            tokio::time::timeout(
                Duration::from_secs(5),
                std::future::poll_fn(|cx| ready.poll_woken(cx)),
            )
            .await
            .expect("the replies wake the loop");
            flows.receive(sessions, Instant::now());
        }
    }

    async fn recv(dest: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), dest.recv_from(&mut buf))
            .await
            .expect("the datagram reaches the destination")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    /// A burst of one flow taken in one turn: it reaches the destination byte-exact and in
    /// order, and the replies come back into the session as IP packets from the
    /// destination to the client, in order too. Returns the segmented sends counted.
    async fn burst(offload: Offload) -> u64 {
        let (dest, to, mut flows, mut sessions) = setup(offload).await;
        let now = Instant::now();
        // Around the MTU: the largest payload the tunnel carries, and smaller ones.
        let max = usize::from(MTU) - 28;
        let sent: Vec<Vec<u8>> = (0..8u8)
            .map(|i| vec![i; if i < 6 { max } else { 1000 }])
            .collect();
        for payload in &sent {
            take(&mut flows, &mut sessions, now, to, payload);
        }
        flows.flush(now, &mut sessions.counters).await;
        let mut got = Vec::new();
        let mut source = None;
        while got.len() < sent.len() {
            let (d, from) = recv(&dest).await;
            assert_eq!(*source.get_or_insert(from), from, "one socket for the flow");
            dest.send_to(&d, from).await.unwrap();
            got.push(d);
        }
        assert_eq!(got, sent, "byte-exact and in order");
        replies(&mut flows, &mut sessions, sent.len()).await;
        let back: Vec<Vec<u8>> = sessions
            .sealed
            .iter()
            .map(|(id, ip)| {
                assert_eq!(*id, ID);
                let d = parse_udp(ip).expect("a valid IP packet with a valid checksum");
                assert_eq!(
                    (d.src, d.dst),
                    (to, CLIENT),
                    "a reply comes from where it was sent"
                );
                d.payload.to_vec()
            })
            .collect();
        assert_eq!(back, sent, "replies byte-exact and in order");
        let c = &sessions.counters;
        assert_eq!((c.udp_flows_opened, c.forwarded), (1, sent.len() as u64));
        c.udp_segmented
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_burst_of_one_flow_leaves_in_segmented_sends_and_its_replies_come_back_in_order() {
        let segmented = burst(Offload::On).await;
        let probe =
            BatchSocket::new(UdpSocket::bind("127.0.0.1:0").await.unwrap(), Offload::On).unwrap();
        if probe.max_segments() > 1 {
            // The six of the largest size and the first smaller one in one segmented send
            // (a run may end with a shorter datagram), the last alone.
            assert_eq!(
                segmented, 1,
                "the burst went out in one segmented send and one plain"
            );
        }
    }

    /// A flow's socket is made with the buffers of the relay's config, like its port's.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flows_socket_gets_the_buffers_it_is_set_up_with() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: without root the kernel caps buffers at net.core.rmem_max");
            return;
        }
        let (_dest, to, mut flows, mut sessions) = setup(Offload::On).await;
        flows.settings.socket.buffer = 1 << 20;
        let now = Instant::now();
        take(&mut flows, &mut sessions, now, to, b"a datagram");
        flows.flush(now, &mut sessions.counters).await;
        let flow = flows
            .flows
            .values()
            .next()
            .expect("the datagram opened a flow");
        let s = socket2::SockRef::from(&flow.socket);
        // Linux reports twice what was asked (its bookkeeping's share).
        assert_eq!(s.recv_buffer_size().unwrap(), 2 << 20);
        assert_eq!(s.send_buffer_size().unwrap(), 2 << 20);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn with_offloads_off_a_burst_goes_out_datagram_by_datagram_in_order() {
        assert_eq!(burst(Offload::Off).await, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reply_larger_than_the_tunnel_mtu_is_dropped_and_counted() {
        let (dest, to, mut flows, mut sessions) = setup(Offload::On).await;
        let now = Instant::now();
        take(&mut flows, &mut sessions, now, to, b"hello");
        flows.flush(now, &mut sessions.counters).await;
        let (_, from) = recv(&dest).await;
        let max = usize::from(MTU) - 28;
        dest.send_to(&vec![1; max + 1], from).await.unwrap();
        dest.send_to(&vec![2; max], from).await.unwrap();
        replies(&mut flows, &mut sessions, 1).await;
        let ip = &sessions.sealed[0].1;
        assert_eq!(ip.len(), usize::from(MTU));
        assert_eq!(parse_udp(ip).unwrap().payload, &vec![2; max][..]);
        assert_eq!(sessions.counters.udp_too_large, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_destination_gets_icmp_prohibited_and_no_socket() {
        let mut flows = flows(Offload::On, "127.0.0.0/8");
        let mut sessions = Record::default();
        let to: SocketAddr = "192.0.2.1:53".parse().unwrap();
        take(&mut flows, &mut sessions, Instant::now(), to, b"query");
        assert_eq!(sessions.counters.dropped_policy, 1);
        assert_eq!(sessions.counters.udp_flows_opened, 0);
        assert!(flows.flows.is_empty());
        let (id, icmp) = &sessions.sealed[0];
        assert_eq!(*id, ID);
        // ICMPv4 destination unreachable (type 3), communication administratively
        // prohibited (code 13), from the refused address to the client.
        assert_eq!(icmp[9], 1, "ICMP");
        assert_eq!(&icmp[12..16], &[192, 0, 2, 1]);
        assert_eq!(&icmp[16..20], &[100, 64, 0, 2]);
        assert_eq!((icmp[20], icmp[21]), (3, 13));
    }

    /// A flow that only sends stays one flow (one source port at the destination) while it
    /// sends, however long; once quiet for the idle time it closes, and the next datagram
    /// opens a new one.
    #[tokio::test(flavor = "current_thread")]
    async fn a_flow_lives_while_either_side_sends_and_closes_when_quiet() {
        let (dest, to, mut flows, mut sessions) = setup(Offload::On).await;
        let start = Instant::now();
        let mut ports = Vec::new();
        for step in 0..4u32 {
            let now = start + IDLE / 2 * step;
            flows.expire(now, &mut sessions.counters);
            take(&mut flows, &mut sessions, now, to, b"tick");
            flows.flush(now, &mut sessions.counters).await;
            ports.push(recv(&dest).await.1.port());
        }
        assert!(ports.iter().all(|&p| p == ports[0]), "one flow: {ports:?}");
        assert_eq!(sessions.counters.udp_flows_closed, 0);

        let later = start + IDLE / 2 * 3 + IDLE;
        flows.expire(later, &mut sessions.counters);
        assert_eq!(sessions.counters.udp_flows_closed, 1);
        assert!(flows.flows.is_empty());
        take(&mut flows, &mut sessions, later, to, b"again");
        flows.flush(later, &mut sessions.counters).await;
        assert_ne!(
            recv(&dest).await.1.port(),
            ports[0],
            "a new flow, a new socket"
        );
        assert_eq!(sessions.counters.udp_flows_opened, 2);

        // Another session's flows, from the same client endpoint and others.
        for (other, port) in [
            (SessionId(6), 40_000),
            (SessionId(8), 1),
            (SessionId(8), 40_000),
        ] {
            let from = SocketAddr::new(CLIENT.ip(), port);
            let ip = build_udp(from, to, b"other").unwrap();
            let d = netstack::plain_udp(&ip).unwrap();
            flows.take(&mut sessions, later, other, ip, d);
        }
        flows.flush(later, &mut sessions.counters).await;
        assert_eq!(flows.flows.len(), 4);
        flows.close_session(ID, &mut sessions.counters);
        assert_eq!(sessions.counters.udp_flows_closed, 2);
        let left: Vec<_> = flows
            .flows
            .keys()
            .map(|(id, from)| (id.0, from.port()))
            .collect();
        assert_eq!(left, [(6, 40_000), (8, 1), (8, 40_000)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_session_opens_at_most_its_share_of_flows() {
        let dest = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = dest.local_addr().unwrap();
        let mut flows = flows(Offload::Off, "127.0.0.0/8");
        let mut sessions = Record::default();
        let now = Instant::now();
        for port in 1..=MAX_FLOWS_PER_SESSION as u16 + 10 {
            let from = SocketAddr::new(CLIENT.ip(), port);
            for other in [ID, SessionId(8)] {
                let ip = build_udp(from, to, b"x").unwrap();
                let d = netstack::plain_udp(&ip).unwrap();
                flows.take(&mut sessions, now, other, ip, d);
            }
            flows.flush(now, &mut sessions.counters).await;
        }
        let c = &sessions.counters;
        assert_eq!(c.udp_flows_opened, 2 * MAX_FLOWS_PER_SESSION as u64);
        assert_eq!(c.dropped_capacity, 20);
        assert_eq!(flows.count(ID), MAX_FLOWS_PER_SESSION);
        // An open flow still carries datagrams.
        let from = SocketAddr::new(CLIENT.ip(), 1);
        let ip = build_udp(from, to, b"still").unwrap();
        let d = netstack::plain_udp(&ip).unwrap();
        flows.take(&mut sessions, now, ID, ip, d);
        assert_eq!(sessions.counters.dropped_capacity, 20);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn name_lookups_beyond_the_limit_are_answered_servfail_at_once() {
        let mut flows = flows(Offload::Off, "127.0.0.0/8");
        let mut sessions = Record::default();
        let _all = flows.lookups.fill();
        let query = names::build_query(0x1234, "example.com", names::Kind::A).unwrap();
        let ip = build_udp(CLIENT, names::server(), &query).unwrap();
        let d = netstack::plain_udp(&ip).unwrap();
        flows.take(&mut sessions, Instant::now(), ID, ip, d);
        assert_eq!(sessions.counters.dropped_capacity, 1);
        let (id, ip) = &sessions.sealed[0];
        assert_eq!(*id, ID);
        let reply = parse_udp(ip).unwrap();
        assert_eq!((reply.src, reply.dst), (names::server(), CLIENT));
        let answer = names::parse_response(reply.payload, 0x1234, "example.com", names::Kind::A);
        assert!(
            matches!(answer, Err(names::DnsError::ServerFailure { .. })),
            "{answer:?}"
        );
        assert!(flows.flows.is_empty(), "a name lookup opens no flow");
    }
}
