//! The state machine: `shared-model`'s [`State`], event-sourced on sled.
//!
//! Applying entries runs [`State::execute`] and stores each entry's [`Executed`] record (its events or its
//! rejection) together with the applied log id and membership in one atomic sled batch. On open the state is
//! rebuilt from the snapshot file plus the records after it, and must end exactly at the stored applied index.
//! Records are not flushed per apply: whatever a crash loses is re-applied by openraft from the flushed log (we
//! persist the committed index). The records double as the watchable event log, kept `retained_records` entries
//! behind the latest snapshot.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StoredMembership,
};
use shared_model::{codec, Executed, State};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::snapshot;
use crate::{LogEntry, Node, NodeId, StoreOptions, TypeConfig};

const RECORD_PREFIX: u8 = b'r';
pub(crate) const KEY_APPLIED: &[u8] = b"m/applied";

fn record_key(index: u64) -> [u8; 9] {
    let mut key = [RECORD_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

type Applied = (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>);

/// Executes one log entry's payload on the fold: one record per batched request (the clients' answers), one no-op
/// record for a blank or membership entry. Generic over the Raft types so that the simulations execute entries
/// exactly as this store does.
pub fn execute_payload<C>(state: &mut State, index: u64, payload: &EntryPayload<C>) -> Vec<Executed>
where
    C: openraft::RaftTypeConfig<D = crate::Batch>,
{
    match payload {
        EntryPayload::Normal(batch) if !batch.requests.is_empty() => {
            batch.requests.iter().map(|r| state.execute(index, r)).collect()
        }
        EntryPayload::Blank | EntryPayload::Normal(_) | EntryPayload::Membership(_) => vec![state.execute_noop(index)],
    }
}

struct Current {
    state: State,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
}

struct Inner {
    tree: sled::Tree,
    db_path: PathBuf,
    dir: PathBuf,
    options: StoreOptions,
    current: RwLock<Current>,
    applied_tx: watch::Sender<u64>,
    /// The metadata of the snapshot file; the lock is held while the file is replaced or read, so the two always
    /// agree. The bytes stay on disk: holding them in memory doubled a large state's resident size.
    snapshot: Mutex<Option<SnapshotMeta<NodeId, Node>>>,
    /// Bytes of the snapshot file (0 without one): the size trigger compares the log written since with it.
    snapshot_len: std::sync::atomic::AtomicU64,
    /// The newest applied records, decoded, for the watchers at the tip of the event log: thousands of them wake
    /// on each entry, and each would otherwise read and decode the same records from sled.
    recent: Mutex<RecentRecords>,
}

/// Most bytes (encoded) of records kept in [`RecentRecords`].
const RECENT_RECORDS_BYTES: usize = 16 * 1024 * 1024;

/// A window of consecutive entries' records, newest last, bounded by bytes.
#[derive(Default)]
struct RecentRecords {
    entries: std::collections::VecDeque<(u64, Arc<Vec<Executed>>, usize)>,
    bytes: usize,
}

impl RecentRecords {
    fn push(&mut self, index: u64, records: Arc<Vec<Executed>>, bytes: usize) {
        if self.entries.back().is_some_and(|(last, _, _)| *last + 1 != index) {
            self.clear();
        }
        self.entries.push_back((index, records, bytes));
        self.bytes += bytes;
        while self.bytes > RECENT_RECORDS_BYTES && self.entries.len() > 1 {
            let (_, _, b) = self.entries.pop_front().expect("non-empty");
            self.bytes -= b;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Forgets entries before `index`, as the stored records are pruned: a watcher that fell behind the retention
    /// window gets 410 whether or not the window still happens to be in memory.
    fn drop_before(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(i, _, _)| *i < index) {
            let (_, _, b) = self.entries.pop_front().expect("non-empty");
            self.bytes -= b;
        }
    }

    /// The records of up to `limit` entries after `after`, when the window holds all of them from `after + 1`.
    fn after(&self, after: u64, limit: usize) -> Option<Vec<Executed>> {
        let first = self.entries.front()?.0;
        let last = self.entries.back()?.0;
        if after + 1 < first || after > last {
            return None;
        }
        let skip = (after + 1 - first) as usize;
        Some(self.entries.iter().skip(skip).take(limit).flat_map(|(_, r, _)| r.iter().cloned()).collect())
    }
}

/// The state a database holds, rebuilt and checked by [`StateMachineStore::rebuild`].
pub(crate) struct Rebuilt {
    current: Current,
    snapshot: Option<SnapshotMeta<NodeId, Node>>,
}

/// The state machine store. Cheap to clone; the coordinator keeps a clone for reads and watches.
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

impl StateMachineStore {
    /// Rebuilds the state a database holds (snapshot file + applied records), checking every record; the
    /// result is what [`StateMachineStore::open`] serves.
    pub(crate) fn rebuild(
        db: &sled::Db,
        dir: &Path,
        db_path: &Path,
        options: StoreOptions,
    ) -> Result<Rebuilt, StoreError> {
        let db_path = db_path.to_path_buf();
        let tree = db.open_tree("state_machine").map_err(StoreError::sled(&db_path))?;
        let snap = snapshot::read_file(dir)?;
        let stored: Option<Applied> = match tree.get(KEY_APPLIED).map_err(StoreError::sled(&db_path))? {
            Some(bytes) => {
                Some(codec::decode(&bytes).map_err(|e| StoreError::damaged(&db_path, format!("applied index: {e}")))?)
            }
            None => None,
        };
        let (mut state, snap_last, snap_membership, snapshot) = match snap {
            Some((image, _bytes)) => {
                let meta = image.meta.clone();
                (image.state, meta.last_log_id, meta.last_membership.clone(), Some(meta))
            }
            None => (
                State::with_idempotency_window_ms(options.idempotency_window_ms),
                None,
                StoredMembership::default(),
                None,
            ),
        };
        // The snapshot is written before the applied index that follows it, so a crash in between leaves the
        // stored index behind the snapshot: the snapshot then wins.
        let (applied, membership) = match stored {
            Some((applied, membership)) if applied >= snap_last => (applied, membership),
            _ => (snap_last, snap_membership),
        };
        // Without a snapshot the records start at the first applied entry: 0 for openraft's initial membership
        // entry, 1 for a log that starts at 1.
        let start = match snap_last {
            Some(l) => l.index + 1,
            None => match tree.range(record_key(0)..=record_key(1)).next() {
                Some(item) => {
                    item.map_err(StoreError::sled(&db_path))?.0[1..].try_into().map(u64::from_be_bytes).unwrap_or(0)
                }
                None => 0,
            },
        };
        for (expected, item) in (start..).zip(tree.range(record_key(start)..=record_key(u64::MAX))) {
            let (_, value) = item.map_err(StoreError::sled(&db_path))?;
            let records: Vec<Executed> = codec::decode(&value)
                .map_err(|e| StoreError::damaged(&db_path, format!("applied record {expected}: {e}")))?;
            if records.is_empty() || records.iter().any(|r| r.index != expected) {
                let found = records.first().map_or("an empty record".to_string(), |r| r.index.to_string());
                return Err(StoreError::damaged(
                    &db_path,
                    format!("applied records jump from {} to {found}", expected.saturating_sub(1)),
                ));
            }
            for record in &records {
                state.replay(record).map_err(|e| StoreError::damaged(&db_path, e.to_string()))?;
            }
        }
        let applied_index = applied.map_or(0, |a| a.index);
        if state.last_applied() != applied_index {
            return Err(StoreError::damaged(
                &db_path,
                format!(
                    "the state machine says it applied index {applied_index} but its snapshot and records rebuild the state to {}",
                    state.last_applied()
                ),
            ));
        }
        Ok(Rebuilt { current: Current { state, applied, membership }, snapshot })
    }

    /// Serves the state `rebuilt` from `db` (which must hold exactly what it was rebuilt from).
    pub(crate) fn open(
        db: &sled::Db,
        dir: PathBuf,
        db_path: PathBuf,
        options: StoreOptions,
        rebuilt: Rebuilt,
    ) -> Result<Self, StoreError> {
        let tree = db.open_tree("state_machine").map_err(StoreError::sled(&db_path))?;
        let Rebuilt { current, snapshot } = rebuilt;
        let (applied_tx, _) = watch::channel(current.applied.map_or(0, |a| a.index));
        let snapshot_len = match &snapshot {
            Some(_) => std::fs::metadata(snapshot::file_path(&dir)).map_or(0, |m| m.len()),
            None => 0,
        };
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                tree,
                db_path,
                dir,
                options,
                current: RwLock::new(current),
                applied_tx,
                snapshot: Mutex::new(snapshot),
                snapshot_len: snapshot_len.into(),
                recent: Mutex::new(RecentRecords::default()),
            }),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Current> {
        self.inner.current.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the current state (a read lock is held meanwhile: keep it short).
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.read().state)
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.read().applied
    }

    /// The membership as of the last applied entry.
    pub fn membership(&self) -> StoredMembership<NodeId, Node> {
        self.read().membership.clone()
    }

    /// Bytes of the newest snapshot file (0 when there is none).
    pub fn snapshot_bytes(&self) -> u64 {
        self.inner.snapshot_len.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A receiver that sees the last applied index change (for long-poll watches).
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// The records of up to `limit` log entries with index > `after`, in order (a batched entry gives one record
    /// per request). Records older than the retention window are gone:
    /// the first returned index then tells the caller where the retained history starts.
    pub fn records_after(&self, after: u64, limit: usize) -> Result<Vec<Executed>, StoreError> {
        if let Some(records) = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner()).after(after, limit) {
            return Ok(records);
        }
        let mut out = Vec::new();
        let start = after.saturating_add(1);
        for item in self.inner.tree.range(record_key(start)..=record_key(u64::MAX)).take(limit) {
            let (_, value) = item.map_err(StoreError::sled(&self.inner.db_path))?;
            let records: Vec<Executed> =
                codec::decode(&value).map_err(|e| StoreError::damaged(&self.inner.db_path, format!("record: {e}")))?;
            out.extend(records);
        }
        Ok(out)
    }

    /// Applies entries; returns each entry's record (the client's answer).
    pub fn apply_entries(&self, entries: impl IntoIterator<Item = LogEntry>) -> Result<Vec<Vec<Executed>>, StoreError> {
        let mut current = self.inner.current.write().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let executed = execute_payload(&mut current.state, index, &entry.payload);
            if let EntryPayload::Membership(m) = &entry.payload {
                current.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            current.applied = Some(entry.log_id);
            let encoded = codec::encode(&executed);
            fresh.push((index, Arc::new(executed.clone()), encoded.len()));
            batch.insert(&record_key(index), encoded);
            out.push(executed);
        }
        if out.is_empty() {
            return Ok(out);
        }
        batch.insert(KEY_APPLIED, codec::encode(&(current.applied, current.membership.clone())));
        self.inner.tree.apply_batch(batch).map_err(StoreError::sled(&self.inner.db_path))?;
        {
            let mut recent = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
            for (index, records, bytes) in fresh {
                recent.push(index, records, bytes);
            }
        }
        if let Some(applied) = current.applied {
            self.inner.applied_tx.send_replace(applied.index);
        }
        Ok(out)
    }

    /// Builds a snapshot of the current state, writes it durably and prunes records behind the retention window.
    pub fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let started = std::time::Instant::now();
        let (meta, bytes) = {
            let current = self.read();
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let meta = SnapshotMeta {
                last_log_id: current.applied,
                last_membership: current.membership.clone(),
                snapshot_id: match current.applied {
                    Some(l) => format!("{}-{}-{nanos}", l.leader_id, l.index),
                    None => format!("none-{nanos}"),
                },
            };
            let bytes = snapshot::encode(&meta, &current.state);
            (meta, bytes)
        };
        {
            let mut current_meta = self.inner.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            // Keep the newest: a snapshot installed meanwhile may be ahead of this one.
            if current_meta.as_ref().is_none_or(|m| m.last_log_id <= meta.last_log_id) {
                snapshot::write_file(&self.inner.dir, &bytes)?;
                *current_meta = Some(meta.clone());
                self.inner.snapshot_len.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if let Some(last) = meta.last_log_id {
            let keep_from = last.index.saturating_sub(self.inner.options.retained_records);
            let mut batch = sled::Batch::default();
            for key in self.inner.tree.range(record_key(0)..record_key(keep_from)).keys() {
                batch.remove(key.map_err(StoreError::sled(&self.inner.db_path))?);
            }
            self.inner.tree.apply_batch(batch).map_err(StoreError::sled(&self.inner.db_path))?;
            self.inner.recent.lock().unwrap_or_else(|p| p.into_inner()).drop_before(keep_from);
        }
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), ms = started.elapsed().as_millis() as u64, "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }

    /// Replaces the state with a snapshot received from the leader, after checking it.
    pub fn install(&self, meta: &SnapshotMeta<NodeId, Node>, bytes: Vec<u8>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let len = bytes.len();
        let origin = PathBuf::from(format!("<snapshot {} from leader>", meta.snapshot_id));
        let image = snapshot::decode(&bytes, &origin)?;
        if image.meta.last_log_id != meta.last_log_id {
            return Err(StoreError::damaged(
                origin,
                format!("its contents end at {:?}, the leader says {:?}", image.meta.last_log_id, meta.last_log_id),
            ));
        }
        let mut current_meta = self.inner.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        snapshot::write_file(&self.inner.dir, &bytes)?;
        *current_meta = Some(meta.clone());
        self.inner.snapshot_len.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        drop(current_meta);
        let mut current = self.inner.current.write().unwrap_or_else(|p| p.into_inner());
        let last = meta.last_log_id.map_or(0, |l| l.index);
        let mut batch = sled::Batch::default();
        for key in self.inner.tree.range(record_key(last.saturating_add(1))..=record_key(u64::MAX)).keys() {
            batch.remove(key.map_err(StoreError::sled(&self.inner.db_path))?);
        }
        batch.insert(KEY_APPLIED, codec::encode(&(meta.last_log_id, meta.last_membership.clone())));
        self.inner.tree.apply_batch(batch).map_err(StoreError::sled(&self.inner.db_path))?;
        current.state = image.state;
        current.applied = meta.last_log_id;
        current.membership = meta.last_membership.clone();
        self.inner.recent.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.applied_tx.send_replace(last);
        tracing::info!(snapshot = %meta.snapshot_id, bytes = len, ms = started.elapsed().as_millis() as u64, "snapshot installed");
        Ok(())
    }

    /// The newest snapshot this node has (built or installed).
    pub fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let meta = self.inner.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = meta.as_ref() else { return Ok(None) };
        let path = snapshot::file_path(&self.inner.dir);
        let bytes = std::fs::read(&path).map_err(StoreError::io(&path))?;
        Ok(Some(Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(bytes)) }))
    }
}

/// Runs `work` on tokio's blocking pool. Encoding or decoding a large state takes seconds of CPU: on a runtime
/// worker it would starve the node's Raft RPCs and timers (a restarted member then missed heartbeats and
/// campaigned while it caught up).
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.spawn_blocking(work).await.unwrap_or_else(|e| Err(StoreError::Join(e.to_string()))),
        Err(_) => work(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let this = self.clone();
        off_runtime(move || this.build()).await.map_err(StoreError::into_write)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<Applied, StorageError<NodeId>> {
        let current = self.read();
        Ok((current.applied, current.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Executed>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries).map_err(StoreError::into_write)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let (this, meta) = (self.clone(), meta.clone());
        off_runtime(move || this.install(&meta, snapshot.into_inner())).await.map_err(StoreError::into_write)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let this = self.clone();
        off_runtime(move || this.current_snapshot()).await.map_err(StoreError::into_read)
    }
}
