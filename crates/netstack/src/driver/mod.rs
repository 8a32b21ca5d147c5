//! The tokio edge: runs a [`Stack`] in a task over packet channels, and offers async handles
//! ([`TcpFlow`], [`UdpSocket`], incoming flows and datagrams) to the rest of the program.
//!
//! The stack sits behind one mutex shared by the task and the handles; handles read and write
//! the stack's socket buffers directly (no second copy) and wake the task, which runs the
//! protocol at its deadlines. Memory is bounded by the per-flow TCP buffers and the bounded
//! channels: a slow reader closes its TCP window, a slow tunnel stops TCP sending.

mod lane;
mod tcp;
mod udp;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use crate::table::Table;
use crate::{Event, FlowId, Mode, Stack, StackError, Stats, UdpDatagram, Unreachable};
use lane::Lane;

pub use lane::{Incoming, StackInput};
pub use tcp::{IncomingTcp, TcpFlow};
pub use udp::UdpSocket;

/// Depth of the channels of incoming flows, incoming datagrams and per-socket datagrams;
/// beyond it flows are refused and datagrams dropped, as a full kernel queue would.
const CHANNEL_DEPTH: usize = 256;
/// Packets taken from the tunnel before the stack is polled again.
const RECEIVE_BATCH: usize = 64;

/// Start a task that runs `stack`: packets from the tunnel arrive on `ip_in`, packets for the
/// tunnel leave on `ip_out`. The task ends when either channel closes; handles then fail with
/// [`io::ErrorKind::BrokenPipe`]. Must be called within a tokio runtime.
pub fn spawn(
    stack: Stack,
    ip_in: mpsc::Receiver<Vec<u8>>,
    ip_out: mpsc::Sender<Vec<u8>>,
) -> StackHandle {
    let inner = Inner::new(stack, 0);
    tokio::spawn(run(
        Arc::clone(&inner),
        Input::Channel(ip_in),
        ip_out,
        |packet| packet,
    ));
    StackHandle { inner }
}

/// Like [`spawn`], for a caller that holds many stacks (an egress runs one per session):
/// packets from the tunnel are pushed through the returned [`StackInput`], up to `depth`
/// waiting, into a queue in the stack's own state that is made on the first packet; and
/// each packet for the tunnel is wrapped by `tag` before it goes on `ip_out`, so that many
/// stacks share one channel to the tunnel without a channel and a forwarding task of their
/// own. The task ends when the input is dropped, or when `ip_out` closes.
pub fn spawn_fed<T, F>(
    stack: Stack,
    depth: usize,
    ip_out: mpsc::Sender<T>,
    tag: F,
) -> (StackHandle, StackInput)
where
    T: Send + 'static,
    F: Fn(Vec<u8>) -> T + Send + 'static,
{
    let inner = Inner::new(stack, depth);
    tokio::spawn(run(Arc::clone(&inner), Input::Lane, ip_out, tag));
    let input = StackInput::new(Arc::clone(&inner));
    (StackHandle { inner }, input)
}

/// Async access to a stack run by [`spawn`]. Cheap to clone.
#[derive(Clone)]
pub struct StackHandle {
    inner: Arc<Inner>,
}

impl StackHandle {
    /// Client mode: open a TCP connection to `dst` through the tunnel. Fails with
    /// [`io::ErrorKind::ConnectionRefused`] when the far side answers RST, and
    /// [`io::ErrorKind::TimedOut`] when it never answers.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpFlow> {
        let flow = {
            let mut shared = self.inner.lock();
            shared.check_running()?;
            let flow = shared.stack.connect(dst)?;
            shared.wakers.insert(flow, FlowWakers::default());
            flow
        };
        self.inner.notify.notify_one();
        let flow = TcpFlow::new(Arc::clone(&self.inner), flow);
        flow.established().await?;
        Ok(flow)
    }

    /// Terminate mode: the stream of new TCP flows, each to be accepted or refused. Returns
    /// `None` in client mode or after the first call. Flows that arrive while the receiver is
    /// full or dropped are refused.
    pub fn incoming(&self) -> Option<Incoming<IncomingTcp>> {
        let terminate = self.inner.mode == Mode::Terminate;
        (terminate && self.inner.lock().incoming_tcp.take_receiver())
            .then(|| Incoming::new(Arc::clone(&self.inner), |s| &mut s.incoming_tcp))
    }

    /// Terminate mode: hand each new TCP flow to `take` as it arrives, instead of through
    /// [`incoming`](Self::incoming), so that no task of the caller's waits for them (an
    /// egress runs a stack per session). `take` runs on the stack's task, without the
    /// stack's lock held; it should hand the flow on (spawn a task for it) rather than wait.
    /// Returns false in client mode or when the flows are already taken.
    pub fn take_incoming<F>(&self, take: F) -> bool
    where
        F: FnMut(IncomingTcp) + Send + 'static,
    {
        if self.inner.mode != Mode::Terminate {
            return false;
        }
        let mut shared = self.inner.lock();
        if !shared.incoming_tcp.take_receiver() {
            return false;
        }
        shared.take_incoming = Some(Box::new(take));
        drop(shared);
        // Flows that came before are handed over on the task's next turn.
        self.inner.notify.notify_one();
        true
    }

    /// Terminate mode: the stream of UDP datagrams to any destination. Returns `None` in
    /// client mode or after the first call. Datagrams beyond the channel depth are dropped.
    pub fn incoming_udp(&self) -> Option<Incoming<UdpDatagram>> {
        let terminate = self.inner.mode == Mode::Terminate;
        (terminate && self.inner.lock().incoming_udp.take_receiver())
            .then(|| Incoming::new(Arc::clone(&self.inner), |s| &mut s.incoming_udp))
    }

    /// Client mode: a UDP socket on an ephemeral port of the tunnel address.
    pub fn udp_socket(&self) -> io::Result<UdpSocket> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        let port = {
            let mut shared = self.inner.lock();
            shared.check_running()?;
            let port = shared.stack.udp_bind(0)?;
            shared.udp_sockets.insert(port, tx);
            port
        };
        Ok(UdpSocket::new(Arc::clone(&self.inner), port, rx))
    }

    /// Terminate mode: answer a datagram; `from` is normally the datagram's destination.
    /// A datagram the tunnel has no room for is dropped, as UDP may be.
    pub fn udp_reply(&self, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.inner.send_udp(from, to, payload)
    }

    /// Terminate mode: refuse a datagram with ICMP destination unreachable.
    pub fn refuse_udp(&self, datagram: &UdpDatagram, reason: Unreachable) {
        self.inner.lock().stack.refuse_udp(datagram, reason);
        self.inner.notify.notify_one();
    }

    /// The stack's counters.
    pub fn stats(&self) -> Stats {
        self.inner.lock().stack.stats()
    }

    /// The stack's mode.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }
}

/// State shared by the task and the handles.
pub(crate) struct Inner {
    shared: Mutex<Shared>,
    /// Wakes the task after a handle changed the stack (data queued or read, flow closed).
    notify: Notify,
    mode: Mode,
}

impl Inner {
    /// The state of a stack about to run; `depth` bounds its input lane (used only by
    /// [`spawn_fed`]).
    fn new(stack: Stack, depth: usize) -> Arc<Self> {
        let mode = stack.mode();
        Arc::new(Inner {
            shared: Mutex::new(Shared {
                stack,
                wakers: Table::default(),
                udp_sockets: HashMap::new(),
                input: Lane::with_depth(depth),
                incoming_tcp: Lane::default(),
                take_incoming: None,
                incoming_udp: Lane::default(),
                stopped: false,
            }),
            notify: Notify::new(),
            mode,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// Queue a datagram and wake the task.
    fn send_udp(&self, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
        {
            let mut shared = self.lock();
            shared.check_running()?;
            match shared.stack.udp_send(from, to, payload) {
                Ok(()) | Err(StackError::TxQueueFull) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.notify.notify_one();
        Ok(())
    }
}

/// The stack and what the task needs to route its events.
pub(crate) struct Shared {
    stack: Stack,
    wakers: Table<FlowId, FlowWakers>,
    udp_sockets: HashMap<u16, mpsc::Sender<(SocketAddr, Vec<u8>)>>,
    /// Packets from the tunnel pushed through a [`StackInput`] ([`spawn_fed`]).
    input: Lane<Vec<u8>>,
    /// New TCP flows for [`StackHandle::incoming`] (terminate mode), or on their way to
    /// [`StackHandle::take_incoming`]'s function.
    incoming_tcp: Lane<IncomingTcp>,
    /// Where new TCP flows go, if the caller gave a function for them.
    take_incoming: Option<TakeIncoming>,
    /// Datagrams for [`StackHandle::incoming_udp`] (terminate mode).
    incoming_udp: Lane<UdpDatagram>,
    /// The task has ended; nothing will make progress any more.
    stopped: bool,
}

/// The function [`StackHandle::take_incoming`] was given.
type TakeIncoming = Box<dyn FnMut(IncomingTcp) + Send>;

/// Tasks waiting on one flow.
#[derive(Default)]
struct FlowWakers {
    read: Option<Waker>,
    write: Option<Waker>,
}

impl Shared {
    fn check_running(&self) -> io::Result<()> {
        if self.stopped {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the tunnel's packet channels are closed; the stack has stopped",
            ))
        } else {
            Ok(())
        }
    }

    /// Route the stack's events to waiting tasks and channels.
    fn dispatch_events(&mut self, inner: &Arc<Inner>) {
        while let Some(event) = self.stack.poll_event() {
            match event {
                Event::TcpIncoming { flow, src, dst } => {
                    let incoming = IncomingTcp::new(Arc::clone(inner), flow, src, dst);
                    let delivered = match self.incoming_tcp.push(incoming) {
                        Ok(()) => true,
                        Err(refused) => {
                            // Dropping it must not try to refuse under our lock.
                            refused.disarm();
                            false
                        }
                    };
                    if delivered {
                        self.wakers.insert(flow, FlowWakers::default());
                    } else {
                        let _ = self.stack.refuse(flow);
                    }
                }
                Event::TcpConnected { flow }
                | Event::TcpReadable { flow }
                | Event::TcpWritable { flow }
                | Event::TcpClosed { flow, .. } => {
                    if let Some(w) = self.wakers.get_mut(&flow) {
                        if let Some(r) = w.read.take() {
                            r.wake();
                        }
                        if let Some(w) = w.write.take() {
                            w.wake();
                        }
                    }
                }
                Event::Udp(datagram) => match self.stack.mode() {
                    Mode::Client => {
                        if let Some(tx) = self.udp_sockets.get(&datagram.dst.port()) {
                            let _ = tx.try_send((datagram.src, datagram.payload));
                        }
                    }
                    Mode::Terminate => {
                        if let Err(dropped) = self.incoming_udp.push(datagram) {
                            spare::give(dropped.payload);
                        }
                    }
                },
                // A client UDP socket is unconnected; like the kernel's, it does not report
                // ICMP errors.
                Event::UdpUnreachable { .. } => {}
            }
        }
    }

    /// New TCP flows for [`StackHandle::take_incoming`]'s function, with the function, to
    /// be called once the lock is released (it may accept or refuse a flow at once, which
    /// takes the lock). The queue's storage goes with them, so a stack holds none while no
    /// flow is arriving.
    fn arrived(&mut self) -> Option<(TakeIncoming, VecDeque<IncomingTcp>)> {
        if self.incoming_tcp.is_empty() {
            return None;
        }
        let take = self.take_incoming.take()?;
        Some((take, self.incoming_tcp.take_all()))
    }

    /// The stack has come to rest (every flow quiet, its queues given back): give back the
    /// memory of the task's empty queues and tables too. Done once per rest, not whenever a
    /// queue empties, so that traffic outside TCP flows costs no allocation per packet.
    fn shrink_idle(&mut self) {
        self.input.shrink_idle();
        self.incoming_tcp.shrink_idle();
        self.incoming_udp.shrink_idle();
        self.wakers.shrink_to_fit();
        self.udp_sockets.shrink_to_fit();
    }

    /// Wake everything: the task has stopped.
    fn stop(&mut self) {
        self.stopped = true;
        for (_, w) in self.wakers.drain() {
            for waker in [w.read, w.write].into_iter().flatten() {
                waker.wake();
            }
        }
        // What is waiting stays for the receivers; what none will take goes now (a waiting
        // flow holds the stack's state, which would then never be freed). The stack is gone:
        // nothing to refuse.
        self.incoming_tcp.close();
        self.incoming_udp.close();
        for flow in self.incoming_tcp.unclaimed() {
            flow.disarm();
        }
        if self.take_incoming.take().is_some() {
            for flow in self.incoming_tcp.drain() {
                flow.disarm();
            }
        }
        for datagram in self.incoming_udp.unclaimed() {
            spare::give(datagram.payload);
        }
        for packet in self.input.drain() {
            spare::give(packet);
        }
        self.udp_sockets.clear();
    }
}

/// Lock a mutex; a panic elsewhere does not make the stack's state unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The task: poll the stack, move packets, sleep until input, a handle's wake-up, room in
/// the tunnel or the stack's next deadline.
async fn run<T, F>(inner: Arc<Inner>, mut input: Input, ip_out: mpsc::Sender<T>, tag: F)
where
    F: Fn(Vec<u8>) -> T,
{
    loop {
        let (deadline, has_tx, tx_room, arrived) = {
            let mut shared = inner.lock();
            let now = Instant::now();
            shared.stack.poll(now);
            shared.dispatch_events(&inner);
            hand_over(&mut shared.stack, &ip_out, &tag);
            // Sending may have made room for smoltcp: let it fill the queue again.
            if shared.stack.transmit_queue_len() == 0 {
                shared.stack.poll(now);
                shared.dispatch_events(&inner);
                hand_over(&mut shared.stack, &ip_out, &tag);
            }
            if shared.stack.take_rested() {
                shared.shrink_idle();
            }
            (
                shared.stack.poll_at(Instant::now()),
                shared.stack.transmit_queue_len() > 0,
                shared.stack.transmit_has_room(),
                shared.arrived(),
            )
        };
        if let Some((mut take, flows)) = arrived {
            flows.into_iter().for_each(&mut take);
            inner.lock().take_incoming = Some(take);
        }
        // While the tunnel is full, smoltcp's deadline may be "now" for data it cannot send;
        // wait for room instead of spinning.
        let deadline = deadline.filter(|_| tx_room || !has_tx);
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            packet = input.recv(&inner) => {
                let Some(packet) = packet else { break };
                let mut shared = inner.lock();
                shared.stack.receive(&packet);
                spare::give(packet);
                for _ in 0..RECEIVE_BATCH {
                    let Some(packet) = input.try_recv(&mut shared) else { break };
                    shared.stack.receive(&packet);
                    spare::give(packet);
                }
            }
            permit = ip_out.reserve(), if has_tx => {
                let Ok(permit) = permit else { break };
                if let Some(packet) = inner.lock().stack.pop_transmit() {
                    permit.send(tag(packet));
                }
            }
            () = inner.notify.notified() => {}
            () = sleep => {}
        }
    }
    inner.lock().stop();
}

/// Hands the stack's packets to the tunnel, tagged, as many as it takes without waiting.
fn hand_over<T>(stack: &mut Stack, ip_out: &mpsc::Sender<T>, tag: impl Fn(Vec<u8>) -> T) {
    while let Ok(permit) = ip_out.try_reserve() {
        match stack.pop_transmit() {
            Some(packet) => permit.send(tag(packet)),
            None => break,
        }
    }
}

/// Where the task takes packets from the tunnel.
enum Input {
    /// A channel the caller sends into ([`spawn`]).
    Channel(mpsc::Receiver<Vec<u8>>),
    /// The stack's input lane, fed through a [`StackInput`] ([`spawn_fed`]).
    Lane,
}

impl Input {
    /// The next packet; `None` once the sender is gone and nothing is left.
    async fn recv(&mut self, inner: &Inner) -> Option<Vec<u8>> {
        match self {
            Input::Channel(rx) => rx.recv().await,
            Input::Lane => std::future::poll_fn(|cx| inner.lock().input.poll_pop(cx)).await,
        }
    }

    /// The next packet if one waits; `shared` is the lock the task holds.
    fn try_recv(&mut self, shared: &mut Shared) -> Option<Vec<u8>> {
        match self {
            Input::Channel(rx) => rx.try_recv().ok(),
            Input::Lane => shared.input.pop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::StackConfig;

    #[tokio::test]
    async fn a_resting_stack_gives_back_its_tasks_queues() {
        let now = Instant::now();
        let quiet = Some(Duration::from_millis(50));
        let mut config =
            StackConfig::new(Mode::Client, vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2))]);
        config.idle_buffers_after = quiet;
        let client = Stack::new(config, now).expect("config");
        let mut config = StackConfig::new(
            Mode::Terminate,
            vec![IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1))],
        );
        config.idle_buffers_after = quiet;
        let server = Stack::new(config, now).expect("config");
        let (c2s_tx, mut c2s_rx) = mpsc::channel(512);
        let (s2c_tx, s2c_rx) = mpsc::channel(512);
        let (out_tx, mut out_rx) = mpsc::channel::<((), Vec<u8>)>(512);
        let client = spawn(client, s2c_rx, c2s_tx);
        let (server, input) = spawn_fed(server, 1024, out_tx, |p| ((), p));
        tokio::spawn(async move {
            while let Some(p) = c2s_rx.recv().await {
                let _ = input.push(p);
            }
        });
        tokio::spawn(async move {
            while let Some(((), p)) = out_rx.recv().await {
                if s2c_tx.send(p).await.is_err() {
                    return;
                }
            }
        });
        assert!(server.take_incoming(|flow| {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(flow.accept().await.expect("accept"));
                tokio::io::copy(&mut r, &mut w).await.expect("echo");
            });
        }));
        let flow = client
            .connect("198.51.100.1:7".parse().expect("literal"))
            .await
            .expect("connect");
        let (mut r, mut w) = tokio::io::split(flow);
        let data = vec![7; 200 * 1024];
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w
        });
        let mut back = vec![0; data.len()];
        r.read_exact(&mut back).await.expect("echoed");
        let _w = writer.await.expect("writer");
        assert!(back == data);
        assert!(
            server.inner.lock().input.capacity() > 0,
            "the input queue grew for the traffic"
        );

        tokio::time::timeout(Duration::from_secs(5), async {
            while server.stats().buffers_given_back == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the quiet flow gives its buffers back");
        // The stack came to rest under the lock that also shrank the task's queues.
        let shared = server.inner.lock();
        assert_eq!(shared.input.capacity(), 0, "input queue given back");
        assert_eq!(
            shared.incoming_tcp.capacity(),
            0,
            "incoming queue given back"
        );
    }
}
