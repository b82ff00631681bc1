//! Mirror tables: the consumer's copy of a published stream, `CLUSTER.STREAM_TABLE` (what a federated stream
//! table's query names), with the source's columns and types plus `__pgt_row_id`, the row identity batches are
//! keyed by. Mirrors change only by applying committed batches: a delta deletes by row id then inserts; a
//! snapshot replaces the contents. Every statement here takes whole arrays, one statement per batch and action,
//! so applying costs a few statements per batch rather than one per row.

use pgrx::prelude::*;
use shared_model::envelope::{Batch, RowAction};
use shared_model::{BatchKind, ColumnDef, StreamId};

use crate::catalog;
use crate::error::{PgTrickleError, Result};
use crate::query::render::quote_ident;

/// `"cluster"."table"` of a stream's mirror.
pub fn mirror_name(stream: &StreamId) -> String {
    format!("{}.{}", quote_ident(&stream.0.cluster.to_string()), quote_ident(&stream.0.table.to_string()))
}

/// Creates the mirror of `stream` (and its schema); refuses a name that is taken.
pub fn create(stream: &StreamId, columns: &[ColumnDef]) -> Result<pg_sys::Oid> {
    let name = mirror_name(stream);
    let taken = catalog::scalar::<bool>("SELECT to_regclass($1) IS NOT NULL", &[name.clone().into()])?.unwrap_or(false);
    if taken {
        return Err(PgTrickleError::AlreadyExists(name));
    }
    // Type names come from the coordinators or an envelope: each is checked for shape and resolved here before
    // it is written into DDL.
    let mut definitions = String::new();
    for column in columns {
        definitions.push_str(&format!("{} {}, ", quote_ident(&column.name), resolved_type(&column.type_name)?));
    }
    catalog::exec(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&stream.0.cluster.to_string())))?;
    catalog::exec(&format!("CREATE TABLE {name} ({definitions}__pgt_row_id bigint PRIMARY KEY)"))?;
    catalog::exec(&format!(
        "COMMENT ON TABLE {name} IS 'pg_trickle mirror of {stream}: changed only by the subscriber'"
    ))?;
    catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[name.into()])?
        .ok_or_else(|| PgTrickleError::Internal(format!("mirror {stream} vanished after creation")))
}

/// A column type name from the wire, once it has the shape of a type name (so it cannot leave a column
/// definition or a cast) and names a type that exists on this cluster.
pub fn resolved_type(type_name: &str) -> Result<&str> {
    shared_model::check_type_name(type_name).map_err(|why| PgTrickleError::InvalidArgument {
        argument: "column type",
        message: why,
        hint: "Column types travel as format_type() prints them; the source's column types must be plain types.".into(),
    })?;
    let exists = catalog::scalar::<bool>("SELECT to_regtype($1) IS NOT NULL", &[type_name.into()])?.unwrap_or(false);
    if !exists {
        return Err(PgTrickleError::InvalidArgument {
            argument: "column type",
            message: format!("type {type_name} does not exist on this cluster"),
            hint: "Create it here first (the enum, domain or extension type the source's column uses), then retry."
                .into(),
        });
    }
    Ok(type_name)
}

/// Empties a mirror (its stream is another incarnation now); returns the rows deleted.
pub fn clear(mirror: pg_sys::Oid) -> Result<i64> {
    let name = catalog::scalar::<String>("SELECT $1::regclass::text", &[mirror.into()])?
        .ok_or_else(|| PgTrickleError::Internal(format!("mirror {} is gone", mirror.to_u32())))?;
    Ok(catalog::exec(&format!("DELETE FROM {name}"))? as i64)
}

/// Applies one committed batch to a mirror whose columns are `columns`; returns the rows written.
pub fn apply(mirror: pg_sys::Oid, columns: &[ColumnDef], batch: &Batch) -> Result<i64> {
    if batch.columns != columns {
        return Err(PgTrickleError::Internal(format!(
            "batch {} of {} has columns {:?}, the mirror has {:?}",
            batch.seq,
            batch.stream,
            batch.columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect::<Vec<_>>(),
            columns.iter().map(|c| format!("{} {}", c.name, c.type_name)).collect::<Vec<_>>(),
        )));
    }
    let name = catalog::scalar::<String>("SELECT $1::regclass::text", &[mirror.into()])?
        .ok_or_else(|| PgTrickleError::Internal(format!("mirror {} of {} is gone", mirror.to_u32(), batch.stream)))?;
    // The mirror's columns were resolved when it was created; the shape is checked again before any cast.
    for column in columns {
        shared_model::check_type_name(&column.type_name).map_err(PgTrickleError::Internal)?;
    }
    let mut written = 0i64;
    if batch.kind == BatchKind::Snapshot {
        written += catalog::exec(&format!("DELETE FROM {name}"))? as i64;
    } else {
        let deleted: Vec<i64> = batch.rows.iter().filter(|r| r.action == RowAction::Delete).map(|r| r.row_id).collect();
        if !deleted.is_empty() {
            written += catalog::exec_with(
                &format!("DELETE FROM {name} WHERE __pgt_row_id = ANY($1::int8[])"),
                &[deleted.into()],
            )? as i64;
        }
    }
    let inserted: Vec<_> = batch.rows.iter().filter(|r| r.action == RowAction::Insert).collect();
    if !inserted.is_empty() {
        // One text array per column, unnested together and cast to the column's type.
        let mut args: Vec<pgrx::datum::DatumWithOid> = Vec::with_capacity(columns.len() + 1);
        args.push(inserted.iter().map(|r| r.row_id).collect::<Vec<i64>>().into());
        for i in 0..columns.len() {
            let values: Vec<Option<String>> = inserted.iter().map(|r| r.values.get(i).cloned().flatten()).collect();
            args.push(values.into());
        }
        let params: Vec<String> = (0..columns.len()).map(|i| format!("${}::text[]", i + 2)).collect::<Vec<_>>();
        let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        let casts: Vec<String> = columns.iter().enumerate().map(|(i, c)| format!("u.c{i}::{}", c.type_name)).collect();
        let targets: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "INSERT INTO {name} ({targets}{sep}__pgt_row_id) SELECT {casts}{sep}u.id \
             FROM unnest($1::int8[]{comma}{params}) AS u(id{comma}{aliases})",
            targets = targets.join(", "),
            casts = casts.join(", "),
            params = params.join(", "),
            aliases = aliases.join(", "),
            sep = if columns.is_empty() { "" } else { ", " },
            comma = if columns.is_empty() { "" } else { ", " },
        );
        written += catalog::exec_with(&sql, &args)? as i64;
    }
    Ok(written)
}
