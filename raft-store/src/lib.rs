//! openraft storage on sled for pg_trickle federation.
//!
//! [`open`] gives the two halves openraft's storage-v2 API asks for: a [`LogStore`] (durable log, vote, committed
//! index; appends flushed before they are acknowledged) and a [`StateMachineStore`] (the `shared-model` state,
//! event-sourced: snapshot file + per-entry records). Both live in one data directory:
//!
//! ```text
//! DATA_DIR/raft.sled/            sled database: trees `raft_log` and `state_machine`
//! DATA_DIR/snapshots/current.snap  the newest snapshot (checksummed, atomically replaced)
//! DATA_DIR/raft.hwm              how far appends were acknowledged (detects a truncated database file)
//! ```
//!
//! Opening checks everything it reads and reports damage with the path and what is wrong; it never panics and
//! never repairs by overwriting.

mod error;
mod flusher;
mod high_water;
mod log_store;
pub mod snapshot;
mod state_machine;
pub mod workload;

use std::io::Cursor;
use std::path::{Path, PathBuf};

pub use error::StoreError;
pub use log_store::LogStore;
pub use openraft;
use shared_model::{Executed, Request};
pub use state_machine::{execute_payload, StateMachineStore};

/// The payload of one log entry: the requests the leader batched into it, executed in order at the entry's index.
/// Batching concurrent writes into one entry is what lets throughput grow with concurrency, since openraft 0.9
/// appends (and fsyncs) one entry at a time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    /// The requests, in the order they are executed.
    pub requests: Vec<Request>,
}

openraft::declare_raft_types!(
    /// The coordinator's Raft types: batches of `shared-model` requests in, one executed record per request out.
    pub TypeConfig:
        D = Batch,
        R = Vec<Executed>,
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
    /// How long (ms of proposal time) a fresh state remembers idempotency keys.
    pub idempotency_window_ms: u64,
    /// Most bytes of log entries one replication read returns, so one AppendEntries RPC (always at least one
    /// entry); see [`LogStore::entries_up_to_bytes`].
    pub max_payload_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retained_records: 100_000,
            idempotency_window_ms: shared_model::idempotency::DEFAULT_IDEMPOTENCY_WINDOW_MS,
            max_payload_bytes: 512 * 1024,
        }
    }
}

/// Where the sled database of a data directory lives.
pub fn sled_path(dir: &Path) -> PathBuf {
    dir.join("raft.sled")
}

/// Opens (or creates) the store in `dir`.
///
/// sled repairs a torn tail in place when it opens a database, which is right after a crash but would also
/// rewrite a damaged file before we could report it. So an existing database is first opened and checked on a
/// scratch copy; only when the copy opens cleanly is the real one opened. A damaged store is reported and left
/// byte-for-byte as it was. What the check established (the log's extent, the state rebuilt from the snapshot
/// and records) is taken over for the real database when it ends where the copy did (same last log entry and
/// applied index); otherwise the real one is checked itself.
pub fn open(dir: &Path, options: StoreOptions) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir))?;
    let db_path = sled_path(dir);
    let hwm = dir.join("raft.hwm");
    if !db_path.exists() {
        let db = open_sled(&db_path)?;
        let checked = check(&db, dir, &db_path, &hwm, options)?;
        return open_checked(db, dir, &db_path, &hwm, options, checked);
    }
    let scratch = dir.join(".raft.sled.verify");
    let _ = std::fs::remove_dir_all(&scratch);
    copy_dir(&db_path, &scratch.join("raft.sled"))?;
    if hwm.exists() {
        std::fs::copy(&hwm, scratch.join("raft.hwm")).map_err(StoreError::io(&hwm))?;
    }
    let checked = open_sled(&scratch.join("raft.sled"))
        .and_then(|db| check(&db, dir, &scratch.join("raft.sled"), &scratch.join("raft.hwm"), options));
    let _ = std::fs::remove_dir_all(&scratch);
    // Errors name the real database, not the scratch copy.
    let real = |path: PathBuf| match path.strip_prefix(&scratch) {
        Ok(rest) => dir.join(rest),
        Err(_) => path,
    };
    let checked = checked.map_err(|e| match e {
        StoreError::Damaged { path, what } => StoreError::Damaged { path: real(path), what },
        StoreError::Open { path, source } => StoreError::Open { path: real(path), source },
        StoreError::Sled { path, source } => StoreError::Sled { path: real(path), source },
        StoreError::Io { path, source } => StoreError::Io { path: real(path), source },
        other @ StoreError::Join(_) => other,
    })?;
    // The copy is what was checked; should the real database have moved since (a handle of this process still
    // flushing when the copy was made), it is checked itself.
    let db = open_sled(&db_path)?;
    let checked =
        if tips(&db, &db_path)? == checked.tips { checked } else { check(&db, dir, &db_path, &hwm, options)? };
    open_checked(db, dir, &db_path, &hwm, options, checked)
}

/// The last log entry and the stored applied index, as bytes: equal tips mean the same database as far as a
/// restart can tell.
type Tips = (Option<(sled::IVec, sled::IVec)>, Option<sled::IVec>);

fn tips(db: &sled::Db, db_path: &Path) -> Result<Tips, StoreError> {
    let log = db.open_tree("raft_log").map_err(StoreError::sled(db_path))?;
    let sm = db.open_tree("state_machine").map_err(StoreError::sled(db_path))?;
    let last = log.last().map_err(StoreError::sled(db_path))?;
    let applied = sm.get(state_machine::KEY_APPLIED).map_err(StoreError::sled(db_path))?;
    Ok((last, applied))
}

/// What checking a database established: its log's last index and its rebuilt state, and the tips it saw.
struct Checked {
    last: Option<u64>,
    rebuilt: state_machine::Rebuilt,
    tips: Tips,
}

fn check(db: &sled::Db, dir: &Path, db_path: &Path, hwm: &Path, options: StoreOptions) -> Result<Checked, StoreError> {
    let tips = tips(db, db_path)?;
    let last = LogStore::check(db, db_path, hwm)?;
    let rebuilt = StateMachineStore::rebuild(db, dir, db_path, options)?;
    Ok(Checked { last, rebuilt, tips })
}

fn open_checked(
    db: sled::Db,
    dir: &Path,
    db_path: &Path,
    hwm: &Path,
    options: StoreOptions,
    checked: Checked,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let log =
        LogStore::open(db.clone(), db_path.to_path_buf(), hwm.to_path_buf(), options.max_payload_bytes, checked.last)?;
    let sm = StateMachineStore::open(&db, dir.to_path_buf(), db_path.to_path_buf(), options, checked.rebuilt)?;
    Ok((log, sm))
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).map_err(StoreError::io(to))?;
    for entry in std::fs::read_dir(from).map_err(StoreError::io(from))? {
        let entry = entry.map_err(StoreError::io(from))?;
        let target = to.join(entry.file_name());
        if entry.file_type().map_err(StoreError::io(entry.path()))?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target).map_err(StoreError::io(entry.path()))?;
        }
    }
    Ok(())
}

fn open_sled(db_path: &Path) -> Result<sled::Db, StoreError> {
    // sled panics on some kinds of damage instead of returning an error; report those as damage too.
    let opened = std::panic::catch_unwind(|| sled::Config::new().path(db_path).open());
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Corruption { at, bt: _ })) => {
            Err(StoreError::damaged(db_path, format!("sled found corruption at {at:?}")))
        }
        Ok(Err(source)) => Err(StoreError::Open { path: db_path.to_path_buf(), source }),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unreadable".into());
            Err(StoreError::damaged(db_path, format!("sled could not read it: {what}")))
        }
    }
}
