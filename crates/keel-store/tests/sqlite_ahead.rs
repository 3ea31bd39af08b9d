//! SQLite-only: rows read ahead for the lease (`sqlite/ahead.rs`) never stand in for a job that
//! changed after they were read. A hook on the read-ahead thread holds its copies back until the
//! test has changed the job; the store, its file and its threads are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::{Scope, State, Time};
use keel_store::testing::{T0, job, lease_req};
use keel_store::{AheadHook, SqliteConfig, SqliteStore, Store};

/// The hook tells the test each time the thread has read an ask's rows, then waits for the test
/// to let it hand them back.
struct Gate {
    read: Mutex<Receiver<()>>,
    go: Sender<()>,
}

fn open(dir: &std::path::Path) -> (Arc<SqliteStore>, Gate) {
    let (read_tx, read) = channel::<()>();
    let (go, go_rx) = channel::<()>();
    let (read_tx, go_rx) = (Mutex::new(read_tx), Mutex::new(go_rx));
    let mut config = SqliteConfig::new(dir);
    config.ahead_hook = Some(AheadHook(Arc::new(move || {
        let _ = read_tx.lock().unwrap().send(());
        let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
    })));
    let store = Arc::new(SqliteStore::open(config, T0).unwrap());
    let gate = Gate {
        read: Mutex::new(read),
        go,
    };
    (store, gate)
}

impl Gate {
    /// Waits until the read-ahead thread has read an ask's rows.
    fn wait_read(&self) {
        self.read
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .expect("the read-ahead thread read nothing");
    }

    fn release(&self) {
        let _ = self.go.send(());
    }
}

fn at(ms: i64) -> Time {
    T0.plus_ms(ms)
}

/// Enqueues `n` jobs in `queue` at T0, in id order.
async fn fill(store: &SqliteStore, queue: &str, n: usize) -> Vec<uuid::Uuid> {
    let jobs = (0..n).map(|_| job(queue)).collect();
    let done = store.enqueue(jobs, T0).await.unwrap();
    done.iter().map(|e| e.job.id).collect()
}

/// Cancels the job and retries it: it is available again, due at `ms`, with a new history.
async fn cancel_and_retry(store: &SqliteStore, id: uuid::Uuid, ms: i64) {
    store.cancel(id, Scope::All, at(ms)).await.unwrap();
    let again = store.retry(id, Scope::All, at(ms + 1)).await.unwrap();
    assert_eq!((again.state, again.run_at), (State::Available, at(ms + 1)));
}

/// Leases every job of `queue` and returns the one with id `id`, as the worker got it.
async fn lease_all_and_find(store: &SqliteStore, queue: &str, id: uuid::Uuid) -> keel_core::Job {
    let leased = store.lease(lease_req(&[queue], 100), at(50)).await.unwrap();
    leased
        .into_iter()
        .find(|l| l.job.id == id)
        .expect("the job was leased")
        .job
}

async fn assert_rows_equal_events(store: &SqliteStore) {
    let report = store.verify().await.unwrap();
    assert!(
        report.mismatched.is_empty(),
        "rows differ from their events: {:?}",
        report.mismatched
    );
}

/// A job read ahead, then changed before its copy came back: the copy is dropped because the
/// change took the job off the list of asked jobs.
#[tokio::test]
async fn a_copy_of_a_job_changed_since_it_was_asked_for_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gate) = open(dir.path());
    let q = fill(&store, "q", 3).await;
    let other = fill(&store, "other", 3).await;
    // Leasing q[0] asks for the next in line, q[1]; the thread reads it and is held.
    let first = store.lease(lease_req(&["q"], 1), T0).await.unwrap();
    assert_eq!(first[0].job.id, q[0]);
    gate.wait_read();
    cancel_and_retry(&store, q[1], 10).await;
    // A lease elsewhere asks for other[1]: once the thread has read that, it has handed back
    // its copy of q[1], read before the change.
    let lease = store.lease(lease_req(&["other"], 1), at(20)).await.unwrap();
    assert_eq!(lease[0].job.id, other[0]);
    gate.release();
    gate.wait_read();
    let got = lease_all_and_find(&store, "q", q[1]).await;
    assert_eq!(
        (got.run_at, got.attempt),
        (at(11), 1),
        "the lease used a copy from before the retry"
    );
    gate.release();
    assert_rows_equal_events(&store).await;
    store.close().await.unwrap();
}

/// The same job asked for again after it changed: the copy read for the first ask is still
/// dropped, because copies are matched to the ask that read them.
#[tokio::test]
async fn a_copy_read_for_an_earlier_ask_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gate) = open(dir.path());
    let q = fill(&store, "q", 4).await;
    store.lease(lease_req(&["q"], 1), T0).await.unwrap();
    gate.wait_read(); // q[1] read, held
    cancel_and_retry(&store, q[1], 10).await;
    // q[2] and q[3] are now ahead of q[1] (due later); leasing both asks for q[1] again.
    let two = store.lease(lease_req(&["q"], 2), at(20)).await.unwrap();
    assert_eq!(
        two.iter().map(|l| l.job.id).collect::<Vec<_>>(),
        [q[2], q[3]]
    );
    gate.release(); // the first ask's copy of q[1] goes back
    gate.wait_read(); // the second ask's read, held: the stale copy is in the writer's channel
    let got = lease_all_and_find(&store, "q", q[1]).await;
    assert_eq!(
        (got.run_at, got.attempt),
        (at(11), 1),
        "the lease used a copy from before the retry"
    );
    gate.release();
    assert_rows_equal_events(&store).await;
    store.close().await.unwrap();
}
