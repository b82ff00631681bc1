//! The Raft log on sled: entries, vote, committed and purged log ids in one tree, so that every change is one
//! atomic sled batch. Appends and votes are acknowledged only after sled has flushed them to disk.
//!
//! Keys: `e` + index (u64 big-endian, so the tree's order is the log's order) for entries; `m/vote`,
//! `m/committed`, `m/purged` for metadata. Values use the checksummed codec of `shared-model`, so a garbled value
//! is reported as damage with its index instead of being decoded into nonsense.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageError, Vote};
use serde::de::DeserializeOwned;
use shared_model::codec;

use crate::error::StoreError;
use crate::flusher::{Flusher, Pending, Waiter};
use crate::high_water::{self, HighWater};
use crate::{LogEntry, NodeId, TypeConfig};

const ENTRY_PREFIX: u8 = b'e';
const KEY_VOTE: &[u8] = b"m/vote";
const KEY_COMMITTED: &[u8] = b"m/committed";
const KEY_PURGED: &[u8] = b"m/purged";

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn index_of(key: &[u8]) -> Option<u64> {
    (key.len() == 9 && key[0] == ENTRY_PREFIX).then(|| u64::from_be_bytes(key[1..].try_into().expect("8 bytes")))
}

fn decode_entry(path: &PathBuf, index: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
    let entry: LogEntry =
        codec::decode(bytes).map_err(|e| StoreError::damaged(path, format!("log entry {index}: {e}")))?;
    if entry.log_id.index != index {
        return Err(StoreError::damaged(
            path,
            format!("log entry stored at index {index} says it is entry {}", entry.log_id.index),
        ));
    }
    Ok(entry)
}

/// The durable Raft log. Cheap to clone; clones share the same tree (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    high_water: Arc<HighWater>,
    flusher: Flusher,
    /// Most bytes of entries one replication read returns (always at least one entry).
    max_read_bytes: u64,
    /// Bytes of entries appended since the store was opened (drives snapshots by size).
    appended_bytes: std::sync::atomic::AtomicU64,
}

impl LogStore {
    /// Checks the log inside an open sled database: every entry decodes, indices have no hole, nothing precedes
    /// the purge point, and nothing acknowledged (see the high-water mark) is missing. Returns the last present
    /// index (or the purge point), for [`LogStore::open`].
    pub(crate) fn check(db: &sled::Db, path: &Path, hwm_path: &Path) -> Result<Option<u64>, StoreError> {
        let path = path.to_path_buf();
        let tree = db.open_tree("raft_log").map_err(StoreError::sled(&path))?;
        let mark = high_water::read(hwm_path)?;
        let last = Self::verify(&tree, &path)?;
        // The mark counts entries: one past the last acknowledged index (0 = nothing acknowledged).
        let present = last.map_or(0, |l| l + 1);
        if let Some(mark) = mark {
            if present < mark {
                return Err(StoreError::damaged(
                    &path,
                    format!(
                        "the log ends at {} but entries up to {} were acknowledged (see raft.hwm): the database file was truncated or garbled",
                        last.map_or("nothing".to_string(), |l| l.to_string()),
                        mark - 1,
                    ),
                ));
            }
        }
        Ok(last)
    }

    /// Opens the log inside an open sled database, as [`LogStore::check`] found it (`last`).
    pub(crate) fn open(
        db: sled::Db,
        path: PathBuf,
        hwm_path: PathBuf,
        max_read_bytes: u64,
        last: Option<u64>,
    ) -> Result<Self, StoreError> {
        let tree = db.open_tree("raft_log").map_err(StoreError::sled(&path))?;
        let present = last.map_or(0, |l| l + 1);
        let high_water = Arc::new(HighWater::open(hwm_path, present)?);
        let flusher = Flusher::start(db.clone(), high_water.clone()).map_err(StoreError::io(&path))?;
        let appended_bytes = std::sync::atomic::AtomicU64::new(0);
        Ok(LogStore { inner: Arc::new(Inner { db, tree, path, high_water, flusher, max_read_bytes, appended_bytes }) })
    }

    fn path(&self) -> &PathBuf {
        &self.inner.path
    }

    fn meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.inner.tree.get(key).map_err(StoreError::sled(self.path()))? {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| {
                StoreError::damaged(self.path(), format!("metadata {:?}: {e}", String::from_utf8_lossy(key)))
            }),
        }
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<LogEntry, StoreError> {
        decode_entry(self.path(), index, bytes)
    }

    /// Checks every stored value and the log's shape; returns the last present index (or the purge point).
    fn verify(tree: &sled::Tree, path: &PathBuf) -> Result<Option<u64>, StoreError> {
        let meta =
            |key: &[u8]| -> Result<Option<sled::IVec>, StoreError> { tree.get(key).map_err(StoreError::sled(path)) };
        let damaged = |key: &[u8], e: codec::CodecError| {
            StoreError::damaged(path, format!("metadata {:?}: {e}", String::from_utf8_lossy(key)))
        };
        let purged: Option<LogId<NodeId>> = match meta(KEY_PURGED)? {
            Some(b) => Some(codec::decode(&b).map_err(|e| damaged(KEY_PURGED, e))?),
            None => None,
        };
        if let Some(b) = meta(KEY_VOTE)? {
            codec::decode::<Vote<NodeId>>(&b).map_err(|e| damaged(KEY_VOTE, e))?;
        }
        if let Some(b) = meta(KEY_COMMITTED)? {
            codec::decode::<Option<LogId<NodeId>>>(&b).map_err(|e| damaged(KEY_COMMITTED, e))?;
        }
        let mut previous: Option<u64> = None;
        for item in tree.range(entry_key(0)..=entry_key(u64::MAX)) {
            let (key, value) = item.map_err(StoreError::sled(path))?;
            let index = index_of(&key).ok_or_else(|| StoreError::damaged(path, "malformed log key"))?;
            decode_entry(path, index, &value)?;
            if let Some(p) = purged {
                if index <= p.index {
                    return Err(StoreError::damaged(path, format!("entry {index} survives purge up to {}", p.index)));
                }
            }
            if let Some(prev) = previous {
                if index != prev + 1 {
                    return Err(StoreError::damaged(path, format!("hole in the log between {prev} and {index}")));
                }
            }
            previous = Some(index);
        }
        Ok(previous.or(purged.map(|p| p.index)))
    }

    /// Entries in `range`, read and checked.
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<LogEntry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(entry_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(entry_key(i)),
            Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
        };
        let mut out = Vec::new();
        for item in self.inner.tree.range((Bound::Included(entry_key(start)), end)) {
            let (key, value) = item.map_err(StoreError::sled(self.path()))?;
            let index = index_of(&key).ok_or_else(|| StoreError::damaged(self.path(), "malformed log key"))?;
            out.push(self.decode_entry(index, &value)?);
        }
        Ok(out)
    }

    /// Entries from `start` (inclusive) to `end` (exclusive), stopping before the one that would take the stored
    /// bytes read past `max_bytes`; the first entry is always returned, whatever its size. This is what keeps an
    /// AppendEntries RPC small enough to cross the network and be flushed by the follower within its deadline,
    /// however large the entries a busy leader batched.
    pub fn entries_up_to_bytes(&self, start: u64, end: u64, max_bytes: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        if start >= end {
            return Ok(out);
        }
        for item in self.inner.tree.range(entry_key(start)..entry_key(end)) {
            let (key, value) = item.map_err(StoreError::sled(self.path()))?;
            let index = index_of(&key).ok_or_else(|| StoreError::damaged(self.path(), "malformed log key"))?;
            bytes += value.len() as u64;
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(self.decode_entry(index, &value)?);
        }
        Ok(out)
    }

    /// Bytes of entries appended since the store was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.inner.appended_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last purged and last present log ids.
    pub fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let purged: Option<LogId<NodeId>> = self.meta(KEY_PURGED)?;
        let last = match self.inner.tree.range(entry_key(0)..=entry_key(u64::MAX)).next_back() {
            Some(item) => {
                let (key, value) = item.map_err(StoreError::sled(self.path()))?;
                let index = index_of(&key).ok_or_else(|| StoreError::damaged(self.path(), "malformed log key"))?;
                Some(self.decode_entry(index, &value)?.log_id)
            }
            None => purged,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    /// Writes entries as one atomic batch into sled (not yet durable) and queues `waiter` for the group flush.
    fn append_then_flush(&self, entries: impl IntoIterator<Item = LogEntry>, waiter: Waiter) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut last = None;
        let mut bytes = 0;
        for entry in entries {
            let value = codec::encode(&entry);
            bytes += value.len() as u64;
            batch.insert(&entry_key(entry.log_id.index), value);
            last = Some(entry.log_id.index);
        }
        self.inner.appended_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        let mark = match last {
            Some(last) => {
                self.inner.tree.apply_batch(batch).map_err(StoreError::sled(self.path()))?;
                last + 1
            }
            None => 0,
        };
        self.inner.flusher.enqueue(Pending { waiter, mark });
        Ok(())
    }

    /// Appends entries as one atomic batch and returns once sled has flushed them to disk.
    pub async fn append_durably(&self, entries: impl IntoIterator<Item = LogEntry>) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append_then_flush(entries, Waiter::Local(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::damaged(self.path(), format!("flush failed: {e}"))),
            Err(_) => Err(StoreError::damaged(self.path(), "the log flusher stopped")),
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await.map_err(StoreError::sled(self.path()))?;
        Ok(())
    }

    /// The saved vote.
    pub fn vote(&self) -> Result<Option<Vote<NodeId>>, StoreError> {
        self.meta(KEY_VOTE)
    }

    /// The saved committed log id.
    pub fn committed(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        Ok(self.meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    /// Deletes entries from `index` on (conflicting entries replaced by a new leader), durably.
    pub async fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        // Let queued flushes finish first, so none of them raises the high-water mark after we lower it.
        self.append_durably(std::iter::empty()).await?;
        let mut batch = sled::Batch::default();
        for key in self.inner.tree.range(entry_key(index)..=entry_key(u64::MAX)).keys() {
            batch.remove(key.map_err(StoreError::sled(self.path()))?);
        }
        self.inner.tree.apply_batch(batch).map_err(StoreError::sled(self.path()))?;
        self.flush().await?;
        self.inner.high_water.lower(index)
    }

    /// Deletes entries up to and including `log_id` (they are in a snapshot) and records the purge point.
    pub async fn purge_upto(&self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.inner.tree.range(entry_key(0)..=entry_key(log_id.index)).keys() {
            batch.remove(key.map_err(StoreError::sled(self.path()))?);
        }
        batch.insert(KEY_PURGED, codec::encode(&log_id));
        self.inner.tree.apply_batch(batch).map_err(StoreError::sled(self.path()))?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<NodeId>> {
        self.entries(range).map_err(StoreError::into_read)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<LogEntry>, StorageError<NodeId>> {
        self.entries_up_to_bytes(start, end, self.inner.max_read_bytes).map_err(StoreError::into_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.log_state().map_err(StoreError::into_read)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let result = async {
            self.inner.tree.insert(KEY_VOTE, codec::encode(vote)).map_err(StoreError::sled(self.path()))?;
            self.flush().await
        };
        result.await.map_err(StoreError::into_write)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.vote().map_err(StoreError::into_read)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Flushed before it returns. openraft applies entries (and serves linearizable reads from them) only
        // after this, and a leader that restarts in its own term reads at max(its first entry, the committed index
        // it finds here): an unflushed index could lag reads already served, and the restarted leader would then
        // answer a stale read. The simulation (simulations/) found exactly that with the index left unflushed.
        self.inner
            .tree
            .insert(KEY_COMMITTED, codec::encode(&committed))
            .map_err(StoreError::sled(self.path()))
            .map_err(StoreError::into_write)?;
        self.flush().await.map_err(StoreError::into_write)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.committed().map_err(StoreError::into_read)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Returns once the entries are in sled; the callback fires after the group flush made them durable.
        self.append_then_flush(entries, Waiter::Raft(callback)).map_err(StoreError::into_write)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.truncate_from(log_id.index).await.map_err(StoreError::into_write)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.purge_upto(log_id).await.map_err(StoreError::into_write)
    }
}
