//! Checkpoints: this database's `pg_trickle` state as one zstd JSON lines file in object storage
//! (docs/CHECKPOINT_FORMAT.md; the codec is `shared_model::checkpoint`). [`collect`] reads the catalog into
//! items; [`write`] encodes them and uploads the file under `<prefix>/<database>/<RFC 3339 UTC time>.jsonl.zst`.

pub mod collect;

use std::collections::BTreeMap;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use shared_model::checkpoint::{CheckpointWriter, Header};

use crate::error::{PgTrickleError, Result};

/// The file name suffix of every checkpoint.
pub const SUFFIX: &str = ".jsonl.zst";

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub url: String,
    pub bytes: u64,
    /// Items per kind, as the header counts them.
    pub counts: BTreeMap<String, u64>,
}

/// Where checkpoints go when no URL is given: `pg_trickle.checkpoint_url`, else `checkpoints/` under the data
/// directory's `pg_trickle/` folder.
pub fn default_prefix() -> Result<String> {
    if let Some(url) = crate::config::checkpoint_url() {
        return Ok(url);
    }
    let data_dir = crate::catalog::scalar::<String>("SELECT current_setting('data_directory')", &[])?
        .ok_or_else(|| PgTrickleError::Internal("data_directory is not set".into()))?;
    Ok(format!("file://{}/pg_trickle/checkpoints", data_dir.trim_end_matches('/')))
}

/// The object a checkpoint taken now goes to: `url` itself when it names a `.jsonl.zst` file, else a new file
/// under the prefix `url` (default: [`default_prefix`]) and this database's name.
fn target(url: Option<&str>, database: &str, written_at: &str) -> Result<String> {
    match url {
        Some(u) if u.ends_with(SUFFIX) => Ok(u.to_string()),
        Some(prefix) => Ok(format!("{}/{database}/{written_at}{SUFFIX}", prefix.trim_end_matches('/'))),
        None => Ok(format!("{}/{database}/{written_at}{SUFFIX}", default_prefix()?.trim_end_matches('/'))),
    }
}

/// Writes a checkpoint of this database to `url` (see [`target`]).
pub fn write(url: Option<&str>) -> Result<Written> {
    let items = collect::items()?;
    let database = crate::catalog::scalar::<String>("SELECT current_database()::text", &[])?.unwrap_or_default();
    let written_at = crate::catalog::scalar::<String>(
        r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#,
        &[],
    )?
    .unwrap_or_default();
    let cluster = crate::catalog::scalar::<String>("SELECT cluster_name FROM pgtrickle.pgt_federation", &[])?;
    let mut counts = BTreeMap::new();
    for item in &items {
        *counts.entry(item.kind().to_string()).or_insert(0u64) += 1;
    }
    let header = Header {
        format: String::new(),
        version: 0,
        extension_version: env!("CARGO_PKG_VERSION").to_string(),
        cluster,
        database: database.clone(),
        written_at: written_at.clone(),
        counts: counts.clone(),
    };
    let invalid = |e: shared_model::checkpoint::CheckpointError| PgTrickleError::Internal(e.to_string());
    let mut writer = CheckpointWriter::new(Vec::new(), header).map_err(invalid)?;
    for item in &items {
        writer.item(item).map_err(invalid)?;
    }
    let bytes = writer.finish().map_err(invalid)?;
    let url = target(url, &database, &written_at)?;
    let size = bytes.len() as u64;
    put(&url, bytes)?;
    Ok(Written { url, bytes: size, counts })
}

fn storage_error(url: &str, message: String) -> PgTrickleError {
    PgTrickleError::CheckpointStorage { url: url.to_string(), message }
}

/// Uploads `bytes` to `url`.
fn put(url: &str, bytes: Vec<u8>) -> Result<()> {
    let (store, location): (_, ObjectPath) =
        coordinator::objects::store_for(url, false).map_err(|e| storage_error(url, e.to_string()))?;
    crate::federation::runtime::block_on(async move { store.put(&location, PutPayload::from(bytes)).await })?
        .map_err(|e| storage_error(url, e.to_string()))?;
    Ok(())
}
