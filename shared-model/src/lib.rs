//! Pure types and decisions of pg_trickle federation.
//!
//! No I/O and no async runtime: everything here is a deterministic function of its inputs, so the coordinator
//! (through `raft-store`), the extension and the simulations share one tested model. The pieces:
//! [`ids`] (validated names), [`command`] → [`decide`] → [`event`] → [`state`] (the fold), [`dag`] (the global
//! DAG), [`frontier`] (frontiers and consistent cuts), [`idempotency`], [`codec`] (the versioned binary form), [`checkpoint`] (a database's state as JSON lines), [`envelope`] (batches on the broker), [`apply`] (which
//! committed batches a consumer may apply) and [`protocol`] (the producer's state machine; the consumer's follows).

pub mod apply;
pub mod broker_settings;
pub mod checkpoint;
pub mod codec;
pub mod command;
pub mod dag;
pub mod decide;
pub mod envelope;
pub mod error;
pub mod event;
pub mod frontier;
pub mod idempotency;
pub mod ids;
pub mod message_key;
pub mod model;
pub mod nats_settings;
pub mod planted;
pub mod protocol;
pub mod state;

pub use command::{Command, FrontierAdvance, ProducerFence, Request};
pub use dag::{DiamondGroup, GlobalDag, NodeKey};
pub use decide::decide;
pub use error::{CommandError, ErrorClass};
pub use event::{Applied, Event, Touches};
pub use frontier::{Cut, Frontier, Lag};
pub use ids::{
    Backend, ClusterName, FederatedTableId, FederationName, IdempotencyKey, Ident, ParseError, RelationId, SourceUrl,
    StreamId, SystemIdentifier,
};
pub use message_key::MessageKey;
pub use model::{
    check_type_name, BatchKind, BrokerPosition, ChangeLogSettings, CheckpointRecord, ColumnDef, Consistency, LogIndex,
};
pub use state::{Executed, State};

/// `apply(state, index, command)`: the events a command causes, or why it is rejected; `state` is not changed.
pub fn apply(state: &State, index: LogIndex, command: &Command) -> Result<Vec<Event>, CommandError> {
    decide(state, index, command)
}
