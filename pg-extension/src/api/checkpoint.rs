//! SQL functions of checkpoints.

use pgrx::prelude::*;

use crate::checkpoint;
use crate::error::OrRaise;

/// Writes a checkpoint of this database's `pg_trickle` state (stream tables, dependencies and their consumption
/// watermarks, refresh costs, federation entries; never a credential) to `url`: a `….jsonl.zst` object, or a
/// prefix under which `<database>/<RFC 3339 UTC time>.jsonl.zst` is created (default: `pg_trickle.checkpoint_url`,
/// else the data directory's `pg_trickle/checkpoints`). Returns where it went, its size, its items per kind, and
/// whether the federation's coordinators recorded it (when this database is registered).
#[pg_extern(schema = "pgtrickle")]
fn checkpoint(
    url: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(url, String), name!(bytes, i64), name!(items, pgrx::JsonB), name!(recorded, bool))> {
    let written = checkpoint::write(url).or_raise();
    let counts = serde_json::to_value(&written.counts).unwrap_or_default();
    TableIterator::once((written.url, written.bytes as i64, pgrx::JsonB(counts), written.recorded))
}

/// Microseconds since 2000-01-01 (PostgreSQL's epoch) of a Unix time in milliseconds.
fn timestamp(unix_ms: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    pgrx::datum::TimestampWithTimeZone::try_from((unix_ms - 946_684_800_000) * 1000).ok()
}

/// The checkpoints directly under `prefix` (default: this database's folder under `pg_trickle.checkpoint_url`),
/// newest first, with their size and the time they were taken.
#[pg_extern(schema = "pgtrickle")]
fn list_checkpoints(
    prefix: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (name!(url, String), name!(bytes, i64), name!(taken_at, Option<pgrx::datum::TimestampWithTimeZone>)),
> {
    let listed = checkpoint::list(prefix).or_raise();
    TableIterator::new(listed.into_iter().map(|l| (l.url, l.bytes as i64, timestamp(l.taken_at_ms))))
}

/// Deletes the checkpoints under `prefix` (default: this database's folder) taken more than `retention_days`
/// (default: `pg_trickle.checkpoint_retention_days`) ago; the newest is always kept, and files that are not
/// checkpoints are never touched. Returns the URLs deleted.
#[pg_extern(schema = "pgtrickle")]
fn prune_checkpoints(
    prefix: default!(Option<&str>, "NULL"),
    retention_days: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(url, String),)> {
    let days = retention_days.unwrap_or_else(|| crate::config::CHECKPOINT_RETENTION_DAYS.get());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let pruned = checkpoint::prune(prefix, i64::from(days.max(0)), now).or_raise();
    TableIterator::new(pruned.into_iter().map(|u| (u,)))
}

/// Recreates this database's stream tables from the checkpoint at `url`. The whole file and every relation it
/// names are checked first (a damaged, truncated, foreign or newer file, or a missing source table, is refused
/// with its own SQLSTATE and nothing changes); then, in this transaction, the stream tables are recreated in
/// dependency order, empty and marked for REINITIALIZE (the scheduler, or pgtrickle.refresh_stream_table, fills
/// them). A database that already has stream tables is refused unless `replace`, which drops them first.
#[pg_extern(schema = "pgtrickle")]
fn restore_from_checkpoint(
    url: &str,
    replace: default!(bool, false),
) -> TableIterator<'static, (name!(stream_tables, i64), name!(taken_at, String), name!(from_database, String))> {
    let restored = checkpoint::restore::restore(url, replace).or_raise();
    TableIterator::once((restored.stream_tables, restored.header.written_at, restored.header.database))
}
