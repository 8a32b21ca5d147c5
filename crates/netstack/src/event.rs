//! What the stack tells its caller: flow identifiers, flow states, events and counters.

use std::fmt;
use std::net::SocketAddr;

/// Identifies one TCP flow for the lifetime of a [`Stack`](crate::Stack); never reused, so a
/// stale id cannot reach a newer flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub(crate) u64);

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a TCP flow is in its life, simplified from TCP's eleven states to what a proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// Terminate mode: the SYN was reported and waits for accept or refuse.
    Pending,
    /// The handshake is in progress.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The peer sent FIN: reads end after the buffered data, writes still go out.
    RemoteClosed,
    /// This side sent FIN: writes are over, reads still come in.
    LocalClosed,
    /// Both sides sent FIN; the last acknowledgements are outstanding.
    Closing,
    /// Nothing more will happen; [`Stack::release`](crate::Stack::release) frees the flow.
    Closed(CloseReason),
}

impl TcpState {
    /// Whether the flow has ended for good.
    pub fn is_closed(self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

/// How a TCP flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN and it was acknowledged.
    Graceful,
    /// The peer reset an established flow.
    Reset,
    /// The peer answered the SYN with RST (client), or this side refused it (terminate).
    Refused,
    /// The peer stopped answering, or a pending SYN was not decided in time.
    TimedOut,
    /// This side aborted the flow.
    Aborted,
}

/// Why a UDP datagram is refused; selects the ICMP message sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Nothing listens on the destination port.
    Port,
    /// The destination host cannot be reached.
    Host,
    /// Policy forbids the destination.
    Prohibited,
}

/// One UDP datagram, as received from the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Sender (the client's tunnel address and port, in terminate mode).
    pub src: SocketAddr,
    /// Destination (any address in terminate mode; this stack's bound port in client mode).
    pub dst: SocketAddr,
    /// The payload, in one of the thread's spare buffers: give it back with
    /// `spare::give` once it has been sent on.
    pub payload: Vec<u8>,
}

/// Something the caller should act on, drained with [`Stack::poll_event`](crate::Stack::poll_event).
///
/// Readable and writable events are hints (they may be spurious); they exist so that an edge
/// can sleep until a flow is ready instead of polling every flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Terminate mode: a SYN for a new flow. Decide with `accept` or `refuse`.
    TcpIncoming {
        /// The new flow.
        flow: FlowId,
        /// The client's endpoint.
        src: SocketAddr,
        /// The destination the client asked for.
        dst: SocketAddr,
    },
    /// The handshake completed.
    TcpConnected {
        /// The flow.
        flow: FlowId,
    },
    /// Data (or end of stream) may be read.
    TcpReadable {
        /// The flow.
        flow: FlowId,
    },
    /// Send buffer space may have become free.
    TcpWritable {
        /// The flow.
        flow: FlowId,
    },
    /// The flow ended; release it once its remaining data has been read.
    TcpClosed {
        /// The flow.
        flow: FlowId,
        /// How it ended.
        reason: CloseReason,
    },
    /// A UDP datagram arrived (any destination in terminate mode, a bound port in client mode).
    Udp(UdpDatagram),
    /// Client mode: the far side answered a datagram from `local` to `remote` with ICMP
    /// unreachable.
    UdpUnreachable {
        /// This stack's endpoint that sent the datagram.
        local: SocketAddr,
        /// The endpoint that was unreachable.
        remote: SocketAddr,
    },
}

/// Aggregate counters (no addresses: relays keep nothing else).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// IP packets fed in with [`Stack::receive`](crate::Stack::receive).
    pub packets_in: u64,
    /// IP packets handed out with [`Stack::pop_transmit`](crate::Stack::pop_transmit).
    pub packets_out: u64,
    /// Packets dropped because they did not parse (bad header, length or checksum).
    pub malformed_dropped: u64,
    /// Well-formed packets dropped because the stack does not handle them (fragments,
    /// other protocols, addresses not served).
    pub unsupported_dropped: u64,
    /// Packets dropped because the transmit queue was full.
    pub tx_dropped: u64,
    /// TCP flows opened (connected from here, or accepted).
    pub flows_opened: u64,
    /// TCP flows refused (by the caller, for lack of room, or timed out while pending).
    pub flows_refused: u64,
    /// TCP flows freed.
    pub flows_released: u64,
    /// Times an idle TCP flow gave its buffers' pages back to the system.
    pub buffers_given_back: u64,
    /// UDP datagrams reported to the caller.
    pub udp_in: u64,
    /// UDP datagrams sent.
    pub udp_out: u64,
    /// UDP datagrams dropped (event queue full) or refused.
    pub udp_dropped: u64,
}
