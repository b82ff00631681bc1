//! openraft's own storage conformance suite against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use raft_store::{LogStore, NodeId, StateMachineStore, StoreOptions, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = raft_store::open(dir.path(), StoreOptions::default()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("storage conformance failed: {e}");
    }
}
