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
    /// A quote of a kind this verifier does not know.
    #[error("unsupported quote: {0}")]
    Unsupported(&'static str),
}
