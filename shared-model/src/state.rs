//! The coordinator's state: the fold of the event log.
//!
//! [`State::execute`] decides a request (through [`crate::decide`]), folds the events it produced and remembers the
//! result under the request's idempotency key; it returns an [`Executed`] record, which is exactly what the
//! durable store keeps per log entry. [`State::replay`] folds such a record again, so a node rebuilds its state
//! from a snapshot plus the records after it. Serialization covers the data only (ordered maps, so the bytes are
//! deterministic); the global DAG and the subscriber index are derived and rebuilt on load.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::command::Request;
use crate::dag::{GlobalDag, NodeKey};
use crate::decide::decide;
use crate::error::CommandError;
use crate::event::{Applied, Event};
use crate::frontier::{cut_at, Cut, Frontier, FrontierPoint, HistoryTruncated};
use crate::idempotency::{fingerprint, IdempotencyCache, Remembered, StoredResult};
use crate::ids::{
    ClusterName, FederatedTableId, FederationName, IdempotencyKey, Ident, SourceUrl, StreamId, SystemIdentifier,
};
use crate::message_key::MessageKey;
use crate::model::{ChangeLogSettings, CheckpointRecord, ColumnDef, Consistency, LogIndex};

/// The federation's own settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FederationSettings {
    /// The host part of every source URL.
    pub name: FederationName,
    /// Broker settings handed to clusters.
    pub changelog: ChangeLogSettings,
}

impl Default for FederationSettings {
    fn default() -> Self {
        FederationSettings { name: FederationName::parse("coordinator").expect("valid"), changelog: Default::default() }
    }
}

/// A registered cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// How to reach it (a libpq URL or host:port; informational).
    pub endpoint: String,
    /// What its extension supports.
    pub capabilities: BTreeSet<Ident>,
    /// The PostgreSQL server the name is bound to.
    pub system_identifier: SystemIdentifier,
    /// The current producer epoch: only advances under it are accepted (changes by explicit takeover only).
    pub producer_epoch: u64,
    /// When it first registered.
    pub registered_at: LogIndex,
    /// Its newest recorded checkpoint.
    pub last_checkpoint: Option<CheckpointRecord>,
}

/// A pending request for a snapshot batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReinit {
    /// Counts requests per stream.
    pub epoch: u64,
    /// Why it was requested.
    pub reason: String,
    /// When.
    pub requested_at: LogIndex,
}

/// A published stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Columns of the mirror consumers create.
    pub columns: Vec<ColumnDef>,
    /// Published streams and federated tables of the same cluster it reads.
    pub upstream: BTreeSet<NodeKey>,
    /// Incremented when the columns change.
    pub schema_version: u32,
    /// When it was first published.
    pub published_at: LogIndex,
    /// This life of the stream (see [`Event::StreamPublished`]); never rebased, so a consumer's stored
    /// incarnation stays comparable across a coordinator restore.
    pub incarnation: u64,
    /// Its committed frontier.
    pub frontier: Frontier,
    /// The producer epoch its newest batch was recorded under (the cluster's epoch at publication before that):
    /// older than the cluster's epoch after a takeover, until the new server restarts the stream.
    pub producer_epoch: u64,
    /// Reinitialize requests so far.
    pub reinit_epoch: u64,
    /// A request not yet answered by a snapshot batch.
    pub pending_reinit: Option<PendingReinit>,
}

/// A federated stream table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedTableInfo {
    /// Its sources, by stream.
    pub sources: BTreeMap<StreamId, SourceUrl>,
    /// Eventual or causal.
    pub consistency: Consistency,
    /// When it was created.
    pub created_at: LogIndex,
    /// The newest cut over its sources, maintained on every advance.
    pub newest_cut: Cut,
}

/// The serialized part of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
struct StateData {
    federation: FederationSettings,
    clusters: BTreeMap<ClusterName, ClusterInfo>,
    streams: BTreeMap<StreamId, StreamInfo>,
    federated: BTreeMap<FederatedTableId, FederatedTableInfo>,
    idempotency: IdempotencyCache,
    last_applied: LogIndex,
    /// Authenticates broker envelopes (issued once per federation).
    message_key: Option<MessageKey>,
    /// The newest stream incarnation handed out: a new one is above it even after a restore onto a younger log.
    last_incarnation: u64,
}

/// What applying one log entry did: kept by the durable store per entry, replayable with [`State::replay`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executed {
    /// The entry's log index.
    pub index: LogIndex,
    /// The leader's wall clock at proposal.
    pub proposed_at_unix_ms: u64,
    /// The request's key (None for blank and membership entries).
    pub key: Option<IdempotencyKey>,
    /// The command's fingerprint.
    pub fingerprint: u64,
    /// True when the command was decided at this index; false when the result came from the idempotency cache
    /// (or the key was reused for another command): then nothing was folded.
    pub fresh: bool,
    /// The result returned to the client.
    pub result: Result<Applied, CommandError>,
}

/// Why a record could not be replayed: the stored event log does not fit the state (a damaged or foreign store).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot fold event at log index {index}: {reason}")]
pub struct FoldError {
    /// The log index of the offending record.
    pub index: LogIndex,
    /// What does not fit.
    pub reason: String,
}

/// The coordinator's replicated state.
#[derive(Debug, Clone, Default)]
pub struct State {
    data: StateData,
    dag: GlobalDag,
    subscribers: BTreeMap<StreamId, BTreeSet<FederatedTableId>>,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}
impl Eq for State {}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.data.serialize(s)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let data = StateData::deserialize(d)?;
        Ok(State::rebuild(data))
    }
}

impl State {
    /// An empty state whose idempotency cache remembers keys for `window_ms` of proposal time.
    pub fn with_idempotency_window_ms(window_ms: u64) -> Self {
        State::rebuild(StateData { idempotency: IdempotencyCache::with_window_ms(window_ms), ..Default::default() })
    }

    fn rebuild(data: StateData) -> Self {
        let mut state = State { data, dag: GlobalDag::new(), subscribers: BTreeMap::new() };
        for id in state.data.streams.keys() {
            state.dag.add_node(NodeKey::Stream(id.clone()));
        }
        for (id, table) in &state.data.federated {
            state.dag.add_node(NodeKey::Federated(id.clone()));
            for source in table.sources.keys() {
                state.subscribers.entry(source.clone()).or_default().insert(id.clone());
            }
        }
        for (id, table) in &state.data.federated {
            let preds = table.sources.keys().map(|s| NodeKey::Stream(s.clone())).collect();
            state.dag.set_edges_into(&NodeKey::Federated(id.clone()), &preds);
        }
        let streams: Vec<StreamId> = state.data.streams.keys().cloned().collect();
        for id in streams {
            state.link_stream(&id);
        }
        state
    }

    /// Sets the edges into a stream: its upstream plus the federated table of the same name, if any.
    fn link_stream(&mut self, id: &StreamId) {
        let Some(info) = self.data.streams.get(id) else { return };
        let mut preds = info.upstream.clone();
        let same = FederatedTableId(id.0.clone());
        if self.data.federated.contains_key(&same) {
            preds.insert(NodeKey::Federated(same));
        }
        self.dag.set_edges_into(&NodeKey::Stream(id.clone()), &preds);
    }

    // ----- reads -------------------------------------------------------------------------------------------------

    /// The federation's settings.
    pub fn federation(&self) -> &FederationSettings {
        &self.data.federation
    }
    /// The federation's message key, once issued.
    pub fn message_key(&self) -> Option<&MessageKey> {
        self.data.message_key.as_ref()
    }
    /// The newest stream incarnation handed out.
    pub fn last_incarnation(&self) -> u64 {
        self.data.last_incarnation
    }
    /// Registered clusters.
    pub fn clusters(&self) -> &BTreeMap<ClusterName, ClusterInfo> {
        &self.data.clusters
    }
    /// Published streams.
    pub fn streams(&self) -> &BTreeMap<StreamId, StreamInfo> {
        &self.data.streams
    }
    /// Federated tables.
    pub fn federated_tables(&self) -> &BTreeMap<FederatedTableId, FederatedTableInfo> {
        &self.data.federated
    }
    /// The global DAG.
    pub fn dag(&self) -> &GlobalDag {
        &self.dag
    }
    /// The index of the last applied log entry.
    pub fn last_applied(&self) -> LogIndex {
        self.data.last_applied
    }
    /// The idempotency cache.
    pub fn idempotency(&self) -> &IdempotencyCache {
        &self.data.idempotency
    }
    /// Federated tables that read `stream`.
    pub fn subscribers(&self, stream: &StreamId) -> impl Iterator<Item = &FederatedTableId> {
        self.subscribers.get(stream).into_iter().flatten()
    }

    /// The cut of a federated table's sources at global time `t`.
    pub fn cut_at(&self, table: &FederatedTableId, t: LogIndex) -> Result<Option<Cut>, HistoryTruncated> {
        let Some(info) = self.data.federated.get(table) else { return Ok(None) };
        let frontiers = info.sources.keys().filter_map(|s| self.data.streams.get(s).map(|i| (s, &i.frontier)));
        cut_at(t, frontiers).map(Some)
    }

    /// The newest cut of a federated table (maintained incrementally).
    pub fn newest_cut(&self, table: &FederatedTableId) -> Option<&Cut> {
        self.data.federated.get(table).map(|t| &t.newest_cut)
    }

    /// The frontier of a stream.
    pub fn frontier(&self, stream: &StreamId) -> Option<&Frontier> {
        self.data.streams.get(stream).map(|s| &s.frontier)
    }

    /// This state moved onto another log's timeline at `index`: every timestamp becomes `index` and frontier
    /// histories collapse to their current seq (times of the old log mean nothing in the new one). The idempotency
    /// cache is left behind for the same reason.
    pub fn rebased(&self, index: LogIndex) -> State {
        let mut data = self.data.clone();
        data.idempotency = IdempotencyCache::default();
        data.last_applied = 0;
        for c in data.clusters.values_mut() {
            c.registered_at = index;
        }
        for s in data.streams.values_mut() {
            s.published_at = index;
            s.frontier = Frontier::new(s.frontier.seq(), index);
            if let Some(p) = &mut s.pending_reinit {
                p.requested_at = index;
            }
        }
        for t in data.federated.values_mut() {
            t.created_at = index;
            t.newest_cut.at = index;
        }
        State::rebuild(data)
    }

    // ----- writes ------------------------------------------------------------------------------------------------

    /// Decides and applies a request committed at log `index`. Deterministic: every replica returns the same
    /// record and ends in the same state. A rejected command changes nothing but the idempotency cache.
    pub fn execute(&mut self, index: LogIndex, request: &Request) -> Executed {
        let fp = fingerprint(&request.command);
        let remembered = match crate::planted::planted(crate::planted::Bug::SkipIdempotency) {
            true => None,
            false => self.data.idempotency.get(&request.key),
        };
        let (fresh, result) = match remembered {
            Some(first) if first.fingerprint == fp => (false, first.result.get()),
            Some(first) => {
                (false, Err(CommandError::IdempotencyKeyReused { key: request.key.to_string(), index: first.index }))
            }
            None => (true, decide(self, index, &request.command).map(|events| Applied { index, events })),
        };
        let executed = Executed {
            index,
            proposed_at_unix_ms: request.proposed_at_unix_ms,
            key: Some(request.key.clone()),
            fingerprint: fp,
            fresh,
            result,
        };
        self.replay(&executed).expect("events decided against this state always fold");
        executed
    }

    /// Records a log entry without a command (blank or membership entry).
    pub fn execute_noop(&mut self, index: LogIndex) -> Executed {
        let executed = Executed {
            index,
            proposed_at_unix_ms: 0,
            key: None,
            fingerprint: 0,
            fresh: false,
            result: Ok(Applied { index, events: vec![] }),
        };
        self.data.last_applied = self.data.last_applied.max(index);
        executed
    }

    /// Folds a record produced by [`State::execute`] (here or on another node) into this state.
    pub fn replay(&mut self, executed: &Executed) -> Result<(), FoldError> {
        // Several requests may share one log index (a batched proposal); indexes never go back.
        if executed.index < self.data.last_applied {
            return Err(FoldError {
                index: executed.index,
                reason: format!("records must be replayed in order; last applied is {}", self.data.last_applied),
            });
        }
        if executed.fresh {
            if let Ok(applied) = &executed.result {
                for event in &applied.events {
                    self.fold(executed.index, executed.proposed_at_unix_ms, event)?;
                }
            }
            if let Some(key) = &executed.key {
                self.data.idempotency.remember(
                    key.clone(),
                    Remembered {
                        index: executed.index,
                        fingerprint: executed.fingerprint,
                        result: StoredResult::new(&executed.result),
                    },
                    executed.proposed_at_unix_ms,
                );
            }
        }
        self.data.last_applied = executed.index;
        Ok(())
    }

    /// Applies one event committed at log `index`.
    pub fn fold(&mut self, index: LogIndex, proposed_at_unix_ms: u64, event: &Event) -> Result<(), FoldError> {
        let fail = |reason: String| FoldError { index, reason };
        match event {
            Event::FederationConfigured { name, changelog } => {
                self.data.federation = FederationSettings { name: name.clone(), changelog: changelog.clone() };
            }
            Event::ClusterRegistered { name, endpoint, capabilities, system_identifier, producer_epoch }
            | Event::ClusterTakenOver { name, endpoint, capabilities, system_identifier, producer_epoch, .. } => {
                let entry = self.data.clusters.entry(name.clone()).or_insert_with(|| ClusterInfo {
                    endpoint: String::new(),
                    capabilities: BTreeSet::new(),
                    system_identifier: *system_identifier,
                    producer_epoch: *producer_epoch,
                    registered_at: index,
                    last_checkpoint: None,
                });
                entry.endpoint = endpoint.clone();
                entry.capabilities = capabilities.clone();
                entry.system_identifier = *system_identifier;
                entry.producer_epoch = *producer_epoch;
            }
            Event::ClusterDeregistered { name } => {
                self.data.clusters.remove(name).ok_or_else(|| fail(format!("cluster {name} is not registered")))?;
            }
            Event::StreamPublished { stream, columns, upstream, base_seq, schema_version, incarnation } => {
                let Some(cluster) = self.data.clusters.get(stream.cluster()) else {
                    return Err(fail(format!("stream {stream} belongs to unregistered cluster")));
                };
                let producer_epoch = cluster.producer_epoch;
                let info = self.data.streams.entry(stream.clone()).or_insert_with(|| StreamInfo {
                    columns: vec![],
                    upstream: BTreeSet::new(),
                    schema_version: 0,
                    published_at: index,
                    incarnation: *incarnation,
                    frontier: Frontier::new(*base_seq, index),
                    producer_epoch,
                    reinit_epoch: 0,
                    pending_reinit: None,
                });
                info.columns = columns.clone();
                info.upstream = upstream.clone();
                info.schema_version = *schema_version;
                if info.incarnation != *incarnation {
                    return Err(fail(format!(
                        "stream {stream} is incarnation {}, not {incarnation}",
                        info.incarnation
                    )));
                }
                self.data.last_incarnation = self.data.last_incarnation.max(*incarnation);
                self.dag.add_node(NodeKey::Stream(stream.clone()));
                self.link_stream(stream);
            }
            Event::StreamUnpublished { stream } => {
                self.data.streams.remove(stream).ok_or_else(|| fail(format!("stream {stream} is not published")))?;
                self.subscribers.remove(stream);
                self.dag.remove_node(&NodeKey::Stream(stream.clone()));
            }
            Event::FederatedTableCreated { table, sources, consistency } => {
                let mut seqs = BTreeMap::new();
                for source in sources.keys() {
                    let info = self
                        .data
                        .streams
                        .get(source)
                        .ok_or_else(|| fail(format!("source {source} is not published")))?;
                    seqs.insert(source.clone(), info.frontier.seq());
                }
                self.data.federated.insert(
                    table.clone(),
                    FederatedTableInfo {
                        sources: sources.clone(),
                        consistency: *consistency,
                        created_at: index,
                        newest_cut: Cut { at: index, seqs },
                    },
                );
                let node = NodeKey::Federated(table.clone());
                self.dag.add_node(node.clone());
                for source in sources.keys() {
                    self.subscribers.entry(source.clone()).or_default().insert(table.clone());
                    self.dag.add_edge(&NodeKey::Stream(source.clone()), &node);
                }
                let same = StreamId(table.0.clone());
                if self.data.streams.contains_key(&same) {
                    self.link_stream(&same);
                }
            }
            Event::FederatedTableDropped { table } => {
                let info = self
                    .data
                    .federated
                    .remove(table)
                    .ok_or_else(|| fail(format!("federated table {table} does not exist")))?;
                for source in info.sources.keys() {
                    if let Some(subs) = self.subscribers.get_mut(source) {
                        subs.remove(table);
                        if subs.is_empty() {
                            self.subscribers.remove(source);
                        }
                    }
                }
                self.dag.remove_node(&NodeKey::Federated(table.clone()));
            }
            Event::FrontierAdvanced { stream, seq, kind, position, producer_epoch } => {
                let info = self
                    .data
                    .streams
                    .get_mut(stream)
                    .ok_or_else(|| fail(format!("stream {stream} is not published")))?;
                if *seq != info.frontier.seq() + 1 || index < info.frontier.at() {
                    return Err(fail(format!(
                        "batch {seq} of {stream} does not follow frontier {}",
                        info.frontier.seq()
                    )));
                }
                info.frontier.push(FrontierPoint {
                    seq: *seq,
                    at: index,
                    kind: *kind,
                    position: *position,
                    proposed_at_unix_ms,
                });
                info.producer_epoch = *producer_epoch;
                if *kind == crate::model::BatchKind::Snapshot {
                    info.pending_reinit = None;
                }
                if let Some(subs) = self.subscribers.get(stream) {
                    for table in subs {
                        if let Some(t) = self.data.federated.get_mut(table) {
                            t.newest_cut.at = index;
                            t.newest_cut.seqs.insert(stream.clone(), *seq);
                        }
                    }
                }
            }
            Event::ReinitializeRequested { stream, epoch, reason } => {
                let info = self
                    .data
                    .streams
                    .get_mut(stream)
                    .ok_or_else(|| fail(format!("stream {stream} is not published")))?;
                info.reinit_epoch = *epoch;
                info.pending_reinit =
                    Some(PendingReinit { epoch: *epoch, reason: reason.clone(), requested_at: index });
            }
            Event::StateRestored { state } => {
                let idempotency = std::mem::take(&mut self.data.idempotency);
                let last_applied = self.data.last_applied;
                *self = State::rebuild(StateData { idempotency, last_applied, ..state.data.clone() });
            }
            Event::MessageKeyIssued { key } => {
                if self.data.message_key.is_some() {
                    return Err(fail("the federation's message key was issued already".to_string()));
                }
                self.data.message_key = Some(key.clone());
            }
            Event::CheckpointRecorded { cluster, checkpoint } => {
                let info = self
                    .data
                    .clusters
                    .get_mut(cluster)
                    .ok_or_else(|| fail(format!("cluster {cluster} is not registered")))?;
                info.last_checkpoint = Some(checkpoint.clone());
            }
        }
        Ok(())
    }
}
