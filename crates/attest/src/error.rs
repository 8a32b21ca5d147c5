/// Why evidence was rejected.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The collateral is not the JSON Intel's PCCS serves.
    #[error("the collateral is not valid DCAP collateral JSON: {0}")]
    Collateral(String),
    /// The DCAP quote, its signatures, certificate chain, CRLs or collateral do not verify,
    /// or the collateral is not valid at the time of verification.
    #[error("the DCAP quote does not verify: {kind}: {detail}")]
    Dcap {
        /// Which part failed.
        kind: DcapFailure,
        /// dcap-qvl's account of it.
        detail: String,
    },
    /// An SEV-SNP report that does not verify.
    #[error("the SEV-SNP report does not verify: {kind}: {detail}")]
    Snp {
        /// Which part failed.
        kind: SnpFailure,
        /// The details.
        detail: String,
    },
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
    /// The SEV-SNP platform's firmware is older than the image's floor.
    #[error("the SEV-SNP firmware ({reported}) is below the minimum this image requires ({minimum}); the operator must update the platform's firmware")]
    SnpTcbBelowMinimum {
        /// What the report says.
        reported: crate::SnpTcb,
        /// The directory's floor.
        minimum: crate::SnpTcb,
    },
    /// The report data is not the binding of this relay key, session key and nonce.
    #[error("the evidence is not bound to this relay's key, this session's key and this nonce (replayed or relayed evidence)")]
    Binding,
}

/// Which part of a DCAP quote's verification failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcapFailure {
    /// The quote's bytes do not parse, or it is of a version or kind not supported.
    Malformed,
    /// The quote body or the QE report is not signed by the key the PCK certificate
    /// vouches for: altered or forged evidence.
    Signature,
    /// The PCK certificate chain does not lead to Intel's root, or a certificate in it is
    /// revoked or malformed.
    Certificate,
    /// The collateral (TCB info, QE identity, CRLs) is altered, unsigned or for another
    /// platform: the relay must bundle Intel's collateral for its platform.
    Collateral,
    /// The collateral or a certificate is not valid at the time of verification: the
    /// relay must bundle fresh collateral (or the clock is wrong).
    Expired,
    /// No TCB level of the collateral matches the platform, or its TCB is revoked.
    Tcb,
    /// The TEE runs with debugging or other attributes that void its confidentiality.
    Attributes,
    /// Anything dcap-qvl reports that fits none of the above.
    Other,
}

impl DcapFailure {
    /// Classifies dcap-qvl's error chain (it reports failures as text only).
    #[cfg(feature = "verify")]
    pub(crate) fn classify(chain: &str) -> Self {
        let has = |needles: &[&str]| needles.iter().any(|n| chain.contains(n));
        if has(&[
            "expired",
            "Expired",
            "in the future",
            "NotValidYet",
            "CrlExpired",
        ]) {
            Self::Expired
        } else if has(&[
            "Debug mode",
            "TD attributes",
            "profiling",
            "migration",
            "SEPT_VE",
            "SERVTD",
            "MR service TD",
        ]) {
            Self::Attributes
        } else if has(&[
            "tcb_info",
            "TcbInfo",
            "TCB Info",
            "qe_identity",
            "QeIdentity",
            "QE Identity",
            "Fmspc",
            "CRL",
            "Crl",
            "non-TDX TCB info",
            "non-SGX TCB info",
        ]) {
            Self::Collateral
        } else if has(&[
            "decode quote",
            "quote version",
            "attestation key type",
            "QE vendor",
            "must have version",
            "TEE type",
        ]) {
            Self::Malformed
        } else if has(&[
            "Signature is invalid for qe_report",
            "QE report hash",
            "report signature",
        ]) {
            Self::Signature
        } else if has(&[
            "PCK",
            "certificate",
            "Certificate",
            "UnknownIssuer",
            "BadSignature",
            "CertRevoked",
            "BadDer",
        ]) {
            Self::Certificate
        } else if has(&["TCB level", "Revoked", "TDX module", "ISVSVN", "TCB status"]) {
            Self::Tcb
        } else {
            Self::Other
        }
    }
}

impl std::fmt::Display for DcapFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed quote",
            Self::Signature => "bad quote signature (altered or forged evidence)",
            Self::Certificate => "PCK certificate chain does not verify to Intel's root",
            Self::Collateral => "collateral altered or not for this platform",
            Self::Expired => "collateral or certificate not valid at this time (the relay must bundle fresh collateral)",
            Self::Tcb => "platform TCB not acceptable",
            Self::Attributes => "TEE attributes void confidentiality (debug)",
            Self::Other => "verification failed",
        })
    }
}

/// Which part of an SEV-SNP report's verification failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnpFailure {
    /// The report or the VCEK certificate does not parse.
    Malformed,
    /// The VCEK does not chain to AMD's ASK and ARK.
    Certificate,
    /// The report is not signed by the VCEK: altered or forged.
    Signature,
    /// The guest policy allows debugging, so the host can read the guest's memory.
    DebugAllowed,
}

impl std::fmt::Display for SnpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed report or VCEK",
            Self::Certificate => "VCEK does not chain to AMD's ASK and ARK",
            Self::Signature => "report not signed by the VCEK (altered or forged)",
            Self::DebugAllowed => "guest policy allows debugging (the host can read its memory)",
        })
    }
}
