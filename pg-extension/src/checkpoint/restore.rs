//! `pgtrickle.restore_from_checkpoint(url, replace)`: reads and checks the whole file (codec: version, line count,
//! checksum, counts; plan: order, cycles, federation entries) and every relation it names against this database
//! before it changes anything; then recreates the stream tables in dependency order, each empty and marked for
//! REINITIALIZE, in the caller's transaction, so an error anywhere leaves the catalog as it was.

use object_store::ObjectStoreExt;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;
use shared_model::checkpoint::{
    restore_plan, CheckpointError, CheckpointReader, Header, PlanError, QualifiedName, RefreshMode, StreamTableStatus,
};

use crate::api::define;
use crate::catalog;
use crate::error::{CheckpointFault, PgTrickleError, Result};

/// Progress is reported every this many stream tables.
const NOTICE_EVERY: usize = 100;

/// What a restore recreated.
#[derive(Debug, Clone)]
pub struct Restored {
    pub stream_tables: i64,
    pub header: Header,
}

fn refused(url: &str, fault: CheckpointFault, message: impl Into<String>) -> PgTrickleError {
    PgTrickleError::CheckpointRefused { url: url.to_string(), fault, message: message.into() }
}

/// The fault of a codec error.
fn fault_of(e: &CheckpointError) -> CheckpointFault {
    match e {
        CheckpointError::Empty => CheckpointFault::Empty,
        CheckpointError::Foreign(_) => CheckpointFault::Foreign,
        CheckpointError::NewerVersion { .. } => CheckpointFault::Newer,
        CheckpointError::Truncated { .. } => CheckpointFault::Truncated,
        CheckpointError::Corrupt { .. }
        | CheckpointError::ChecksumMismatch { .. }
        | CheckpointError::Invalid(_)
        | CheckpointError::Io(_) => CheckpointFault::Corrupt,
    }
}

/// The bytes at `url`.
fn fetch(url: &str) -> Result<Vec<u8>> {
    let (store, location) = super::store(url, false)?;
    let fetched = crate::federation::runtime::block_on(async move {
        match store.get(&location).await {
            Ok(result) => result.bytes().await.map(|b| b.to_vec()),
            Err(e) => Err(e),
        }
    })?;
    fetched.map_err(|e| super::storage_error(url, e.to_string()))
}

fn sql_name(name: &QualifiedName) -> String {
    format!("{}.{}", quote_identifier(&name.schema), quote_identifier(&name.name))
}

fn mode(mode: RefreshMode) -> &'static str {
    match mode {
        RefreshMode::Auto => "auto",
        RefreshMode::Differential => "differential",
        RefreshMode::Full => "full",
    }
}

/// Restores the checkpoint at `url` (see the module documentation).
pub fn restore(url: &str, replace: bool) -> Result<Restored> {
    let bytes = fetch(url)?;
    let (header, items) = CheckpointReader::new(&bytes[..])
        .and_then(CheckpointReader::read_all)
        .map_err(|e| refused(url, fault_of(&e), e.to_string()))?;
    let plan = restore_plan(&items).map_err(|e| match e {
        PlanError::Federation { .. } => refused(url, CheckpointFault::Unsupported, e.to_string()),
        other => refused(url, CheckpointFault::Corrupt, other.to_string()),
    })?;

    // Everything the stream tables need must be here: the relations they read, and their schemas.
    let mut missing: Vec<String> = Vec::new();
    for source in &plan.external_sources {
        let found = catalog::scalar::<pg_sys::Oid>("SELECT to_regclass($1)::oid", &[sql_name(source).into()])?;
        if found.is_none() {
            missing.push(format!("table {source}"));
        }
    }
    let schemas: std::collections::BTreeSet<&str> = plan.stream_tables.iter().map(|d| d.name.schema.as_str()).collect();
    for schema in schemas {
        let found = catalog::scalar::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[schema.to_string().into()],
        )?;
        if found != Some(true) {
            missing.push(format!("schema {schema}"));
        }
    }
    if !missing.is_empty() {
        return Err(refused(
            url,
            CheckpointFault::MissingSource,
            format!("this database lacks what its stream tables read or live in: {}", missing.join(", ")),
        ));
    }
    let existing = catalog::column::<String>(
        "SELECT format('%I.%I', pgt_schema, pgt_name) FROM pgtrickle.pgt_stream_tables ORDER BY pgt_id DESC",
        &[],
    )?;
    if !existing.is_empty() && !replace {
        return Err(refused(
            url,
            CheckpointFault::NotEmpty,
            format!("this database already has {} stream tables", existing.len()),
        ));
    }

    // From here on every step is in the caller's transaction: an error rolls all of it back.
    for name in &existing {
        let still = catalog::scalar::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pgtrickle.pgt_stream_tables WHERE pgt_relid = to_regclass($1))",
            &[name.clone().into()],
        )?;
        if still == Some(true) {
            define::drop(name, true)?;
        }
    }
    let total = plan.stream_tables.len();
    for (done, def) in plan.stream_tables.iter().enumerate() {
        let name = sql_name(&def.name);
        let schedule = def.schedule_secs.map(|s| format!("{s}s"));
        define::create_with(&name, &def.query, schedule.as_deref(), mode(def.refresh_mode), false)?;
        if def.status == StreamTableStatus::Suspended {
            define::alter(&name, None, None, None, Some("suspended"))?;
        }
        if (done + 1) % NOTICE_EVERY == 0 && done + 1 < total {
            notice!("restore_from_checkpoint: {} of {total} stream tables recreated", done + 1);
        }
    }
    Ok(Restored { stream_tables: total as i64, header })
}
