//! The conformance suite against a real SQLite file in a temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

keel_store::conformance_tests!(keel_store::testing::SqliteHarness::new());

/// SQLite-only: the writer's in-memory index assumes it is the only writer, so a second store
/// (another keel process) must not open the same data dir while the first has it.
#[tokio::test]
async fn a_data_dir_is_used_by_one_store_at_a_time() {
    use keel_store::{SqliteConfig, SqliteStore, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(SqliteConfig::new(dir.path()), keel_store::testing::T0).unwrap();
    match SqliteStore::open(SqliteConfig::new(dir.path()), keel_store::testing::T0) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("another keel process"), "{m}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second store opened a data dir in use"),
    }
    first.close().await.unwrap();
    let again = SqliteStore::open(SqliteConfig::new(dir.path()), keel_store::testing::T0).unwrap();
    again.close().await.unwrap();
}
