//! Real evidence from real hardware (../shared/vectors, see its README for provenance).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::{verify_dcap, AttestError, Platform, TcbStatus};

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// 2025-06-25T00:00:00Z: inside the SGX and TDX collateral's window (2025-06-19 → 07-19).
const JUNE_2025: u64 = 1_750_809_600;
/// 2025-08-01T00:00:00Z: after it.
const AUGUST_2025: u64 = 1_754_006_400;
/// 2026-03-01T00:00:00Z: inside the outdated TDX collateral's window (02-18 → 03-20).
const MARCH_2026: u64 = 1_772_323_200;

#[test]
fn sgx_quote_verifies_with_its_advisories() {
    let c = verify_dcap(
        &vector("dcap/sgx_quote"),
        &vector("dcap/sgx_quote_collateral.json"),
        JUNE_2025,
    )
    .unwrap();
    assert_eq!(c.platform, Platform::Sgx);
    assert_eq!(c.tcb_status, TcbStatus::ConfigurationAndSwHardeningNeeded);
    let mut adv = c.advisories.clone();
    adv.sort();
    assert_eq!(adv, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(c.measurement.len(), 32);
    // The measurement and report data are those in the quote's enclave report (offsets
    // 112 and 368 of a v3 quote: header 48 + report body fields).
    let q = vector("dcap/sgx_quote");
    assert_eq!(c.measurement, q[112..144]);
    assert_eq!(c.report_data.as_slice(), &q[368..432]);
}

#[test]
fn tdx_quote_is_up_to_date() {
    let c = verify_dcap(
        &vector("dcap/tdx_quote"),
        &vector("dcap/tdx_quote_collateral.json"),
        JUNE_2025,
    )
    .unwrap();
    assert_eq!(c.platform, Platform::Tdx);
    assert_eq!(c.tcb_status, TcbStatus::UpToDate);
    assert!(c.advisories.is_empty(), "{:?}", c.advisories);
    // MRTD and REPORTDATA of a v4 quote's TD report (header 48; MRTD at 136, REPORTDATA at 520).
    let q = vector("dcap/tdx_quote");
    assert_eq!(c.measurement, q[184..232]);
    assert_eq!(c.report_data.as_slice(), &q[568..632]);
}

#[test]
fn outdated_tdx_quote_is_rejected() {
    // dcap-qvl 0.7.1 finds no TCB level of the collateral that this platform meets (its
    // TDX components are older than every listed level) and rejects the quote outright,
    // which is stricter than reporting OutOfDate: the default policy rejects either way.
    let r = verify_dcap(
        &vector("dcap/tdx_quote_outdated"),
        &vector("dcap/tdx_quote_outdated_collateral.json"),
        MARCH_2026,
    );
    match r {
        Err(AttestError::Quote(msg)) => assert!(msg.contains("TCB level"), "{msg}"),
        Ok(c) => assert_eq!(c.tcb_status, TcbStatus::OutOfDate),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn expired_collateral_is_rejected() {
    let err = verify_dcap(
        &vector("dcap/tdx_quote"),
        &vector("dcap/tdx_quote_collateral.json"),
        AUGUST_2025,
    )
    .unwrap_err();
    assert!(matches!(err, AttestError::Quote(_)), "{err}");
}

#[test]
fn one_flipped_byte_anywhere_is_rejected() {
    for (quote, collateral) in [
        ("dcap/sgx_quote", "dcap/sgx_quote_collateral.json"),
        ("dcap/tdx_quote", "dcap/tdx_quote_collateral.json"),
    ] {
        let q = vector(quote);
        let col = vector(collateral);
        // Header, report body, signature area, and the PCK leaf certificate of the chain
        // (the root at the end of the chain is not trusted from the quote: Intel's root is
        // pinned, so a changed copy of it does not matter).
        let leaf = q
            .windows(27)
            .position(|w| w == b"-----BEGIN CERTIFICATE-----")
            .unwrap();
        for at in [10, 60, 200, 400, q.len() / 2, leaf + 100, leaf + 500] {
            let mut bad = q.clone();
            bad[at] ^= 0x01;
            assert!(
                verify_dcap(&bad, &col, JUNE_2025).is_err(),
                "{quote}: flipped byte {at} accepted"
            );
        }
        // The collateral's signed TCB info and QE identity: one changed character each.
        for field in ["tcb_info", "qe_identity"] {
            let mut json: serde_json::Value = serde_json::from_slice(&col).unwrap();
            let text = json[field].as_str().unwrap().to_string();
            let tampered = text.replacen("\"version\":", "\"version\": ", 1);
            assert_ne!(tampered, text);
            json[field] = serde_json::Value::String(tampered);
            let bytes = serde_json::to_vec(&json).unwrap();
            assert!(
                verify_dcap(&q, &bytes, JUNE_2025).is_err(),
                "{collateral}: tampered {field} accepted"
            );
        }
        assert!(matches!(
            verify_dcap(&q, b"{}", JUNE_2025),
            Err(AttestError::Collateral(_))
        ));
    }
}
