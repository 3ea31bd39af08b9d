//! The SQLite schema and its forward-only migrations, applied under `BEGIN IMMEDIATE` so two
//! processes opening one file cannot both migrate. Running them twice is a no-op.

use rusqlite::Connection;

use crate::StoreError;

/// Ordered migrations; a migration is never edited once released, only appended.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_access.sql")),
    (3, include_str!("migrations/0003_schedules.sql")),
    (4, include_str!("migrations/0004_observability.sql")),
    (5, include_str!("migrations/0005_compact_enqueued.sql")),
    (6, include_str!("migrations/0006_live_index.sql")),
];

/// Brings the store up to the newest schema this build knows. A store already past it was
/// written by a newer keel, whose data this build could misread: it is refused, unchanged.
pub(crate) fn migrate(conn: &mut Connection, now_ms: i64) -> Result<(), StoreError> {
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let current = apply(conn, now_ms, newest).map_err(StoreError::sqlite)?;
    if current > newest {
        return Err(StoreError::Conflict(format!(
            "this store was written by a newer keel (schema version {current}); this build knows \
             versions up to {newest}"
        )));
    }
    Ok(())
}

/// Applies the migrations after the store's version, unless it is past `newest`; returns the
/// version found.
fn apply(conn: &mut Connection, now_ms: i64, newest: i64) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = tx.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > newest {
        return Ok(current);
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            (version, now_ms),
        )?;
    }
    tx.commit()?;
    Ok(current)
}

/// Settings every connection gets. `synchronous=FULL` makes each commit fsync the WAL; the
/// writer alone turns it down to `NORMAL` and leaves the fsync to the sync thread (`sync.rs`).
///
/// `page_size` applies only to a store being created (it must come before WAL mode is set);
/// an existing file keeps its own. 8 KiB pages: against SQLite's 4 KiB, batch enqueue and drain
/// are faster (fewer B-tree splits and WAL frames per job); against 16 KiB (the size until
/// 2026-12-07) they are the same, and a small group's commit writes half the bytes, which its
/// fsync waits for: enqueue → receive p50 −1 to −16%, median −10% (docs/performance.md,
/// 2026-12-07).
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "PRAGMA page_size=8192;
         PRAGMA journal_mode=WAL;
         PRAGMA synchronous=FULL;
         PRAGMA foreign_keys=OFF;
         PRAGMA busy_timeout=5000;
         PRAGMA cache_size=-8192;
         PRAGMA temp_store=MEMORY;",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .unwrap()
    }

    #[test]
    fn a_store_from_a_newer_keel_is_refused_unchanged() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, 1).unwrap();
        let newest = MIGRATIONS.last().unwrap().0;
        assert_eq!(version(&conn), newest);
        // Running them again is a no-op.
        migrate(&mut conn, 2).unwrap();
        assert_eq!(version(&conn), newest);

        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 3)",
            [newest + 1],
        )
        .unwrap();
        let err = migrate(&mut conn, 4).unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("newer keel")),
            "{err:?}"
        );
        assert_eq!(version(&conn), newest + 1);
    }
}
