//! SQL functions of checkpoints.

use pgrx::prelude::*;

use crate::checkpoint;
use crate::error::OrRaise;

/// Writes a checkpoint of this database's `pg_trickle` state (stream tables, dependencies and their consumption
/// watermarks, refresh costs, federation entries; never a credential) to `url`: a `….jsonl.zst` object, or a
/// prefix under which `<database>/<RFC 3339 UTC time>.jsonl.zst` is created (default: `pg_trickle.checkpoint_url`,
/// else the data directory's `pg_trickle/checkpoints`). Returns where it went, its size and its items per kind.
#[pg_extern(schema = "pgtrickle")]
fn checkpoint(
    url: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(url, String), name!(bytes, i64), name!(items, pgrx::JsonB))> {
    let written = checkpoint::write(url).or_raise();
    let counts = serde_json::to_value(&written.counts).unwrap_or_default();
    TableIterator::once((written.url, written.bytes as i64, pgrx::JsonB(counts)))
}
