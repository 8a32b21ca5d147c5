//! Issuance messages and the token (RFC 9578 §6), and the client's side of issuance.

use blind_rsa_signatures::{BlindSignature, BlindingResult, Signature};

use crate::{Challenge, IssuerPublicKey, TokenError, WireError, NK, TOKEN_TYPE};

/// Bytes of a token: type, nonce, challenge digest, key id, authenticator.
pub const TOKEN_LEN: usize = 2 + 32 + 32 + 32 + NK;
/// Bytes of a token request: type, truncated key id, blinded message.
pub const REQUEST_LEN: usize = 2 + 1 + NK;

/// What the client sends the issuer: a blinded token input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The last byte of the issuer key id.
    pub truncated_key_id: u8,
    /// The blinded token input.
    pub blinded_msg: [u8; NK],
}

impl TokenRequest {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_LEN);
        out.extend_from_slice(&TOKEN_TYPE.to_be_bytes());
        out.push(self.truncated_key_id);
        out.extend_from_slice(&self.blinded_msg);
        out
    }

    /// Parses a request.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let b: &[u8; REQUEST_LEN] = bytes.try_into().map_err(|_| WireError::Length {
            what: "token request",
            got: bytes.len(),
            expected: REQUEST_LEN,
        })?;
        let (ty, rest) = b.split_at(2);
        check_type(ty)?;
        let (tki, blinded) = rest.split_at(1);
        let mut blinded_msg = [0; NK];
        blinded_msg.copy_from_slice(blinded);
        Ok(Self {
            truncated_key_id: tki[0],
            blinded_msg,
        })
    }
}

/// What the issuer answers: the blind signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    /// The blind signature.
    pub blind_sig: [u8; NK],
}

impl TokenResponse {
    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.blind_sig.to_vec()
    }

    /// Parses a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let blind_sig = bytes.try_into().map_err(|_| WireError::Length {
            what: "token response",
            got: bytes.len(),
            expected: NK,
        })?;
        Ok(Self { blind_sig })
    }
}

/// A token: a signature by the issuer over (type, nonce, challenge digest, key id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Random, chosen by the client; what relays remember as spent.
    pub nonce: [u8; 32],
    /// SHA-256 of the challenge it was issued for.
    pub challenge_digest: [u8; 32],
    /// SHA-256 of the issuer key's SPKI.
    pub key_id: [u8; 32],
    /// The RSA signature.
    pub authenticator: [u8; NK],
}

impl Token {
    /// The signed part: everything but the authenticator.
    pub fn input(&self) -> Vec<u8> {
        token_input(&self.nonce, &self.challenge_digest, &self.key_id)
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.input();
        out.extend_from_slice(&self.authenticator);
        out
    }

    /// Parses a token of type 2.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let b: &[u8; TOKEN_LEN] = bytes.try_into().map_err(|_| WireError::Length {
            what: "token",
            got: bytes.len(),
            expected: TOKEN_LEN,
        })?;
        let (ty, rest) = b.split_at(2);
        check_type(ty)?;
        let (nonce, rest) = rest.split_at(32);
        let (digest, rest) = rest.split_at(32);
        let (key_id, auth) = rest.split_at(32);
        let mut t = Self {
            nonce: [0; 32],
            challenge_digest: [0; 32],
            key_id: [0; 32],
            authenticator: [0; NK],
        };
        t.nonce.copy_from_slice(nonce);
        t.challenge_digest.copy_from_slice(digest);
        t.key_id.copy_from_slice(key_id);
        t.authenticator.copy_from_slice(auth);
        Ok(t)
    }
}

fn check_type(ty: &[u8]) -> Result<(), WireError> {
    let t = u16::from_be_bytes([ty[0], ty[1]]);
    if t == TOKEN_TYPE {
        Ok(())
    } else {
        Err(WireError::TokenType(t))
    }
}

fn token_input(nonce: &[u8; 32], digest: &[u8; 32], key_id: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TOKEN_LEN);
    out.extend_from_slice(&TOKEN_TYPE.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(digest);
    out.extend_from_slice(key_id);
    out
}

/// The client's state between a token request and its response.
#[derive(Debug, Clone)]
pub struct Pending {
    nonce: [u8; 32],
    challenge_digest: [u8; 32],
    key_id: [u8; 32],
    blinding: BlindingResult,
}

/// Starts issuance of a token for `challenge` under `key`, with the system's randomness.
pub fn request(
    key: &IssuerPublicKey,
    challenge: &Challenge,
) -> Result<(TokenRequest, Pending), TokenError> {
    request_with(&mut blind_rsa_signatures::DefaultRng, key, challenge)
}

/// As [`request`], drawing the nonce, then the PSS salt and the blind, from `rng` (test
/// vectors fix them).
pub fn request_with<R: rand_core::CryptoRng + ?Sized>(
    rng: &mut R,
    key: &IssuerPublicKey,
    challenge: &Challenge,
) -> Result<(TokenRequest, Pending), TokenError> {
    let mut nonce = [0u8; 32];
    rng.fill_bytes(&mut nonce);
    let challenge_digest = challenge.digest();
    let key_id = key.key_id();
    let input = token_input(&nonce, &challenge_digest, &key_id);
    let blinding = key
        .key
        .blind(rng, &input)
        .map_err(|e| TokenError::Rsa(e.to_string()))?;
    let blinded_msg: [u8; NK] = blinding
        .blind_message
        .0
        .as_slice()
        .try_into()
        .map_err(|_| WireError::Length {
            what: "blinded message",
            got: blinding.blind_message.0.len(),
            expected: NK,
        })?;
    Ok((
        TokenRequest {
            truncated_key_id: key.truncated_key_id(),
            blinded_msg,
        },
        Pending {
            nonce,
            challenge_digest,
            key_id,
            blinding,
        },
    ))
}

impl Pending {
    /// Unblinds the issuer's answer into a token, checking that it verifies.
    pub fn finalize(
        self,
        key: &IssuerPublicKey,
        response: &TokenResponse,
    ) -> Result<Token, TokenError> {
        let input = token_input(&self.nonce, &self.challenge_digest, &self.key_id);
        let sig: Signature = key
            .key
            .finalize(
                &BlindSignature(response.blind_sig.to_vec()),
                &self.blinding,
                &input,
            )
            .map_err(|e| TokenError::Rsa(e.to_string()))?;
        let mut authenticator = [0; NK];
        authenticator.copy_from_slice(sig.0.get(..NK).ok_or(WireError::Length {
            what: "signature",
            got: sig.0.len(),
            expected: NK,
        })?);
        Ok(Token {
            nonce: self.nonce,
            challenge_digest: self.challenge_digest,
            key_id: self.key_id,
            authenticator,
        })
    }
}
