//! Commands: what clients ask the coordinator to do. A command is decided against the state ([`crate::decide`])
//! into events or a typed error; nothing else changes state.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dag::NodeKey;
use crate::ids::{
    ClusterName, FederatedTableId, FederationName, IdempotencyKey, Ident, SourceUrl, StreamId, SystemIdentifier,
};
use crate::message_key::MessageKey;
use crate::model::{BatchKind, BrokerPosition, ChangeLogSettings, CheckpointRecord, ColumnDef, Consistency};
use crate::state::State;

/// A write as it travels through the Raft log: the command, its idempotency key and the leader's wall clock at
/// proposal (part of the log entry, so every node sees the same value; used only for lag in seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Makes a retry after a lost reply apply once.
    pub key: IdempotencyKey,
    /// What to do.
    pub command: Command,
    /// Milliseconds since the Unix epoch on the leader when it proposed this entry.
    pub proposed_at_unix_ms: u64,
}

/// One step of a frontier advance: batch `seq` of `stream` is durably in the broker at `position`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FrontierAdvance {
    /// The published stream.
    pub stream: StreamId,
    /// The batch sequence number; must be exactly the stream's current frontier + 1.
    pub seq: u64,
    /// Delta or snapshot batch.
    pub kind: BatchKind,
    /// Where the batch's last message sits in the broker.
    pub position: BrokerPosition,
}

/// Who proposes frontier advances: the cluster, the server's system identifier and the producer epoch it was
/// handed at registration. Advances are accepted only from the cluster's current server and epoch, so a server
/// superseded by an explicit takeover (a promoted standby's old primary, a replaced host) can no longer record
/// batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProducerFence {
    /// The producing cluster; every advance of the command must be of one of its streams.
    pub cluster: ClusterName,
    /// The producing server's `system_identifier`.
    pub system_identifier: SystemIdentifier,
    /// The producer epoch this server holds.
    pub producer_epoch: u64,
}

/// Everything the coordinator's state machine accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Name the federation and set the change-log settings handed to clusters.
    ConfigureFederation { name: FederationName, changelog: ChangeLogSettings },
    /// Register (or update) a PostgreSQL cluster. A name already bound to another server (`system_identifier`),
    /// or to a newer producer epoch than the caller's `known_epoch`, is refused unless `takeover` is set, which
    /// binds the name to the caller under a new producer epoch.
    RegisterCluster {
        name: ClusterName,
        endpoint: String,
        capabilities: BTreeSet<Ident>,
        system_identifier: SystemIdentifier,
        known_epoch: Option<u64>,
        takeover: bool,
    },
    /// Remove a cluster; with `cascade`, also everything it publishes or owns and everything depending on those.
    DeregisterCluster { name: ClusterName, cascade: bool },
    /// Offer a local stream table to the federation (or update its columns / upstream edges).
    /// `upstream` names the published streams and federated tables of the same cluster it is computed from
    /// `base_seq` is the stream's last batch seq before publication (its first advance is `base_seq + 1`).
    PublishStream { stream: StreamId, columns: Vec<ColumnDef>, upstream: BTreeSet<NodeKey>, base_seq: u64 },
    /// Withdraw a published stream; rejected while something depends on it unless `cascade`.
    UnpublishStream { stream: StreamId, cascade: bool },
    /// Create a federated stream table owned by `table.cluster` over published streams.
    CreateFederatedTable { table: FederatedTableId, sources: Vec<SourceUrl>, consistency: Consistency },
    /// Drop a federated table; rejected while a published stream depends on it unless `cascade`.
    DropFederatedTable { table: FederatedTableId, cascade: bool },
    /// Record that batches are durably in the broker; many streams (and several seqs of one) per command, all of
    /// the fenced producer's cluster.
    AdvanceFrontier { producer: ProducerFence, advances: Vec<FrontierAdvance> },
    /// Ask the producer of `stream` to send a snapshot batch (a consumer lost data, or the schema changed).
    RequestReinitialize { stream: StreamId, reason: String },
    /// Give the federation its message key (drawn by the proposing coordinator) unless it has one: a federation
    /// keeps its first key, so concurrent or repeated issues agree.
    IssueMessageKey { key: MessageKey },
    /// Record a checkpoint a cluster wrote to object storage.
    RecordCheckpoint { cluster: ClusterName, checkpoint: CheckpointRecord },
    /// Start a new coordinator cluster from another one's state snapshot; only into an empty state.
    RestoreState { state: Box<State> },
    /// `command` — a publish or unpublish of one of `fence.cluster`'s streams — sent by a producing server, and
    /// refused like a frontier advance once that server no longer holds the cluster's name and epoch: a server
    /// superseded by a takeover (an old primary come back, a restored copy) can neither publish nor withdraw the
    /// streams its successor now produces.
    AsProducer { fence: ProducerFence, command: Box<Command> },
}

impl Command {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::ConfigureFederation { .. } => "configure_federation",
            Command::RegisterCluster { .. } => "register_cluster",
            Command::DeregisterCluster { .. } => "deregister_cluster",
            Command::PublishStream { .. } => "publish_stream",
            Command::UnpublishStream { .. } => "unpublish_stream",
            Command::CreateFederatedTable { .. } => "create_federated_table",
            Command::DropFederatedTable { .. } => "drop_federated_table",
            Command::AdvanceFrontier { .. } => "advance_frontier",
            Command::RequestReinitialize { .. } => "request_reinitialize",
            Command::IssueMessageKey { .. } => "issue_message_key",
            Command::RecordCheckpoint { .. } => "record_checkpoint",
            Command::RestoreState { .. } => "restore_state",
            Command::AsProducer { command, .. } => command.kind(),
        }
    }
}
