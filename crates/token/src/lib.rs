//! Anonymous session tokens: Privacy Pass publicly verifiable tokens (RFC 9578, token type
//! 0x0002: blind RSA, RSABSSA-SHA384-PSS-Deterministic per RFC 9474), sans-IO.
//!
//! A token is bound, through its challenge, to one relay (the challenge's `origin_info` is
//! the relay's WireGuard key) and to one session (the `redemption_context` is a hash of the
//! client's session key). The issuer signs blinded token inputs and never sees the token, so
//! it cannot link a redemption to the account that paid for it. Relays verify with the
//! issuer's public key for the token's epoch, as listed in the directory, and keep the spent
//! tokens of each epoch in RAM.
//!
//! Flow: [`Challenge::for_session`] → [`request`] (client) → [`IssuerKey::sign`] (issuer) →
//! [`Pending::finalize`] (client) → [`Redeemer::redeem`] (relay).

mod challenge;
mod epoch;
mod error;
mod key;
mod redeem;
mod wire;

pub use challenge::{Challenge, CONTEXT_LABEL};
pub use epoch::Epoch;
pub use error::{KeyError, RedeemError, TokenError, WireError};
pub use key::{IssuerKey, IssuerPublicKey};
pub use redeem::Redeemer;
pub use wire::{
    request, request_with, Pending, Token, TokenRequest, TokenResponse, REQUEST_LEN, TOKEN_LEN,
};

/// The token type of publicly verifiable (blind RSA) tokens.
pub const TOKEN_TYPE: u16 = 0x0002;

/// Bytes of an RSA-2048 signature, blinded message or blind signature.
pub const NK: usize = 256;

/// The blind RSA variant of token type 2: SHA-384, PSS with a 48-byte salt, no message
/// randomizer (RSABSSA-SHA384-PSS-Deterministic).
pub(crate) type PublicKey = blind_rsa_signatures::PublicKey<
    blind_rsa_signatures::Sha384,
    blind_rsa_signatures::PSS,
    blind_rsa_signatures::Deterministic,
>;
pub(crate) type SecretKey = blind_rsa_signatures::SecretKey<
    blind_rsa_signatures::Sha384,
    blind_rsa_signatures::PSS,
    blind_rsa_signatures::Deterministic,
>;
