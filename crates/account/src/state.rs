//! What the issuer must never forget: its OPAQUE server setup (long-term key and OPRF
//! seed) and, per account, the OPAQUE record and the credit. Everything else (logins in
//! progress, rate limits, who is logged in) is deliberately ephemeral.
//!
//! The binary encoding, which [`crate::store`] encrypts, is length-prefixed and
//! big-endian:
//!
//! ```text
//! setup length (u16) | ServerSetup | account count (u64) |
//!   { account (16) | credit (u64) | record length (u16) | ServerRegistration }*
//! ```
//!
//! An OPAQUE record holds no password and nothing derived from it without the OPRF key:
//! whoever holds the decrypted state can run an offline dictionary attack (that is
//! inherent to OPAQUE), paced by Argon2id, but cannot read any password.

#![deny(clippy::unwrap_used)]

use std::collections::BTreeMap;

use opaque_ke::{ServerRegistration, ServerSetup};
use thiserror::Error;

use crate::account_number::AccountNumber;
use crate::rng::Compat;
use crate::suite::Suite;

/// The issuer's durable state.
pub struct State {
    pub(crate) setup: ServerSetup<Suite>,
    pub(crate) accounts: BTreeMap<AccountNumber, Account>,
}

/// One registered account.
#[derive(Clone)]
pub(crate) struct Account {
    pub(crate) record: ServerRegistration<Suite>,
    pub(crate) credit: u64,
}

impl State {
    /// A new issuer: fresh long-term key pair and OPRF seed, no accounts. Done once;
    /// losing this state (or its sealing key) makes every account unusable.
    pub fn generate(rng: &mut impl rand::CryptoRng) -> Self {
        Self {
            setup: ServerSetup::<Suite>::new(&mut Compat(rng)),
            accounts: BTreeMap::new(),
        }
    }

    /// Number of registered accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// The issuer's long-term public key (32 bytes), which clients may pin.
    pub fn public_key(&self) -> [u8; 32] {
        let mut key = [0; 32];
        let serialized = self.setup.keypair().public().serialize();
        key.iter_mut()
            .zip(serialized.iter())
            .for_each(|(k, b)| *k = *b);
        key
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let setup = self.setup.serialize();
        let mut out = Vec::with_capacity(2 + setup.len() + 8 + self.accounts.len() * 220);
        put_field(&mut out, &setup);
        out.extend_from_slice(&(self.accounts.len() as u64).to_be_bytes());
        for (number, account) in &self.accounts {
            out.extend_from_slice(number.as_bytes());
            out.extend_from_slice(&account.credit.to_be_bytes());
            put_field(&mut out, &account.record.serialize());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CorruptState> {
        let mut reader = Reader { rest: bytes };
        let setup = ServerSetup::<Suite>::deserialize(reader.field("server setup")?)
            .map_err(|_| CorruptState::Invalid("server setup"))?;
        let count = u64::from_be_bytes(reader.array("account count")?);
        let mut accounts = BTreeMap::new();
        for _ in 0..count {
            let number = AccountNumber::from_bytes(reader.array("account number")?);
            let credit = u64::from_be_bytes(reader.array("credit")?);
            let record = ServerRegistration::<Suite>::deserialize(reader.field("record")?)
                .map_err(|_| CorruptState::Invalid("OPAQUE record"))?;
            if accounts
                .insert(number, Account { record, credit })
                .is_some()
            {
                return Err(CorruptState::DuplicateAccount(number));
            }
        }
        if !reader.rest.is_empty() {
            return Err(CorruptState::TrailingBytes(reader.rest.len()));
        }
        Ok(Self { setup, accounts })
    }
}

/// Why decrypted state bytes are not a state this build wrote. Since the file is
/// authenticated, this means a bug or a file from an incompatible build, not tampering.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CorruptState {
    /// The bytes end inside a field.
    #[error("the state ends inside the {0}")]
    Truncated(&'static str),
    /// A field's bytes are not a valid encoding.
    #[error("the state holds an invalid {0}")]
    Invalid(&'static str),
    /// The same account twice.
    #[error("the state holds account {0} twice")]
    DuplicateAccount(AccountNumber),
    /// Bytes after the last account.
    #[error("the state has {0} bytes after its last account")]
    TrailingBytes(usize),
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    // Setup and records are fixed sizes far below 64 KiB.
    let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], CorruptState> {
        let (head, rest) = self
            .rest
            .split_at_checked(len)
            .ok_or(CorruptState::Truncated(what))?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CorruptState> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, what)?);
        Ok(array)
    }

    fn field(&mut self, what: &'static str) -> Result<&'a [u8], CorruptState> {
        let len = u16::from_be_bytes(self.array(what)?);
        self.take(usize::from(len), what)
    }
}
