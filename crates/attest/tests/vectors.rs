//! Real evidence from real hardware (../shared/vectors, see its README for provenance).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::{verify_dcap, AttestError, DcapFailure, Platform, TcbStatus};

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
        Err(AttestError::Dcap {
            kind: DcapFailure::Tcb,
            detail,
        }) => assert!(detail.contains("TCB level"), "{detail}"),
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
    assert!(
        matches!(
            err,
            AttestError::Dcap {
                kind: DcapFailure::Expired,
                ..
            }
        ),
        "{err}"
    );
}

fn kind(r: Result<attest::Claims, AttestError>) -> DcapFailure {
    match r {
        Err(AttestError::Dcap { kind, .. }) => kind,
        other => panic!("expected a DCAP failure, got {other:?}"),
    }
}

#[test]
fn one_flipped_byte_anywhere_is_rejected_with_the_right_kind() {
    for (quote, collateral) in [
        ("dcap/sgx_quote", "dcap/sgx_quote_collateral.json"),
        ("dcap/tdx_quote", "dcap/tdx_quote_collateral.json"),
    ] {
        let q = vector(quote);
        let col = vector(collateral);
        // The signed part: header (after the fields checked for support), the enclave or
        // TD report, the ECDSA signature over both, and the QE report that certifies the
        // attestation key. Where the signature section starts: header 48 + body (384 for
        // SGX, 584 for a TDX v4 TD report) + its 4-byte length.
        let sig = if quote.contains("sgx") { 436 } else { 636 };
        for at in [10, 60, 200, 400, sig + 10, sig + 100, sig + 200, sig + 300] {
            let mut bad = q.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                kind(verify_dcap(&bad, &col, JUNE_2025)),
                DcapFailure::Signature,
                "{quote}: byte {at}"
            );
        }
        // The PCK certificate chain in the quote (the root at its end is not trusted from
        // the quote: Intel's root is pinned, so a changed copy of it does not matter).
        let leaf = q
            .windows(27)
            .position(|w| w == b"-----BEGIN CERTIFICATE-----")
            .unwrap();
        for at in [leaf + 100, leaf + 500, q.len() / 2] {
            let mut bad = q.clone();
            bad[at] ^= 0x01;
            assert_eq!(
                kind(verify_dcap(&bad, &col, JUNE_2025)),
                DcapFailure::Certificate,
                "{quote}: certificate byte {at}"
            );
        }
        // The header's version: not a quote this verifier supports.
        let mut bad = q.clone();
        bad[0] ^= 0x40;
        assert_eq!(
            kind(verify_dcap(&bad, &col, JUNE_2025)),
            DcapFailure::Malformed
        );
        // The collateral's signed TCB info and QE identity: one changed character each.
        for field in ["tcb_info", "qe_identity"] {
            let mut json: serde_json::Value = serde_json::from_slice(&col).unwrap();
            let text = json[field].as_str().unwrap().to_string();
            let tampered = text.replacen("\"version\":", "\"version\": ", 1);
            assert_ne!(tampered, text);
            json[field] = serde_json::Value::String(tampered);
            let bytes = serde_json::to_vec(&json).unwrap();
            assert_eq!(
                kind(verify_dcap(&q, &bytes, JUNE_2025)),
                DcapFailure::Collateral,
                "{collateral}: tampered {field}"
            );
        }
        // The signatures over TCB info and QE identity, and the CRLs (hex DER): the last
        // hex digit of each changed.
        for field in [
            "tcb_info_signature",
            "qe_identity_signature",
            "pck_crl",
            "root_ca_crl",
        ] {
            let mut json: serde_json::Value = serde_json::from_slice(&col).unwrap();
            let mut text = json[field].as_str().unwrap().to_string();
            let last = text.pop().unwrap();
            text.push(if last == '0' { '1' } else { '0' });
            json[field] = serde_json::Value::String(text);
            let bytes = serde_json::to_vec(&json).unwrap();
            let r = verify_dcap(&q, &bytes, JUNE_2025);
            assert_eq!(
                kind(r),
                DcapFailure::Collateral,
                "{collateral}: tampered {field}"
            );
        }
        assert!(matches!(
            verify_dcap(&q, b"{}", JUNE_2025),
            Err(AttestError::Collateral(_))
        ));
    }
}

#[test]
fn errors_say_what_failed_and_what_to_do() {
    let err = verify_dcap(
        &vector("dcap/tdx_quote"),
        &vector("dcap/tdx_quote_collateral.json"),
        AUGUST_2025,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("fresh collateral"), "{err}");
}
