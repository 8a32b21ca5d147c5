//! TEE evidence and its verification.
//!
//! A relay proves, with evidence from its TEE, that it runs an approved image. This crate
//! turns evidence into verified [`Claims`] (platform, measurement, report data, TCB status)
//! or a typed error saying what failed. It does no I/O: evidence, collateral and the time
//! of verification come from the caller.

mod dcap;
mod error;

pub use dcap::verify_dcap;
pub use error::AttestError;

/// Which TEE produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Intel SGX enclave (DCAP quote v3).
    Sgx,
    /// Intel TDX trust domain (DCAP quote v4).
    Tdx,
}

/// The TCB status a verifier reports, as Intel names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TcbStatus {
    /// Fully up to date.
    UpToDate,
    /// Up to date, but software hardening (for listed advisories) is needed.
    SwHardeningNeeded,
    /// Up to date, but configuration and software hardening are needed.
    ConfigurationAndSwHardeningNeeded,
    /// Configuration change needed.
    ConfigurationNeeded,
    /// The platform's TCB is out of date.
    OutOfDate,
    /// Out of date, and configuration change needed.
    OutOfDateConfigurationNeeded,
    /// Revoked.
    Revoked,
    /// Any other status string.
    Other(String),
}

impl TcbStatus {
    /// Reads Intel's status string.
    pub fn from_intel(s: &str) -> Self {
        match s {
            "UpToDate" => Self::UpToDate,
            "SWHardeningNeeded" => Self::SwHardeningNeeded,
            "ConfigurationAndSWHardeningNeeded" => Self::ConfigurationAndSwHardeningNeeded,
            "ConfigurationNeeded" => Self::ConfigurationNeeded,
            "OutOfDate" => Self::OutOfDate,
            "OutOfDateConfigurationNeeded" => Self::OutOfDateConfigurationNeeded,
            "Revoked" => Self::Revoked,
            other => Self::Other(other.to_string()),
        }
    }
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The TEE.
    pub platform: Platform,
    /// The measurement of the code: MRENCLAVE (SGX), MRTD (TDX).
    pub measurement: Vec<u8>,
    /// The 64 bytes the TEE bound into the evidence (OpenRelay puts its key binding here).
    pub report_data: [u8; 64],
    /// The TCB status of the platform.
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply to this platform's TCB.
    pub advisories: Vec<String>,
}
