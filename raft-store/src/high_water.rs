//! An independent record of how far the log was durably acknowledged: `raft.hwm` beside the sled database. The
//! mark is one past the last acknowledged index (0: nothing yet).
//!
//! sled treats a truncated or garbled tail of its file as a torn write and silently recovers the prefix before
//! it — right after a crash, wrong when a disk or an operator damaged a file that held acknowledged entries. The
//! high-water mark makes that loss visible: it is written after flushes, by a background thread that coalesces
//! updates (so appends never wait for it), and lowered synchronously when the log is truncated. Opening a store
//! whose log ends below the mark reports damage. Damage confined to the last few milliseconds of appends, before
//! the mark caught up, is indistinguishable from a torn tail and is not detected.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::error::StoreError;

const MAGIC: &[u8; 4] = b"HWM1";
const LEN: usize = 4 + 8 + 8;

/// Reads the mark in `path` (None when there is no file yet).
pub fn read(path: &Path) -> Result<Option<u64>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path)(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(StoreError::io(path))?;
    if bytes.len() != LEN || &bytes[..4] != MAGIC {
        return Err(StoreError::damaged(
            path,
            format!("high-water mark file is {} bytes or has a foreign header", bytes.len()),
        ));
    }
    let index = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let stored = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    if stored != xxhash_rust::xxh3::xxh3_64(&bytes[..12]) {
        return Err(StoreError::damaged(path, "high-water mark fails its checksum"));
    }
    Ok(Some(index))
}

fn encode(index: u64) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..12].copy_from_slice(&index.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&out[..12]);
    out[12..].copy_from_slice(&sum.to_le_bytes());
    out
}

struct Shared {
    path: PathBuf,
    target: AtomicU64,
    /// Guards the file; whoever holds it writes the current target, so a stale value is never written last.
    file: Mutex<File>,
}

impl Shared {
    fn write_current(&self) -> std::io::Result<()> {
        let file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all_at(&encode(self.target.load(Ordering::SeqCst)), 0)?;
        file.sync_data()
    }
}

/// Keeps `raft.hwm` up to date.
pub struct HighWater {
    shared: Arc<Shared>,
    wake: Sender<()>,
}

impl HighWater {
    /// Opens (or creates) the mark file with its current value.
    pub fn open(path: PathBuf, current: u64) -> Result<Self, StoreError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        if file.metadata().map_err(StoreError::io(&path))?.len() == 0 {
            file.write_all(&encode(current)).map_err(StoreError::io(&path))?;
            file.sync_all().map_err(StoreError::io(&path))?;
        }
        let shared = Arc::new(Shared { path, target: AtomicU64::new(current), file: Mutex::new(file) });
        let (wake, rx) = mpsc::channel();
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("raft-hwm".into())
            .spawn(move || run(worker, rx))
            .map_err(StoreError::io(&shared.path))?;
        Ok(HighWater { shared, wake })
    }

    /// Notes that entries below `mark` are flushed; the file follows shortly.
    pub fn advance(&self, mark: u64) {
        self.shared.target.store(mark, Ordering::SeqCst);
        let _ = self.wake.send(());
    }

    /// Lowers the mark to `mark` before returning (the log was truncated).
    pub fn lower(&self, mark: u64) -> Result<(), StoreError> {
        self.shared.target.store(mark, Ordering::SeqCst);
        self.shared.write_current().map_err(StoreError::io(&self.shared.path))
    }
}

fn run(shared: Arc<Shared>, wake: Receiver<()>) {
    while wake.recv().is_ok() {
        while wake.try_recv().is_ok() {} // coalesce
        if let Err(e) = shared.write_current() {
            tracing::warn!(path = %shared.path.display(), error = %e, "cannot update the raft high-water mark");
        }
    }
}
