//! The writer's in-memory view of what is due: available jobs per queue in hand-out order,
//! scheduled jobs by `run_at`, running jobs by lease expiry, and running counts per queue.
//!
//! Invariant: after every commit the index equals what a rebuild from the jobs table gives.
//! It is kept so by one function, `update(before, after)`, called for every job change; on a
//! failed commit the writer rebuilds it from disk instead of undoing changes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use keel_core::{Job, State, Time};
use uuid::Uuid;

/// Hand-out order: priority desc, run_at asc, id asc.
type ReadyKey = (Reverse<i32>, Time, Uuid);

/// The fields of a job the index needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry<'a> {
    pub id: Uuid,
    pub queue: &'a str,
    pub state: State,
    pub priority: i32,
    pub run_at: Time,
    pub lease_expires_at: Option<Time>,
}

impl<'a> From<&'a Job> for Entry<'a> {
    fn from(job: &'a Job) -> Entry<'a> {
        Entry {
            id: job.id,
            queue: &job.queue,
            state: job.state,
            priority: job.priority,
            run_at: job.run_at,
            lease_expires_at: job.lease.as_ref().map(|l| l.expires_at),
        }
    }
}

#[derive(Default)]
pub(crate) struct Index {
    ready: HashMap<String, BTreeSet<ReadyKey>>,
    running: HashMap<String, u32>,
    scheduled: BTreeSet<(Time, Uuid)>,
    leases: BTreeSet<(Time, Uuid)>,
}

/// What an update changed that a waiting worker may care about.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Change {
    /// A job became available, or a running slot was freed.
    pub leasable: bool,
}

impl Index {
    /// Moves a job from its `before` entry to its `after` entry (either may be absent).
    pub fn update(&mut self, before: Option<Entry>, after: Option<Entry>) -> Change {
        if let Some(b) = before {
            self.remove(b);
        }
        let mut change = Change::default();
        if let Some(a) = after {
            self.insert(a);
            change.leasable = a.state == State::Available;
        }
        if before.is_some_and(|b| b.state == State::Running)
            && !after.is_some_and(|a| a.state == State::Running)
        {
            change.leasable = true;
        }
        change
    }

    fn insert(&mut self, e: Entry) {
        match e.state {
            State::Available => {
                self.ready.entry(e.queue.to_owned()).or_default().insert((
                    Reverse(e.priority),
                    e.run_at,
                    e.id,
                ));
            }
            State::Scheduled => {
                self.scheduled.insert((e.run_at, e.id));
            }
            State::Running => {
                *self.running.entry(e.queue.to_owned()).or_default() += 1;
                if let Some(at) = e.lease_expires_at {
                    self.leases.insert((at, e.id));
                }
            }
            State::Completed | State::Dead | State::Cancelled => {}
        }
    }

    fn remove(&mut self, e: Entry) {
        match e.state {
            State::Available => {
                if let Some(set) = self.ready.get_mut(e.queue) {
                    set.remove(&(Reverse(e.priority), e.run_at, e.id));
                }
            }
            State::Scheduled => {
                self.scheduled.remove(&(e.run_at, e.id));
            }
            State::Running => {
                if let Some(n) = self.running.get_mut(e.queue) {
                    *n = n.saturating_sub(1);
                }
                if let Some(at) = e.lease_expires_at {
                    self.leases.remove(&(at, e.id));
                }
            }
            State::Completed | State::Dead | State::Cancelled => {}
        }
    }

    /// The next available job of `queue` in hand-out order, if any.
    pub fn next_ready(&self, queue: &str) -> Option<Uuid> {
        self.ready.get(queue)?.first().map(|(_, _, id)| *id)
    }

    pub fn running(&self, queue: &str) -> u32 {
        self.running.get(queue).copied().unwrap_or(0)
    }

    /// Scheduled jobs due at `now`, earliest first, at most `limit`.
    pub fn due_scheduled(&self, now: Time, limit: usize) -> Vec<(Time, Uuid)> {
        self.scheduled
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .copied()
            .collect()
    }

    /// Running jobs whose lease has expired at `now`, at most `limit`.
    pub fn expired_leases(&self, now: Time, limit: usize) -> Vec<(Time, Uuid)> {
        self.leases
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .copied()
            .collect()
    }

    /// Drops timer entries the state machine refused (the job is not in the state the index
    /// says), so a stale entry cannot stay due forever and keep the timer loop spinning.
    pub fn forget_timer(&mut self, entry: (Time, Uuid)) {
        self.scheduled.remove(&entry);
        self.leases.remove(&entry);
    }

    /// The earliest time something becomes due.
    pub fn next_due(&self) -> Option<Time> {
        let s = self.scheduled.first().map(|(t, _)| *t);
        let l = self.leases.first().map(|(t, _)| *t);
        s.into_iter().chain(l).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u128, queue: &str, state: State, priority: i32, run_at: i64) -> Entry<'_> {
        Entry {
            id: Uuid::from_u128(id),
            queue,
            state,
            priority,
            run_at: Time::from_millis(run_at),
            lease_expires_at: None,
        }
    }

    #[test]
    fn hands_out_priority_desc_then_run_at_then_id() {
        let mut ix = Index::default();
        ix.update(None, Some(entry(3, "q", State::Available, 0, 10)));
        ix.update(None, Some(entry(2, "q", State::Available, 0, 10)));
        ix.update(None, Some(entry(1, "q", State::Available, 0, 20)));
        ix.update(None, Some(entry(4, "q", State::Available, 5, 30)));
        let mut order = vec![];
        while let Some(id) = ix.next_ready("q") {
            order.push(id.as_u128());
            ix.update(
                Some(entry(
                    id.as_u128(),
                    "q",
                    State::Available,
                    if id.as_u128() == 4 { 5 } else { 0 },
                    if id.as_u128() == 1 {
                        20
                    } else if id.as_u128() == 4 {
                        30
                    } else {
                        10
                    },
                )),
                None,
            );
        }
        assert_eq!(order, vec![4, 2, 3, 1]);
    }

    #[test]
    fn a_forgotten_timer_entry_is_no_longer_due() {
        let mut ix = Index::default();
        ix.update(None, Some(entry(1, "q", State::Scheduled, 0, 10)));
        let due = ix.due_scheduled(Time::from_millis(10), 10);
        assert_eq!(due.len(), 1);
        ix.forget_timer(due[0]);
        assert!(ix.due_scheduled(Time::from_millis(10), 10).is_empty());
        assert_eq!(ix.next_due(), None);
    }
}
