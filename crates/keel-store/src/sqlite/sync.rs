//! The syncer: makes each group's commit durable before any of its callers hears of it, on its
//! own thread, so the disk's wait for group N overlaps the writer's work on group N+1.
//!
//! The writer's connection runs `synchronous=NORMAL`: its `COMMIT` hands the WAL frames to the
//! OS and returns without waiting for the disk. The writer then passes the group's answers here,
//! in commit order, and starts the next group. This thread takes every group that has arrived,
//! `fdatasync`s the WAL file once (one sync covers every frame written before it began), and
//! only then answers them, in order. The writer runs at most `GROUPS_AHEAD` (two) groups ahead
//! of the disk: before it starts a group it waits until no more than two handed-over groups are
//! unanswered, so requests that arrive meanwhile make the next group larger instead of many tiny
//! commits.
//!
//! Invariants:
//! - No caller hears of a group before an `fdatasync` of the WAL that began after the group's
//!   `COMMIT` returned has succeeded. A group that wrote nothing is answered only after every
//!   group before it (its answer may rest on them: an idempotent replay names a job an earlier,
//!   possibly unsynced, group created).
//! - Answers leave in commit order, and the counters of a group (`observe`) are emitted only
//!   once it is durable.
//! - A failed `fdatasync` poisons the store until restart. The kernel may have dropped the dirty
//!   pages it could not write, so a later sync that succeeds would not cover them (PostgreSQL's
//!   fsync lesson): every caller of that sync and of any later one gets `Unavailable`, the writer
//!   refuses every later group, and readiness says why. A restart recovers the WAL as the disk
//!   holds it; what was answered before the failure was synced.
//! - Corruption safety is SQLite's under `synchronous=NORMAL` in WAL mode: a checkpoint syncs
//!   the WAL before copying it and the database file before the WAL starts over, and a restarted
//!   WAL's header is synced before its first frame (the checkpoint thread runs `FULL`).
//! - The writer's connection stays open for the store's whole life, so SQLite never deletes the
//!   WAL file this thread opened at start (it does so only when the last connection closes).
//!
//! What it does not promise: a reader may see a commit before it is synced (WAL makes a commit
//! visible when `COMMIT` returns). Only a power loss in that window (not a crash of keel: the OS
//! still holds the frames) can take such a read back, and nothing seen that way had been
//! acknowledged to the caller that wrote it.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use super::writer::Done;
use crate::StoreError;
use crate::observe::{self, Tally};

/// Called before each `fdatasync` of the WAL; an error counts as the sync's. Tests use it to
/// hold a sync back or to make one fail; `None` in production.
#[derive(Clone)]
pub struct SyncHook(pub Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>);

impl std::fmt::Debug for SyncHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SyncHook")
    }
}

/// Why the store stopped taking writes after a failed `fdatasync`; set once, never cleared.
type Poison = Arc<OnceLock<String>>;

/// The error every write gets once `poison` is set.
fn refusal(poison: &Poison) -> Option<StoreError> {
    poison.get().map(|why| StoreError::Unavailable(why.clone()))
}

/// One committed (or failed) group on its way to its callers.
pub(crate) struct Group {
    pub(crate) done: Vec<Done>,
    /// The group's failure (it was rolled back); its callers get it without waiting for a sync.
    pub(crate) fatal: Option<StoreError>,
    /// The commit wrote WAL frames, which must reach the disk before the answers leave.
    pub(crate) wrote: bool,
    pub(crate) tally: Tally,
    /// When the group's `COMMIT` began: the commit metric runs from here until it is durable.
    pub(crate) committing: Instant,
    pub(crate) calls: usize,
}

/// The writer's end: where its groups go, and whether a failed sync stopped the store.
pub(crate) struct Syncer {
    groups: Sender<Group>,
    poison: Poison,
    /// Groups handed over and not yet answered, with a signal when one is.
    in_flight: Arc<(Mutex<usize>, Condvar)>,
}

/// Groups the writer may have committed and not yet heard are on disk when it starts the next.
/// One kept the writer idle while a sync ran with requests waiting; two gave single enqueues
/// +3-31% (median +6%) and batches +6-16% in alternated runs, three no more than two
/// (docs/performance.md, 2026-12-07 late). `tests/sqlite_sync.rs` builds its groups on it.
#[doc(hidden)]
pub const GROUPS_AHEAD: usize = 2;

impl Syncer {
    /// Why the store takes no writes, once a sync failed.
    pub(crate) fn poisoned(&self) -> Option<StoreError> {
        refusal(&self.poison)
    }

    /// Waits until at most `GROUPS_AHEAD` groups are ahead of the disk: the writer works on a
    /// group while those before it are synced, but no further ahead. While it waits, requests
    /// gather, so the next group is larger (without the wait, single enqueues became many tiny
    /// commits).
    pub(crate) fn wait_for_disk(&self) {
        let (count, done) = &*self.in_flight;
        let Ok(mut n) = count.lock() else { return };
        while *n > GROUPS_AHEAD {
            n = match done.wait(n) {
                Ok(n) => n,
                Err(_) => return,
            };
        }
    }

    /// Hands a group over; if the thread is gone, its callers get an error at once.
    pub(crate) fn send(&self, group: Group) {
        if let Ok(mut n) = self.in_flight.0.lock() {
            *n += 1;
        }
        if let Err(mpsc::SendError(group)) = self.groups.send(group) {
            if let Ok(mut n) = self.in_flight.0.lock() {
                // The thread's end may have reset the count already.
                *n = n.saturating_sub(1);
            }
            tracing::error!(message = "The sync thread is gone; the group's callers get an error.");
            let gone = StoreError::Unavailable("the store's sync thread stopped".into());
            for d in group.done {
                d(Some(&gone));
            }
        }
    }
}

/// Opens the WAL file of the database at `db` and starts the thread. It ends once the
/// `Syncer` is dropped (the writer's, when the writer stops), after answering what it holds.
pub(crate) fn start(
    db: &Path,
    healthy: Arc<AtomicBool>,
    hook: Option<SyncHook>,
) -> Result<(JoinHandle<()>, Syncer), StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    let wal = File::options().write(true).open(&name).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot open the WAL file {}: {e}",
            Path::new(&name).display()
        ))
    })?;
    let (groups, rx) = mpsc::channel();
    let poison = Poison::default();
    let in_flight = Arc::new((Mutex::new(0), Condvar::new()));
    let syncer = Syncer {
        groups,
        poison: poison.clone(),
        in_flight: in_flight.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("keel-sync".into())
        .spawn(move || run(&wal, &rx, &poison, &healthy, hook.as_ref(), &in_flight))
        .map_err(|e| StoreError::Internal(format!("cannot start the sync thread: {e}")))?;
    Ok((handle, syncer))
}

struct Release<'a>(&'a (Mutex<usize>, Condvar));

impl Drop for Release<'_> {
    fn drop(&mut self) {
        *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        self.0.1.notify_all();
    }
}

fn sync(wal: &File, hook: Option<&SyncHook>) -> std::io::Result<()> {
    if let Some(h) = hook {
        (h.0)()?;
    }
    wal.sync_data()
}

fn run(
    wal: &File,
    groups: &Receiver<Group>,
    poison: &Poison,
    healthy: &AtomicBool,
    hook: Option<&SyncHook>,
    in_flight: &(Mutex<usize>, Condvar),
) {
    // However this thread ends (a panic included), the writer must not wait for it any more:
    // its next hand-over then fails and its callers get an error.
    let _release = Release(in_flight);
    while let Ok(first) = groups.recv() {
        let mut ready = vec![first];
        ready.extend(groups.try_iter());
        let answered = ready.len();
        if poison.get().is_none()
            && ready.iter().any(|g| g.wrote && g.fatal.is_none())
            && let Err(e) = sync(wal, hook)
        {
            tracing::error!(message = "fsync of the WAL failed; the store takes no more writes until keel restarts.", error = %e);
            let _ = poison.set(format!(
                "an fsync of the write-ahead log failed ({e}); the store takes no writes until keel is restarted"
            ));
        }
        let failed = refusal(poison);
        for mut group in ready {
            let fatal = group
                .fatal
                .take()
                .or_else(|| failed.as_ref().map(StoreError::duplicate));
            match &fatal {
                None => {
                    observe::commit("sqlite", group.calls, group.committing.elapsed());
                    group.tally.emit();
                    // Only a durable commit that wrote rows proves the disk takes writes; an
                    // empty group (a tick with nothing due, a ping) commits even on a full disk.
                    if group.wrote {
                        healthy.store(true, Ordering::Relaxed);
                    }
                }
                Some(_) => healthy.store(false, Ordering::Relaxed),
            }
            for d in group.done {
                d(fatal.as_ref());
            }
        }
        if let Ok(mut n) = in_flight.0.lock() {
            *n = n.saturating_sub(answered);
        }
        in_flight.1.notify_all();
    }
}
