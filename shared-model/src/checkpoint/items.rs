//! What a checkpoint holds: the header, one typed item per line, the trailer. Objects are named (schema and
//! relation name), never identified by OID, so a checkpoint restores onto another server; no item carries a
//! credential (the federation's message key and tokens stay out).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{ColumnDef, Consistency};

/// The value of the header's `format` field: what tells a checkpoint from any other JSON lines file.
pub const FORMAT_NAME: &str = "pg_trickle_checkpoint";

/// The format version this code writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// The format version ([`FORMAT_VERSION`] when written by this code).
    pub version: u32,
    /// The `pg_trickle` version that wrote it.
    pub extension_version: String,
    /// The federation cluster name, when the database is registered with a federation.
    pub cluster: Option<String>,
    /// The database it was taken from.
    pub database: String,
    /// When it was written, RFC 3339 in UTC (`2026-12-01T16:00:00.123Z`).
    pub written_at: String,
    /// How many items of each kind follow ([`Item::kind`] → count); kinds with none are left out.
    pub counts: BTreeMap<String, u64>,
}

/// The last line: how many lines precede it, and the SHA-256 (hex) of all their bytes, newlines included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    pub lines: u64,
    pub sha256: String,
}

/// `{"trailer": {...}}`: the trailer's line, told from items by its single key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrailerLine {
    pub trailer: Trailer,
}

/// A relation by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        QualifiedName { schema: schema.into(), name: name.into() }
    }

    /// PostgreSQL's rules for a name: not empty, at most 63 bytes, no NUL.
    pub(crate) fn check(&self) -> Result<(), String> {
        for part in [&self.schema, &self.name] {
            if part.is_empty() || part.len() > 63 || part.contains('\0') {
                return Err(format!("{self} is not a valid PostgreSQL name (1 to 63 bytes, no NUL)"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// The refresh mode a stream table was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshMode {
    Auto,
    Differential,
    Full,
}

/// A stream table's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamTableStatus {
    Active,
    Suspended,
    Error,
}

/// What a stream table reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Table,
    StreamTable,
    View,
}

/// A group of stream tables the DAG analysis ties together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// A strongly connected component (a cycle).
    Scc,
    /// Stream tables that share sources through two or more paths, refreshed together for consistency.
    Diamond,
}

/// How far a stream table consumed a source's change buffer (local consumption watermark).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watermark {
    /// `pg_snapshot` text (`xmin:xmax:xip,…`) of the last refresh.
    pub snapshot: Option<String>,
    /// The refreshing transaction's own rows were consumed up to this change id.
    pub xid: Option<u64>,
    pub change_id: Option<i64>,
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Item {
    /// A stream table's definition and settings.
    StreamTable {
        name: QualifiedName,
        query: String,
        /// Seconds between scheduled refreshes, None when refreshed on demand only.
        schedule_secs: Option<f64>,
        refresh_mode: RefreshMode,
        status: StreamTableStatus,
        /// Further per-stream-table settings by name.
        settings: BTreeMap<String, String>,
        /// The refresh SQL generated for it (informational: restore regenerates it from the query).
        refresh_sql: Option<String>,
    },
    /// An edge of the local DAG: `stream_table` reads `source`, and how far it consumed it.
    Dependency { stream_table: QualifiedName, source: QualifiedName, source_kind: SourceKind, consumed: Watermark },
    /// A group of the DAG analysis.
    Group { kind: GroupKind, members: Vec<QualifiedName> },
    /// What refreshing a stream table has cost, aggregated from its refresh history.
    RefreshCost {
        stream_table: QualifiedName,
        refreshes: u64,
        failures: u64,
        mean_ms: f64,
        max_ms: f64,
        last_refresh_at: Option<String>,
    },
    /// The database's federation registration (no key, no token).
    Federation {
        coordinator_url: String,
        cluster: String,
        federation: String,
        backend: String,
        bootstrap_servers: String,
        topic_prefix: String,
        registered_at_index: u64,
        producer_epoch: u64,
    },
    /// A stream table published to the federation, and how far its batches were published.
    Publication { stream_table: QualifiedName, stream_id: String, base_seq: u64, published_seq: u64 },
    /// A federated stream table.
    FederatedTable { stream_table: QualifiedName, table_id: String, consistency: Consistency, applied_cut_at: u64 },
    /// A mirrored source of a federated table, and how far its batches were applied.
    FederatedSource {
        stream_table: QualifiedName,
        stream_id: String,
        source_url: String,
        mirror: QualifiedName,
        topic: String,
        columns: Vec<ColumnDef>,
        applied_seq: u64,
        applied_offset: Option<i64>,
    },
}

impl Item {
    /// The item's `type`, as counted in the header.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::StreamTable { .. } => "stream_table",
            Item::Dependency { .. } => "dependency",
            Item::Group { .. } => "group",
            Item::RefreshCost { .. } => "refresh_cost",
            Item::Federation { .. } => "federation",
            Item::Publication { .. } => "publication",
            Item::FederatedTable { .. } => "federated_table",
            Item::FederatedSource { .. } => "federated_source",
        }
    }

    /// Checks what the codec can check alone: every name is a valid PostgreSQL name, numbers are finite.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Item::StreamTable { name, query, schedule_secs, .. } => {
                name.check()?;
                if query.trim().is_empty() {
                    return Err(format!("stream table {name} has an empty query"));
                }
                if schedule_secs.is_some_and(|s| !s.is_finite() || s <= 0.0) {
                    return Err(format!("stream table {name} has a schedule that is not a positive number"));
                }
                Ok(())
            }
            Item::Dependency { stream_table, source, .. } => stream_table.check().and(source.check()),
            Item::Group { members, .. } => {
                if members.is_empty() {
                    return Err("a group without members".into());
                }
                members.iter().try_for_each(QualifiedName::check)
            }
            Item::RefreshCost { stream_table, mean_ms, max_ms, .. } => {
                if !mean_ms.is_finite() || !max_ms.is_finite() || *mean_ms < 0.0 || *max_ms < 0.0 {
                    return Err(format!("refresh cost of {stream_table} is not a non-negative number"));
                }
                stream_table.check()
            }
            Item::Federation { cluster, .. } if cluster.is_empty() => Err("federation without a cluster name".into()),
            Item::Federation { .. } => Ok(()),
            Item::Publication { stream_table, .. } | Item::FederatedTable { stream_table, .. } => stream_table.check(),
            Item::FederatedSource { stream_table, mirror, .. } => stream_table.check().and(mirror.check()),
        }
    }
}
