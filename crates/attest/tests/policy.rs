//! Sim evidence, the key binding and the policy, including the real SGX and TDX claims.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::{
    binding, verify, verify_dcap, Approved, AttestError, Evidence, Platform, Policy, PolicyError,
    SimVendor,
};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vectors")
            .join(name),
    )
    .unwrap()
}
const JUNE_2025: u64 = 1_750_809_600;

const RELAY: [u8; 32] = [1; 32];
const CLIENT: [u8; 32] = [2; 32];
const NONCE: [u8; 32] = [3; 32];
const IMAGE: [u8; 32] = [0xaa; 32];

fn vendor(seed: u8) -> SimVendor {
    SimVendor::new(SigningKey::from_bytes(&[seed; 32]))
}

fn sim_policy() -> Policy {
    Policy {
        approved: vec![Approved {
            platform: Platform::Sim,
            measurement: IMAGE.to_vec(),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_snp_tcb: None,
        }],
        accept_out_of_date: false,
    }
}

fn sim_evidence(
    v: &SimVendor,
    measurement: [u8; 32],
    relay: [u8; 32],
    client: [u8; 32],
    nonce: [u8; 32],
) -> Evidence {
    Evidence {
        platform: Platform::Sim,
        quote: v.report(&measurement, &binding(&relay, &client, &nonce)),
        collateral: None,
    }
}

#[test]
fn genuine_sim_evidence_passes() {
    let v = vendor(9);
    let claims = verify(
        &sim_evidence(&v, IMAGE, RELAY, CLIENT, NONCE),
        0,
        &[v.verifying_key()],
    )
    .unwrap();
    sim_policy()
        .check(&claims, &binding(&RELAY, &CLIENT, &NONCE))
        .unwrap();
}

#[test]
fn each_sim_fault_is_rejected_with_its_own_error() {
    let v = vendor(9);
    let trusted = [v.verifying_key()];
    let expected = binding(&RELAY, &CLIENT, &NONCE);
    let check = |e: Evidence| -> Result<(), String> {
        let claims = verify(&e, 0, &trusted).map_err(|e| format!("verify: {e}"))?;
        sim_policy()
            .check(&claims, &expected)
            .map_err(|e| format!("policy: {e}"))
    };
    let wrong_image = check(sim_evidence(&v, [0xbb; 32], RELAY, CLIENT, NONCE)).unwrap_err();
    assert!(
        wrong_image.contains("not an approved image"),
        "{wrong_image}"
    );
    for (relay, client, nonce) in [
        ([7; 32], CLIENT, NONCE),
        (RELAY, [7; 32], NONCE),
        (RELAY, CLIENT, [7; 32]),
    ] {
        let err = check(sim_evidence(&v, IMAGE, relay, client, nonce)).unwrap_err();
        assert!(err.contains("not bound"), "{err}");
    }
    let other = vendor(10);
    let e = sim_evidence(&other, IMAGE, RELAY, CLIENT, NONCE);
    assert!(matches!(
        verify(&e, 0, &trusted),
        Err(AttestError::SimBadSignature)
    ));
    assert!(matches!(
        verify(&e, 0, &[]),
        Err(AttestError::SimNotTrusted)
    ));
    let mut flipped = sim_evidence(&v, IMAGE, RELAY, CLIENT, NONCE);
    flipped.quote[20] ^= 1;
    assert!(matches!(
        verify(&flipped, 0, &trusted),
        Err(AttestError::SimBadSignature)
    ));
    flipped.quote.truncate(50);
    assert!(matches!(
        verify(&flipped, 0, &trusted),
        Err(AttestError::SimMalformed { .. })
    ));
}

#[test]
fn sgx_sample_passes_only_when_its_advisories_are_accepted() {
    let claims = verify_dcap(
        &vector("dcap/sgx_quote"),
        &vector("dcap/sgx_quote_collateral.json"),
        JUNE_2025,
    )
    .unwrap();
    let policy = |advisories: &[&str]| Policy {
        approved: vec![Approved {
            platform: Platform::Sgx,
            measurement: claims.measurement.clone(),
            accepted_advisories: advisories.iter().map(|a| a.to_string()).collect(),
            accept_out_of_date: false,
            min_snp_tcb: None,
        }],
        accept_out_of_date: false,
    };
    policy(&["INTEL-SA-00289", "INTEL-SA-00615"])
        .check(&claims, &claims.report_data)
        .unwrap();
    let err = policy(&["INTEL-SA-00289"])
        .check(&claims, &claims.report_data)
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Advisories { missing } if missing == &["INTEL-SA-00615".to_string()]),
        "{err}"
    );
    assert!(matches!(
        policy(&[]).check(&claims, &claims.report_data),
        Err(PolicyError::Advisories { .. })
    ));
    // Approved for SGX, but another measurement: refused.
    let mut other = policy(&["INTEL-SA-00289", "INTEL-SA-00615"]);
    other.approved[0].measurement = vec![0; 32];
    assert!(matches!(
        other.check(&claims, &claims.report_data),
        Err(PolicyError::NotApproved { .. })
    ));
}

#[test]
fn tdx_sample_passes_an_up_to_date_policy() {
    let e = Evidence {
        platform: Platform::Tdx,
        quote: vector("dcap/tdx_quote"),
        collateral: Some(vector("dcap/tdx_quote_collateral.json")),
    };
    let claims = verify(&e, JUNE_2025, &[]).unwrap();
    let policy = Policy {
        approved: vec![Approved {
            platform: Platform::Tdx,
            measurement: claims.measurement.clone(),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_snp_tcb: None,
        }],
        accept_out_of_date: false,
    };
    policy.check(&claims, &claims.report_data).unwrap();
    // Announced as SGX, the TDX quote is refused.
    let lying = Evidence {
        platform: Platform::Sgx,
        ..e
    };
    assert!(matches!(
        verify(&lying, JUNE_2025, &[]),
        Err(AttestError::Unsupported(_))
    ));
}

proptest! {
    #[test]
    fn arbitrary_evidence_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000), platform in 0u8..4, col in proptest::collection::vec(any::<u8>(), 0..200)) {
        let platform = [Platform::Sgx, Platform::Tdx, Platform::Sim, Platform::SevSnp][platform as usize];
        let e = Evidence { platform, quote: bytes, collateral: Some(col) };
        let _ = verify(&e, JUNE_2025, &[vendor(9).verifying_key()]);
    }

    #[test]
    fn mutated_real_quotes_never_panic(at in 0usize..4600, byte: u8) {
        let mut q = vector("dcap/sgx_quote");
        let at = at % q.len();
        q[at] = byte;
        let _ = verify_dcap(&q, &vector("dcap/sgx_quote_collateral.json"), JUNE_2025);
    }
}

#[test]
fn out_of_date_passes_only_when_the_image_or_the_user_accepts_it() {
    let claims = attest::Claims {
        platform: Platform::Sim,
        measurement: IMAGE.to_vec(),
        report_data: binding(&RELAY, &CLIENT, &NONCE),
        tcb_status: attest::TcbStatus::OutOfDate,
        advisories: vec!["INTEL-SA-00837".into()],
        snp_tcb: None,
    };
    let expected = binding(&RELAY, &CLIENT, &NONCE);
    let mut policy = sim_policy();
    assert!(matches!(
        policy.check(&claims, &expected),
        Err(PolicyError::TcbStatus(s)) if s == "OutOfDate"
    ));
    policy.approved[0].accept_out_of_date = true;
    policy.check(&claims, &expected).unwrap();
    let mut policy = sim_policy();
    policy.accept_out_of_date = true;
    policy.check(&claims, &expected).unwrap();
    // Accepting out-of-date never accepts a revoked platform.
    let revoked = attest::Claims {
        tcb_status: attest::TcbStatus::Revoked,
        ..claims
    };
    assert!(policy.check(&revoked, &expected).is_err());
}
