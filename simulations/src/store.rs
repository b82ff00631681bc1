//! Simulated storage of one coordinator node: a log store whose writes reach "disk" only after a simulated fsync
//! (the delay is the node's current disk speed, so a slow disk is a fault like any other), and the real state
//! machine — `shared-model`'s fold, executed per entry exactly as `raft-store` executes it — kept in memory.
//!
//! What a crash keeps is what was flushed: [`Disk::crash`] drops every write still waiting for its fsync. The log
//! store acknowledges an append to openraft only once it is flushed, as `raft-store` does with sled; the planted
//! bug [`crate::Bug::AckBeforeFlush`] acknowledges at once. The state machine starts from the disk's newest
//! snapshot (kept durably, as raft-store's snapshot file) and openraft re-applies the committed log after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, Vote,
};
use shared_model::{Executed, State};

use crate::history::History;
use crate::{Node, NodeId, SimConfig};

type Entry = openraft::Entry<SimConfig>;

/// A write waiting for its fsync.
#[derive(Debug, Clone)]
enum Write {
    Append(Vec<Entry>),
    TruncateFrom(u64),
    PurgeUpto(u64),
    Committed(Option<LogId<NodeId>>),
}

/// The log as some moment sees it.
#[derive(Debug, Clone, Default)]
struct LogImage {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

impl LogImage {
    fn apply(&mut self, write: &Write) {
        match write {
            Write::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry.clone());
                }
            }
            Write::TruncateFrom(index) => {
                self.entries.split_off(index);
            }
            Write::PurgeUpto(index) => {
                self.entries = self.entries.split_off(&(index + 1));
            }
            Write::Committed(committed) => self.committed = *committed,
        }
    }
}

struct DiskInner {
    /// What survives a crash.
    durable: LogImage,
    /// The running node's view: durable plus the writes in flight.
    view: LogImage,
    /// Writes not flushed yet, oldest first, each with its sequence number.
    pending: Vec<(u64, Write)>,
    next_write: u64,
    flushed_upto: u64,
    /// Bumped by a crash: flushes started before it do nothing.
    life: u64,
    /// How long an fsync takes now.
    fsync: Duration,
    /// The newest snapshot, written durably before the call that wrote it returns (as raft-store writes its
    /// snapshot file: write, fsync, rename).
    snapshot: Option<(SnapshotMeta<NodeId, Node>, Vec<u8>)>,
}

/// One node's disk: survives the node's crashes.
#[derive(Clone)]
pub struct Disk {
    inner: Arc<Mutex<DiskInner>>,
    ack_before_flush: bool,
}

impl Disk {
    pub fn new(ack_before_flush: bool) -> Self {
        Disk {
            inner: Arc::new(Mutex::new(DiskInner {
                durable: LogImage::default(),
                view: LogImage::default(),
                pending: Vec::new(),
                next_write: 1,
                flushed_upto: 0,
                life: 0,
                fsync: Duration::from_millis(1),
                snapshot: None,
            })),
            ack_before_flush,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how long an fsync takes (a slow disk).
    pub fn set_fsync(&self, fsync: Duration) {
        self.lock().fsync = fsync;
    }

    /// The node died: writes not flushed are gone (described in the result).
    pub fn crash(&self) -> String {
        let mut disk = self.lock();
        let lost = disk
            .pending
            .iter()
            .map(|(_, w)| match w {
                Write::Append(entries) => format!(
                    "append {}..={}",
                    entries.first().map_or(0, |e| e.log_id.index),
                    entries.last().map_or(0, |e| e.log_id.index)
                ),
                Write::TruncateFrom(i) => format!("truncate from {i}"),
                Write::PurgeUpto(i) => format!("purge up to {i}"),
                Write::Committed(c) => format!("committed {:?}", c.map(|c| c.index)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        disk.pending.clear();
        disk.view = disk.durable.clone();
        disk.life += 1;
        if lost.is_empty() {
            "no unflushed writes lost".into()
        } else {
            format!("unflushed writes lost: {lost}")
        }
    }

    /// Keeps a snapshot of the node life `life` (a crashed life's late build writes nothing).
    fn save_snapshot(&self, life: u64, meta: &SnapshotMeta<NodeId, Node>, bytes: &[u8]) {
        let mut disk = self.lock();
        let newer = disk.snapshot.as_ref().is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id);
        if disk.life == life && newer {
            disk.snapshot = Some((meta.clone(), bytes.to_vec()));
        }
    }

    /// The life writes belong to now.
    fn life(&self) -> u64 {
        self.lock().life
    }

    /// Queues a write of the node life `life`; returns its number, the life and the fsync delay, or None when that
    /// life has ended (a crashed node's last tasks write nothing).
    fn write(&self, life: u64, write: Write) -> Option<(u64, u64, Duration)> {
        let mut disk = self.lock();
        if disk.life != life {
            return None;
        }
        disk.view.apply(&write);
        let n = disk.next_write;
        disk.next_write += 1;
        disk.pending.push((n, write));
        Some((n, disk.life, disk.fsync))
    }

    /// Makes every write up to `n` durable (in order), unless the node crashed since.
    fn flush(&self, n: u64, life: u64) -> bool {
        let mut disk = self.lock();
        if disk.life != life {
            return false;
        }
        if disk.flushed_upto >= n {
            return true;
        }
        let keep = disk.pending.iter().position(|(m, _)| *m > n).unwrap_or(disk.pending.len());
        let done: Vec<(u64, Write)> = disk.pending.drain(..keep).collect();
        for (_, write) in &done {
            disk.durable.apply(write);
        }
        disk.flushed_upto = n;
        true
    }

    async fn write_and_flush(&self, life: u64, write: Write) -> bool {
        let Some((n, life, fsync)) = self.write(life, write) else { return false };
        tokio::time::sleep(fsync).await;
        self.flush(n, life)
    }
}

/// The log store openraft talks to.
#[derive(Clone)]
pub struct SimLogStore {
    disk: Disk,
    /// The disk life this node life writes in.
    life: u64,
}

impl SimLogStore {
    pub fn new(disk: Disk) -> Self {
        let life = disk.life();
        SimLogStore { disk, life }
    }
}

#[allow(clippy::result_large_err)] // openraft's own error type
fn crashed<T>() -> Result<T, StorageError<NodeId>> {
    Err(StorageError::IO {
        source: openraft::StorageIOError::write(openraft::AnyError::error("the node crashed during the write")),
    })
}

impl RaftLogReader<SimConfig> for SimLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let disk = self.disk.lock();
        Ok(disk.view.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<SimConfig> for SimLogStore {
    type LogReader = SimLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, StorageError<NodeId>> {
        let disk = self.disk.lock();
        let last = disk.view.entries.values().next_back().map(|e| e.log_id).or(disk.view.purged);
        Ok(LogState { last_purged_log_id: disk.view.purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // A vote is written and flushed before it is answered, with everything queued before it.
        let (n, life, fsync) = {
            let mut disk = self.disk.lock();
            if disk.life != self.life {
                return crashed();
            }
            disk.view.vote = Some(*vote);
            let n = disk.next_write.saturating_sub(1);
            (n, disk.life, disk.fsync)
        };
        tokio::time::sleep(fsync).await;
        if !self.disk.flush(n, life) {
            return crashed();
        }
        let mut disk = self.disk.lock();
        if disk.life == life {
            disk.durable.vote = Some(*vote);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.disk.lock().view.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Flushed before it returns, as raft-store does: openraft applies (and serves reads from) entries only after
        // this returns, and a leader that restarts in its own term reads at the committed index it finds on disk.
        // Left unflushed, that index can lag what reads were already served (the simulation found exactly that).
        if !self.disk.write_and_flush(self.life, Write::Committed(committed)).await {
            return crashed();
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.disk.lock().view.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<SimConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let Some((n, life, fsync)) = self.disk.write(self.life, Write::Append(entries.into_iter().collect())) else {
            return crashed();
        };
        if self.disk.ack_before_flush {
            callback.log_io_completed(Ok(()));
            let disk = self.disk.clone();
            tokio::spawn(async move {
                tokio::time::sleep(fsync).await;
                disk.flush(n, life);
            });
            return Ok(());
        }
        let disk = self.disk.clone();
        tokio::spawn(async move {
            tokio::time::sleep(fsync).await;
            if disk.flush(n, life) {
                callback.log_io_completed(Ok(()));
            }
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        if !self.disk.write_and_flush(self.life, Write::TruncateFrom(log_id.index)).await {
            return crashed();
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut disk = self.disk.lock();
            if disk.life != self.life {
                return crashed();
            }
            disk.view.purged = Some(log_id);
        }
        if !self.disk.write_and_flush(self.life, Write::PurgeUpto(log_id.index)).await {
            return crashed();
        }
        self.disk.lock().durable.purged = Some(log_id);
        Ok(())
    }
}

struct Machine {
    state: State,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Node>,
    snapshot: Option<(SnapshotMeta<NodeId, Node>, Vec<u8>)>,
}

/// The state machine of one node's life: it starts from the disk's snapshot (or empty) and openraft re-applies
/// the committed log after it; applied records are volatile, as in raft-store.
#[derive(Clone)]
pub struct SimStateMachine {
    node: NodeId,
    life: u32,
    machine: Arc<Mutex<Machine>>,
    history: History,
    disk: Disk,
    disk_life: u64,
}

impl SimStateMachine {
    pub fn new(node: NodeId, life: u32, history: History, disk: Disk) -> Self {
        let disk_life = disk.life();
        let stored = disk.lock().snapshot.clone();
        let machine = match stored {
            Some((meta, bytes)) => {
                let image = raft_store::snapshot::decode(&bytes, std::path::Path::new("<simulated disk>"))
                    .expect("the simulated disk keeps what raft-store's codec wrote");
                Machine {
                    state: image.state,
                    applied: meta.last_log_id,
                    membership: meta.last_membership.clone(),
                    snapshot: Some((meta, bytes)),
                }
            }
            None => Machine {
                state: State::default(),
                applied: None,
                membership: StoredMembership::default(),
                snapshot: None,
            },
        };
        SimStateMachine { node, life, machine: Arc::new(Mutex::new(machine)), history, disk, disk_life }
    }

    /// The last index of the snapshot this life started from, if it started from one.
    pub fn restored_from(&self) -> Option<u64> {
        self.lock().snapshot.as_ref().and_then(|(meta, _)| meta.last_log_id.map(|l| l.index))
    }

    /// Reads the state as of now.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.machine.lock().unwrap_or_else(|p| p.into_inner()).state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<SimConfig> for SimStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<SimConfig>, StorageError<NodeId>> {
        let mut machine = self.lock();
        let meta = SnapshotMeta {
            last_log_id: machine.applied,
            last_membership: machine.membership.clone(),
            snapshot_id: format!("{}-{:?}", self.node, machine.applied.map(|l| l.index)),
        };
        let bytes = raft_store::snapshot::encode(&meta, &machine.state);
        self.disk.save_snapshot(self.disk_life, &meta, &bytes);
        machine.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<SimConfig> for SimStateMachine {
    type SnapshotBuilder = SimStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let machine = self.lock();
        Ok((machine.applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Executed>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut machine = self.lock();
        let mut out = Vec::new();
        for entry in entries {
            let executed = raft_store::execute_payload(&mut machine.state, entry.log_id.index, &entry.payload);
            if let EntryPayload::Membership(m) = &entry.payload {
                machine.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            machine.applied = Some(entry.log_id);
            self.history.applied(self.node, self.life, entry.log_id.index, &executed);
            out.push(executed);
        }
        self.history.offer_state(&machine.state);
        Ok(out)
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
        let bytes = snapshot.into_inner();
        let image = raft_store::snapshot::decode(&bytes, std::path::Path::new("<simulated snapshot>"))
            .map_err(|e| StorageError::IO { source: openraft::StorageIOError::read(&e) })?;
        self.disk.save_snapshot(self.disk_life, meta, &bytes);
        let mut machine = self.lock();
        machine.state = image.state;
        machine.applied = meta.last_log_id;
        machine.membership = meta.last_membership.clone();
        machine.snapshot = Some((meta.clone(), bytes));
        self.history.offer_state(&machine.state);
        self.history.installed(self.node, self.life, meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<SimConfig>>, StorageError<NodeId>> {
        let machine = self.lock();
        Ok(machine
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(bytes.clone())) }))
    }
}
