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

/// SQLite-only: the checkpoint thread copies committed pages from the WAL into the database
/// file while the store is open, though the WAL never reaches the size at which the writer
/// would checkpoint by itself.
#[tokio::test]
async fn the_checkpoint_thread_copies_the_wal_into_the_database_file() {
    use keel_store::{SqliteConfig, SqliteStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path());
    let (db, wal) = (config.db_path(), dir.path().join("keel.db-wal"));
    let store = SqliteStore::open(config, keel_store::testing::T0).unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(&db);
    for _ in 0..20 {
        let jobs = (0..100).map(|_| keel_store::testing::job("q")).collect();
        store.enqueue(jobs, keel_store::testing::T0).await.unwrap();
    }
    // Frames are a 24-byte header and a 4 KiB page; the writer's own threshold is 16,000.
    let frames = size(&wal).saturating_sub(32) / (4096 + 24);
    assert!(frames < 4_000, "the WAL grew to {frames} frames");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while size(&db) < before + 100 * 4096 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes (from {before}); the WAL holds {frames} frames",
            size(&db)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await.unwrap();
}
