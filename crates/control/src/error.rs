//! Errors of the control channel: one enum for bytes that do not decode, one for a setup
//! exchange that does not end in an admission.

use std::net::Ipv4Addr;

use thiserror::Error;

use crate::message::{Detail, MessageType, RefuseReason};

/// Why bytes received on the control address are not a control message.
///
/// Every variant is a peer speaking something other than this protocol version: retrying
/// the same exchange does not help; updating the older side, or reporting the peer, does.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the fixed header.
    #[error(
        "control frame is {len} bytes, shorter than the {header}-byte header; \
         the peer sent a truncated datagram or is not an OpenRelay control endpoint"
    )]
    ShortHeader {
        /// Bytes received.
        len: usize,
        /// Header length that was needed.
        header: usize,
    },

    /// The first two bytes are not `b"OR"`.
    #[error(
        "not an OpenRelay control frame: magic bytes are {got:02x?}, expected \"OR\" \
         (4f 52); something other than an OpenRelay peer sent this datagram"
    )]
    BadMagic {
        /// The two bytes found.
        got: [u8; 2],
    },

    /// The frame uses a wire format version this build does not speak.
    #[error(
        "control frame has wire version {got}, this build speaks version {supported}; \
         update the older side"
    )]
    UnsupportedVersion {
        /// Version in the frame.
        got: u8,
        /// The only version this build reads and writes.
        supported: u8,
    },

    /// The datagram is longer than any control frame may be.
    #[error(
        "control frame is {len} bytes, more than the {max}-byte maximum; the peer \
         does not follow the control protocol"
    )]
    Oversized {
        /// Bytes received.
        len: usize,
        /// Largest allowed frame.
        max: usize,
    },

    /// The header announces more body bytes than the datagram holds.
    #[error(
        "control frame header announces a {declared}-byte body but only {available} \
         bytes follow; the datagram was truncated"
    )]
    Truncated {
        /// Body length from the header.
        declared: usize,
        /// Bytes that actually follow the header.
        available: usize,
    },

    /// The datagram holds bytes after the announced body.
    #[error(
        "control frame header announces a {declared}-byte body but {available} bytes \
         follow; trailing bytes are not allowed"
    )]
    TrailingBytes {
        /// Body length from the header.
        declared: usize,
        /// Bytes that actually follow the header.
        available: usize,
    },

    /// The message type number is not assigned.
    #[error(
        "control message type {got} is unknown to this build; the peer speaks a newer \
         or a different protocol"
    )]
    UnknownType {
        /// The type number found.
        got: u8,
    },

    /// A fixed-size body has the wrong length.
    #[error("{ty} body is {got} bytes, expected exactly {expected}")]
    BodyLength {
        /// The message being decoded.
        ty: MessageType,
        /// Length this message type requires.
        expected: usize,
        /// Length found.
        got: usize,
    },

    /// A body is shorter than its message type's fixed part.
    #[error("{ty} body is {got} bytes, expected at least {min}")]
    BodyTooShort {
        /// The message being decoded.
        ty: MessageType,
        /// Smallest length this message type allows.
        min: usize,
        /// Length found.
        got: usize,
    },

    /// A refusal carries a reason number that is not assigned.
    #[error("refusal reason {got} is unknown to this build; the relay speaks a newer protocol")]
    UnknownRefuseReason {
        /// The reason number found.
        got: u8,
    },

    /// A refusal's detail text is not UTF-8.
    #[error(
        "refusal detail is not UTF-8 (valid up to byte {valid_up_to}); the relay does \
         not follow the control protocol"
    )]
    DetailNotUtf8 {
        /// Length of the longest valid UTF-8 prefix.
        valid_up_to: usize,
    },

    /// A refusal's detail text is longer than allowed.
    #[error("refusal detail is {len} bytes, more than the {max}-byte maximum")]
    DetailTooLong {
        /// Bytes found.
        len: usize,
        /// Largest allowed detail.
        max: usize,
    },
}

/// Why the client-side setup exchange ended without an admission.
///
/// Only [`SetupError::Refused`] can be worth retrying (see [`RefuseReason::retry_helps`]);
/// the others mean the relay misbehaves, so the client should pick another relay.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The relay refused the session.
    #[error("the relay refused the session: {reason}: {detail}")]
    Refused {
        /// Why, as a number the client can act on.
        reason: RefuseReason,
        /// Why, in the relay operator's words.
        detail: Detail,
    },

    /// The relay answered with a message that does not fit this step.
    #[error(
        "the relay sent {got} while the client waited for {expected}; the relay does not \
         follow the setup protocol, use another relay"
    )]
    UnexpectedMessage {
        /// Message type the client waited for.
        expected: MessageType,
        /// Message type received.
        got: MessageType,
    },

    /// The relay assigned an MTU that IP or WireGuard cannot use.
    #[error(
        "the relay assigned MTU {mtu}, outside {min}..={max}; the relay is misconfigured, \
         use another relay"
    )]
    MtuOutOfRange {
        /// MTU assigned.
        mtu: u16,
        /// Smallest acceptable MTU (the IPv6 minimum).
        min: u16,
        /// Largest acceptable MTU (jumbo frames).
        max: u16,
    },

    /// The relay assigned a tunnel address no host can have.
    #[error(
        "the relay assigned tunnel address {addr}, which cannot be a host address; the \
         relay is misconfigured, use another relay"
    )]
    InvalidTunnelAddr {
        /// Address assigned.
        addr: Ipv4Addr,
    },

    /// The relay admitted the session for no time at all.
    #[error("the relay admitted the session with a lifetime of 0 seconds; use another relay")]
    ZeroLifetime,
}

/// A refusal detail that does not fit the wire format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "refusal detail is {len} bytes, more than the {max}-byte maximum; shorten it or use \
     Detail::truncate"
)]
pub struct DetailTooLong {
    /// Bytes given.
    pub len: usize,
    /// Largest allowed detail.
    pub max: usize,
}
