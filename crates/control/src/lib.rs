//! In-tunnel control messages: a versioned, length-checked wire format and the setup exchange.
//!
//! Control messages travel as UDP payloads inside the WireGuard tunnel to the relay's fixed
//! in-tunnel address [`control_endpoint`]. A relay admits nothing but control traffic until
//! a session is admitted. Everything here is sans-IO: it turns bytes into messages and
//! messages into the next state; sockets and clocks belong to the caller.
//!
//! - [`wire`]: the frame header, as a checked view over bytes ([`Frame`]).
//! - [`message`]: the messages ([`Message`]) and their bodies.
//! - [`setup`]: the client states ([`ClientSetup`], [`ExpectAdmitted`]) and the relay's
//!   reply ([`AdmitPolicy::respond`]).

use std::net::{Ipv4Addr, SocketAddrV4};

mod error;
mod evidence;
pub mod message;
pub mod setup;
pub mod wire;

pub use error::{DecodeError, DetailTooLong, SetupError};
pub use evidence::{split_evidence, EvidenceAssembler, PartsError};
pub use message::{
    Detail, Message, MessageType, RefuseReason, EVIDENCE_PART_LEN, MAX_EVIDENCE_PARTS,
};
pub use setup::{
    Admission, AdmitPolicy, ClientSetup, ExpectAdmitted, CLIENT_VERSION, MAX_MTU, MIN_MTU,
    SUPPORTED_CLIENT_VERSIONS,
};
pub use wire::Frame;

/// The relay's address inside every tunnel, where control messages go; from the shared
/// address space (RFC 6598) so it never collides with a destination on the internet.
pub const CONTROL_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

/// The UDP port of the control channel at [`CONTROL_ADDR`].
pub const CONTROL_PORT: u16 = 51821;

/// How long a client's connection stays quiet, nothing sent and nothing received, before
/// the client rests it (`Message::Rest`): both ends erase the session's keys, and the next
/// packet either way costs a new handshake (one round trip per hop). WireGuard keeps keys
/// for up to 180 s after their handshake whether used or not; a minute of silence is long
/// past a page load or a stalled download's probes.
pub const REST_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Where clients send control messages, as one socket address.
pub const fn control_endpoint() -> SocketAddrV4 {
    SocketAddrV4::new(CONTROL_ADDR, CONTROL_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_endpoint_is_the_fixed_address() {
        assert_eq!(control_endpoint().to_string(), "100.64.0.1:51821");
    }
}
