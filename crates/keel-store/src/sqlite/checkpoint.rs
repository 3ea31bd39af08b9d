//! The WAL checkpointer: copies committed pages from the WAL into the database file on its own
//! thread and connection, so the writer thread does not spend its time on it (in batch enqueue
//! the writer's automatic checkpoints were 13% of the server's samples).
//!
//! Invariants:
//! - Only committed frames are copied, by SQLite's own `PASSIVE` checkpoint, which never blocks
//!   the writer or readers and is crash-safe at every instant: a `kill -9` mid-checkpoint loses
//!   nothing (the WAL still holds every frame not yet in the database file).
//! - The WAL stays bounded: the writer keeps an automatic checkpoint of its own at
//!   `WRITER_FALLBACK_BYTES`, which runs only when this thread fell behind (a failure, or a long
//!   read holding old pages) or the writer never found the WAL fully copied when it began a
//!   transaction (which is what lets SQLite start the WAL over).
//! - A failed checkpoint is logged and retried on the next commit; it changes nothing.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::StoreError;

/// WAL size at which the writer checkpoints by itself (SQLite's default is 1,000 pages).
///
/// The WAL starts over only when the writer begins a transaction with every frame copied, and
/// under load the writer begins its next group right after each commit, before this thread
/// can copy that commit's frames; so the writer's own checkpoint is what lets the WAL start
/// over. It must sit well above one group's worth: a group of 16 batches of 1,000 jobs writes
/// ~20 MB, and at 4,000 pages of 4 KiB (16 MB) the writer copied every group's pages itself
/// (8% of its time in batch enqueue) while this thread's copies were wasted. At 64 MiB this
/// thread has copied all but the last group by then. The WAL's high-water mark is ~80 MB.
const WRITER_FALLBACK_BYTES: i64 = 64 * 1024 * 1024;

/// `WRITER_FALLBACK_BYTES` in pages of the store's page size (`wal_autocheckpoint` counts pages).
pub(crate) fn writer_fallback_pages(page_size: i64) -> i64 {
    WRITER_FALLBACK_BYTES / page_size.max(512)
}

/// The checkpointer runs at most this often, so under load it copies batches of pages (a page
/// written many times is copied once) instead of chasing every commit.
const MIN_INTERVAL: Duration = Duration::from_millis(20);

/// What the writer holds: a non-blocking nudge. Dropping it stops the checkpointer.
pub(crate) struct Nudge(SyncSender<()>);

impl Nudge {
    /// Asks for a checkpoint; never blocks. A full channel means a nudge is already pending,
    /// which covers this one; a closed one means the checkpointer is gone (closing).
    pub(crate) fn after_commit(&self) {
        let _ = self.0.try_send(());
    }
}

/// Opens the checkpointer's connection on `path` and starts its thread, which ends once the
/// `Nudge` is dropped (the writer's, when the writer stops).
pub(crate) fn start(path: &Path) -> Result<(JoinHandle<()>, Nudge), StoreError> {
    let conn = Connection::open(path).map_err(StoreError::sqlite)?;
    super::schema::configure(&conn).map_err(StoreError::sqlite)?;
    let (nudge, rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name("keel-checkpoint".into())
        .spawn(move || run(&conn, &rx))
        .map_err(|e| StoreError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((handle, Nudge(nudge)))
}

fn run(conn: &Connection, nudges: &Receiver<()>) {
    let mut last = Instant::now() - MIN_INTERVAL;
    while nudges.recv().is_ok() {
        let since = last.elapsed();
        if since < MIN_INTERVAL {
            std::thread::sleep(MIN_INTERVAL - since);
        }
        // Nudges that came while sleeping are covered by this checkpoint.
        while nudges.try_recv().is_ok() {}
        last = Instant::now();
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal, copied)) => {
                tracing::trace!(
                    message = "WAL checkpoint.",
                    wal_pages = wal,
                    copied_pages = copied
                )
            }
            Err(e) => {
                tracing::warn!(message = "WAL checkpoint failed; it is retried after the next commit.", error = %e)
            }
        }
    }
}
