//! Where a directory comes from, behind one trait, so that an on-chain registry can later
//! replace the signed file without touching code that reads the directory.

use std::path::PathBuf;

use ed25519_dalek::VerifyingKey;

use crate::directory::Directory;
use crate::error::Error;
use crate::file::verify;

/// A place to read the current, verified directory from.
pub trait DirectorySource {
    /// The current directory, verified and validated; called again to pick up changes.
    fn load(&self) -> Result<Directory, Error>;
}

/// A signed directory file, read and verified on every load so a replaced file is noticed.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
    trusted: Vec<VerifyingKey>,
}

impl FileSource {
    /// A source that accepts the file at `path` only if one of `trusted` signed it.
    pub fn new(path: impl Into<PathBuf>, trusted: Vec<VerifyingKey>) -> Self {
        Self {
            path: path.into(),
            trusted,
        }
    }

    /// The file read.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl DirectorySource for FileSource {
    fn load(&self) -> Result<Directory, Error> {
        let text = std::fs::read_to_string(&self.path).map_err(|source| Error::Read {
            path: self.path.clone(),
            source,
        })?;
        verify(&text, &self.trusted)
    }
}

/// A directory held in memory, for tests, demos and embedding; validated on every load
/// like any other source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSource(pub Directory);

impl DirectorySource for StaticSource {
    fn load(&self) -> Result<Directory, Error> {
        self.0.validate()?;
        Ok(self.0.clone())
    }
}

impl<S: DirectorySource + ?Sized> DirectorySource for &S {
    fn load(&self) -> Result<Directory, Error> {
        (**self).load()
    }
}

impl<S: DirectorySource + ?Sized> DirectorySource for Box<S> {
    fn load(&self) -> Result<Directory, Error> {
        (**self).load()
    }
}

impl<S: DirectorySource + ?Sized> DirectorySource for std::sync::Arc<S> {
    fn load(&self) -> Result<Directory, Error> {
        (**self).load()
    }
}
