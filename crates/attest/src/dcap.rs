//! Intel SGX and TDX quotes, verified offline with the collateral the relay bundles (with
//! the `dcap-qvl` crate; nothing here re-implements it).

use dcap_qvl::quote::Report;
use dcap_qvl::QuoteCollateralV3;

use crate::{AttestError, Claims, DcapFailure, Platform, TcbStatus};

/// Verifies a DCAP quote with its collateral (JSON) at `now_secs` (Unix time), against
/// Intel's root CA. The TCB status is reported, not judged: policy decides.
pub fn verify_dcap(
    quote: &[u8],
    collateral_json: &[u8],
    now_secs: u64,
) -> Result<Claims, AttestError> {
    let collateral: QuoteCollateralV3 = serde_json::from_slice(collateral_json)
        .map_err(|e| AttestError::Collateral(e.to_string()))?;
    let verified = dcap_qvl::verify::verify(quote, &collateral, now_secs).map_err(|e| {
        let detail = format!("{e:#}");
        AttestError::Dcap {
            kind: DcapFailure::classify(&detail),
            detail,
        }
    })?;
    let (platform, measurement, report_data) = match &verified.report {
        Report::SgxEnclave(r) => (Platform::Sgx, r.mr_enclave.to_vec(), r.report_data),
        Report::TD10(r) => (Platform::Tdx, r.mr_td.to_vec(), r.report_data),
        Report::TD15(r) => (Platform::Tdx, r.base.mr_td.to_vec(), r.base.report_data),
        Report::TD15Ex(r) => (
            Platform::Tdx,
            r.base.base.mr_td.to_vec(),
            r.base.base.report_data,
        ),
    };
    Ok(Claims {
        platform,
        measurement,
        report_data,
        tcb_status: TcbStatus::from_intel(&verified.status),
        advisories: verified.advisory_ids.clone(),
        snp_tcb: None,
    })
}
