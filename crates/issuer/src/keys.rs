//! The issuer's token keys at rest: one file, sealed (XChaCha20-Poly1305) under the same
//! 32-byte sealing key as the account store, replaced atomically.
//!
//! ```text
//! ORTK | version (1) | nonce (24) | sealed("epoch N\n<PKCS#8 PEM>\n" per key) + tag (16)
//! ```

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use token::{Epoch, IssuerKey};

const MAGIC: &[u8; 4] = b"ORTK";
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Wrong sealing key, or a damaged file.
    #[error("{0}: cannot be decrypted (wrong sealing key, or the file is damaged)")]
    Unseal(String),
    /// A key inside does not parse.
    #[error("{path}: a token key does not parse: {problem}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

/// Loads the keys in `path` (none if it does not exist).
pub fn load(path: &Path, sealing_key: &[u8; 32]) -> Result<Vec<IssuerKey>, KeyFileError> {
    let name = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(KeyFileError::Io { path: name, source }),
    };
    let header = MAGIC.len() + 1;
    let (Some(aad), Some(nonce), Some(ciphertext)) = (
        bytes.get(..header),
        bytes.get(header..header + NONCE_LEN),
        bytes.get(header + NONCE_LEN..),
    ) else {
        return Err(KeyFileError::Unseal(name));
    };
    if aad != [&MAGIC[..], &[VERSION]].concat() {
        return Err(KeyFileError::Unseal(name));
    }
    let text = XChaCha20Poly1305::new(sealing_key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| KeyFileError::Unseal(name.clone()))?;
    let text = String::from_utf8(text).map_err(|_| KeyFileError::Unseal(name.clone()))?;
    let bad = |problem: String| KeyFileError::Key {
        path: name.clone(),
        problem,
    };
    let mut keys = Vec::new();
    for block in text.split("epoch ").filter(|b| !b.trim().is_empty()) {
        let (epoch, pem) = block
            .split_once('\n')
            .ok_or_else(|| bad("an epoch line without a key".into()))?;
        let epoch: u32 = epoch
            .trim()
            .parse()
            .map_err(|_| bad(format!("epoch {epoch:?}")))?;
        let pem = format!("{}\n", pem.trim());
        let key = IssuerKey::from_pem(Epoch(epoch), &pem).map_err(|e| bad(e.to_string()))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Writes `keys` to `path`, sealed, replacing the file atomically.
pub fn save(path: &Path, sealing_key: &[u8; 32], keys: &[IssuerKey]) -> Result<(), KeyFileError> {
    let name = path.display().to_string();
    let io = |source| KeyFileError::Io {
        path: name.clone(),
        source,
    };
    let mut text = String::new();
    for k in keys {
        let pem = k.to_pem().map_err(|e| KeyFileError::Key {
            path: name.clone(),
            problem: e.to_string(),
        })?;
        text.push_str(&format!("epoch {}\n{pem}\n", k.public().epoch.0));
    }
    let nonce: [u8; NONCE_LEN] = rand::random();
    let aad = [&MAGIC[..], &[VERSION]].concat();
    let sealed = XChaCha20Poly1305::new(sealing_key.into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: text.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|_| KeyFileError::Unseal(name.clone()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&[&aad[..], &nonce, &sealed].concat())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Keeps keys for this epoch and the next (so the next one can be published ahead), making
/// missing ones and dropping those past use. Returns whether anything changed.
pub fn rotate(keys: &mut Vec<IssuerKey>, unix_secs: u64) -> Result<bool, token::KeyError> {
    let now = Epoch::at(unix_secs);
    let before = keys.len();
    keys.retain(|k| k.public().epoch.redeemable_at(unix_secs) || k.public().epoch > now);
    let mut changed = keys.len() != before;
    for e in [now, now.next()] {
        if !keys.iter().any(|k| k.public().epoch == e) {
            keys.push(IssuerKey::generate(e)?);
            changed = true;
        }
    }
    keys.sort_by_key(|k| k.public().epoch);
    Ok(changed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_sealed_and_rotate() {
        let dir = std::env::temp_dir().join(format!("openrelay-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token-keys");
        let now = 2900 * Epoch::SECONDS + 5;
        let mut keys = load(&path, &[1; 32]).unwrap();
        assert!(rotate(&mut keys, now).unwrap());
        assert_eq!(
            keys.iter().map(|k| k.public().epoch).collect::<Vec<_>>(),
            vec![Epoch(2900), Epoch(2901)]
        );
        assert!(!rotate(&mut keys, now).unwrap());
        save(&path, &[1; 32], &keys).unwrap();
        let again = load(&path, &[1; 32]).unwrap();
        assert_eq!(again[1].public().key_id(), keys[1].public().key_id());
        // The private keys are not in the file in the clear.
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(10).any(|w| w == b"BEGIN PRIV"));
        assert!(matches!(
            load(&path, &[2; 32]),
            Err(KeyFileError::Unseal(_))
        ));
        // Two weeks later: 2900 is gone, 2902 and 2903 exist.
        assert!(rotate(&mut keys, now + 2 * Epoch::SECONDS).unwrap());
        assert_eq!(
            keys.iter().map(|k| k.public().epoch).collect::<Vec<_>>(),
            vec![Epoch(2901), Epoch(2902), Epoch(2903)]
        );
    }
}
