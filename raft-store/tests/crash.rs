//! Crash safety: a child process appends and applies entries and is killed with SIGKILL at random moments; after
//! each kill the store must reopen with every acknowledged entry present, no hole in the log, and a state machine
//! that equals the fold of the entries up to its applied index.
//!
//! The child is this same test binary, re-run with `RAFT_STORE_CRASH_CHILD_DIR` set, so no extra binary is built.
//! `RAFT_STORE_CRASH_ITERATIONS` (default 60) sets the number of kills. One kill in eight lands while the store
//! opens; the others wait for the child to be ready and land while it writes, and at least half of all kills
//! must land after the child acknowledged an append in that same iteration (counted, not assumed).
//!
//! What this does NOT test: SIGKILL ends the process but keeps the kernel's page cache, so data written and not
//! yet fsynced survives it. The test proves that the store acknowledges only what it has handed to the kernel in
//! order and reopens consistently (flush-before-ack, no hole, state = fold); it cannot prove durability across
//! power loss or a kernel crash, which would need fsync to be observed (a fault-injecting file system or a VM).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::EntryPayload;
use raft_store::{workload, StoreOptions};
use rand::Rng;

const CHILD_ENV: &str = "RAFT_STORE_CRASH_CHILD_DIR";

/// The child's role: write until killed (or for at most 20 s, so a lost parent never leaves it running).
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = Path::new(&dir);
        let (log, sm) =
            raft_store::open(dir, StoreOptions { retained_records: 50, ..Default::default() }).expect("reopen");
        // Catch up like openraft does on start: apply what the log holds beyond the applied index.
        let applied = sm.applied().map_or(0, |l| l.index);
        let last = log.log_state().unwrap().last_log_id.map_or(0, |l| l.index);
        if last > applied {
            sm.apply_entries(log.entries(applied + 1..=last).unwrap()).unwrap();
        }
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "READY {last}").unwrap();
        stdout.flush().unwrap();
        let mut rng = rand::rng();
        let mut next = last + 1;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let n = rng.random_range(1..=24u64);
            let entries: Vec<_> = (next..next + n).map(workload::entry).collect();
            log.append_durably(entries.clone()).await.unwrap();
            writeln!(stdout, "ACK {}", next + n - 1).unwrap();
            stdout.flush().unwrap();
            sm.apply_entries(entries).unwrap();
            next += n;
            if rng.random_ratio(1, 12) {
                let snap = sm.build().unwrap();
                if let Some(last) = snap.meta.last_log_id {
                    if last.index > 20 {
                        let keep = openraft::LogId::new(last.leader_id, last.index - 20);
                        log.purge_upto(keep).await.unwrap();
                    }
                }
            }
        }
    });
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_entry() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let iterations: usize =
        std::env::var("RAFT_STORE_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acked_total = 0u64;
    let mut lost = 0u64;
    let mut kills_after_an_ack = 0usize;
    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let acked = Arc::new(AtomicU64::new(0));
        let ready = Arc::new(AtomicU64::new(u64::MAX));
        let reader = {
            let stdout = child.stdout.take().unwrap();
            let (acked, ready) = (acked.clone(), ready.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(i) = line.strip_prefix("ACK ") {
                        acked.fetch_max(i.trim().parse().unwrap(), Ordering::SeqCst);
                    } else if let Some(i) = line.split_once("READY ").map(|(_, i)| i) {
                        // The harness prints "test crash_child ... " on the same line before it.
                        ready.store(i.trim().parse().unwrap(), Ordering::SeqCst);
                    }
                }
            })
        };
        // Kill at a random moment: one time in eight while it opens, else while it writes (after READY, which
        // is waited for: a slow start must not turn a write-time kill into an open-time one).
        let wait = Instant::now();
        let while_opening = rng.random_ratio(1, 8);
        if while_opening {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        } else {
            while ready.load(Ordering::SeqCst) == u64::MAX {
                assert!(wait.elapsed() < Duration::from_secs(60), "iteration {iteration}: the child never got ready");
                std::thread::sleep(Duration::from_millis(2));
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..120)));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let ready_at = ready.load(Ordering::SeqCst);
        if ready_at != u64::MAX && acked.load(Ordering::SeqCst) > ready_at {
            kills_after_an_ack += 1;
        }
        let acked = acked.load(Ordering::SeqCst);

        let (log, sm) = raft_store::open(dir.path(), StoreOptions::default())
            .unwrap_or_else(|e| panic!("iteration {iteration}: store does not reopen: {e}"));
        let state = log.log_state().unwrap();
        let last = state.last_log_id.map_or(0, |l| l.index);
        if last < acked {
            lost += acked - last;
        }
        assert!(last >= acked, "iteration {iteration}: acknowledged up to {acked}, log ends at {last}");
        let first = state.last_purged_log_id.map_or(1, |l| l.index + 1);
        let entries = log.entries(first..=last).unwrap();
        assert_eq!(entries.len() as u64, last + 1 - first, "iteration {iteration}: hole in the log");
        for e in &entries {
            let EntryPayload::Normal(batch) = &e.payload else { panic!("unexpected payload") };
            assert_eq!(
                &batch.requests,
                &vec![workload::request(e.log_id.index)],
                "iteration {iteration}: entry {} differs",
                e.log_id.index
            );
        }
        let applied = sm.applied().map_or(0, |l| l.index);
        assert!(applied <= last, "iteration {iteration}: applied {applied} beyond the log's end {last}");
        assert!(
            applied + 1 >= first,
            "iteration {iteration}: entries between applied {applied} and log start {first} are gone"
        );
        sm.with_state(|s| {
            assert_eq!(s.last_applied(), applied);
            assert_eq!(s, &workload::expected_state(applied), "iteration {iteration}: state differs from the fold");
        });
        acked_total = acked_total.max(acked);
    }
    println!(
        "{iterations} SIGKILLs ({kills_after_an_ack} after an acknowledged append in the same iteration), \
         {acked_total} entries acknowledged, {lost} lost"
    );
    assert!(acked_total > 0, "the child never acknowledged anything: the test did not exercise the store");
    assert!(
        kills_after_an_ack * 2 >= iterations,
        "only {kills_after_an_ack} of {iterations} kills landed after an acknowledged append: the kills did not hit \
         the write path often enough to mean anything"
    );
}
