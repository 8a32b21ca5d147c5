//! The signed directory file: a TOML document whose `body` is directory TOML and whose
//! `signature` is an ed25519 signature over the exact bytes of that body.
//!
//! ```toml
//! # OpenRelay relay directory. Verify with: openrelay directory show --trust <signer key>
//! signer = "<base64 ed25519 public key>"
//! signature = "<base64 ed25519 signature over the exact bytes of body>"
//! body = '''
//! version = 1
//! serial = 7
//! [[relay]]
//! ...
//! '''
//! ```
//!
//! Signing the body text itself means no canonical form is needed: the verifier checks the
//! bytes it will parse.

#![deny(clippy::unwrap_used)]

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::Deserialize;

use crate::directory::Directory;
use crate::error::Error;
use crate::keys::{decode_signature, decode_verifying_key, encode_signature, encode_verifying_key};

/// The outer document, before anything in it is trusted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFile {
    signer: String,
    signature: String,
    body: String,
}

/// Validates `body_toml` and returns the signed file text, so that nothing invalid is ever
/// signed.
pub fn sign(body_toml: &str, key: &SigningKey) -> Result<String, Error> {
    Directory::from_body_toml(body_toml)?;
    let signer = encode_verifying_key(&key.verifying_key());
    let signature = encode_signature(&key.sign(body_toml.as_bytes()));
    let head = format!(
        "# OpenRelay relay directory. Verify with: openrelay directory show --trust {signer}\n\
         signer = \"{signer}\"\nsignature = \"{signature}\"\nbody = "
    );
    // A multi-line literal string keeps the body readable; it cannot hold every text (for
    // example `'''` or control characters), so fall back to an escaped string if parsing
    // the result would not give back the exact body.
    let literal = format!("{head}'''\n{body_toml}'''\n");
    if body_of(&literal).as_deref() == Some(body_toml) {
        return Ok(literal);
    }
    let escaped = toml::Value::String(body_toml.to_owned()).to_string();
    Ok(format!("{head}{escaped}\n"))
}

/// Reads `file_text`, checks that a key in `trusted` signed exactly its body, and returns
/// the validated directory.
pub fn verify(file_text: &str, trusted: &[VerifyingKey]) -> Result<Directory, Error> {
    let file: SignedFile =
        toml::from_str(file_text).map_err(|source| Error::Malformed { source })?;
    let signer =
        decode_verifying_key(&file.signer).map_err(|source| Error::BadSigner { source })?;
    if !trusted.contains(&signer) {
        return Err(Error::UntrustedSigner {
            signer: encode_verifying_key(&signer),
        });
    }
    let signature = decode_signature(&file.signature)
        .map_err(|source| Error::BadSignatureEncoding { source })?;
    signer
        .verify_strict(file.body.as_bytes(), &signature)
        .map_err(|_| Error::BadSignature)?;
    Directory::from_body_toml(&file.body)
}

/// The body a file text would yield, if it parses.
fn body_of(file_text: &str) -> Option<String> {
    toml::from_str::<SignedFile>(file_text).ok().map(|f| f.body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::directory::tests::sample;
    use crate::error::{KeyError, ValidationError};
    use crate::keys::generate_signing_key;

    fn signed() -> (String, SigningKey) {
        let key = generate_signing_key();
        let file = sign(&sample().to_body_toml().unwrap(), &key).unwrap();
        (file, key)
    }

    #[test]
    fn sign_then_verify_round_trips() {
        let (file, key) = signed();
        assert!(file.contains("body = '''\n"), "{file}");
        assert_eq!(verify(&file, &[key.verifying_key()]).unwrap(), sample());
    }

    #[test]
    fn any_of_several_trusted_keys_may_sign() {
        let (file, key) = signed();
        let other = generate_signing_key().verifying_key();
        assert_eq!(
            verify(&file, &[other, key.verifying_key()]).unwrap(),
            sample()
        );
    }

    #[test]
    fn body_changed_by_one_byte_is_refused() {
        let (file, key) = signed();
        let changed = file.replace("serial = 7", "serial = 8");
        assert_ne!(changed, file);
        let err = verify(&changed, &[key.verifying_key()]).unwrap_err();
        assert!(matches!(err, Error::BadSignature), "{err}");
        assert!(err.to_string().contains("modified after signing"), "{err}");
    }

    #[test]
    fn untrusted_signer_is_named() {
        let (file, key) = signed();
        let err = verify(&file, &[generate_signing_key().verifying_key()]).unwrap_err();
        let signer = encode_verifying_key(&key.verifying_key());
        assert!(
            matches!(&err, Error::UntrustedSigner { signer: s } if *s == signer),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("--trust {signer}")),
            "{err}"
        );
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let (file, key) = signed();
        let other = generate_signing_key();
        let forged_sig = encode_signature(&other.sign(sample().to_body_toml().unwrap().as_bytes()));
        let line = file.lines().nth(2).unwrap();
        let forged = file.replace(line, &format!("signature = \"{forged_sig}\""));
        assert!(matches!(
            verify(&forged, &[key.verifying_key()]),
            Err(Error::BadSignature)
        ));
    }

    #[test]
    fn malformed_files() {
        let trusted = [generate_signing_key().verifying_key()];
        for text in [
            "",
            "not toml at all",
            "signer = \"x\"\nsignature = \"y\"\n",
            "body = 3",
        ] {
            assert!(
                matches!(verify(text, &trusted), Err(Error::Malformed { .. })),
                "{text}"
            );
        }
        let (file, key) = signed();
        let err = verify(
            &file.replace("signature", "signatur"),
            &[key.verifying_key()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn bad_signer_and_signature_encodings() {
        let (file, key) = signed();
        let trusted = [key.verifying_key()];
        let signer = encode_verifying_key(&key.verifying_key());
        let text = file.replace(&format!("signer = \"{signer}\""), "signer = \"AAAA\"");
        assert!(matches!(
            verify(&text, &trusted),
            Err(Error::BadSigner {
                source: KeyError::WrongLength { got: 3, .. }
            })
        ));
        let line = file.lines().nth(2).unwrap();
        let text = file.replace(line, "signature = \"%%\"");
        assert!(matches!(
            verify(&text, &trusted),
            Err(Error::BadSignatureEncoding {
                source: KeyError::NotBase64 { .. }
            })
        ));
    }

    #[test]
    fn sign_refuses_an_invalid_body() {
        let key = generate_signing_key();
        let body = sample()
            .to_body_toml()
            .unwrap()
            .replace("version = 1", "version = 3");
        assert!(matches!(
            sign(&body, &key),
            Err(Error::Invalid(ValidationError::UnsupportedVersion {
                got: 3,
                ..
            }))
        ));
        assert!(matches!(sign("x = ", &key), Err(Error::BadBody { .. })));
    }

    #[test]
    fn signed_but_invalid_body_is_refused_after_the_signature_check() {
        // A trusted signer can still publish a directory this build cannot use.
        let key = generate_signing_key();
        let body = sample()
            .to_body_toml()
            .unwrap()
            .replace("version = 1", "version = 2");
        let signer = encode_verifying_key(&key.verifying_key());
        let signature = encode_signature(&key.sign(body.as_bytes()));
        let file =
            format!("signer = \"{signer}\"\nsignature = \"{signature}\"\nbody = '''\n{body}'''\n");
        assert!(matches!(
            verify(&file, &[key.verifying_key()]),
            Err(Error::Invalid(ValidationError::UnsupportedVersion {
                got: 2,
                ..
            }))
        ));
    }

    #[test]
    fn body_that_a_literal_string_cannot_hold_is_escaped() {
        let key = generate_signing_key();
        let mut dir = sample();
        dir.relays[0].name = "it'''s".into();
        dir.relays[1].operator = "tab\there'".into();
        let body = dir.to_body_toml().unwrap();
        let file = sign(&body, &key).unwrap();
        assert!(!file.contains("body = '''"), "{file}");
        assert_eq!(body_of(&file).as_deref(), Some(body.as_str()));
        assert_eq!(verify(&file, &[key.verifying_key()]).unwrap(), dir);
        // Bodies without a final newline, or ending in a quote, keep their exact bytes.
        for body in [
            "version = 1\nserial = 1",
            "version = 1\nserial = 1 # it's'",
            "\nversion = 1\nserial = 1\n",
        ] {
            let file = sign(body, &key).unwrap();
            assert_eq!(body_of(&file).as_deref(), Some(body), "{file}");
            assert!(verify(&file, &[key.verifying_key()]).is_ok());
        }
    }

    proptest! {
        #[test]
        fn verify_of_arbitrary_text_never_panics(text in ".*") {
            let _ = verify(&text, &[]);
        }

        #[test]
        fn verify_of_arbitrary_fields_never_panics(signer in ".{0,60}", signature in ".{0,100}", body in ".{0,200}") {
            let text = format!(
                "signer = {}\nsignature = {}\nbody = {}\n",
                toml::Value::String(signer),
                toml::Value::String(signature),
                toml::Value::String(body),
            );
            let _ = verify(&text, &[]);
        }

        /// Correctly signed, arbitrary bodies reach the body parser and validation.
        #[test]
        fn verify_of_signed_arbitrary_bodies_never_panics(
            body in prop_oneof![".{0,300}", mutated_body()],
        ) {
            let key = SigningKey::from_bytes(&[7; 32]);
            let file = format!(
                "signer = \"{}\"\nsignature = \"{}\"\nbody = {}\n",
                encode_verifying_key(&key.verifying_key()),
                encode_signature(&key.sign(body.as_bytes())),
                toml::Value::String(body.clone()),
            );
            match verify(&file, &[key.verifying_key()]) {
                Ok(dir) => prop_assert_eq!(Ok(dir), Directory::from_body_toml(&body).map_err(|e| e.to_string())),
                Err(e) => prop_assert!(!matches!(e, Error::BadSignature | Error::UntrustedSigner { .. }), "{}", e),
            }
        }
    }

    /// A valid body with one byte replaced, so that most cases get past the TOML parser.
    fn mutated_body() -> impl Strategy<Value = String> {
        let body = sample().to_body_toml().unwrap_or_default();
        (0..body.len(), any::<char>()).prop_map(move |(at, c)| {
            let mut bytes = body.clone().into_bytes();
            let mut buf = [0; 4];
            bytes.splice(at..at + 1, c.encode_utf8(&mut buf).bytes());
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
}
