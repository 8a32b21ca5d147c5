//! Where credit comes from. Today an operator grants it by hand
//! ([`crate::Server::credit`]); later, payments (for example on-chain) will, through a
//! [`CreditSource`]. The trait fixes the shape now so the issuer loop does not change.

use crate::account_number::AccountNumber;

/// A unique payment identifier (for example a transaction hash), so that a payment
/// delivered twice is credited once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId(pub [u8; 32]);

/// A confirmed payment for an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Its unique identifier.
    pub id: PaymentId,
    /// The account it pays for (payers quote the account number, nothing else).
    pub account: AccountNumber,
    /// Credit units it buys.
    pub units: u64,
}

/// A feed of confirmed payments, polled by the issuer with its own clock.
///
/// Not yet done: the store does not record applied [`PaymentId`]s, so until it does a
/// source must hand out each payment exactly once, and only after the issuer saved the
/// credit from the previous poll.
pub trait CreditSource {
    /// Why polling failed (network, node, parse).
    type Error: std::error::Error;

    /// Payments confirmed since the last call.
    fn poll_payments(&mut self, now_secs: u64) -> Result<Vec<Payment>, Self::Error>;
}
