//! Coordinator state snapshots in object storage: `snapshot --to file://…|s3://…` writes the bytes a node serves
//! at `GET /v1/admin/snapshot`; `serve --bootstrap-from URL` reads them back, checks them (magic, version,
//! length, checksum, decode) before anything else happens, and once the new cluster has a leader, restores the
//! state through the log (`RestoreState`), so every node of the new cluster holds it.
//!
//! `s3://BUCKET/KEY` takes its settings from the usual environment: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for a local S3 server.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shared_model::{Command, IdempotencyKey, Request, State};

use super::Coordinator;

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
    let parsed = url::Url::parse(url).map_err(|e| ExportError::Url { url: url.into(), reason: e.to_string() })?;
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|_| ExportError::Url { url: url.into(), reason: "not an absolute file path".into() })?;
            let location = ObjectPath::from_absolute_path(&path)
                .map_err(|e| ExportError::Url { url: url.into(), reason: e.to_string() })?;
            Ok((Arc::new(LocalFileSystem::new()), location))
        }
        "s3" => {
            let bucket =
                parsed.host_str().ok_or_else(|| ExportError::Url { url: url.into(), reason: "no bucket".into() })?;
            let key = parsed.path().trim_start_matches('/');
            if key.is_empty() {
                return Err(ExportError::Url { url: url.into(), reason: "no object key after the bucket".into() });
            }
            let store = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_virtual_hosted_style_request(false)
                .build()
                .map_err(|e| ExportError::Store { url: url.into(), source: e })?;
            Ok((Arc::new(store), ObjectPath::from(key)))
        }
        other => Err(ExportError::Url {
            url: url.into(),
            reason: format!("scheme {other:?} is not supported (use file:// or s3://)"),
        }),
    }
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
