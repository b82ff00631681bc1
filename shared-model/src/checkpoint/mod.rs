//! The checkpoint format: a database's `pg_trickle` state as one zstd-compressed JSON lines file (docs/CHECKPOINT_FORMAT.md).
//!
//! A header line (format name and version, cluster, database, time, counts per item kind), one typed item per
//! line, and a trailer (the number of lines before it and the SHA-256 of their bytes). Encoding and decoding
//! stream: neither holds more than one line. The reader refuses, each with its own error, an empty file, a file
//! of another format, a newer version, a corrupt or truncated one, so the caller can tell the user which it is
//! before anything is restored.

mod codec;
mod items;
mod restore;
#[cfg(test)]
mod tests;

pub use codec::{CheckpointReader, CheckpointWriter, MAX_LINE_BYTES};
pub use items::{
    GroupKind, Header, Item, QualifiedName, RefreshMode, SourceKind, StreamTableStatus, Trailer, Watermark,
    FORMAT_NAME, FORMAT_VERSION,
};
pub use restore::{restore_plan, PlanError, RestorePlan, StreamTableDef};

/// Why a checkpoint cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Nothing in it.
    #[error("the checkpoint is empty")]
    Empty,
    /// Not a checkpoint at all.
    #[error("not a pg_trickle checkpoint: {0}")]
    Foreign(String),
    /// Written by a newer release.
    #[error("checkpoint format version {found} is newer than this release reads (up to {supported})")]
    NewerVersion { found: u64, supported: u32 },
    /// Ends before its trailer.
    #[error("the checkpoint is truncated: it ends after {lines} lines without its trailer")]
    Truncated { lines: u64 },
    /// Damaged: a line that does not decode, a bad item.
    #[error("the checkpoint is corrupt at line {line}: {reason}")]
    Corrupt { line: u64, reason: String },
    /// The trailer does not match what precedes it.
    #[error("the checkpoint's checksum does not match: its trailer says {expected}, the file holds {found}")]
    ChecksumMismatch { expected: String, found: String },
    /// The writer was given something a restore could not use.
    #[error("invalid checkpoint content: {0}")]
    Invalid(String),
    /// The underlying reader or writer failed.
    #[error("checkpoint I/O: {0}")]
    Io(String),
}

impl CheckpointError {
    fn write(e: std::io::Error) -> Self {
        CheckpointError::Io(e.to_string())
    }

    fn read(e: std::io::Error) -> Self {
        CheckpointError::Io(e.to_string())
    }
}
