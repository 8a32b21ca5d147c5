//! Anonymous OpenRelay accounts: a random account number and a password, registered and
//! checked with OPAQUE (RFC 9807) so the password never leaves the client; credit per
//! account; and the issuer's encrypted account store.
//!
//! Sans-IO except [`store`]: clients and the issuer take bytes (or messages) and the
//! caller's clock, and return messages; the caller moves datagrams.
//!
//! - [`suite`]: the OPAQUE cipher suite and its pinned Argon2id parameters.
//! - [`AccountNumber`]: 128 random bits, written with check characters.
//! - [`wire`]: [`Request`] and [`Response`], one UDP datagram each.
//! - [`client`]: the client's states for creating, registering and logging in.
//! - [`server`]: the issuer's logic ([`Server`]): rate limits, logins, credit.
//! - [`store`]: the encrypted, atomically replaced state file and [`DurableServer`].
//!
//! # Account creation
//!
//! The issuer, not the client, picks account numbers (`CreateAccount` →
//! `AccountCreated`): they are then uniform whatever the client's RNG, unique by check,
//! and a client cannot register a number of its choosing. The number is reserved for the
//! asking source for a minute, during which it registers:
//!
//! ```text
//! client                                   issuer
//! CreateAccount                       ──▶
//!                                     ◀──  AccountCreated {account}
//! RegisterStart {account, blinded pw} ──▶
//!                                     ◀──  RegisterStarted {evaluated, issuer key}
//! RegisterFinish {account, record}    ──▶  (saved durably)
//!                                     ◀──  Registered
//! LoginStart {account, KE1}           ──▶  (rate limited; unknown accounts get a fake KE2)
//!                                     ◀──  LoginStarted {KE2}
//! LoginFinish {KE3}                   ──▶  (source now logged in)
//!                                     ◀──  LoggedIn {credit}
//! ```

pub mod account_number;
pub mod client;
pub mod credit;
mod rng;
pub mod server;
pub mod state;
pub mod store;
pub mod suite;
pub mod wire;

pub use account_number::{AccountNumber, ParseAccountError};
pub use client::{
    ClientError, ClientLogin, ClientRegistration, ExpectAccountCreated, ExpectLoggedIn,
    ExpectRegistered, LoggedIn, SessionKey,
};
pub use credit::{CreditSource, Payment, PaymentId};
pub use server::{Change, CreditError, Limits, Reply, Server, Session, SourceId};
pub use state::State;
pub use store::{DurableError, DurableServer, SealingKey, Store, StoreError};
pub use suite::Suite;
pub use wire::{DecodeError, Detail, RefuseReason, Request, Response};

#[cfg(test)]
mod tests;
