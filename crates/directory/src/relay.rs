//! One relay as the directory lists it.

#![deny(clippy::unwrap_used)]

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::KeyError;
use crate::keys::decode_array;

/// Which hop a relay serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// First hop: sees the client, forwards to an egress.
    Ingress,
    /// Second hop: sees the destination, never the client.
    Egress,
}

/// A relay's WireGuard public key; base64 in files, as `wg pubkey` prints it.
///
/// Its own type (not `[u8; 32]`) so it cannot be confused with other 32-byte values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey32(pub [u8; 32]);

impl PublicKey32 {
    /// The key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey32({self})")
    }
}

impl FromStr for PublicKey32 {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_array("WireGuard public key", text).map(Self)
    }
}

impl Serialize for PublicKey32 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A relay: how to reach it, who runs it and how much traffic it offers to carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Unique, human-readable name, used in logs and commands.
    pub name: String,
    /// Which hop it serves.
    pub role: Role,
    /// Its WireGuard public key, which the client pins.
    pub wg_public_key: PublicKey32,
    /// Where its WireGuard socket listens.
    pub endpoint: SocketAddr,
    /// Who runs it; a route never uses two relays of one operator.
    pub operator: String,
    /// Advertised bandwidth in Mbit/s; egress selection is weighted by it.
    pub bandwidth_mbps: u64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips() {
        let key = PublicKey32([7; 32]);
        let text = key.to_string();
        assert_eq!(text.parse::<PublicKey32>().unwrap(), key);
        assert_eq!(format!("{key:?}"), format!("PublicKey32({text})"));
    }

    #[test]
    fn key_of_wrong_length_names_what_was_expected() {
        let err = STANDARD
            .encode([1u8; 16])
            .parse::<PublicKey32>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the WireGuard public key decodes to 16 bytes, expected 32; is it a different kind of key?"
        );
    }
}
