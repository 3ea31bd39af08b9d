//! SQLite-only: the writer commits without waiting for the disk and the sync thread fsyncs the
//! WAL before anyone is answered (`sqlite/sync.rs`). A hook run before each fsync lets these
//! tests hold a sync back or make it fail; the store, its file and its threads are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use keel_store::testing::{T0, job};
use keel_store::{GROUPS_AHEAD, SqliteConfig, SqliteStore, Store, StoreError, SyncHook};

/// Holds every fsync back while closed; counts the syncs that reached it.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    reached: AtomicUsize,
    fail_next: AtomicBool,
}

impl Gate {
    fn hook(self: &Arc<Gate>) -> SyncHook {
        let gate = self.clone();
        SyncHook(Arc::new(move || {
            gate.reached.fetch_add(1, Ordering::SeqCst);
            let mut closed = gate.closed.lock().unwrap();
            while *closed {
                closed = gate.opened.wait(closed).unwrap();
            }
            if gate.fail_next.swap(false, Ordering::SeqCst) {
                return Err(std::io::Error::other("injected EIO"));
            }
            Ok(())
        }))
    }

    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    async fn wait_reached(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.reached.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "no fsync reached the hook"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn open(dir: &std::path::Path, gate: &Arc<Gate>) -> Arc<SqliteStore> {
    let mut config = SqliteConfig::new(dir);
    config.sync_hook = Some(gate.hook());
    Arc::new(SqliteStore::open(config, T0).unwrap())
}

type Answer = tokio::task::JoinHandle<Result<Vec<keel_store::Enqueued>, StoreError>>;

fn enqueue(store: &Arc<SqliteStore>, new: keel_core::NewJob) -> Answer {
    let s = store.clone();
    tokio::spawn(async move { s.enqueue(vec![new], T0).await })
}

/// Closes the gate, then enqueues `new` and waits until its group's fsync is held there.
async fn held_enqueue(gate: &Gate, store: &Arc<SqliteStore>, new: keel_core::NewJob) -> Answer {
    let reached = gate.reached.load(Ordering::SeqCst);
    gate.set_closed(true);
    let answer = enqueue(store, new);
    gate.wait_reached(reached + 1).await;
    answer
}

/// Enqueues `new` and waits until the writer has committed it (the WAL changed), with the sync
/// of an earlier group held at the gate.
async fn committed_enqueue(
    dir: &std::path::Path,
    store: &Arc<SqliteStore>,
    new: keel_core::NewJob,
) -> Answer {
    let wal = dir.join("keel.db-wal");
    let before = std::fs::read(&wal).unwrap();
    let answer = enqueue(store, new);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read(&wal).unwrap() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer did not commit while a sync was held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    answer
}

/// With a sync held at the gate: `GROUPS_AHEAD` enqueues into `queue`, each committed as a
/// group of its own, the most the writer runs ahead of the disk.
async fn committed_behind(
    dir: &std::path::Path,
    store: &Arc<SqliteStore>,
    queue: &str,
) -> Vec<Answer> {
    let mut behind = Vec::new();
    for _ in 0..GROUPS_AHEAD {
        behind.push(committed_enqueue(dir, store, job(queue)).await);
    }
    behind
}

fn keyed(key: &str) -> keel_core::NewJob {
    let mut j = job("q");
    j.idempotency_key = Some(key.to_owned());
    j
}

#[tokio::test]
async fn no_answer_leaves_before_its_commit_is_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = open(dir.path(), &gate);
    let first = held_enqueue(&gate, &store, keyed("k")).await;
    // The same key again: this group writes nothing, but its answer names the first job, whose
    // commit is not on disk yet, so it must wait for that sync too.
    let replay = enqueue(&store, keyed("k"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !first.is_finished(),
        "an enqueue was answered before its fsync"
    );
    assert!(
        !replay.is_finished(),
        "a replay was answered before the fsync of what it names"
    );

    gate.set_closed(false);
    let first = first.await.unwrap().unwrap();
    let replay = replay.await.unwrap().unwrap();
    assert!(!first[0].replayed);
    assert!(replay[0].replayed);
    assert_eq!(first[0].job.id, replay[0].job.id);
    store.close().await.unwrap();
}

#[tokio::test]
async fn the_writer_commits_the_next_group_while_a_sync_runs() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = open(dir.path(), &gate);
    let first = held_enqueue(&gate, &store, job("q")).await;
    // With the first group's fsync held, the writer is free: `GROUPS_AHEAD` more groups commit,
    // and their answers wait for syncs of their own, after the first.
    let behind = committed_behind(dir.path(), &store, "q").await;
    // No further: the next group waits for the disk, uncommitted.
    let wal = dir.path().join("keel.db-wal");
    let before = std::fs::read(&wal).unwrap();
    let waiting = enqueue(&store, job("q"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        std::fs::read(&wal).unwrap() == before,
        "the writer ran more than GROUPS_AHEAD groups ahead of the disk"
    );
    assert!(behind.iter().all(|b| !b.is_finished()));
    gate.set_closed(false);
    first.await.unwrap().unwrap();
    for b in behind {
        b.await.unwrap().unwrap();
    }
    waiting.await.unwrap().unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_fsync_stops_every_write_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = open(dir.path(), &gate);
    let kept = store.enqueue(vec![job("q")], T0).await.unwrap();
    store.check_ready().await.unwrap();

    gate.fail_next.store(true, Ordering::SeqCst);
    match store.enqueue(vec![job("q")], T0).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("fsync"), "{m}"),
        other => panic!("an enqueue whose fsync failed was answered {other:?}"),
    }
    // The next sync would succeed, but the pages the failed one could not write may be gone
    // from the kernel's cache: nothing more is accepted.
    let syncs = gate.reached.load(Ordering::SeqCst);
    match store.enqueue(vec![job("q")], T0).await {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("restart"), "{m}"),
        other => panic!("a poisoned store took a write: {other:?}"),
    }
    assert_eq!(
        gate.reached.load(Ordering::SeqCst),
        syncs,
        "a poisoned store synced again"
    );
    assert!(
        store.check_ready().await.is_err(),
        "a poisoned store said it was ready"
    );
    let read = store.get_job(kept[0].job.id).await;
    assert!(matches!(read, Ok(Some(_))), "reads go on: {read:?}");
    store.close().await.unwrap();

    // A restart starts from what the disk holds, and takes writes again.
    let store = SqliteStore::open(SqliteConfig::new(dir.path()), T0).unwrap();
    store.enqueue(vec![job("q")], T0).await.unwrap();
    store.check_ready().await.unwrap();
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_parked_long_poll_hears_of_its_lease_only_after_the_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = open(dir.path(), &gate);
    let poll = {
        let s = store.clone();
        tokio::spawn(async move {
            let now = || T0;
            s.wait_and_lease(
                keel_store::testing::lease_req(&["q"], 10),
                &now,
                Duration::from_secs(30),
            )
            .await
        })
    };
    // Parked: nothing to lease yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!poll.is_finished());
    // The enqueue's group also leases the job to the parked poll; its fsync is held.
    let enqueued = held_enqueue(&gate, &store, job("q")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "a parked poll was answered before the fsync of its lease"
    );
    gate.set_closed(false);
    let id = enqueued.await.unwrap().unwrap()[0].job.id;
    let leased = poll.await.unwrap().unwrap();
    assert_eq!(
        leased.iter().map(|l| l.job.id).collect::<Vec<_>>(),
        vec![id]
    );
    store.close().await.unwrap();
}

/// A small enqueue's row waits in the writer until something needs it or its group ends
/// (`Writer::flush_rows`). Here one group holds a new keyed job, a replay of its key and a lease
/// of its queue: the replay and the lease must both find the row the first left waiting.
#[tokio::test]
async fn a_group_reads_the_rows_its_own_small_enqueues_left_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let store = open(dir.path(), &gate);
    // Group A's fsync is held; `GROUPS_AHEAD` groups commit behind it, and the writer then
    // waits for the disk, so everything sent after them gathers into one group.
    let a = held_enqueue(&gate, &store, job("other")).await;
    let behind = committed_behind(dir.path(), &store, "other").await;
    let pause = Duration::from_millis(30);
    let created = enqueue(&store, keyed("k"));
    tokio::time::sleep(pause).await;
    let replay = enqueue(&store, keyed("k"));
    tokio::time::sleep(pause).await;
    let s = store.clone();
    let lease = tokio::spawn(async move {
        let req = keel_store::LeaseRequest {
            queues: vec!["q".to_owned()],
            max_jobs: 10,
            lease_ms: None,
            worker: None,
        };
        s.lease(req, T0).await
    });
    tokio::time::sleep(pause).await;
    gate.set_closed(false);

    a.await.unwrap().unwrap();
    for b in behind {
        b.await.unwrap().unwrap();
    }
    let created = created.await.unwrap().unwrap();
    let replay = replay.await.unwrap().unwrap();
    let leased = lease.await.unwrap().unwrap();
    assert!(!created[0].replayed);
    assert!(
        replay[0].replayed,
        "the replay did not find the waiting row"
    );
    assert_eq!(replay[0].job.id, created[0].job.id);
    assert_eq!(leased.len(), 1, "the lease did not find the waiting row");
    assert_eq!(leased[0].job.id, created[0].job.id);
    let stored = store.get_job(created[0].job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, keel_core::State::Running);
    store.close().await.unwrap();
}
