//! SQLite-only: a write group that fails part-way rolls back whole, and the writer's memory
//! (ready index, counts, copies of jobs just written: `sqlite/held.rs`) goes back to what the
//! disk holds. The failure is real: a trigger, added from a second connection to the same file,
//! makes SQLite refuse one row's update in the middle of a request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use keel_core::{Scope, State};
use keel_store::testing::{T0, complete, job, lease_req};
use keel_store::{SqliteConfig, SqliteStore, Store};
use uuid::Uuid;

fn side_connection(config: &SqliteConfig) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(config.db_path()).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    conn
}

/// Makes every write of `state` to job `id` fail until dropped.
fn refuse(conn: &rusqlite::Connection, id: Uuid, state: &str) {
    conn.execute_batch(&format!(
        "CREATE TRIGGER refuse BEFORE UPDATE OF state ON jobs \
         WHEN NEW.id = X'{}' AND NEW.state = '{state}' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        id.simple()
    ))
    .unwrap();
}

fn allow(conn: &rusqlite::Connection) {
    conn.execute_batch("DROP TRIGGER refuse").unwrap();
}

#[tokio::test]
async fn a_lease_rolled_back_with_its_group_leaves_the_jobs_leasable() {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::new(dir.path());
    let store = SqliteStore::open(config.clone(), T0).unwrap();
    let ids: Vec<Uuid> = store
        .enqueue(vec![job("q"), job("q")], T0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.id)
        .collect();
    let side = side_connection(&config);

    // The first job's lease is written, then the second's is refused: the group fails whole.
    refuse(&side, ids[1], "running");
    let err = store.lease(lease_req(&["q"], 2), T0).await.unwrap_err();
    assert!(format!("{err}").contains("injected failure"), "{err}");
    allow(&side);
    for id in &ids {
        let j = store.get_job(*id).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempt),
            (State::Available, 0),
            "nothing of the lease stayed"
        );
    }

    // Both jobs lease as if the failed attempt never happened: the writer does not start from
    // the rolled-back lease it wrote in memory.
    let leased = store.lease(lease_req(&["q"], 2), T0).await.unwrap();
    let got: Vec<(Uuid, u32)> = leased.iter().map(|l| (l.job.id, l.job.attempt)).collect();
    assert_eq!(got, vec![(ids[0], 1), (ids[1], 1)]);

    // A completion refused by the disk leaves the job running under the same lease, and the next
    // completion with that lease succeeds.
    refuse(&side, ids[0], "completed");
    let outcome = complete(ids[0], &leased[0].token);
    assert!(
        store
            .record_outcomes(vec![outcome.clone()], Scope::All, T0.plus_ms(1))
            .await
            .is_err()
    );
    allow(&side);
    let j = store.get_job(ids[0]).await.unwrap().unwrap();
    assert_eq!(j.state, State::Running);
    let done = store
        .record_outcomes(vec![outcome], Scope::All, T0.plus_ms(2))
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!((done.state, done.attempt), (State::Completed, 1));

    let report = store.verify().await.unwrap();
    assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
    assert_eq!(report.jobs, 2);
}
