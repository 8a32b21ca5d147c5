//! Why one client's SOCKS session ended other than normally.

use std::io;

use thiserror::Error;

use crate::wire::{Target, WireError};

/// Why [`crate::serve_connection`] ended a client session early.
///
/// These concern one local client; [`crate::serve`] logs them and keeps accepting. Where the
/// protocol has a reply for the failure, the client has been sent it before the connection
/// was closed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Reading from or writing to the local client failed.
    #[error("local client connection failed: {0}")]
    Client(#[source] io::Error),

    /// The client closed the connection before finishing the handshake.
    #[error("local client closed the connection during the SOCKS handshake")]
    ClosedDuringHandshake,

    /// The client did not finish the handshake within [`crate::HANDSHAKE_TIMEOUT`].
    #[error("local client did not finish the SOCKS handshake in time")]
    HandshakeTimeout,

    /// The client sent bytes that are not SOCKS5.
    #[error("local client sent a malformed SOCKS5 message: {0}")]
    Malformed(#[source] WireError),

    /// The client does not offer "no authentication", the only method this server speaks.
    #[error("local client offered authentication methods {offered:02x?}, none of them \"no authentication\"")]
    NoAcceptableMethod {
        /// The methods the client offered.
        offered: Vec<u8>,
    },

    /// The client asked for BIND, which this server does not support.
    #[error("local client asked for BIND, which is not supported")]
    BindNotSupported,

    /// The dialer could not connect to the requested target.
    #[error("could not connect to {target}: {source}")]
    Connect {
        /// The requested target.
        target: Target,
        /// The dialer's error.
        #[source]
        source: io::Error,
    },

    /// Relaying bytes between the client and the target failed.
    #[error("relaying to {target} failed: {source}")]
    Relay {
        /// The connected target.
        target: Target,
        /// The error from either side.
        #[source]
        source: io::Error,
    },

    /// Setting up or running a UDP association failed.
    #[error("UDP association failed: {0}")]
    Udp(#[source] io::Error),
}
