//! Directory signing keys as base64 text, the form they take in files and on command lines.
//!
//! The encoding is standard base64 with padding, as `wg genkey` prints WireGuard keys, so
//! operators handle both kinds of key the same way.

#![deny(clippy::unwrap_used)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use rand::{RngCore as _, TryRngCore as _};

use crate::error::KeyError;

/// A new directory signing key from the operating system's randomness.
///
/// # Panics
///
/// If the operating system cannot provide randomness; no key can be made safely then.
pub fn generate_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.unwrap_err().fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

/// The signing key (its 32-byte seed) as base64, for storing it in a private file.
pub fn encode_signing_key(key: &SigningKey) -> String {
    STANDARD.encode(key.to_bytes())
}

/// Reads a signing key written by [`encode_signing_key`]; surrounding whitespace is
/// ignored, so a key file may end with a newline.
pub fn decode_signing_key(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&decode_array(
        "ed25519 signing key",
        text,
    )?))
}

/// The public half as base64, the form given to `--trust` and written as `signer`.
pub fn encode_verifying_key(key: &VerifyingKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Reads a public key written by [`encode_verifying_key`]; surrounding whitespace is
/// ignored.
pub fn decode_verifying_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_array("ed25519 public key", text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotACurvePoint)
}

/// A signature as base64.
pub(crate) fn encode_signature(signature: &Signature) -> String {
    STANDARD.encode(signature.to_bytes())
}

/// Reads a signature written by [`encode_signature`].
pub(crate) fn decode_signature(text: &str) -> Result<Signature, KeyError> {
    Ok(Signature::from_bytes(&decode_array(
        "ed25519 signature",
        text,
    )?))
}

/// Decodes base64 `text` into exactly `N` bytes; `what` names the expected thing in errors.
pub(crate) fn decode_array<const N: usize>(
    what: &'static str,
    text: &str,
) -> Result<[u8; N], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|source| KeyError::NotBase64 { what, source })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyError::WrongLength {
        what,
        got: bytes.len(),
        expected: N,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keys_round_trip_through_text() {
        let key = generate_signing_key();
        let text = encode_signing_key(&key);
        assert_eq!(text.len(), 44);
        assert_eq!(
            decode_signing_key(&format!("{text}\n")).unwrap().to_bytes(),
            key.to_bytes()
        );
        let public = key.verifying_key();
        assert_eq!(
            decode_verifying_key(&encode_verifying_key(&public)).unwrap(),
            public
        );
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            generate_signing_key().to_bytes(),
            generate_signing_key().to_bytes()
        );
    }

    #[test]
    fn not_base64() {
        assert!(matches!(
            decode_verifying_key("not base64!"),
            Err(KeyError::NotBase64 {
                what: "ed25519 public key",
                ..
            })
        ));
    }

    #[test]
    fn wrong_length() {
        assert_eq!(
            decode_signing_key(&STANDARD.encode([0u8; 31])).unwrap_err(),
            KeyError::WrongLength {
                what: "ed25519 signing key",
                got: 31,
                expected: 32
            }
        );
    }

    #[test]
    fn not_a_curve_point() {
        // y = 2 has no matching x on the curve.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert_eq!(
            decode_verifying_key(&STANDARD.encode(bytes)),
            Err(KeyError::NotACurvePoint)
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_text_never_panics(text in ".*") {
            let _ = decode_verifying_key(&text);
            let _ = decode_signing_key(&text);
            let _ = decode_signature(&text);
        }

        #[test]
        fn decoding_arbitrary_32_bytes_never_panics(bytes in any::<[u8; 32]>()) {
            let _ = decode_verifying_key(&STANDARD.encode(bytes));
        }
    }
}
