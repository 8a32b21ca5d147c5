//! Errors of the directory crate, one enum per operation: reading keys, validating a
//! directory, reading or signing a directory file, and choosing relays.

use std::path::PathBuf;

use thiserror::Error;

/// Why a base64 key or signature string does not decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not standard base64 (as `wg genkey` prints).
    #[error("the {what} is not valid base64 ({source}); copy it again without changes")]
    NotBase64 {
        /// Which kind of key or signature was expected.
        what: &'static str,
        /// What the base64 decoder found.
        source: base64::DecodeError,
    },

    /// The text decodes to the wrong number of bytes.
    #[error(
        "the {what} decodes to {got} bytes, expected {expected}; is it a different kind of key?"
    )]
    WrongLength {
        /// Which kind of key or signature was expected.
        what: &'static str,
        /// Bytes decoded.
        got: usize,
        /// Bytes required.
        expected: usize,
    },

    /// 32 bytes that are not an ed25519 public key (not a curve point).
    #[error(
        "the ed25519 public key is not a valid curve point; it is corrupt or not an ed25519 key"
    )]
    NotACurvePoint,
}

/// Why a directory's content is not acceptable, whoever signed it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// An image entry with an unknown platform or a measurement of the wrong form.
    #[error("image on {platform:?} has an unusable measurement {measurement:?}: platform must be sgx, tdx, sev-snp or sim, the measurement hex of 32 (sgx, sim) or 48 (tdx, sev-snp) bytes")]
    BadImage {
        /// The platform given.
        platform: String,
        /// The measurement given.
        measurement: String,
    },
    /// `min_tcb` on an image of a platform that has no such versions.
    #[error("image on {platform:?} sets min_tcb, which only sev-snp images take (Intel platforms are judged by their TCB status and accepted_advisories)")]
    MinTcbNotSnp {
        /// The platform given.
        platform: String,
    },
    /// The issuer entry is unusable.
    #[error("the [issuer] entry is unusable: {problem}")]
    BadIssuer {
        /// What is wrong.
        problem: String,
    },
    /// A sim vendor key that is not an ed25519 public key.
    #[error("sim vendor key {key:?} is not a base64 ed25519 public key")]
    BadSimVendor {
        /// The key given.
        key: String,
    },
    /// The format version is not one this build reads.
    #[error("directory format version {got} is not supported (this build reads version {supported}); update openrelay")]
    UnsupportedVersion {
        /// Version in the directory.
        got: u32,
        /// The only version this build reads.
        supported: u32,
    },

    /// A relay has an empty name.
    #[error("relay number {index} (counting from 1) has an empty name; give every relay a name")]
    EmptyName {
        /// Position of the relay in the list, from 1.
        index: usize,
    },

    /// Two relays share a name.
    #[error("relay name {name:?} appears more than once; names must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },

    /// Two relays share a WireGuard key, so a client could not tell them apart.
    #[error("relays {first:?} and {second:?} have the same WireGuard public key {key}; every relay needs its own key")]
    DuplicateKey {
        /// The shared key, base64.
        key: String,
        /// The relay listed first.
        first: String,
        /// The relay listed second.
        second: String,
    },

    /// A relay names no operator, which route selection needs to keep hops apart.
    #[error("relay {name:?} has an empty operator; name who runs it")]
    EmptyOperator {
        /// The relay.
        name: String,
    },

    /// An egress advertises no bandwidth, so it could never be chosen.
    #[error(
        "egress relay {name:?} advertises 0 Mbit/s; advertise its real bandwidth or remove it"
    )]
    ZeroBandwidth {
        /// The relay.
        name: String,
    },

    /// A relay advertises more bandwidth than any relay has, which would skew selection.
    #[error("relay {name:?} advertises {got} Mbit/s, more than the {max} Mbit/s limit")]
    BandwidthTooHigh {
        /// The relay.
        name: String,
        /// Bandwidth advertised.
        got: u64,
        /// Largest bandwidth accepted.
        max: u64,
    },

    /// A relay's endpoint has port 0, which no one can send to.
    #[error("relay {name:?} has endpoint port 0; give the port it listens on")]
    ZeroPort {
        /// The relay.
        name: String,
    },

    /// A relay's endpoint is the unspecified address, which no one can send to.
    #[error("relay {name:?} has the unspecified endpoint address {addr}; give its public address")]
    UnspecifiedAddress {
        /// The relay.
        name: String,
        /// The address given.
        addr: std::net::IpAddr,
    },
}

/// Why a directory could not be read, verified or signed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The file is not TOML with `signer`, `signature` and `body`.
    #[error("the directory file is not a signed directory (TOML with signer, signature and body): {source}")]
    Malformed {
        /// What the TOML parser found.
        source: toml::de::Error,
    },

    /// The `signer` field is not an ed25519 public key.
    #[error("the directory's signer field is not a usable key: {source}")]
    BadSigner {
        /// Why the key does not decode.
        source: KeyError,
    },

    /// The `signature` field is not an encoded ed25519 signature.
    #[error("the directory's signature field is not a signature: {source}")]
    BadSignatureEncoding {
        /// Why the signature does not decode.
        source: KeyError,
    },

    /// The file is signed by a key the caller does not trust.
    #[error("the directory is signed by {signer}, which is not a trusted key; if you trust this signer, pass --trust {signer}")]
    UntrustedSigner {
        /// The signer's public key, base64.
        signer: String,
    },

    /// The signature does not match the body.
    #[error("the directory signature does not match: the directory was modified after signing or signed by another key; fetch it again")]
    BadSignature,

    /// The signed body is not a directory in TOML.
    #[error("the directory body is not a valid directory: {source}")]
    BadBody {
        /// What the TOML parser found.
        source: toml::de::Error,
    },

    /// The body parses but breaks a rule.
    #[error("the directory is invalid: {0}")]
    Invalid(#[from] ValidationError),

    /// The directory cannot be written as TOML.
    #[error("the directory cannot be written as TOML: {source}")]
    Encode {
        /// What the TOML serializer found.
        source: toml::ser::Error,
    },

    /// The file could not be read.
    #[error("cannot read the directory file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why no route could be chosen from a directory.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SelectError {
    /// No usable ingress relay.
    #[error("the directory lists no usable ingress relay ({excluded} excluded); fetch a newer directory")]
    NoIngress {
        /// How many ingress relays were excluded by the caller.
        excluded: usize,
    },

    /// No usable egress relay at all.
    #[error(
        "the directory lists no usable egress relay ({excluded} excluded); fetch a newer directory"
    )]
    NoEgress {
        /// How many egress relays were excluded by the caller.
        excluded: usize,
    },

    /// Every usable egress is run by the ingress's operator, who would then see both hops.
    #[error("no egress of an operator other than {operator:?}; a route needs two operators, fetch a newer directory or wait for more relays")]
    NoEgressOfOtherOperator {
        /// The operator every candidate egress shares with the ingress.
        operator: String,
    },
}
