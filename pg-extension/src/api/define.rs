//! Creating, altering and dropping stream tables. Every step runs in the caller's transaction, so
//! an error anywhere leaves nothing created or half-created.

use pgrx::prelude::*;

use crate::catalog::{self, RowLock, StreamTable};
use crate::cdc;
use crate::error::{PgTrickleError, Result};
use crate::query::render::{self, quote_ident};
use crate::refresh::plan::{self, Analysis};
use crate::refresh::{self, Request, Trigger};

use super::schedule::parse_schedule;

fn validate_mode(mode: &str) -> Result<String> {
    let mode = mode.trim().to_ascii_lowercase();
    match mode.as_str() {
        "auto" | "differential" | "full" => Ok(mode),
        _ => Err(PgTrickleError::InvalidArgument {
            argument: "refresh_mode",
            message: format!("\"{mode}\" is not a refresh mode"),
            hint: "Use 'auto', 'differential' or 'full'.".into(),
        }),
    }
}

/// Splits a new stream table's name into (schema, table), defaulting the schema like CREATE TABLE.
pub fn resolve_new_name(name: &str) -> Result<(String, String)> {
    let invalid = |message: String| PgTrickleError::InvalidArgument {
        argument: "name",
        message,
        hint: "Write name or schema.name, quoting as in SQL (\"Mixed Case\").".into(),
    };
    if name.trim().is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    let parts = catalog::column::<String>("SELECT unnest(parse_ident($1))", &[name.into()])?;
    let (schema, table) = match parts.as_slice() {
        [table] => {
            let schema = catalog::scalar::<String>("SELECT current_schema()::text", &[])?
                .ok_or_else(|| invalid("no schema on the search_path can hold it".into()))?;
            (schema, table.clone())
        }
        [schema, table] => (schema.clone(), table.clone()),
        _ => return Err(invalid(format!("\"{name}\" has more than two parts"))),
    };
    let schema_exists = catalog::scalar::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[schema.clone().into()],
    )?
    .unwrap_or(false);
    if !schema_exists {
        return Err(invalid(format!("schema \"{schema}\" does not exist")));
    }
    if table.starts_with("__pgt_") {
        return Err(invalid("names starting with __pgt_ are reserved".into()));
    }
    Ok((schema, table))
}

/// What building a stream table's storage produced.
struct Storage {
    relid: pg_sys::Oid,
    analysis: Analysis,
    effective_mode: &'static str,
}

/// Creates the storage table for `query` as `qualified`, with row identity and bookkeeping columns.
fn build_storage(qualified: &str, query: &str, refresh_mode: &str) -> Result<Storage> {
    if query.trim().is_empty() {
        return Err(PgTrickleError::InvalidQuery {
            message: "the query is empty".into(),
            hint: "Pass a SELECT statement.".into(),
        });
    }
    // PostgreSQL parses and plans the query here: an invalid query fails with its own SQLSTATE (plus our HINT).
    catalog::exec_catching(&format!(
        "CREATE TABLE {qualified} AS SELECT NULL::bigint AS __pgt_row_id, __pgt_u.* FROM ({query}\n) __pgt_u WITH NO DATA"
    ))
    .map_err(|(code, message)| PgTrickleError::QueryRejected { code, message })?;
    let relid = catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[qualified.into()])?
        .ok_or_else(|| PgTrickleError::Internal(format!("{qualified} vanished after CREATE TABLE")))?;
    let reserved = catalog::scalar::<String>(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 1 AND attname::text LIKE '\\_\\_pgt\\_%'",
        &[relid.into()],
    )?;
    if let Some(column) = reserved {
        return Err(PgTrickleError::InvalidQuery {
            message: format!("output column {column} uses the reserved prefix __pgt_"),
            hint: "Rename the column with AS.".into(),
        });
    }
    let mut analysis = plan::analyze(query)?;
    let columns = cdc::user_columns(relid)?;
    if columns.is_empty() {
        return Err(PgTrickleError::InvalidQuery {
            message: "the query returns no columns".into(),
            hint: "Select at least one column.".into(),
        });
    }
    plan::check_exact_aggregates(&mut analysis, &columns);
    let effective_mode = plan::effective_mode(&analysis, refresh_mode)?;
    let mut alter = vec!["ALTER COLUMN __pgt_row_id SET NOT NULL".to_string()];
    if let Some(plan) = analysis.plan() {
        for (column, ty) in render::aux_columns(plan) {
            alter.push(format!("ADD COLUMN {} {ty}", quote_ident(&column)));
        }
    }
    catalog::exec(&format!("ALTER TABLE {qualified} {}", alter.join(", ")))?;
    catalog::exec(&format!("CREATE UNIQUE INDEX ON {qualified} (__pgt_row_id)"))?;
    if analysis.plan_kind() == "project" {
        catalog::exec(&format!("CREATE INDEX ON {qualified} (__pgt_content)"))?;
    }
    Ok(Storage { relid, analysis, effective_mode })
}

/// Records the edges to the sources and starts capturing base tables.
fn register_sources(pgt_id: i64, analysis: &Analysis) -> Result<()> {
    for source in &analysis.sources {
        catalog::exec_with(
            "INSERT INTO pgtrickle.pgt_dependencies (pgt_id, source_relid, source_kind) VALUES ($1, $2, $3)",
            &[pgt_id.into(), source.relid.into(), source.kind.clone().into()],
        )?;
        if source.kind == "table" {
            cdc::ensure_table_capture(source.relid)?;
        }
    }
    Ok(())
}

pub fn create(name: &str, query: &str, schedule: Option<&str>, refresh_mode: &str) -> Result<()> {
    create_with(name, query, schedule, refresh_mode, true)
}

/// Creates a stream table; with `populate` false it starts empty and marked for REINITIALIZE, so the scheduler (or
/// a manual refresh) fills it: what a restore of many stream tables wants in its one transaction.
pub fn create_with(name: &str, query: &str, schedule: Option<&str>, refresh_mode: &str, populate: bool) -> Result<()> {
    let refresh_mode = validate_mode(refresh_mode)?;
    let schedule = parse_schedule(schedule)?;
    let (schema, table) = resolve_new_name(name)?;
    let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
    if catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[qualified.clone().into()])?.is_some() {
        return Err(PgTrickleError::AlreadyExists(format!("{schema}.{table}")));
    }
    let storage = build_storage(&qualified, query, &refresh_mode)?;
    let pgt_id = catalog::scalar::<i64>(
        "INSERT INTO pgtrickle.pgt_stream_tables (pgt_relid, pgt_schema, pgt_name, defining_query, schedule, \
         refresh_mode, effective_mode, full_reason, plan_kind) \
         VALUES ($1, $2, $3, $4, make_interval(secs => $5), $6, $7, $8, $9) RETURNING pgt_id",
        &[
            storage.relid.into(),
            schema.into(),
            table.into(),
            query.into(),
            schedule.into(),
            refresh_mode.into(),
            storage.effective_mode.into(),
            storage.analysis.full_reason().into(),
            storage.analysis.plan_kind().into(),
        ],
    )?
    .ok_or_else(|| PgTrickleError::Internal("INSERT … RETURNING returned nothing".into()))?;
    register_sources(pgt_id, &storage.analysis)?;
    cdc::create_stream_table_buffer(storage.relid)?;
    if !populate {
        catalog::exec_with(
            "UPDATE pgtrickle.pgt_stream_tables SET needs_reinit = true, next_due_at = now() WHERE pgt_id = $1",
            &[pgt_id.into()],
        )?;
        return Ok(());
    }
    let st = catalog::load(pgt_id, RowLock::Wait)?.ok_or_else(|| PgTrickleError::Internal("new row missing".into()))?;
    refresh::refresh(&st, Trigger::Create, Request::Reinitialize)?;
    Ok(())
}

pub fn alter(
    name: &str,
    query: Option<&str>,
    schedule: Option<&str>,
    refresh_mode: Option<&str>,
    status: Option<&str>,
) -> Result<()> {
    let found = catalog::find_by_name(name)?;
    let st =
        catalog::load(found.pgt_id, RowLock::Wait)?.ok_or_else(|| PgTrickleError::UnknownStreamTable(name.into()))?;
    let refresh_mode = refresh_mode.map(validate_mode).transpose()?;
    if query.is_some() {
        // A new query rebuilds the change buffer: batches the publisher has not sent yet would be lost.
        let unpublished = catalog::scalar::<i64>(
            "SELECT $2 - published_seq FROM pgtrickle.pgt_publications WHERE pgt_id = $1",
            &[st.pgt_id.into(), st.last_batch_seq.into()],
        )?
        .unwrap_or(0);
        if unpublished > 0 {
            return Err(PgTrickleError::InvalidArgument {
                argument: "query",
                message: format!(
                    "{} is published and {unpublished} of its batches are not sent to the broker yet",
                    st.qualified()
                ),
                hint: "Retry in a moment (the publisher sends them within its poll interval); \
                       pgtrickle.pgt_publications.last_error says why if it cannot."
                    .into(),
            });
        }
    }
    if let Some(schedule) = schedule {
        let seconds = parse_schedule(Some(schedule))?;
        catalog::exec_with(
            "UPDATE pgtrickle.pgt_stream_tables SET schedule = make_interval(secs => $2), \
             next_due_at = coalesce(last_refresh_at, now()) + make_interval(secs => $2) WHERE pgt_id = $1",
            &[st.pgt_id.into(), seconds.into()],
        )?;
    }
    if let Some(status) = status {
        let status = match status.trim().to_ascii_lowercase().as_str() {
            "active" => "ACTIVE",
            "suspended" => "SUSPENDED",
            other => {
                return Err(PgTrickleError::InvalidArgument {
                    argument: "status",
                    message: format!("\"{other}\" is not a status you can set"),
                    hint: "Use 'active' (also clears an ERROR) or 'suspended'.".into(),
                })
            }
        };
        catalog::exec_with(
            "UPDATE pgtrickle.pgt_stream_tables SET status = $2, consecutive_failures = 0, \
             next_due_at = CASE WHEN $2 = 'ACTIVE' THEN now() ELSE next_due_at END WHERE pgt_id = $1",
            &[st.pgt_id.into(), status.into()],
        )?;
    }
    match query {
        Some(query) => replace_query(&st, query, refresh_mode.as_deref().unwrap_or(&st.refresh_mode))?,
        None => {
            if let Some(mode) = refresh_mode {
                let mut analysis = plan::analyze(&st.defining_query)?;
                plan::check_exact_aggregates(&mut analysis, &cdc::user_columns(st.relid)?);
                let effective = plan::effective_mode(&analysis, &mode)?;
                catalog::exec_with(
                    "UPDATE pgtrickle.pgt_stream_tables SET refresh_mode = $2, effective_mode = $3 WHERE pgt_id = $1",
                    &[st.pgt_id.into(), mode.into(), effective.into()],
                )?;
            }
        }
    }
    Ok(())
}

/// Plans a stream table again over its own query, in place (its sources were rebuilt with other columns): same
/// id and publication, storage rebuilt, a snapshot batch follows. Refused while other stream tables read it.
pub fn requery(st: &StreamTable) -> Result<()> {
    replace_query(st, &st.defining_query, &st.refresh_mode)
}

/// A new defining query: the storage is rebuilt under the same name and a snapshot batch follows
/// (seqs continue). Refused while other stream tables read this one, since its columns may change.
fn replace_query(st: &StreamTable, query: &str, refresh_mode: &str) -> Result<()> {
    if let Some(path) = plan::cycle_path(query, st.relid)? {
        return Err(PgTrickleError::Cycle { name: st.qualified(), path });
    }
    let dependents = catalog::dependents(st.relid)?;
    if !dependents.is_empty() {
        return Err(PgTrickleError::InUse {
            object: format!("the query of {}", st.qualified()),
            dependents: dependents.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>().join(", "),
        });
    }
    let old_sources = catalog::dependencies(st.pgt_id)?;
    catalog::allow_internal_ddl()?;
    catalog::exec(&format!(
        "ALTER TABLE {} RENAME TO {}",
        st.qualified(),
        quote_ident(&format!("__pgt_old_{}", st.pgt_id))
    ))?;
    let storage = build_storage(&st.qualified(), query, refresh_mode)?;
    catalog::exec(&format!(
        "DROP TABLE {}.{}",
        quote_ident(&st.schema),
        quote_ident(&format!("__pgt_old_{}", st.pgt_id))
    ))?;
    cdc::drop_buffer(st.relid)?;
    catalog::exec_with("DELETE FROM pgtrickle.pgt_dependencies WHERE pgt_id = $1", &[st.pgt_id.into()])?;
    for old in old_sources.iter().filter(|d| d.source_kind == "table") {
        if !storage.analysis.sources.iter().any(|s| s.relid == old.source_relid) {
            cdc::release_table_capture(old.source_relid)?;
        }
    }
    catalog::exec_with(
        "UPDATE pgtrickle.pgt_stream_tables SET pgt_relid = $2, defining_query = $3, refresh_mode = $4, \
         effective_mode = $5, full_reason = $6, plan_kind = $7, row_count = 0 WHERE pgt_id = $1",
        &[
            st.pgt_id.into(),
            storage.relid.into(),
            query.into(),
            refresh_mode.into(),
            storage.effective_mode.into(),
            storage.analysis.full_reason().into(),
            storage.analysis.plan_kind().into(),
        ],
    )?;
    register_sources(st.pgt_id, &storage.analysis)?;
    cdc::create_stream_table_buffer(storage.relid)?;
    catalog::end_internal_ddl()?;
    let st = catalog::load(st.pgt_id, RowLock::Wait)?.ok_or_else(|| PgTrickleError::Internal("row missing".into()))?;
    refresh::refresh(&st, Trigger::Alter, Request::Reinitialize)?;
    Ok(())
}

pub fn drop(name: &str, cascade: bool) -> Result<()> {
    let st = catalog::find_by_name(name)?;
    drop_by_id(st.pgt_id, cascade, name)
}

fn drop_by_id(pgt_id: i64, cascade: bool, name: &str) -> Result<()> {
    let st = catalog::load(pgt_id, RowLock::Wait)?.ok_or_else(|| PgTrickleError::UnknownStreamTable(name.into()))?;
    let published = catalog::scalar::<String>(
        "SELECT stream_id FROM pgtrickle.pgt_publications WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    if let Some(stream) = published {
        return Err(PgTrickleError::Published { name: st.qualified(), stream });
    }
    let federated = catalog::scalar::<String>(
        "SELECT table_id FROM pgtrickle.pgt_federated_tables WHERE pgt_id = $1",
        &[st.pgt_id.into()],
    )?;
    if let Some(table_id) = federated {
        return Err(PgTrickleError::InvalidArgument {
            argument: "name",
            message: format!("{} is the federated stream table {table_id}", st.qualified()),
            hint: format!("Drop it with SELECT pgtrickle.drop_federated_stream_table('{}');", st.qualified()),
        });
    }
    let dependents = catalog::dependents(st.relid)?;
    if !dependents.is_empty() {
        if !cascade {
            return Err(PgTrickleError::InUse {
                object: format!("stream table {}", st.qualified()),
                dependents: dependents.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>().join(", "),
            });
        }
        for (dependent_id, dependent_name) in dependents {
            drop_by_id(dependent_id, true, &dependent_name)?;
        }
    }
    let sources = catalog::dependencies(st.pgt_id)?;
    catalog::allow_internal_ddl()?;
    catalog::exec(&format!("DROP TABLE {}", st.qualified()))?;
    cdc::drop_buffer(st.relid)?;
    catalog::exec_with("DELETE FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1", &[st.pgt_id.into()])?;
    for source in sources.iter().filter(|d| d.source_kind == "table") {
        cdc::release_table_capture(source.source_relid)?;
    }
    catalog::end_internal_ddl()?;
    Ok(())
}
