//! The public API end to end: a checked-in signed file, sources, and sign → verify of
//! arbitrary valid directories.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;

use directory::{
    decode_verifying_key, encode_verifying_key, pick_route, sign, verify, Directory,
    DirectorySource, Error, FileSource, PublicKey32, Relay, Role, SigningKey, StaticSource,
    ValidationError,
};
use proptest::prelude::*;

const FIXTURE: &str = include_str!("data/signed-v1.toml");
const FIXTURE_SIGNER: &str = "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=";

fn fixture_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "openrelay-directory-test-{}-{name}.toml",
        std::process::id()
    ))
}

#[test]
fn checked_in_file_still_verifies() {
    let trusted = decode_verifying_key(FIXTURE_SIGNER).unwrap();
    let dir = verify(FIXTURE, &[trusted]).unwrap();
    assert_eq!(dir.serial, 7);
    assert_eq!(dir.relays.len(), 2);
    assert_eq!(dir.relays[0].name, "ingress-1");
    assert_eq!(dir.relays[0].role, Role::Ingress);
    assert_eq!(dir.relays[1].wg_public_key, PublicKey32([2; 32]));
    assert_eq!(
        dir.relays[1].endpoint,
        "127.0.0.1:51002".parse::<SocketAddr>().unwrap()
    );
}

#[test]
fn signing_is_deterministic_and_matches_the_checked_in_file() {
    // Catches any change to the file layout or the body serialization.
    let dir = verify(FIXTURE, &[fixture_key().verifying_key()]).unwrap();
    assert_eq!(
        sign(&dir.to_body_toml().unwrap(), &fixture_key()).unwrap(),
        FIXTURE
    );
    assert_eq!(
        encode_verifying_key(&fixture_key().verifying_key()),
        FIXTURE_SIGNER
    );
}

#[test]
fn file_source_reads_and_verifies_on_every_load() {
    let path = temp_path("source");
    std::fs::write(&path, FIXTURE).unwrap();
    let source = FileSource::new(&path, vec![fixture_key().verifying_key()]);
    assert_eq!(source.load().unwrap().serial, 7);

    std::fs::write(&path, FIXTURE.replace("serial = 7", "serial = 9")).unwrap();
    assert!(matches!(source.load(), Err(Error::BadSignature)));

    std::fs::remove_file(&path).unwrap();
    let err = source.load().unwrap_err();
    assert!(matches!(err, Error::Read { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn file_source_refuses_an_untrusted_signer() {
    let path = temp_path("untrusted");
    std::fs::write(&path, FIXTURE).unwrap();
    let source = FileSource::new(
        &path,
        vec![SigningKey::from_bytes(&[8; 32]).verifying_key()],
    );
    let result = source.load();
    std::fs::remove_file(&path).unwrap();
    assert!(
        matches!(&result, Err(Error::UntrustedSigner { signer }) if signer == FIXTURE_SIGNER),
        "{result:?}"
    );
}

#[test]
fn sources_are_interchangeable() {
    let dir = verify(FIXTURE, &[fixture_key().verifying_key()]).unwrap();
    let sources: Vec<Box<dyn DirectorySource>> = vec![Box::new(StaticSource(dir.clone()))];
    for source in &sources {
        let loaded = source.load().unwrap();
        assert_eq!(loaded, dir);
        let route = pick_route(&loaded, &mut rand::rng(), &[]).unwrap();
        assert_eq!(route.ingress.name, "ingress-1");
        assert_eq!(route.egress.name, "egress-1");
    }
}

#[test]
fn static_source_validates() {
    let mut dir = Directory::new(1);
    dir.version = 0;
    assert!(matches!(
        StaticSource(dir).load(),
        Err(Error::Invalid(ValidationError::UnsupportedVersion {
            got: 0,
            ..
        }))
    ));
}

fn arb_relay(index: usize) -> impl Strategy<Value = Relay> {
    (
        "[a-z][a-z0-9 '\"\\\\-]{0,12}",
        prop_oneof![Just(Role::Ingress), Just(Role::Egress)],
        any::<[u8; 32]>(),
        any::<[u8; 4]>().prop_filter("specified", |a| *a != [0; 4]),
        1u16..,
        "[a-z]{1,6}",
        1u64..=directory::MAX_BANDWIDTH_MBPS,
    )
        .prop_map(
            move |(name, role, key, ip, port, operator, bandwidth_mbps)| {
                let mut key = key;
                key[0] = index as u8; // unique per relay
                Relay {
                    name: format!("{index}-{name}"),
                    role,
                    wg_public_key: PublicKey32(key),
                    endpoint: SocketAddr::from((ip, port)),
                    operator,
                    bandwidth_mbps,
                }
            },
        )
}

fn arb_directory() -> impl Strategy<Value = Directory> {
    (0u64..=i64::MAX as u64, 0usize..6)
        .prop_flat_map(|(serial, n)| {
            let relays: Vec<_> = (0..n).map(arb_relay).collect();
            (Just(serial), relays)
        })
        .prop_map(|(serial, relays)| Directory {
            issuer: None,
            version: 1,
            serial,
            relays,
            images: Vec::new(),
            sim_vendors: Vec::new(),
        })
}

proptest! {
    #[test]
    fn sign_then_verify_is_identity(dir in arb_directory(), seed in any::<[u8; 32]>()) {
        let key = SigningKey::from_bytes(&seed);
        let file = sign(&dir.to_body_toml().unwrap(), &key).unwrap();
        prop_assert_eq!(verify(&file, &[key.verifying_key()]).unwrap(), dir);
    }
}
