//! The issuer's state on disk: one file, encrypted and authenticated under a sealing key,
//! replaced atomically. The only module here that does I/O.
//!
//! ```text
//!  0       4         5                 29
//!  +-------+---------+-----------------+----------------------------------------+
//!  | ORAS  | version | nonce (24)      | XChaCha20-Poly1305(state) + tag (16)   |
//!  +-------+---------+-----------------+----------------------------------------+
//! ```
//!
//! Magic and version are authenticated as associated data; the nonce is fresh and random
//! for every save (192 bits, so random nonces never repeat in practice). In a TEE the
//! sealing key comes from the platform's sealing; in sim mode from a key file; here it is
//! just 32 bytes.
//!
//! # Durability
//!
//! [`Store::save`] writes `<file>.tmp` in the same directory, fsyncs it, renames it over
//! the file and fsyncs the directory, and returns only then. A crash at any point leaves
//! either the old file or the new one, never a mix; a leftover `.tmp` is ignored and
//! removed by [`Store::open`]. [`DurableServer`] saves every durable change before its
//! response (or credit result) is released, so nothing acknowledged can be lost.

#![deny(clippy::unwrap_used)]

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use thiserror::Error;

use crate::account_number::AccountNumber;
use crate::server::{CreditError, Limits, Server, SourceId};
use crate::state::{CorruptState, State};
use crate::wire::{RefuseReason, Request, Response};

/// First bytes of a store file ("OpenRelay Account Store").
pub const MAGIC: [u8; 4] = *b"ORAS";

/// The file format version this build reads and writes.
pub const FORMAT_VERSION: u8 = 1;

const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;

/// The 32-byte key the store is encrypted under.
pub struct SealingKey([u8; 32]);

impl SealingKey {
    /// Wraps key bytes from the TEE's sealing or, in sim mode, a key file.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// The encrypted state file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    tmp: PathBuf,
    key: SealingKey,
}

impl Store {
    /// Prepares the store at `path`: creates its directory if missing and removes a
    /// `.tmp` left by a crash mid-save (never read: the file itself is the last complete
    /// save). Reads nothing yet.
    pub fn open(path: impl Into<PathBuf>, key: SealingKey) -> Result<Self, StoreError> {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let dir = directory(&path);
        fs::create_dir_all(&dir).map_err(io_error("create directory", &dir))?;
        match fs::remove_file(&tmp) {
            Ok(()) => sync_directory(&dir)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("remove leftover", &tmp)(err)),
        }
        Ok(Self { path, tmp, key })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last saved state, or `None` if nothing was ever saved here.
    pub fn load(&self) -> Result<Option<State>, StoreError> {
        let sealed = match fs::read(&self.path) {
            Ok(sealed) => sealed,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error("read", &self.path)(err)),
        };
        let plaintext = Plaintext(self.unseal(&sealed)?);
        let state = State::decode(&plaintext.0).map_err(|source| StoreError::Corrupt {
            path: self.path.clone(),
            source,
        })?;
        Ok(Some(state))
    }

    /// The last saved state, or a new issuer ([`State::generate`]) saved at once.
    pub fn load_or_create(&self, rng: &mut impl rand::CryptoRng) -> Result<State, StoreError> {
        if let Some(state) = self.load()? {
            return Ok(state);
        }
        let state = State::generate(rng);
        self.save(&state)?;
        Ok(state)
    }

    /// Replaces the file with `state`; returns once the new file is durable.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let plaintext = Plaintext(state.encode());
        let sealed = self.seal(&plaintext.0, &mut rand::rng())?;
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Encrypted, but still nobody else's business.
            options.mode(0o600);
        }
        let mut file = options
            .open(&self.tmp)
            .map_err(io_error("create", &self.tmp))?;
        file.write_all(&sealed)
            .map_err(io_error("write", &self.tmp))?;
        file.sync_all().map_err(io_error("fsync", &self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io_error("rename into", &self.path))?;
        sync_directory(&directory(&self.path))
    }

    fn seal(
        &self,
        plaintext: &[u8],
        rng: &mut impl rand::CryptoRng,
    ) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut sealed = Vec::with_capacity(HEADER_LEN + plaintext.len() + 16);
        sealed.extend_from_slice(&MAGIC);
        sealed.push(FORMAT_VERSION);
        let aad = sealed.clone();
        sealed.extend_from_slice(&nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Seal)?;
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Checks the header and decrypts; any change to any byte fails here (or, for the
    /// magic and version, in the header checks).
    pub(crate) fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some((header, ciphertext)) = sealed.split_at_checked(HEADER_LEN) else {
            return Err(StoreError::NotAStore {
                path: self.path.clone(),
            });
        };
        let (aad, nonce) = header.split_at(MAGIC.len() + 1);
        let (magic, version) = aad.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(StoreError::NotAStore {
                path: self.path.clone(),
            });
        }
        if version != [FORMAT_VERSION] {
            return Err(StoreError::UnsupportedVersion {
                path: self.path.clone(),
                got: version.first().copied().unwrap_or_default(),
                supported: FORMAT_VERSION,
            });
        }
        self.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| StoreError::Undecryptable {
                path: self.path.clone(),
            })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key.0.into())
    }
}

/// Why the store could not be read or written.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error(
        "cannot {op} {path}: {source}; check that the directory exists, is writable and has space"
    )]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the store's magic (or is shorter than its header).
    #[error(
        "{path} is not an OpenRelay account store, or its header is damaged; check the \
         path, or restore a backup"
    )]
    NotAStore {
        /// The file.
        path: PathBuf,
    },
    /// A store format from another build.
    #[error(
        "{path} is account store format {got}, this build reads format {supported}; use a \
         matching build"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Its format version.
        got: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// Authentication failed.
    #[error(
        "cannot decrypt {path}: wrong sealing key or the file is corrupted; use the key \
         it was sealed with, or restore a backup"
    )]
    Undecryptable {
        /// The file.
        path: PathBuf,
    },
    /// Decrypted, but the contents are not a state this build wrote.
    #[error("{path} decrypted but holds an invalid state ({source}); restore a backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: CorruptState,
    },
    /// Encryption failed (only for states beyond the AEAD's size limit).
    #[error("cannot encrypt the state: too large")]
    Seal,
}

/// A [`Server`] whose durable changes reach the disk before they are acknowledged: a
/// registration's `Registered` and a credit or spend's result are released only after
/// [`Store::save`] returned. If saving fails the change is undone in memory, so memory
/// never runs ahead of the disk.
pub struct DurableServer {
    server: Server,
    store: Store,
}

impl DurableServer {
    /// Loads the store's state (or creates and saves a new issuer) and serves it.
    pub fn open(
        store: Store,
        limits: Limits,
        rng: &mut impl rand::CryptoRng,
    ) -> Result<Self, StoreError> {
        let state = store.load_or_create(rng)?;
        let mut seed = [0; 32];
        rng.fill_bytes(&mut seed);
        Ok(Self {
            server: Server::with_limits(state, limits, seed),
            store,
        })
    }

    /// The server, for read-only questions ([`Server::logged_in`], [`Server::balance`]).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Handles a request; a durable change is saved before the response is returned.
    /// On `Err` the change was undone: answer [`RefuseReason::Unavailable`] and log the
    /// error. (A registration undone this way has used up its reserved number; the
    /// client starts again with `CreateAccount`.)
    pub fn handle(
        &mut self,
        now_secs: u64,
        source: SourceId,
        request: Request,
    ) -> Result<Response, StoreError> {
        let reply = self.server.handle(now_secs, source, request);
        if let Some(change) = reply.change {
            if let Err(err) = self.store.save(self.server.state()) {
                self.server.revert(&change);
                return Err(err);
            }
        }
        Ok(reply.response)
    }

    /// [`DurableServer::handle`] for a datagram, always producing the datagram to send
    /// back; a save failure is answered with `Refused(Unavailable)` and returned for
    /// logging.
    pub fn handle_bytes(
        &mut self,
        now_secs: u64,
        source: SourceId,
        bytes: &[u8],
    ) -> (Vec<u8>, Option<StoreError>) {
        let reply = self.server.handle_bytes(now_secs, source, bytes);
        if let Some(change) = reply.change {
            if let Err(err) = self.store.save(self.server.state()) {
                self.server.revert(&change);
                return (
                    Response::refused(RefuseReason::Unavailable).encode(),
                    Some(err),
                );
            }
        }
        (reply.response.encode(), None)
    }

    /// Forgets `source`'s login (not durable: logins never are).
    pub fn logout(&mut self, source: SourceId) -> Option<AccountNumber> {
        self.server.logout(source)
    }

    /// [`Server::credit`], saved before the new balance is returned.
    pub fn credit(&mut self, account: AccountNumber, units: u64) -> Result<u64, DurableError> {
        self.durably(account, |server| server.credit(account, units))
    }

    /// [`Server::spend`], saved before the new balance is returned.
    pub fn spend(&mut self, account: AccountNumber, units: u64) -> Result<u64, DurableError> {
        self.durably(account, |server| server.spend(account, units))
    }

    fn durably(
        &mut self,
        account: AccountNumber,
        change: impl FnOnce(&mut Server) -> Result<u64, CreditError>,
    ) -> Result<u64, DurableError> {
        let before = self
            .server
            .balance(account)
            .ok_or(CreditError::UnknownAccount(account))?;
        let balance = change(&mut self.server)?;
        if let Err(err) = self.store.save(self.server.state()) {
            self.server.restore_balance(account, before);
            return Err(err.into());
        }
        Ok(balance)
    }
}

/// Why a durable credit operation failed; in both cases nothing changed.
#[derive(Debug, Error)]
pub enum DurableError {
    /// The operation itself was refused.
    #[error(transparent)]
    Credit(#[from] CreditError),
    /// The change could not be saved and was undone.
    #[error("credit change not saved, undone: {0}")]
    Store(#[from] StoreError),
}

/// Decrypted state bytes, overwritten on drop (they hold the server's private key).
struct Plaintext(Vec<u8>);

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

fn directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename in `dir` durable (POSIX: the directory entry lives in the directory).
fn sync_directory(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))?;
    Ok(())
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
