/// Why evidence was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The collateral is not the JSON Intel's PCCS serves.
    #[error("the collateral is not valid DCAP collateral JSON: {0}")]
    Collateral(String),
    /// The quote, its signatures, certificate chain, CRLs or collateral do not verify, or
    /// the collateral is not valid at the time of verification.
    #[error("the DCAP quote does not verify: {0}")]
    Quote(String),
    /// An SEV-SNP report that does not verify.
    #[error("the SEV-SNP report does not verify: {0}")]
    Snp(String),
    /// Sim evidence of the wrong size or format.
    #[error("sim evidence is malformed ({len} bytes, expected {expected})")]
    SimMalformed {
        /// Its length.
        len: usize,
        /// The expected length.
        expected: usize,
    },
    /// No sim vendor is trusted: sim evidence proves nothing about hardware.
    #[error("sim evidence is accepted only when its vendor key is explicitly trusted (development and tests)")]
    SimNotTrusted,
    /// The sim report is not signed by a trusted vendor.
    #[error("the sim report is not signed by a trusted sim vendor key")]
    SimBadSignature,
    /// An evidence blob that does not decode.
    #[error("malformed evidence: {0}")]
    Encoding(&'static str),
    /// A quote of a kind this verifier does not know.
    #[error("unsupported quote: {0}")]
    Unsupported(&'static str),
}

/// Why verified claims are not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The measurement is not an approved image for that platform.
    #[error("measurement {measurement} on {platform:?} is not an approved image; the relay runs unapproved code")]
    NotApproved {
        /// The TEE.
        platform: crate::Platform,
        /// The measurement, hex.
        measurement: String,
    },
    /// The TCB status is not accepted.
    #[error("the platform's TCB status {0} is not accepted")]
    TcbStatus(String),
    /// The platform needs hardening against advisories the policy does not accept.
    #[error("the platform is exposed to advisories that are not accepted: {missing:?}")]
    Advisories {
        /// The advisories not accepted.
        missing: Vec<String>,
    },
    /// The report data is not the binding of this relay key, session key and nonce.
    #[error("the evidence is not bound to this relay's key, this session's key and this nonce (replayed or relayed evidence)")]
    Binding,
}
