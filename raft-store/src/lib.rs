//! openraft storage on sled for pg_trickle federation.
//!
//! [`open`] gives the two halves openraft's storage-v2 API asks for: a [`LogStore`] (durable log, vote, committed
//! index; appends flushed before they are acknowledged) and a [`StateMachineStore`] (the `shared-model` state,
//! event-sourced: snapshot file + per-entry records). Both live in one data directory:
//!
//! ```text
//! DATA_DIR/raft.sled/            sled database: trees `raft_log` and `state_machine`
//! DATA_DIR/snapshots/current.snap  the newest snapshot (checksummed, atomically replaced)
//! ```
//!
//! Opening checks everything it reads and reports damage with the path and what is wrong; it never panics and
//! never repairs by overwriting.

mod error;
mod log_store;
pub mod snapshot;
mod state_machine;

use std::io::Cursor;
use std::path::{Path, PathBuf};

pub use error::StoreError;
pub use log_store::LogStore;
pub use openraft;
use shared_model::{Executed, Request};
pub use state_machine::StateMachineStore;

openraft::declare_raft_types!(
    /// The coordinator's Raft types: requests of `shared-model` in, their executed records out.
    pub TypeConfig:
        D = Request,
        R = Executed,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A node's id.
pub type NodeId = u64;
/// A node's address book entry.
pub type Node = openraft::BasicNode;
/// A log entry.
pub type LogEntry = openraft::Entry<TypeConfig>;

/// Tunables of the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// How many applied records (the watchable event log) to keep behind the newest snapshot.
    pub retained_records: u64,
    /// How many idempotency keys a fresh state remembers.
    pub idempotency_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { retained_records: 100_000, idempotency_capacity: shared_model::idempotency::DEFAULT_IDEMPOTENCY_CAPACITY }
    }
}

/// Where the sled database of a data directory lives.
pub fn sled_path(dir: &Path) -> PathBuf {
    dir.join("raft.sled")
}

/// Opens (or creates) the store in `dir`.
pub fn open(dir: &Path, options: StoreOptions) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let db_path = sled_path(dir);
    // sled panics on some kinds of damage instead of returning an error; report those as damage too.
    let opened = std::panic::catch_unwind(|| sled::Config::new().path(&db_path).open());
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(sled::Error::Corruption { at, bt: _ })) => {
            return Err(StoreError::damaged(&db_path, format!("sled found corruption at {at:?}")))
        }
        Ok(Err(source)) => return Err(StoreError::Open { path: db_path, source }),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unreadable".into());
            return Err(StoreError::damaged(&db_path, format!("sled could not read it: {what}")));
        }
    };
    let log = LogStore::open(db.clone(), db_path.clone())?;
    let sm = StateMachineStore::open(&db, dir.to_path_buf(), db_path, options)?;
    Ok((log, sm))
}
