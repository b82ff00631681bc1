//! Value types shared by commands, events and state: columns, broker positions, consistency modes, settings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{Backend, ParseError};

/// A Raft log index. The index at which a `FrontierAdvanced` commits is that batch's global timestamp.
pub type LogIndex = u64;

/// One column of a published stream, as the consumer must create it in the mirror.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ColumnDef {
    /// Column name as PostgreSQL stores it (any non-empty name up to 63 bytes).
    pub name: String,
    /// The type as `format_type()` prints it, e.g. `bigint`, `numeric(12,2)`, `text[]`.
    pub type_name: String,
}

impl ColumnDef {
    /// Builds a column definition (validated by the command that carries it).
    pub fn new(name: &str, type_name: &str) -> Self {
        ColumnDef { name: name.to_string(), type_name: type_name.to_string() }
    }
}

/// Where a batch sits in the broker: Kafka partition + offset, or (partition 0) a JetStream stream sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokerPosition {
    /// Kafka partition (0 for NATS).
    pub partition: i32,
    /// Offset of the batch's last message (Kafka offset or JetStream sequence).
    pub offset: i64,
}

/// What a federated table promises its readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Consistency {
    /// Each source is applied up to its own committed frontier, independently (the default).
    #[default]
    Eventual,
    /// All sources are applied up to one common cut of the log, in one transaction.
    Causal,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Eventual => "eventual",
            Consistency::Causal => "causal",
        })
    }
}

impl FromStr for Consistency {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "eventual" => Ok(Consistency::Eventual),
            "causal" => Ok(Consistency::Causal),
            _ => Err(ParseError {
                what: "consistency".into(),
                input: s.into(),
                reason: "expected \"eventual\" or \"causal\"".into(),
            }),
        }
    }
}

/// What a batch carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BatchKind {
    /// The delta of one refresh.
    Delta,
    /// The whole contents (bootstrap or REINITIALIZE).
    Snapshot,
}

/// The federation's change-log settings, handed to every cluster at registration so the broker is configured once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeLogSettings {
    /// Which broker the federation uses.
    pub backend: Backend,
    /// Comma-separated `host:port` list of the broker.
    pub bootstrap_servers: String,
    /// Prefix of per-stream topics (`pgtrickle` gives `pgtrickle.<cluster>.<schema>.<table>`).
    pub topic_prefix: String,
}

impl Default for ChangeLogSettings {
    fn default() -> Self {
        ChangeLogSettings {
            backend: Backend::Kafka,
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic_prefix: "pgtrickle".into(),
        }
    }
}

/// A checkpoint a cluster wrote to object storage, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointRecord {
    /// Where the checkpoint file is (`file://…`, `s3://…`).
    pub url: String,
    /// The trailer checksum of the file, hex.
    pub checksum: String,
    /// Compressed size.
    pub size_bytes: u64,
    /// When the cluster took it (milliseconds since the Unix epoch, the cluster's clock).
    pub taken_at_unix_ms: u64,
}
