//! The simulated TEE: a "sim vendor" key signs (measurement, report data). It proves
//! nothing about hardware; clients reject it unless told to trust that vendor key.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{AttestError, Claims, Platform, TcbStatus};

/// First bytes of a sim report.
pub const SIM_MAGIC: &[u8; 8] = b"ORSIMv1\0";
const MEASUREMENT: usize = 32;
const REPORT_DATA: usize = 64;
const SIGNED: usize = 8 + MEASUREMENT + REPORT_DATA;
const LEN: usize = SIGNED + 64;

/// A sim vendor: signs reports for relays that run in "sim" mode.
pub struct SimVendor {
    key: SigningKey,
}

impl SimVendor {
    /// A vendor with this signing key.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// The key clients must trust to accept this vendor's reports.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// A report: magic, measurement (SHA-256 of the running executable), report data,
    /// and the vendor's signature over all of it.
    pub fn report(&self, measurement: &[u8; 32], report_data: &[u8; 64]) -> Vec<u8> {
        let mut r = Vec::with_capacity(LEN);
        r.extend_from_slice(SIM_MAGIC);
        r.extend_from_slice(measurement);
        r.extend_from_slice(report_data);
        let sig = self.key.sign(&r);
        r.extend_from_slice(&sig.to_bytes());
        r
    }
}

/// Verifies a sim report signed by one of `trusted` vendors.
pub fn verify_sim(report: &[u8], trusted: &[VerifyingKey]) -> Result<Claims, AttestError> {
    if report.len() != LEN || !report.starts_with(SIM_MAGIC) {
        return Err(AttestError::SimMalformed {
            len: report.len(),
            expected: LEN,
        });
    }
    let (signed, sig) = report.split_at(SIGNED);
    let sig = Signature::from_slice(sig).map_err(|_| AttestError::SimMalformed {
        len: report.len(),
        expected: LEN,
    })?;
    if trusted.is_empty() {
        return Err(AttestError::SimNotTrusted);
    }
    if !trusted
        .iter()
        .any(|k| k.verify_strict(signed, &sig).is_ok())
    {
        return Err(AttestError::SimBadSignature);
    }
    let body = signed.get(8..).unwrap_or_default();
    let (measurement, data) = body.split_at(MEASUREMENT);
    let mut report_data = [0u8; REPORT_DATA];
    report_data.copy_from_slice(data);
    Ok(Claims {
        platform: Platform::Sim,
        measurement: measurement.to_vec(),
        report_data,
        tcb_status: TcbStatus::UpToDate,
        advisories: Vec::new(),
        snp_tcb: None,
    })
}
