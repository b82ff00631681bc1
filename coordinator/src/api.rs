//! The wire types of the HTTP admin API under `/v1`, shared by the server and the client library.
//!
//! Request bodies name objects with the validated ids of `shared-model`, so a malformed name is rejected while the
//! JSON is parsed (422 `invalid_argument`), before anything reaches the Raft log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shared_model::dag::DiamondGroup;
use shared_model::frontier::FrontierPoint;
use shared_model::{
    Applied, BatchKind, BrokerPosition, ChangeLogSettings, CheckpointRecord, ClusterName, ColumnDef, CommandError,
    Consistency, Cut, Event, Executed, FederatedTableId, FederationName, Frontier, FrontierAdvance, Ident, LogIndex,
    NodeKey, ProducerFence, SourceUrl, State, StreamId, SystemIdentifier,
};

/// Header carrying the writing client's id (part of the idempotency key).
pub const CLIENT_HEADER: &str = "x-pgtrickle-client";
/// Header carrying the request id (the other part of the idempotency key).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Set on a write a follower forwards to its leader, so it is never forwarded twice.
pub const FORWARDED_HEADER: &str = "x-pgtrickle-forwarded";

/// Every error response: `{code, message, hint}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Stable machine-readable code (`frontier_gap`, `unauthorized`, `no_leader`, …).
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: &str, message: impl Into<String>, hint: Option<&str>) -> Self {
        ApiError { code: code.into(), message: message.into(), hint: hint.map(str::to_string) }
    }
}

impl From<&CommandError> for ApiError {
    fn from(e: &CommandError) -> Self {
        ApiError { code: e.code().into(), message: e.to_string(), hint: Some(e.hint()) }
    }
}

/// `POST /v1/clusters`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RegisterCluster {
    /// The cluster's name (also the mirror schema on consumers).
    pub name: ClusterName,
    /// How to reach it (informational).
    pub endpoint: String,
    /// What its extension supports.
    #[serde(default)]
    pub capabilities: BTreeSet<Ident>,
    /// The registering server's `system_identifier` (decimal string): the name is bound to it.
    pub system_identifier: SystemIdentifier,
    /// The producer epoch the caller was handed before, if any: a server that holds an older epoch than the
    /// cluster's (superseded by a takeover) is refused.
    #[serde(default)]
    pub known_epoch: Option<u64>,
    /// Bind the name to this server under a new producer epoch even though another server (or an older copy of
    /// this one) holds it; the previous holder's advances are refused from then on.
    #[serde(default)]
    pub takeover: bool,
}

impl RegisterCluster {
    /// A plain registration of `name` by server `system_identifier` (no takeover, no epoch known yet).
    pub fn new(name: ClusterName, endpoint: impl Into<String>, system_identifier: SystemIdentifier) -> Self {
        RegisterCluster {
            name,
            endpoint: endpoint.into(),
            capabilities: BTreeSet::new(),
            system_identifier,
            known_epoch: None,
            takeover: false,
        }
    }
}

/// Answer to a registration: the log position, the cluster as registered and the federation's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Registered {
    /// The write's outcome.
    pub applied: Applied,
    /// The registration (the producer epoch to present with every frontier advance).
    pub cluster: ClusterView,
    /// Federation name and broker settings to use.
    pub federation: FederationView,
    /// The federation's message key (64 hex digits): authenticates every broker envelope. Handed out only here,
    /// to a caller holding the write token; keep it as secret as the token.
    pub message_key: String,
}

impl Registered {
    /// The fence the registered server presents with its frontier advances.
    pub fn fence(&self) -> ProducerFence {
        ProducerFence {
            cluster: self.cluster.name.clone(),
            system_identifier: self.cluster.system_identifier,
            producer_epoch: self.cluster.producer_epoch,
        }
    }
}

/// `PUT /v1/federation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FederationView {
    /// The host part of every source URL.
    pub name: FederationName,
    /// Broker settings handed to clusters.
    pub changelog: ChangeLogSettings,
}

/// `POST /v1/streams`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct PublishStream {
    /// `cluster/schema.table`.
    pub stream: StreamId,
    /// Mirror columns.
    pub columns: Vec<ColumnDef>,
    /// Published streams and federated tables of the same cluster it reads.
    #[serde(default)]
    pub upstream: BTreeSet<NodeKey>,
    /// The stream's last batch seq before publication.
    #[serde(default)]
    pub base_seq: u64,
    /// The publishing server (its identifier and producer epoch): the publication is refused, like a frontier
    /// advance, when that server no longer holds the cluster's name (409 `cluster_name_taken` /
    /// `stale_producer_epoch`). Absent: published on the token's authority alone.
    #[serde(default)]
    pub producer: Option<ProducerFence>,
}

/// `POST /v1/federated-tables`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CreateFederatedTable {
    /// `owner_cluster/schema.table`.
    pub table: FederatedTableId,
    /// Source URLs.
    pub sources: Vec<SourceUrl>,
    /// `Eventual` (default) or `Causal`.
    #[serde(default)]
    pub consistency: Consistency,
}

/// `POST /v1/frontiers`: many streams per request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AdvanceFrontiers {
    /// Who proposes: the cluster, its server's system identifier and producer epoch (refused when stale).
    pub producer: ProducerFence,
    /// In order; several seqs of one stream allowed; all of the producer's cluster.
    pub advances: Vec<FrontierAdvance>,
}

/// `POST /v1/streams/{cluster}/{name}/reinitialize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Reinitialize {
    /// Why (shown to operators).
    pub reason: String,
}

/// `POST /v1/clusters/{name}/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RecordCheckpoint {
    /// The checkpoint.
    pub checkpoint: CheckpointRecord,
}

/// A registered cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ClusterView {
    pub name: ClusterName,
    pub endpoint: String,
    pub capabilities: BTreeSet<Ident>,
    /// The server the name is bound to.
    pub system_identifier: SystemIdentifier,
    /// The current producer epoch (changes only by an explicit takeover).
    pub producer_epoch: u64,
    pub registered_at: LogIndex,
    pub last_checkpoint: Option<CheckpointRecord>,
}

/// A stream's committed frontier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FrontierView {
    pub stream: StreamId,
    /// Committed seq (the newest batch recorded).
    pub seq: u64,
    /// Global timestamp (log index) of that batch, or of the publication when no batch is recorded yet.
    pub at: LogIndex,
    pub kind: Option<BatchKind>,
    pub position: Option<BrokerPosition>,
    pub proposed_at_unix_ms: Option<u64>,
    /// Oldest seq whose timestamp is still kept.
    pub oldest_retained: u64,
    /// Reinitialize request waiting for a snapshot batch (its epoch), if any.
    pub pending_reinit: Option<u64>,
}

/// What a consumer needs of a stream's frontier: the committed points after the seq it applied, and what the
/// producer publishes (`GET /v1/frontiers/{cluster}/{name}/history`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FrontierHistoryView {
    pub stream: StreamId,
    /// Incremented whenever the published columns change.
    pub schema_version: u32,
    pub columns: Vec<ColumnDef>,
    /// Reinitialize request waiting for a snapshot batch (its epoch), if any.
    pub pending_reinit: Option<u64>,
    /// The producer epoch the newest batch was recorded under (the cluster's epoch at publication before any).
    pub producer_epoch: u64,
    /// The stream's incarnation: changes when it is unpublished and published again (its seqs start over).
    pub incarnation: u64,
    /// The seq below the points (the consumer's `after_seq`, or older when the log keeps less).
    pub floor_seq: u64,
    /// Its global timestamp.
    pub floor_at: LogIndex,
    /// True when times before `floor_at` cannot be answered from these points.
    pub truncated: bool,
    /// Committed batches after the floor, in seq order.
    pub points: Vec<FrontierPoint>,
    /// The log index this answer reflects (the node's last applied entry): batches committed later are not in it.
    pub as_of: LogIndex,
}

impl FrontierHistoryView {
    /// The frontier these parts describe.
    pub fn frontier(&self) -> Result<Frontier, String> {
        Frontier::from_parts(self.floor_seq, self.floor_at, self.truncated, self.points.clone())
    }
}

/// A published stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StreamView {
    pub stream: StreamId,
    pub columns: Vec<ColumnDef>,
    pub upstream: BTreeSet<NodeKey>,
    pub schema_version: u32,
    pub published_at: LogIndex,
    /// Changes when the stream is unpublished and published again.
    pub incarnation: u64,
    pub frontier: FrontierView,
    /// Federated tables that read it.
    pub subscribers: Vec<FederatedTableId>,
}

/// A federated table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct FederatedTableView {
    pub table: FederatedTableId,
    pub sources: Vec<SourceUrl>,
    pub consistency: Consistency,
    pub created_at: LogIndex,
    pub newest_cut: Cut,
}

/// An edge of the global DAG.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EdgeView {
    pub from: NodeKey,
    pub to: NodeKey,
}

/// The global DAG and its analyses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct DagView {
    /// Nodes in topological order.
    pub topological_order: Vec<NodeKey>,
    pub edges: Vec<EdgeView>,
    /// Always empty: validation keeps the DAG acyclic.
    pub scc_groups: Vec<Vec<NodeKey>>,
    /// Federated tables whose sources share upstream (candidates for causal mode).
    pub diamond_groups: Vec<DiamondGroup>,
}

/// What one log entry did, as the watch API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EventRecord {
    /// Log index.
    pub index: LogIndex,
    /// Position within the entry: concurrent writes batched into one entry share its index.
    pub position: u32,
    pub proposed_at_unix_ms: u64,
    /// The writing client (None for Raft's own entries).
    pub client: Option<String>,
    /// `applied`, `rejected`, `retry` (answered from the idempotency cache) or `internal` (blank/membership).
    pub outcome: String,
    pub events: Vec<Event>,
    pub error: Option<ApiError>,
}

impl From<&Executed> for EventRecord {
    fn from(e: &Executed) -> Self {
        let outcome = match (&e.key, e.fresh, &e.result) {
            (None, _, _) => "internal",
            (Some(_), false, _) => "retry",
            (Some(_), true, Ok(_)) => "applied",
            (Some(_), true, Err(_)) => "rejected",
        };
        EventRecord {
            index: e.index,
            position: 0,
            proposed_at_unix_ms: e.proposed_at_unix_ms,
            client: e.key.as_ref().map(|k| k.client.clone()),
            outcome: outcome.into(),
            events: match (&e.result, e.fresh) {
                (Ok(applied), true) => applied.events.clone(),
                _ => vec![],
            },
            error: e.result.as_ref().err().map(ApiError::from),
        }
    }
}

/// `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct EventsPage {
    pub records: Vec<EventRecord>,
    /// The node's last applied index when it answered.
    pub last_applied: LogIndex,
}

/// `GET /v1/cut/{cluster}/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CutView {
    pub table: FederatedTableId,
    pub consistency: Consistency,
    pub cut: Cut,
}

/// One member of the Raft cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    /// Voter or learner.
    pub voter: bool,
    /// Only in the leader's view of the other members: how replication to this member goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationView>,
}

/// The leader's view of replication to one member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ReplicationView {
    /// `ok`, `behind` (more than the lag threshold behind, or nothing matched yet: catching up) or `failing` (its
    /// latest RPCs failed).
    pub state: ReplicationState,
    /// The last entry known to be on the member.
    pub matched_index: Option<u64>,
    /// Entries the member trails the leader's log by.
    pub lag_entries: u64,
    /// Why RPCs to it fail, when they do (timeouts name the payload size).
    pub last_error: Option<String>,
    /// Seconds since that error.
    pub last_error_age_secs: Option<u64>,
    /// RPCs failed in a row.
    pub consecutive_failures: u64,
}

/// How a member keeps up with the leader.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReplicationState {
    Ok,
    Behind,
    Failing,
}

impl std::fmt::Display for ReplicationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplicationState::Ok => "ok",
            ReplicationState::Behind => "behind",
            ReplicationState::Failing => "failing",
        })
    }
}

/// `GET /v1/admin/status`: this node's view of Raft.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct StatusView {
    pub node_id: u64,
    pub addr: String,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub members: Vec<MemberView>,
}

/// `POST /v1/admin/init`: the initial voters (empty: the node's configured peers).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct InitCluster {
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
}

/// `POST /v1/admin/learners`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AddLearner {
    pub id: u64,
    pub addr: String,
}

/// `POST /v1/admin/membership`: the new voter set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ChangeMembership {
    pub voters: BTreeSet<u64>,
}

/// Builds the views from a state (shared by the server's handlers and tests).
pub mod views {
    use super::*;

    /// The frontier of a stream.
    pub fn frontier(state: &State, stream: &StreamId) -> Option<FrontierView> {
        let info = state.streams().get(stream)?;
        let f = &info.frontier;
        let last = f.last();
        Some(FrontierView {
            stream: stream.clone(),
            seq: f.seq(),
            at: f.at(),
            kind: last.map(|p| p.kind),
            position: last.map(|p| p.position),
            proposed_at_unix_ms: last.map(|p| p.proposed_at_unix_ms),
            oldest_retained: f.oldest_retained(),
            pending_reinit: info.pending_reinit.as_ref().map(|p| p.epoch),
        })
    }

    /// The frontier of a stream after `after_seq`.
    pub fn frontier_history(state: &State, stream: &StreamId, after_seq: u64) -> Option<FrontierHistoryView> {
        let info = state.streams().get(stream)?;
        let (floor_seq, floor_at, truncated, points) = info.frontier.tail_after(after_seq).parts();
        Some(FrontierHistoryView {
            stream: stream.clone(),
            schema_version: info.schema_version,
            columns: info.columns.clone(),
            pending_reinit: info.pending_reinit.as_ref().map(|p| p.epoch),
            producer_epoch: info.producer_epoch,
            incarnation: info.incarnation,
            floor_seq,
            floor_at,
            truncated,
            points,
            as_of: state.last_applied(),
        })
    }

    /// A stream.
    pub fn stream(state: &State, id: &StreamId) -> Option<StreamView> {
        let info = state.streams().get(id)?;
        Some(StreamView {
            stream: id.clone(),
            columns: info.columns.clone(),
            upstream: info.upstream.clone(),
            schema_version: info.schema_version,
            published_at: info.published_at,
            incarnation: info.incarnation,
            frontier: frontier(state, id)?,
            subscribers: state.subscribers(id).cloned().collect(),
        })
    }

    /// A cluster.
    pub fn cluster(state: &State, name: &ClusterName) -> Option<ClusterView> {
        let c = state.clusters().get(name)?;
        Some(ClusterView {
            name: name.clone(),
            endpoint: c.endpoint.clone(),
            capabilities: c.capabilities.clone(),
            system_identifier: c.system_identifier,
            producer_epoch: c.producer_epoch,
            registered_at: c.registered_at,
            last_checkpoint: c.last_checkpoint.clone(),
        })
    }

    /// A federated table.
    pub fn federated(state: &State, id: &FederatedTableId) -> Option<FederatedTableView> {
        let t = state.federated_tables().get(id)?;
        Some(FederatedTableView {
            table: id.clone(),
            sources: t.sources.values().cloned().collect(),
            consistency: t.consistency,
            created_at: t.created_at,
            newest_cut: t.newest_cut.clone(),
        })
    }

    /// The DAG.
    pub fn dag(state: &State) -> DagView {
        let dag = state.dag();
        let order = dag.topological_order();
        let edges = order
            .iter()
            .flat_map(|from| dag.successors(from).into_iter().map(move |to| EdgeView { from: from.clone(), to }))
            .collect();
        DagView { topological_order: order, edges, scc_groups: dag.scc_groups(), diamond_groups: dag.diamond_groups() }
    }

    /// The federation settings.
    pub fn federation(state: &State) -> FederationView {
        let f = state.federation();
        FederationView { name: f.name.clone(), changelog: f.changelog.clone() }
    }
}
