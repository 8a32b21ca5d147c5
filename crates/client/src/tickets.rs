//! Accounts and tokens on the client: creating an account and logging in through an
//! [`IssuerClient`], buying tickets ahead of time, and the local stock of them.
//!
//! A ticket is what one connection spends: a route chosen in advance, and for each hop a
//! fresh session key with a token issued for exactly that relay and key. Tickets are
//! bought in batches well before use, so the time of issuance says nothing about the time
//! of a connection.

use std::path::{Path, PathBuf};

use account::{
    AccountNumber, ClientError, ClientLogin, ClientRegistration, ExpectAccountCreated, LoggedIn,
};
use base64::Engine;
use directory::Directory;
use issuer::{RequestBody, ResponseBody, MAX_BATCH};
use serde::{Deserialize, Serialize};
use token::{Challenge, Epoch, IssuerPublicKey};
use tunnel::StaticSecret;

use crate::connection::Ticket;
use crate::issuer_client::{IssuerClient, IssuerError};

/// Why an account or token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The issuer could not be reached or failed attestation.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// The account protocol failed (wrong password, refusal).
    #[error(transparent)]
    Account(#[from] ClientError),
    /// The issuer's account answer does not parse.
    #[error("the issuer's account answer is malformed: {0}")]
    Decode(#[from] account::DecodeError),
    /// The issuer refused to issue tokens.
    #[error("the issuer refused: {text}")]
    Refused {
        /// Why, as a number.
        reason: issuer::Refusal,
        /// Why, in words.
        text: String,
    },
    /// The directory lists no issuer, or no key for this week.
    #[error("{0}")]
    Directory(String),
    /// The issuer answered something else than asked.
    #[error("the issuer answered {0}; it is not following the protocol")]
    Unexpected(&'static str),
    /// A token did not finalize (the issuer signed with another key, or misbehaved).
    #[error("a token from the issuer does not verify: {0}")]
    Token(#[from] token::TokenError),
    /// The stock file.
    #[error("the token stock {path}: {problem}")]
    Stock {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

async fn account_call(
    c: &mut IssuerClient,
    request: account::Request,
) -> Result<account::Response, AccountError> {
    match c.call(RequestBody::Account(request.encode())).await? {
        ResponseBody::Account(bytes) => Ok(account::Response::decode(&bytes)?),
        ResponseBody::Refused { reason, text } => Err(AccountError::Refused { reason, text }),
        ResponseBody::Issued { .. } => Err(AccountError::Unexpected("Issued")),
    }
}

/// Creates an account with `password`; the issuer picks the number.
pub async fn create_account(
    c: &mut IssuerClient,
    password: &[u8],
) -> Result<AccountNumber, AccountError> {
    let (expect, req) = ExpectAccountCreated::start();
    let account = expect.finish(account_call(c, req).await?)?;
    let (reg, req) = ClientRegistration::start(&mut rand::rng(), account, password)?;
    let resp = account_call(c, req).await?;
    let (expect, req) = reg.finish(&mut rand::rng(), resp)?;
    Ok(expect.finish(account_call(c, req).await?)?)
}

/// Logs in; the password never leaves this process (OPAQUE).
pub async fn login(
    c: &mut IssuerClient,
    account: AccountNumber,
    password: &[u8],
) -> Result<LoggedIn, AccountError> {
    let (login, req) = ClientLogin::start(&mut rand::rng(), account, password)?;
    let resp = account_call(c, req).await?;
    let (expect, req) = login.finish(&mut rand::rng(), resp)?;
    Ok(expect.finish(account_call(c, req).await?)?)
}

/// One connection's worth of tickets: the route and a ticket per hop.
#[derive(Clone, Debug)]
pub struct Prepaid {
    /// The ingress's name in the directory.
    pub ingress: String,
    /// The egress's name.
    pub egress: String,
    /// The tokens' epoch.
    pub epoch: Epoch,
    /// Ingress ticket, egress ticket.
    pub tickets: [Ticket; 2],
}

/// This week's issuer key from the directory.
pub fn current_key(
    dir: &Directory,
    unix_secs: u64,
) -> Result<(String, IssuerPublicKey), AccountError> {
    let issuer = dir
        .issuer
        .as_ref()
        .ok_or_else(|| AccountError::Directory("the directory lists no token issuer".into()))?;
    let keys = issuer
        .token_keys()
        .map_err(|(e, err)| AccountError::Directory(format!("issuer key for epoch {e}: {err}")))?;
    let epoch = Epoch::at(unix_secs);
    let key = keys.into_iter().find(|k| k.epoch == epoch).ok_or_else(|| {
        AccountError::Directory(format!(
            "the directory has no issuer key for this week ({epoch}); fetch a newer directory"
        ))
    })?;
    Ok((issuer.name.clone(), key))
}

/// Connections one issuer request pays for (two tokens each). Who buys more saves each
/// such batch before asking for the next, so a refusal midway loses nothing paid.
pub const CONNECTIONS_PER_REQUEST: usize = MAX_BATCH / 2;

/// Buys tickets for `connections` connections over routes picked from `dir` (as the
/// client would pick them); the logged-in account pays two tokens per connection.
/// Returns them and the credit left.
pub async fn buy(
    c: &mut IssuerClient,
    dir: &Directory,
    connections: usize,
    unix_secs: u64,
) -> Result<(Vec<Prepaid>, u64), AccountError> {
    let (issuer_name, key) = current_key(dir, unix_secs)?;
    // Every hop of every connection: (route index, hop, session secret, challenge).
    let mut hops = Vec::new();
    let mut routes = Vec::new();
    for i in 0..connections {
        // The thread's generator, taken per pick: held across the awaits below, it would
        // keep this future from moving between threads (the client's supervisor task,
        // which runs refills, is spawned).
        let route = directory::pick_route(dir, &mut rand::rng(), &[])
            .map_err(|e| AccountError::Directory(e.to_string()))?;
        for relay in [&route.ingress, &route.egress] {
            let secret = StaticSecret::generate();
            let challenge = Challenge::for_session(
                &issuer_name,
                relay.wg_public_key.as_bytes(),
                secret.public_key().as_bytes(),
            );
            hops.push((i, secret, challenge));
        }
        routes.push((route.ingress.name.clone(), route.egress.name.clone()));
    }
    let mut tickets = Vec::new();
    let mut balance = 0;
    for batch in hops.chunks(MAX_BATCH) {
        let mut requests = Vec::new();
        let mut pending = Vec::new();
        for (_, _, challenge) in batch {
            let (r, p) = token::request(&key, challenge)?;
            requests.push(r);
            pending.push(p);
        }
        let responses = match c.call(RequestBody::Issue(requests)).await? {
            ResponseBody::Issued {
                balance: b,
                responses,
            } => {
                balance = b;
                responses
            }
            ResponseBody::Refused { reason, text } => {
                return Err(AccountError::Refused { reason, text })
            }
            ResponseBody::Account(_) => return Err(AccountError::Unexpected("an account message")),
        };
        if responses.len() != batch.len() {
            return Err(AccountError::Unexpected("a batch of another size"));
        }
        for ((p, r), (i, secret, challenge)) in pending.into_iter().zip(&responses).zip(batch) {
            let t = p.finalize(&key, r)?;
            tickets.push((
                *i,
                Ticket {
                    session_secret: secret.clone(),
                    challenge: challenge.encode(),
                    token: t.encode(),
                },
            ));
        }
    }
    let mut prepaid = Vec::new();
    for (i, (ingress, egress)) in routes.into_iter().enumerate() {
        let mut mine = tickets
            .iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, t)| t.clone());
        if let (Some(a), Some(b)) = (mine.next(), mine.next()) {
            prepaid.push(Prepaid {
                ingress,
                egress,
                epoch: key.epoch,
                tickets: [a, b],
            });
        }
    }
    Ok((prepaid, balance))
}

/// The tickets kept on disk between runs (mode 0600: they are bearer tokens).
///
/// Several writers share the file: the client's supervisor (taking tickets), its refill
/// (adding them), `openrelay account tokens`, another client. They change it with
/// [`Stock::update`], which holds a lock for the load, change and save, so none of them
/// loses another's tickets or takes a ticket that another took.
#[derive(Debug)]
pub struct Stock {
    path: PathBuf,
    entries: Vec<Prepaid>,
    /// Changed since loading (saved by [`Stock::update`] only then).
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct StockFile {
    #[serde(default, rename = "connection")]
    connections: Vec<StockEntry>,
}

#[derive(Serialize, Deserialize)]
struct StockEntry {
    ingress: String,
    egress: String,
    epoch: u32,
    hops: Vec<StockTicket>,
}

#[derive(Serialize, Deserialize)]
struct StockTicket {
    session_key: String,
    challenge: String,
    token: String,
}

impl Stock {
    /// Loads the stock at `path` (empty if there is none yet).
    pub fn load(path: &Path) -> Result<Self, AccountError> {
        let err = |problem: String| AccountError::Stock {
            path: path.to_path_buf(),
            problem,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        let file: StockFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut entries = Vec::new();
        for c in file.connections {
            let mut tickets = Vec::new();
            for h in &c.hops {
                let key = StaticSecret::from_base64(&h.session_key)
                    .map_err(|e| err(format!("a session key: {e}")))?;
                let challenge = b64.decode(&h.challenge).map_err(|e| err(e.to_string()))?;
                let token = b64.decode(&h.token).map_err(|e| err(e.to_string()))?;
                tickets.push(Ticket {
                    session_secret: key,
                    challenge,
                    token,
                });
            }
            let [a, b]: [Ticket; 2] = tickets
                .try_into()
                .map_err(|_| err("a connection without exactly two hops".into()))?;
            entries.push(Prepaid {
                ingress: c.ingress,
                egress: c.egress,
                epoch: Epoch(c.epoch),
                tickets: [a, b],
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            entries,
            dirty: false,
        })
    }

    /// Loads the stock at `path`, lets `change` change it, and saves it if it changed, all
    /// under an exclusive lock on `<path>.lock` (held by this process only for the file
    /// operations, so the wait is short).
    pub fn update<T>(path: &Path, change: impl FnOnce(&mut Stock) -> T) -> Result<T, AccountError> {
        let _lock = lock(path)?;
        let mut stock = Self::load(path)?;
        let out = change(&mut stock);
        if stock.dirty {
            stock.save()?;
        }
        Ok(out)
    }

    /// Writes the stock (atomically, readable by this user only).
    pub fn save(&self) -> Result<(), AccountError> {
        let err = |problem: String| AccountError::Stock {
            path: self.path.clone(),
            problem,
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        let file = StockFile {
            connections: self
                .entries
                .iter()
                .map(|p| StockEntry {
                    ingress: p.ingress.clone(),
                    egress: p.egress.clone(),
                    epoch: p.epoch.0,
                    hops: p
                        .tickets
                        .iter()
                        .map(|t| StockTicket {
                            session_key: t.session_secret.to_base64(),
                            challenge: b64.encode(&t.challenge),
                            token: b64.encode(&t.token),
                        })
                        .collect(),
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(e.to_string()))?;
            f.write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
            f.sync_all().map_err(|e| err(e.to_string()))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }

    /// Adds bought tickets.
    pub fn add(&mut self, prepaid: Vec<Prepaid>) {
        self.dirty |= !prepaid.is_empty();
        self.entries.extend(prepaid);
    }

    /// Tickets left.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are left.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops tickets that can no longer be spent (their week is over, or a relay left the
    /// directory); returns how many went.
    pub fn prune(&mut self, dir: &Directory, unix_secs: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|p| {
            p.epoch.redeemable_at(unix_secs)
                && dir.relays.iter().any(|r| r.name == p.ingress)
                && dir.relays.iter().any(|r| r.name == p.egress)
        });
        let pruned = before - self.entries.len();
        self.dirty |= pruned > 0;
        pruned
    }

    /// Takes one connection's tickets (oldest first), to spend now.
    pub fn take(&mut self) -> Option<Prepaid> {
        let taken = (!self.entries.is_empty()).then(|| self.entries.remove(0));
        self.dirty |= taken.is_some();
        taken
    }
}

/// An exclusive lock on the stock at `path`, released when dropped. The lock file stays
/// (removing it would let two writers lock two different files).
fn lock(path: &Path) -> Result<std::fs::File, AccountError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |problem: String| AccountError::Stock {
        path: path.to_path_buf(),
        problem,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path.with_extension("lock"))
        .map_err(|e| err(format!("cannot open its lock file: {e}")))?;
    file.lock()
        .map_err(|e| err(format!("cannot lock it: {e}")))?;
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn prepaid(name: &str) -> Prepaid {
        let ticket = || Ticket {
            session_secret: StaticSecret::generate(),
            challenge: vec![1, 2, 3],
            token: vec![4, 5, 6],
        };
        Prepaid {
            ingress: name.to_string(),
            egress: "egress".into(),
            epoch: Epoch(1),
            tickets: [ticket(), ticket()],
        }
    }

    /// A stock file in a directory of its own (not created yet), and that directory.
    fn stock_path() -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "openrelay-stock-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let path = dir.join("tokens.toml");
        (dir, path)
    }

    /// Writers in several threads (as the supervisor, a refill and `openrelay account
    /// tokens` are, in one process or several) add and take at the same time: every
    /// ticket is either still in the stock or was taken exactly once.
    #[test]
    fn concurrent_updates_never_lose_or_repeat_a_ticket() {
        let (dir, path) = stock_path();
        let (adders, per_adder) = (3, 20);
        let taken = std::thread::scope(|s| {
            for a in 0..adders {
                let path = &path;
                s.spawn(move || {
                    for i in 0..per_adder {
                        Stock::update(path, |st| st.add(vec![prepaid(&format!("{a}-{i}"))]))
                            .unwrap();
                    }
                });
            }
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    let path = &path;
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for _ in 0..per_adder {
                            if let Some(p) = Stock::update(path, Stock::take).unwrap() {
                                got.push(p.ingress);
                            }
                        }
                        got
                    })
                })
                .collect();
            takers
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        });
        let left: Vec<String> = Stock::load(&path)
            .unwrap()
            .entries
            .into_iter()
            .map(|p| p.ingress)
            .collect();
        let mut all: Vec<String> = taken.iter().chain(&left).cloned().collect();
        all.sort();
        let mut expected: Vec<String> = (0..adders)
            .flat_map(|a| (0..per_adder).map(move |i| format!("{a}-{i}")))
            .collect();
        expected.sort();
        assert_eq!(all, expected, "a ticket was lost or taken twice");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_update_that_changes_nothing_writes_nothing() {
        let (dir, path) = stock_path();
        assert!(Stock::update(&path, Stock::take).unwrap().is_none());
        assert!(!path.exists());
        Stock::update(&path, |s| s.add(vec![prepaid("a")])).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the stock holds bearer tokens");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
