//! The token challenge (RFC 9577 §2.1), binding a token to one relay and one session.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{WireError, TOKEN_TYPE};

/// Prefix of the redemption context: SHA-256(label || the session's client key).
pub const CONTEXT_LABEL: &[u8] = b"openrelay redeem v1";

/// A `TokenChallenge` for token type 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The issuer's name, as in the directory.
    pub issuer_name: String,
    /// SHA-256([`CONTEXT_LABEL`] || session key): which session may spend the token.
    pub redemption_context: [u8; 32],
    /// The relay's WireGuard public key, base64: where the token may be spent.
    pub origin_info: String,
}

impl Challenge {
    /// The challenge for a session with client key `session_key` at the relay `relay_key`.
    pub fn for_session(issuer_name: &str, relay_key: &[u8; 32], session_key: &[u8; 32]) -> Self {
        Self {
            issuer_name: issuer_name.to_string(),
            redemption_context: Self::context(session_key),
            origin_info: Self::origin(relay_key),
        }
    }

    /// The redemption context of a session key.
    pub fn context(session_key: &[u8; 32]) -> [u8; 32] {
        Sha256::new()
            .chain_update(CONTEXT_LABEL)
            .chain_update(session_key)
            .finalize()
            .into()
    }

    /// The origin info of a relay key.
    pub fn origin(relay_key: &[u8; 32]) -> String {
        base64::engine::general_purpose::STANDARD.encode(relay_key)
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + 2 + self.issuer_name.len() + 33 + 2 + 44);
        out.extend_from_slice(&TOKEN_TYPE.to_be_bytes());
        out.extend_from_slice(&(self.issuer_name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.issuer_name.as_bytes());
        out.push(32);
        out.extend_from_slice(&self.redemption_context);
        out.extend_from_slice(&(self.origin_info.len() as u16).to_be_bytes());
        out.extend_from_slice(self.origin_info.as_bytes());
        out
    }

    /// Parses a challenge of token type 2 with a 32-byte redemption context.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader(bytes);
        let token_type = u16::from_be_bytes(r.array::<2>("token type")?);
        if token_type != TOKEN_TYPE {
            return Err(WireError::TokenType(token_type));
        }
        let n = usize::from(u16::from_be_bytes(r.array::<2>("issuer name length")?));
        if n == 0 {
            return Err(WireError::Challenge("empty issuer name"));
        }
        let issuer_name = r.utf8(n, "issuer name")?;
        let [len] = r.array::<1>("redemption context length")?;
        if len != 32 {
            return Err(WireError::Challenge("redemption context is not 32 bytes"));
        }
        let redemption_context = r.array::<32>("redemption context")?;
        let n = usize::from(u16::from_be_bytes(r.array::<2>("origin info length")?));
        let origin_info = r.utf8(n, "origin info")?;
        if !r.0.is_empty() {
            return Err(WireError::Challenge("trailing bytes"));
        }
        Ok(Self {
            issuer_name,
            redemption_context,
            origin_info,
        })
    }

    /// SHA-256 of the encoding: what the token carries.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }
}

/// Reads fields off the front of a byte string.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Challenge(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> Result<String, WireError> {
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Challenge(what))
    }
}
