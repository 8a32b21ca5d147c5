//! AMD SEV-SNP attestation reports, verified through VCEK → ASK → ARK (the `sev` crate).
//!
//! The ARK and ASK are AMD's, pinned from the `sev` crate for each product (Milan, Genoa,
//! Turin); only the VCEK comes with the evidence, and it must chain to them. A guest whose
//! policy allows debugging is refused: its host can read the guest's memory.

use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{AttestError, Claims, Platform, SnpFailure, SnpTcb, TcbStatus};

/// Verifies an SNP report signed by the VCEK in `vcek_der`.
pub fn verify_snp(report: &[u8], vcek_der: &[u8]) -> Result<Claims, AttestError> {
    let fail = |kind, detail: String| AttestError::Snp { kind, detail };
    let report = AttestationReport::from_bytes(report)
        .map_err(|e| fail(SnpFailure::Malformed, format!("report: {e}")))?;
    let vcek = Certificate::from_der(vcek_der)
        .map_err(|e| fail(SnpFailure::Malformed, format!("VCEK certificate: {e}")))?;
    let roots = [
        ("Milan", builtin::milan::ark(), builtin::milan::ask()),
        ("Genoa", builtin::genoa::ark(), builtin::genoa::ask()),
        ("Turin", builtin::turin::ark(), builtin::turin::ask()),
    ];
    let mut chained = None;
    for (product, ark, ask) in roots {
        let (Ok(ark), Ok(ask)) = (ark, ask) else {
            continue;
        };
        let chain = Chain {
            ca: ca::Chain { ark, ask },
            vek: vcek.clone(),
        };
        if chain.verify().is_err() {
            continue;
        }
        chained = Some(product);
        if (&chain, &report).verify().is_ok() {
            refuse_debug(&report)?;
            let t = &report.reported_tcb;
            return Ok(Claims {
                platform: Platform::SevSnp,
                measurement: report.measurement.to_vec(),
                report_data: report.report_data,
                tcb_status: TcbStatus::Unrated,
                advisories: Vec::new(),
                snp_tcb: Some(SnpTcb {
                    bootloader: t.bootloader,
                    tee: t.tee,
                    snp: t.snp,
                    microcode: t.microcode,
                }),
            });
        }
    }
    Err(match chained {
        Some(product) => fail(
            SnpFailure::Signature,
            format!("the {product} VCEK does not sign this report"),
        ),
        None => fail(
            SnpFailure::Certificate,
            "no Milan, Genoa or Turin ARK/ASK pair issued this VCEK".into(),
        ),
    })
}

/// A guest that may be debugged has no confidentiality: its host can read its memory.
fn refuse_debug(report: &AttestationReport) -> Result<(), AttestError> {
    if report.policy.debug_allowed() {
        return Err(AttestError::Snp {
            kind: SnpFailure::DebugAllowed,
            detail: "the guest policy has DEBUG_ALLOWED (bit 19) set".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_debuggable_guest_is_refused() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/sev-snp/report_milan.hex"
        );
        let hex = std::fs::read_to_string(path).unwrap();
        let bytes: Vec<u8> = (0..hex.trim().len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let mut report = AttestationReport::from_bytes(&bytes).unwrap();
        assert!(refuse_debug(&report).is_ok());
        report.policy.set_debug_allowed(true);
        assert!(matches!(
            refuse_debug(&report),
            Err(AttestError::Snp {
                kind: SnpFailure::DebugAllowed,
                ..
            })
        ));
    }
}
