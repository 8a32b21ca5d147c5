//! The token issuer as the directory lists it: where clients reach it and its keys, one per
//! epoch, so every client and relay sees the same keys (key consistency).

#![deny(clippy::unwrap_used)]

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::relay::PublicKey32;

/// The issuer of the session tokens that relays require. In TOML an `[issuer]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// The name tokens carry (`issuer_name` of their challenge).
    pub name: String,
    /// Its UDP endpoint (WireGuard, like a relay).
    pub endpoint: SocketAddr,
    /// Its attested WireGuard key.
    pub wg_public_key: PublicKey32,
    /// Its token keys: `[[issuer.key]]` tables.
    #[serde(rename = "key", default)]
    pub keys: Vec<IssuerKey>,
}

/// One epoch's token key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerKey {
    /// The week it signs for (weeks since 1970-01-01).
    pub epoch: u32,
    /// Base64 of its RSASSA-PSS SubjectPublicKeyInfo (RSA-2048).
    pub public_key: String,
}

impl Issuer {
    /// The keys as token keys; an unusable one is an error naming its epoch.
    pub fn token_keys(&self) -> Result<Vec<token::IssuerPublicKey>, (u32, token::KeyError)> {
        self.keys
            .iter()
            .map(|k| {
                token::IssuerPublicKey::from_base64(token::Epoch(k.epoch), &k.public_key)
                    .map_err(|e| (k.epoch, e))
            })
            .collect()
    }
}
