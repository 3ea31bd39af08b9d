//! Rows read ahead for the lease, on a thread of their own (`keel-ahead`).
//!
//! A lease read each job's row before changing it: ~18k of the writer's ~93k instructions per
//! drained job (docs/performance.md), on the one thread that bounds drain while the second core
//! idles. After each commit the writer asks this thread for the rows of the jobs next in line in
//! the queues it just leased from; the copies come back over a channel, and the writer keeps
//! them with its other copies (`held.rs`), so leasing those jobs reads nothing.
//!
//! Invariant (the one `held.rs` keeps: a copy equals its job's row in the writer's current
//! transaction):
//! - The writer asks only between groups, when every change it made is committed, and this
//!   thread reads after it is asked, so what it reads is the writer's own view of those jobs at
//!   the time it asked.
//! - Each ask has a number. A change to an asked job (`Writer::save`, which every change of a
//!   row goes through) takes it off the writer's list, and a copy is kept only if its job is on
//!   the list under the number of the ask that read it. So a copy read before a change is
//!   dropped, also when the job was asked for again since.
//! - A failed group clears the list with the rest of the writer's memory (`Writer::reload`).
//!
//! Reads that fail are dropped (the lease then reads the row itself); nothing here can change
//! what the store answers, only how much the writer reads.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use keel_core::Job;
use rusqlite::OptionalExtension;
use uuid::Uuid;

use super::rows::{LOAD_JOB, LOAD_JOB_ROWID, job_from_row};
use crate::StoreError;

/// Runs on the read-ahead thread after it has read an ask's rows and before it sends them; for
/// tests that hold copies back until the writer has changed a job.
#[derive(Clone)]
pub struct AheadHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for AheadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AheadHook")
    }
}

/// Copies of jobs' rows, with their rowids, read for the ask numbered by the first field.
pub(super) type Copies = (u64, Vec<(Job, i64)>);

/// The writer's end: asks go out, copies come back.
pub(super) struct Ahead {
    asks: Option<Sender<(u64, Vec<Uuid>)>>,
    copies: Receiver<Copies>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ahead {
    /// Starts the thread with a read-only connection to the store at `path`.
    pub(super) fn start(path: &Path, hook: Option<AheadHook>) -> Result<Ahead, StoreError> {
        let conn = super::open_reader(path).map_err(StoreError::sqlite)?;
        let (asks, asked) = channel::<(u64, Vec<Uuid>)>();
        let (send, copies) = channel::<Copies>();
        let thread = std::thread::Builder::new()
            .name("keel-ahead".into())
            .spawn(move || {
                // Ends when the writer drops its end of either channel.
                while let Ok((no, ids)) = asked.recv() {
                    let read = read(&conn, &ids);
                    if let Some(hook) = &hook {
                        (hook.0)();
                    }
                    match read {
                        Ok(rows) => {
                            if send.send((no, rows)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(message = "Read-ahead failed; the lease reads the rows.", error = %e);
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the read-ahead thread: {e}")))?;
        Ok(Ahead {
            asks: Some(asks),
            copies,
            thread: Some(thread),
        })
    }

    /// Asks for the rows of `ids` under number `no`; false if the thread has stopped.
    pub(super) fn ask(&self, no: u64, ids: Vec<Uuid>) -> bool {
        self.asks
            .as_ref()
            .is_some_and(|a| a.send((no, ids)).is_ok())
    }

    /// The next copies that have come back, if any.
    pub(super) fn arrived(&self) -> Option<Copies> {
        self.copies.try_recv().ok()
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.asks = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rows of `ids` that exist, each with its rowid.
fn read(conn: &rusqlite::Connection, ids: &[Uuid]) -> rusqlite::Result<Vec<(Job, i64)>> {
    let mut stmt = conn.prepare_cached(&LOAD_JOB)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row = stmt
            .query_row([id.into_bytes()], |r| {
                Ok((job_from_row(r)?, r.get(LOAD_JOB_ROWID)?))
            })
            .optional()?;
        out.extend(row);
    }
    Ok(out)
}
