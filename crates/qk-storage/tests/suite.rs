//! openraft's storage test suite, run against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use qk_raft::TypeConfig;
use qk_storage::{LogStore, NodeId, StateMachineStore};
use tempfile::TempDir;

mod common;

/// Every test of the suite gets a fresh directory, removed when the test's
/// stores are dropped.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let (log, sm) = qk_storage::open(dir.path(), common::roster())
            .expect("open storage in a fresh directory");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
