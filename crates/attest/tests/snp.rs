//! The AMD SEV-SNP report (Milan) from ../shared/vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::{verify, verify_snp, AttestError, Evidence, Platform, SnpFailure, SnpTcb, TcbStatus};

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vectors/sev-snp")
            .join(name),
    )
    .unwrap()
}

fn report() -> Vec<u8> {
    hex::decode(
        String::from_utf8(vector("report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap()
}

#[test]
fn milan_report_verifies_through_vcek_ask_ark() {
    let r = report();
    let e = Evidence {
        platform: Platform::SevSnp,
        quote: r.clone(),
        collateral: Some(vector("vcek_milan.der")),
    };
    let c = verify(&e, 0, &[]).unwrap();
    assert_eq!(c.platform, Platform::SevSnp);
    assert_eq!(c.tcb_status, TcbStatus::Unrated);
    // MEASUREMENT is at 0x90 (48 bytes) and REPORT_DATA at 0x50 (64 bytes) of the report.
    assert_eq!(c.measurement, r[0x90..0xc0]);
    assert_eq!(c.report_data.as_slice(), &r[0x50..0x90]);
    // REPORTED_TCB at 0x180: bootloader 3, tee 0, snp 8, microcode 0x73.
    assert_eq!(
        c.snp_tcb,
        Some(SnpTcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 0x73
        })
    );
}

fn snp_kind(r: Result<attest::Claims, AttestError>) -> SnpFailure {
    match r {
        Err(AttestError::Snp { kind, .. }) => kind,
        other => panic!("expected an SEV-SNP failure, got {other:?}"),
    }
}

#[test]
fn flipped_bytes_in_report_or_vcek_are_rejected_with_the_right_kind() {
    let r = report();
    let vcek = vector("vcek_milan.der");
    // Report data, measurement, reported TCB area, and the signature.
    for at in [0x50, 0x90, 0x1a0, 0x2a0 + 10] {
        let mut bad = r.clone();
        bad[at] ^= 0x01;
        assert_eq!(
            snp_kind(verify_snp(&bad, &vcek)),
            SnpFailure::Signature,
            "report byte {at:#x}"
        );
    }
    // A byte of the VCEK's signature (the certificate's last bytes): it no longer chains.
    let mut bad_cert = vcek.clone();
    let n = bad_cert.len();
    bad_cert[n - 10] ^= 0x01;
    assert_eq!(snp_kind(verify_snp(&r, &bad_cert)), SnpFailure::Certificate);
    // Garbage where the certificate's structure is.
    let mut garbled = vcek.clone();
    garbled[1] ^= 0xff;
    assert!(matches!(
        snp_kind(verify_snp(&r, &garbled)),
        SnpFailure::Malformed | SnpFailure::Certificate
    ));
    assert_eq!(
        snp_kind(verify_snp(&r[..100], &vcek)),
        SnpFailure::Malformed
    );
}

#[test]
fn a_minimum_tcb_above_the_reports_is_refused() {
    let r = report();
    let c = verify_snp(&r, &vector("vcek_milan.der")).unwrap();
    let floor = |microcode| attest::Policy {
        approved: vec![attest::Approved {
            platform: Platform::SevSnp,
            measurement: c.measurement.clone(),
            accepted_advisories: vec![],
            accept_out_of_date: false,
            min_snp_tcb: Some(SnpTcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode,
            }),
        }],
        accept_out_of_date: false,
    };
    assert!(floor(0x73).check(&c, &c.report_data).is_ok());
    let err = floor(0x74).check(&c, &c.report_data).unwrap_err();
    assert!(
        matches!(err, attest::PolicyError::SnpTcbBelowMinimum { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("microcode 115"), "{err}");
}
