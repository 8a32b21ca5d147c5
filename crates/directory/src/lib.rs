//! The signed relay directory, read through one interface, and relay selection.
//!
//! - [`Directory`] and [`Relay`]: what the directory says, and the rules it must follow.
//! - [`sign`] and [`verify`]: the signed TOML file; the signature covers the exact body
//!   text, so no canonical form is needed.
//! - [`DirectorySource`]: where a directory comes from ([`FileSource`], [`StaticSource`],
//!   later an on-chain registry).
//! - [`pick_route`]: an ingress and an egress of different operators.

mod directory;
mod error;
mod file;
mod issuer;
mod keys;
mod relay;
mod select;
mod source;

pub use directory::{Directory, Image, SnpMinTcb, FORMAT_VERSION, MAX_BANDWIDTH_MBPS};
pub use error::{Error, KeyError, SelectError, ValidationError};
pub use file::{sign, verify};
pub use issuer::{Issuer, IssuerKey};
pub use keys::{
    decode_signing_key, decode_verifying_key, encode_signing_key, encode_verifying_key,
    generate_signing_key,
};
pub use relay::{PublicKey32, Relay, Role};
pub use select::{egress_endpoints, pick_egress, pick_route, Route};
pub use source::{DirectorySource, FileSource, StaticSource};

pub use ed25519_dalek::{SigningKey, VerifyingKey};
