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
    // The writer's own threshold is 64 MiB of WAL; this workload stays far below it.
    let wal_bytes = size(&wal);
    assert!(
        wal_bytes < 16 * 1024 * 1024,
        "the WAL grew to {wal_bytes} bytes"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while size(&db) < before + 400 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes (from {before}); the WAL holds {wal_bytes} bytes",
            size(&db)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    store.close().await.unwrap();
}

/// SQLite-only: a new store is created with 8 KiB pages; a file created earlier with other pages
/// (16 KiB, keel's size until 2026-12-07) keeps them and works as before (the page size of a WAL
/// database is fixed).
#[tokio::test]
async fn new_stores_get_8_kib_pages_and_older_files_keep_theirs() {
    use keel_store::{SqliteConfig, SqliteStore, Store};
    let page_size = |db: &std::path::Path| -> i64 {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    let fresh = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(fresh.path());
    let db = config.db_path();
    let store = SqliteStore::open(config, keel_store::testing::T0).unwrap();
    store
        .enqueue(vec![keel_store::testing::job("q")], keel_store::testing::T0)
        .await
        .unwrap();
    store.close().await.unwrap();
    assert_eq!(page_size(&db), 8_192);

    let old = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(old.path());
    let db = config.db_path();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA page_size=16384; PRAGMA journal_mode=WAL; CREATE TABLE t (x);")
            .unwrap();
    }
    let store = SqliteStore::open(config, keel_store::testing::T0).unwrap();
    let jobs = (0..500).map(|_| keel_store::testing::job("q")).collect();
    let made = store.enqueue(jobs, keel_store::testing::T0).await.unwrap();
    assert!(store.get_job(made[499].job.id).await.unwrap().is_some());
    store.close().await.unwrap();
    assert_eq!(page_size(&db), 16_384);
}
