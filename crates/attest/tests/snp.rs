//! The AMD SEV-SNP report (Milan) from ../shared/vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::{verify, verify_snp, AttestError, Evidence, Platform, TcbStatus};

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
}

#[test]
fn flipped_bytes_in_report_or_vcek_are_rejected() {
    let r = report();
    let vcek = vector("vcek_milan.der");
    for at in [0x50, 0x90, 0x1a0, 0x2a0 + 10] {
        let mut bad = r.clone();
        bad[at] ^= 0x01;
        assert!(
            matches!(verify_snp(&bad, &vcek), Err(AttestError::Snp(_))),
            "report byte {at:#x} accepted"
        );
    }
    let mut bad_cert = vcek.clone();
    bad_cert[40] ^= 0xff;
    assert!(verify_snp(&r, &bad_cert).is_err(), "altered VCEK accepted");
    assert!(verify_snp(&r[..100], &vcek).is_err());
}
