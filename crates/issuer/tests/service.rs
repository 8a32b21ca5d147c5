//! The issuer end to end in memory: create an account, register, log in, get credit, buy
//! tokens, and every way issuance is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use account::{
    AccountNumber, ClientLogin, ClientRegistration, DurableServer, ExpectAccountCreated, Limits,
    SealingKey, SourceId, Store,
};
use issuer::{IssueLimits, Refusal, Request, RequestBody, Response, ResponseBody, Service};
use token::{Challenge, Epoch, IssuerKey, Redeemer};

/// Inside epoch 2900.
const NOW: u64 = 2900 * Epoch::SECONDS + 100;
const PASSWORD: &[u8] = b"correct horse battery staple";

fn key() -> &'static IssuerKey {
    static KEY: OnceLock<IssuerKey> = OnceLock::new();
    KEY.get_or_init(|| IssuerKey::generate(Epoch(2900)).unwrap())
}

fn service(name: &str, limits: IssueLimits) -> Service {
    let dir = std::env::temp_dir().join(format!("openrelay-issuer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(dir.join("accounts.store"), SealingKey::from_bytes([4; 32])).unwrap();
    let accounts = DurableServer::open(store, Limits::default(), &mut rand::rng()).unwrap();
    let key = IssuerKey::from_pem(Epoch(2900), &key().to_pem().unwrap()).unwrap();
    Service::new(accounts, vec![key], limits)
}

/// Sends an account message and returns the account response.
fn account_call(
    s: &mut Service,
    source: SourceId,
    id: u32,
    m: account::Request,
) -> account::Response {
    let bytes = s.handle(
        NOW,
        source,
        &Request {
            id,
            body: RequestBody::Account(m.encode()),
        }
        .encode(),
    );
    match Response::decode(&bytes).unwrap().body {
        ResponseBody::Account(m) => account::Response::decode(&m).unwrap(),
        other => panic!("expected an account answer, got {other:?}"),
    }
}

/// Creates, registers and logs in an account from `source`.
fn logged_in(s: &mut Service, source: SourceId) -> AccountNumber {
    let mut rng = rand::rng();
    let (expect, req) = ExpectAccountCreated::start();
    let account = expect.finish(account_call(s, source, 1, req)).unwrap();
    let (reg, req) = ClientRegistration::start(&mut rng, account, PASSWORD).unwrap();
    let resp = account_call(s, source, 2, req);
    let (expect, req) = reg.finish(&mut rng, resp).unwrap();
    expect.finish(account_call(s, source, 3, req)).unwrap();
    let (login, req) = ClientLogin::start(&mut rng, account, PASSWORD).unwrap();
    let resp = account_call(s, source, 4, req);
    let (expect, req) = login.finish(&mut rng, resp).unwrap();
    expect.finish(account_call(s, source, 5, req)).unwrap();
    account
}

fn issue(
    s: &mut Service,
    source: SourceId,
    id: u32,
    n: usize,
) -> (Vec<u8>, Vec<token::Pending>, Vec<Challenge>) {
    let mut pendings = Vec::new();
    let mut challenges = Vec::new();
    let mut reqs = Vec::new();
    for i in 0..n {
        let c = Challenge::for_session("issuer.test", &[1; 32], &[i as u8 + 10; 32]);
        let (r, p) = token::request(key().public(), &c).unwrap();
        reqs.push(r);
        pendings.push(p);
        challenges.push(c);
    }
    let bytes = s.handle(
        NOW,
        source,
        &Request {
            id,
            body: RequestBody::Issue(reqs),
        }
        .encode(),
    );
    (bytes, pendings, challenges)
}

fn refusal(bytes: &[u8]) -> Refusal {
    match Response::decode(bytes).unwrap().body {
        ResponseBody::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_paid_up_account_buys_tokens_that_relays_accept() {
    let mut s = service("buy", IssueLimits::default());
    let source = SourceId(7);
    let account = logged_in(&mut s, source);
    assert_eq!(s.accounts().credit(account, 10).unwrap(), 10);
    let (bytes, pendings, challenges) = issue(&mut s, source, 10, 4);
    let ResponseBody::Issued { balance, responses } = Response::decode(&bytes).unwrap().body else {
        panic!("not issued");
    };
    assert_eq!(balance, 6);
    assert_eq!(s.tokens_issued, 4);
    let mut relay = Redeemer::new(&[1; 32], "issuer.test", vec![key().public().clone()]);
    for (i, ((p, r), c)) in pendings
        .into_iter()
        .zip(&responses)
        .zip(&challenges)
        .enumerate()
    {
        let t = p.finalize(key().public(), r).unwrap();
        assert_eq!(
            relay.redeem(NOW, &c.encode(), &t.encode(), &[i as u8 + 10; 32]),
            Ok(Epoch(2900))
        );
    }
    assert_eq!(s.accounts().server().balance(account), Some(6));
    // A retransmitted request gets the first answer again and is not paid twice.
    let c = Challenge::for_session("issuer.test", &[1; 32], &[99; 32]);
    let (r, _) = token::request(key().public(), &c).unwrap();
    let request = Request {
        id: 11,
        body: RequestBody::Issue(vec![r]),
    }
    .encode();
    let first = s.handle(NOW, source, &request);
    let second = s.handle(NOW, source, &request);
    assert_eq!(first, second);
    assert_eq!(s.accounts().server().balance(account), Some(5));
}

#[test]
fn issuance_is_refused_without_login_credit_or_room() {
    let mut s = service(
        "refuse",
        IssueLimits {
            price: 1,
            per_epoch: 6,
        },
    );
    // Not logged in.
    let (bytes, _, _) = issue(&mut s, SourceId(1), 1, 1);
    assert_eq!(refusal(&bytes), Refusal::NotLoggedIn);

    let source = SourceId(2);
    let account = logged_in(&mut s, source);
    // No credit.
    let (bytes, _, _) = issue(&mut s, source, 20, 2);
    assert_eq!(refusal(&bytes), Refusal::InsufficientCredit);
    assert_eq!(s.accounts().server().balance(account), Some(0));
    // Credit, then the weekly cap: 4 + 4 > 6.
    s.accounts().credit(account, 100).unwrap();
    let (bytes, _, _) = issue(&mut s, source, 21, 4);
    assert!(matches!(
        Response::decode(&bytes).unwrap().body,
        ResponseBody::Issued { .. }
    ));
    let (bytes, _, _) = issue(&mut s, source, 22, 4);
    assert_eq!(refusal(&bytes), Refusal::BatchLimit);
    assert_eq!(s.accounts().server().balance(account), Some(96));
    // A request for another key.
    let other = IssuerKey::generate(Epoch(2900)).unwrap();
    let c = Challenge::for_session("issuer.test", &[1; 32], &[2; 32]);
    let (mut r, _) = token::request(other.public(), &c).unwrap();
    r.truncated_key_id = key().public().truncated_key_id().wrapping_add(1);
    let bytes = s.handle(
        NOW,
        source,
        &Request {
            id: 23,
            body: RequestBody::Issue(vec![r]),
        }
        .encode(),
    );
    assert_eq!(refusal(&bytes), Refusal::WrongKey);
    // After the session ends, the login is gone.
    s.forget(source);
    let (bytes, _, _) = issue(&mut s, source, 24, 1);
    assert_eq!(refusal(&bytes), Refusal::NotLoggedIn);
}

#[test]
fn garbage_gets_a_malformed_refusal() {
    let mut s = service("garbage", IssueLimits::default());
    for bytes in [&[][..], &[1, 2, 3], &[1, 0, 0, 0, 1, 2, 9]] {
        assert_eq!(
            refusal(&s.handle(NOW, SourceId(3), bytes)),
            Refusal::Malformed
        );
    }
}

#[test]
fn what_the_issuer_sees_shares_nothing_with_what_relays_see() {
    let mut s = service("unlink", IssueLimits::default());
    let source = SourceId(9);
    let account = logged_in(&mut s, source);
    s.accounts().credit(account, 10).unwrap();
    // Everything that crosses the issuer's service port during issuance...
    let mut reqs = Vec::new();
    let mut pendings = Vec::new();
    let mut challenges = Vec::new();
    for i in 0..4u8 {
        let c = Challenge::for_session("issuer.test", &[1; 32], &[i + 40; 32]);
        let (r, p) = token::request(key().public(), &c).unwrap();
        reqs.push(r);
        pendings.push(p);
        challenges.push(c);
    }
    let request = Request {
        id: 1,
        body: RequestBody::Issue(reqs),
    }
    .encode();
    let response = s.handle(NOW, source, &request);
    let ResponseBody::Issued { responses, .. } = Response::decode(&response).unwrap().body else {
        panic!("not issued");
    };
    let issuer_saw = [request, response].concat();
    // ...and every Redeem message the relays receive.
    let mut relay_saw = Vec::new();
    for ((p, r), c) in pendings.into_iter().zip(&responses).zip(&challenges) {
        let t = p.finalize(key().public(), r).unwrap();
        relay_saw.extend(
            control::Message::Redeem {
                challenge: c.encode(),
                token: t.encode(),
            }
            .encode(),
        );
    }
    let common = issuer_saw
        .windows(8)
        .filter(|w| relay_saw.windows(8).any(|x| x == *w))
        .count();
    assert_eq!(
        common, 0,
        "a value seen at issuance reappears at redemption"
    );
    // The account number is nowhere in what relays see.
    assert!(!relay_saw
        .windows(8)
        .any(|w| account.as_bytes().windows(8).any(|a| a == w)));
}
