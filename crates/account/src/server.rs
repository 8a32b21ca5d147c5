//! The issuer's side: account creation, OPAQUE registration and login, rate limits, who is
//! logged in, and credit. Sans-IO: [`Server::handle`] takes a request, the caller's clock
//! (unix seconds) and an opaque [`SourceId`], and returns the response plus the durable
//! change the caller must save before sending it ([`Reply::change`]).
//!
//! # Rate limits
//!
//! A `LoginStart` is a password guess even if the client never sends `LoginFinish`: the
//! client learns from KE2 alone whether the password opens the envelope. So every
//! `LoginStart` counts, against the account (default 5 per 10 minutes) and against the
//! source (default 20 per 10 minutes); a login that then succeeds gives its attempt back,
//! so a user who logs in often is not locked out, while guesses accumulate. Unknown
//! account numbers are counted exactly like known ones, so the limits reveal nothing.
//! The counters are in memory: an issuer restart resets them.

#![deny(clippy::unwrap_used)]

use std::collections::HashMap;

use opaque_ke::{
    CredentialFinalization, CredentialRequest, Identifiers, RegistrationRequest,
    RegistrationUpload, ServerLogin, ServerLoginParameters, ServerRegistration,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use thiserror::Error;

use crate::account_number::AccountNumber;
use crate::client::{SessionKey, CONTEXT};
use crate::rng::Compat;
use crate::state::{Account, State};
use crate::suite::Suite;
use crate::wire::{Detail, RefuseReason, Request, Response};

/// Who sent a request, as the caller identifies it (for example a hash of the tunnel
/// session). Login state, rate limits and sessions are keyed by it; the issuer never
/// sees addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

/// Rate limits and timeouts; [`Limits::default`] is the production policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `LoginStart`s per account per window.
    pub logins_per_account: u32,
    /// `LoginStart`s per source per window.
    pub logins_per_source: u32,
    /// `CreateAccount`s per source per window.
    pub accounts_per_source: u32,
    /// Length of a rate-limit window in seconds.
    pub window_secs: u64,
    /// How long a login in progress or a reserved account number lasts, in seconds.
    pub pending_secs: u64,
    /// Most logins in progress (and, separately, most reserved numbers) held at once, so
    /// memory stays bounded under a flood.
    pub max_pending: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            logins_per_account: 5,
            logins_per_source: 20,
            accounts_per_source: 3,
            window_secs: 600,
            pending_secs: 60,
            max_pending: 100_000,
        }
    }
}

/// How often expired entries are swept, in seconds.
const SWEEP_INTERVAL_SECS: u64 = 10;

/// The issuer's account logic.
pub struct Server {
    state: State,
    limits: Limits,
    rng: StdRng,
    reserved: HashMap<SourceId, Reservation>,
    logins: HashMap<SourceId, PendingLogin>,
    sessions: HashMap<SourceId, Session>,
    account_attempts: HashMap<AccountNumber, Window>,
    source_attempts: HashMap<SourceId, Window>,
    creations: HashMap<SourceId, Window>,
    next_sweep: u64,
}

/// The result of [`Server::handle`].
#[must_use = "a reply with a change must be saved before its response is sent"]
#[derive(Debug)]
pub struct Reply {
    /// What to send back.
    pub response: Response,
    /// A durable change made by this request. When present, save the state
    /// ([`Server::state`]) and send the response only once that is durable; if saving
    /// fails, call [`Server::revert`] and answer [`RefuseReason::Unavailable`] instead.
    pub change: Option<Change>,
}

/// A change to the durable state, to save before acknowledging it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new account was registered (with zero credit).
    Registered(AccountNumber),
}

/// A source that completed a login.
#[derive(Debug)]
pub struct Session {
    /// The account it is logged in to.
    pub account: AccountNumber,
    /// The OPAQUE session key it shares with the client.
    pub session_key: SessionKey,
}

struct Reservation {
    account: AccountNumber,
    expires: u64,
}

struct PendingLogin {
    account: AccountNumber,
    state: ServerLogin<Suite>,
    expires: u64,
}

/// A fixed rate-limit window: `count` attempts since `start`.
#[derive(Clone, Copy)]
struct Window {
    start: u64,
    count: u32,
}

impl Window {
    /// Seconds until an attempt is allowed, or `None` if one is allowed now.
    fn wait(entry: Option<&Window>, now: u64, limit: u32, length: u64) -> Option<u64> {
        let window = entry?;
        let end = window.start.saturating_add(length);
        (now < end && window.count >= limit).then(|| end - now)
    }

    fn charge(entry: &mut Window, now: u64, length: u64) {
        if now >= entry.start.saturating_add(length) {
            *entry = Window {
                start: now,
                count: 0,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    fn refund(entry: Option<&mut Window>, now: u64, length: u64) {
        if let Some(window) = entry {
            if now < window.start.saturating_add(length) {
                window.count = window.count.saturating_sub(1);
            }
        }
    }

    fn live(&self, now: u64, length: u64) -> bool {
        now < self.start.saturating_add(length)
    }
}

impl Server {
    /// An issuer over `state` with the production [`Limits`]. `rng_seed` seeds the
    /// server's CSPRNG (account numbers, OPAQUE nonces and key shares): take it from the
    /// OS in production, fix it in tests.
    pub fn new(state: State, rng_seed: [u8; 32]) -> Self {
        Self::with_limits(state, Limits::default(), rng_seed)
    }

    /// [`Server::new`] with other limits.
    pub fn with_limits(state: State, limits: Limits, rng_seed: [u8; 32]) -> Self {
        Self {
            state,
            limits,
            rng: StdRng::from_seed(rng_seed),
            reserved: HashMap::new(),
            logins: HashMap::new(),
            sessions: HashMap::new(),
            account_attempts: HashMap::new(),
            source_attempts: HashMap::new(),
            creations: HashMap::new(),
            next_sweep: 0,
        }
    }

    /// The durable state, to save after a [`Change`].
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Decodes a request datagram and handles it; bytes that do not decode get
    /// `Refused(Malformed)` naming what was wrong.
    pub fn handle_bytes(&mut self, now_secs: u64, source: SourceId, bytes: &[u8]) -> Reply {
        match Request::decode(bytes) {
            Ok(request) => self.handle(now_secs, source, request),
            Err(err) => Reply {
                response: Response::Refused {
                    reason: RefuseReason::Malformed,
                    detail: Detail::truncate(&err.to_string()),
                },
                change: None,
            },
        }
    }

    /// Handles one request from `source` at `now_secs` (unix seconds).
    pub fn handle(&mut self, now_secs: u64, source: SourceId, request: Request) -> Reply {
        self.sweep(now_secs);
        let (response, change) = match request {
            Request::CreateAccount => (self.create_account(now_secs, source), None),
            Request::RegisterStart {
                account,
                registration_request,
            } => (
                self.register_start(now_secs, source, account, registration_request),
                None,
            ),
            Request::RegisterFinish {
                account,
                registration_upload,
            } => self.register_finish(now_secs, source, account, registration_upload),
            Request::LoginStart {
                account,
                credential_request,
            } => (
                self.login_start(now_secs, source, account, credential_request),
                None,
            ),
            Request::LoginFinish {
                credential_finalization,
            } => (
                self.login_finish(now_secs, source, credential_finalization),
                None,
            ),
        };
        Reply { response, change }
    }

    /// Undoes a change whose save failed, so memory matches what is on disk.
    pub fn revert(&mut self, change: &Change) {
        match change {
            Change::Registered(account) => {
                self.state.accounts.remove(account);
            }
        }
    }

    /// The account `source` is logged in to, if any.
    pub fn logged_in(&self, source: SourceId) -> Option<AccountNumber> {
        self.sessions.get(&source).map(|session| session.account)
    }

    /// The login of `source`, with its session key.
    pub fn session(&self, source: SourceId) -> Option<&Session> {
        self.sessions.get(&source)
    }

    /// Forgets `source`'s login (call when its tunnel session ends); returns the account
    /// it was logged in to.
    pub fn logout(&mut self, source: SourceId) -> Option<AccountNumber> {
        self.logins.remove(&source);
        self.sessions.remove(&source).map(|session| session.account)
    }

    /// The account's credit, or `None` if it is not registered.
    pub fn balance(&self, account: AccountNumber) -> Option<u64> {
        self.state.accounts.get(&account).map(|a| a.credit)
    }

    /// Adds `units` of credit (a developer command today; a [`crate::CreditSource`]
    /// later). Returns the new balance. Durable only once the state is saved.
    pub fn credit(&mut self, account: AccountNumber, units: u64) -> Result<u64, CreditError> {
        let entry = self
            .state
            .accounts
            .get_mut(&account)
            .ok_or(CreditError::UnknownAccount(account))?;
        let balance = entry
            .credit
            .checked_add(units)
            .ok_or(CreditError::Overflow {
                balance: entry.credit,
                units,
            })?;
        entry.credit = balance;
        Ok(balance)
    }

    /// Takes `units` of credit, or changes nothing and fails with
    /// [`CreditError::InsufficientCredit`]. Returns the new balance.
    pub fn spend(&mut self, account: AccountNumber, units: u64) -> Result<u64, CreditError> {
        let entry = self
            .state
            .accounts
            .get_mut(&account)
            .ok_or(CreditError::UnknownAccount(account))?;
        let balance = entry
            .credit
            .checked_sub(units)
            .ok_or(CreditError::InsufficientCredit {
                balance: entry.credit,
                requested: units,
            })?;
        entry.credit = balance;
        Ok(balance)
    }

    /// Puts a balance back after a failed save (see [`crate::store::DurableServer`]).
    pub(crate) fn restore_balance(&mut self, account: AccountNumber, balance: u64) {
        if let Some(entry) = self.state.accounts.get_mut(&account) {
            entry.credit = balance;
        }
    }

    fn create_account(&mut self, now: u64, source: SourceId) -> Response {
        let limits = &self.limits;
        if let Some(wait) = Window::wait(
            self.creations.get(&source),
            now,
            limits.accounts_per_source,
            limits.window_secs,
        ) {
            return rate_limited(wait, "too many new accounts from this connection");
        }
        if self.reserved.len() >= limits.max_pending && !self.reserved.contains_key(&source) {
            return Response::refused(RefuseReason::Busy);
        }
        Window::charge(
            self.creations.entry(source).or_insert(Window {
                start: now,
                count: 0,
            }),
            now,
            limits.window_secs,
        );
        // 128 random bits collide with negligible probability; checked anyway, so
        // numbers are unique by construction.
        let account = loop {
            let candidate = AccountNumber::random(&mut self.rng);
            let taken = self.state.accounts.contains_key(&candidate)
                || self.reserved.values().any(|r| r.account == candidate);
            if !taken {
                break candidate;
            }
        };
        self.reserved.insert(
            source,
            Reservation {
                account,
                expires: now.saturating_add(limits.pending_secs),
            },
        );
        Response::AccountCreated { account }
    }

    fn reservation_holds(&self, now: u64, source: SourceId, account: AccountNumber) -> bool {
        self.reserved
            .get(&source)
            .is_some_and(|r| r.account == account && now < r.expires)
            && !self.state.accounts.contains_key(&account)
    }

    fn register_start(
        &mut self,
        now: u64,
        source: SourceId,
        account: AccountNumber,
        request: RegistrationRequest<Suite>,
    ) -> Response {
        if !self.reservation_holds(now, source, account) {
            return Response::refused(RefuseReason::NoPendingAccount);
        }
        match ServerRegistration::<Suite>::start(&self.state.setup, request, account.as_bytes()) {
            Ok(started) => Response::RegisterStarted {
                registration_response: Box::new(started.message),
            },
            Err(err) => malformed(&format!("registration request rejected: {err:?}")),
        }
    }

    fn register_finish(
        &mut self,
        now: u64,
        source: SourceId,
        account: AccountNumber,
        upload: RegistrationUpload<Suite>,
    ) -> (Response, Option<Change>) {
        if !self.reservation_holds(now, source, account) {
            return (Response::refused(RefuseReason::NoPendingAccount), None);
        }
        self.reserved.remove(&source);
        self.state.accounts.insert(
            account,
            Account {
                record: ServerRegistration::finish(upload),
                credit: 0,
            },
        );
        (Response::Registered, Some(Change::Registered(account)))
    }

    fn login_start(
        &mut self,
        now: u64,
        source: SourceId,
        account: AccountNumber,
        request: CredentialRequest<Suite>,
    ) -> Response {
        let limits = &self.limits;
        let account_wait = Window::wait(
            self.account_attempts.get(&account),
            now,
            limits.logins_per_account,
            limits.window_secs,
        );
        let source_wait = Window::wait(
            self.source_attempts.get(&source),
            now,
            limits.logins_per_source,
            limits.window_secs,
        );
        match (account_wait, source_wait) {
            (Some(a), Some(s)) => {
                return rate_limited(
                    a.max(s),
                    "too many login attempts for this account and from this connection",
                )
            }
            (Some(wait), None) => {
                return rate_limited(wait, "too many login attempts for this account")
            }
            (None, Some(wait)) => {
                return rate_limited(wait, "too many login attempts from this connection")
            }
            (None, None) => {}
        }
        if self.logins.len() >= limits.max_pending && !self.logins.contains_key(&source) {
            return Response::refused(RefuseReason::Busy);
        }
        let fresh = Window {
            start: now,
            count: 0,
        };
        Window::charge(
            self.account_attempts.entry(account).or_insert(fresh),
            now,
            limits.window_secs,
        );
        Window::charge(
            self.source_attempts.entry(source).or_insert(fresh),
            now,
            limits.window_secs,
        );

        // Unknown accounts take opaque-ke's dummy path: a fake record derived from the
        // server setup, so KE2 has the same size and shape, and only the client's
        // envelope check fails.
        let record = self.state.accounts.get(&account).map(|a| a.record.clone());
        let started = ServerLogin::start(
            &mut Compat(&mut self.rng),
            &self.state.setup,
            record,
            request,
            account.as_bytes(),
            server_parameters(),
        );
        match started {
            Ok(started) => {
                self.logins.insert(
                    source,
                    PendingLogin {
                        account,
                        state: started.state,
                        expires: now.saturating_add(limits.pending_secs),
                    },
                );
                Response::LoginStarted {
                    credential_response: Box::new(started.message),
                }
            }
            Err(err) => malformed(&format!("KE1 rejected: {err:?}")),
        }
    }

    fn login_finish(
        &mut self,
        now: u64,
        source: SourceId,
        finalization: CredentialFinalization<Suite>,
    ) -> Response {
        let Some(pending) = self.logins.remove(&source) else {
            return Response::refused(RefuseReason::NoLoginInProgress);
        };
        if now >= pending.expires {
            return Response::refused(RefuseReason::NoLoginInProgress);
        }
        let Ok(finished) = pending.state.finish(finalization, server_parameters()) else {
            return Response::refused(RefuseReason::LoginFailed);
        };
        // A dummy login cannot produce a valid KE3; checked anyway so that an unknown
        // account can never be logged in to.
        let Some(credit) = self.balance(pending.account) else {
            return Response::refused(RefuseReason::LoginFailed);
        };
        let window = self.limits.window_secs;
        Window::refund(self.account_attempts.get_mut(&pending.account), now, window);
        Window::refund(self.source_attempts.get_mut(&source), now, window);
        self.sessions.insert(
            source,
            Session {
                account: pending.account,
                session_key: SessionKey::from_slice(&finished.session_key),
            },
        );
        Response::LoggedIn { credit }
    }

    /// Drops expired logins, reservations and rate-limit windows, at most every
    /// [`SWEEP_INTERVAL_SECS`], so memory stays bounded without a timer.
    fn sweep(&mut self, now: u64) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now.saturating_add(SWEEP_INTERVAL_SECS);
        let window = self.limits.window_secs;
        self.logins.retain(|_, login| now < login.expires);
        self.reserved
            .retain(|_, reservation| now < reservation.expires);
        self.account_attempts.retain(|_, w| w.live(now, window));
        self.source_attempts.retain(|_, w| w.live(now, window));
        self.creations.retain(|_, w| w.live(now, window));
    }
}

fn server_parameters() -> ServerLoginParameters<'static, 'static> {
    ServerLoginParameters {
        context: Some(CONTEXT),
        identifiers: Identifiers::default(),
    }
}

fn rate_limited(wait_secs: u64, what: &str) -> Response {
    let minutes = u16::try_from(wait_secs.div_ceil(60).max(1)).unwrap_or(u16::MAX);
    Response::Refused {
        reason: RefuseReason::RateLimited {
            retry_after_minutes: minutes,
        },
        detail: Detail::truncate(&format!("{what}; try again in {minutes} minute(s)")),
    }
}

fn malformed(what: &str) -> Response {
    Response::Refused {
        reason: RefuseReason::Malformed,
        detail: Detail::truncate(what),
    }
}

/// Why a credit operation failed; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CreditError {
    /// No such registered account.
    #[error("account {0} is not registered; check the number")]
    UnknownAccount(AccountNumber),
    /// Spending more than the balance.
    #[error("insufficient credit: balance {balance}, requested {requested}; add credit first")]
    InsufficientCredit {
        /// The balance, unchanged.
        balance: u64,
        /// Units asked for.
        requested: u64,
    },
    /// The balance would exceed `u64::MAX` units.
    #[error("crediting {units} units to a balance of {balance} overflows; credit less")]
    Overflow {
        /// The balance, unchanged.
        balance: u64,
        /// Units asked for.
        units: u64,
    },
}
