//! A damaged store gives an error that names the path and what is wrong: no panic, nothing overwritten.

use std::fs;
use std::path::{Path, PathBuf};

use raft_store::{workload, StoreError, StoreOptions};

/// Writes `n` entries, applies them, snapshots at `snapshot_at` (if any) and closes the store.
fn populate(dir: &Path, n: u64, snapshot_at: Option<u64>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (log, sm) = raft_store::open(dir, StoreOptions::default()).unwrap();
        for i in 1..=n {
            log.append_durably([workload::entry(i)]).await.unwrap();
            sm.apply_entries([workload::entry(i)]).unwrap();
            if Some(i) == snapshot_at {
                sm.build().unwrap();
            }
        }
    });
    // The high-water mark is written in the background; wait until it covers everything, as it would after a
    // clean exit, so the damage below is the only change.
    let hwm = dir.join("raft.hwm");
    let started = std::time::Instant::now();
    while fs::read(&hwm).ok().filter(|b| b.len() == 20).map(|b| u64::from_le_bytes(b[4..12].try_into().unwrap()))
        != Some(n + 1)
    {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "high-water mark never caught up");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn open_err(dir: &Path) -> StoreError {
    match std::panic::catch_unwind(|| raft_store::open(dir, StoreOptions::default())) {
        Ok(Ok(_)) => panic!("a damaged store opened without error"),
        Ok(Err(e)) => e,
        Err(_) => panic!("opening a damaged store panicked"),
    }
}

#[test]
fn snapshot_failing_its_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 40, Some(30));
    let snap = raft_store::snapshot::file_path(dir.path());
    let mut bytes = fs::read(&snap).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(&snap, &bytes).unwrap();
    let before = files_under(dir.path());
    let err = open_err(dir.path());
    let msg = err.to_string();
    assert!(msg.contains("current.snap") && msg.contains("checksum"), "{msg}");
    assert_eq!(files_under(dir.path()), before, "opening changed files");
}

#[test]
fn truncated_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 20, Some(10));
    let snap = raft_store::snapshot::file_path(dir.path());
    let bytes = fs::read(&snap).unwrap();
    fs::write(&snap, &bytes[..bytes.len() - 7]).unwrap();
    let msg = open_err(dir.path()).to_string();
    assert!(msg.contains("current.snap") && msg.contains("truncated"), "{msg}");
}

#[test]
fn foreign_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 5, Some(5));
    fs::write(raft_store::snapshot::file_path(dir.path()), b"this is not a snapshot at all, just text").unwrap();
    let msg = open_err(dir.path()).to_string();
    assert!(msg.contains("current.snap") && msg.contains("not a pg_trickle federation record"), "{msg}");
}

/// Damages the sled database file of a populated store with `damage`, then expects a reported error that names
/// the database and a store left byte-for-byte unchanged by the attempt to open it.
fn assert_database_damage_is_reported(damage: impl FnOnce(&mut Vec<u8>)) {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200, None);
    let db = raft_store::sled_path(dir.path()).join("db");
    let mut bytes = fs::read(&db).unwrap();
    damage(&mut bytes);
    fs::write(&db, &bytes).unwrap();
    let before = files_under(dir.path());
    let msg = open_err(dir.path()).to_string();
    assert!(msg.contains("raft.sled") && !msg.contains("verify"), "{msg}");
    assert_eq!(files_under(dir.path()), before, "opening changed files");
}

#[test]
fn truncated_database_file_is_reported() {
    assert_database_damage_is_reported(|bytes| bytes.truncate(bytes.len() / 3));
}

#[test]
fn garbled_database_file_is_reported() {
    assert_database_damage_is_reported(|bytes| {
        for i in (bytes.len() / 4..bytes.len() / 2).step_by(97) {
            bytes[i] ^= 0xa5;
        }
    });
}

#[test]
fn a_clean_store_without_snapshot_reopens() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 200, None);
    let (log, sm) = raft_store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(log.log_state().unwrap().last_log_id.unwrap().index, 200);
    sm.with_state(|s| assert_eq!(s, &workload::expected_state(200)));
}

#[test]
fn a_clean_store_reopens_with_its_state() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path(), 60, Some(45));
    let (log, sm) = raft_store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(log.log_state().unwrap().last_log_id.unwrap().index, 60);
    sm.with_state(|s| assert_eq!(s, &workload::expected_state(60)));
    assert!(sm.current_snapshot().unwrap().is_some());
}
