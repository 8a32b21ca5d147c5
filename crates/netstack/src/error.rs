//! Typed errors of the stack, one enum per kind of operation.

use std::io;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::{FlowId, Mode};

/// A [`StackConfig`](crate::StackConfig) that cannot make a working stack. Fix the
/// configuration; retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// No tunnel address at all.
    #[error("no tunnel address configured: give the stack at least one IPv4 or IPv6 address")]
    NoAddress,
    /// More addresses than the interface can hold.
    #[error("{count} tunnel addresses configured, at most {max} are supported")]
    TooManyAddresses {
        /// Addresses given.
        count: usize,
        /// Most accepted.
        max: usize,
    },
    /// An address that cannot be a host's own (unspecified, multicast or broadcast).
    #[error("{0} cannot be a tunnel address: use a unicast address")]
    InvalidAddress(IpAddr),
    /// MTU outside what IP allows.
    #[error("MTU {mtu} is outside {min}..={max}")]
    InvalidMtu {
        /// MTU given.
        mtu: usize,
        /// Smallest accepted.
        min: usize,
        /// Largest accepted.
        max: usize,
    },
    /// A TCP buffer too small to hold a segment.
    #[error("TCP buffer of {size} bytes is below the minimum of {min}")]
    BufferTooSmall {
        /// Size given.
        size: usize,
        /// Smallest accepted.
        min: usize,
    },
    /// A limit of zero, which would refuse everything.
    #[error("limit `{0}` is zero; it must be at least 1")]
    ZeroLimit(&'static str),
}

/// An operation on the [`Stack`](crate::Stack) that could not be done.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StackError {
    /// The operation belongs to the other [`Mode`].
    #[error("`{op}` is not available on a stack in {mode:?} mode")]
    WrongMode {
        /// The operation attempted.
        op: &'static str,
        /// This stack's mode.
        mode: Mode,
    },
    /// No tunnel address of the destination's family (for example IPv6 without an IPv6 address).
    #[error(
        "no tunnel address of the same IP family as {0}; configure one or use the other family"
    )]
    NoSourceAddress(SocketAddr),
    /// A destination that no packet can be sent to (port 0, unspecified, multicast).
    #[error("{0} is not a valid unicast destination")]
    InvalidDestination(SocketAddr),
    /// A source address that is not this client's own tunnel address.
    #[error("{0} is not one of this stack's tunnel addresses")]
    ForeignSource(SocketAddr),
    /// Source and destination are of different IP families.
    #[error("source {src} and destination {dst} are of different IP families")]
    FamilyMismatch {
        /// Source given.
        src: SocketAddr,
        /// Destination given.
        dst: SocketAddr,
    },
    /// All ephemeral ports are in use; retry after some flows have closed.
    #[error("all ephemeral ports are in use; close some flows and retry")]
    PortsExhausted,
    /// The flow limit is reached; retry after some flows have closed.
    #[error("{max} TCP flows are open, the configured maximum; close some and retry")]
    TooManyFlows {
        /// The configured limit.
        max: usize,
    },
    /// No such flow (never existed, or already released).
    #[error("no TCP flow {0}")]
    UnknownFlow(FlowId),
    /// `accept`/`refuse` on a flow that is not waiting for a decision.
    #[error("TCP flow {0} is not waiting to be accepted or refused")]
    NotPending(FlowId),
    /// A UDP payload larger than one unfragmented packet can carry.
    #[error("UDP payload of {len} bytes exceeds the {max} bytes that fit the MTU")]
    DatagramTooLarge {
        /// Payload length given.
        len: usize,
        /// Largest payload that fits.
        max: usize,
    },
    /// The UDP port is already bound.
    #[error("UDP port {0} is already bound")]
    UdpPortInUse(u16),
    /// The transmit queue is full; the tunnel is not draining it. Retry later.
    #[error("the transmit queue is full; retry when the tunnel has drained it")]
    TxQueueFull,
}

/// Why data cannot be sent or received on a TCP flow right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FlowError {
    /// No such flow (never existed, or already released).
    #[error("no TCP flow {0}")]
    UnknownFlow(FlowId),
    /// Nothing to read or no room to write yet; retry after the next readable/writable event.
    #[error("the operation would block; retry after the flow becomes ready")]
    WouldBlock,
    /// The handshake has not completed yet.
    #[error("the TCP flow is not connected yet")]
    NotConnected,
    /// This side has already closed the flow for sending.
    #[error("the TCP flow was closed for sending")]
    Closed,
    /// The peer reset the flow (or it was aborted locally).
    #[error("the TCP flow was reset")]
    Reset,
    /// The destination refused the connection.
    #[error("the connection was refused")]
    Refused,
    /// The peer stopped answering.
    #[error("the TCP flow timed out")]
    TimedOut,
}

impl From<FlowError> for io::Error {
    fn from(e: FlowError) -> Self {
        let kind = match e {
            FlowError::UnknownFlow(_) => io::ErrorKind::NotFound,
            FlowError::WouldBlock => io::ErrorKind::WouldBlock,
            FlowError::NotConnected => io::ErrorKind::NotConnected,
            FlowError::Closed => io::ErrorKind::BrokenPipe,
            FlowError::Reset => io::ErrorKind::ConnectionReset,
            FlowError::Refused => io::ErrorKind::ConnectionRefused,
            FlowError::TimedOut => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

impl From<StackError> for io::Error {
    fn from(e: StackError) -> Self {
        let kind = match e {
            StackError::PortsExhausted => io::ErrorKind::AddrNotAvailable,
            StackError::UdpPortInUse(_) => io::ErrorKind::AddrInUse,
            StackError::TooManyFlows { .. } | StackError::TxQueueFull => io::ErrorKind::WouldBlock,
            StackError::NoSourceAddress(_) => io::ErrorKind::AddrNotAvailable,
            StackError::UnknownFlow(_) => io::ErrorKind::NotFound,
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}
