//! TEE evidence and its verification.
//!
//! A relay proves, with evidence from its TEE, that it runs an approved image. This crate
//! turns evidence into verified [`Claims`] (platform, measurement, report data, TCB status)
//! or a typed error saying what failed. It does no I/O: evidence, collateral and the time
//! of verification come from the caller.

mod binding;
#[cfg(feature = "verify")]
mod dcap;
mod encoding;
mod error;
mod policy;
mod sim;
#[cfg(feature = "verify")]
mod snp;

pub use binding::{binding, BINDING_LABEL};
#[cfg(feature = "verify")]
pub use dcap::verify_dcap;
pub use error::{AttestError, DcapFailure, PolicyError, SnpFailure};
pub use policy::{Approved, Policy};
pub use sim::{verify_sim, SimVendor, SIM_MAGIC};
#[cfg(feature = "verify")]
pub use snp::verify_snp;

/// Evidence as a relay sends it: which TEE, the quote or report, and (for DCAP) the
/// collateral the relay bundles so the client can verify offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The TEE.
    pub platform: Platform,
    /// The quote (DCAP) or signed report (sim).
    pub quote: Vec<u8>,
    /// DCAP collateral (JSON), if any.
    pub collateral: Option<Vec<u8>>,
}

/// Size of an SEV-SNP attestation report.
pub const SNP_REPORT_LEN: usize = 0x4a0;

/// Verifies a quote or report whose platform is not announced: sim reports by their
/// magic, SEV-SNP reports by their size (with the VCEK as collateral), anything else as a
/// DCAP quote (which says itself whether it is SGX or TDX).
#[cfg(feature = "verify")]
pub fn verify_detect(
    quote: &[u8],
    collateral: Option<&[u8]>,
    now_secs: u64,
    trusted_sim_vendors: &[ed25519_dalek::VerifyingKey],
) -> Result<Claims, AttestError> {
    if quote.starts_with(SIM_MAGIC) {
        return verify_sim(quote, trusted_sim_vendors);
    }
    let collateral = collateral.ok_or(AttestError::Unsupported(
        "evidence without collateral (DCAP collateral JSON or the SEV-SNP VCEK)",
    ))?;
    if quote.len() == SNP_REPORT_LEN {
        return verify_snp(quote, collateral);
    }
    verify_dcap(quote, collateral, now_secs)
}

/// Verifies evidence of any supported platform at `now_secs`; sim evidence is accepted
/// only from `trusted_sim_vendors`.
#[cfg(feature = "verify")]
pub fn verify(
    evidence: &Evidence,
    now_secs: u64,
    trusted_sim_vendors: &[ed25519_dalek::VerifyingKey],
) -> Result<Claims, AttestError> {
    match evidence.platform {
        Platform::Sgx | Platform::Tdx => {
            let collateral = evidence
                .collateral
                .as_deref()
                .ok_or(AttestError::Unsupported("DCAP evidence without collateral"))?;
            let claims = verify_dcap(&evidence.quote, collateral, now_secs)?;
            if claims.platform != evidence.platform {
                return Err(AttestError::Unsupported(
                    "the quote is of another platform than announced",
                ));
            }
            Ok(claims)
        }
        Platform::SevSnp => {
            let vcek = evidence
                .collateral
                .as_deref()
                .ok_or(AttestError::Unsupported(
                    "SEV-SNP evidence without its VCEK certificate",
                ))?;
            verify_snp(&evidence.quote, vcek)
        }
        Platform::Sim => verify_sim(&evidence.quote, trusted_sim_vendors),
    }
}

/// Which TEE produced the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Intel SGX enclave (DCAP quote v3).
    Sgx,
    /// Intel TDX trust domain (DCAP quote v4).
    Tdx,
    /// AMD SEV-SNP guest (attestation report signed by the chip's VCEK).
    SevSnp,
    /// The software-simulated TEE for development and tests; trusted only when its vendor
    /// key is explicitly trusted.
    Sim,
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
    /// No Intel-style rating: SEV-SNP reports carry TCB versions, not a status.
    Unrated,
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
    /// The measurement of the code: MRENCLAVE (SGX), MRTD (TDX), MEASUREMENT (SEV-SNP).
    pub measurement: Vec<u8>,
    /// The 64 bytes the TEE bound into the evidence (OpenRelay puts its key binding here).
    pub report_data: [u8; 64],
    /// The TCB status of the platform.
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply to this platform's TCB.
    pub advisories: Vec<String>,
    /// SEV-SNP: the TCB versions the report was signed for (the VCEK is derived from them).
    pub snp_tcb: Option<SnpTcb>,
}

/// The security version numbers of an SEV-SNP platform's firmware components, as its
/// report's REPORTED_TCB gives them. A policy sets a floor for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SnpTcb {
    /// The PSP bootloader's SVN.
    pub bootloader: u8,
    /// The PSP operating system's SVN.
    pub tee: u8,
    /// The SNP firmware's SVN.
    pub snp: u8,
    /// The lowest microcode patch level of all cores.
    pub microcode: u8,
}

impl SnpTcb {
    /// Whether every component is at least `floor`'s.
    pub fn meets(&self, floor: &SnpTcb) -> bool {
        self.bootloader >= floor.bootloader
            && self.tee >= floor.tee
            && self.snp >= floor.snp
            && self.microcode >= floor.microcode
    }
}

impl std::fmt::Display for SnpTcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootloader {}, tee {}, snp {}, microcode {}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}
