//! WireGuard static keys in the base64 form that `wg genkey` and `wg pubkey` use.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use gotatun::x25519;

/// A key string that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not base64.
    #[error("key is not base64: {0}; expected the 44-character form that `wg genkey` prints")]
    Base64(#[from] base64::DecodeError),
    /// Base64, but not 32 bytes.
    #[error("key decodes to {0} bytes, expected 32; expected the form that `wg genkey` prints")]
    Length(usize),
}

/// A WireGuard public key (Curve25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self)
    }

    /// The base64 form, as `wg pubkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A WireGuard private key. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct StaticSecret(x25519::StaticSecret);

impl StaticSecret {
    /// A fresh key from the operating system's randomness: clients make one per session so
    /// that two sessions of one user cannot be linked by key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// Wraps raw key bytes (clamped by X25519 on use).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(x25519::StaticSecret::from(bytes))
    }

    /// Parses the base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(Self::from_bytes)
    }

    /// The base64 form, as `wg genkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    pub(crate) fn x25519(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticSecret(public {})", self.public_key())
    }
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD.decode(s.trim())?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| KeyError::Length(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_errors() {
        let secret = StaticSecret::generate();
        let again = StaticSecret::from_base64(&secret.to_base64()).expect("own encoding parses");
        assert_eq!(again.public_key(), secret.public_key());
        let public = PublicKey::from_base64(&secret.public_key().to_base64()).expect("parses");
        assert_eq!(public, secret.public_key());
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(KeyError::Length(3))
        ));
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert!(!format!("{secret:?}").contains(&secret.to_base64()));
    }
}
