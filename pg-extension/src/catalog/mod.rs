//! The extension's catalog tables, read and written through SPI, plus the few SPI helpers the rest
//! of the extension uses (so that statement text stays the only thing modules pass around).

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::error::{PgTrickleError, Result};

/// Runs a statement; returns the number of rows it processed.
pub fn exec(sql: &str) -> Result<u64> {
    exec_with(sql, &[])
}

pub fn exec_with(sql: &str, args: &[DatumWithOid]) -> Result<u64> {
    Spi::connect_mut(|client| Ok(client.update(sql, None, args)?.len() as u64))
}

/// Runs a statement in a subtransaction of its own; when PostgreSQL rejects it, returns the error's SQLSTATE and
/// message instead of raising it (the subtransaction is rolled back, so nothing of it remains).
pub fn exec_catching(sql: &str) -> std::result::Result<u64, (PgSqlErrorCode, String)> {
    // SAFETY: the PL/pgSQL exception-block bracket: remember memory context and resource owner, open an internal
    // subtransaction, release or roll it back, and restore both before returning.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    let outcome = PgTryBuilder::new(|| {
        let processed = Spi::connect_mut(|client| client.update(sql, None, &[]).map(|t| t.len() as u64));
        // SAFETY: closes the subtransaction opened above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        processed.map_err(|e| (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
    })
    .catch_others(|caught| {
        // SAFETY: the statement raised an ERROR inside the subtransaction opened above; roll it back.
        unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
        let report = match caught {
            pg_sys::panic::CaughtError::PostgresError(r) | pg_sys::panic::CaughtError::ErrorReport(r) => r,
            pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport,
        };
        Err((report.sql_error_code(), report.message().to_string()))
    })
    .execute();
    // SAFETY: restores what was current before the subtransaction.
    unsafe {
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    outcome
}

/// The first column of the first row, if any.
pub fn scalar<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Option<T>> {
    Spi::connect_mut(|client| {
        let table = client.update(sql, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        Ok(table.first().get_one::<T>()?)
    })
}

/// The first column of every row (NULLs skipped).
pub fn column<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Result<Vec<T>> {
    Spi::connect(|client| {
        let mut values = Vec::new();
        for row in client.select(sql, None, args)? {
            if let Some(value) = row.get::<T>(1)? {
                values.push(value);
            }
        }
        Ok(values)
    })
}

/// A stream table's catalog row (the fields the extension acts on).
#[derive(Debug, Clone)]
pub struct StreamTable {
    pub pgt_id: i64,
    pub relid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    pub defining_query: String,
    pub refresh_mode: String,
    pub effective_mode: String,
    pub plan_kind: String,
    pub status: String,
    pub last_batch_seq: i64,
    pub needs_reinit: bool,
}

impl StreamTable {
    /// `"schema"."name"`, ready for SQL.
    pub fn qualified(&self) -> String {
        format!("{}.{}", spi::quote_identifier(&self.schema), spi::quote_identifier(&self.name))
    }

    /// The change buffer holding this stream table's batches.
    pub fn buffer(&self) -> String {
        crate::cdc::buffer_name(self.relid)
    }
}

const ST_COLUMNS: &str = "pgt_id, pgt_relid, pgt_schema::text, pgt_name::text, defining_query, refresh_mode, \
     effective_mode, plan_kind, status, last_batch_seq, needs_reinit";

fn read_stream_tables(sql: &str, args: &[DatumWithOid]) -> Result<Vec<StreamTable>> {
    Spi::connect_mut(|client| {
        let mut found = Vec::new();
        for row in client.update(sql, None, args)? {
            let missing = || PgTrickleError::Internal("NULL in pgt_stream_tables".into());
            found.push(StreamTable {
                pgt_id: row.get::<i64>(1)?.ok_or_else(missing)?,
                relid: row.get::<pg_sys::Oid>(2)?.ok_or_else(missing)?,
                schema: row.get::<String>(3)?.ok_or_else(missing)?,
                name: row.get::<String>(4)?.ok_or_else(missing)?,
                defining_query: row.get::<String>(5)?.ok_or_else(missing)?,
                refresh_mode: row.get::<String>(6)?.ok_or_else(missing)?,
                effective_mode: row.get::<String>(7)?.ok_or_else(missing)?,
                plan_kind: row.get::<String>(8)?.ok_or_else(missing)?,
                status: row.get::<String>(9)?.ok_or_else(missing)?,
                last_batch_seq: row.get::<i64>(10)?.ok_or_else(missing)?,
                needs_reinit: row.get::<bool>(11)?.ok_or_else(missing)?,
            });
        }
        Ok(found)
    })
}

/// Resolves a user-supplied name (`name` or `schema.name`, quoted as in SQL) to a stream table.
pub fn find_by_name(name: &str) -> Result<StreamTable> {
    let sql = format!("SELECT {ST_COLUMNS} FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = to_regclass($1)");
    read_stream_tables(&sql, &[name.into()])?
        .into_iter()
        .next()
        .ok_or_else(|| PgTrickleError::UnknownStreamTable(name.to_string()))
}

/// Loads a stream table by id; with `lock`, takes its row lock (serialising refreshes of one ST).
pub fn load(pgt_id: i64, lock: RowLock) -> Result<Option<StreamTable>> {
    let suffix = match lock {
        RowLock::None => "",
        RowLock::Wait => " FOR UPDATE",
        RowLock::SkipLocked => " FOR UPDATE SKIP LOCKED",
    };
    let sql = format!("SELECT {ST_COLUMNS} FROM pgtrickle.pgt_stream_tables WHERE pgt_id = $1{suffix}");
    Ok(read_stream_tables(&sql, &[pgt_id.into()])?.into_iter().next())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowLock {
    None,
    Wait,
    SkipLocked,
}

/// A source of a stream table and how far its change buffer has been consumed.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub source_relid: pg_sys::Oid,
    pub source_kind: String,
    pub consumed_snapshot: Option<String>,
    pub consumed_xid: Option<String>,
    pub consumed_change_id: Option<i64>,
}

impl Dependency {
    pub fn has_buffer(&self) -> bool {
        self.source_kind != "view"
    }
}

pub fn dependencies(pgt_id: i64) -> Result<Vec<Dependency>> {
    Spi::connect(|client| {
        let mut found = Vec::new();
        let sql = "SELECT source_relid, source_kind, consumed_snapshot::text, consumed_xid::text, consumed_change_id \
                   FROM pgtrickle.pgt_dependencies WHERE pgt_id = $1 ORDER BY source_relid";
        for row in client.select(sql, None, &[pgt_id.into()])? {
            found.push(Dependency {
                source_relid: row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                source_kind: row.get::<String>(2)?.unwrap_or_default(),
                consumed_snapshot: row.get::<String>(3)?,
                consumed_xid: row.get::<String>(4)?,
                consumed_change_id: row.get::<i64>(5)?,
            });
        }
        Ok(found)
    })
}

/// Stream tables that read `relid`, as `schema.name`.
pub fn dependents(relid: pg_sys::Oid) -> Result<Vec<(i64, String)>> {
    Spi::connect(|client| {
        let sql = "SELECT st.pgt_id, format('%I.%I', st.pgt_schema, st.pgt_name) FROM pgtrickle.pgt_dependencies d \
                   JOIN pgtrickle.pgt_stream_tables st USING (pgt_id) WHERE d.source_relid = $1 ORDER BY st.pgt_id";
        let mut found = Vec::new();
        for row in client.select(sql, None, &[relid.into()])? {
            found.push((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()));
        }
        Ok(found)
    })
}

/// Marks DDL as the extension's own, so the drop guard lets it through (until the transaction ends).
pub fn allow_internal_ddl() -> Result<()> {
    exec("SELECT set_config('pgtrickle.internal_ddl', 'on', true)")?;
    Ok(())
}

/// Ends the internal-DDL window opened by [`allow_internal_ddl`].
pub fn end_internal_ddl() -> Result<()> {
    exec("SELECT set_config('pgtrickle.internal_ddl', 'off', true)")?;
    Ok(())
}
