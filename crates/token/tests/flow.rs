//! Issuance and redemption end to end, and every way a relay refuses a token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use token::{
    request, Challenge, Epoch, IssuerKey, RedeemError, Redeemer, Token, TokenError, TokenRequest,
    TokenResponse,
};

const ISSUER: &str = "issuer.openrelay.test";
const RELAY: [u8; 32] = [1; 32];
const OTHER_RELAY: [u8; 32] = [2; 32];
const SESSION: [u8; 32] = [3; 32];
const OTHER_SESSION: [u8; 32] = [4; 32];
/// A time inside epoch 2900 (2025-08).
const NOW: u64 = 2900 * Epoch::SECONDS + 1000;

/// RSA key generation is slow in debug builds: one key per epoch for the whole file.
fn key(epoch: u32) -> &'static IssuerKey {
    static KEYS: OnceLock<Vec<IssuerKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        (2898..2902)
            .map(|e| IssuerKey::generate(Epoch(e)).unwrap())
            .collect()
    });
    keys.iter()
        .find(|k| k.public().epoch == Epoch(epoch))
        .unwrap()
}

/// A token for `challenge` from the issuer key of `epoch`, over the wire encodings.
fn issue(epoch: u32, challenge: &Challenge) -> Token {
    let k = key(epoch);
    let (req, pending) = request(k.public(), challenge).unwrap();
    let req = TokenRequest::decode(&req.encode()).unwrap();
    let resp = k.sign(&req).unwrap();
    let resp = TokenResponse::decode(&resp.encode()).unwrap();
    pending.finalize(k.public(), &resp).unwrap()
}

fn redeemer() -> Redeemer {
    Redeemer::new(
        &RELAY,
        ISSUER,
        vec![key(2900).public().clone(), key(2899).public().clone()],
    )
}

#[test]
fn a_token_is_redeemed_once_at_its_relay_for_its_session() {
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let t = issue(2900, &c);
    let mut r = redeemer();
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t.encode(), &SESSION),
        Ok(Epoch(2900))
    );
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t.encode(), &SESSION),
        Err(RedeemError::Spent)
    );
    assert_eq!(r.spent(), 1);
}

#[test]
fn a_token_spent_on_one_thread_is_spent_on_every_clone() {
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let t = issue(2900, &c);
    let mut first = redeemer();
    let mut second = first.clone();
    let (challenge, token) = (c.encode(), t.encode());
    let other = std::thread::spawn(move || second.redeem(NOW, &challenge, &token, &SESSION))
        .join()
        .unwrap();
    assert_eq!(other, Ok(Epoch(2900)));
    assert_eq!(
        first.redeem(NOW, &c.encode(), &t.encode(), &SESSION),
        Err(RedeemError::Spent)
    );
    assert_eq!(first.spent(), 1);
}

#[test]
fn each_bad_token_gets_its_own_refusal() {
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let t = issue(2900, &c);
    let mut r = redeemer();

    // For another relay: the challenge names it.
    let other_relay = Challenge::for_session(ISSUER, &OTHER_RELAY, &SESSION);
    let t2 = issue(2900, &other_relay);
    assert_eq!(
        r.redeem(NOW, &other_relay.encode(), &t2.encode(), &SESSION),
        Err(RedeemError::OtherRelay)
    );
    // For another session.
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t.encode(), &OTHER_SESSION),
        Err(RedeemError::OtherSession)
    );
    // A token presented with another (valid-looking) challenge than its own.
    let t3 = issue(
        2900,
        &Challenge::for_session(ISSUER, &RELAY, &OTHER_SESSION),
    );
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t3.encode(), &SESSION),
        Err(RedeemError::ChallengeMismatch)
    );
    // Another issuer's name.
    let foreign = Challenge::for_session("evil.example", &RELAY, &SESSION);
    let t4 = issue(2900, &foreign);
    assert!(matches!(
        r.redeem(NOW, &foreign.encode(), &t4.encode(), &SESSION),
        Err(RedeemError::Issuer(name)) if name == "evil.example"
    ));
    // Forged: one bit of the signature flipped, or of the nonce (the signed input).
    for at in [100, 5] {
        let mut forged = t.encode();
        forged[at] ^= 1;
        assert_eq!(
            r.redeem(NOW, &c.encode(), &forged, &SESSION),
            Err(RedeemError::BadSignature),
            "byte {at}"
        );
    }
    // A key the directory does not list.
    let t5 = issue(2901, &c);
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t5.encode(), &SESSION),
        Err(RedeemError::UnknownKey)
    );
    // Malformed bytes.
    assert!(matches!(
        r.redeem(NOW, &c.encode(), &t.encode()[..100], &SESSION),
        Err(RedeemError::Malformed(_))
    ));
    assert!(matches!(
        r.redeem(NOW, &c.encode()[..20], &t.encode(), &SESSION),
        Err(RedeemError::Malformed(_))
    ));
    // None of these spent the good token.
    assert_eq!(
        r.redeem(NOW, &c.encode(), &t.encode(), &SESSION),
        Ok(Epoch(2900))
    );
}

#[test]
fn tokens_expire_one_epoch_after_their_own() {
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let mut r = redeemer();
    // Last week's key still redeems this week...
    let old = issue(2899, &c);
    assert_eq!(
        r.redeem(NOW, &c.encode(), &old.encode(), &SESSION),
        Ok(Epoch(2899))
    );
    // ...but not the week after.
    let c2 = Challenge::for_session(ISSUER, &RELAY, &OTHER_SESSION);
    let t = issue(2899, &c2);
    let later = NOW + Epoch::SECONDS;
    assert_eq!(
        r.redeem(later, &c2.encode(), &t.encode(), &OTHER_SESSION),
        Err(RedeemError::Expired(Epoch(2899)))
    );
    // And an epoch that has not begun is refused too.
    let mut early = Redeemer::new(&RELAY, ISSUER, vec![key(2901).public().clone()]);
    let t = issue(2901, &c);
    assert_eq!(
        early.redeem(NOW, &c.encode(), &t.encode(), &SESSION),
        Err(RedeemError::Expired(Epoch(2901)))
    );
}

#[test]
fn the_issuer_refuses_requests_for_another_key_and_the_client_checks_the_answer() {
    // Two keys whose truncated ids differ (two random keys share one with probability 1/256;
    // all four of the file's keys sharing one would need three such collisions).
    let (mine, other) = (2898..2902)
        .flat_map(|a| (2898..2902).map(move |b| (key(a), key(b))))
        .find(|(a, b)| a.public().truncated_key_id() != b.public().truncated_key_id())
        .expect("two keys with different truncated ids");
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let (req, pending) = request(mine.public(), &c).unwrap();
    assert_eq!(
        other.sign(&req),
        Err(TokenError::WrongKey {
            got: mine.public().truncated_key_id(),
            expected: other.public().truncated_key_id(),
        })
    );
    // An answer signed with another key does not finalize. That key signs only values below
    // its own modulus, which a blinding under the first key need not be (each try succeeds
    // with probability at least 1/2): blind afresh until it takes one.
    let (resp, pending) = std::iter::once((req, pending))
        .chain(std::iter::repeat_with(|| {
            request(mine.public(), &c).unwrap()
        }))
        .take(64)
        .find_map(|(mut wrong, pending)| {
            wrong.truncated_key_id = other.public().truncated_key_id();
            other.sign(&wrong).ok().map(|resp| (resp, pending))
        })
        .expect("a blinded message below the other key's modulus");
    assert!(matches!(
        pending.finalize(mine.public(), &resp),
        Err(TokenError::Rsa(_))
    ));
}

#[test]
fn what_the_issuer_sees_shares_nothing_with_what_the_relay_sees() {
    let c = Challenge::for_session(ISSUER, &RELAY, &SESSION);
    let k = key(2900);
    let (req, pending) = request(k.public(), &c).unwrap();
    let issuer_saw = [req.encode(), k.sign(&req).unwrap().encode()].concat();
    let resp = k.sign(&req).unwrap();
    let t = pending.finalize(k.public(), &resp).unwrap();
    let relay_saw = [c.encode(), t.encode()].concat();
    // No 8-byte window of one appears in the other.
    for w in issuer_saw.windows(8) {
        assert!(
            !relay_saw.windows(8).any(|x| x == w),
            "the issuer and the relay saw a common value"
        );
    }
}

#[test]
fn issuer_keys_round_trip_through_the_directory_and_pem() {
    let k = key(2900);
    let public = token::IssuerPublicKey::from_base64(Epoch(2900), &k.public().to_base64()).unwrap();
    assert_eq!(public.key_id(), k.public().key_id());
    let again = IssuerKey::from_pem(Epoch(2900), &k.to_pem().unwrap()).unwrap();
    assert_eq!(again.public().key_id(), k.public().key_id());
    assert!(token::IssuerPublicKey::from_base64(Epoch(1), "bm90IGEga2V5").is_err());
    assert!(token::IssuerPublicKey::from_base64(Epoch(1), "%%%").is_err());
}
