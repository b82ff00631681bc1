//! Events: the facts the log records. The coordinator's state is the fold of its events ([`crate::State::fold`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::dag::NodeKey;
use crate::ids::{ClusterName, FederatedTableId, FederationName, Ident, SourceUrl, StreamId, SystemIdentifier};
use crate::message_key::MessageKey;
use crate::model::{BatchKind, BrokerPosition, ChangeLogSettings, CheckpointRecord, ColumnDef, Consistency, LogIndex};
use crate::state::State;

/// One state change. Emitted by [`crate::decide`]; applied by [`crate::State::fold`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Event {
    /// The federation's name and change-log settings were set.
    FederationConfigured { name: FederationName, changelog: ChangeLogSettings },
    /// A cluster joined (under producer epoch `producer_epoch`), or changed its endpoint or capabilities.
    ClusterRegistered {
        name: ClusterName,
        endpoint: String,
        capabilities: BTreeSet<Ident>,
        system_identifier: SystemIdentifier,
        producer_epoch: u64,
    },
    /// A server took the cluster name over explicitly: advances under older epochs are refused from now on, and
    /// each of the cluster's streams restarts with a snapshot batch under the new epoch.
    ClusterTakenOver {
        name: ClusterName,
        endpoint: String,
        capabilities: BTreeSet<Ident>,
        system_identifier: SystemIdentifier,
        previous_system_identifier: SystemIdentifier,
        producer_epoch: u64,
    },
    /// A cluster left.
    ClusterDeregistered { name: ClusterName },
    /// A stream was published or its definition changed (`schema_version` counts column changes from 1).
    /// `incarnation` names this life of the stream: new when the stream did not exist (first publication, or
    /// published again after an unpublish), kept by later changes.
    StreamPublished {
        stream: StreamId,
        columns: Vec<ColumnDef>,
        upstream: BTreeSet<NodeKey>,
        base_seq: u64,
        schema_version: u32,
        incarnation: u64,
    },
    /// A stream was withdrawn.
    StreamUnpublished { stream: StreamId },
    /// A federated table was created over `sources`.
    FederatedTableCreated { table: FederatedTableId, sources: BTreeMap<StreamId, SourceUrl>, consistency: Consistency },
    /// A federated table was dropped.
    FederatedTableDropped { table: FederatedTableId },
    /// Batch `seq` of `stream` is durably in the broker, proposed under `producer_epoch`. Its global timestamp is
    /// the log index of this event.
    FrontierAdvanced { stream: StreamId, seq: u64, kind: BatchKind, position: BrokerPosition, producer_epoch: u64 },
    /// A snapshot batch of `stream` was requested; `epoch` counts requests per stream.
    ReinitializeRequested { stream: StreamId, epoch: u64, reason: String },
    /// The federation's message key was issued (shown redacted in every human-readable form).
    MessageKeyIssued {
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        key: MessageKey,
    },
    /// A cluster wrote a checkpoint.
    CheckpointRecorded { cluster: ClusterName, checkpoint: CheckpointRecord },
    /// The state was restored from a snapshot of another coordinator cluster (rebased onto this log's time).
    StateRestored {
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        state: Box<State>,
    },
}

/// Whose watchers an event concerns: the long-polls of one cluster's streams, or everyone's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touches {
    /// Only what belongs to this cluster (its streams, their frontiers, its registration).
    Cluster(ClusterName),
    /// Anything may have changed (rare, federation-wide events).
    Everything,
}

impl Event {
    /// Whose watchers must be woken by this event. A long-poll on a stream sleeps through the advances of the
    /// other 999 clusters of a federation; an event that cannot be placed wakes everyone, so a mistake here can
    /// only cost wake-ups, never a missed one.
    pub fn touches(&self) -> Touches {
        match self {
            Event::ClusterRegistered { name, .. }
            | Event::ClusterTakenOver { name, .. }
            | Event::ClusterDeregistered { name }
            | Event::CheckpointRecorded { cluster: name, .. } => Touches::Cluster(name.clone()),
            Event::StreamPublished { stream, .. }
            | Event::StreamUnpublished { stream }
            | Event::FrontierAdvanced { stream, .. }
            | Event::ReinitializeRequested { stream, .. } => Touches::Cluster(stream.cluster().clone()),
            Event::FederatedTableCreated { table, .. } | Event::FederatedTableDropped { table } => {
                Touches::Cluster(table.0.cluster.clone())
            }
            Event::FederationConfigured { .. } | Event::MessageKeyIssued { .. } | Event::StateRestored { .. } => {
                Touches::Everything
            }
        }
    }

    /// A short name for logs, metrics and the watch API.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::FederationConfigured { .. } => "FederationConfigured",
            Event::ClusterRegistered { .. } => "ClusterRegistered",
            Event::ClusterTakenOver { .. } => "ClusterTakenOver",
            Event::ClusterDeregistered { .. } => "ClusterDeregistered",
            Event::StreamPublished { .. } => "StreamPublished",
            Event::StreamUnpublished { .. } => "StreamUnpublished",
            Event::FederatedTableCreated { .. } => "FederatedTableCreated",
            Event::FederatedTableDropped { .. } => "FederatedTableDropped",
            Event::FrontierAdvanced { .. } => "FrontierAdvanced",
            Event::ReinitializeRequested { .. } => "ReinitializeRequested",
            Event::MessageKeyIssued { .. } => "MessageKeyIssued",
            Event::CheckpointRecorded { .. } => "CheckpointRecorded",
            Event::StateRestored { .. } => "StateRestored",
        }
    }
}

/// What a committed command produced: the log index it committed at and its events (empty for a no-op repeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Applied {
    /// The log index of the command (the global timestamp of any frontier advance in it).
    pub index: LogIndex,
    /// The events, in order.
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_and_cluster_events_touch_their_cluster_and_federation_events_touch_everyone() {
        let stream = StreamId::parse("ant/public.orders").unwrap();
        let ant = Touches::Cluster(ClusterName::parse("ant").unwrap());
        let advanced = Event::FrontierAdvanced {
            stream: stream.clone(),
            seq: 1,
            kind: BatchKind::Delta,
            position: BrokerPosition { partition: 0, offset: 0 },
            producer_epoch: 1,
        };
        assert_eq!(advanced.touches(), ant);
        assert_eq!(Event::StreamUnpublished { stream: stream.clone() }.touches(), ant);
        let reinit = Event::ReinitializeRequested { stream, epoch: 1, reason: "x".into() };
        assert_eq!(reinit.touches(), ant);
        assert_eq!(Event::ClusterDeregistered { name: ClusterName::parse("ant").unwrap() }.touches(), ant);
        let restored = Event::StateRestored { state: Box::default() };
        assert_eq!(restored.touches(), Touches::Everything);
    }
}
