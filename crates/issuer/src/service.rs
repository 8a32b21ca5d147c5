//! The issuer's logic: account messages to the account server, issuance paid from the
//! logged-in account's credit, answers remembered per source for retransmissions.

use std::collections::HashMap;

use account::{AccountNumber, DurableError, DurableServer, SourceId};
use token::{Epoch, IssuerKey, TokenRequest};

use crate::wire::{Refusal, Request, RequestBody, Response, ResponseBody};

/// How much issuance costs and how much one account may take.
#[derive(Debug, Clone, Copy)]
pub struct IssueLimits {
    /// Credit units per token.
    pub price: u64,
    /// Tokens one account may receive per epoch (a week).
    pub per_epoch: u32,
}

impl Default for IssueLimits {
    fn default() -> Self {
        Self {
            price: 1,
            per_epoch: 500,
        }
    }
}

/// The issuer: accounts, this and next epoch's token keys, limits.
pub struct Service {
    accounts: DurableServer,
    keys: Vec<IssuerKey>,
    limits: IssueLimits,
    issued: HashMap<(AccountNumber, Epoch), u32>,
    /// The last request id and answer per source, so a retransmission is not paid twice.
    last: HashMap<SourceId, (u32, Vec<u8>)>,
    /// Tokens issued in total (a counter for reports).
    pub tokens_issued: u64,
}

impl Service {
    /// Serves `accounts` and signs with `keys` (one per epoch).
    pub fn new(accounts: DurableServer, keys: Vec<IssuerKey>, limits: IssueLimits) -> Self {
        Self {
            accounts,
            keys,
            limits,
            issued: HashMap::new(),
            last: HashMap::new(),
            tokens_issued: 0,
        }
    }

    /// The account server (balances, logins).
    pub fn accounts(&mut self) -> &mut DurableServer {
        &mut self.accounts
    }

    /// Answers one request datagram from `source` (a tunnel session).
    pub fn handle(&mut self, now_secs: u64, source: SourceId, bytes: &[u8]) -> Vec<u8> {
        let request = match Request::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                return Response {
                    id: 0,
                    body: refused(Refusal::Malformed, &e.to_string()),
                }
                .encode()
            }
        };
        if let Some((id, answer)) = self.last.get(&source) {
            if *id == request.id {
                return answer.clone();
            }
        }
        let body = match request.body {
            RequestBody::Account(m) => {
                let (answer, err) = self.accounts.handle_bytes(now_secs, source, &m);
                if let Some(err) = err {
                    tracing::error!("the account store could not be saved: {err}");
                }
                ResponseBody::Account(answer)
            }
            RequestBody::Issue(requests) => self.issue(now_secs, source, &requests),
        };
        let answer = Response {
            id: request.id,
            body,
        }
        .encode();
        self.last.insert(source, (request.id, answer.clone()));
        answer
    }

    /// The source's session ended: its login and remembered answer go.
    pub fn forget(&mut self, source: SourceId) {
        self.accounts.logout(source);
        self.last.remove(&source);
    }

    fn issue(
        &mut self,
        now_secs: u64,
        source: SourceId,
        requests: &[TokenRequest],
    ) -> ResponseBody {
        let Some(account) = self.accounts.server().logged_in(source) else {
            return refused(Refusal::NotLoggedIn, "log in before asking for tokens");
        };
        let epoch = Epoch::at(now_secs);
        let Some(key) = self.keys.iter().find(|k| k.public().epoch == epoch) else {
            tracing::error!("no token key for {epoch}");
            return refused(
                Refusal::Internal,
                "the issuer has no key for this week; try again later",
            );
        };
        if let Some(r) = requests
            .iter()
            .find(|r| r.truncated_key_id != key.public().truncated_key_id())
        {
            return refused(
                Refusal::WrongKey,
                &format!(
                    "token request for key {:#04x}, this week's key is {:#04x}; refresh the directory",
                    r.truncated_key_id,
                    key.public().truncated_key_id()
                ),
            );
        }
        let n = requests.len() as u32;
        let taken = self.issued.get(&(account, epoch)).copied().unwrap_or(0);
        if taken + n > self.limits.per_epoch {
            return refused(
                Refusal::BatchLimit,
                &format!(
                    "this account has had {taken} of its {} tokens this week",
                    self.limits.per_epoch
                ),
            );
        }
        // Sign first (nothing is charged for a request that cannot be served), then pay.
        let mut responses = Vec::with_capacity(requests.len());
        for r in requests {
            match key.sign(r) {
                Ok(s) => responses.push(s),
                Err(e) => return refused(Refusal::Malformed, &e.to_string()),
            }
        }
        let balance = match self
            .accounts
            .spend(account, u64::from(n) * self.limits.price)
        {
            Ok(b) => b,
            Err(DurableError::Credit(e)) => {
                return refused(Refusal::InsufficientCredit, &e.to_string())
            }
            Err(DurableError::Store(e)) => {
                tracing::error!("the account store could not be saved: {e}");
                return refused(Refusal::Internal, "the issuer cannot save; try again later");
            }
        };
        *self.issued.entry((account, epoch)).or_default() += n;
        self.tokens_issued += u64::from(n);
        ResponseBody::Issued { balance, responses }
    }
}

fn refused(reason: Refusal, text: &str) -> ResponseBody {
    ResponseBody::Refused {
        reason,
        text: text.to_string(),
    }
}
