//! Replication reads are bounded by bytes: openraft asks the log for a range of entries per AppendEntries, and
//! the store returns a prefix whose stored size stays within the budget, never an empty one.

use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader};
use proptest::prelude::*;
use raft_store::{workload, Batch, LogEntry, StoreOptions};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// An entry batching `requests` writes, so that entries differ widely in size.
fn entry_of(index: u64, requests: usize) -> LogEntry {
    LogEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch { requests: (1..=requests as u64).map(workload::request).collect() }),
    }
}

fn stored_size(entry: &LogEntry) -> u64 {
    shared_model::codec::encode(entry).len() as u64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn reads_stay_within_the_byte_budget_and_always_make_progress(
        sizes in proptest::collection::vec(1usize..200, 1..40),
        budget in 1u64..40_000,
        from in 0usize..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { max_payload_bytes: budget, ..StoreOptions::default() };
        let (mut log, _sm) = raft_store::open(dir.path(), options).unwrap();
        let entries: Vec<LogEntry> = sizes.iter().enumerate().map(|(i, n)| entry_of(i as u64 + 1, *n)).collect();
        let start = (from % sizes.len()) as u64 + 1;
        let end = sizes.len() as u64 + 1;
        let read = rt().block_on(async {
            log.append_durably(entries.clone()).await.unwrap();
            log.limited_get_log_entries(start, end).await.unwrap()
        });
        // A prefix of the range, in order, never empty.
        prop_assert!(!read.is_empty());
        let expected: Vec<LogEntry> = entries[start as usize - 1..].iter().take(read.len()).cloned().collect();
        prop_assert_eq!(&read, &expected);
        // Within the budget, unless the first entry alone is larger; and as long as the budget allows.
        let bytes: u64 = read.iter().map(stored_size).sum();
        prop_assert!(read.len() == 1 || bytes <= budget, "{} entries, {bytes} bytes > {budget}", read.len());
        if let Some(next) = entries.get(start as usize - 1 + read.len()) {
            prop_assert!(bytes + stored_size(next) > budget, "stopped early: the next entry would have fit");
        }
    }
}

#[test]
fn an_empty_range_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = raft_store::open(dir.path(), StoreOptions::default()).unwrap();
    rt().block_on(async {
        log.append_durably((1..=3).map(workload::entry)).await.unwrap();
        assert!(log.limited_get_log_entries(2, 2).await.unwrap().is_empty());
        assert_eq!(log.limited_get_log_entries(1, 4).await.unwrap().len(), 3);
    });
}
