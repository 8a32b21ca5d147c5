//! The client's side of account creation, registration and login, as states that consume
//! themselves (rustls style): each takes the issuer's response and returns the next state
//! and the request to send. Sans-IO: the caller moves the bytes.
//!
//! ```text
//! ExpectAccountCreated ──AccountCreated──▶ (number) ──ClientRegistration::start──▶
//! ClientRegistration ──RegisterStarted──▶ ExpectRegistered ──Registered──▶ done
//! ClientLogin ──LoginStarted──▶ ExpectLoggedIn ──LoggedIn──▶ LoggedIn
//! ```
//!
//! The password never leaves this module: requests carry only OPAQUE messages, which are
//! blinded (RFC 9807 §10).

#![deny(clippy::unwrap_used)]

use std::fmt;

use opaque_ke::errors::{InternalError, ProtocolError};
use opaque_ke::{ClientLoginFinishParameters, ClientRegistrationFinishParameters, Identifiers};
use thiserror::Error;

use crate::account_number::AccountNumber;
use crate::rng::Compat;
use crate::suite::{Argon2id, Suite};
use crate::wire::{Detail, RefuseReason, Request, Response};

/// Longest accepted password in bytes; passphrases fit, and the OPRF input stays bounded.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// OPAQUE's context string (RFC 9807 §6.1), so transcripts of this protocol can never be
/// confused with another application's use of the same keys.
pub const CONTEXT: &[u8] = b"OpenRelay account v1";

/// Waiting for the issuer to hand out a fresh account number.
#[derive(Debug)]
pub struct ExpectAccountCreated(());

impl ExpectAccountCreated {
    /// The `CreateAccount` request and the state that reads its answer.
    pub fn start() -> (Self, Request) {
        (Self(()), Request::CreateAccount)
    }

    /// The issued number, to pass to [`ClientRegistration::start`] and show to the user.
    pub fn finish(self, response: Response) -> Result<AccountNumber, ClientError> {
        match response {
            Response::AccountCreated { account } => Ok(account),
            other => Err(unexpected("AccountCreated", other)),
        }
    }
}

/// Registration in progress: the blinded password has been sent.
pub struct ClientRegistration {
    account: AccountNumber,
    password: Password,
    state: opaque_ke::ClientRegistration<Suite>,
    ksf: Argon2id,
}

impl ClientRegistration {
    /// Blinds `password` for `account` and returns the `RegisterStart` request.
    pub fn start(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
    ) -> Result<(Self, Request), ClientError> {
        Self::start_with_ksf(rng, account, password, Argon2id::production())
    }

    /// [`ClientRegistration::start`] with cheap Argon2 parameters, for tests only.
    #[cfg(test)]
    pub(crate) fn start_cheap(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
    ) -> Result<(Self, Request), ClientError> {
        Self::start_with_ksf(rng, account, password, Argon2id::cheap_for_tests())
    }

    fn start_with_ksf(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
        ksf: Argon2id,
    ) -> Result<(Self, Request), ClientError> {
        let password = Password::new(password)?;
        let started = opaque_ke::ClientRegistration::<Suite>::start(&mut Compat(rng), &password.0)
            .map_err(ClientError::from_opaque)?;
        let request = Request::RegisterStart {
            account,
            registration_request: started.message,
        };
        let state = Self {
            account,
            password,
            state: started.state,
            ksf,
        };
        Ok((state, request))
    }

    /// Stretches the password (Argon2id, the slow step), seals the envelope and returns
    /// the `RegisterFinish` request carrying the record for the issuer.
    pub fn finish(
        self,
        rng: &mut impl rand::CryptoRng,
        response: Response,
    ) -> Result<(ExpectRegistered, Request), ClientError> {
        let registration_response = match response {
            Response::RegisterStarted {
                registration_response,
            } => registration_response,
            other => return Err(unexpected("RegisterStarted", other)),
        };
        let finished = self
            .state
            .finish(
                &mut Compat(rng),
                &self.password.0,
                *registration_response,
                ClientRegistrationFinishParameters::new(Identifiers::default(), Some(&self.ksf)),
            )
            .map_err(ClientError::from_opaque)?;
        let request = Request::RegisterFinish {
            account: self.account,
            registration_upload: finished.message,
        };
        Ok((
            ExpectRegistered {
                account: self.account,
            },
            request,
        ))
    }
}

impl fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// Waiting for the issuer to confirm that the record is stored.
#[derive(Debug)]
pub struct ExpectRegistered {
    account: AccountNumber,
}

impl ExpectRegistered {
    /// The registered account once the issuer confirms; only then show the number to
    /// the user as final.
    pub fn finish(self, response: Response) -> Result<AccountNumber, ClientError> {
        match response {
            Response::Registered => Ok(self.account),
            other => Err(unexpected("Registered", other)),
        }
    }
}

/// Login in progress: KE1 has been sent.
pub struct ClientLogin {
    account: AccountNumber,
    password: Password,
    state: opaque_ke::ClientLogin<Suite>,
    ksf: Argon2id,
}

impl ClientLogin {
    /// Blinds `password`, makes an ephemeral key share and returns the `LoginStart`
    /// request.
    pub fn start(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
    ) -> Result<(Self, Request), ClientError> {
        Self::start_with_ksf(rng, account, password, Argon2id::production())
    }

    /// [`ClientLogin::start`] with cheap Argon2 parameters, for tests only.
    #[cfg(test)]
    pub(crate) fn start_cheap(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
    ) -> Result<(Self, Request), ClientError> {
        Self::start_with_ksf(rng, account, password, Argon2id::cheap_for_tests())
    }

    fn start_with_ksf(
        rng: &mut impl rand::CryptoRng,
        account: AccountNumber,
        password: &[u8],
        ksf: Argon2id,
    ) -> Result<(Self, Request), ClientError> {
        let password = Password::new(password)?;
        let started = opaque_ke::ClientLogin::<Suite>::start(&mut Compat(rng), &password.0)
            .map_err(ClientError::from_opaque)?;
        let request = Request::LoginStart {
            account,
            credential_request: started.message,
        };
        let state = Self {
            account,
            password,
            state: started.state,
            ksf,
        };
        Ok((state, request))
    }

    /// Stretches the password, opens the envelope (this is where a wrong password or
    /// account number shows, as [`ClientError::WrongCredentials`]), authenticates the
    /// issuer and returns KE3 in the `LoginFinish` request.
    pub fn finish(
        self,
        rng: &mut impl rand::CryptoRng,
        response: Response,
    ) -> Result<(ExpectLoggedIn, Request), ClientError> {
        let credential_response = match response {
            Response::LoginStarted {
                credential_response,
            } => credential_response,
            other => return Err(unexpected("LoginStarted", other)),
        };
        let finished = self
            .state
            .finish(
                &mut Compat(rng),
                &self.password.0,
                *credential_response,
                ClientLoginFinishParameters::new(
                    Some(CONTEXT),
                    Identifiers::default(),
                    Some(&self.ksf),
                ),
            )
            .map_err(ClientError::from_opaque)?;
        let session_key = SessionKey::from_slice(&finished.session_key);
        let request = Request::LoginFinish {
            credential_finalization: finished.message,
        };
        Ok((
            ExpectLoggedIn {
                account: self.account,
                session_key,
            },
            request,
        ))
    }
}

impl fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLogin")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

/// KE3 sent; the session key is already known (the issuer derives the same one once it
/// verifies KE3).
#[derive(Debug)]
pub struct ExpectLoggedIn {
    account: AccountNumber,
    session_key: SessionKey,
}

impl ExpectLoggedIn {
    /// The OPAQUE session key shared with the issuer.
    pub fn session_key(&self) -> &SessionKey {
        &self.session_key
    }

    /// The login's result once the issuer confirms KE3.
    pub fn finish(self, response: Response) -> Result<LoggedIn, ClientError> {
        match response {
            Response::LoggedIn { credit } => Ok(LoggedIn {
                account: self.account,
                credit,
                session_key: self.session_key,
            }),
            other => Err(unexpected("LoggedIn", other)),
        }
    }
}

/// A completed login.
#[derive(Debug)]
pub struct LoggedIn {
    /// The account logged in to.
    pub account: AccountNumber,
    /// Its credit at login, in units.
    pub credit: u64,
    /// The OPAQUE session key shared with the issuer.
    pub session_key: SessionKey,
}

/// OPAQUE's session key (64 bytes, SHA-512 output), shared by client and issuer after a
/// login; for binding later requests (such as token issuance) to this login.
pub struct SessionKey([u8; SessionKey::LEN]);

impl SessionKey {
    /// Length in bytes.
    pub const LEN: usize = 64;

    /// Copies OPAQUE's output, which is exactly [`SessionKey::LEN`] bytes for [`Suite`].
    pub(crate) fn from_slice(bytes: &[u8]) -> Self {
        let mut key = [0; Self::LEN];
        key.iter_mut().zip(bytes).for_each(|(k, b)| *k = *b);
        Self(key)
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// Why a client step failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClientError {
    /// Nothing to stretch.
    #[error("the password is empty; choose a password")]
    PasswordEmpty,
    /// Longer than [`MAX_PASSWORD_LEN`].
    #[error("the password is {len} bytes, more than the {max}-byte maximum; choose a shorter one")]
    PasswordTooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The issuer's envelope did not open with this password: the password is wrong, or
    /// the account number is (the issuer answers unknown accounts indistinguishably).
    #[error(
        "login failed: wrong password or account number; check both and try again \
         (attempts are rate limited)"
    )]
    WrongCredentials,
    /// The issuer refused the request.
    #[error("the issuer refused: {detail}")]
    Refused {
        /// Its reason; [`RefuseReason::retry_helps`] says whether to try again.
        reason: RefuseReason,
        /// Its explanation.
        detail: Detail,
    },
    /// A response of another kind than this step expects.
    #[error(
        "expected {expected} from the issuer, got {got}; the issuer is not following the protocol"
    )]
    UnexpectedResponse {
        /// The response this step reads.
        expected: &'static str,
        /// The response received.
        got: &'static str,
    },
    /// Argon2id failed, which happens only when memory runs out.
    #[error("hashing the password with Argon2id failed (out of memory?); free memory and retry")]
    PasswordHashing,
    /// The issuer's OPAQUE message is invalid (for example reflects the client's blinded
    /// element): the issuer is broken or an attacker.
    #[error("the issuer sent an invalid OPAQUE message ({0}); do not trust this issuer")]
    InvalidIssuerMessage(String),
}

impl ClientError {
    fn from_opaque(err: ProtocolError) -> Self {
        match err {
            ProtocolError::InvalidLoginError => Self::WrongCredentials,
            ProtocolError::LibraryError(InternalError::KsfError) => Self::PasswordHashing,
            other => Self::InvalidIssuerMessage(format!("{other:?}")),
        }
    }
}

fn unexpected(expected: &'static str, got: Response) -> ClientError {
    match got {
        Response::Refused { reason, detail } => ClientError::Refused { reason, detail },
        other => ClientError::UnexpectedResponse {
            expected,
            got: other.name(),
        },
    }
}

/// The password, kept only for the two OPAQUE steps that need it and overwritten on
/// drop (best effort: copies made by the allocator are out of reach).
struct Password(Vec<u8>);

impl Password {
    fn new(password: &[u8]) -> Result<Self, ClientError> {
        if password.is_empty() {
            return Err(ClientError::PasswordEmpty);
        }
        if password.len() > MAX_PASSWORD_LEN {
            return Err(ClientError::PasswordTooLong {
                len: password.len(),
                max: MAX_PASSWORD_LEN,
            });
        }
        Ok(Self(password.to_vec()))
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}
