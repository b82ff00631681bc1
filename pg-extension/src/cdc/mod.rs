//! Change capture. Every source a stream table reads has a change buffer in schema
//! `pgtrickle_changes`, named after the source's OID:
//! - a base table gets statement-level AFTER triggers with transition tables (one INSERT … SELECT per
//!   statement, not one per row) and a TRUNCATE trigger that writes a `T` marker;
//! - a stream table's own buffer receives its batches (`I`/`D` rows stamped with the batch seq and the
//!   row identity; a snapshot batch starts with a `T` marker).
//!
//! Each row carries the writing transaction's top-level xid. A consumer's watermark is the snapshot
//! its last refresh read under: rows whose xid that snapshot saw are consumed. Rows are pruned once
//! every consumer's snapshot xmin has passed them.

use pgrx::prelude::*;

use crate::catalog::{self, Dependency};
use crate::error::Result;
use crate::query::render::{quote_ident, quote_literal};

/// `pgtrickle_changes."changes_<oid>"`.
pub fn buffer_name(relid: pg_sys::Oid) -> String {
    format!("pgtrickle_changes.{}", quote_ident(&format!("changes_{}", relid.to_u32())))
}

fn capture_function_name(relid: pg_sys::Oid) -> String {
    format!("pgtrickle_changes.{}", quote_ident(&format!("capture_{}", relid.to_u32())))
}

/// User-visible columns of a relation (`__pgt_*` bookkeeping columns excluded), with their SQL types.
pub fn user_columns(relid: pg_sys::Oid) -> Result<Vec<(String, String)>> {
    Spi::connect(|client| {
        let sql = "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                   WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attname::text NOT LIKE '\\_\\_pgt\\_%' \
                   ORDER BY attnum";
        let mut columns = Vec::new();
        for row in client.select(sql, None, &[relid.into()])? {
            columns.push((row.get::<String>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok(columns)
    })
}

fn column_list(columns: &[(String, String)], prefix: Option<&str>) -> String {
    columns
        .iter()
        .map(|(name, _)| match prefix {
            Some(p) => format!("{p}.{}", quote_ident(name)),
            None => quote_ident(name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn column_definitions(columns: &[(String, String)]) -> String {
    columns.iter().map(|(name, ty)| format!(", {} {ty}", quote_ident(name))).collect()
}

fn buffer_exists(relid: pg_sys::Oid) -> Result<bool> {
    Ok(catalog::scalar::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_change_buffers WHERE source_relid = $1)",
        &[relid.into()],
    )?
    .unwrap_or(false))
}

/// A change buffer: change id, writing transaction, action, `extra` columns, then the captured columns.
fn create_buffer_table(relid: pg_sys::Oid, extra: &str, columns: &[(String, String)]) -> Result<()> {
    let buffer = buffer_name(relid);
    catalog::exec(&format!(
        "CREATE TABLE {buffer} (change_id bigserial PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(), \
         action \"char\" NOT NULL{extra}{defs})",
        defs = column_definitions(columns)
    ))?;
    // (xid, change_id): finds unconsumed rows by transaction, and a transaction's newest row.
    catalog::exec(&format!("CREATE INDEX ON {buffer} (xid, change_id)"))?;
    Ok(())
}

/// Starts capturing changes of a base table (idempotent: shared by every stream table that reads it).
pub fn ensure_table_capture(relid: pg_sys::Oid) -> Result<()> {
    if buffer_exists(relid)? {
        return Ok(());
    }
    let columns = user_columns(relid)?;
    let buffer = buffer_name(relid);
    let function = capture_function_name(relid);
    let source = catalog::scalar::<String>("SELECT $1::regclass::text", &[relid.into()])?.unwrap_or_default();
    let cols = column_list(&columns, None);
    create_buffer_table(relid, "", &columns)?;
    catalog::exec(&format!(
        "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $pgt$\n\
         BEGIN\n\
           IF TG_OP = 'INSERT' THEN\n\
             INSERT INTO {buffer} (action, {cols}) SELECT 'I', {cols} FROM __pgt_new;\n\
           ELSIF TG_OP = 'UPDATE' THEN\n\
             INSERT INTO {buffer} (action, {cols}) SELECT 'D', {cols} FROM __pgt_old UNION ALL SELECT 'I', {cols} FROM __pgt_new;\n\
           ELSIF TG_OP = 'DELETE' THEN\n\
             INSERT INTO {buffer} (action, {cols}) SELECT 'D', {cols} FROM __pgt_old;\n\
           ELSE\n\
             INSERT INTO {buffer} (action) VALUES ('T');\n\
           END IF;\n\
           RETURN NULL;\n\
         END $pgt$"
    ))?;
    let trigger = |suffix: &str, event: &str, referencing: &str| -> Result<u64> {
        catalog::exec(&format!(
            "CREATE TRIGGER {} AFTER {event} ON {source} {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
            quote_ident(&format!("pgt_capture_{suffix}"))
        ))
    };
    trigger("ins", "INSERT", "REFERENCING NEW TABLE AS __pgt_new")?;
    trigger("upd", "UPDATE", "REFERENCING OLD TABLE AS __pgt_old NEW TABLE AS __pgt_new")?;
    trigger("del", "DELETE", "REFERENCING OLD TABLE AS __pgt_old")?;
    trigger("trunc", "TRUNCATE", "")?;
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_change_buffers (source_relid, buffer_name, source_kind) VALUES ($1, $2, 'table')",
        &[relid.into(), format!("changes_{}", relid.to_u32()).into()],
    )?;
    Ok(())
}

/// Creates the buffer that receives a stream table's batches.
pub fn create_stream_table_buffer(relid: pg_sys::Oid) -> Result<()> {
    let columns = user_columns(relid)?;
    create_buffer_table(relid, ", batch_seq bigint NOT NULL, __pgt_row_id bigint", &columns)?;
    catalog::exec(&format!("CREATE INDEX ON {} (batch_seq)", buffer_name(relid)))?;
    catalog::exec_with(
        "INSERT INTO pgtrickle.pgt_change_buffers (source_relid, buffer_name, source_kind) \
         VALUES ($1, $2, 'stream_table')",
        &[relid.into(), format!("changes_{}", relid.to_u32()).into()],
    )?;
    Ok(())
}

/// Drops a buffer (and, for a base table, its triggers and capture function).
pub fn drop_buffer(relid: pg_sys::Oid) -> Result<()> {
    let kind = catalog::scalar::<String>(
        "DELETE FROM pgtrickle.pgt_change_buffers WHERE source_relid = $1 RETURNING source_kind",
        &[relid.into()],
    )?;
    let Some(kind) = kind else { return Ok(()) };
    if kind == "table" {
        let source = catalog::scalar::<String>("SELECT to_regclass($1::oid::regclass::text)::text", &[relid.into()])?;
        if let Some(source) = source {
            for suffix in ["ins", "upd", "del", "trunc"] {
                catalog::exec(&format!(
                    "DROP TRIGGER IF EXISTS {} ON {source}",
                    quote_ident(&format!("pgt_capture_{suffix}"))
                ))?;
            }
        }
        catalog::exec(&format!("DROP FUNCTION IF EXISTS {}()", capture_function_name(relid)))?;
    }
    catalog::exec(&format!("DROP TABLE IF EXISTS {}", buffer_name(relid)))?;
    Ok(())
}

/// Stops capturing a base table once no stream table reads it.
pub fn release_table_capture(relid: pg_sys::Oid) -> Result<()> {
    if catalog::dependents(relid)?.is_empty() {
        drop_buffer(relid)?;
    }
    Ok(())
}

/// SQL condition (over alias `c`) selecting the change rows of `dep` not yet consumed.
///
/// A snapshot never lists its own transaction as running, so `pg_visible_in_snapshot` calls every
/// row of the refreshing transaction visible; those rows are judged by change id instead.
pub fn unconsumed_condition(dep: &Dependency) -> String {
    let Some(snapshot) = &dep.consumed_snapshot else {
        return "true".into();
    };
    let snapshot = quote_literal(snapshot);
    let others = format!(
        "c.xid >= pg_snapshot_xmin({snapshot}::pg_snapshot) AND NOT pg_visible_in_snapshot(c.xid, {snapshot}::pg_snapshot)"
    );
    match &dep.consumed_xid {
        Some(xid) => {
            let xid = quote_literal(xid);
            let seen = dep.consumed_change_id.unwrap_or(0);
            format!("((c.xid = {xid}::xid8 AND c.change_id > {seen}) OR (c.xid <> {xid}::xid8 AND {others}))")
        }
        None => others,
    }
}

/// Whether `dep`'s buffer holds unconsumed rows, and whether a TRUNCATE marker is among them (one query).
pub fn pending_changes(dep: &Dependency) -> Result<(bool, bool)> {
    let (buffer, cond) = (buffer_name(dep.source_relid), unconsumed_condition(dep));
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {buffer} c WHERE {cond}), \
                EXISTS (SELECT 1 FROM {buffer} c WHERE {cond} AND c.action = 'T')"
    );
    let (changed, truncated) = Spi::get_two::<bool, bool>(&sql)?;
    Ok((changed.unwrap_or(false), truncated.unwrap_or(false)))
}

/// Types whose equality is also text equality, so rows can be netted with a hashed GROUP BY.
fn groupable(sql_type: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "text",
        "character varying",
        "character",
        "boolean",
        "date",
        "timestamp",
        "time ",
        "interval",
        "uuid",
        "bytea",
        "oid",
        "name",
    ];
    !sql_type.ends_with(']') && (sql_type == "time" || PREFIXES.iter().any(|p| sql_type.starts_with(p)))
}

/// A CTE body reading `dep`'s unconsumed inserts and deletes as weighted rows with the source's
/// columns. With `net`, identical rows are netted first (weight = inserts − deletes, zero dropped),
/// so a value a row held only between two refreshes is never evaluated by the query; a query whose
/// expressions cannot fail skips that work (the algebra is linear in the weights either way).
pub fn delta_cte_body(dep: &Dependency, net: bool) -> Result<String> {
    let columns = user_columns(dep.source_relid)?;
    let weight = "CASE c.action WHEN 'I' THEN 1 ELSE -1 END";
    let buffer = buffer_name(dep.source_relid);
    let cond = unconsumed_condition(dep);
    let cols = column_list(&columns, Some("c"));
    if !net {
        return Ok(format!(
            "SELECT {cols}, {weight} AS __pgt_sign FROM {buffer} c WHERE c.action IN ('I', 'D') AND {cond}"
        ));
    }
    if columns.iter().all(|(_, ty)| groupable(ty)) {
        return Ok(format!(
            "SELECT {cols}, sum({weight}) AS __pgt_sign FROM {buffer} c \
             WHERE c.action IN ('I', 'D') AND {cond} GROUP BY {cols} HAVING sum({weight}) <> 0"
        ));
    }
    // Types without a hashable equality (json, geometric…): net by the rows' text.
    let row_text = format!("ROW({cols})::text");
    Ok(format!(
        "SELECT {outer}, s.__pgt_sign FROM (SELECT {cols}, \
           sum({weight}) OVER (PARTITION BY {row_text}) AS __pgt_sign, \
           row_number() OVER (PARTITION BY {row_text}) AS __pgt_rn \
         FROM {buffer} c WHERE c.action IN ('I', 'D') AND {cond}) s \
         WHERE s.__pgt_rn = 1 AND s.__pgt_sign <> 0",
        outer = column_list(&columns, Some("s")),
    ))
}

/// A data-modifying CTE body that moves the watermarks of `pgt_id`'s buffered sources to the
/// statement's own snapshot: it must run in the same statement that reads the change rows.
pub fn advance_watermarks_cte(pgt_id: i64, deps: &[Dependency]) -> String {
    let with_buffers: Vec<&Dependency> = deps.iter().filter(|d| d.has_buffer()).collect();
    if with_buffers.is_empty() {
        return "SELECT 1".into();
    }
    let own_change_ids: Vec<String> = with_buffers
        .iter()
        .map(|d| {
            format!(
                "WHEN {} THEN (SELECT max(change_id) FROM {} WHERE xid = pg_current_xact_id_if_assigned())",
                d.source_relid.to_u32(),
                buffer_name(d.source_relid)
            )
        })
        .collect();
    format!(
        "UPDATE pgtrickle.pgt_dependencies d SET consumed_snapshot = pg_current_snapshot(), \
         consumed_xid = pg_current_xact_id_if_assigned(), \
         consumed_change_id = CASE d.source_relid::bigint {} END \
         WHERE d.pgt_id = {pgt_id} AND d.source_kind <> 'view' RETURNING 1",
        own_change_ids.join(" ")
    )
}

/// Deletes change rows every consumer has consumed. A stream table's buffer without consumers keeps
/// its newest `pg_trickle.unconsumed_batch_retention` batches.
pub fn prune(relid: pg_sys::Oid, last_batch_seq: Option<i64>) -> Result<()> {
    let buffer = buffer_name(relid);
    // Batches of a published stream table stay until the broker and the coordinator's log have them.
    let published = catalog::scalar::<i64>(
        "SELECT p.published_seq FROM pgtrickle.pgt_publications p \
         JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) WHERE st.pgt_relid = $1",
        &[relid.into()],
    )?;
    let unpublished = match published {
        Some(seq) => format!(" AND batch_seq <= {seq}"),
        None => String::new(),
    };
    let consumers = catalog::scalar::<i64>(
        "SELECT count(*) FROM pgtrickle.pgt_dependencies WHERE source_relid = $1",
        &[relid.into()],
    )?
    .unwrap_or(0);
    if consumers == 0 {
        if let Some(last) = last_batch_seq {
            let keep = i64::from(crate::config::UNCONSUMED_BATCH_RETENTION.get());
            catalog::exec(&format!("DELETE FROM {buffer} WHERE batch_seq <= {}{unpublished}", last - keep))?;
        }
        return Ok(());
    }
    // Rows older than every consumer's snapshot xmin were seen by all of them (or aborted).
    catalog::exec_with(
        &format!(
            "DELETE FROM {buffer} c WHERE c.xid < (SELECT min(pg_snapshot_xmin(consumed_snapshot)) \
             FROM pgtrickle.pgt_dependencies WHERE source_relid = $1 HAVING bool_and(consumed_snapshot IS NOT NULL)){}",
            unpublished.replace("batch_seq", "c.batch_seq")
        ),
        &[relid.into()],
    )?;
    Ok(())
}
