//! Typed rejections of commands. A rejected command leaves the state unchanged; each error has a stable code, a
//! class that maps onto an HTTP status or SQLSTATE, and a hint that tells the user what to do.

use serde::{Deserialize, Serialize};

use crate::model::{BrokerPosition, LogIndex};

/// How a rejection should be reported at the edges (HTTP status, SQLSTATE class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input itself is malformed or out of range (HTTP 422, SQLSTATE 22023).
    Invalid,
    /// A named object does not exist (HTTP 404, SQLSTATE 42704).
    NotFound,
    /// The input is well-formed but conflicts with the current state (HTTP 409, SQLSTATE 55000 / 42P07).
    Conflict,
}

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CommandError {
    /// An argument is malformed or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The cluster is not registered.
    #[error("cluster {cluster:?} is not registered")]
    UnknownCluster { cluster: String },
    /// No such published stream.
    #[error("stream {stream:?} is not published")]
    UnknownStream { stream: String },
    /// No such federated table.
    #[error("federated table {table:?} does not exist")]
    UnknownFederatedTable { table: String },
    /// An upstream edge names a relation that is neither a published stream nor a federated table.
    #[error("upstream {upstream:?} of stream {stream:?} is neither a published stream nor a federated table")]
    UnknownUpstream { stream: String, upstream: String },
    /// The object exists with a different definition.
    #[error("{what} {name:?} already exists with a different definition")]
    AlreadyExists { what: String, name: String },
    /// The change would close a cycle in the global DAG.
    #[error("this would close a cycle in the global DAG: {}", path.join(" -> "))]
    CycleDetected { path: Vec<String> },
    /// Something depends on the object to be removed.
    #[error("{object:?} cannot be removed: {} depend(s) on it: {}", dependents.len(), dependents.join(", "))]
    HasDependents { object: String, dependents: Vec<String> },
    /// A frontier advance skips batches.
    #[error("frontier gap on {stream:?}: the committed frontier is {current}, so the next batch is {}, not {proposed}", current + 1)]
    FrontierGap { stream: String, current: u64, proposed: u64 },
    /// A frontier advance repeats a seq with a different broker position or kind.
    #[error("batch {seq} of {stream:?} was recorded at {recorded:?}, not {proposed:?}")]
    FrontierConflict { stream: String, seq: u64, recorded: BrokerPosition, proposed: BrokerPosition },
    /// A repeated seq is older than the retained frontier history, so it cannot be compared.
    #[error("batch {seq} of {stream:?} is older than the retained frontier history (oldest kept: {oldest_retained})")]
    FrontierTooOld { stream: String, seq: u64, oldest_retained: u64 },
    /// A source URL names another federation.
    #[error("source {source_url:?} names federation {found:?}, but this federation is {expected:?}")]
    FederationMismatch { source_url: String, found: String, expected: String },
    /// A source URL names another change-log backend than the federation uses.
    #[error("source {source_url:?} uses backend {found}, but this federation uses {expected}")]
    BackendMismatch { source_url: String, found: String, expected: String },
    /// A restore needs an empty state.
    #[error("the coordinator already holds state ({what}); a snapshot can only be restored into a new cluster")]
    StateNotEmpty { what: String },
    /// The cluster name is bound to another PostgreSQL server.
    #[error("cluster {cluster:?} is registered by another PostgreSQL server (system identifier {registered}), not this one ({presented})")]
    ClusterNameTaken { cluster: String, registered: String, presented: String },
    /// The caller's producer epoch is not the cluster's current one: another server took the name over since.
    #[error("cluster {cluster:?} is at producer epoch {current} (held by server {holder}); this request presents epoch {presented}")]
    StaleProducerEpoch { cluster: String, presented: u64, current: u64, holder: String },
    /// The idempotency key was already used for a different command.
    #[error("idempotency key {key:?} was already used at log index {index} for a different command")]
    IdempotencyKeyReused { key: String, index: LogIndex },
}

impl CommandError {
    /// A stable, machine-readable code (`frontier_gap`, `cycle_detected`, …) for JSON errors and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::InvalidArgument { .. } => "invalid_argument",
            CommandError::UnknownCluster { .. } => "unknown_cluster",
            CommandError::UnknownStream { .. } => "unknown_stream",
            CommandError::UnknownFederatedTable { .. } => "unknown_federated_table",
            CommandError::UnknownUpstream { .. } => "unknown_upstream",
            CommandError::AlreadyExists { .. } => "already_exists",
            CommandError::CycleDetected { .. } => "cycle_detected",
            CommandError::HasDependents { .. } => "has_dependents",
            CommandError::FrontierGap { .. } => "frontier_gap",
            CommandError::FrontierConflict { .. } => "frontier_conflict",
            CommandError::FrontierTooOld { .. } => "frontier_too_old",
            CommandError::FederationMismatch { .. } => "federation_mismatch",
            CommandError::BackendMismatch { .. } => "backend_mismatch",
            CommandError::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            CommandError::ClusterNameTaken { .. } => "cluster_name_taken",
            CommandError::StaleProducerEpoch { .. } => "stale_producer_epoch",
            CommandError::StateNotEmpty { .. } => "state_not_empty",
        }
    }

    /// How the edges should report it.
    pub fn class(&self) -> ErrorClass {
        match self {
            CommandError::InvalidArgument { .. }
            | CommandError::FederationMismatch { .. }
            | CommandError::BackendMismatch { .. } => ErrorClass::Invalid,
            CommandError::UnknownCluster { .. }
            | CommandError::UnknownStream { .. }
            | CommandError::UnknownFederatedTable { .. }
            | CommandError::UnknownUpstream { .. } => ErrorClass::NotFound,
            CommandError::AlreadyExists { .. }
            | CommandError::CycleDetected { .. }
            | CommandError::HasDependents { .. }
            | CommandError::FrontierGap { .. }
            | CommandError::FrontierConflict { .. }
            | CommandError::FrontierTooOld { .. }
            | CommandError::IdempotencyKeyReused { .. }
            | CommandError::ClusterNameTaken { .. }
            | CommandError::StaleProducerEpoch { .. }
            | CommandError::StateNotEmpty { .. } => ErrorClass::Conflict,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            CommandError::InvalidArgument { .. } => "Correct the argument and retry.".into(),
            CommandError::UnknownCluster { .. } => {
                "Register the cluster first with pgtrickle.register_federation() on it, or check the name with `pgtrickle-coordinator clusters`.".into()
            }
            CommandError::UnknownStream { .. } => {
                "Publish the stream table on its cluster (pgtrickle.publish_stream_table) or check the name with `pgtrickle-coordinator dag`.".into()
            }
            CommandError::UnknownFederatedTable { .. } => "Check the name with `pgtrickle-coordinator dag`.".into(),
            CommandError::UnknownUpstream { .. } => {
                "Upstream edges may only name published streams or federated tables of the same cluster; publish the upstream first.".into()
            }
            CommandError::AlreadyExists { .. } => "Drop it first, or choose another name.".into(),
            CommandError::CycleDetected { .. } => {
                "A federated table may not (transitively) read its own output; remove one of the edges on the path.".into()
            }
            CommandError::HasDependents { .. } => "Drop the dependents first, or repeat with cascade.".into(),
            CommandError::FrontierGap { .. } => {
                "Batches must be recorded in order without gaps: advance the missing batches first.".into()
            }
            CommandError::FrontierConflict { .. } => {
                "The producer re-sent a batch with a different position: it must resend the recorded batch, or the stream must be reinitialized.".into()
            }
            CommandError::FrontierTooOld { .. } => "Nothing to do for so old a batch; continue from the current frontier.".into(),
            CommandError::FederationMismatch { .. } => {
                "Use the federation name this cluster registered with (see pgtrickle.federation_status()).".into()
            }
            CommandError::BackendMismatch { .. } => "Use the scheme of the federation's change-log backend.".into(),
            CommandError::IdempotencyKeyReused { .. } => "Use a fresh request id for a new command.".into(),
            CommandError::ClusterNameTaken { .. } => {
                "Choose another cluster name; or, if the registered server is gone for good (replaced, or restored \
                 onto this host), take the name over: SELECT pgtrickle.register_federation(url, name, takeover => true). \
                 Its streams then restart with snapshot batches from this server."
                    .into()
            }
            CommandError::StaleProducerEpoch { .. } => {
                "Another server took this cluster name over, so this one must not publish: stop it. If this server \
                 is the rightful producer (the takeover was a mistake), take the name back with \
                 SELECT pgtrickle.register_federation(url, name, takeover => true); its streams restart with \
                 snapshot batches."
                    .into()
            }
            CommandError::StateNotEmpty { .. } => {
                "Start a new, empty coordinator cluster with `serve --bootstrap-from URL` instead.".into()
            }
        }
    }
}
