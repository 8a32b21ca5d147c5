//! What can go wrong, per operation.

use crate::Epoch;

/// A token, request or response that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not the expected length.
    #[error("{what} is {got} bytes, expected {expected}")]
    Length {
        /// Which structure.
        what: &'static str,
        /// Its length.
        got: usize,
        /// What it must be.
        expected: usize,
    },
    /// Another token type than 0x0002.
    #[error("token type {0:#06x} is not supported (only 0x0002, publicly verifiable)")]
    TokenType(u16),
    /// A challenge field is too long or truncated.
    #[error("malformed token challenge: {0}")]
    Challenge(&'static str),
}

/// An issuer key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not an RSA-2048 RSASSA-PSS SubjectPublicKeyInfo (public) or PKCS#8 (private) key.
    #[error("not a usable blind RSA key ({0}); issuer keys are RSA-2048, RSASSA-PSS SPKI")]
    Encoding(String),
    /// Not valid base64.
    #[error("issuer key is not valid base64")]
    Base64,
    /// Key generation failed.
    #[error("cannot generate an issuer key: {0}")]
    Generate(String),
}

/// Issuance failed (client or issuer side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request names another key than the issuer's current one.
    #[error("the token request is for another issuer key (truncated id {got:#04x}, current {expected:#04x}); refresh the directory")]
    WrongKey {
        /// The request's truncated key id.
        got: u8,
        /// The issuer's.
        expected: u8,
    },
    /// Malformed bytes.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The RSA operation failed (bad blinded message, or a blind signature that does not
    /// finalize to a valid signature: the issuer misbehaved or used another key).
    #[error("blind RSA failed: {0}")]
    Rsa(String),
}

/// Why a relay refuses a token. Each refusal leaves the session unadmitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemError {
    /// The bytes are not a token and challenge.
    #[error("malformed token: {0}")]
    Malformed(#[from] WireError),
    /// The challenge names another issuer.
    #[error("the token is from issuer {0:?}, which this relay does not accept")]
    Issuer(String),
    /// The token was issued for another relay.
    #[error("the token was issued for another relay")]
    OtherRelay,
    /// The token was issued for another session key.
    #[error("the token was issued for another session")]
    OtherSession,
    /// The token does not match the challenge it came with.
    #[error("the token does not belong to the challenge it came with")]
    ChallengeMismatch,
    /// No directory-listed issuer key has this id.
    #[error("the token's issuer key is not in the directory (unknown or withdrawn key)")]
    UnknownKey,
    /// The key's epoch is over (or not begun).
    #[error("the token's {0} is not redeemable now; fetch fresh tokens")]
    Expired(Epoch),
    /// The signature does not verify.
    #[error("the token's signature does not verify (forged or corrupted)")]
    BadSignature,
    /// The token was spent before.
    #[error("the token was already spent")]
    Spent,
}
