//! The SQL API: thin `#[pg_extern]` wrappers that raise [`PgTrickleError`]s with SQLSTATE, DETAIL
//! and HINT. The work is in [`define`] (create/alter/drop) and [`crate::refresh`].

pub mod checkpoint;
pub mod define;
pub mod federation;
pub mod schedule;

use pgrx::prelude::*;

use crate::catalog::{self, RowLock};
use crate::error::{OrRaise, PgTrickleError, Result};
use crate::refresh::{self, Request, Trigger};

/// Creates a stream table `name` holding the result of `query`, refreshed every `schedule`
/// ('manual' or NULL: only on request) by `refresh_mode` ('auto', 'differential' or 'full').
#[pg_extern(schema = "pgtrickle")]
fn create_stream_table(
    name: &str,
    query: &str,
    schedule: default!(Option<&str>, "'5s'"),
    refresh_mode: default!(&str, "'auto'"),
) {
    define::create(name, query, schedule, refresh_mode).or_raise()
}

/// Changes a stream table's query, schedule, refresh mode or status ('active' / 'suspended');
/// arguments left NULL keep their value.
#[pg_extern(schema = "pgtrickle")]
fn alter_stream_table(
    name: &str,
    query: default!(Option<&str>, "NULL"),
    schedule: default!(Option<&str>, "NULL"),
    refresh_mode: default!(Option<&str>, "NULL"),
    status: default!(Option<&str>, "NULL"),
) {
    define::alter(name, query, schedule, refresh_mode, status).or_raise()
}

/// Drops a stream table, its change buffer and its catalog rows; with `cascade`, also the stream
/// tables that read it.
#[pg_extern(schema = "pgtrickle")]
fn drop_stream_table(name: &str, cascade: default!(bool, false)) {
    define::drop(name, cascade).or_raise()
}

/// Brings a stream table up to date now; returns the seq of the batch written (NULL: nothing changed).
#[pg_extern(schema = "pgtrickle")]
fn refresh_stream_table(name: &str) -> Option<i64> {
    refresh_by_name(name, Request::UpToDate).or_raise()
}

/// Recomputes a stream table from scratch and writes a snapshot batch (its whole contents).
#[pg_extern(schema = "pgtrickle")]
fn reinitialize_stream_table(name: &str) -> Option<i64> {
    refresh_by_name(name, Request::Reinitialize).or_raise()
}

fn refresh_by_name(name: &str, request: Request) -> Result<Option<i64>> {
    let found = catalog::find_by_name(name)?;
    let st =
        catalog::load(found.pgt_id, RowLock::Wait)?.ok_or_else(|| PgTrickleError::UnknownStreamTable(name.into()))?;
    Ok(refresh::refresh(&st, Trigger::Manual, request)?.batch_seq)
}
