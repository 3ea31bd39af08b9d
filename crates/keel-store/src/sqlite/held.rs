//! The writer's copies of jobs it has just written, so the next change to a job does not read
//! its row back. A drained job is written three times in quick succession (enqueued, leased,
//! completed); without these copies the lease and the ack each began with a `SELECT` of the row
//! and its decoding, ~12% (the ack's) and ~19% (the lease's) of the writer's work per drained
//! job (docs/performance.md).
//!
//! Invariants:
//! - A copy equals its job's row in the writer's current transaction. Copies are put only after
//!   the row is written (`Writer::save`, and `Writer::flush_rows` and `Writer::enqueue` for new
//!   rows), and only the writer writes job rows; whoever changes a job takes its copy out first
//!   (`take`), so a change that is refused or fails leaves no copy behind, and a group that fails
//!   clears every copy with the rest of the writer's memory (`Writer::reload`). Readers never see
//!   copies: they read committed rows.
//! - Only jobs whose next change is close are kept: running jobs (ack, heartbeat, expiry) and
//!   available ones (the lease) of a queue a worker is asking for jobs, which the writer decides
//!   (`Writer::keep`). A job waiting hours for a retry or its run time, or in a queue nobody
//!   works, would otherwise hold room that work in flight could use.
//! - A copy's rowid is its row's: rows keep their rowid for life (an `UPDATE` keeps it, nothing
//!   renumbers them: no `VACUUM` runs on a live store), and `update_job` checks the id on the row
//!   it finds, so a wrong one would fail the group instead of changing another job.
//! - Copies are bounded by an estimate of their size, running and available jobs each within
//!   their own budget, so a backlog of waiting jobs cannot crowd out the copies of running ones.
//!   When a budget is full a job is simply not kept, and its next change reads its row as
//!   before. Waiting jobs are thus kept in the order they were written until the room is full:
//!   under FIFO leasing, the ones leased next.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use keel_core::{Job, State};
use uuid::Uuid;

/// The most the copies of running jobs may hold, by `cost`.
const MAX_RUNNING_BYTES: usize = 32 << 20;
/// The most the copies of available jobs may hold, by `cost` (~100,000 jobs of small payloads).
const MAX_AVAILABLE_BYTES: usize = 64 << 20;

/// The budget a job's copy counts against, by its state; `None`: not kept.
fn budget_of(state: State) -> Option<usize> {
    match state {
        State::Running => Some(0),
        State::Available => Some(1),
        _ => None,
    }
}

/// Hashes a job id by folding its bytes and multiplying: the ids are the writer's own (UUIDv7
/// with 62 random bits, `rules::Ids`) or an admin's import, so SipHash's defence against chosen
/// keys buys nothing here, and it was a third of what keeping a copy cost (docs/performance.md).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
}

/// A copy with its row's rowid and its cost.
struct Copy {
    job: Job,
    rowid: i64,
    cost: usize,
}

/// The copies of one budget. Each budget has its own table, so that the running jobs' copies,
/// taken and put for every lease and ack, stay in a small table that stays in cache however
/// many waiting jobs the other holds.
#[derive(Default)]
struct Shelf {
    /// Boxed, so that the table's entries are small: hashbrown rehashes in place once enough
    /// removed entries leave tombstones, and that moves every entry.
    jobs: HashMap<Uuid, Box<Copy>, BuildHasherDefault<IdHasher>>,
    bytes: usize,
    limit: usize,
}

impl Shelf {
    fn take(&mut self, id: &Uuid) -> Option<Box<Copy>> {
        let copy = self.jobs.remove(id)?;
        self.bytes -= copy.cost;
        Some(copy)
    }
}

pub(super) struct Held {
    /// Indexed by `budget_of`.
    shelves: [Shelf; 2],
}

impl Default for Held {
    fn default() -> Held {
        Held::with_limits([MAX_RUNNING_BYTES, MAX_AVAILABLE_BYTES])
    }
}

impl Held {
    fn with_limits(limits: [usize; 2]) -> Held {
        Held {
            shelves: limits.map(|limit| Shelf {
                limit,
                ..Shelf::default()
            }),
        }
    }

    /// Removes and returns the copy of `id` with its row's rowid, if there is one.
    pub(super) fn take(&mut self, id: Uuid) -> Option<(Job, i64)> {
        let [running, available] = &mut self.shelves;
        let copy = running.take(&id).or_else(|| available.take(&id))?;
        Some((copy.job, copy.rowid))
    }

    /// Records `job` as just written, replacing any older copy; keeps nothing for a job whose
    /// state is not kept, or when its budget is full.
    pub(super) fn put(&mut self, job: &Job, rowid: i64) {
        if let Some((shelf, cost)) = self.room(job) {
            Held::insert(shelf, job.clone(), rowid, cost);
        }
    }

    /// `put` for a job the caller no longer needs: nothing is copied.
    pub(super) fn put_owned(&mut self, job: Job, rowid: i64) {
        if let Some((shelf, cost)) = self.room(&job) {
            Held::insert(shelf, job, rowid, cost);
        }
    }

    /// Takes out any older copy of `job`; then the shelf it goes on and its cost, if it is to
    /// be kept.
    fn room(&mut self, job: &Job) -> Option<(&mut Shelf, usize)> {
        self.take(job.id);
        let shelf = &mut self.shelves[budget_of(job.state)?];
        let cost = cost(job);
        (shelf.bytes + cost <= shelf.limit).then_some((shelf, cost))
    }

    fn insert(shelf: &mut Shelf, job: Job, rowid: i64, cost: usize) {
        shelf.bytes += cost;
        shelf
            .jobs
            .insert(job.id, Box::new(Copy { job, rowid, cost }));
    }

    /// Forgets the copy of `id` (its row was deleted).
    pub(super) fn forget(&mut self, id: Uuid) {
        self.take(id);
    }

    pub(super) fn clear(&mut self) {
        for shelf in &mut self.shelves {
            shelf.jobs.clear();
            shelf.bytes = 0;
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> [usize; 2] {
        self.shelves.each_ref().map(|s| s.bytes)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shelves.iter().map(|s| s.jobs.len()).sum()
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
        assert_eq!(held.bytes(), [0, 0]);
    }

    #[test]
    fn only_running_and_available_jobs_are_kept_and_a_change_replaces_the_copy() {
        for state in [
            State::Completed,
            State::Scheduled,
            State::Dead,
            State::Cancelled,
        ] {
            let mut held = Held::default();
            let mut j = job(1, 10);
            held.put(&j, 1);
            j.state = state;
            held.put(&j, 1);
            assert!(
                held.take(j.id).is_none(),
                "the running copy must not outlive the lease ({state:?})"
            );
            assert_eq!(held.bytes(), [0, 0]);
        }
        let mut held = Held::default();
        let mut j = job(1, 10);
        j.state = State::Available;
        held.put_owned(j.clone(), 9);
        assert_eq!(held.take(j.id), Some((j, 9)), "an available job is kept");
        assert_eq!(held.bytes(), [0, 0]);
    }

    #[test]
    fn the_copies_stay_within_their_budgets_and_waiting_jobs_cannot_crowd_out_running_ones() {
        let one = cost(&job(0, 1_000));
        let mut held = Held::with_limits([one * 3, one * 2]);
        let available = |n: u128| {
            let mut j = job(n, 1_000);
            j.state = State::Available;
            j
        };
        for n in 11..=15 {
            held.put_owned(available(n), n as i64);
        }
        for n in 1..=5 {
            held.put(&job(n, 1_000), n as i64);
        }
        assert_eq!(held.len(), 5, "only what fits each budget is kept");
        assert_eq!(held.bytes(), [one * 3, one * 2]);
        assert!(
            held.take(Uuid::from_u128(11)).is_some() && held.take(Uuid::from_u128(12)).is_some(),
            "the first written are kept"
        );
        assert!(held.take(Uuid::from_u128(13)).is_none());
        held.forget(Uuid::from_u128(1));
        held.put(&job(4, 1_000), 4);
        assert!(
            held.take(Uuid::from_u128(4)).is_some(),
            "room made is used again"
        );
        // A lease moves a copy from one budget to the other.
        held.put_owned(available(20), 20);
        let mut leased = available(20);
        leased.state = State::Running;
        held.put(&leased, 20);
        assert_eq!(held.bytes(), [one * 3, 0]);
        held.clear();
        assert_eq!((held.len(), held.bytes()), (0, [0, 0]));
    }
}
