//! Known-answer tests: RFC 9474 Appendix A (RSABSSA) and RFC 9578 Appendix A.2 (Privacy Pass
//! token type 2, "Issuance Protocol 2 - Blind RSA, 2048"), reproduced through this crate's code
//! paths with every random draw fixed to the vector's values.
//!
//! RFC 9474's vectors use an RSA-4096 key, which token type 2 (Nk = 256) does not admit, so
//! they run on `blind_rsa_signatures` with the crate's own parameters (SHA-384, PSS,
//! deterministic) and the three sibling variants; the crate's key loaders must refuse that key.
//! RFC 9578's vectors run through `request_with`, `IssuerKey::sign`, `Pending::finalize` and the
//! wire codecs; three of its five challenges carry an empty redemption context, which
//! `Challenge::decode` refuses by design (a token here is always bound to one session), so
//! those three are checked below the challenge layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use blind_rsa_signatures::{
    BlindSignature, Deterministic, HashAlgorithm, MessagePrepare, PSSZero, Randomized, SaltMode,
    SecretKey, Sha384, PSS,
};
use rsa::{BoxedUint, RsaPrivateKey};
use sha2::{Digest, Sha256};
use token::{
    request_with, Challenge, Epoch, IssuerKey, IssuerPublicKey, KeyError, Token, TokenError,
    TokenRequest, TokenResponse, WireError, NK, TOKEN_TYPE,
};

/// The blind RSA variant of token type 2, as the crate instantiates it.
type Type2PublicKey = blind_rsa_signatures::PublicKey<Sha384, PSS, Deterministic>;

/// Randomness fixed in advance: each draw takes the next bytes of the script, in order.
struct Script {
    bytes: Vec<u8>,
    used: usize,
}

impl Script {
    fn new(parts: &[&[u8]]) -> Self {
        Self {
            bytes: parts.concat(),
            used: 0,
        }
    }

    /// Every scripted byte was drawn: the code under test drew exactly what the vector fixes.
    fn assert_spent(&self) {
        assert_eq!(
            self.used,
            self.bytes.len(),
            "the code drew less randomness than the vector fixes"
        );
    }
}

impl rand_core::TryRng for Script {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        let end = self.used + dst.len();
        assert!(
            end <= self.bytes.len(),
            "the code drew more randomness than the vector fixes"
        );
        dst.copy_from_slice(&self.bytes[self.used..end]);
        self.used = end;
        Ok(())
    }
}

impl rand_core::TryCryptoRng for Script {}

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// The bytes the blinding draws for the integer `r` (big-endian in the vectors):
/// `crypto-bigint`'s `random_mod_vartime` fills the integer's little-endian bytes.
fn drawn_as_random_integer(big_endian: &[u8]) -> Vec<u8> {
    big_endian.iter().rev().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// RFC 9474 Appendix A

/// One RFC 9474 Appendix A vector (the key and message are shared by all four).
struct Rfc9474 {
    name: &'static str,
    msg_prefix: &'static str,
    salt: &'static str,
    inv: &'static str,
    blinded_msg: &'static str,
    blind_sig: &'static str,
    sig: &'static str,
}

fn uint(s: &str) -> BoxedUint {
    BoxedUint::from_str_radix_vartime(s, 16).unwrap()
}

fn rfc9474_secret_key<H: HashAlgorithm, S: SaltMode, M: MessagePrepare>() -> SecretKey<H, S, M> {
    let inner = RsaPrivateKey::from_components(
        uint(RFC9474_N),
        uint(RFC9474_E),
        uint(RFC9474_D),
        vec![uint(RFC9474_P), uint(RFC9474_Q)],
    )
    .unwrap();
    SecretKey::new(inner)
}

/// Blind (with the vector's prefix, salt and blind), sign, finalize and verify: each step's
/// output equals the vector's.
fn run_rfc9474<H: HashAlgorithm, S: SaltMode, M: MessagePrepare>(v: &Rfc9474) {
    let sk = rfc9474_secret_key::<H, S, M>();
    let pk = sk.public_key().unwrap();
    assert_eq!(pk.components().n(), hex(RFC9474_N), "{}", v.name);

    // The blinding draws r, and keeps r^-1 mod n (the vector's `inv`) as its secret.
    let n = uint(RFC9474_N).to_nz().unwrap();
    let r = uint(v.inv).invert_mod(&n).unwrap();
    let r_drawn = r.to_le_bytes();
    assert_eq!(r_drawn.len(), 512);
    let prefix = hex(v.msg_prefix);
    assert_eq!(
        prefix.len(),
        if M::RANDOMIZE { 32 } else { 0 },
        "{}",
        v.name
    );
    let mut rng = Script::new(&[&prefix, &hex(v.salt), &r_drawn]);
    let msg = hex(RFC9474_MSG);
    let blinding = pk.blind(&mut rng, &msg).unwrap();
    rng.assert_spent();
    assert_eq!(blinding.secret.0, hex(v.inv), "{}: inv", v.name);
    assert_eq!(
        blinding.msg_randomizer.map(|r| r.0.to_vec()),
        M::RANDOMIZE.then_some(prefix),
        "{}: msg_prefix",
        v.name
    );
    assert_eq!(
        blinding.blind_message.0,
        hex(v.blinded_msg),
        "{}: blinded_msg",
        v.name
    );

    let blind_sig = sk.blind_sign(&blinding.blind_message).unwrap();
    assert_eq!(blind_sig.0, hex(v.blind_sig), "{}: blind_sig", v.name);

    let sig = pk.finalize(&blind_sig, &blinding, &msg).unwrap();
    assert_eq!(sig.0, hex(v.sig), "{}: sig", v.name);
    pk.verify(&sig, blinding.msg_randomizer, &msg).unwrap();
    // A signature over another message does not verify.
    let mut other = msg.clone();
    other[0] ^= 1;
    assert!(pk.verify(&sig, blinding.msg_randomizer, &other).is_err());
}

#[test]
fn rfc9474_rsabssa_sha384_pss_deterministic_the_variant_of_token_type_2() {
    run_rfc9474::<Sha384, PSS, Deterministic>(&RFC9474_PSS_DETERMINISTIC);
}

#[test]
fn rfc9474_rsabssa_sha384_pss_randomized() {
    run_rfc9474::<Sha384, PSS, Randomized>(&RFC9474_PSS_RANDOMIZED);
}

#[test]
fn rfc9474_rsabssa_sha384_psszero_randomized() {
    run_rfc9474::<Sha384, PSSZero, Randomized>(&RFC9474_PSSZERO_RANDOMIZED);
}

#[test]
fn rfc9474_rsabssa_sha384_psszero_deterministic() {
    run_rfc9474::<Sha384, PSSZero, Deterministic>(&RFC9474_PSSZERO_DETERMINISTIC);
}

/// Token type 2 fixes Nk = 256: the RFC 9474 key (RSA-4096) is refused by both key loaders,
/// not accepted and then failing every issuance.
#[test]
fn the_rfc9474_rsa_4096_key_is_not_a_token_type_2_issuer_key() {
    let sk = rfc9474_secret_key::<Sha384, PSS, Deterministic>();
    let pem = sk.to_pem().unwrap();
    assert!(matches!(
        IssuerKey::from_pem(Epoch(0), &pem),
        Err(KeyError::Encoding(e)) if e.contains("4096-bit")
    ));
    let spki = sk.public_key().unwrap().to_spki().unwrap();
    assert!(matches!(
        IssuerPublicKey::from_spki(Epoch(0), &spki),
        Err(KeyError::Encoding(e)) if e.contains("4096-bit")
    ));
}

// ---------------------------------------------------------------------------------------------
// RFC 9578 Appendix A.2

/// One RFC 9578 Appendix A.2 vector (all five share the issuer key below).
struct Rfc9578 {
    token_challenge: &'static str,
    nonce: &'static str,
    blind: &'static str,
    salt: &'static str,
    token_request: &'static str,
    token_response: &'static str,
    token: &'static str,
}

/// RFC 9578 Appendix A.2, skS (the RFC gives the PEM text hex-encoded; decoded here).
const RFC9578_SKS_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDLGu1rapX1sc4B
Okz8qyW5Sy5kojA05CUKfqtDwN86jBKZOvErERkI1LRxvsMdS2ya2c3akGEqLukD
Uj5t5aIk1rAvCeXDdNDP4B2PUpxQCnii9nkI+mgrWitDDIHq8a9y17XnlPyYoxOS
doeXV85FO1Ju+b9s65mXm4QjuQ9EYaIq83qrDPVzP3WXq+RNMccy22ihgcbLvmB9
jA5S4GVf2ZltxYTsoL6Hr7zXijN9F7Hbqegou9geKRMXFE5/+J9VYZcJsJbLuepH
TOrSZMIHP+SXQMAfAOEJEGBmmD0h5fg/CG4ugjyHnNQ873ANKjUqm6vWEtA8rQLb
E0t+IlpfAgMBAAECggEALzCbdzi1jPd58MkV+CLfyfSQ2+rfHnrfrFeP/VcDxrui
2p1aSXJYibe6ES+Mb/MFUdlHPgALw1xQ4Werf6c6DCshllxLWSV8GsBsvc8o6GP2
cY6owpBDwcbahGKUkP0Ekb9S0XLJWcGSG5aUnHJXR7inx4cZlfoLnrEQe6hUxsMq
b0dHxdHDBMdGfVWwgKojOjpS/98mEUy7VB/6a2lreglvjc/2nKCKtY77D7dTqlGF
xzABaWu86MCZ4/Q13Lv+BefbqtI9sqZZwjrdUhQH8VCxry2QVMQWQinWhAt6MqT4
SBSTrolZzwrqje8MPJ91uaNMdXGLcHLI26sXzv7KSQKBgQDvcwsPUUvA9Z2ZX9X5
mIxMTBNdEFzVbUPuKKA1yWn1UMDNcUjqh+ze/7k3yFxkh0QF31bq60eL90GISiAO
5KOWM9EKo+xAQ2baK1MfOY1G+8jzBXUpBs94k53S88yXmK6nydgv70BJ8Zh5fkUq
W20oSbhkhjRdSzH2kRGirg+USwKBgQDZJMnry2Exa/3Eq7PbosxAPMiYnk5JAPSG
y2z0Z7TUb+uHQO/+xPM7nC0uyLIMD9laTMHwn6s7/LbGoEP1WRgpoYH/B14k/Rn6
fuwRN62Io9tc9+ACLtUB7vtGay3+gRwYtSC2b5ed8lIiegtTkea0h0uDSRxAtVs3
n5kya2Q9vQKBgFJuFzOZt+tgYnWnQUEgW8P0OIJEHME4UTdOcwCxKrHRr93JjuF2
E3wdKoTii7PrwOYIoaJThpjPcJbbdbfKy+nsQp1YGv9wdJrMaVwJcvIpwV6v1Upf
VtLadm1lklvpqs6GNM8jnM0Xx3ajmmnfeW9yGXE5phMrzLJl9F09cI2LAoGBANXv
ugVXrp2bsT1okd6uSaBsgpJjPewNRd3cZK9z0aSP1DTA1PNkpeQwHg/+6fSaVOHz
yAxDs9h5RrbxRaNfsT+rAUH7x1SYDVVQYVMhURbToZe6G/jqnTC3fNfHV1xtZfot
0loMHgwep6+SIMCoee2ZctuZV32lcIaf9rbHOc7dAoGAeQ8k8SILNG6DOA31TE5P
m01AJIYw7AlR3uo/RNaC+xYdPU3TskuALxxiDR/WsLEQBCjkFWmmJAWnQUDtbnYN
ScwR8G2J6FnrECtbtys73WAVGooFZncmPLP8lxLyblSBDELyaZv/bAsPlMO9bD5c
J+NSBaa+oiLl1wmCa5MCflc=
-----END PRIVATE KEY-----
";

/// The token_key_id every A.2 token carries (bytes 66..98): SHA-256 of pkS.
const RFC9578_TOKEN_KEY_ID: &str =
    "ca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd2708";

fn rfc9578_issuer() -> IssuerKey {
    IssuerKey::from_pem(Epoch(0), RFC9578_SKS_PEM).unwrap()
}

/// The crate derives the RFC's pkS from skS byte for byte (the RSASSA-PSS SPKI of RFC 9578
/// §6.5), and with it the RFC's token_key_id and truncated_token_key_id.
#[test]
fn rfc9578_issuer_key_encodes_to_the_vector_spki_and_key_id() {
    let key = rfc9578_issuer();
    let pks = hex(RFC9578_PKS);
    assert_eq!(key.public().spki(), pks.as_slice());
    assert_eq!(key.public().key_id().to_vec(), hex(RFC9578_TOKEN_KEY_ID));
    assert_eq!(
        key.public().key_id().to_vec(),
        Sha256::digest(&pks).to_vec()
    );
    assert_eq!(key.public().truncated_key_id(), 0x08);
    for v in &RFC9578 {
        assert_eq!(hex(v.token_request)[2], key.public().truncated_key_id());
        assert_eq!(hex(v.token)[66..98], key.public().key_id());
    }
    // Relays take the same key from the directory's SPKI.
    let public = IssuerPublicKey::from_spki(Epoch(0), &pks).unwrap();
    assert_eq!(public.key_id(), key.public().key_id());
    assert_eq!(public.spki(), pks.as_slice());
    let again = IssuerPublicKey::from_base64(Epoch(0), &public.to_base64()).unwrap();
    assert_eq!(again.key_id(), key.public().key_id());
    // And the issuer's PEM round trip keeps it.
    let reloaded = IssuerKey::from_pem(Epoch(0), &key.to_pem().unwrap()).unwrap();
    assert_eq!(reloaded.public().spki(), pks.as_slice());
}

/// Every A.2 vector below the challenge layer: the token parses and re-encodes, its input is
/// the RFC's token_input, blinding it with the vector's salt and blind gives the vector's
/// blinded_msg, the issuer's signature of the request is the vector's token_response, and
/// finalizing it gives the vector's authenticator.
#[test]
fn every_rfc9578_vector_blinds_signs_and_finalizes_to_the_vector_token() {
    let key = rfc9578_issuer();
    let pk = Type2PublicKey::from_spki(&hex(RFC9578_PKS)).unwrap();
    for (i, v) in RFC9578.iter().enumerate() {
        let vector = i + 1;
        let token = Token::decode(&hex(v.token)).unwrap();
        assert_eq!(token.encode(), hex(v.token), "vector {vector}");
        assert_eq!(token.nonce.to_vec(), hex(v.nonce), "vector {vector}");
        assert_eq!(
            token.challenge_digest.to_vec(),
            Sha256::digest(hex(v.token_challenge)).to_vec(),
            "vector {vector}"
        );
        assert_eq!(token.key_id.to_vec(), hex(RFC9578_TOKEN_KEY_ID));
        let input = token.input();
        assert_eq!(input, hex(v.token)[..98], "vector {vector}");
        assert_eq!(input[..2], TOKEN_TYPE.to_be_bytes());

        let mut rng = Script::new(&[&hex(v.salt), &drawn_as_random_integer(&hex(v.blind))]);
        let blinding = pk.blind(&mut rng, &input).unwrap();
        rng.assert_spent();
        assert_eq!(
            blinding.blind_message.0,
            hex(v.token_request)[3..],
            "vector {vector}: blinded_msg"
        );

        let request = TokenRequest::decode(&hex(v.token_request)).unwrap();
        assert_eq!(request.encode(), hex(v.token_request), "vector {vector}");
        let response = key.sign(&request).unwrap();
        assert_eq!(
            response.encode(),
            hex(v.token_response),
            "vector {vector}: token_response"
        );
        assert_eq!(
            TokenResponse::decode(&hex(v.token_response)).unwrap(),
            response
        );

        let sig = pk
            .finalize(
                &BlindSignature(response.blind_sig.to_vec()),
                &blinding,
                &input,
            )
            .unwrap();
        assert_eq!(sig.0, token.authenticator, "vector {vector}: token");
        pk.verify(&sig, None, &input).unwrap();
    }
}

/// Vectors 1 and 5 carry a 32-byte redemption context, as every challenge here does: they run
/// end to end through the client API (`Challenge::decode`, `request_with`, `Pending::finalize`)
/// and the issuer's `sign`, byte for byte.
#[test]
fn rfc9578_vectors_with_a_32_byte_context_run_through_request_sign_and_finalize() {
    let key = rfc9578_issuer();
    for vector in [1, 5] {
        let v = &RFC9578[vector - 1];
        let challenge = Challenge::decode(&hex(v.token_challenge)).unwrap();
        assert_eq!(challenge.issuer_name, "issuer.example");
        assert_eq!(
            challenge.encode(),
            hex(v.token_challenge),
            "vector {vector}"
        );
        assert_eq!(
            challenge.digest().to_vec(),
            Sha256::digest(hex(v.token_challenge)).to_vec()
        );

        // request_with draws the nonce, then the PSS salt, then the blind.
        let mut rng = Script::new(&[
            &hex(v.nonce),
            &hex(v.salt),
            &drawn_as_random_integer(&hex(v.blind)),
        ]);
        let (request, pending) = request_with(&mut rng, key.public(), &challenge).unwrap();
        rng.assert_spent();
        assert_eq!(
            request.encode(),
            hex(v.token_request),
            "vector {vector}: token_request"
        );

        let response = key
            .sign(&TokenRequest::decode(&request.encode()).unwrap())
            .unwrap();
        assert_eq!(
            response.encode(),
            hex(v.token_response),
            "vector {vector}: token_response"
        );

        // A corrupted response does not finalize.
        let mut corrupted = response.clone();
        corrupted.blind_sig[NK - 1] ^= 1;
        assert!(matches!(
            pending.clone().finalize(key.public(), &corrupted),
            Err(TokenError::Rsa(_))
        ));

        let token = pending
            .finalize(
                key.public(),
                &TokenResponse::decode(&hex(v.token_response)).unwrap(),
            )
            .unwrap();
        assert_eq!(token.encode(), hex(v.token), "vector {vector}: token");
        assert_eq!(Token::decode(&hex(v.token)).unwrap(), token);
        assert_eq!(token.challenge_digest, challenge.digest());
    }
}

/// Vectors 2, 3 and 4 have an empty redemption context, which a token here never has (it is
/// what binds a token to one session): `Challenge::decode` refuses them, and a challenge that
/// does decode never re-encodes to them.
#[test]
fn rfc9578_challenges_without_a_redemption_context_are_refused() {
    for vector in [2, 3, 4] {
        let bytes = hex(RFC9578[vector - 1].token_challenge);
        assert_eq!(
            Challenge::decode(&bytes),
            Err(WireError::Challenge("redemption context is not 32 bytes")),
            "vector {vector}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Vector data

// RFC 9474 Appendix A: one RSA-4096 key and one message for all four variants.
const RFC9474_N: &str = concat!(
    "aec4d69addc70b990ea66a5e70603b6fee27aafebd08f2d94cbe1250c556e047",
    "a928d635c3f45ee9b66d1bc628a03bac9b7c3f416fe20dabea8f3d7b4bbf7f96",
    "3be335d2328d67e6c13ee4a8f955e05a3283720d3e1f139c38e43e0338ad058a",
    "9495c53377fc35be64d208f89b4aa721bf7f7d3fef837be2a80e0f8adf0bcd1e",
    "ec5bb040443a2b2792fdca522a7472aed74f31a1ebe1eebc1f408660a0543dfe",
    "2a850f106a617ec6685573702eaaa21a5640a5dcaf9b74e397fa3af18a2f1b7c",
    "03ba91a6336158de420d63188ee143866ee415735d155b7c2d854d795b7bc236",
    "cffd71542df34234221a0413e142d8c61355cc44d45bda94204974557ac2704c",
    "d8b593f035a5724b1adf442e78c542cd4414fce6f1298182fb6d8e53cef1adfd",
    "2e90e1e4deec52999bdc6c29144e8d52a125232c8c6d75c706ea3cc06841c7bd",
    "a33568c63a6c03817f722b50fcf898237d788a4400869e44d90a3020923dc646",
    "388abcc914315215fcd1bae11b1c751fd52443aac8f601087d8d42737c18a3fa",
    "11ecd4131ecae017ae0a14acfc4ef85b83c19fed33cfd1cd629da2c4c09e222b",
    "398e18d822f77bb378dea3cb360b605e5aa58b20edc29d000a66bd177c682a17",
    "e7eb12a63ef7c2e4183e0d898f3d6bf567ba8ae84f84f1d23bf8b8e261c3729e",
    "2fa6d07b832e07cddd1d14f55325c6f924267957121902dc19b3b32948bdead5",
);
const RFC9474_E: &str = "010001";
const RFC9474_D: &str = concat!(
    "0d43242aefe1fb2c13fbc66e20b678c4336d20b1808c558b6e62ad16a2870771",
    "80b177e1f01b12f9c6cd6c52630257ccef26a45135a990928773f3bd2fc01a31",
    "3f1dac97a51cec71cb1fd7efc7adffdeb05f1fb04812c924ed7f4a8269925dad",
    "88bd7dcfbc4ef01020ebfc60cb3e04c54f981fdbd273e69a8a58b8ceb7c2d83f",
    "bcbd6f784d052201b88a9848186f2a45c0d2826870733e6fd9aa46983e0a6e82",
    "e35ca20a439c5ee7b502a9062e1066493bdadf8b49eb30d9558ed85abc7afb29",
    "b3c9bc644199654a4676681af4babcea4e6f71fe4565c9c1b85d9985b84ec1ab",
    "f1a820a9bbebee0df1398aae2c85ab580a9f13e7743afd3108eb32100b870648",
    "fa6bc17e8abac4d3c99246b1f0ea9f7f93a5dd5458c56d9f3f81ff2216b3c368",
    "0a13591673c43194d8e6fc93fc1e37ce2986bd628ac48088bc723d8fbe293861",
    "ca7a9f4a73e9fa63b1b6d0074f5dea2a624c5249ff3ad811b6255b299d6bc545",
    "1ba7477f19c5a0db690c3e6476398b1483d10314afd38bbaf6e2fbdbcd62c3ca",
    "9797a420ca6034ec0a83360a3ee2adf4b9d4ba29731d131b099a38d6a23cc463",
    "db754603211260e99d19affc902c915d7854554aabf608e3ac52c19b8aa26ae0",
    "42249b17b2d29669b5c859103ee53ef9bdc73ba3c6b537d5c34b6d8f034671d7",
    "f3a8a6966cc4543df223565343154140fd7391c7e7be03e241f4ecfeb877a051",
);
const RFC9474_P: &str = concat!(
    "e1f4d7a34802e27c7392a3cea32a262a34dc3691bd87f3f310dc756734889305",
    "59c120fd0410194fb8a0da55bd0b81227e843fdca6692ae80e5a5d414116d480",
    "3fca7d8c30eaaae57e44a1816ebb5c5b0606c536246c7f11985d731684150b63",
    "c9a3ad9e41b04c0b5b27cb188a692c84696b742a80d3cd00ab891f2457443dad",
    "feba6d6daf108602be26d7071803c67105a5426838e6889d77e8474b29244cef",
    "af418e381b312048b457d73419213063c60ee7b0d81820165864fef93523c963",
    "5c22210956e53a8d96322493ffc58d845368e2416e078e5bcb5d2fd68ae6acfa",
    "54f9627c42e84a9d3f2774017e32ebca06308a12ecc290c7cd1156dcccfb2311",
);
const RFC9474_Q: &str = concat!(
    "c601a9caea66dc3835827b539db9df6f6f5ae77244692780cd334a006ab353c8",
    "06426b60718c05245650821d39445d3ab591ed10a7339f15d83fe13f6a3dfb20",
    "b9452c6a9b42eaa62a68c970df3cadb2139f804ad8223d56108dfde30ba7d367",
    "e9b0a7a80c4fdba2fd9dde6661fc73fc2947569d2029f2870fc02d8325acf28c",
    "9afa19ecf962daa7916e21afad09eb62fe9f1cf91b77dc879b7974b490d3ebd2",
    "e95426057f35d0a3c9f45f79ac727ab81a519a8b9285932d9b2e5ccd347e59f3",
    "f32ad9ca359115e7da008ab7406707bd0e8e185a5ed8758b5ba266e8828f8d86",
    "3ae133846304a2936ad7bc7c9803879d2fc4a28e69291d73dbd799f8bc238385",
);
const RFC9474_MSG: &str = concat!(
    "8f3dc6fb8c4a02f4d6352edf0907822c1210a9b32f9bdda4c45a698c80023aa6",
    "b59f8cfec5fdbb36331372ebefedae7d",
);

/// RFC 9474 Appendix A, RSABSSA-SHA384-PSS-Randomized.
const RFC9474_PSS_RANDOMIZED: Rfc9474 = Rfc9474 {
    name: "RSABSSA-SHA384-PSS-Randomized",
    msg_prefix: "8417e699b219d583fb6216ae0c53ca0e9723442d02f1d1a34295527e7d929e8b",
    salt: concat!(
        "051722b35f458781397c3a671a7d3bd3096503940e4c4f1aaa269d60300ce449",
        "555cd7340100df9d46944c5356825abf",
    ),
    inv: concat!(
        "80682c48982407b489d53d1261b19ec8627d02b8cda5336750b8cee332ae260d",
        "e57b02d72609c1e0e9f28e2040fc65b6f02d56dbd6aa9af8fde656f70495dfb7",
        "23ba01173d4707a12fddac628ca29f3e32340bd8f7ddb557cf819f6b01e445ad",
        "96f874ba235584ee71f6581f62d4f43bf03f910f6510deb85e8ef06c7f09d979",
        "4a008be7ff2529f0ebb69decef646387dc767b74939265fec0223aa6d84d2a8a",
        "1cc912d5ca25b4e144ab8f6ba054b54910176d5737a2cff011da431bd5f2a0d2",
        "d66b9e70b39f4b050e45c0d9c16f02deda9ddf2d00f3e4b01037d7029cd49c2d",
        "46a8e1fc2c0c17520af1f4b5e25ba396afc4cd60c494a4c426448b35b49635b3",
        "37cfb08e7c22a39b256dd032c00adddafb51a627f99a0e1704170ac1f1912e49",
        "d9db10ec04c19c58f420212973e0cb329524223a6aa56c7937c5dffdb5d966b6",
        "cd4cbc26f3201dd25c80960a1a111b32947bb78973d269fac7f5186530930ed1",
        "9f68507540eed9e1bab8b00f00d8ca09b3f099aae46180e04e3584bd7ca054df",
        "18a1504b89d1d1675d0966c4ae1407be325cdf623cf13ff13e4a28b594d59e3e",
        "adbadf6136eee7a59d6a444c9eb4e2198e8a974f27a39eb63af2c9af3870488b",
        "8adaad444674f512133ad80b9220e09158521614f1faadfe8505ef57b7df6813",
        "048603f0dd04f4280177a11380fbfc861dbcbd7418d62155248dad5fdec0991f",
    ),
    blinded_msg: concat!(
        "aa3ee045138d874669685ffaef962c7694a9450aa9b4fd6465db9b3b75a522bb",
        "921c4c0fdcdfae9667593255099cff51f5d3fd65e8ffb9d3b3036252a6b51b6e",
        "dfb3f40382b2bbf34c0055e4cbcc422850e586d84f190cd449af11dc65545f5f",
        "e26fd89796eb87da4bda0c545f397cddfeeb56f06e28135ec74fd477949e7677",
        "f6f36cfae8fd5c1c5898b03b9c244cf6d1a4fb7ad1cb43aff5e80cb462fac541",
        "e72f67f0a50f1843d1759edfaae92d1a916d3f0efaf4d650db416c3bf8abdb54",
        "14a78cebc97de676723cb119e77aea489f2bbf530c440ebc5a75dccd3ebf5a41",
        "2a5f346badd61bee588e5917bdcce9dc33c882e39826951b0b8276c620397194",
        "7072b726e935816056ff5cb11a71ca2946478584126bb877acdf87255f26e6cc",
        "a4e0878801307485d3b7bb89b289551a8b65a7a6b93db010423d1406e149c877",
        "31910306e5e410b41d4da3234624e74f92845183e323cf7eb244f212a695f885",
        "6c675fbc3a021ce649e22c6f0d053a9d238841cf3afdc2739f99672a419ae13c",
        "17f1f8a3bc302ec2e7b98e8c353898b7150ad8877ec841ea6e4b288064c254fe",
        "fd0d049c3ad196bf7ffa535e74585d0120ce728036ed500942fbd5e6332c298f",
        "1ffebe9ff60c1e117b274cf0cb9d70c36ee4891528996ec1ed0b178e9f3c0c0e",
        "6120885f39e8ccaadbb20f3196378c07b1ff22d10049d3039a7a92fe7efdd95d",
    ),
    blind_sig: concat!(
        "3f4a79eacd4445fca628a310d41e12fcd813c4d43aa4ef2b81226953248d6d00",
        "adfee6b79cb88bfa1f99270369fd063c023e5ed546719b0b2d143dd1bca46b0e",
        "0e615fe5c63d95c5a6b873b8b50bc52487354e69c3dfbf416e7aca18d5842c89",
        "b676efdd38087008fa5a810161fcdec26f20ccf2f1e6ab0f9d2bb93e051cb9e8",
        "6a9b28c5bb62fd5f5391379f887c0f706a08bcc3b9e7506aaf02485d688198f5",
        "e22eefdf837b2dd919320b17482c5cc54271b4ccb41d267629b3f844fd63750b",
        "01f5276c79e33718bb561a152acb2eb36d8be75bce05c9d1b94eb609106f3822",
        "6fb2e0f5cd5c5c39c59dda166862de498b8d92f6bcb41af433d65a2ac23da87f",
        "39764cb64e79e74a8f4ce4dd567480d967cefac46b6e9c06434c371563583435",
        "7edd2ce6f105eea854ac126ccfa3de2aac5607565a4e5efaac5eed491c335f6f",
        "c97e6eb7e9cea3e12de38dfb315220c0a3f84536abb2fdd722813e083feda010",
        "391ac3d8fd1cd9212b5d94e634e69ebcc800c4d5c4c1091c64afc37acf563c7f",
        "c0a6e4c082bc55544f50a7971f3fb97d5853d72c3af34ffd5ce123998be5360d",
        "1059820c66a81e1ee6d9c1803b5b62af6bc877526df255b6d1d835d8c840bebb",
        "cd6cc0ee910f17da37caf8488afbc08397a1941fcc79e76a5888a95b3d5405e1",
        "3f737bea5c78d716a48eb9dc0aec8de39c4b45c6914ad4a8185969f70b1adf46",
    ),
    sig: concat!(
        "191e941c57510e22d29afad257de5ca436d2316221fe870c7cb75205a6c071c2",
        "735aed0bc24c37f3d5bd960ab97a829a508f966bbaed7a82645e65eadaf24ab5",
        "e6d9421392c5b15b7f9b640d34fec512846a3100b80f75ef51064602118c1a77",
        "d28d938f6efc22041d60159a518d3de7c4d840c9c68109672d743d299d8d2577",
        "ef60c19ab463c716b3fa75fa56f5735349d414a44df12bf0dd44aa3e10822a65",
        "1ed4cb0eb6f47c9bd0ef14a034a7ac2451e30434d513eb22e68b7587a8de9b4e",
        "63a059d05c8b22c7c51e2cfee2d8bef511412e93c859a13726d87c57d1bc4c2e",
        "68ab121562f839c3a3d233e87ed63c69b7e57525367753fbebcc2a9805a28026",
        "59f5888b2c69115bf865559f10d906c09d048a0d71bfee4b33857393ec2b69e4",
        "51433496d02c9a7910abb954317720bbde9e69108eafc3e90bad3d5ca4066d7b",
        "1e49013fa04e948104a1dd82b12509ecb146e948c54bd8bfb5e6d18127cd1f7a",
        "93c3cf9f2d869d5a78878c03fe808a0d799e910be6f26d18db61c485b303631d",
        "3568368fc41986d08a95ea6ac0592240c19d7b22416b9c82ae6241e211dd5610",
        "d0baaa9823158f9c32b66318f5529491b7eeadcaa71898a63bac9d95f4aa548d",
        "5e97568d744fc429104e32edd9c87519892a198a30d333d427739ffb9607b092",
        "e910ae37771abf2adb9f63bc058bf58062ad456cb934679795bbdfcdfad5e0f2",
    ),
};

/// RFC 9474 Appendix A, RSABSSA-SHA384-PSSZERO-Randomized.
const RFC9474_PSSZERO_RANDOMIZED: Rfc9474 = Rfc9474 {
    name: "RSABSSA-SHA384-PSSZERO-Randomized",
    msg_prefix: "84ea86c8cf3beedfed73beceabd792027c609d1100bf041fdd60d826a718130d",
    salt: "",
    inv: concat!(
        "80682c48982407b489d53d1261b19ec8627d02b8cda5336750b8cee332ae260d",
        "e57b02d72609c1e0e9f28e2040fc65b6f02d56dbd6aa9af8fde656f70495dfb7",
        "23ba01173d4707a12fddac628ca29f3e32340bd8f7ddb557cf819f6b01e445ad",
        "96f874ba235584ee71f6581f62d4f43bf03f910f6510deb85e8ef06c7f09d979",
        "4a008be7ff2529f0ebb69decef646387dc767b74939265fec0223aa6d84d2a8a",
        "1cc912d5ca25b4e144ab8f6ba054b54910176d5737a2cff011da431bd5f2a0d2",
        "d66b9e70b39f4b050e45c0d9c16f02deda9ddf2d00f3e4b01037d7029cd49c2d",
        "46a8e1fc2c0c17520af1f4b5e25ba396afc4cd60c494a4c426448b35b49635b3",
        "37cfb08e7c22a39b256dd032c00adddafb51a627f99a0e1704170ac1f1912e49",
        "d9db10ec04c19c58f420212973e0cb329524223a6aa56c7937c5dffdb5d966b6",
        "cd4cbc26f3201dd25c80960a1a111b32947bb78973d269fac7f5186530930ed1",
        "9f68507540eed9e1bab8b00f00d8ca09b3f099aae46180e04e3584bd7ca054df",
        "18a1504b89d1d1675d0966c4ae1407be325cdf623cf13ff13e4a28b594d59e3e",
        "adbadf6136eee7a59d6a444c9eb4e2198e8a974f27a39eb63af2c9af3870488b",
        "8adaad444674f512133ad80b9220e09158521614f1faadfe8505ef57b7df6813",
        "048603f0dd04f4280177a11380fbfc861dbcbd7418d62155248dad5fdec0991f",
    ),
    blinded_msg: concat!(
        "4c1b82d9b97b968b2ce0754e326abd49e3d723ed937d84bead34b6a834483b43",
        "d510bf62ca47683ed366d94d3d357b270a85cf2cc2ddd171141b45d7549d5373",
        "cf67d14f6f462c14ebded906793144faba37f129c0f3172854ec0f854e555552",
        "eec5a30c87788f1039814594f04348709e26a883be82affff207b1886b75c037",
        "f43f847f45d89bcbf210c22ffcdf8118ce8a526b3723e6209c26319f8f5d2adc",
        "f0b637031c9fdf53470a915c587e30287ba88ed4f1cd5e93cf3d4990acf31fff",
        "dbfddec80ae0b728d5b4c612a396fd81acaa65566a4dc1c24624f44fd10cdba0",
        "5f3d0bed2e69bb0d13d41a9f1b4e67aa566520778733ced5e6260f4d1982f63b",
        "b835442acffe3cb87f5f8ec6bb84226e0eab787159d08e57604b13557ceea97f",
        "2c4ad0631accf898f302df86f0b64354ec0b3bdf1b4e2a4deb4d38f655ea8d80",
        "de4cc19aa06ffcd56e348faf894c8774c53235ddcc152d80cf66b417eee4d182",
        "781bab8c979937a3c7502d8f39c57c4f09884de5a7247f2539910a96e4b15f9a",
        "3df88edc21a13030af357467a99dca50dba4afe4a6185a240ac8f1d8aab2e834",
        "43025f94e1af930f56f78661369cc6790701f31b83aec40f96a72c7f7ba13b4e",
        "bdd8e24e7351f4ffba0a7c072cb28f13aff06cd02368491044fcc536213b2e3b",
        "1cf6ca81cf2097b7b19d2b36bd246f390f53768f1c2e56113ea91b33c7cfa647",
    ),
    blind_sig: concat!(
        "4894f64d7214c216282d9842cbf7e7cccd9c0dcb1f4294a6bdeccd4c4c244616",
        "0d7cac7892f01b70dfa69f533891d2fbb447f7cf7541d1b504a2d46fc1bb6de2",
        "6b345972aada8ebce280b906f3a10a13208f77ef896fbe6bc4504327fd4c5c8f",
        "03211d45ae9672e9f4be0f4900762ba2a7177a58b90d6dd1263faf2b7a5f15d5",
        "0a7b00e733742c1b6a1ea4eb5fbfb407abf14496ab26b50cf1a5a56dea616b7a",
        "6a5595777400571a751c682b9fdd6badb3f72292f314f4ba2ba0f394f91676a4",
        "bb12e60ea08c977f7082be6357c1ca82fe3301fe5fb4128609bee2410db0481a",
        "ea3a5737fb0bce9381272c2202644f662e99f64bf1190d66e230cc0371ec33fe",
        "32fe725dfd872041914d39462a909414a780c9aab394af443199eba56c83986d",
        "22d57d4421b41ff8e5bec537d271223adb34d26c64989048a88d8f352a06a7cc",
        "153e216a6bed9548bb38d2a1600b2f3403289df6df74aec525ef9e413b7140a7",
        "c1a914dedd74a336f1beed39a8e5e2cef76cac094df0dbb3fa55d4b7ee781c74",
        "bed3bd8bc7aa6ef3f1dbfa4674945720ec93dafa6d0650229ab75e3fae687327",
        "fac081cf4bb376e02a2b73314c54c12f88572c28980f13aba5731bc5a3a60575",
        "ea116c8ea2fe5009168deb1255026c9310783ff7f644255d3e1691e194db1bab",
        "d7780b9a5dc0cb3de2b700d12f49cbe4db51ca2f3c8a58b09e854cc71e8070ab",
    ),
    sig: concat!(
        "195363ba25e4bf763f6538c86865785f93f4ea6092da3ad200d41b99eb0eb086",
        "9fa792df619fd8fa5923d5d03d5882faae6d25054118deef5e4a6a252dd5afb0",
        "dac262b74c391090b1575fbafd959d26bc294f47fb45a2c1c209932c4f94b243",
        "94eded91fbdd015e1a85dde63c9e77a0283f812cad1192d86432c51331e46fd4",
        "f3771bbafb929f847a19cb05e5f79b6b519d67e8f005951e53656be97cb612d2",
        "f506618b366403b34648451d6fbc7318c2f3f583cc6fa17bf2108398f9284e06",
        "02187904406a9322f1e7b8016ca9ad11b835756df862c465c420535e25faa48b",
        "f341f7ee8192be47fa875791f32f56d5e631d237060688f052426dee5b0b2b74",
        "ca5f830e82a453379eedb541fa4fcdaa19dae6509401e3cdd4c40f5c9243db3f",
        "6d7115c4e8cd6db8290723ab01d9d0d7e355a97a01547800e43f11736668c3f8",
        "908848d759c33a67a2f506abc3f6871cbe625b1bc71eb06d785a59501396712c",
        "581a60d6ccc450d2f4eb4cf08ae0dbfa45c2860425be90cc4cd4c989495bbd29",
        "63e19c59ae5d90d1ca884e80d654b5f2cd6a80c3588b514ee91c802736f594c3",
        "40397b316a97e9c70b0609955b6c3ee06f4760d9377f0797a0411a244db395bb",
        "8b711ef79fbcb5589226174029be79a72dcd6f4ca566b7b1b9a27e43b5c02a9a",
        "579d60bdda183398d66d76e0e8eceb1af2f27633589d043bcdc041683b31f7f1",
    ),
};

/// RFC 9474 Appendix A, RSABSSA-SHA384-PSS-Deterministic.
const RFC9474_PSS_DETERMINISTIC: Rfc9474 = Rfc9474 {
    name: "RSABSSA-SHA384-PSS-Deterministic",
    msg_prefix: "",
    salt: concat!(
        "051722b35f458781397c3a671a7d3bd3096503940e4c4f1aaa269d60300ce449",
        "555cd7340100df9d46944c5356825abf",
    ),
    inv: concat!(
        "80682c48982407b489d53d1261b19ec8627d02b8cda5336750b8cee332ae260d",
        "e57b02d72609c1e0e9f28e2040fc65b6f02d56dbd6aa9af8fde656f70495dfb7",
        "23ba01173d4707a12fddac628ca29f3e32340bd8f7ddb557cf819f6b01e445ad",
        "96f874ba235584ee71f6581f62d4f43bf03f910f6510deb85e8ef06c7f09d979",
        "4a008be7ff2529f0ebb69decef646387dc767b74939265fec0223aa6d84d2a8a",
        "1cc912d5ca25b4e144ab8f6ba054b54910176d5737a2cff011da431bd5f2a0d2",
        "d66b9e70b39f4b050e45c0d9c16f02deda9ddf2d00f3e4b01037d7029cd49c2d",
        "46a8e1fc2c0c17520af1f4b5e25ba396afc4cd60c494a4c426448b35b49635b3",
        "37cfb08e7c22a39b256dd032c00adddafb51a627f99a0e1704170ac1f1912e49",
        "d9db10ec04c19c58f420212973e0cb329524223a6aa56c7937c5dffdb5d966b6",
        "cd4cbc26f3201dd25c80960a1a111b32947bb78973d269fac7f5186530930ed1",
        "9f68507540eed9e1bab8b00f00d8ca09b3f099aae46180e04e3584bd7ca054df",
        "18a1504b89d1d1675d0966c4ae1407be325cdf623cf13ff13e4a28b594d59e3e",
        "adbadf6136eee7a59d6a444c9eb4e2198e8a974f27a39eb63af2c9af3870488b",
        "8adaad444674f512133ad80b9220e09158521614f1faadfe8505ef57b7df6813",
        "048603f0dd04f4280177a11380fbfc861dbcbd7418d62155248dad5fdec0991f",
    ),
    blinded_msg: concat!(
        "10c166c6a711e81c46f45b18e5873cc4f494f003180dd7f115585d871a289302",
        "59654fe28a54dab319cc5011204c8373b50a57b0fdc7a678bd74c523259dfe4f",
        "d5ea9f52f170e19dfa332930ad1609fc8a00902d725cfe50685c95e5b2968c9a",
        "2828a21207fcf393d15f849769e2af34ac4259d91dfd98c3a707c509e1af5564",
        "7efaa31290ddf48e0133b798562af5eabd327270ac2fb6c594734ce339a14ea4",
        "fe1b9a2f81c0bc230ca523bda17ff42a377266bc2778a274c0ae5ec5a8cbbe36",
        "4fcf0d2403f7ee178d77ff28b67a20c7ceec009182dbcaa9bc99b51ebbf13b7d",
        "542be337172c6474f2cd3561219fe0dfa3fb207cff89632091ab841cf38d8aa8",
        "8af6891539f263adb8eac6402c41b6ebd72984e43666e537f5f5fe27b2b5aa11",
        "4957e9a580730308a5f5a9c63a1eb599f093ab401d0c6003a451931b6d124180",
        "305705845060ebba6b0036154fcef3e5e9f9e4b87e8f084542fd1dd67e7782a5",
        "585150181c01eb6d90cb95883837384a5b91dbb606f266059ecc51b5acbaa280",
        "e45cfd2eec8cc1cdb1b7211c8e14805ba683f9b78824b2eb005bc8a7d7179a36",
        "c152cb87c8219e5569bba911bb32a1b923ca83de0e03fb10fba75d85c55907dd",
        "a5a2606bf918b056c3808ba496a4d95532212040a5f44f37e1097f26dc27b98a",
        "51837daa78f23e532156296b64352669c94a8a855acf30533d8e0594ace7c442",
    ),
    blind_sig: concat!(
        "364f6a40dbfbc3bbb257943337eeff791a0f290898a6791283bba581d9eac90a",
        "6376a837241f5f73a78a5c6746e1306ba3adab6067c32ff69115734ce014d354",
        "e2f259d4cbfb890244fd451a497fe6ecf9aa90d19a2d441162f7eaa7ce3fc4e8",
        "9fd4e76b7ae585be2a2c0fd6fb246b8ac8d58bcb585634e30c9168a434786fe5",
        "e0b74bfe8187b47ac091aa571ffea0a864cb906d0e28c77a00e8cd8f6aba4317",
        "a8cc7bf32ce566bd1ef80c64de041728abe087bee6cadd0b7062bde5ceef308a",
        "23bd1ccc154fd0c3a26110df6193464fc0d24ee189aea8979d722170ba945fdc",
        "ce9b1b4b63349980f3a92dc2e5418c54d38a862916926b3f9ca270a8cf40dfb9",
        "772bfbdd9a3e0e0892369c18249211ba857f35963d0e05d8da98f1aa0c6bba58",
        "f47487b8f663e395091275f82941830b050b260e4767ce2fa903e75ff8970c98",
        "bfb3a08d6db91ab1746c86420ee2e909bf681cac173697135983c3594b2def67",
        "3736220452fde4ddec867d40ff42dd3da36c84e3e52508b891a00f50b4f62d11",
        "2edb3b6b6cc3dbd546ba10f36b03f06c0d82aeec3b25e127af545fac28e1613a",
        "0517a6095ad18a98ab79f68801e05c175e15bae21f821e80c80ab4fdec6fb34c",
        "a315e194502b8f3dcf7892b511aee45060e3994cd15e003861bc7220a2babd7b",
        "40eda03382548a34a7110f9b1779bf3ef6011361611e6bc5c0dc851e1509de1a",
    ),
    sig: concat!(
        "6fef8bf9bc182cd8cf7ce45c7dcf0e6f3e518ae48f06f3c670c649ac737a8b81",
        "19a34d51641785be151a697ed7825fdfece82865123445eab03eb4bb91cecf4d",
        "6951738495f8481151b62de869658573df4e50a95c17c31b52e154ae26a04067",
        "d5ecdc1592c287550bb982a5bb9c30fd53a768cee6baabb3d483e9f1e2da954c",
        "7f4cf492fe3944d2fe456c1ecaf0840369e33fb4010e6b44bb1d721840513524",
        "d8e9a3519f40d1b81ae34fb7a31ee6b7ed641cb16c2ac999004c2191de020145",
        "7523f5a4700dd649267d9286f5c1d193f1454c9f868a57816bf5ff76c838a2ee",
        "b616a3fc9976f65d4371deecfbab29362caebdff69c635fe5a2113da4d4d8c24",
        "f0b16a0584fa05e80e607c5d9a2f765f1f069f8d4da21f27c2a3b5c984b4ab24",
        "899bef46c6d9323df4862fe51ce300fca40fb539c3bb7fe2dcc9409e425f2d3b",
        "95e70e9c49c5feb6ecc9d43442c33d50003ee936845892fb8be475647da9a080",
        "f5bc7f8a716590b3745c2209fe05b17992830ce15f32c7b22cde755c8a2fe50b",
        "d814a0434130b807dc1b7218d4e85342d70695a5d7f29306f25623ad1e8aa08e",
        "f71b54b8ee447b5f64e73d09bdd6c3b7ca224058d7c67cc7551e9241688ada12",
        "d859cb7646fbd3ed8b34312f3b49d69802f0eaa11bc4211c2f7a29cd5c01ed01",
        "a39001c5856fab36228f5ee2f2e1110811872fe7c865c42ed59029c706195d52",
    ),
};

/// RFC 9474 Appendix A, RSABSSA-SHA384-PSSZERO-Deterministic.
const RFC9474_PSSZERO_DETERMINISTIC: Rfc9474 = Rfc9474 {
    name: "RSABSSA-SHA384-PSSZERO-Deterministic",
    msg_prefix: "",
    salt: "",
    inv: concat!(
        "55f2053e9a4309ac61ac4da7f3a314e626f362e95f30337962d12f08b343165c",
        "8dea34d7812dc2dcb227cfa8de49bca57880ac55f6d77b37ed83a32eb33656dd",
        "f0cde29761aef9f86bd758280b3403a63b466831cba4c97e17e9a11e4139f9d8",
        "4e5912b017eafbafdbb3ae59a1424feae6914eb1bf20922c6db5da8a538752b3",
        "b662ae15cae7beac9a0362b8836001c57b0c5167dceb9a66e6ab6a90e9898646",
        "b4274c3662e4316926c4da7caf5aeff611934b70581280ec68fb2ce04c5681ef",
        "95b086b7289afae8ecd669325659791853a9f4c0b784f6f60b212c3b39754d55",
        "39e3671d7930d1272e82b3853b6583a83d9ff70c00ce1938c05eccee531cb075",
        "564059b2749e84b45dff7d179c69c86c5d1870aeffd6281d099838a3a988ff9e",
        "2684f6cc896b5326275309187d9e3558163131e4d247c2ec8317a2c09f8079d3",
        "2db8241c869bc5f773722ed8e68bfa5c518d20b955abf02103fce1a025149b14",
        "670fdfc8a3f0089516db047f86b9be626ff44989d6fcc162c9570da5b862b473",
        "04eca2aceba4dedd6a672458aae779004fe116009600a6a52eb6161a3d09fda0",
        "9963b56f2870a150df7183bfa03ce735513e637631fb4f980657a8cdb953b215",
        "6594607f8ebf7de6999626197072afd7ff60a5d2f782dabe026e0f298df141b8",
        "a276aaf7202d959088d7721786b04c79e45c807eb46fcf3a94031ef351aff644",
    ),
    blinded_msg: concat!(
        "0c86f078fe8fd2ea6b4e120d3fef7555701a7c6b7bd5606a7fb2ef2769d119f2",
        "639477a7904984d67f0ecf419059aac58041977871d8da253a1aee14cde49cfb",
        "919f502f4d79d56d473a95f450982ad83398c1f3dd3a3342a18df9e81447998e",
        "ae6c7f9de94148a30de0846fc2402b17b2dfe233c450ba41f141ec14b27bf4e7",
        "d79a5c0fa23ad64c2d2fa33691a3048d835f7e477ecba458e4d58f8dbbcfec2a",
        "484e1442ab4b266cfc610fec95f6258ef137590254931dea30f58e96a64cef7a",
        "ca013cb037259d4dec8a2298d3e2ce96c75a10f39dcdfe7e90eba200c73fc3f5",
        "fbbdc4d50d33990559504d0ddb4fe50407fc21321128f72866c780d1412f20d4",
        "788ad0ebc2077dca4ae87108e416c3510609867196f4fbb69ff6c3a4c0249e3d",
        "6bcf157636666a0e17d8dba9034d9875e40bbff075b0a936acd75baf15179042",
        "959d6b27f8e233b60db93a2abce81f47e259f76b5a68d58c21fd8ccd7e102fc9",
        "292ec5a1bad8618a94f09ca6a58b1c5c7062fb17bd62035d898b76ead5f52a98",
        "69d5b6fbbbf5cd07bc3c35adbff4f03949fe32b455cd5b3de07859d65045b72f",
        "b1f4a0ab5c80a27a60b57ebd9e0b173778d3be592e74cdc6a9ffa147cbb021a8",
        "7b9a525bc9135114d4daacf0b111773551474ea98493ed8562dac1c9e6398ada",
        "60573ff550a01aa4468fd493fb69b3a98ab3790fc7f71ef5dfa3f1979ebe35af",
    ),
    blind_sig: concat!(
        "5ca77254ce107e6e6eedcf8ca03e08d4e92eeb0f4f08b2a2e7fb69da2f5db95f",
        "2167ce58a861e45a5cac1bf7d3df3edd64a2802bb5c16ceb62b2f5a0355c0d0f",
        "6d8270b658fa26e86afc18a88e91b0ec07e813d50ed4fb20376bf8470179a3a9",
        "7d5a29f9f9fe931d6bff233c45d62cd91cdb9a692cda309fad962fd9f7f19f89",
        "cc48bc75f9b521aeca21921330c7e91ff7ff2af6e62fe3112f7ec675e866c596",
        "1556a1796f2fd4707dd9fcde702caf003b5acfde1cd97bc5d2a63d126ac0587b",
        "f8ed6a3064d20dbdef9e207423e678f36e516e4c2696cc74f0a74be4c3ddaaf6",
        "cdbc95c9d58d930f0f4e00dfa2bf5d0a333964ec03226073030b9b78210d3160",
        "ec2722abf3c01efa1636a28c6c5ac9d14913537322ee42d26ab26518ec2af032",
        "02ea0e190a4790b7a8951be98313000c62d1fe0ea05647c451348f97ef5ced6c",
        "6e83303aececcc508fcc8f18f7751e050f9f7a562f45b0d03159486d067ab4b3",
        "df1b0f270d009436f0305640929a2b61cfeef24a2e39a9a622c9d9d9e2c99245",
        "ea415243f472b226e068ebba7624ccf012b86b21d80cb2e3b718224b2f7b638a",
        "16b7665a1a493b014dd3d0f7b97ca290665b1f0972bc4a7d4051e843182771b6",
        "258d9d63f919fde109f8487f443ea54518c053acfbf7c0cfe60435b6966d42c0",
        "34cf6ad3be2281fa2bf1a90f1d2cba55643e9ae37065a7534f53402e6f4c2a3a",
    ),
    sig: concat!(
        "4454b6983ff01cb28545329f394936efa42ed231e15efbc025fdaca00277acf0",
        "c8e00e3d8b0ecebd35b057b8ebfc14e1a7097368a4abd20b555894ccef3d1b95",
        "28c6bcbda6b95376bef230d0f1feff0c1064c62c60a7ae7431d1fdfa43a81eed",
        "9235e363e1ffa0b2797aba6aad6082fcd285e14fc8b71de6b9c87cb4059c7dc1",
        "e96ae1e63795a1e9af86b9073d1d848aef3eca8a03421bcd116572456b53bcfd",
        "4dabb0a9691f1fabda3ed0ce357aee2cfee5b1a0eb226f69716d4e011d96eede",
        "5e38a9acb531a64336a0d5b0bae3ab085b658692579a376740ff6ce69e89b06f",
        "360520b864e33d82d029c808248a19e18e31f0ecd16fac5cd4870f8d3ebc1c32",
        "c718124152dc905672ab0b7af48bf7d1ac1ff7b9c742549c91275ab105458ae3",
        "7621757add83482bbcf779e777bbd61126e93686635d4766aedf5103cf7978f3",
        "856ccac9e28d21a850dbb03c811128616d315d717be1c2b6254f8509acae8620",
        "42c034530329ce15ca2e2f6b1f5fd59272746e3918c748c0eb810bf76884fa10",
        "fcf749326bbfaa5ba285a0186a22e4f628dbf178d3bb5dc7e165ca73f6a55ecc",
        "14c4f5a26c4693ce5da032264cbec319b12ddb9787d0efa4fcf1e5ccee35ad85",
        "ecd453182df9ed735893f830b570faae8be0f6fe2e571a4e0d927cba4debd368",
        "d3b4fca33ec6251897a137cf75474a32ac8256df5e5ffa518b88b43fb6f63a24",
    ),
};

/// RFC 9578 Appendix A.2, pkS: the issuer's RSASSA-PSS SubjectPublicKeyInfo.
const RFC9578_PKS: &str = concat!(
    "30820152303d06092a864886f70d01010a3030a00d300b060960864801650304",
    "0202a11a301806092a864886f70d010108300b0609608648016503040202a203",
    "0201300382010f003082010a0282010100cb1aed6b6a95f5b1ce013a4cfcab25",
    "b94b2e64a23034e4250a7eab43c0df3a8c12993af12b111908d4b471bec31d4b",
    "6c9ad9cdda90612a2ee903523e6de5a224d6b02f09e5c374d0cfe01d8f529c50",
    "0a78a2f67908fa682b5a2b430c81eaf1af72d7b5e794fc98a3139276879757ce",
    "453b526ef9bf6ceb99979b8423b90f4461a22af37aab0cf5733f7597abe44d31",
    "c732db68a181c6cbbe607d8c0e52e0655fd9996dc584eca0be87afbcd78a337d",
    "17b1dba9e828bbd81e291317144e7ff89f55619709b096cbb9ea474cead264c2",
    "073fe49740c01f00e109106066983d21e5f83f086e2e823c879cd43cef700d2a",
    "352a9babd612d03cad02db134b7e225a5f0203010001",
);

/// RFC 9578 Appendix A.2, test vectors 1 to 5 (one issuer key: skS, pkS above).
const RFC9578: [Rfc9578; 5] = [
    // Test vector 1
    Rfc9578 {
        token_challenge: concat!(
            "0002000e6973737565722e6578616d706c65208e7acc900e393381e8810b7c9e",
            "4a68b5163f1f880ab6688a6ffe780923609e88000e6f726967696e2e6578616d",
            "706c65",
        ),
        nonce: "aa72019d1f951df197021ce63876fe8b0a02dc1c31a12b0a2dd1508d07827f05",
        blind: concat!(
            "425421de54c7381864ce36473abfb988c454fe6c27de863de702a6a2adca153f",
            "a2de47bd8fcd62734caa8ce1f920b77d980ab58c32d16dde54873f28ca968e8c",
            "125b8363514be68972f553655bcc7f80a284cc327e47e804a47333c5b3cdf773",
            "312cc7ad9fda748aed0baa7e19c5a2d1dafda718f086d7fc0a4bc02d488e0f20",
            "812daee335af7177b7a8369bd617066aed7a58f659f295c36b418827f679725b",
            "81ca14ea16fb82df21ad76da1ac38dcf24bf6252f8510e2308608ac9197f6cb5",
            "4fdcb19db17837302a2b87d659c5605f35f3709a130f0c3d50e172f0cae36cbc",
            "9467f9914895a215a9e32443bcafff795273ccf8965a7eaa8c0b2184763e3e5c",
        ),
        salt: concat!(
            "3d980852fa570c064204feb8d107098db976ef8c2137e8641d234bbd88a986fd",
            "b306a7af220cfadede08f51e1ef61766",
        ),
        token_request: concat!(
            "0002086a95be84b63cfed0993bb579194a72a95057e1548ac463a9a5b33b011f",
            "2b2011d59487f01862f1d8e4d5ea42e73a660fbc3d010b944a54da3a4e0942f8",
            "894c0884589b438cb902e9a34278970f33c16f351f7dae58d273c3ab66ef368d",
            "a36f785e89e24d1d983d5c34311cd21f290f9e89e8646ab0d0a48988fcd46230",
            "de5e7603cd12cc95c7ec5002e5e26737aa7eb69c626476e6c8d46510ee404a3d",
            "7daf3a23b7c66735d363ca13676925c6ed0117f60d165ce1f8ba616d041b6384",
            "baf6da3e2f757cb18e879a4f8595c2dc895ddf1f4279c75768d108b5c47f95f9",
            "4e81e2d8b9c8b74476924ab3b7c45243fc99ac5466e8a3680ad37fa15c96010b",
            "274094",
        ),
        token_response: concat!(
            "675d84b751d9e593330ec4b6d7ab69c9a61517e98971f4b736150508174b4335",
            "761464f237be2d72bbae4b94dffc6143413f6351f1aa4efde6c32d4d6d9392a0",
            "08290d56d1222f9b77a1336213e01934f7d972f3bf9ea5a5786c321352f103b3",
            "667e605379a55f0fb925fbb09b8a9f85e7dd4b388a3b49d06fd70ba28f6a780e",
            "3bc8f6421554fd6c38b63ef19f84ccfcf14709dd0b4d72213c1f060893854eba",
            "0ea1a147e275da320db5e9849882d5f9179efa8a2d8d3b803f9d1445ef5c1f66",
            "0be08883ce9b29a0a992fc035d2938cbb61c440044438dbb8b3ce7158a8f9827",
            "d230482f622d291406ab236b32b122627ae0fd36bd0d6b7607b8044ace404d44",
        ),
        token: concat!(
            "0002aa72019d1f951df197021ce63876fe8b0a02dc1c31a12b0a2dd1508d0782",
            "7f055969f643b4cfda5196d4aa86aeb5368834f4f06de46950ed435b3b81bd03",
            "6d44ca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd",
            "2708bc6a21b533d07294b5e900faf5537dd3eb33cee4e08c9670d1e5358fd184",
            "b0e00c637174f5206b14c7bb0e724ebf6b56271e5aa2ed94c051c4a433d302b2",
            "3bc52460810d489fb050f9de5c868c6c1b06e3849fd087629f704cc724bc0d09",
            "84d5c339686fcdd75f9a9cdd25f37f855f6f4c584d84f716864f546b696d620c",
            "5bd41a811498de84ff9740ba3003ba2422d26b91eb745c084758974642a42078",
            "201543246ddb58030ea8e722376aa82484dca9610a8fb7e018e396165462e17a",
            "03e40ea7e128c090a911ecc708066cb201833010c1ebd4e910fc8e27a1be467f",
            "78671836a508257123a45e4e0ae2180a434bd1037713466347a8ebe46439d3da",
            "1970",
        ),
    },
    // Test vector 2
    Rfc9578 {
        token_challenge: concat!(
            "0002000e6973737565722e6578616d706c6500000e6f726967696e2e6578616d",
            "706c65",
        ),
        nonce: "98c1345ff38a554b429b428b0f206cfe4f3892f8041995f2c24873d90e84488d",
        blind: concat!(
            "7bb85f89c9b83a0e2b02938b3396f06f8f3df0018a91f1a2cc5416aaa552994d",
            "063f634d50bea13bffe8d5e01431e646e2e384549cefd695ac3affff665a1ebf",
            "0113df2520006bd66e468d37a58266daa8a3a75692535e1fc46d0c1d6fb6f37c",
            "949808172e20c0b77a48570a1fcb474325bdd23cdbce52b5d6a9e39f7aec73b0",
            "9004eae8c8bfff2b4b533ea63bcf467a4cd95ccfb0cb4e43bc4992c1fd0be7a7",
            "7a4475dbf8094cf25125ece901abbcea607a9050ad9f8ec3d0d66341f6eab40e",
            "e9c9c22c0b560b8377f8543d8878c7458885fd285c7556cc88fc6021617075b4",
            "2c83a86005169a6f13352e789b28fdbbe3d0288e1dd7c801497573893146aea3",
        ),
        salt: concat!(
            "b6b4378421ab0ea677ce3f4036fd0489dee458ad81ea519c3e8bde3fcd5ec150",
            "5d28e110d7b44dcac5e04ecedd54d11a",
        ),
        token_request: concat!(
            "00020892d26a271c0104657ba10c0b5cb2827bb209d86e80027f96bfb861e0f4",
            "0cb897f0fc426498433141ce9bc8b4a95914fefe4e40bdd3802a121cb0b59a4a",
            "e7e03255275c4abf071d991c82ead402606c0ef912178b0a0f68d303e06a9660",
            "79230592827b84979dbcb5f21ab8904e9908638ddf705c4f8af8a053c19a6609",
            "0726b60c6b4063976e4c66eab33522dd3f9d64828441db4aa82d55adcc3d3920",
            "592884cd1e5a3f490d5c81f1306705dcc5c61d82373f1dbd7d2ae4b2fea0f733",
            "9f5d868415f59312766e3074ee4a7305f5f053da82673ee6747a727a26d8d10e",
            "a1b1a3491d26b0c38b962c02a774ac78932153aae9dcc98a9b1db1f538964468",
            "2f7727",
        ),
        token_response: concat!(
            "113a5124c1aef6fc230d9fc42b789226f45ca941aad4da3f48cf37c7744a8d7f",
            "d1dcfd71cd39d09e9324760180ea0bade3360efaf7322a1fa15f41247be3857f",
            "de8c5c92ec6d67a7ee33be8fdadf8b27bb0db706117448e55bce9927cb6bfb1f",
            "87f9edb054181a4558af0c0d3973d7033b9599e674c20cf08a7bbcf0da815a2e",
            "daab7c4fb80dee4ea2cc53576a9691e857da931c6c592d2c69dd21afda8ea653",
            "dd90157adfe80e2375c08e75beb497df8b7b73192fbbd4e80359d9bbaecea14e",
            "0acebdda92596f71ec1d57e26b6497b3152976bc07a4409148cb84389eb207fb",
            "8e841106012408c6e19b4f964008b6a909aaab767a661a061c97da1643040455",
        ),
        token: concat!(
            "000298c1345ff38a554b429b428b0f206cfe4f3892f8041995f2c24873d90e84",
            "488d11e15c91a7c2ad02abd66645802373db1d823bea80f08d452541fb2b62b5",
            "898bca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd",
            "27083350a206c5e9b7c0898f97611ce0bb8d74d310bb194ab67e094e32ff6da9",
            "0886924b1b9e7b569402c1101d896d2fc3a7371ef77f02310db1dc9f81c85358",
            "28c2d0e9d9051720d182cd54e1c2c3bf417da2fc7aa72bb70ccc834ef274a2e8",
            "09c9821b3d395d6535423f7428b3f29175d6eb840b4b7685336e57e2b6afeaab",
            "c0c17ea4f557e8a9cc2f624e245c6ccd7cbdd6c32c97c5c6974e802f688e2d25",
            "f0aba4215f609f692244517d5d3407e0172273982c001c158f5fcbe1b5d2447c",
            "26a87e89f5a9e72b498b0c59ce749823d2cf253d3cf6cd4e64fa0e434d95e488",
            "789247a9ceed756ff4ff33a8d2402c0db381236d331092838b608a4200255209",
            "2897",
        ),
    },
    // Test vector 3
    Rfc9578 {
        token_challenge: concat!(
            "0002000e6973737565722e6578616d706c65000017666f6f2e6578616d706c65",
            "2c6261722e6578616d706c65",
        ),
        nonce: "9e7a22bdc5d715682434cebc07eb5fa53f622f776a17a6d91757af1592df0e71",
        blind: concat!(
            "c52cabc5e4e131e0f5860cc4c486c5ee8a5fa8ae59484446121f87b0d8ccd037",
            "f161a99ebcc57f79d05a2ffc852656ad2d0894fab8d1b0f998e6e678254ed577",
            "8da98b137371320314d06c24276e35435bccffa49d257687f270f9ce17926a07",
            "4737546d5415a4bb9e624a6302562b395856632efb6992f6593a4f95fb342002",
            "efebc3046ca96bbc26edb2f1a1454a24ce7b9a7ec8e44fb9e99c8144d409d8cd",
            "8a5903c0a3c0acbd9f82573ed1fc4a296e3eaf4867ade30110794678f422d36b",
            "d103ea4617d2472cf58da3381e52e5be60f4acbf685e280648cef21211a796ec",
            "d005ecbdaa1046c40950afca4c4e7dd4b8c19e504088489a15667b45895b6e92",
        ),
        salt: concat!(
            "c847b5d0fa9101a1e09954ac9f3eed6600af58936295ad2e54274e13e640d59f",
            "732d07530c94c19c20668f03470c77ac",
        ),
        token_request: concat!(
            "0002080f6bd84fba1822c577c8cd670f1136cca107f84ddd9d405d5ed22ad15d",
            "a975538f031433bad4a2688999732927efe2928d4c132389a122f40b639b083d",
            "6fcbbed7a55fb18db536d2dcbaefe6dc0a70730e6565b08a7dfd783913a59f37",
            "d798de0cfc262c9e90a7ee884a3ec355eacbd44e5f6779fea6a785b05ac352fd",
            "d51a116cf2be1d8e38b0bfacd6a3d53a88c99f747cce908f86b33562691f540e",
            "3e88562092cd17cc2f78ce0fb53312a5f2dc918bdb1dc90d9d65091c7ba9080c",
            "cc1755cb5437989364dc92f0e8fea18f66d631451feb02a3d68af41de1a3f9be",
            "925dda5c4ca0706fc4ca28b3317e939f6573442c6d03be17cd141fa8260d382d",
            "134c6b",
        ),
        token_response: concat!(
            "2dd08ce89cf4f62bc236ab7b75266e13c57c750345e328e0bea107537c4cbeea",
            "5bfc990716950440628ea2e37dbc5c9c6d84f9a965cbf0cbfffb89516b1fd19a",
            "90d69cc52a28890bbdcf782f56aefadad85b6e861a74170ce910891c89e4293f",
            "37978dbd41cc8b5c68802de3d86d9f0326b9c22b8095122458966a6ddd1aeb38",
            "28d239c3b359efc9b375390eb19050d5656c2b084304d9bd8a81614f631bf82a",
            "7e4588413b44a0cb6d94e942fa134790b396cb71e3ed33b557b5bd0734e726fa",
            "79abdca8694703b81d0e289b749801d4383e0d4f825dcde0dd98c43d3ba81c02",
            "8dd8833a4fc24961f60e118d4421dce5b611d53e9ca96156a52509bfa9afeb7e",
        ),
        token: concat!(
            "00029e7a22bdc5d715682434cebc07eb5fa53f622f776a17a6d91757af1592df",
            "0e710042eee45ac4dd5acb8f6e65c4d8dd47504f73f7463507ef96a4d7227d27",
            "74f3ca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd",
            "270815b010bbc0d5f55e9c856d2e9ffaefba007d33c2d5452fbeb0b15919b973",
            "e0dc9180aaeb18242043758d9fb0ac9ac5e04da9ff74ec93644ae6cdb7068ea7",
            "6ce2295b9b95e383ed3a9856e9f618dafdf4cec5d2b53ea4297c2f3990babca7",
            "1e3ccd6c07a437daae7ed27b6b81178fb7ce5fa5dd63781cc64ac1e410f441c0",
            "34b0a5cc873a2ce875e8b38c92bab563635c4f8f4fa35d1f582ef19edf7da75a",
            "a11a503a82e32a12bd4da41e0ca7ec7f451caf586f5b910003fcbbb9ff5ffa24",
            "08c28d6807737d03da651ea9bfafcc2747a6830e19a1d160fcd5c25d2f79dad8",
            "6a8b3de8e926e08ca1addced72977f7b56398ef59c26e725df0a976a08f2a936",
            "ca42",
        ),
    },
    // Test vector 4
    Rfc9578 {
        token_challenge: "0002000e6973737565722e6578616d706c65000000",
        nonce: "494dae41fc7e300c2d09990afcd5d5e1fc95305337dc12f78942c45340bfe8e6",
        blind: concat!(
            "097cb17bcedecfe058dff5c4e517d1e36d7ab8f46252b1ac1933ba378c32625c",
            "0dbc69f5655c2003bf39e75810796cd63675b223cf3162c57108d56e0584cfce",
            "6cad829e74369ada38a095eb3012c912b31ccde7425f93464e353fb17552be3a",
            "8df2913daca61543a33ae45058f218c471dfbc12fb304158e29b6ed35bc079e2",
            "3f1e6173c5dec4545840bbe58e5ad37cbea0a10dca5d9df2781589d27c341084",
            "77b52c0d32a1370c17f703941fbb1a007a6794e7de2758709c9bbf80f21eec79",
            "22b9bb491eb6aac8c1a14764e648e6be4fff0ae913797067aa0826f366c3103e",
            "103b05653c73b52d7f825a185dccfb806da700db9f53abb848554b7d4f7c28f3",
        ),
        salt: concat!(
            "49912979f1bf528e5b8228ab1328df74319dce7bdaf45821ceb1100dcf042a2d",
            "fe852fc9db59b64a5f6493c282504240",
        ),
        token_request: concat!(
            "000208244840027ca8c620f8b14caded9a198ba388ccd8541e962f68a0071535",
            "d958d18494afd0bc11da4da8c8b33864f5a8f623b697cd56348594e11a754790",
            "48a72c0ed179b070506c09a7eb6ed3582f572df38cf60fcde11a52c5ce6d7b23",
            "435b60200ad9f66d21f40f323c9aa54307d0b966d4457c37542b66bb183ddeaf",
            "ca914fc74831698b5d52f498ee3d165685f49a8d86e39fe6c4b7ec678f525090",
            "8d25e5b873c69b422368121aa4210cadd6fc640907d3cb9a7a3e827a0e742470",
            "f00c2f49dc6c0e8cc9470dbfd73df0ccbb96c10b02af0dd7dee719eca11ff8e1",
            "b4929e59f3cf319de9bda29a6d968b43083b5d4242f3448d76ada08b8014f70b",
            "97e719",
        ),
        token_response: concat!(
            "c2746ff644cffb28a2c19395fa19dfb61fd135daa837844fbf9fbe06c253e64e",
            "69f53aefddc0fb4833b1b5e58f571134a34f245499c3e73419549c2c9111cf94",
            "f2f68fea3996d47f71e8d8d6fc5b1c074bf74fa59de4cbf32f5f08d45ea45492",
            "f0279c3b1a8d852698edbe1651eb8e09eb223a27386c0feb2f6a8260235edb36",
            "cf433da518100829b63166284b325d87fc941ea3bafe7b6761b7082e09397837",
            "f74b4f0fc838bce8af7242089dd5561f57735926bcbad219fc9fee85ae49a8e8",
            "951f63ca194b7ff018c06ee02267e7267bb996432dc76973819da80e3e86947b",
            "0a4b36d3a972dafaaa3db0e1044b325f02c679996d9bcd3ce51390d54bc10b8c",
        ),
        token: concat!(
            "0002494dae41fc7e300c2d09990afcd5d5e1fc95305337dc12f78942c45340bf",
            "e8e6b741ec1b6fd05f1e95f8982906aec1612896d9ca97d53eef94ad3c9fe023",
            "f7a4ca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd",
            "2708a55c83dc04292b5d92add1a87b37e54f22f61c58840586f390c50b231824",
            "423378ddcf50e69dc817d45bfad06c7f2a0ac35d2acd7f26b0bc9954c192b0a0",
            "ef28a2a5650e390098dd3cb1166a7cb1716d3dd2d19dc5ca3b1ea6206359de00",
            "02d82bc4fa7e69fb07214b06addcbd2203d1e17f57fc580bcc5a13e0ac15cf94",
            "2182cc2b5d6eaa737a712704114e357e2ec2f10047463ded02a1a0766dc346dd",
            "7212b9711e03ac95eb258ac1164104dc9a0d3e738ae742ab5ed8c5139fc07145",
            "a788b9f891741ee68f0a66782b7b84a9bb4cb4b3d1b26b67106f397b35b641d8",
            "82d7b0185168946de898ef72349a44a47dbdd6d46e9ba9ba543d5701b65c63d6",
            "45c2",
        ),
    },
    // Test vector 5
    Rfc9578 {
        token_challenge: concat!(
            "0002000e6973737565722e6578616d706c65208e7acc900e393381e8810b7c9e",
            "4a68b5163f1f880ab6688a6ffe780923609e880000",
        ),
        nonce: "a1aa8b371c37c9a8ddbd7342ab4f9dd5227d5b1600dca6517b60f63143cd43a3",
        blind: concat!(
            "ad7a32e1ac31b91daefd7042cc23d5621ab3e870d87297bbfe1ee8a518ffc5b8",
            "4770d3b77775c485b2d219954834868842d2f11877ac4bceb5da88944cca043a",
            "9afa52f9c9998a5dea7ab7c1f82662d0d327e29705a269ad221ae74a7c1172ff",
            "89c48997a9fda08886d3998bb538868396c0ace71d260cc71f768001939b24d8",
            "0d88979f0244a3dbc004eadfac81e138d430b9fa51c1aad21b957ff96b3123c9",
            "1c2fff362a386f0f99a3f9fc906ca626fd9107648f87532b44c4fe3856ecae1f",
            "46d8ebf5d2f46e52034478e5e883015666574dd80bd5c036c4b55ebcc8b66068",
            "8d23944cc1932d075b559dcdc269fae3511761f71c113634e60d67accc8875fb",
        ),
        salt: concat!(
            "35c04710ce866d879447b6230ce098a49e81be5c067881cce7bd5f92c1e5bd9b",
            "3c7d4d795cfad134fdfe916d735a624a",
        ),
        token_request: concat!(
            "0002083d6495c72529bbc4f5c0b49e94e4561baec1ca638a93b2940ea9e37b83",
            "8db7b1a91ec1f257d49b45c4f75119c2ab9eb5578541ad2b9bac1bd627abc709",
            "097f503f83d98fed6dbeb615c3be9bf09cbf8ea25ea8026c1b8ba1c704ff516e",
            "d87c3d7d85342fd00111d8a80492d4b8fdbb092a282f74f13901e5edc1b3b02c",
            "fe24c950affe6130fbb57c1482d674db3c6944812ba081c2235a16d01eeec093",
            "2a8619d85732fc3e36179f0b50377bf9cb7a50ce3abeb3f31ed5f0f3deec7aae",
            "7290f5397cec61318357d652b029a0fda0f100a78e36c4ef56ba3779963e8745",
            "fdf4e347763c63d825836878e249833a0f4bd315392cc06ccca2c955e921efbc",
            "4f941d",
        ),
        token_response: concat!(
            "8db727000018a98a2fe9fda8bbde5b8e9cedc31efbcaed6950eb1e0f8d9af9db",
            "632def52f74f07cdab304bbde40519080dd0388fb2b8900528b4791d2bca40aa",
            "2c2a6d1b92f010c1849bfb781cc813cc204855dd05e8a2dd31ea5220981b8ab6",
            "b008e153083dc8f594206440d66286fea9c21b56807be8655506ab7818bb9c8c",
            "69489dda56fe6390a5397268c8b5711f9d2df6f2584740cccf0345fd67f93f34",
            "5426f33c078a0aceb90845df9eef74f6248d06c36d19e191da325b721ddc12ea",
            "78ed37b0c3b6170590536e3aee7eb0efc7d11a2c9d072a394f12ffa67ecf316c",
            "49efd8f31723b11fe46740636bd89ad4f7ef96bc38b2cb4916d9dc04ba1b2fc6",
        ),
        token: concat!(
            "0002a1aa8b371c37c9a8ddbd7342ab4f9dd5227d5b1600dca6517b60f63143cd",
            "43a3bb8a8cf1c59e7a251358ed76fe0ccff61044bc79dd261f16020324d22f2d",
            "434cca572f8982a9ca248a3056186322d93ca147266121ddeb5632c07f1f71cd",
            "27082899f4bc385b4147a650a3e7efc7d23a743cb944bb53e2ed8b88ee03a9c0",
            "b1cf1f73fd7f15c1bd1f850a5a96a34d4ee9f295543f30ac920825e9a0ce26e9",
            "24f2c145583019dd14408c565b660e8b702fbea559908b1a8c8f9d21ef22f7cc",
            "6a4641c57c146e6c5497d2890ca230a6749f5f83a8fdd79eba0722f10dff9e81",
            "a2fb2d05fa4d989acc2e93f595ae69c98c3daa3b169efcdd6e59596b2f049f16",
            "ba49528761f661032da65a3ee0fe8a22409766e90daf8c60323c16522818c492",
            "73c795f26bbab306dc63cfc16fe1702af2464028cf819cc647d6f9b8a8f54d7d",
            "6585a268fdb8c75f76618c64aba266836a3b2db7cdd739815a021d7ff2b36ef9",
            "1f23",
        ),
    },
];
