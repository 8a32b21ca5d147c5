//! AMD SEV-SNP attestation reports, verified through VCEK → ASK → ARK (the `sev` crate).
//!
//! The ARK and ASK are AMD's, pinned from the `sev` crate for each product (Milan, Genoa,
//! Turin); only the VCEK comes with the evidence, and it must chain to them.

use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{AttestError, Claims, Platform, TcbStatus};

/// Verifies an SNP report signed by the VCEK in `vcek_der`.
pub fn verify_snp(report: &[u8], vcek_der: &[u8]) -> Result<Claims, AttestError> {
    let report = AttestationReport::from_bytes(report)
        .map_err(|e| AttestError::Snp(format!("malformed report: {e}")))?;
    let vcek = Certificate::from_der(vcek_der)
        .map_err(|e| AttestError::Snp(format!("malformed VCEK certificate: {e}")))?;
    let roots = [
        ("Milan", builtin::milan::ark(), builtin::milan::ask()),
        ("Genoa", builtin::genoa::ark(), builtin::genoa::ask()),
        ("Turin", builtin::turin::ark(), builtin::turin::ask()),
    ];
    let mut chained = false;
    for (_, ark, ask) in roots {
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
        chained = true;
        if (&chain, &report).verify().is_ok() {
            return Ok(Claims {
                platform: Platform::SevSnp,
                measurement: report.measurement.to_vec(),
                report_data: report.report_data,
                tcb_status: TcbStatus::Unrated,
                advisories: Vec::new(),
            });
        }
    }
    Err(AttestError::Snp(if chained {
        "the VCEK does not sign this report (forged or altered report)".into()
    } else {
        "the VCEK does not chain to AMD's ASK and ARK".into()
    }))
}
