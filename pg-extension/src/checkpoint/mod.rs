//! Checkpoints: this database's `pg_trickle` state as one zstd JSON lines file in object storage
//! (docs/CHECKPOINT_FORMAT.md; the codec is `shared_model::checkpoint`). [`collect`] reads the catalog into
//! items; [`write`] encodes them and uploads `<prefix>/<RFC 3339 UTC time>.jsonl.zst`; [`list`] and [`prune`]
//! read and thin out a prefix ([`retention`] decides what goes); [`restore`] recreates the stream tables. Without a URL the prefix is this database's
//! folder under `pg_trickle.checkpoint_url` ([`database_prefix`]).

pub mod collect;
pub mod restore;
pub mod retention;

use std::collections::BTreeMap;
use std::sync::Arc;

use coordinator::api::RecordCheckpoint;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shared_model::checkpoint::{CheckpointWriter, Header};
use shared_model::{CheckpointRecord, ClusterName};

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
    /// Whether the federation's coordinators recorded it (false when not registered, or unreachable: a warning
    /// says why; the checkpoint itself is written either way).
    pub recorded: bool,
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

/// This database's folder under [`default_prefix`]: databases of one server sharing the setting never list or
/// prune each other's checkpoints.
pub fn database_prefix() -> Result<String> {
    let database = crate::catalog::scalar::<String>("SELECT current_database()::text", &[])?.unwrap_or_default();
    Ok(format!("{}/{database}", default_prefix()?.trim_end_matches('/')))
}

/// The object a checkpoint taken now goes to: `url` itself when it names a `.jsonl.zst` file, else a new file
/// under the prefix `url` (default: [`database_prefix`]).
fn target(url: Option<&str>, written_at: &str) -> Result<String> {
    match url {
        Some(u) if u.ends_with(SUFFIX) => Ok(u.to_string()),
        Some(prefix) => Ok(format!("{}/{written_at}{SUFFIX}", prefix.trim_end_matches('/'))),
        None => Ok(format!("{}/{written_at}{SUFFIX}", database_prefix()?)),
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
    let (bytes, trailer) = writer.finish().map_err(invalid)?;
    let url = target(url, &written_at)?;
    let size = bytes.len() as u64;
    put(&url, bytes)?;
    let taken_at_unix_ms = retention::taken_at_ms(&format!("{written_at}{SUFFIX}")).map_or(0, |ms| ms.max(0) as u64);
    let record = CheckpointRecord { url: url.clone(), checksum: trailer.sha256, size_bytes: size, taken_at_unix_ms };
    let recorded = match record_at_coordinators(record) {
        Ok(recorded) => recorded,
        Err(e) => {
            pgrx::warning!("pg_trickle: checkpoint {url} written but not recorded at the coordinators: {e}");
            false
        }
    };
    Ok(Written { url, bytes: size, counts, recorded })
}

/// Records a checkpoint at the federation's coordinators, so `pgtrickle-coordinator checkpoints` lists the newest
/// of every cluster; Ok(false) when this database is not registered.
fn record_at_coordinators(record: CheckpointRecord) -> Result<bool> {
    let Some(member) = crate::federation::membership()? else { return Ok(false) };
    let cluster = ClusterName::parse(&member.cluster_name)
        .map_err(|e| PgTrickleError::Internal(format!("registered cluster name: {e}")))?;
    let client = crate::federation::client(&member.coordinator_url, std::time::Duration::from_secs(10))?;
    crate::federation::runtime::block_on(client.record_checkpoint(&cluster, &RecordCheckpoint { checkpoint: record }))?
        .map_err(crate::federation::coordinator_error)?;
    Ok(true)
}

pub(crate) fn storage_error(url: &str, message: String) -> PgTrickleError {
    PgTrickleError::CheckpointStorage { url: url.to_string(), message }
}

/// The object store and path `url` names (a prefix when `prefix`), or a storage error naming the URL.
pub(crate) fn store(url: &str, prefix: bool) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    coordinator::objects::store_for(url, prefix).map_err(|e| storage_error(url, e.to_string()))
}

/// Uploads `bytes` to `url`.
fn put(url: &str, bytes: Vec<u8>) -> Result<()> {
    let (store, location) = store(url, false)?;
    crate::federation::runtime::block_on(async move { store.put(&location, PutPayload::from(bytes)).await })?
        .map_err(|e| storage_error(url, e.to_string()))?;
    Ok(())
}

/// A checkpoint file found under a prefix.
#[derive(Debug, Clone)]
pub struct Listed {
    pub url: String,
    pub bytes: u64,
    /// When it was taken (from its name), milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
}

/// The checkpoint files directly under `prefix` (default: [`database_prefix`]), newest first; other files are
/// left out.
pub fn list(prefix: Option<&str>) -> Result<Vec<Listed>> {
    Ok(list_in(prefix)?.1.into_iter().map(|(listed, _)| listed).collect())
}

/// A prefix's store and its checkpoint files with their paths in it, newest first.
type Listing = (Arc<dyn ObjectStore>, Vec<(Listed, ObjectPath)>);

/// [`list`], with the store and each file's path in it.
fn list_in(prefix: Option<&str>) -> Result<Listing> {
    let prefix = match prefix {
        Some(p) => p.trim_end_matches('/').to_string(),
        None => database_prefix()?,
    };
    let (store, location) = store(&prefix, true)?;
    let depth = location.parts().count() + 1;
    let lister = store.clone();
    let found = crate::federation::runtime::block_on(async move {
        let location = (!location.as_ref().is_empty()).then_some(location);
        lister.list(location.as_ref()).try_collect::<Vec<_>>().await
    })?;
    let objects = match found {
        Ok(objects) => objects,
        // A prefix nothing was written to yet.
        Err(object_store::Error::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(storage_error(&prefix, e.to_string())),
    };
    let mut listed: Vec<(Listed, ObjectPath)> = objects
        .into_iter()
        // Files directly in the prefix only (the listing recurses into sub-folders).
        .filter(|meta| meta.location.parts().count() == depth)
        .filter_map(|meta| {
            let name = meta.location.filename()?.to_string();
            let taken_at_ms = retention::taken_at_ms(&name)?;
            Some((Listed { url: format!("{prefix}/{name}"), bytes: meta.size, taken_at_ms }, meta.location))
        })
        .collect();
    listed.sort_by(|(a, _), (b, _)| b.taken_at_ms.cmp(&a.taken_at_ms).then_with(|| b.url.cmp(&a.url)));
    Ok((store, listed))
}

/// Deletes the checkpoints under `prefix` (default: [`database_prefix`]) taken more than `retention_days` ago,
/// keeping the newest whatever its age; returns the URLs deleted.
pub fn prune(prefix: Option<&str>, retention_days: i64, now_ms: i64) -> Result<Vec<String>> {
    let (store, listed) = list_in(prefix)?;
    let taken: Vec<i64> = listed.iter().map(|(l, _)| l.taken_at_ms).collect();
    let mut pruned = Vec::new();
    for at in retention::to_prune(&taken, now_ms, retention_days) {
        let (listed, location) = &listed[at];
        let deleter = store.clone();
        let location = location.clone();
        crate::federation::runtime::block_on(async move { deleter.delete(&location).await })?
            .map_err(|e| storage_error(&listed.url, e.to_string()))?;
        pruned.push(listed.url.clone());
    }
    Ok(pruned)
}
