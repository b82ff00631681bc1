//! The PostgreSQL side, simulated: two producer clusters, each with one published stream table (its rows, its
//! change buffer of batches, its catalog row), and one consumer cluster with the federated table's mirrors and its
//! catalog. Their workers are thin executors of the real protocol machines (`shared_model::protocol`): each round
//! feeds the machine the catalog and performs the actions it returns against the simulated broker and the
//! coordinators — the same division of labour as the extension's publisher and subscriber.
//!
//! The consumer's executor also checks every apply against the committed log (see [`crate::checks`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand08::rngs::StdRng;
use rand08::Rng;
use shared_model::envelope::{Batch, RowAction, RowChange};
use shared_model::protocol::consumer::{self, Consumer, FrontierAnswer, SourceConfig};
use shared_model::protocol::consumer::{AnswerError, ApplyFailure};
use shared_model::protocol::producer::{self, LocalStream, LogView, Producer, SentCopy};
use shared_model::{BatchKind, ColumnDef, Command, Consistency, MessageKey, ProducerFence, StreamId, SystemIdentifier};

use crate::broker::Broker;
use crate::checks::Checker;
use crate::coordinators::Coordinators;
use crate::history::History;

/// A table: row id → values.
pub type Table = BTreeMap<i64, Vec<Option<String>>>;

/// Small messages, so that batches are often split into several envelopes.
const MAX_MESSAGE_BYTES: usize = 400;

/// One batch in a change buffer.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub kind: BatchKind,
    pub rows: Vec<RowChange>,
    pub table_after: Arc<Table>,
}

/// A producer cluster's database: what survives its crashes (and what a backup holds).
#[derive(Debug, Clone, Default)]
pub struct ProducerDb {
    pub table: Table,
    pub buffer: BTreeMap<u64, Buffered>,
    pub published_seq: u64,
    pub proposed_seq: u64,
    /// The epoch the last proposal was stored under.
    pub proposed_epoch: u64,
    pub last_batch_seq: u64,
    pub next_row: i64,
    pub last_error: Option<String>,
    /// Which server holds this database now (bumped by a failover: the old server's worker is dead).
    pub server: u64,
    /// The server's system identifier (a restored copy keeps it).
    pub system_identifier: SystemIdentifier,
    /// The producer epoch stored at registration or takeover (in the catalog, so a backup holds the old one).
    pub epoch: u64,
    /// The stream's incarnation, stored at publication.
    pub incarnation: u64,
}

/// The federation's message key in every simulated world (issued through the coordinators at setup, as the
/// real coordinators do at the first registration).
pub fn world_key() -> MessageKey {
    MessageKey::from_bytes([0x5a; 32])
}

fn columns() -> Vec<ColumnDef> {
    vec![ColumnDef::new("k", "bigint"), ColumnDef::new("v", "text")]
}

impl ProducerDb {
    /// A refresh that changed a few rows: a delta batch.
    pub fn refresh(&mut self, rng: &mut StdRng) {
        let mut rows = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            let existing: Vec<i64> = self.table.keys().copied().collect();
            let choice = rng.gen_range(0..3);
            if existing.is_empty() || choice == 0 {
                self.next_row += 1;
                let values = vec![Some(self.next_row.to_string()), Some(format!("v{}", rng.gen_range(0..1000)))];
                self.table.insert(self.next_row, values.clone());
                rows.push(RowChange { action: RowAction::Insert, row_id: self.next_row, values });
            } else {
                let row = existing[rng.gen_range(0..existing.len())];
                let old = self.table.remove(&row).expect("an existing row");
                rows.push(RowChange { action: RowAction::Delete, row_id: row, values: old.clone() });
                if choice == 1 {
                    let values = vec![old[0].clone(), Some(format!("u{}", rng.gen_range(0..1000)))];
                    self.table.insert(row, values.clone());
                    rows.push(RowChange { action: RowAction::Insert, row_id: row, values });
                }
            }
        }
        self.push(BatchKind::Delta, rows);
    }

    /// A REINITIALIZE refresh: a snapshot batch of the whole table.
    pub fn snapshot(&mut self) {
        let rows = self
            .table
            .iter()
            .map(|(id, values)| RowChange { action: RowAction::Insert, row_id: *id, values: values.clone() })
            .collect();
        self.push(BatchKind::Snapshot, rows);
    }

    /// The worker's restart under a new epoch: the snapshot becomes batch `committed_seq + 1`, everything before
    /// counts as published (the extension renumbers with a seq shift; here local seqs are the stream's).
    pub fn restart_at(&mut self, committed_seq: u64) {
        self.buffer.clear();
        self.last_batch_seq = committed_seq;
        self.published_seq = committed_seq;
        self.proposed_seq = committed_seq;
        self.proposed_epoch = self.epoch;
        self.snapshot();
    }

    fn push(&mut self, kind: BatchKind, rows: Vec<RowChange>) {
        self.last_batch_seq += 1;
        self.buffer.insert(self.last_batch_seq, Buffered { kind, rows, table_after: Arc::new(self.table.clone()) });
    }
}

/// Applies a batch's rows to a mirror.
pub fn apply_rows(table: &mut Table, batch: &Batch) {
    if batch.kind == BatchKind::Snapshot {
        table.clear();
    }
    for row in &batch.rows {
        match row.action {
            RowAction::Delete => {
                table.remove(&row.row_id);
            }
            RowAction::Insert => {
                table.insert(row.row_id, row.values.clone());
            }
        }
    }
}

/// Every acknowledged copy ever sent: (stream, seq, offset) → the producer's tables after it (the checkers'
/// truth about which content a recorded position holds).
#[derive(Clone, Default)]
pub struct SentArchive {
    inner: Arc<Mutex<CopiesSent>>,
}

/// (stream, seq, offset) → the producer's tables after each copy acknowledged there.
type CopiesSent = BTreeMap<(StreamId, u64, i64), Vec<Arc<Table>>>;

impl SentArchive {
    pub fn record(&self, stream: &StreamId, seq: u64, offset: i64, table: Arc<Table>) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((stream.clone(), seq, offset))
            .or_default()
            .push(table);
    }

    pub fn tables(&self, stream: &StreamId, seq: u64, offset: i64) -> Vec<Arc<Table>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(stream.clone(), seq, offset))
            .cloned()
            .unwrap_or_default()
    }
}

/// Fault rates the workers draw from (changed by the nemesis).
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFaults {
    /// Percent of sends whose acknowledgement is lost after the append.
    pub lost_ack_pct: u32,
    /// Percent of polls that deliver some messages again.
    pub redeliver_pct: u32,
    /// Percent of applies that roll back.
    pub apply_fail_pct: u32,
}

/// A producer cluster's publisher worker.
pub struct ProducerWorker {
    pub stream: StreamId,
    pub db: Arc<Mutex<ProducerDb>>,
    pub machine: Producer,
    /// The broker generation the worker's connection belongs to.
    connection: Option<u64>,
    pub broker: Broker,
    pub coordinators: Coordinators,
    pub history: History,
    pub archive: SentArchive,
    pub started: tokio::time::Instant,
}

impl ProducerWorker {
    pub fn new(
        stream: StreamId,
        db: Arc<Mutex<ProducerDb>>,
        broker: Broker,
        coordinators: Coordinators,
        history: History,
        archive: SentArchive,
    ) -> Self {
        ProducerWorker {
            stream,
            db,
            machine: Producer::new(),
            connection: None,
            broker,
            coordinators,
            history,
            archive,
            started: tokio::time::Instant::now(),
        }
    }

    /// The worker process restarted: a fresh machine, a fresh connection.
    pub fn restart(&mut self) {
        self.machine = Producer::new();
        self.connection = None;
    }

    fn db(&self) -> std::sync::MutexGuard<'_, ProducerDb> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One round of the publisher.
    pub async fn round(&mut self, faults: WorkerFaults, rng: &mut StdRng) {
        let local = {
            let db = self.db();
            LocalStream {
                stream: self.stream.clone(),
                published_seq: db.published_seq,
                proposed_seq: db.proposed_seq,
                proposed_epoch: db.proposed_epoch,
                last_batch_seq: db.last_batch_seq,
                unpublished_snapshot: db
                    .buffer
                    .range(db.published_seq + 1..)
                    .any(|(_, b)| b.kind == BatchKind::Snapshot),
                columns_changed: false,
            }
        };
        if self.connection.is_some_and(|g| g != self.broker.generation()) {
            self.connection = None;
            self.machine.step(producer::Input::BrokerLost);
        }
        let (server, producer_epoch) = {
            let db = self.db();
            (db.server, db.epoch)
        };
        let now_ms = self.started.elapsed().as_millis() as u64;
        self.machine.step(producer::Input::Round { now_ms, producer_epoch, streams: vec![local] });
        let mut steps = 0;
        while let Some(action) = self.machine.next_action() {
            if self.db().server != server {
                return; // this worker's server failed over meanwhile: the process is gone
            }
            steps += 1;
            if steps > 10_000 {
                self.history.violation(format!("{}: the producer's round does not end", self.stream));
                return;
            }
            if let Some(input) = self.perform(action, faults, rng).await {
                self.machine.step(input);
            }
        }
    }

    async fn perform(
        &mut self,
        action: producer::Action,
        faults: WorkerFaults,
        rng: &mut StdRng,
    ) -> Option<producer::Input> {
        use producer::{Action, Input};
        let stream = self.stream.clone();
        Some(match action {
            Action::Republish { .. } => Input::Republished { stream, result: Ok(()) },
            Action::FetchFrontier { .. } => {
                let id = stream.clone();
                let result = self
                    .coordinators
                    .read_frontier(&stream, move |state| LogView {
                        committed_seq: state.frontier(&id).map_or(0, |f| f.seq()),
                        committed_epoch: state.streams().get(&id).map_or(0, |s| s.producer_epoch),
                        pending_reinit: state.streams().get(&id).is_some_and(|s| s.pending_reinit.is_some()),
                    })
                    .await;
                Input::Frontier { stream, result }
            }
            Action::MarkPublished { seq, .. } => {
                let mut db = self.db();
                db.published_seq = db.published_seq.max(seq);
                db.buffer = db.buffer.split_off(&(seq + 1));
                db.last_error = None;
                Input::Marked { stream, seq, result: Ok(()) }
            }
            Action::Restart { committed_seq, .. } => {
                let mut db = self.db();
                db.restart_at(committed_seq);
                db.last_error = None;
                self.history.note(format!(
                    "{stream}: restarted under epoch {}: snapshot is batch {}",
                    db.epoch, db.last_batch_seq
                ));
                Input::Restarted { stream, committed_seq, result: Ok(()) }
            }
            Action::WriteSnapshot { .. } => {
                let mut db = self.db();
                db.snapshot();
                self.history.note(format!("{stream}: snapshot batch {} written", db.last_batch_seq));
                Input::SnapshotWritten { stream, result: Ok(db.last_batch_seq) }
            }
            Action::Send { seq, .. } => {
                let result = self.send(seq, faults, rng);
                if result.is_err() {
                    // A send error drops the connection (as the extension drops its librdkafka producer).
                    self.connection = None;
                    self.machine.step(Input::BrokerLost);
                }
                Input::Sent { stream, seq, result }
            }
            Action::RecordProposal { seq, producer_epoch, .. } => {
                let mut db = self.db();
                db.proposed_seq = db.proposed_seq.max(seq);
                db.proposed_epoch = producer_epoch;
                Input::ProposalRecorded { stream, seq, result: Ok(()) }
            }
            Action::Propose { advances, .. } => {
                let seqs: Vec<u64> = advances.iter().map(|a| a.seq).collect();
                let producer = {
                    let db = self.db();
                    ProducerFence {
                        cluster: stream.cluster().clone(),
                        system_identifier: db.system_identifier,
                        producer_epoch: db.epoch,
                    }
                };
                let command = Command::AdvanceFrontier { producer, advances };
                let result = match self.coordinators.write("producer", command).await {
                    Ok(executed) => executed.result.map(|_| ()).map_err(|e| e.to_string()),
                    Err(error) => Err(error),
                };
                self.history.note(format!("{stream}: propose {seqs:?}: {result:?}"));
                Input::Proposed { stream, result }
            }
            Action::ReportError { error, .. } => {
                self.history.note(format!("{stream}: error: {error}"));
                self.db().last_error = Some(error);
                return None;
            }
        })
    }

    fn send(&mut self, seq: u64, faults: WorkerFaults, rng: &mut StdRng) -> Result<SentCopy, String> {
        let generation = self.broker.generation();
        if self.connection.is_some_and(|g| g != generation) {
            return Err("broker connection lost".into());
        }
        self.connection = Some(generation);
        let Some(buffered) = self.db().buffer.get(&seq).cloned() else {
            return Err(format!("batch {seq} is no longer in its change buffer"));
        };
        let (incarnation, producer_epoch) = {
            let db = self.db();
            (db.incarnation, db.epoch)
        };
        let batch = Batch {
            stream: self.stream.clone(),
            incarnation,
            producer_epoch,
            seq,
            kind: buffered.kind,
            columns: columns(),
            rows: buffered.rows,
        };
        let messages = batch.encode_chunks(MAX_MESSAGE_BYTES, &world_key()).map_err(|e| e.to_string())?;
        let offset = self.broker.append(&self.stream, messages, buffered.table_after.clone());
        self.archive.record(&self.stream, seq, offset, buffered.table_after);
        if rng.gen_range(0..100) < faults.lost_ack_pct {
            return Err("message timed out (the broker appended it; the acknowledgement was lost)".into());
        }
        Ok(SentCopy { kind: batch.kind, offset })
    }
}

/// The consumer cluster's database: catalog rows and mirrors (what survives its crashes).
#[derive(Debug, Clone, Default)]
pub struct ConsumerDb {
    pub applied: BTreeMap<StreamId, (u64, Option<i64>)>,
    pub mirrors: BTreeMap<StreamId, Table>,
    /// The incarnation each mirror follows (bound on the first answer).
    pub incarnations: BTreeMap<StreamId, Option<u64>>,
    pub applies: u64,
}

/// The consumer cluster's subscriber worker.
pub struct ConsumerWorker {
    pub sources: Vec<StreamId>,
    pub consistency: Consistency,
    pub db: ConsumerDb,
    pub machine: Consumer,
    positions: BTreeMap<StreamId, i64>,
    connection: Option<u64>,
    pub broker: Broker,
    pub coordinators: Coordinators,
    pub history: History,
    pub checker: Checker,
    pub started: tokio::time::Instant,
    /// The consumer's wall clock runs this far from the others (clock skew; shown lag only).
    pub skew_ms: i64,
    statuses: BTreeMap<StreamId, consumer::SourceState>,
}

const TABLE: consumer::TableKey = 1;

impl ConsumerWorker {
    pub fn new(
        sources: Vec<StreamId>,
        consistency: Consistency,
        broker: Broker,
        coordinators: Coordinators,
        history: History,
        checker: Checker,
    ) -> Self {
        let db = ConsumerDb {
            applied: sources.iter().map(|s| (s.clone(), (0, None))).collect(),
            mirrors: sources.iter().map(|s| (s.clone(), Table::new())).collect(),
            incarnations: sources.iter().map(|s| (s.clone(), None)).collect(),
            applies: 0,
        };
        ConsumerWorker {
            sources,
            consistency,
            db,
            machine: Consumer::new(),
            positions: BTreeMap::new(),
            connection: None,
            broker,
            coordinators,
            history,
            checker,
            started: tokio::time::Instant::now(),
            skew_ms: 0,
            statuses: BTreeMap::new(),
        }
    }

    /// The worker process restarted: a fresh machine; the catalog and mirrors are as committed.
    pub fn restart(&mut self) {
        self.machine = Consumer::new();
        self.connection = None;
        self.positions.clear();
    }

    pub async fn round(&mut self, faults: WorkerFaults, rng: &mut StdRng) {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let wall_ms = (now_ms as i64 + 1_700_000_000_000 + self.skew_ms).max(0) as u64;
        let connected = self.connection == Some(self.broker.generation());
        let sources = self
            .sources
            .iter()
            .map(|s| SourceConfig {
                stream: s.clone(),
                table: TABLE,
                consistency: self.consistency,
                applied_seq: self.db.applied[s].0,
                applied_offset: self.db.applied[s].1,
                incarnation: self.db.incarnations[s],
            })
            .collect();
        self.machine.step(consumer::Input::Round { now_ms, wall_ms, connected, key: world_key(), sources });
        let mut steps = 0;
        while let Some(action) = self.machine.next_action() {
            steps += 1;
            if steps > 10_000 {
                self.history.violation("the consumer's round does not end");
                return;
            }
            if let Some(input) = self.perform(action, faults, rng).await {
                self.machine.step(input);
            }
        }
    }

    async fn perform(
        &mut self,
        action: consumer::Action,
        faults: WorkerFaults,
        rng: &mut StdRng,
    ) -> Option<consumer::Input> {
        use consumer::{Action, Input};
        Some(match action {
            Action::Assign { positions } => {
                self.connection = Some(self.broker.generation());
                for (stream, next) in positions {
                    self.positions.insert(stream, next.unwrap_or(0));
                }
                Input::Assigned { result: Ok(()) }
            }
            Action::Poll => {
                if self.connection != Some(self.broker.generation()) {
                    return Some(Input::Polled {
                        messages: Vec::new(),
                        error: Some("broker connection lost".into()),
                        disconnected: true,
                    });
                }
                let mut messages = Vec::new();
                for stream in &self.sources {
                    let from = self.positions.get(stream).copied().unwrap_or(0);
                    let limit = rng.gen_range(1..=12);
                    let read = self.broker.read(stream, from, limit);
                    let end = self.broker.end(stream);
                    let next = (from + limit as i64).min(end).max(from);
                    self.positions.insert(stream.clone(), next);
                    for (offset, stored) in read {
                        messages.push(consumer::Message { stream: stream.clone(), offset, payload: stored.payload });
                    }
                    if rng.gen_range(0..100) < faults.redeliver_pct {
                        // Redelivery: some of what was read before comes again.
                        let again = self.broker.read(stream, (from - 3).max(0), 3);
                        messages.extend(again.into_iter().map(|(offset, stored)| consumer::Message {
                            stream: stream.clone(),
                            offset,
                            payload: stored.payload,
                        }));
                    }
                }
                Input::Polled { messages, error: None, disconnected: false }
            }
            Action::FetchFrontiers { after } => {
                let mut answers = Vec::new();
                for (stream, after_seq) in after {
                    let id = stream.clone();
                    let answer = self
                        .coordinators
                        .read_frontier(&stream, move |state| {
                            state.streams().get(&id).map(|s| FrontierAnswer {
                                frontier: s.frontier.tail_after(after_seq),
                                pending_reinit: s.pending_reinit.is_some(),
                                as_of: state.last_applied(),
                                incarnation: s.incarnation,
                            })
                        })
                        .await
                        .map_err(AnswerError::Unreachable)
                        .and_then(|a| a.ok_or_else(|| AnswerError::Refused("the stream is not published".to_string())));
                    let failed = answer.is_err();
                    answers.push((stream, answer));
                    if failed {
                        break;
                    }
                }
                Input::Frontiers { answers }
            }
            Action::Apply { table, cut_at, seqs } => {
                let applied: Vec<(StreamId, u64)> =
                    seqs.iter().filter_map(|(s, q)| q.last().map(|l| (s.clone(), *l))).collect();
                if rng.gen_range(0..100) < faults.apply_fail_pct {
                    return Some(Input::Applied {
                        table,
                        applied,
                        result: Err(ApplyFailure::Failed("could not serialize access".into())),
                    });
                }
                self.apply(cut_at, &seqs);
                Input::Applied { table, applied, result: Ok(()) }
            }
            Action::RequestReinitialize { stream, reason } => {
                self.history.note(format!("consumer: {stream}: asks for a snapshot: {reason}"));
                let result = match self
                    .coordinators
                    .write("consumer", Command::RequestReinitialize { stream: stream.clone(), reason })
                    .await
                {
                    Ok(executed) => executed.result.map(|_| ()).map_err(|e| e.to_string()),
                    Err(error) => Err(error),
                };
                Input::ReinitRequested { stream, result }
            }
            Action::RefreshFederated { .. } => return None,
            Action::Reset { stream, incarnation, forget, reason } => {
                self.history.note(format!("consumer: {stream}: reset: {reason}"));
                self.db.incarnations.insert(stream.clone(), Some(incarnation));
                if forget {
                    self.db.applied.insert(stream.clone(), (0, None));
                    self.db.mirrors.insert(stream.clone(), Table::new());
                }
                Input::Reset { stream, result: Ok(()) }
            }
            Action::SetStatus { stream, status } => {
                if self.statuses.get(&stream) != Some(&status.state) {
                    self.history.note(format!(
                        "consumer: {stream}: {} {}",
                        status.state.as_str(),
                        status.detail.unwrap_or_default()
                    ));
                    self.statuses.insert(stream, status.state);
                }
                return None;
            }
        })
    }

    /// One apply transaction: every held batch in order, checked against the committed log.
    fn apply(&mut self, cut_at: Option<shared_model::LogIndex>, seqs: &[(StreamId, Vec<u64>)]) {
        let mut next = self.db.clone();
        for (stream, path) in seqs {
            for seq in path {
                let Some(held) = self.machine.held(stream, *seq) else {
                    self.history.violation(format!("{stream}: asked to apply {seq}, which it does not hold"));
                    return;
                };
                let (applied, _) = next.applied[stream];
                self.checker.check_apply(stream, applied, held, path.first() == Some(seq));
                apply_rows(next.mirrors.get_mut(stream).expect("a mirror per source"), &held.batch);
                let entry = next.applied.get_mut(stream).expect("a catalog row per source");
                entry.0 = *seq;
                entry.1 = Some(entry.1.map_or(held.offset, |o| o.max(held.offset)));
            }
            if let Some(last) = path.last() {
                self.checker.check_content(stream, *last, &next.mirrors[stream]);
                self.history.note(format!("consumer: applied {stream} {path:?}"));
            }
        }
        if let Some(t) = cut_at {
            let applied: BTreeMap<StreamId, u64> = next.applied.iter().map(|(s, (q, _))| (s.clone(), *q)).collect();
            self.checker.check_cut(&applied, t);
        }
        next.applies += 1;
        self.db = next;
    }
}
