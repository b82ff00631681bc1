//! Snapshot files: the whole state, the last applied log id and the membership, in the checksummed codec.
//!
//! One file, `snapshots/current.snap`, replaced atomically (write a temporary file, fsync it, rename, fsync the
//! directory), so a crash leaves either the old or the new snapshot, never a torn one. The same bytes are what a
//! leader streams to a follower; a snapshot whose checksum fails is refused before anything is replaced.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};
use shared_model::{codec, State};

use crate::error::StoreError;
use crate::{Node, NodeId};

/// The decoded contents of a snapshot.
#[derive(Debug, Deserialize)]
pub struct SnapshotImage {
    /// openraft's metadata: last log id, membership, snapshot id.
    pub meta: SnapshotMeta<NodeId, Node>,
    /// The state at `meta.last_log_id`.
    pub state: State,
}

/// The same layout, borrowed, for encoding without cloning the state.
#[derive(Serialize)]
struct SnapshotImageRef<'a> {
    meta: &'a SnapshotMeta<NodeId, Node>,
    state: &'a State,
}

/// Encodes a snapshot.
pub fn encode(meta: &SnapshotMeta<NodeId, Node>, state: &State) -> Vec<u8> {
    codec::encode(&SnapshotImageRef { meta, state })
}

/// Decodes and checks a snapshot; `origin` names where the bytes came from in the error.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<SnapshotImage, StoreError> {
    codec::decode(bytes).map_err(|e| StoreError::damaged(origin, format!("snapshot: {e}")))
}

/// Where the current snapshot file lives in a data directory.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join("snapshots").join("current.snap")
}

/// Reads and checks the current snapshot file, if there is one.
pub fn read_file(dir: &Path) -> Result<Option<(SnapshotImage, Vec<u8>)>, StoreError> {
    let path = file_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path)(e)),
    };
    let image = decode(&bytes, &path)?;
    Ok(Some((image, bytes)))
}

/// Replaces the current snapshot file with `bytes`, durably and atomically.
pub fn write_file(dir: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let path = file_path(dir);
    let folder = path.parent().expect("snapshot path has a parent");
    fs::create_dir_all(folder).map_err(StoreError::io(folder))?;
    let tmp = folder.join("current.snap.tmp");
    let mut file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    file.write_all(bytes).map_err(StoreError::io(&tmp))?;
    file.sync_all().map_err(StoreError::io(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
    File::open(folder).and_then(|d| d.sync_all()).map_err(StoreError::io(folder))?;
    Ok(())
}
