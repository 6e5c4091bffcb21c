//! openraft's own storage conformance suite, run against the segment-file log store and our
//! state machine (each test case gets a fresh temp dir: the log in `raft-log`, sled in `db`).

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

use super::file_log::FileLogStore;
use super::state_machine::StateMachineStore;
use super::TypeConfig;

struct FileLogBuilder;

fn source<E: std::error::Error + 'static>(e: &E) -> openraft::alias::ErrorSourceOf<TypeConfig> {
    use openraft::errors::ErrorSource;
    openraft::alias::ErrorSourceOf::<TypeConfig>::from_error(e)
}

impl StoreBuilder<TypeConfig, FileLogStore, StateMachineStore, TempDir> for FileLogBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, FileLogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(source(&e)))?;
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .map_err(|e| StorageError::read(source(&e)))?;
        let log = FileLogStore::open(&dir.path().join("raft-log"))
            .map_err(|e| StorageError::read(source(&e)))?;
        let sm =
            StateMachineStore::open(&db, dir.path()).map_err(|e| StorageError::read(source(&e)))?;
        sm.hold_writes_until_durable(log.durable_index());
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(FileLogBuilder).await?;
    Ok(())
}
