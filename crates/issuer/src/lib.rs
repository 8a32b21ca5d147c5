//! The token issuer's protocol, sans-IO.
//!
//! Clients reach the issuer through a WireGuard session to its attested key, like a relay;
//! once admitted they send UDP requests to [`SERVICE_PORT`] at the issuer's in-tunnel
//! address. Every request carries an id, and the issuer answers a repeated id with the same
//! response, so a client may retransmit without paying twice.

pub mod keys;
mod service;
mod wire;

pub use service::{IssueLimits, Service};
pub use wire::{Refusal, Request, RequestBody, Response, ResponseBody, WireError, MAX_BATCH};

/// The issuer's UDP port at its in-tunnel address (`100.64.0.1`).
pub const SERVICE_PORT: u16 = 51830;
