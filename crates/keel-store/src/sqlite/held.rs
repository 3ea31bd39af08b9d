//! The writer's copies of jobs it has just written, so the next change to a job does not read
//! its row back. A drained job is written twice in quick succession (leased, then completed);
//! without these copies each change began with a `SELECT` of the row and its decoding, and the
//! ack's alone was ~12% of the writer's time under drain load (docs/performance.md).
//!
//! Invariants:
//! - A copy equals its job's row in the writer's current transaction. Copies are put only by
//!   `Writer::save`, after the row is written, and only the writer writes job rows; whoever
//!   changes a job takes its copy out first (`take`), so a change that is refused or fails leaves
//!   no copy behind, and a group that fails clears every copy with the rest of the writer's
//!   memory (`Writer::reload`). Readers never see copies: they read committed rows.
//! - Only running jobs are kept: their next change (ack, heartbeat, expiry) is close, and a job
//!   waiting hours for a retry would otherwise hold room that work in flight could use.
//! - A copy's rowid is its row's: rows keep their rowid for life (an `UPDATE` keeps it, nothing
//!   renumbers them: no `VACUUM` runs on a live store), and `update_job` checks the id on the row
//!   it finds, so a wrong one would fail the group instead of changing another job.
//! - Copies are bounded by an estimate of their size (`MAX_BYTES`); when full, a job is simply
//!   not kept, and its next change reads its row as before.

use std::collections::HashMap;

use keel_core::{Job, State};
use uuid::Uuid;

/// The most the copies may hold, by `cost`.
const MAX_BYTES: usize = 32 << 20;

pub(super) struct Held {
    /// Each copy with its row's rowid and its cost.
    jobs: HashMap<Uuid, (Job, i64, usize)>,
    bytes: usize,
    limit: usize,
}

impl Default for Held {
    fn default() -> Held {
        Held::with_limit(MAX_BYTES)
    }
}

impl Held {
    fn with_limit(limit: usize) -> Held {
        Held {
            jobs: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Removes and returns the copy of `id` with its row's rowid, if there is one.
    pub(super) fn take(&mut self, id: Uuid) -> Option<(Job, i64)> {
        let (job, rowid, cost) = self.jobs.remove(&id)?;
        self.bytes -= cost;
        Some((job, rowid))
    }

    /// Records `job` as just written, replacing any older copy; keeps nothing for a job that is
    /// not running, or when full.
    pub(super) fn put(&mut self, job: &Job, rowid: i64) {
        self.take(job.id);
        if job.state != State::Running {
            return;
        }
        let cost = cost(job);
        if self.bytes + cost > self.limit {
            return;
        }
        self.bytes += cost;
        self.jobs.insert(job.id, (job.clone(), rowid, cost));
    }

    /// Forgets the copy of `id` (its row was deleted).
    pub(super) fn forget(&mut self, id: Uuid) {
        self.take(id);
    }

    pub(super) fn clear(&mut self) {
        self.jobs.clear();
        self.bytes = 0;
    }
}

/// A job's size in memory, roughly: its variable parts plus a fixed allowance for the rest.
fn cost(job: &Job) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    512 + job.queue.len()
        + job.kind.len()
        + job.payload.get().len()
        + job.result.as_ref().map_or(0, |r| r.get().len())
        + job.last_error.as_ref().map_or(0, |e| e.message.len())
        + job.tags.iter().map(String::len).sum::<usize>()
        + text(&job.idempotency_key)
        + text(&job.traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{Json, QueueConfig, Time};

    /// A running job.
    fn job(n: u128, payload_bytes: usize) -> Job {
        let mut new = crate::testing::job("q");
        new.payload = Json::from_value(&serde_json::json!({"p": "x".repeat(payload_bytes)}));
        let mut job = new.into_job(Uuid::from_u128(n), &QueueConfig::default(), Time::EPOCH);
        job.state = State::Running;
        job
    }

    #[test]
    fn a_copy_is_taken_once_and_replaced_by_the_latest_write() {
        let mut held = Held::default();
        let mut j = job(1, 10);
        held.put(&j, 7);
        j.attempt = 3;
        held.put(&j, 8);
        assert_eq!(
            held.take(j.id).map(|(j, rowid)| (j.attempt, rowid)),
            Some((3, 8))
        );
        assert!(held.take(j.id).is_none(), "a copy is handed out once");
        assert_eq!(held.bytes, 0);
    }

    #[test]
    fn jobs_not_running_are_not_kept_and_replace_an_older_copy() {
        for state in [State::Completed, State::Scheduled, State::Available] {
            let mut held = Held::default();
            let mut j = job(1, 10);
            held.put(&j, 1);
            j.state = state;
            held.put(&j, 1);
            assert!(
                held.take(j.id).is_none(),
                "the running copy must not outlive the lease ({state:?})"
            );
            assert_eq!(held.bytes, 0);
        }
    }

    #[test]
    fn the_copies_stay_within_their_budget() {
        let one = cost(&job(0, 1_000));
        let mut held = Held::with_limit(one * 3);
        for n in 1..=5 {
            held.put(&job(n, 1_000), n as i64);
        }
        assert_eq!(held.jobs.len(), 3, "only what fits is kept");
        assert!(held.bytes <= one * 3);
        held.forget(Uuid::from_u128(1));
        held.put(&job(4, 1_000), 4);
        assert!(
            held.take(Uuid::from_u128(4)).is_some(),
            "room made is used again"
        );
        held.clear();
        assert_eq!((held.jobs.len(), held.bytes), (0, 0));
    }
}
