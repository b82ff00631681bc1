//! Coordinator state snapshots in object storage: `snapshot --to file://…|s3://…` writes the bytes a node serves
//! at `GET /v1/admin/snapshot`; `serve --bootstrap-from URL` reads them back, checks them (magic, version,
//! length, checksum, decode) before anything else happens, and once the new cluster has a leader, restores the
//! state through the log (`RestoreState`), so every node of the new cluster holds it.
//!
//! URLs are read by [`crate::objects`]: `s3://BUCKET/KEY` (and `gs://`, `az://`) take their settings from the
//! usual environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT` and
//! `AWS_ALLOW_HTTP` for a local S3 server).

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shared_model::{Command, IdempotencyKey, Request, State};

use super::Coordinator;
use crate::objects::ObjectUrlError;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The URL is not usable.
    #[error("invalid snapshot URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The object store failed.
    #[error("{url}: {source}")]
    Store { url: String, source: object_store::Error },
    /// The bytes are not a valid coordinator snapshot.
    #[error("{url} is not a usable coordinator snapshot: {reason}")]
    Invalid { url: String, reason: String },
}

fn store_for(url: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), ExportError> {
    crate::objects::store_for(url, false).map_err(|e| match e {
        ObjectUrlError::Url { url, reason } => ExportError::Url { url, reason },
        ObjectUrlError::Store { url, source } => ExportError::Store { url, source },
    })
}

/// Writes snapshot bytes to `url`, after checking that they are a valid snapshot.
pub async fn save(url: &str, bytes: Vec<u8>) -> Result<(), ExportError> {
    raft_store::snapshot::decode(&bytes, std::path::Path::new("<snapshot from coordinator>"))
        .map_err(|e| ExportError::Invalid { url: url.into(), reason: e.to_string() })?;
    let (store, location) = store_for(url)?;
    store
        .put(&location, PutPayload::from(bytes))
        .await
        .map_err(|e| ExportError::Store { url: url.into(), source: e })?;
    Ok(())
}

/// Reads and checks a snapshot at `url`; returns the state it holds.
pub async fn load_state(url: &str) -> Result<State, ExportError> {
    let (store, location) = store_for(url)?;
    let bytes = store
        .get(&location)
        .await
        .map_err(|e| ExportError::Store { url: url.into(), source: e })?
        .bytes()
        .await
        .map_err(|e| ExportError::Store { url: url.into(), source: e })?;
    let image = raft_store::snapshot::decode(&bytes, std::path::Path::new(url))
        .map_err(|e| ExportError::Invalid { url: url.into(), reason: e.to_string() })?;
    Ok(image.state)
}

/// Once this node leads an initialized cluster, restores the bootstrap state through the log (once).
pub fn spawn_bootstrapper(coordinator: Arc<Coordinator>) {
    let weak = Arc::downgrade(&coordinator);
    drop(coordinator);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let Some(c) = weak.upgrade() else { return };
            let mut pending = c.bootstrap.lock().await;
            let Some(state) = pending.as_ref() else { return };
            if c.raft.current_leader().await != Some(c.id) {
                continue;
            }
            let request = Request {
                key: IdempotencyKey::new("bootstrap", &format!("node-{}", c.id)).expect("valid key"),
                command: Command::RestoreState { state: Box::new(state.clone()) },
                proposed_at_unix_ms: super::http::now_ms(),
            };
            match c.proposer.propose(request).await {
                Ok(executed) => {
                    match &executed.result {
                        Ok(_) => tracing::info!("restored the bootstrap snapshot into the new cluster"),
                        Err(e) => tracing::error!(error = %e, "bootstrap snapshot not restored"),
                    }
                    *pending = None;
                    return;
                }
                Err(e) => tracing::debug!(error = ?e, "bootstrap restore will be retried"),
            }
        }
    });
}
