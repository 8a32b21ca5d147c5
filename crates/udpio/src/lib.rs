//! Batched UDP I/O for relays and clients: many datagrams per system call.
//!
//! Receives use `recvmmsg` and UDP GRO (the kernel coalesces datagrams of one flow into one
//! buffer, split here by their stride); sends group consecutive datagrams to one destination
//! of one size into a single GSO send. Both come from `quinn-udp`, which falls back to
//! one datagram per call where the kernel lacks a feature; [`Offload::Off`] forces that
//! path (for tests, and for kernels whose offloads misbehave). A socket that falls behind
//! drops datagrams early and singly ([`codel`]) rather than late and in bursts.

pub mod codel;

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use codel::Codel;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Largest buffer one receive fills: a GRO super-datagram is at most 64 KiB.
const BUF_LEN: usize = 65_535;
/// Most bytes in one segmented send: the whole must fit one IP packet (IPv6 header and
/// UDP header included).
const MAX_SEND: usize = 65_535 - 48;

/// What each socket asks the kernel to buffer, each way. Linux's default (208 KiB, about
/// 90 full-size datagrams once the kernel's own overhead is counted) overflows when a TCP
/// window arrives at once: in the two-hop download test, with offloads off, close to half
/// of all datagrams were dropped there (`RcvbufErrors` in /proc/net/snmp), and the
/// userspace stacks, which have no selective acknowledgements, stalled for seconds to
/// recover. 256 KiB (the kernel doubles it for its bookkeeping: about 225 datagrams) holds
/// a whole window of those stacks (256 KiB of payload, about 190 datagrams) and lost none
/// in that test. More holds more queue behind a saturating flow: under the benchmark's TCP
/// upload two hops added 3.3 ms of round trip with 256 KiB, 4.4 to 4.9 with 512 KiB and
/// 6.0 with 4 MiB, against about 2 with the default. The kernel sets memory aside only
/// for what waits; this is a limit, not an allocation.
pub const SOCKET_BUFFER: usize = 256 << 10;

/// Whether to use the kernel's segmentation offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// GSO and GRO where the kernel has them.
    On,
    /// The plain path: one datagram per system call (`recv_from`, `send_to`).
    Off,
}

/// How a socket is set up. An [`Offload`] alone stands for itself with [`SOCKET_BUFFER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setup {
    /// Whether to use the kernel's segmentation offloads.
    pub offload: Offload,
    /// Bytes of kernel buffer to ask for each way. More rides out longer bursts without a
    /// drop, and holds a longer queue behind a flow that fills it ([`SOCKET_BUFFER`]).
    pub buffer: usize,
}

impl From<Offload> for Setup {
    fn from(offload: Offload) -> Self {
        Self {
            offload,
            buffer: SOCKET_BUFFER,
        }
    }
}

/// Buffers for one batch of receives and what the last batch put in them.
struct RecvBufs {
    bufs: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    filled: usize,
    /// Per receive of the last batch, the datagrams (bit `i`: the `i`th of a coalesced
    /// receive) that [`Codel`] dropped.
    late: [u64; BATCH_SIZE],
}

thread_local! {
    /// Buffers that the sockets of one thread use for [`BatchSocket::recv_each`], which
    /// hands a batch on before it returns: a socket per session then holds none of its
    /// own (each would be 2 MiB).
    static SHARED: RefCell<RecvBufs> = RefCell::new(RecvBufs::new());
    /// Where a run of datagrams is joined for one segmented send, reused by every send of
    /// the thread.
    static JOINED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl RecvBufs {
    fn new() -> Self {
        Self {
            bufs: (0..BATCH_SIZE).map(|_| vec![0; BUF_LEN]).collect(),
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            filled: 0,
            late: [0; BATCH_SIZE],
        }
    }

    /// One receive system call, if the socket has datagrams (`WouldBlock` if not).
    fn receive(&mut self, io: &UdpSocket, state: Option<&UdpSocketState>) -> io::Result<()> {
        self.filled = 0;
        self.late = [0; BATCH_SIZE];
        match state {
            Some(state) => {
                // On the stack: a receive allocates nothing.
                let mut bufs = self.bufs.iter_mut();
                let mut slices: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    IoSliceMut::new(bufs.next().map_or(&mut [][..], |b| &mut b[..]))
                });
                self.filled = state.recv(io.into(), &mut slices, &mut self.meta)?;
            }
            None => {
                let (Some(buf), Some(m)) = (self.bufs.first_mut(), self.meta.first_mut()) else {
                    return Ok(());
                };
                let (n, from) = io.try_recv_from(buf)?;
                m.addr = from;
                m.len = n;
                m.stride = n;
                // The buffers may be the thread's, last filled by a socket with offloads.
                m.timestamp = None;
                self.filled = 1;
            }
        }
        Ok(())
    }

    /// Receives of the last batch that the kernel coalesced.
    fn coalesced(&self) -> u64 {
        self.meta
            .iter()
            .take(self.filled)
            .filter(|m| m.stride > 0 && m.len > m.stride)
            .count() as u64
    }

    /// Lets `codel` judge each datagram of the last batch by how long its receive waited
    /// in the kernel's queue; returns how many it dropped. Receives without a kernel
    /// timestamp (the plain path) are all kept.
    fn police(&mut self, codel: &mut Codel) -> u64 {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mono = Instant::now();
        let mut dropped = 0;
        for (m, late) in self.meta.iter().zip(&mut self.late).take(self.filled) {
            let Some(stamp) = m.timestamp else { continue };
            // A wall clock that was stepped gives nonsense: no queue holds a second.
            let sojourn = now.saturating_sub(stamp);
            if sojourn > MAX_SOJOURN {
                continue;
            }
            for (i, len) in segment_lens(m).enumerate().take(GRO_MAX) {
                if !codel.keep(mono, sojourn, len) {
                    *late |= 1 << i;
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// The last batch's datagrams, in arrival order, coalesced ones split again, without
    /// those [`RecvBufs::police`] dropped.
    fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.meta
            .iter()
            .zip(&self.bufs)
            .zip(&self.late)
            .take(self.filled)
            .flat_map(|((m, b), &late)| {
                let data = b.get(..m.len).unwrap_or_default();
                let stride = stride(m);
                segment_lens(m)
                    .enumerate()
                    .filter(move |&(i, _)| i >= GRO_MAX || late & (1 << i) == 0)
                    .map(move |(i, len)| {
                        let start = i * stride;
                        (m.addr, data.get(start..start + len).unwrap_or_default())
                    })
            })
    }
}

/// Most datagrams the kernel coalesces into one receive (`UDP_GRO_CNT_MAX`): one bit each
/// in [`RecvBufs::late`].
const GRO_MAX: usize = 64;

/// Longest wait in a receive queue that is believed; see [`RecvBufs::police`].
const MAX_SOJOURN: Duration = Duration::from_secs(1);

/// How far apart the datagrams of a receive are (its whole length if not coalesced).
fn stride(m: &RecvMeta) -> usize {
    if m.stride == 0 {
        m.len.max(1)
    } else {
        m.stride
    }
}

/// The lengths of the datagrams in one receive, in order. An empty datagram is still one
/// datagram (relays count it as malformed).
fn segment_lens(m: &RecvMeta) -> impl Iterator<Item = usize> {
    let (len, stride) = (m.len, stride(m));
    let count = len.div_ceil(stride).max(1);
    (0..count).map(move |i| (len - (i * stride).min(len)).min(stride))
}

/// A UDP socket with batched receive and segmented send.
pub struct BatchSocket {
    io: UdpSocket,
    /// `None`: offloads off, plain calls.
    state: Option<UdpSocketState>,
    /// Made by the first [`BatchSocket::recv`]: a socket that only sends, or only uses
    /// [`BatchSocket::recv_each`], has none. Boxed, so that those hold a pointer rather
    /// than 312 bytes: a relay has a socket per session or flow.
    own: Option<Box<RecvBufs>>,
    max_segments: usize,
    /// Judges how long datagrams waited in the kernel's receive queue.
    codel: Mutex<Codel>,
    /// Receives that the kernel coalesced (GRO), for tests and reports.
    pub coalesced: AtomicU64,
    /// Datagrams dropped because they had waited too long in the receive queue
    /// ([`codel`]): the socket's reader fell behind.
    pub late: AtomicU64,
    /// Segmented sends (GSO), for tests and reports.
    pub segmented: AtomicU64,
}

impl BatchSocket {
    /// Wraps a bound tokio socket, with the buffers and offloads `setup` asks for.
    pub fn new(io: UdpSocket, setup: impl Into<Setup>) -> io::Result<Self> {
        let Setup { offload, buffer } = setup.into();
        grow_buffers(&io, buffer);
        // quinn-udp turns GRO on when it sets a socket up, so the plain path never does.
        let state = match offload {
            Offload::On => Some(UdpSocketState::new((&io).into())?),
            Offload::Off => None,
        };
        let max_segments = state.as_ref().map_or(1, |s| s.max_gso_segments().max(1));
        Ok(Self {
            io,
            state,
            own: None,
            max_segments,
            codel: Mutex::new(Codel::default()),
            coalesced: AtomicU64::new(0),
            late: AtomicU64::new(0),
            segmented: AtomicU64::new(0),
        })
    }

    /// Binds a socket at `addr`.
    pub async fn bind(addr: SocketAddr, setup: impl Into<Setup>) -> io::Result<Self> {
        Self::new(UdpSocket::bind(addr).await?, setup)
    }

    /// Binds `n` sockets at `addr` that share its port (`SO_REUSEPORT`): the kernel gives
    /// each peer address and port to one of them, always the same, so each can serve its
    /// own peers on its own thread.
    ///
    /// The port must be free: it is first bound alone, so a second relay started on a port
    /// that one already uses fails with `AddrInUse` instead of quietly taking half of its
    /// peers (the kernel lets sockets of one user join a `SO_REUSEPORT` group).
    pub fn bind_group(
        addr: SocketAddr,
        n: usize,
        setup: impl Into<Setup>,
    ) -> io::Result<Vec<Self>> {
        let setup = setup.into();
        let addr = std::net::UdpSocket::bind(addr)?.local_addr()?;
        (0..n.max(1))
            .map(|_| Self::bind_shared(addr, setup))
            .collect()
    }

    /// Binds one socket of a `SO_REUSEPORT` group (see [`BatchSocket::bind_group`]).
    fn bind_shared(addr: SocketAddr, setup: Setup) -> io::Result<Self> {
        let domain = socket2::Domain::for_address(addr);
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Self::new(UdpSocket::from_std(s.into())?, setup)
    }

    /// The same socket, registered with the tokio runtime this is called on instead of the
    /// one it was made on: a worker thread with a runtime of its own takes over a socket
    /// bound by the main runtime, so that its readiness does not pass through another thread.
    pub fn register_here(self) -> io::Result<Self> {
        let io = UdpSocket::from_std(self.io.into_std()?)?;
        Ok(Self { io, ..self })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Datagrams a single send may carry.
    pub fn max_segments(&self) -> usize {
        self.max_segments
    }

    /// Waits for datagrams and receives as many as one system call gives, into the
    /// socket's own buffers, for [`BatchSocket::received`].
    pub async fn recv(&mut self) -> io::Result<()> {
        let Self {
            io,
            state,
            own,
            codel,
            ..
        } = self;
        let bufs = own.get_or_insert_with(|| Box::new(RecvBufs::new()));
        io.async_io(Interest::READABLE, || bufs.receive(io, state.as_ref()))
            .await?;
        let late = codel.get_mut().map_or(0, |c| bufs.police(c));
        self.coalesced
            .fetch_add(bufs.coalesced(), Ordering::Relaxed);
        self.late.fetch_add(late, Ordering::Relaxed);
        Ok(())
    }

    /// Waits for datagrams, receives as many as one system call gives into buffers shared
    /// by this thread's sockets, and hands each to `each` (coalesced ones split again)
    /// before it returns. For sockets of which there are many, one per session: it returns
    /// how many datagrams it dropped as late, for a count over all of them.
    /// It takes `&self`: one socket can receive in one task and send in another.
    pub async fn recv_each(&self, mut each: impl FnMut(SocketAddr, &[u8])) -> io::Result<u64> {
        std::future::poll_fn(|cx| self.poll_recv_each(cx, &mut each)).await
    }

    /// [`BatchSocket::recv_each`] for a caller that polls many sockets itself: when nothing
    /// waits it returns `Pending` and wakes `cx` once something may.
    pub fn poll_recv_each(
        &self,
        cx: &mut Context<'_>,
        mut each: impl FnMut(SocketAddr, &[u8]),
    ) -> Poll<io::Result<u64>> {
        let Self {
            io, state, codel, ..
        } = self;
        loop {
            if let Err(e) = ready!(io.poll_recv_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let received = io.try_io(Interest::READABLE, || {
                SHARED.with_borrow_mut(|bufs| {
                    bufs.receive(io, state.as_ref())?;
                    let late = codel.lock().map_or(0, |mut c| bufs.police(&mut c));
                    for (from, d) in bufs.datagrams() {
                        each(from, d);
                    }
                    Ok((bufs.coalesced(), late))
                })
            });
            match received {
                Ok((coalesced, late)) => {
                    self.coalesced.fetch_add(coalesced, Ordering::Relaxed);
                    self.late.fetch_add(late, Ordering::Relaxed);
                    return Poll::Ready(Ok(late));
                }
                // A spurious readiness, now cleared: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Datagrams the kernel may coalesce into one receive (1: no GRO).
    pub fn gro_segments(&self) -> usize {
        self.state.as_ref().map_or(1, UdpSocketState::gro_segments)
    }

    /// The datagrams of the last [`BatchSocket::recv`], in arrival order, coalesced ones
    /// split again.
    pub fn received(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.own.iter().flat_map(|b| b.datagrams())
    }

    /// Sends datagrams in order. Runs of datagrams to one destination, all of one size
    /// (the last may be shorter), go out as one segmented send.
    pub async fn send_all<B: AsRef<[u8]>>(&self, datagrams: &[(SocketAddr, B)]) {
        let mut i = 0;
        // Taken, not borrowed: another send of this thread may run while this one waits.
        let mut joined = JOINED.take();
        while let Some((to, first)) = datagrams.get(i) {
            let first = first.as_ref();
            let size = first.len();
            let mut n = 1;
            while n < self.max_segments && (n + 1) * size <= MAX_SEND {
                match datagrams.get(i + n) {
                    Some((t, d)) if t == to && d.as_ref().len() <= size && size > 0 => {
                        n += 1;
                        if d.as_ref().len() < size {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let transmit = if n == 1 {
                Transmit {
                    destination: *to,
                    ecn: None,
                    contents: first,
                    segment_size: None,
                    src_ip: None,
                }
            } else {
                self.segmented.fetch_add(1, Ordering::Relaxed);
                joined.clear();
                for (_, d) in &datagrams[i..i + n] {
                    joined.extend_from_slice(d.as_ref());
                }
                Transmit {
                    destination: *to,
                    ecn: None,
                    contents: &joined,
                    segment_size: Some(size),
                    src_ip: None,
                }
            };
            // A send error (no route, full buffer) drops these datagrams, as a full NIC
            // queue would; WireGuard and the protocols inside retransmit.
            match &self.state {
                Some(state) => {
                    let _ = self
                        .io
                        .async_io(Interest::WRITABLE, || {
                            state.try_send((&self.io).into(), &transmit)
                        })
                        .await;
                }
                // What `UdpSocket::send_to` does, without its address lookup: a future of
                // 208 bytes instead of 432, and every task that sends holds one.
                None => {
                    let _ = self
                        .io
                        .async_io(Interest::WRITABLE, || {
                            self.io.try_send_to(transmit.contents, *to)
                        })
                        .await;
                }
            }
            i += n;
        }
        JOINED.set(joined);
    }
}

/// For reading the socket's options (its buffers, in tests and reports).
impl std::os::fd::AsFd for BatchSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.as_fd()
    }
}

/// Asks for `bytes` each way. With `CAP_NET_ADMIN` (relays and the whole-host client run
/// as root) the `FORCE` options pass the system's limit (`net.core.rmem_max`/`wmem_max`);
/// without it the kernel caps the plain ones at that limit. Where both fail the default
/// stays: more drops under bursts, nothing broken.
fn grow_buffers(io: &UdpSocket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt};
    let sock = socket2::SockRef::from(io);
    if setsockopt(io, sockopt::RcvBufForce, &bytes).is_err() {
        let _ = sock.set_recv_buffer_size(bytes);
    }
    if setsockopt(io, sockopt::SndBufForce, &bytes).is_err() {
        let _ = sock.set_send_buffer_size(bytes);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Woken(AtomicU64);

    impl std::task::Wake for Woken {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn polled_receives_wake_the_given_waker_and_hand_over_every_datagram() {
        for offload in [Offload::On, Offload::Off] {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let rx = BatchSocket::bind(lo, offload).await.unwrap();
            let tx = BatchSocket::bind(lo, offload).await.unwrap();
            let to = rx.local_addr().unwrap();
            let woken = std::sync::Arc::new(Woken::default());
            let waker = std::task::Waker::from(woken.clone());
            let mut cx = Context::from_waker(&waker);
            let mut got = Vec::new();
            assert!(rx
                .poll_recv_each(&mut cx, |_, d| got.push(d.to_vec()))
                .is_pending());
            let sent: Vec<(SocketAddr, Vec<u8>)> = (0..4u8).map(|i| (to, vec![i; 700])).collect();
            tx.send_all(&sent).await;
            // The runtime's I/O driver wakes the waker once the socket is readable.
            let deadline = Instant::now() + Duration::from_secs(5);
            while woken.0.load(Ordering::Relaxed) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "{offload:?}: the waker was not woken"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            while got.len() < sent.len() {
                match rx.poll_recv_each(&mut cx, |_, d| got.push(d.to_vec())) {
                    Poll::Ready(r) => {
                        r.unwrap();
                    }
                    Poll::Pending => {
                        assert!(Instant::now() < deadline, "{offload:?}: {got:?}");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            let sent: Vec<Vec<u8>> = sent.into_iter().map(|(_, d)| d).collect();
            assert_eq!(got, sent, "{offload:?}: every datagram, in order");
        }
    }

    /// Sends `datagrams` from one socket to another and returns what arrived.
    async fn round_trip(
        offload: Offload,
        datagrams: Vec<Vec<u8>>,
    ) -> (Vec<Vec<u8>>, BatchSocket, BatchSocket) {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut rx = BatchSocket::bind(lo, offload).await.unwrap();
        let tx = BatchSocket::bind(lo, offload).await.unwrap();
        let to = rx.local_addr().unwrap();
        let from = tx.local_addr().unwrap();
        let batch: Vec<(SocketAddr, Vec<u8>)> = datagrams.iter().map(|d| (to, d.clone())).collect();
        tx.send_all(&batch).await;
        let mut got = Vec::new();
        while got.len() < datagrams.len() {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("the datagrams arrive")
                .unwrap();
            for (addr, d) in rx.received() {
                assert_eq!(addr, from);
                got.push(d.to_vec());
            }
        }
        (got, rx, tx)
    }

    fn datagrams(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect()
    }

    #[tokio::test]
    async fn segmented_sends_and_coalesced_receives_are_byte_exact_and_in_order() {
        for offload in [Offload::On, Offload::Off] {
            // A run of MTU-sized datagrams with a short tail (one GSO send), sizes around
            // the MTU, and a run reaching the 64 KiB super-packet edge (44 × 1472).
            let mut sizes = vec![1420; 20];
            sizes.push(700);
            sizes.extend([1419, 1420, 1421, 1, 1472]);
            sizes.extend(std::iter::repeat_n(1472, 44));
            let sent = datagrams(&sizes);
            let (got, rx, tx) = round_trip(offload, sent.clone()).await;
            assert_eq!(got, sent, "{offload:?}");
            // The offload paths really ran where the kernel has them (loopback does).
            if offload == Offload::On && tx.max_segments() > 1 {
                assert!(tx.segmented.load(std::sync::atomic::Ordering::Relaxed) > 0);
            }
            if offload == Offload::On && rx.gro_segments() > 1 {
                assert!(
                    rx.coalesced.load(std::sync::atomic::Ordering::Relaxed) > 0,
                    "no receive was coalesced"
                );
            }
            if offload == Offload::Off {
                assert_eq!(rx.coalesced.load(std::sync::atomic::Ordering::Relaxed), 0);
                assert_eq!(tx.segmented.load(std::sync::atomic::Ordering::Relaxed), 0);
            }
        }
    }

    /// Sends rounds of datagrams that each wait `wait` in the receive queue; returns what
    /// arrived and how many the socket dropped as late.
    async fn after_waiting(
        offload: Offload,
        wait: std::time::Duration,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, u64) {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut rx = BatchSocket::bind(lo, offload).await.unwrap();
        let tx = BatchSocket::bind(lo, offload).await.unwrap();
        let to = rx.local_addr().unwrap();
        let (mut sent, mut got, mut said) = (Vec::new(), Vec::new(), 0);
        for round in 0..8 {
            let batch = datagrams(&[1400; 16]);
            let batch: Vec<Vec<u8>> = batch
                .into_iter()
                .map(|mut d| {
                    d[0] = round;
                    d
                })
                .collect();
            tx.send_all(&batch.iter().map(|d| (to, d.clone())).collect::<Vec<_>>())
                .await;
            sent.extend(batch);
            tokio::time::sleep(wait).await;
            // Odd rounds receive into the thread's buffers, which say what they dropped.
            let wait = std::time::Duration::from_millis(50);
            loop {
                if round % 2 == 1 {
                    let each = rx.recv_each(|_, d| got.push(d.to_vec()));
                    match tokio::time::timeout(wait, each).await {
                        Ok(r) => said += r.unwrap(),
                        Err(_) => break,
                    }
                    continue;
                }
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(r) => r.unwrap(),
                    Err(_) => break,
                }
                got.extend(rx.received().map(|(_, d)| d.to_vec()));
            }
        }
        let late = rx.late.load(Ordering::Relaxed);
        assert!(said <= late, "recv_each's drops are the socket's too");
        (sent, got, late)
    }

    #[tokio::test]
    async fn a_queue_that_stays_long_is_dropped_from_singly_and_the_rest_arrive_in_order() {
        let (sent, got, late) =
            after_waiting(Offload::On, codel::INTERVAL + codel::INTERVAL / 2).await;
        assert!(
            late > 0,
            "datagrams waited past the interval, again and again"
        );
        assert!(late < sent.len() as u64 / 4, "{late} of {}", sent.len());
        assert_eq!(got.len() as u64 + late, sent.len() as u64);
        let mut rest = sent.iter();
        assert!(
            got.iter().all(|g| rest.any(|s| s == g)),
            "the kept ones in order, unchanged"
        );
        // Received at once, or on the plain path (no kernel timestamps): nothing is dropped.
        let (sent, got, late) = after_waiting(Offload::On, std::time::Duration::ZERO).await;
        assert_eq!((got, late), (sent, 0));
        let (sent, got, late) = after_waiting(Offload::Off, codel::INTERVAL * 2).await;
        assert_eq!((got, late), (sent, 0));
    }

    #[tokio::test]
    async fn receives_into_the_threads_buffers_are_byte_exact_and_in_order() {
        for offload in [Offload::On, Offload::Off] {
            let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let a = BatchSocket::bind(lo, offload).await.unwrap();
            let b = BatchSocket::bind(lo, offload).await.unwrap();
            let tx = BatchSocket::bind(lo, offload).await.unwrap();
            let from = tx.local_addr().unwrap();
            let mut sizes = vec![1420; 20];
            sizes.extend([700, 1, 1472]);
            sizes.extend(std::iter::repeat_n(1472, 44));
            let sent = datagrams(&sizes);
            // Two sockets of one thread take turns with the same buffers.
            for rx in [&a, &b] {
                let to = rx.local_addr().unwrap();
                let batch: Vec<_> = sent.iter().map(|d| (to, d.clone())).collect();
                tx.send_all(&batch).await;
                let mut got = Vec::new();
                while got.len() < sent.len() {
                    let wait = std::time::Duration::from_secs(5);
                    tokio::time::timeout(
                        wait,
                        rx.recv_each(|addr, d| {
                            assert_eq!(addr, from);
                            got.push(d.to_vec());
                        }),
                    )
                    .await
                    .expect("the datagrams arrive")
                    .unwrap();
                }
                assert_eq!(got, sent, "{offload:?}");
                assert_eq!(rx.received().count(), 0, "recv_each kept nothing");
            }
            if offload == Offload::On && a.gro_segments() > 1 {
                let n = |s: &BatchSocket| s.coalesced.load(std::sync::atomic::Ordering::Relaxed);
                assert!(n(&a) + n(&b) > 0, "no receive was coalesced");
            }
        }
    }

    /// A burst of 200 full-size datagrams (a whole TCP window of the userspace stacks)
    /// waits whole until it is read; Linux's default buffer keeps about 90 of them.
    #[tokio::test]
    async fn a_burst_of_a_whole_tcp_window_waits_whole() {
        const BURST: usize = 200;
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Without root the kernel caps the buffer at net.core.rmem_max.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if !nix::unistd::geteuid().is_root() && rmem_max < SOCKET_BUFFER {
            eprintln!("skipped: not root, and net.core.rmem_max is {rmem_max}");
            return;
        }
        let mut rx = BatchSocket::bind(lo, Offload::Off).await.unwrap();
        let tx = std::net::UdpSocket::bind(lo).unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..BURST {
            tx.send_to(&[(i % 251) as u8; 1400], to).unwrap();
        }
        let mut got = 0;
        while let Ok(r) =
            tokio::time::timeout(std::time::Duration::from_millis(500), rx.recv()).await
        {
            r.unwrap();
            for (_, d) in rx.received() {
                assert_eq!(d, [(got % 251) as u8; 1400], "datagram {got} in order");
                got += 1;
            }
        }
        assert_eq!(got, BURST, "datagrams that waited for the reader");
    }

    /// A socket asks the kernel for the buffer its setup names, and an `Offload` alone for
    /// [`SOCKET_BUFFER`]. Linux reports twice what was asked (its bookkeeping's share).
    #[tokio::test]
    async fn a_socket_gets_the_buffer_its_setup_asks_for() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: without root the kernel caps buffers at net.core.rmem_max");
            return;
        }
        let sizes = |s: &BatchSocket| {
            let r = socket2::SockRef::from(&s.io);
            (r.recv_buffer_size().unwrap(), r.send_buffer_size().unwrap())
        };
        let plain = BatchSocket::bind(lo, Offload::On).await.unwrap();
        assert_eq!(sizes(&plain), (2 * SOCKET_BUFFER, 2 * SOCKET_BUFFER));
        let big = Setup {
            offload: Offload::On,
            buffer: 4 << 20,
        };
        let group = BatchSocket::bind_group(lo, 2, big).unwrap();
        for s in &group {
            assert_eq!(sizes(s), (8 << 20, 8 << 20));
        }
    }

    #[tokio::test]
    async fn an_empty_datagram_is_received_as_one() {
        for offload in [Offload::On, Offload::Off] {
            let (got, _, _) = round_trip(offload, vec![vec![], vec![7; 10]]).await;
            assert_eq!(got, vec![vec![], vec![7; 10]], "{offload:?}");
        }
    }

    #[tokio::test]
    async fn a_group_splits_peers_and_keeps_each_peer_on_one_socket() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut group = BatchSocket::bind_group(lo, 2, Offload::On).unwrap();
        let mut b = group.pop().unwrap();
        let mut a = group.pop().unwrap();
        let port = a.local_addr().unwrap();
        assert_eq!(b.local_addr().unwrap(), port);
        // 32 peers send 3 datagrams each: every peer lands on exactly one socket. The peers'
        // sockets stay open, or a later peer could be given a closed one's port.
        let mut peers = Vec::new();
        let mut open = Vec::new();
        for _ in 0..32 {
            let p = BatchSocket::bind(lo, Offload::Off).await.unwrap();
            let batch: Vec<(SocketAddr, Vec<u8>)> = (0..3u8).map(|i| (port, vec![i])).collect();
            p.send_all(&batch).await;
            peers.push(p.local_addr().unwrap());
            open.push(p);
        }
        let mut seen: std::collections::HashMap<SocketAddr, (usize, usize)> = Default::default();
        let mut total = 0;
        while total < 96 {
            tokio::select! {
                r = a.recv() => {
                    r.unwrap();
                    for (from, _) in a.received() {
                        seen.entry(from).or_default().0 += 1;
                        total += 1;
                    }
                }
                r = b.recv() => {
                    r.unwrap();
                    for (from, _) in b.received() {
                        seen.entry(from).or_default().1 += 1;
                        total += 1;
                    }
                }
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                    panic!("only {total} of 96 arrived")
                }
            }
        }
        assert_eq!(seen.len(), 32);
        for p in &peers {
            let (on_a, on_b) = seen[p];
            assert!(on_a == 0 || on_b == 0, "{p} was split: {on_a} and {on_b}");
            assert_eq!(on_a + on_b, 3);
        }
        let on_a = seen.values().filter(|(x, _)| *x > 0).count();
        assert!(on_a > 0 && on_a < 32, "all 32 peers on one socket");
    }

    #[tokio::test]
    async fn a_group_needs_a_free_port() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let group = BatchSocket::bind_group(lo, 2, Offload::On).unwrap();
        let taken = group[0].local_addr().unwrap();
        let again = BatchSocket::bind_group(taken, 2, Offload::On);
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        let plain = BatchSocket::bind(lo, Offload::Off).await.unwrap();
        let held = BatchSocket::bind_group(plain.local_addr().unwrap(), 1, Offload::On);
        assert_eq!(held.err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
    }

    #[tokio::test]
    async fn offload_off_sends_one_datagram_per_segment() {
        let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = BatchSocket::bind(lo, Offload::Off).await.unwrap();
        assert_eq!(s.max_segments(), 1);
    }
}
