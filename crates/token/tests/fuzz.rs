//! Property tests: the wire decoders and the redeemer never panic on arbitrary bytes, valid
//! encodings round-trip exactly, and no random or single-byte-mutated token is ever accepted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use proptest::prelude::*;
use sha2::{Digest, Sha256};
use token::{
    request, Challenge, Epoch, IssuerKey, RedeemError, Redeemer, Token, TokenRequest,
    TokenResponse, WireError, NK, REQUEST_LEN, TOKEN_LEN, TOKEN_TYPE,
};

const ISSUER: &str = "issuer.openrelay.test";
const RELAY: [u8; 32] = [1; 32];
const SESSION: [u8; 32] = [3; 32];
/// A time inside epoch 2900.
const NOW: u64 = 2900 * Epoch::SECONDS + 1000;

/// One issuer key and one valid (challenge, token) pair for the whole file: RSA key generation
/// is slow in debug builds.
struct Fixture {
    key: IssuerKey,
    challenge: Vec<u8>,
    token: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = IssuerKey::generate(Epoch(2900)).unwrap();
        let challenge = Challenge::for_session(ISSUER, &RELAY, &SESSION);
        let (req, pending) = request(key.public(), &challenge).unwrap();
        let token = pending
            .finalize(key.public(), &key.sign(&req).unwrap())
            .unwrap();
        Fixture {
            key,
            challenge: challenge.encode(),
            token: token.encode(),
        }
    })
}

/// A relay that has spent nothing yet.
fn redeemer() -> Redeemer {
    Redeemer::new(&RELAY, ISSUER, vec![fixture().key.public().clone()])
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// `len` bytes that start with token type 2, the rest arbitrary.
fn typed(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len - 2)
        .prop_map(|rest| [TOKEN_TYPE.to_be_bytes().as_slice(), &rest].concat())
}

fn challenge() -> impl Strategy<Value = Challenge> {
    ("\\PC{1,40}", any::<[u8; 32]>(), "\\PC{0,60}").prop_map(
        |(issuer_name, redemption_context, origin_info)| Challenge {
            issuer_name,
            redemption_context,
            origin_info,
        },
    )
}

/// The fixture's challenge and token, concatenated, with byte `at` XORed with `xor`.
fn mutated(at: usize, xor: u8) -> (Vec<u8>, Vec<u8>) {
    let f = fixture();
    let mut both = [f.challenge.as_slice(), &f.token].concat();
    both[at] ^= xor;
    let token = both.split_off(f.challenge.len());
    (both, token)
}

#[test]
fn the_fixture_redeems_so_the_refusals_below_are_not_vacuous() {
    let f = fixture();
    let mut r = redeemer();
    assert_eq!(
        r.redeem(NOW, &f.challenge, &f.token, &SESSION),
        Ok(Epoch(2900))
    );
    assert_eq!(
        r.redeem(NOW, &f.challenge, &f.token, &SESSION),
        Err(RedeemError::Spent)
    );
}

/// Every byte of the pair, flipped in its lowest and highest bit: refused, every time.
#[test]
fn every_single_bit_flip_of_a_valid_pair_is_refused() {
    let f = fixture();
    for at in 0..f.challenge.len() + f.token.len() {
        for xor in [0x01, 0x80] {
            let (c, t) = mutated(at, xor);
            assert!(
                redeemer().redeem(NOW, &c, &t, &SESSION).is_err(),
                "byte {at} ^ {xor:#04x} was accepted"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes: no decoder panics, each accepts exactly its own length (and type), and
    /// whatever one accepts re-encodes to the same bytes.
    #[test]
    fn decoders_never_panic_and_accept_only_canonical_encodings(b in bytes(700)) {
        let typed = b.len() >= 2 && b[..2] == TOKEN_TYPE.to_be_bytes();
        match Token::decode(&b) {
            Ok(t) => prop_assert_eq!(t.encode(), b.clone()),
            Err(_) => prop_assert!(b.len() != TOKEN_LEN || !typed),
        }
        match TokenRequest::decode(&b) {
            Ok(r) => prop_assert_eq!(r.encode(), b.clone()),
            Err(_) => prop_assert!(b.len() != REQUEST_LEN || !typed),
        }
        match TokenResponse::decode(&b) {
            Ok(r) => prop_assert_eq!(r.encode(), b.clone()),
            Err(_) => prop_assert!(b.len() != NK),
        }
        if let Ok(c) = Challenge::decode(&b) {
            prop_assert_eq!(c.encode(), b.clone());
        }
    }

    /// Bytes of exactly the right length and type always decode and round-trip; any other
    /// token type is refused as such.
    #[test]
    fn fixed_size_messages_round_trip(
        token in typed(TOKEN_LEN),
        req in typed(REQUEST_LEN),
        resp in prop::collection::vec(any::<u8>(), NK),
        other_type in any::<u16>().prop_filter("not type 2", |t| *t != TOKEN_TYPE),
    ) {
        let t = Token::decode(&token).unwrap();
        prop_assert_eq!(t.encode(), token.clone());
        prop_assert_eq!(t.input(), token[..TOKEN_LEN - NK].to_vec());
        prop_assert_eq!(Token::decode(&t.encode()), Ok(t));
        let r = TokenRequest::decode(&req).unwrap();
        prop_assert_eq!(r.encode(), req.clone());
        prop_assert_eq!(r.truncated_key_id, req[2]);
        prop_assert_eq!(TokenRequest::decode(&r.encode()), Ok(r));
        let s = TokenResponse::decode(&resp).unwrap();
        prop_assert_eq!(s.encode(), resp);

        let mut token = token;
        token[..2].copy_from_slice(&other_type.to_be_bytes());
        prop_assert_eq!(Token::decode(&token), Err(WireError::TokenType(other_type)));
        let mut req = req;
        req[..2].copy_from_slice(&other_type.to_be_bytes());
        prop_assert_eq!(TokenRequest::decode(&req), Err(WireError::TokenType(other_type)));
    }

    /// A challenge round-trips through its encoding, its digest is SHA-256 of it, and every
    /// truncation or extension of the encoding is refused.
    #[test]
    fn challenges_round_trip_and_refuse_truncation(c in challenge(), extra in any::<u8>()) {
        let enc = c.encode();
        prop_assert_eq!(Challenge::decode(&enc), Ok(c.clone()));
        prop_assert_eq!(c.digest().to_vec(), Sha256::digest(&enc).to_vec());
        for end in 0..enc.len() {
            prop_assert!(Challenge::decode(&enc[..end]).is_err(), "prefix of {} bytes", end);
        }
        let mut longer = enc;
        longer.push(extra);
        prop_assert_eq!(
            Challenge::decode(&longer),
            Err(WireError::Challenge("trailing bytes"))
        );
    }

    /// Arbitrary bytes as challenge and token: never a panic, never admitted.
    #[test]
    fn redeem_never_accepts_arbitrary_bytes(c in bytes(200), t in bytes(400)) {
        prop_assert!(redeemer().redeem(NOW, &c, &t, &SESSION).is_err());
    }

    /// The strongest random forgery: the right challenge, and a token that names it and the
    /// right key, with a random nonce and authenticator. It reaches the signature check and
    /// fails it.
    #[test]
    fn a_random_authenticator_is_a_bad_signature(
        nonce in any::<[u8; 32]>(),
        authenticator in prop::collection::vec(any::<u8>(), NK),
    ) {
        let f = fixture();
        let forged = Token {
            nonce,
            challenge_digest: Sha256::digest(&f.challenge).into(),
            key_id: f.key.public().key_id(),
            authenticator: authenticator.try_into().unwrap(),
        };
        prop_assert_eq!(
            redeemer().redeem(NOW, &f.challenge, &forged.encode(), &SESSION),
            Err(RedeemError::BadSignature)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any single-byte change (any position, any nonzero XOR) of a valid pair is refused.
    #[test]
    fn any_single_byte_mutation_of_a_valid_pair_is_refused(
        at in 0..(2 + 2 + ISSUER.len() + 1 + 32 + 2 + 44 + TOKEN_LEN),
        xor in 1..=u8::MAX,
    ) {
        let f = fixture();
        prop_assert_eq!(f.challenge.len() + f.token.len(), 2 + 2 + ISSUER.len() + 1 + 32 + 2 + 44 + TOKEN_LEN);
        let (c, t) = mutated(at, xor);
        prop_assert!(redeemer().redeem(NOW, &c, &t, &SESSION).is_err());
    }

    /// Dropping or adding a byte at either end of the token is malformed.
    #[test]
    fn a_token_of_another_length_is_malformed(extra in any::<u8>()) {
        let f = fixture();
        let mut longer = f.token.clone();
        longer.push(extra);
        for t in [&f.token[1..], &f.token[..TOKEN_LEN - 1], &longer[..]] {
            let refused = matches!(
                redeemer().redeem(NOW, &f.challenge, t, &SESSION),
                Err(RedeemError::Malformed(WireError::Length { .. }))
            );
            prop_assert!(refused, "a {}-byte token was not refused as malformed", t.len());
        }
    }
}
