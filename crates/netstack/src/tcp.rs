//! TCP flows: opening, reading, writing, closing and freeing them, and turning smoltcp socket
//! wake-ups into [`Event`]s without scanning every flow.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};
use std::time::Instant;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, CongestionControl, RecvError, SendError};
use smoltcp::time::Duration as SmolDuration;

use crate::error::{FlowError, StackError};
use crate::event::{CloseReason, Event, TcpState};
use crate::idle::{Quiet, ShrinkIfEmpty};
use crate::wire::Syn;
use crate::{Congestion, FlowId, Mode, Stack};

/// Bookkeeping for one TCP flow.
#[derive(Debug)]
pub(crate) struct Flow {
    /// `None` while a terminate-mode SYN waits for a decision, or after the socket was freed.
    pub(crate) socket: Option<SocketHandle>,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// The state last reported through events.
    pub(crate) state: TcpState,
    pub(crate) opened_at: Instant,
    /// The caller gave the flow up; free it once TCP is done with it.
    pub(crate) released: bool,
    /// Since when it moved no data, and whether its buffers' pages went back meanwhile.
    pub(crate) quiet: Quiet,
    /// The socket's receive and send wakers, made once and re-armed by cloning (a cloned
    /// waker shares its allocation).
    pub(crate) wakers: Option<[Waker; 2]>,
}

impl Flow {
    /// The flow's socket, or why it has none to read or write.
    fn open_socket(&self) -> Result<SocketHandle, FlowError> {
        match (self.socket, self.state) {
            (Some(handle), _) => Ok(handle),
            (None, TcpState::Closed(reason)) => Err(reason_error(reason)),
            (None, _) => Err(FlowError::NotConnected),
        }
    }
}

/// Which half of a socket woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Recv,
    Send,
}

impl Direction {
    const BOTH: [Self; 2] = [Self::Recv, Self::Send];

    fn index(self) -> usize {
        match self {
            Self::Recv => 0,
            Self::Send => 1,
        }
    }
}

/// Flows whose socket woke since the last poll. Filled by smoltcp through [`FlowWaker`]s.
#[derive(Debug, Default)]
pub(crate) struct ReadyList(Mutex<Vec<(FlowId, Direction)>>);

impl ReadyList {
    fn push(&self, entry: (FlowId, Direction)) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }

    /// Gives back the list's memory if it is empty (see [`Stack::shrink_idle`]).
    pub(crate) fn shrink_idle(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shrink_if_empty();
    }

    /// Moves the flows that woke into `out`, which must be empty; the list keeps `out`'s
    /// allocation, so neither side allocates again once both have grown.
    pub(crate) fn swap_into(&self, out: &mut Vec<(FlowId, Direction)>) {
        debug_assert!(out.is_empty());
        std::mem::swap(
            &mut *self.0.lock().unwrap_or_else(PoisonError::into_inner),
            out,
        );
    }
}

/// A waker that smoltcp fires on a socket's data, space or state change; it records the flow
/// so that `poll` looks only at flows that changed.
struct FlowWaker {
    flow: FlowId,
    direction: Direction,
    ready: Arc<ReadyList>,
}

impl Wake for FlowWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push((self.flow, self.direction));
    }
}

impl Stack {
    /// Client mode: open a TCP connection from this stack's tunnel address (ephemeral port)
    /// to `dst`. The SYN goes out on the next [`poll`](Self::poll); an
    /// [`Event::TcpConnected`] or [`Event::TcpClosed`] follows.
    pub fn connect(&mut self, dst: SocketAddr) -> Result<FlowId, StackError> {
        if self.config.mode != Mode::Client {
            return Err(StackError::WrongMode {
                op: "connect",
                mode: self.config.mode,
            });
        }
        if dst.port() == 0 || !crate::stack::is_unicast(dst.ip()) {
            return Err(StackError::InvalidDestination(dst));
        }
        let src_ip = self
            .source_for(dst.ip())
            .ok_or(StackError::NoSourceAddress(dst))?;
        if self.flows.len() >= self.config.max_flows {
            return Err(StackError::TooManyFlows {
                max: self.config.max_flows,
            });
        }
        let port = self
            .allocate_port(false)
            .ok_or(StackError::PortsExhausted)?;
        let local = SocketAddr::new(src_ip, port);
        let mut socket = self.new_socket();
        if socket.connect(self.iface.context(), dst, local).is_err() {
            self.tcp_ports.remove(&port);
            return Err(StackError::InvalidDestination(dst));
        }
        let handle = self.sockets.add(socket);
        let id = self.next_flow_id();
        self.flows.insert(
            id,
            Box::new(Flow {
                socket: Some(handle),
                local,
                remote: dst,
                state: TcpState::Connecting,
                opened_at: self.now,
                released: false,
                quiet: Quiet::new(self.now),
                wakers: None,
            }),
        );
        self.tuples.insert((dst, local), id);
        self.register_wakers(id, handle);
        self.note_activity(id);
        self.stats.flows_opened += 1;
        Ok(id)
    }

    /// Queue `data` for sending; returns how much fitted in the send buffer.
    /// [`FlowError::WouldBlock`] means the buffer is full: wait for [`Event::TcpWritable`].
    pub fn send(&mut self, flow: FlowId, data: &[u8]) -> Result<usize, FlowError> {
        let entry = self
            .flows
            .get_mut(&flow)
            .ok_or(FlowError::UnknownFlow(flow))?;
        let handle = entry.open_socket()?;
        match self.sockets.get_mut::<tcp::Socket>(handle).send_slice(data) {
            Ok(0) if !data.is_empty() => Err(FlowError::WouldBlock),
            Ok(n) => {
                if n > 0 {
                    self.idle
                        .moved(&mut entry.quiet, self.config.idle_buffers_after, self.now);
                }
                Ok(n)
            }
            Err(SendError::InvalidState) => Err(self.unusable(flow)),
        }
    }

    /// Read received data into `buf`. `Ok(0)` (for a non-empty `buf`) is the end of the stream:
    /// the peer sent FIN. [`FlowError::WouldBlock`] means nothing has arrived yet: wait for
    /// [`Event::TcpReadable`]. Call [`poll`](Self::poll) afterwards so the window reopens.
    pub fn recv(&mut self, flow: FlowId, buf: &mut [u8]) -> Result<usize, FlowError> {
        let entry = self
            .flows
            .get_mut(&flow)
            .ok_or(FlowError::UnknownFlow(flow))?;
        let handle = match entry.open_socket() {
            Ok(handle) => handle,
            Err(FlowError::Closed) => return Ok(0),
            Err(e) => return Err(e),
        };
        match self.sockets.get_mut::<tcp::Socket>(handle).recv_slice(buf) {
            Ok(0) if !buf.is_empty() => Err(FlowError::WouldBlock),
            Ok(n) => {
                if n > 0 {
                    self.idle
                        .moved(&mut entry.quiet, self.config.idle_buffers_after, self.now);
                }
                Ok(n)
            }
            Err(RecvError::Finished) => Ok(0),
            Err(RecvError::InvalidState) => match self.unusable(flow) {
                FlowError::Closed => Ok(0),
                e => Err(e),
            },
        }
    }

    /// Bytes received and not yet read.
    pub fn recv_queue(&self, flow: FlowId) -> usize {
        self.socket(flow).map_or(0, |s| s.recv_queue())
    }

    /// Bytes queued for sending and not yet acknowledged.
    pub fn send_queue(&self, flow: FlowId) -> usize {
        self.socket(flow).map_or(0, |s| s.send_queue())
    }

    /// Close the sending half: FIN goes out after the queued data. Reading continues until
    /// the peer's FIN. Closing twice does nothing.
    pub fn close(&mut self, flow: FlowId) -> Result<(), FlowError> {
        let handle = match self.flows.get(&flow).map(|f| f.socket) {
            None => return Err(FlowError::UnknownFlow(flow)),
            Some(None) => return Ok(()),
            Some(Some(h)) => h,
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let was_connecting = matches!(socket.state(), tcp::State::SynSent);
        socket.close();
        if was_connecting {
            // A SYN-SENT socket closes without a word; report it as aborted.
            self.mark_closed(flow, CloseReason::Aborted);
        }
        Ok(())
    }

    /// Abort the flow: RST goes out on the next poll and buffered data is discarded.
    pub fn abort(&mut self, flow: FlowId) -> Result<(), FlowError> {
        let handle = match self.flows.get(&flow).map(|f| f.socket) {
            None => return Err(FlowError::UnknownFlow(flow)),
            Some(None) => return Ok(()),
            Some(Some(h)) => h,
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if socket.state() != tcp::State::Closed {
            socket.abort();
            self.mark_closed(flow, CloseReason::Aborted);
        }
        Ok(())
    }

    /// Give the flow up. An open flow is closed like a socket that is dropped: FIN if all
    /// received data was read, RST otherwise (data would be lost). The flow and its socket are
    /// freed once TCP has finished; its id is never reported again.
    pub fn release(&mut self, flow: FlowId) {
        if self.pending.contains(flow) {
            // Undecided SYN: releasing means refusing.
            let _ = self.refuse(flow);
            return;
        }
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        entry.released = true;
        let Some(handle) = entry.socket else {
            self.reap.push(flow);
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        if !finished(socket) {
            if socket.recv_queue() > 0 {
                socket.abort();
            } else {
                socket.close();
            }
        }
        if finished(socket) {
            self.reap.push(flow);
        }
    }

    /// The flow's state, or `None` for an unknown or released flow.
    pub fn state(&self, flow: FlowId) -> Option<TcpState> {
        let entry = self.flows.get(&flow).filter(|f| !f.released)?;
        Some(match entry.socket {
            None => entry.state,
            Some(handle) => self.map_state(entry, self.sockets.get::<tcp::Socket>(handle)),
        })
    }

    /// The flow's (local, remote) endpoints: in terminate mode local is the client's
    /// requested destination.
    pub fn endpoints(&self, flow: FlowId) -> Option<(SocketAddr, SocketAddr)> {
        self.flows.get(&flow).map(|f| (f.local, f.remote))
    }

    /// A TCP socket configured for a tunnel flow.
    pub(crate) fn new_socket(&self) -> tcp::Socket<'static> {
        let c = &self.config;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; c.tcp_rx_buffer]),
            tcp::SocketBuffer::new(vec![0; c.tcp_tx_buffer]),
        );
        // The edge proxies whole writes; Nagle would only add latency.
        socket.set_nagle_enabled(false);
        socket.set_timeout(c.tcp_timeout.map(SmolDuration::from));
        socket.set_keep_alive(c.tcp_keep_alive.map(SmolDuration::from));
        socket.set_congestion_control(match c.congestion {
            Congestion::None => CongestionControl::None,
            Congestion::Reno => CongestionControl::Reno,
            Congestion::Cubic => CongestionControl::Cubic,
        });
        socket
    }

    /// Ask smoltcp to tell us (through the ready list) when the flow's socket changes.
    pub(crate) fn register_wakers(&mut self, flow: FlowId, handle: SocketHandle) {
        let wakers = Direction::BOTH.map(|direction| {
            Waker::from(Arc::new(FlowWaker {
                flow,
                direction,
                ready: Arc::clone(&self.ready),
            }))
        });
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket.register_recv_waker(&wakers[Direction::Recv.index()]);
        socket.register_send_waker(&wakers[Direction::Send.index()]);
        if let Some(entry) = self.flows.get_mut(&flow) {
            entry.wakers = Some(wakers);
        }
    }

    /// Turn the flows that woke into events, and re-arm their wakers.
    pub(crate) fn process_ready(&mut self) {
        let mut woken = std::mem::take(&mut self.woken);
        self.ready.swap_into(&mut woken);
        for &(flow, direction) in &woken {
            let Some(entry) = self.flows.get(&flow) else {
                continue;
            };
            let Some(handle) = entry.socket else {
                continue;
            };
            if self.sockets.get::<tcp::Socket>(handle).state() == tcp::State::Listen {
                // smoltcp sends a SYN-RECEIVED socket that gets RST back to LISTEN; a flow's
                // socket must never listen again, or it could take another client's SYN.
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.mark_closed(flow, CloseReason::Reset);
            }
            let Some(entry) = self.flows.get(&flow) else {
                continue;
            };
            let socket = self.sockets.get::<tcp::Socket>(handle);
            let state = self.map_state(entry, socket);
            let (previous, released) = (entry.state, entry.released);
            let (done, unread) = (finished(socket), socket.recv_queue() > 0);
            let over = socket.state() == tcp::State::Closed && socket.remote_endpoint().is_none();
            if let Some(e) = self.flows.get_mut(&flow) {
                e.state = state;
            }
            if released {
                if done {
                    self.reap.push(flow);
                    continue;
                }
                if unread {
                    // Data for a flow nobody reads any more: reset, as a closed socket does.
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                }
            } else if previous != state {
                if matches!(previous, TcpState::Connecting | TcpState::Pending)
                    && !state.is_closed()
                {
                    self.events.push_back(Event::TcpConnected { flow });
                }
                if let TcpState::Closed(reason) = state {
                    if !previous.is_closed() {
                        self.events.push_back(Event::TcpClosed { flow, reason });
                    }
                }
            }
            if !released {
                self.events.push_back(match direction {
                    Direction::Recv => Event::TcpReadable { flow },
                    Direction::Send => Event::TcpWritable { flow },
                });
            }
            let waker = self
                .flows
                .get(&flow)
                .and_then(|e| e.wakers.as_ref())
                .map(|w| w[direction.index()].clone());
            if let (false, Some(waker)) = (over, waker) {
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                match direction {
                    Direction::Recv => socket.register_recv_waker(&waker),
                    Direction::Send => socket.register_send_waker(&waker),
                }
            }
        }
        woken.clear();
        self.woken = woken;
    }

    /// Free released flows whose TCP work is over.
    pub(crate) fn reap_released(&mut self) {
        for flow in std::mem::take(&mut self.reap) {
            let Some(entry) = self.flows.get(&flow) else {
                continue;
            };
            // TIME-WAIT is over as far as a released flow is concerned: its socket's buffers
            // are worth more than answering a late retransmitted FIN.
            if let Some(handle) = entry.socket {
                if !finished(self.sockets.get::<tcp::Socket>(handle)) {
                    continue;
                }
            }
            self.free_flow(flow);
        }
    }

    /// Remove a flow and its socket now.
    pub(crate) fn free_flow(&mut self, flow: FlowId) {
        let Some(entry) = self.flows.remove(&flow) else {
            return;
        };
        if let Some(handle) = entry.socket {
            self.sockets.remove(handle);
        }
        let key = (entry.remote, entry.local);
        if self.tuples.get(&key) == Some(&flow) {
            self.tuples.remove(&key);
        }
        if self.config.mode == Mode::Client {
            self.tcp_ports.remove(&entry.local.port());
        }
        self.stats.flows_released += 1;
    }

    /// Detach a flow from its socket (freeing the socket), leaving the flow closed; used when
    /// a new connection reuses the endpoints of one that is over.
    pub(crate) fn drop_socket(&mut self, flow: FlowId) {
        let Some(entry) = self.flows.get_mut(&flow) else {
            return;
        };
        if let Some(handle) = entry.socket.take() {
            self.sockets.remove(handle);
        }
        if !entry.state.is_closed() {
            entry.state = TcpState::Closed(CloseReason::Graceful);
        }
        let key = (entry.remote, entry.local);
        if self.tuples.get(&key) == Some(&flow) {
            self.tuples.remove(&key);
        }
        if entry.released {
            self.free_flow(flow);
        }
    }

    /// Record a close whose reason smoltcp does not tell, and report it.
    pub(crate) fn mark_closed(&mut self, flow: FlowId, reason: CloseReason) {
        if let Some(entry) = self.flows.get_mut(&flow) {
            if !entry.state.is_closed() {
                entry.state = TcpState::Closed(reason);
                if !entry.released {
                    self.events.push_back(Event::TcpClosed { flow, reason });
                }
            }
        }
    }

    /// Our view of a socket's state, given what was last seen of the flow.
    fn map_state(&self, entry: &Flow, socket: &tcp::Socket<'_>) -> TcpState {
        use tcp::State as S;
        match socket.state() {
            S::Listen | S::SynSent | S::SynReceived => TcpState::Connecting,
            S::Established => TcpState::Established,
            S::CloseWait => TcpState::RemoteClosed,
            S::FinWait1 | S::FinWait2 => TcpState::LocalClosed,
            S::Closing | S::LastAck | S::TimeWait => TcpState::Closing,
            S::Closed => TcpState::Closed(match entry.state {
                TcpState::Closed(reason) => reason,
                TcpState::Connecting if self.config.mode == Mode::Client => {
                    let timed_out = self
                        .config
                        .tcp_timeout
                        .is_some_and(|t| self.now.saturating_duration_since(entry.opened_at) >= t);
                    if timed_out {
                        CloseReason::TimedOut
                    } else {
                        CloseReason::Refused
                    }
                }
                TcpState::Closing => CloseReason::Graceful,
                _ => CloseReason::Reset,
            }),
        }
    }

    /// The socket of a flow that has one.
    fn socket(&self, flow: FlowId) -> Option<&tcp::Socket<'static>> {
        let handle = self.flows.get(&flow)?.socket?;
        Some(self.sockets.get::<tcp::Socket>(handle))
    }

    /// Why a socket refuses to send or receive, from the flow's state.
    fn unusable(&self, flow: FlowId) -> FlowError {
        match self.state(flow) {
            None => FlowError::UnknownFlow(flow),
            Some(TcpState::Pending | TcpState::Connecting) => FlowError::NotConnected,
            Some(TcpState::Closed(reason)) => reason_error(reason),
            Some(_) => FlowError::Closed,
        }
    }

    /// Route a TCP segment from the tunnel: to smoltcp, or (terminate mode, new SYN) to the
    /// caller for a decision.
    pub(crate) fn receive_tcp(
        &mut self,
        packet: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        syn: Option<Syn>,
        rst: bool,
    ) {
        match self.config.mode {
            Mode::Client => {
                if self.is_local(dst.ip()) {
                    // smoltcp answers segments for no flow (unsolicited SYNs) with RST.
                    self.dev.rx.push_back(spare::copy_of(packet));
                } else {
                    self.stats.unsupported_dropped += 1;
                }
            }
            Mode::Terminate => self.receive_terminated_tcp(packet, src, dst, syn, rst),
        }
    }
}

/// Whether TCP has nothing left to do for a released flow's socket. A closed socket that
/// still knows its peer has an RST to send (after `abort`), so it is not finished until
/// smoltcp has sent that; TIME-WAIT counts as finished.
pub(crate) fn finished(socket: &tcp::Socket<'_>) -> bool {
    match socket.state() {
        tcp::State::TimeWait => true,
        tcp::State::Closed => socket.remote_endpoint().is_none(),
        _ => false,
    }
}

/// The error for a flow that ended for `reason`.
fn reason_error(reason: CloseReason) -> FlowError {
    match reason {
        CloseReason::Graceful => FlowError::Closed,
        CloseReason::Reset | CloseReason::Aborted => FlowError::Reset,
        CloseReason::Refused => FlowError::Refused,
        CloseReason::TimedOut => FlowError::TimedOut,
    }
}
