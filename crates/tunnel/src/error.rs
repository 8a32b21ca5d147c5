use gotatun::noise::errors::WireGuardError;

/// Why a datagram or a timer could not be processed.
///
/// None of these end the process: the caller drops the datagram and counts it. Only
/// [`TunnelError::Expired`] means the session is gone and a new one must be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Not a WireGuard message: wrong type byte or size.
    #[error("not a WireGuard message ({len} bytes): wrong type or length")]
    NotWireGuard {
        /// Length of the rejected datagram.
        len: usize,
    },
    /// A packet that has been seen before (replay window) or is too old.
    #[error("replayed or too old WireGuard packet (counter already seen)")]
    Replay,
    /// Authentication failed: forged, corrupted, or for another key.
    #[error("WireGuard packet failed authentication ({0:?}); it was forged, corrupted or meant for another key")]
    Authentication(WireGuardError),
    /// No session (yet, or any more) for this packet.
    #[error("no WireGuard session for this packet ({0:?}); the peer must handshake again")]
    NoSession(WireGuardError),
    /// The session expired (no handshake for too long); set up a new one.
    #[error("the WireGuard session expired; a new handshake is needed")]
    Expired,
    /// The decrypted payload is not an IP packet.
    #[error("decrypted payload is not an IPv4/IPv6 packet")]
    NotIp,
    /// Any other protocol violation reported by the WireGuard state machine.
    #[error("WireGuard protocol error: {0:?}")]
    Protocol(WireGuardError),
}

impl From<WireGuardError> for TunnelError {
    fn from(e: WireGuardError) -> Self {
        use WireGuardError as W;
        match e {
            W::DuplicateCounter | W::InvalidCounter | W::WrongTai64nTimestamp => Self::Replay,
            W::InvalidMac | W::InvalidAeadTag | W::WrongKey => Self::Authentication(e),
            W::NoCurrentSession | W::WrongIndex => Self::NoSession(e),
            W::ConnectionExpired => Self::Expired,
            other => Self::Protocol(other),
        }
    }
}
