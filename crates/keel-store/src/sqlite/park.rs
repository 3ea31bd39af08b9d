//! Long polls parked in the writer. A `wait_and_lease` that finds no work waits here instead of
//! in its HTTP task; at the end of any group that made work leasable the writer leases to the
//! parked requests, oldest first, inside that group's transaction. A waiting worker thus gets its
//! job in the same commit, and the same fsync, as the enqueue (or promotion, retry, resume) that
//! made it available, not one wake-up, one group and one fsync later.
//!
//! Invariants:
//! - A parked request is answered exactly once: with the jobs leased for it (through the group's
//!   `Done`, so after that group's fsync, like any lease), with the group's error if it failed,
//!   or empty when its wait has run out or the store closes. Only the writer answers it, so a
//!   wait cannot both run out and be leased to.
//! - Nothing is leased for a caller that has gone: a request whose receiver was dropped (the
//!   HTTP request ended, the server is stopping) is dropped before anything is leased for it.

use std::collections::VecDeque;
use std::time::Instant;

use keel_core::Time;

use super::writer::Reply;
use crate::types::{LeaseRequest, LeasedJob};

pub(super) struct Parked {
    pub(super) req: LeaseRequest,
    /// The caller's clock when it parked; a lease made later uses the latest time the writer
    /// has seen, and never less than this.
    pub(super) now: Time,
    /// When the wait runs out.
    pub(super) until: Instant,
    pub(super) reply: Reply<Vec<LeasedJob>>,
}

impl Parked {
    /// The caller is gone: nothing may be leased for it.
    pub(super) fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The parked requests, oldest first.
#[derive(Default)]
pub(super) struct ParkedSet {
    waiting: VecDeque<Parked>,
}

impl ParkedSet {
    pub(super) fn park(&mut self, p: Parked) {
        self.waiting.push_back(p);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes every parked request, oldest first; the writer puts back those it could not serve.
    pub(super) fn take(&mut self) -> VecDeque<Parked> {
        std::mem::take(&mut self.waiting)
    }

    /// Puts back requests taken with `take` ahead of any parked since, keeping the oldest first.
    pub(super) fn put_back(&mut self, mut older: VecDeque<Parked>) {
        older.append(&mut self.waiting);
        self.waiting = older;
    }

    /// When the first wait runs out.
    pub(super) fn next_until(&self) -> Option<Instant> {
        self.waiting.iter().map(|p| p.until).min()
    }

    /// Answers every wait that has run out by `at` with no jobs (and forgets, meanwhile, callers
    /// that left; the others are dropped when a group next tries to serve them).
    pub(super) fn expire(&mut self, at: Instant) {
        if self.next_until().is_none_or(|u| u > at) {
            return;
        }
        for p in std::mem::take(&mut self.waiting) {
            if p.abandoned() {
                continue;
            }
            if p.until <= at {
                let _ = p.reply.send(Ok(Vec::new()));
            } else {
                self.waiting.push_back(p);
            }
        }
    }

    /// The store is closing: every wait ends now, with no jobs.
    pub(super) fn close(&mut self) {
        for p in self.waiting.drain(..) {
            let _ = p.reply.send(Ok(Vec::new()));
        }
    }
}
