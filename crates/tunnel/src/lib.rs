//! Nested WireGuard sessions, sans-IO.
//!
//! The client holds two sessions: the *outer* one with the ingress and the *inner* one with
//! the egress. Inner WireGuard messages travel as UDP datagrams to the egress endpoint inside
//! the outer tunnel, so the ingress sees which egress is used but never the payload, and the
//! egress sees the ingress's address but never the client's.
//!
//! Nothing here opens a socket or reads the clock: every call takes `now` and returns the
//! datagrams to send and the packets to deliver. The WireGuard state machine comes from
//! `gotatun` (see ARCHITECTURE.md for why); its timers read the caller's clock through
//! [`clock`].

mod buffers;
mod clock;
mod error;
mod keys;
mod nested;
mod session;
pub mod wire;

pub use error::TunnelError;
pub use keys::{KeyError, PublicKey, StaticSecret};
pub use nested::{Nested, NestedEvent, INNER_PORT};
pub use session::{
    Action, Classified, Incoming, Responder, Session, SessionConfig, KEYS_EXPIRE, SESSION_EXPIRES,
    TIMER_TICK,
};
