//! Issuer keys: one RSA key pair per epoch; the public half is published in the directory.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{
    Epoch, KeyError, PublicKey, SecretKey, TokenError, TokenRequest, TokenResponse, WireError,
};

/// The public key of one epoch, as clients and relays take it from the directory.
#[derive(Debug, Clone)]
pub struct IssuerPublicKey {
    /// The epoch it signs for.
    pub epoch: Epoch,
    pub(crate) key: PublicKey,
    spki: Vec<u8>,
    key_id: [u8; 32],
}

impl IssuerPublicKey {
    /// From its SubjectPublicKeyInfo (RSASSA-PSS) DER.
    pub fn from_spki(epoch: Epoch, spki: &[u8]) -> Result<Self, KeyError> {
        let key = PublicKey::from_spki(spki).map_err(|e| KeyError::Encoding(e.to_string()))?;
        check_modulus(&key)?;
        Ok(Self::new(epoch, key, spki.to_vec()))
    }

    /// From the directory's base64 of the SPKI.
    pub fn from_base64(epoch: Epoch, text: &str) -> Result<Self, KeyError> {
        let spki = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Base64)?;
        Self::from_spki(epoch, &spki)
    }

    fn new(epoch: Epoch, key: PublicKey, spki: Vec<u8>) -> Self {
        let key_id = Sha256::digest(&spki).into();
        Self {
            epoch,
            key,
            spki,
            key_id,
        }
    }

    /// The SPKI DER.
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// Base64 of the SPKI, for the directory.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.spki)
    }

    /// `token_key_id`: SHA-256 of the SPKI.
    pub fn key_id(&self) -> [u8; 32] {
        self.key_id
    }

    /// The last byte of the key id, which token requests carry.
    pub fn truncated_key_id(&self) -> u8 {
        self.key_id[31]
    }
}

/// Token type 2 fixes Nk = 256: RSA-2048.
fn check_modulus(key: &PublicKey) -> Result<(), KeyError> {
    let bytes = key.components().n().len();
    if bytes != crate::NK {
        return Err(KeyError::Encoding(format!(
            "{}-bit modulus; token type 2 uses RSA-2048",
            bytes * 8
        )));
    }
    Ok(())
}

/// The issuer's key pair for one epoch.
pub struct IssuerKey {
    secret: SecretKey,
    public: IssuerPublicKey,
}

impl IssuerKey {
    /// A fresh RSA-2048 key for `epoch`.
    pub fn generate(epoch: Epoch) -> Result<Self, KeyError> {
        let pair =
            blind_rsa_signatures::KeyPair::generate(&mut blind_rsa_signatures::DefaultRng, 2048)
                .map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_secret(epoch, pair.sk)
    }

    /// From the PKCS#8 PEM kept by the issuer.
    pub fn from_pem(epoch: Epoch, pem: &str) -> Result<Self, KeyError> {
        let secret = SecretKey::from_pem(pem).map_err(|e| KeyError::Encoding(e.to_string()))?;
        Self::from_secret(epoch, secret)
    }

    fn from_secret(epoch: Epoch, secret: SecretKey) -> Result<Self, KeyError> {
        let key = secret
            .public_key()
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        // A key of another size would load, then fail every issuance (and relays would refuse
        // its SPKI): refuse it here.
        check_modulus(&key)?;
        let spki = key
            .to_spki()
            .map_err(|e| KeyError::Encoding(e.to_string()))?;
        Ok(Self {
            secret,
            public: IssuerPublicKey::new(epoch, key, spki),
        })
    }

    /// The PKCS#8 PEM of the private key (the issuer seals it at rest).
    pub fn to_pem(&self) -> Result<String, KeyError> {
        self.secret
            .to_pem()
            .map_err(|e| KeyError::Encoding(e.to_string()))
    }

    /// The public half.
    pub fn public(&self) -> &IssuerPublicKey {
        &self.public
    }

    /// Signs one blinded token input. The blinded message is attacker-chosen: the private
    /// key operation runs on constant-time big integers (`rsa` 0.10 on `crypto-bigint`)
    /// with RSA blinding; `benches/sign_timing.rs` measures that its time does not depend
    /// on the input.
    pub fn sign(&self, request: &TokenRequest) -> Result<TokenResponse, TokenError> {
        if request.truncated_key_id != self.public.truncated_key_id() {
            return Err(TokenError::WrongKey {
                got: request.truncated_key_id,
                expected: self.public.truncated_key_id(),
            });
        }
        let sig = self
            .secret
            .blind_sign(request.blinded_msg)
            .map_err(|e| TokenError::Rsa(e.to_string()))?;
        let blind_sig: [u8; crate::NK] =
            sig.0.as_slice().try_into().map_err(|_| WireError::Length {
                what: "blind signature",
                got: sig.0.len(),
                expected: crate::NK,
            })?;
        Ok(TokenResponse { blind_sig })
    }
}

impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}
