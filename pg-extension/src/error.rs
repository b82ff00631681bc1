//! The extension's one error type, classified the way a DBA triages: the caller's mistake (user), a
//! catalog or object that is not in the state the operation needs (schema), something broken inside
//! (system), or a condition worth retrying (transient). Raised at the SQL boundary with SQLSTATE,
//! DETAIL and HINT; everything below the boundary returns `Result<_, PgTrickleError>`.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Why a checkpoint is refused by a restore: each its own SQLSTATE, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFault {
    /// Nothing in the file.
    Empty,
    /// Not a checkpoint.
    Foreign,
    /// Written by a newer format version.
    Newer,
    /// Ends early.
    Truncated,
    /// Damaged or inconsistent.
    Corrupt,
    /// A table the checkpoint's stream tables read is not in this database.
    MissingSource,
    /// Holds what a restore cannot recreate yet.
    Unsupported,
    /// The database already has stream tables and `replace` was not asked for.
    NotEmpty,
}

/// How an error should be read: who has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad argument or query: the caller fixes the call.
    User,
    /// Object missing, in use, or in the wrong state: the caller changes the catalog first.
    Schema,
    /// A bug or broken invariant inside the extension.
    System,
    /// Lock timeout, serialization failure, shutdown: retrying later may succeed.
    Transient,
}

#[derive(Debug, thiserror::Error)]
pub enum PgTrickleError {
    #[error("invalid value for {argument}: {message}")]
    InvalidArgument { argument: &'static str, message: String, hint: String },

    #[error("stream table \"{0}\" does not exist")]
    UnknownStreamTable(String),

    #[error("relation \"{0}\" already exists")]
    AlreadyExists(String),

    #[error("the defining query is not valid: {message}")]
    InvalidQuery { message: String, hint: String },

    #[error("the defining query is not valid: {message}")]
    QueryRejected { code: PgSqlErrorCode, message: String },

    #[error("the defining query cannot be maintained differentially: {reason}")]
    NotDifferential { reason: String },

    #[error("the defining query calls volatile function {function}()")]
    VolatileFunction { function: String },

    #[error("source \"{source_name}\" is a {kind}, which stream tables cannot read")]
    UnsupportedSource { source_name: String, kind: String },

    #[error("stream table \"{name}\" would depend on itself: {path}")]
    Cycle { name: String, path: String },

    #[error("cannot drop {object} because stream tables depend on it: {dependents}")]
    InUse { object: String, dependents: String },

    #[error("stream table \"{name}\" is being refreshed by another session")]
    Busy { name: String },

    #[error(
        "{stream} changed its columns; {table} must be rebuilt over the new ones, and stream tables read it: \
         {dependents}"
    )]
    ColumnChangeBlocked { table: String, stream: String, dependents: String },

    #[error("the coordinator refused: {message}")]
    Coordinator { code: String, message: String, hint: String, rejected: bool },

    #[error("no coordinator could be reached: {0}")]
    CoordinatorUnavailable(String),

    #[error("this cluster is already registered as \"{cluster}\" in federation \"{federation}\"")]
    AlreadyRegistered { cluster: String, federation: String },

    #[error("this cluster is not registered with a federation")]
    NotRegistered,

    #[error("stream table {name} is published to the federation as {stream}")]
    Published { name: String, stream: String },

    #[error("checkpoint storage {url}: {message}")]
    CheckpointStorage { url: String, message: String },

    #[error("checkpoint {url} refused: {message}")]
    CheckpointRefused { url: String, fault: CheckpointFault, message: String },

    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = PgTrickleError> = std::result::Result<T, E>;

impl PgTrickleError {
    pub fn class(&self) -> ErrorClass {
        use PgTrickleError::*;
        match self {
            InvalidArgument { .. }
            | InvalidQuery { .. }
            | QueryRejected { .. }
            | NotDifferential { .. }
            | VolatileFunction { .. } => ErrorClass::User,
            UnknownStreamTable(_)
            | AlreadyExists(_)
            | UnsupportedSource { .. }
            | Cycle { .. }
            | InUse { .. }
            | ColumnChangeBlocked { .. } => ErrorClass::Schema,
            Coordinator { rejected: true, .. } => ErrorClass::User,
            AlreadyRegistered { .. } | NotRegistered | Published { .. } => ErrorClass::Schema,
            CheckpointRefused { fault: CheckpointFault::MissingSource | CheckpointFault::NotEmpty, .. } => {
                ErrorClass::Schema
            }
            CheckpointRefused { .. } => ErrorClass::User,
            Busy { .. } | CoordinatorUnavailable(_) | Coordinator { .. } | CheckpointStorage { .. } => {
                ErrorClass::Transient
            }
            Internal(_) => ErrorClass::System,
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        use PgTrickleError::*;
        match self {
            InvalidArgument { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            UnknownStreamTable(_) => ERRCODE_UNDEFINED_TABLE,
            AlreadyExists(_) => ERRCODE_DUPLICATE_TABLE,
            InvalidQuery { .. } => ERRCODE_INVALID_OBJECT_DEFINITION,
            QueryRejected { code, .. } => *code,
            NotDifferential { .. } | UnsupportedSource { .. } => ERRCODE_FEATURE_NOT_SUPPORTED,
            VolatileFunction { .. } => ERRCODE_INVALID_OBJECT_DEFINITION,
            Cycle { .. } => ERRCODE_INVALID_RECURSION,
            InUse { .. } | ColumnChangeBlocked { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            Busy { .. } => ERRCODE_LOCK_NOT_AVAILABLE,
            Coordinator { rejected: true, code, .. } => coordinator_sqlstate(code),
            Coordinator { .. } | CoordinatorUnavailable(_) => ERRCODE_CONNECTION_FAILURE,
            AlreadyRegistered { .. } => ERRCODE_DUPLICATE_OBJECT,
            NotRegistered => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Published { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            CheckpointStorage { .. } => ERRCODE_IO_ERROR,
            CheckpointRefused { fault, .. } => match fault {
                CheckpointFault::Empty => ERRCODE_ZERO_LENGTH_CHARACTER_STRING,
                CheckpointFault::Foreign => ERRCODE_INVALID_PARAMETER_VALUE,
                CheckpointFault::Newer | CheckpointFault::Unsupported => ERRCODE_FEATURE_NOT_SUPPORTED,
                CheckpointFault::Truncated => ERRCODE_BAD_COPY_FILE_FORMAT,
                CheckpointFault::Corrupt => ERRCODE_DATA_CORRUPTED,
                CheckpointFault::MissingSource => ERRCODE_UNDEFINED_TABLE,
                CheckpointFault::NotEmpty => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            },
            Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn hint(&self) -> Option<String> {
        use PgTrickleError::*;
        Some(match self {
            InvalidArgument { hint, .. } | InvalidQuery { hint, .. } => hint.clone(),
            QueryRejected { .. } => "The defining query must be a SELECT that runs in this database; a federated \
                                     stream table reads the mirrors CLUSTER.STREAM_TABLE of its sources."
                .into(),
            UnknownStreamTable(_) => "SELECT name FROM pgtrickle.stream_tables lists the stream tables.".into(),
            AlreadyExists(_) => "Choose another name, or drop the existing relation first.".into(),
            NotDifferential { .. } => {
                "Use refresh_mode => 'full' (recompute and diff), or 'auto' to pick differential where it applies."
                    .into()
            }
            VolatileFunction { .. } => {
                "A differential stream table must give the same rows for the same sources; use refresh_mode => \
                 'full', or a stable/immutable function."
                    .into()
            }
            UnsupportedSource { .. } => {
                "Stream tables read ordinary or partitioned tables and other stream tables; for a view, use \
                 refresh_mode => 'full' or name its tables."
                    .into()
            }
            Cycle { .. } => "Stream tables form a DAG: define the query over tables that do not read this one.".into(),
            InUse { .. } => {
                "Drop the dependent stream tables first, or call pgtrickle.drop_stream_table(name, cascade => true)."
                    .into()
            }
            Busy { .. } => "Retry when the running refresh has finished.".into(),
            ColumnChangeBlocked { table, .. } => format!(
                "Drop those stream tables (pgtrickle.drop_stream_table): {table} is then rebuilt within seconds and \
                 the source resumes; create them again over its new columns."
            ),
            Coordinator { hint, .. } => hint.clone(),
            CoordinatorUnavailable(_) => {
                "Check that the coordinators run and that the URL and pg_trickle.coordinator_token are right; \
                 SELECT * FROM pgtrickle.federation_status() shows the last contact."
                    .into()
            }
            AlreadyRegistered { .. } => "Call pgtrickle.deregister_federation() first to move to another one.".into(),
            NotRegistered => {
                "Call pgtrickle.register_federation('http://c1:7070,c2:7070,c3:7070', 'name') first.".into()
            }
            Published { name, .. } => format!("Withdraw it first: SELECT pgtrickle.unpublish_stream_table('{name}');"),
            CheckpointStorage { .. } => {
                "Checkpoint URLs are file:///absolute/path, s3://bucket/key, gs://bucket/key or \
                                         az://container/key; cloud credentials come from the server's environment \
                                         (AWS_ACCESS_KEY_ID, ...). Check the URL, the credentials and that the \
                                         server can write there."
                    .into()
            }
            CheckpointRefused { fault, .. } => match fault {
                CheckpointFault::Empty | CheckpointFault::Truncated => {
                    "The file was cut short (an interrupted upload or copy): restore an earlier checkpoint; \
                     SELECT * FROM pgtrickle.list_checkpoints() lists them."
                        .into()
                }
                CheckpointFault::Foreign => {
                    "Name a .jsonl.zst file written by pgtrickle.checkpoint(); pgtrickle.list_checkpoints() lists them."
                        .into()
                }
                CheckpointFault::Newer => {
                    "Update the pg_trickle extension of this database to the release that wrote it, then retry.".into()
                }
                CheckpointFault::Corrupt => {
                    "The file is damaged or was edited: restore an earlier checkpoint (pgtrickle.list_checkpoints())."
                        .into()
                }
                CheckpointFault::MissingSource => {
                    "Restore or create the source tables first (pg_restore of the data), then restore the checkpoint; \
                     nothing was changed."
                        .into()
                }
                CheckpointFault::Unsupported => {
                    "Register with the federation (pgtrickle.register_federation(..., takeover => true)) and recreate \
                     publications and federated stream tables by hand; nothing was changed."
                        .into()
                }
                CheckpointFault::NotEmpty => {
                    "Call pgtrickle.restore_from_checkpoint(url, replace => true) to drop this database's stream \
                     tables and recreate them from the checkpoint."
                        .into()
                }
            },
            Internal(_) => return None,
        })
    }

    pub fn detail(&self) -> Option<String> {
        Some(format!("error class: {:?}", self.class()).to_lowercase())
    }

    /// Raises the error as a PostgreSQL ERROR (aborting the transaction, so nothing is half-done).
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "pg_trickle");
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

impl From<pgrx::spi::Error> for PgTrickleError {
    fn from(error: pgrx::spi::Error) -> Self {
        PgTrickleError::Internal(format!("SPI: {error}"))
    }
}

/// Unwraps a result at the SQL boundary, raising the error with SQLSTATE, DETAIL and HINT.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(value) => value,
            Err(error) => error.raise(),
        }
    }
}

/// The SQLSTATE of a coordinator refusal, by the coordinator's error code: what a PostgreSQL user would get for
/// the same kind of refusal from PostgreSQL itself.
fn coordinator_sqlstate(code: &str) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match code {
        "unauthorized" => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        "cycle_detected" => ERRCODE_INVALID_RECURSION,
        "unknown_cluster" | "unknown_stream" | "unknown_federated_table" | "unknown_upstream" | "not_found" => {
            ERRCODE_UNDEFINED_OBJECT
        }
        "cluster_name_taken" | "already_exists" => ERRCODE_DUPLICATE_OBJECT,
        "has_dependents" => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        "stale_producer_epoch"
        | "frontier_gap"
        | "frontier_conflict"
        | "frontier_too_old"
        | "state_not_empty"
        | "idempotency_key_reused" => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        _ => ERRCODE_INVALID_PARAMETER_VALUE,
    }
}
