//! The refill's tokio edge: waits as the [`RefillPolicy`] says, then opens an attested
//! session with the issuer, logs in and buys, merging each paid batch into the stock file
//! before asking for the next.
//!
//! It runs inside the supervisor's task (`run::supervise` joins it with the connection
//! loop), so its stock changes and the supervisor's never interleave; [`Stock::update`]'s
//! lock keeps other processes out.

use std::path::Path;
use std::time::Instant;

use account::ClientError;
use issuer::Refusal;
use rand::SeedableRng;
use tokio::sync::{watch, Notify};

use super::{Outcome, RefillPolicy, RefillSettings, RefillStatus};
use crate::issuer_client::{IssuerClient, IssuerError};
use crate::run::{ClientSettings, Status};
use crate::tickets::{self, AccountError, Prepaid, Stock};

/// Why a refill failed, and what fixes it.
#[derive(Debug, thiserror::Error)]
pub enum RefillError {
    /// No attested session with the issuer (network, or its attestation failed).
    #[error("cannot reach the issuer ({0}); it retries")]
    Unreachable(#[source] IssuerError),
    /// The login failed: the password or the account number is wrong.
    #[error(
        "wrong password or account number; correct the password file or the account \
         number, then restart the client"
    )]
    WrongCredentials,
    /// The issuer refused the login or the password is unusable.
    #[error("{0}{suffix}", suffix = login_suffix(.0))]
    Login(#[source] ClientError),
    /// The account's credit does not pay for the next batch.
    #[error("not enough credit ({credit} units); add credit, then it retries")]
    NoCredit {
        /// The account's credit, as last seen.
        credit: u64,
    },
    /// The account had its tokens for this week.
    #[error("{0}; it retries")]
    WeeklyLimit(String),
    /// The directory names no issuer or not this week's key: only a newer directory helps.
    #[error("{0}; restart the client with a newer directory")]
    Directory(String),
    /// The stock file could not be read or written. Bought tickets wait in memory and are
    /// saved at the next attempt.
    #[error("{0}; it retries")]
    Stock(#[source] AccountError),
    /// Anything else the issuer or the purchase did.
    #[error("{0}; it retries")]
    Other(#[source] AccountError),
}

impl RefillError {
    /// Whether a later attempt can succeed without the user changing anything (credit
    /// counts as changing nothing: it arrives at the issuer, not here).
    pub fn retry_helps(&self) -> bool {
        match self {
            Self::WrongCredentials | Self::Directory(_) => false,
            Self::Login(e) => retry_helps_login(e),
            Self::Unreachable(_)
            | Self::NoCredit { .. }
            | Self::WeeklyLimit(_)
            | Self::Stock(_)
            | Self::Other(_) => true,
        }
    }

    /// Types an account or purchase failure; `credit` is the account's last known credit.
    fn from_account(e: AccountError, credit: u64) -> Self {
        match e {
            AccountError::Issuer(e) => Self::Unreachable(e),
            AccountError::Account(ClientError::WrongCredentials) => Self::WrongCredentials,
            AccountError::Account(e) => Self::Login(e),
            AccountError::Refused {
                reason: Refusal::InsufficientCredit,
                ..
            } => Self::NoCredit { credit },
            AccountError::Refused {
                reason: Refusal::BatchLimit,
                text,
            } => Self::WeeklyLimit(text),
            AccountError::Refused {
                reason: Refusal::WrongKey,
                text,
            }
            | AccountError::Directory(text) => Self::Directory(text),
            e @ AccountError::Stock { .. } => Self::Stock(e),
            e => Self::Other(e),
        }
    }
}

fn login_suffix(e: &ClientError) -> &'static str {
    if retry_helps_login(e) {
        "; it retries"
    } else {
        "; restart the client once it is fixed"
    }
}

fn retry_helps_login(e: &ClientError) -> bool {
    match e {
        ClientError::Refused { reason, .. } => reason.retry_helps(),
        ClientError::PasswordEmpty
        | ClientError::PasswordTooLong { .. }
        | ClientError::WrongCredentials
        | ClientError::InvalidIssuerMessage(_) => false,
        ClientError::UnexpectedResponse { .. } | ClientError::PasswordHashing => true,
    }
}

/// How one refill attempt ended.
enum Ended {
    /// The stock holds what was wanted.
    Done,
    /// The client is stopping (only between paid batches, never in the middle of one).
    Stopping,
    /// It failed.
    Failed(RefillError),
}

/// What one attempt got so far.
#[derive(Default)]
struct Progress {
    /// Connections bought and saved.
    bought: usize,
    /// The account's credit, as last seen (at login or after a batch).
    credit: Option<u64>,
}

/// Where the refill reports and what it watches.
pub(crate) struct Links<'a> {
    /// The stock level the supervisor saw (connections), after each change.
    pub(crate) level: watch::Receiver<Option<usize>>,
    /// Becomes true when the client stops.
    pub(crate) stopping: watch::Receiver<bool>,
    /// What the refill did, for the user.
    pub(crate) report: &'a watch::Sender<RefillStatus>,
    /// Woken after tickets were added, so a supervisor waiting for tokens goes on at once.
    pub(crate) refilled: &'a Notify,
    /// The connection's state: in whole-host mode the issuer is reached through it.
    pub(crate) connection: watch::Receiver<Status>,
}

/// Runs the refill until the client stops.
pub(crate) async fn drive(
    settings: &ClientSettings,
    refill: &RefillSettings,
    stock: &Path,
    links: Links<'_>,
) {
    // Tickets paid for whose save failed: merged first at the next attempt, and tried once
    // more when the client stops.
    let mut unsaved: Vec<Prepaid> = Vec::new();
    refill_until_stopped(settings, refill, stock, links, &mut unsaved).await;
    if !unsaved.is_empty() {
        if let Err(e) = Stock::update(stock, |s| s.add(unsaved.clone())) {
            tracing::error!(
                "tickets for {} paid connections could not be saved: {e}",
                unsaved.len()
            );
        }
    }
}

async fn refill_until_stopped(
    settings: &ClientSettings,
    refill: &RefillSettings,
    stock: &Path,
    mut links: Links<'_>,
    unsaved: &mut Vec<Prepaid>,
) {
    let mut policy = RefillPolicy::new(refill.keep, refill.delay.clone());
    let mut rng = rand::rngs::StdRng::from_os_rng();
    loop {
        let due = policy.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            changed = links.level.changed() => {
                if changed.is_err() {
                    return;
                }
                let level = *links.level.borrow_and_update();
                if let Some(n) = level {
                    policy.stock_level(Instant::now(), n, &mut rng);
                }
                continue;
            }
            _ = links.stopping.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
        }
        let Some(start) = policy.poll_start(Instant::now()) else {
            continue;
        };
        let mut progress = Progress::default();
        let ended = attempt(
            settings,
            refill,
            stock,
            start.up_to,
            unsaved,
            &mut progress,
            &mut links,
        )
        .await;
        let outcome = match ended {
            Ended::Stopping => return,
            Ended::Done => {
                if progress.bought > 0 {
                    links.report.send_replace(RefillStatus::Bought {
                        connections: progress.bought,
                        credit_left: progress.credit.unwrap_or(0),
                    });
                }
                Outcome::Done
            }
            Ended::Failed(e) => {
                let retry_helps = e.retry_helps();
                links.report.send_replace(RefillStatus::Failed {
                    bought: progress.bought,
                    reason: e.to_string(),
                });
                Outcome::Failed { retry_helps }
            }
        };
        let level = Stock::load(stock).map_or(0, |s| s.len());
        policy.finished(Instant::now(), outcome, level, &mut rng);
    }
}

/// One refill: up to `up_to` connections in the stock.
async fn attempt(
    settings: &ClientSettings,
    refill: &RefillSettings,
    stock: &Path,
    up_to: usize,
    unsaved: &mut Vec<Prepaid>,
    progress: &mut Progress,
    links: &mut Links<'_>,
) -> Ended {
    if !unsaved.is_empty() {
        let pending = unsaved.clone();
        if let Err(e) = Stock::update(stock, |s| s.add(pending)) {
            return Ended::Failed(RefillError::Stock(e));
        }
        progress.bought += unsaved.len();
        unsaved.clear();
        links.refilled.notify_one();
    }
    let have = match Stock::load(stock) {
        Ok(s) => s.len(),
        Err(e) => return Ended::Failed(RefillError::Stock(e)),
    };
    let need = up_to.saturating_sub(have);
    if need == 0 {
        return Ended::Done;
    }
    let Some(issuer) = &settings.directory.issuer else {
        return Ended::Failed(RefillError::Directory(
            "the directory lists no token issuer".into(),
        ));
    };
    // In whole-host mode the issuer is reachable only through the tunnel. A socket opened
    // before the tunnel device has its address would keep a source address that the egress
    // refuses as spoofed, so the refill waits for the connection.
    if settings.fwmark.is_some() {
        let up = links
            .connection
            .wait_for(|s| matches!(s, Status::Connected { .. }));
        tokio::select! {
            r = up => if r.is_err() {
                return Ended::Stopping;
            },
            _ = links.stopping.wait_for(|s| *s) => return Ended::Stopping,
        }
    }
    // Nothing is paid before the first batch: stopping may cut the session and login short.
    let connect = IssuerClient::connect(
        issuer.endpoint,
        tunnel::PublicKey::from_bytes(issuer.wg_public_key.0),
        crate::run::verification(&settings.directory, settings.accept_out_of_date),
    );
    let mut c = tokio::select! {
        r = connect => match r {
            Ok(c) => c,
            Err(e) => return Ended::Failed(RefillError::Unreachable(e)),
        },
        _ = links.stopping.wait_for(|s| *s) => return Ended::Stopping,
    };
    let login = tickets::login(&mut c, refill.account, refill.password.expose());
    let who = tokio::select! {
        r = login => match r {
            Ok(who) => who,
            Err(e) => return Ended::Failed(RefillError::from_account(e, 0)),
        },
        _ = links.stopping.wait_for(|s| *s) => return Ended::Stopping,
    };
    progress.credit = Some(who.credit);
    let mut bought = 0;
    while bought < need {
        let n = tickets::CONNECTIONS_PER_REQUEST.min(need - bought);
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (prepaid, balance) = match tickets::buy(&mut c, &settings.directory, n, unix).await {
            Ok(b) => b,
            Err(e) => {
                let credit = progress.credit.unwrap_or(who.credit);
                return Ended::Failed(RefillError::from_account(e, credit));
            }
        };
        progress.credit = Some(balance);
        let got = prepaid.len();
        bought += got;
        if let Err(e) = Stock::update(stock, |s| s.add(prepaid.clone())) {
            unsaved.extend(prepaid);
            return Ended::Failed(RefillError::Stock(e));
        }
        progress.bought += got;
        links.refilled.notify_one();
        if got < n {
            // `buy` pairs every paid token; fewer connections would mean a broken issuer,
            // and asking again could loop.
            return Ended::Failed(RefillError::Other(AccountError::Unexpected(
                "fewer tokens than asked for",
            )));
        }
        if *links.stopping.borrow() {
            return Ended::Stopping;
        }
    }
    Ended::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_what_fixes_them_and_whether_retrying_helps() {
        let no_credit = RefillError::from_account(
            AccountError::Refused {
                reason: Refusal::InsufficientCredit,
                text: "insufficient credit: balance 3, requested 4; add credit first".into(),
            },
            3,
        );
        assert_eq!(
            no_credit.to_string(),
            "not enough credit (3 units); add credit, then it retries"
        );
        assert!(no_credit.retry_helps());

        let wrong =
            RefillError::from_account(AccountError::Account(ClientError::WrongCredentials), 0);
        assert!(matches!(wrong, RefillError::WrongCredentials));
        assert!(wrong.to_string().contains("wrong password"), "{wrong}");
        assert!(
            !wrong.retry_helps(),
            "retrying a wrong password only uses up login attempts"
        );

        let unreachable = RefillError::from_account(AccountError::Issuer(IssuerError::NoAnswer), 0);
        assert!(unreachable.retry_helps());
        assert!(
            unreachable.to_string().ends_with("; it retries"),
            "{unreachable}"
        );

        let old_key = RefillError::from_account(
            AccountError::Refused {
                reason: Refusal::WrongKey,
                text: "token request for key 0x01, this week's key is 0x02; refresh the directory"
                    .into(),
            },
            0,
        );
        assert!(!old_key.retry_helps());
        assert!(old_key.to_string().contains("newer directory"), "{old_key}");
    }
}
