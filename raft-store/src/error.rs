//! Errors of the durable store. Each names the path it concerns and what is wrong, so an operator can act on a
//! damaged data directory without reading code; none of them is raised by a panic, and opening a damaged store
//! writes nothing.

use std::path::PathBuf;

use openraft::{AnyError, StorageError, StorageIOError};

use crate::NodeId;

/// Why the store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled refused to open the database.
    #[error("cannot open raft store {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    /// The data is damaged: truncated, garbled, inconsistent or from a foreign program.
    #[error("raft store {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// sled failed while reading or writing.
    #[error("raft store {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    /// A snapshot's encoding or decoding, run on the blocking pool, did not finish (it panicked or the runtime
    /// shut down).
    #[error("snapshot work did not finish: {0}")]
    Join(String),
}

impl StoreError {
    pub(crate) fn damaged(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        StoreError::Damaged { path: path.into(), what: what.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub(crate) fn sled(path: impl Into<PathBuf>) -> impl FnOnce(sled::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Sled { path, source }
    }

    /// As an openraft read error.
    pub fn into_read(self) -> StorageError<NodeId> {
        StorageIOError::read(AnyError::new(&self)).into()
    }

    /// As an openraft write error.
    pub fn into_write(self) -> StorageError<NodeId> {
        StorageIOError::write(AnyError::new(&self)).into()
    }
}
