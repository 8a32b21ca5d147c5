//! The relay's side: verify a token for this relay and session, once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{Challenge, Epoch, IssuerPublicKey, RedeemError, Token};

/// Checks tokens at one relay and remembers the spent ones (RAM only, per epoch).
///
/// Clones share the spent sets: a relay that serves its sessions on several threads gives
/// each a clone, and a token spent on one is spent on all. The lock is taken once per
/// redemption (once per session), never per packet.
#[derive(Debug, Clone)]
pub struct Redeemer {
    issuer_name: String,
    origin: String,
    keys: HashMap<[u8; 32], IssuerPublicKey>,
    spent: Arc<Mutex<HashMap<Epoch, HashSet<[u8; 32]>>>>,
}

impl Redeemer {
    /// A redeemer for the relay with WireGuard key `relay_key`, accepting tokens of
    /// `issuer_name` under `keys` (from the directory).
    pub fn new(relay_key: &[u8; 32], issuer_name: &str, keys: Vec<IssuerPublicKey>) -> Self {
        Self {
            issuer_name: issuer_name.to_string(),
            origin: Challenge::origin(relay_key),
            keys: keys.into_iter().map(|k| (k.key_id(), k)).collect(),
            spent: Arc::default(),
        }
    }

    /// Replaces the issuer keys (a new directory), keeping the spent sets.
    pub fn set_keys(&mut self, keys: Vec<IssuerPublicKey>) {
        self.keys = keys.into_iter().map(|k| (k.key_id(), k)).collect();
    }

    /// Redeems `token`, issued for `challenge`, for the session whose client key is
    /// `session_key`. On success the token is spent and its epoch returned.
    pub fn redeem(
        &mut self,
        now_secs: u64,
        challenge: &[u8],
        token: &[u8],
        session_key: &[u8; 32],
    ) -> Result<Epoch, RedeemError> {
        let challenge = Challenge::decode(challenge)?;
        let token = Token::decode(token)?;
        if challenge.issuer_name != self.issuer_name {
            return Err(RedeemError::Issuer(challenge.issuer_name));
        }
        if challenge.origin_info != self.origin {
            return Err(RedeemError::OtherRelay);
        }
        if challenge.redemption_context != Challenge::context(session_key) {
            return Err(RedeemError::OtherSession);
        }
        if challenge.digest() != token.challenge_digest {
            return Err(RedeemError::ChallengeMismatch);
        }
        let key = self
            .keys
            .get(&token.key_id)
            .ok_or(RedeemError::UnknownKey)?;
        if !key.epoch.redeemable_at(now_secs) {
            return Err(RedeemError::Expired(key.epoch));
        }
        let signature = blind_rsa_signatures::Signature(token.authenticator.to_vec());
        key.key
            .verify(&signature, None, token.input())
            .map_err(|_| RedeemError::BadSignature)?;
        let epoch = key.epoch;
        // Spent sets of epochs that can no longer be redeemed are dropped. A poisoned lock
        // still holds every token spent before the panic, so it is used as it is.
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        spent.retain(|e, _| e.redeemable_at(now_secs));
        if !spent.entry(epoch).or_default().insert(token.nonce) {
            return Err(RedeemError::Spent);
        }
        Ok(epoch)
    }

    /// Tokens spent and remembered.
    pub fn spent(&self) -> usize {
        self.spent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(HashSet::len)
            .sum()
    }
}
