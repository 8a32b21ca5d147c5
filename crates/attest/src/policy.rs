//! Which verified claims a client accepts (the directory's approved images and TCB rules).

use crate::{Claims, Platform, PolicyError, SnpTcb, TcbStatus};

/// One approved image measurement on one platform, with the Intel advisories accepted for
/// it (a platform needing hardening against only those still passes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The TEE.
    pub platform: Platform,
    /// The measurement (MRENCLAVE, MRTD, or the sim measurement).
    pub measurement: Vec<u8>,
    /// Advisory IDs (e.g. "INTEL-SA-00615") accepted for this measurement.
    pub accepted_advisories: Vec<String>,
    /// Accept this image on `OutOfDate` platforms (the directory's choice; clients warn).
    pub accept_out_of_date: bool,
    /// SEV-SNP: the lowest firmware versions accepted for this image (none: any version
    /// that AMD's VCEK vouches for).
    pub min_snp_tcb: Option<SnpTcb>,
}

/// A client's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Approved images.
    pub approved: Vec<Approved>,
    /// Accept `OutOfDate` platforms for every image (the user's override; off by default,
    /// clients warn when it is on).
    pub accept_out_of_date: bool,
}

impl Policy {
    /// Checks claims against the policy and the expected report data (the binding).
    pub fn check(
        &self,
        claims: &Claims,
        expected_report_data: &[u8; 64],
    ) -> Result<(), PolicyError> {
        let approved = self
            .approved
            .iter()
            .find(|a| a.platform == claims.platform && a.measurement == claims.measurement)
            .ok_or_else(|| PolicyError::NotApproved {
                platform: claims.platform,
                measurement: hex(&claims.measurement),
            })?;
        match &claims.tcb_status {
            TcbStatus::UpToDate => {}
            // SEV-SNP carries versions, not a status: the image's floor decides.
            TcbStatus::Unrated if claims.platform == Platform::SevSnp => {
                if let Some(floor) = &approved.min_snp_tcb {
                    let reported = claims.snp_tcb.unwrap_or_default();
                    if !reported.meets(floor) {
                        return Err(PolicyError::SnpTcbBelowMinimum {
                            reported,
                            minimum: *floor,
                        });
                    }
                }
            }
            TcbStatus::OutOfDate | TcbStatus::OutOfDateConfigurationNeeded
                if self.accept_out_of_date || approved.accept_out_of_date => {}
            TcbStatus::SwHardeningNeeded | TcbStatus::ConfigurationAndSwHardeningNeeded => {
                let missing: Vec<String> = claims
                    .advisories
                    .iter()
                    .filter(|a| !approved.accepted_advisories.contains(a))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    return Err(PolicyError::Advisories { missing });
                }
            }
            other => return Err(PolicyError::TcbStatus(format!("{other:?}"))),
        }
        if &claims.report_data != expected_report_data {
            return Err(PolicyError::Binding);
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
