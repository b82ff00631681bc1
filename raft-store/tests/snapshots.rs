//! Snapshot build and install between two stores, as a leader and a lagging follower would.

use raft_store::{workload, StoreOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn a_follower_installs_the_leaders_snapshot_and_survives_a_restart() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (log, sm) = raft_store::open(leader_dir.path(), StoreOptions::default()).unwrap();
        let entries: Vec<_> = (1..=120).map(workload::entry).collect();
        log.append_durably(entries.clone()).await.unwrap();
        sm.apply_entries(entries).unwrap();
        let snap = sm.build().unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 120);

        let (_flog, fsm) = raft_store::open(follower_dir.path(), StoreOptions::default()).unwrap();
        fsm.install(&snap.meta, snap.snapshot.into_inner()).unwrap();
        assert_eq!(fsm.applied().unwrap().index, 120);
        fsm.with_state(|s| assert_eq!(s, &workload::expected_state(120)));
        // The follower goes on applying after the snapshot.
        fsm.apply_entries((121..=130).map(workload::entry)).unwrap();
    });
    let (_log, sm) = raft_store::open(follower_dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(sm.applied().unwrap().index, 130);
    sm.with_state(|s| assert_eq!(s, &workload::expected_state(130)));
}

#[test]
fn a_damaged_snapshot_is_refused_before_use() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (log, sm) = raft_store::open(leader_dir.path(), StoreOptions::default()).unwrap();
        let entries: Vec<_> = (1..=40).map(workload::entry).collect();
        log.append_durably(entries.clone()).await.unwrap();
        sm.apply_entries(entries).unwrap();
        let snap = sm.build().unwrap();
        let mut bytes = snap.snapshot.into_inner();
        let n = bytes.len();
        bytes[n - 3] ^= 1;

        let (_flog, fsm) = raft_store::open(follower_dir.path(), StoreOptions::default()).unwrap();
        fsm.apply_entries((1..=5).map(workload::entry)).unwrap();
        let err = fsm.install(&snap.meta, bytes).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(fsm.applied().unwrap().index, 5, "a refused snapshot changed the applied index");
        fsm.with_state(|s| assert_eq!(s, &workload::expected_state(5)));
        assert!(!raft_store::snapshot::file_path(follower_dir.path()).exists(), "a refused snapshot was written");
    });
}

#[test]
fn watch_records_follow_the_applied_index() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let (log, sm) =
            raft_store::open(dir.path(), StoreOptions { retained_records: 10, ..Default::default() }).unwrap();
        let mut applied = sm.subscribe_applied();
        let entries: Vec<_> = (1..=50).map(workload::entry).collect();
        log.append_durably(entries.clone()).await.unwrap();
        sm.apply_entries(entries).unwrap();
        applied.changed().await.unwrap();
        assert_eq!(*applied.borrow(), 50);
        let page = sm.records_after(45, 100).unwrap();
        assert_eq!(page.iter().map(|r| r.index).collect::<Vec<_>>(), vec![46, 47, 48, 49, 50]);
        // Every seventh entry reuses its predecessor's key with another command: rejected, remembered as such.
        let rejected = sm.records_after(48, 1).unwrap();
        assert_eq!(rejected[0].result.as_ref().unwrap_err().code(), "idempotency_key_reused");
        sm.build().unwrap();
        // Records behind the retention window are pruned after a snapshot.
        assert_eq!(sm.records_after(0, 1).unwrap()[0].index, 40);
    });
}

#[test]
fn records_served_from_memory_equal_the_stored_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pages = |sm: &raft_store::StateMachineStore| -> Vec<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for after in [0, 1, 17, 59, 60, 61, 80] {
            for limit in [1, 3, 100] {
                let page = sm.records_after(after, limit).unwrap();
                out.push(page.iter().map(|r| (r.index, r.fingerprint)).collect());
            }
        }
        out
    };
    let in_memory = rt().block_on(async {
        let (log, sm) = raft_store::open(dir.path(), StoreOptions::default()).unwrap();
        for chunk in (1..=60).collect::<Vec<u64>>().chunks(7) {
            let entries: Vec<_> = chunk.iter().copied().map(workload::entry).collect();
            log.append_durably(entries.clone()).await.unwrap();
            sm.apply_entries(entries).unwrap();
        }
        pages(&sm)
    });
    // Reopened, the window is empty and every page comes from sled.
    let (_log, sm) = raft_store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(pages(&sm), in_memory);
    assert_eq!(in_memory[0], vec![(1, in_memory[0][0].1)]);
    assert!(in_memory.iter().any(|p| p.len() == 3));
}
