//! Dispatch: the timer loop that drives `Store::tick`, and the long-poll loop of `/v1/lease`.
//!
//! Invariant: a long poll never misses work: `Store::wait_and_lease` tries again before it waits,
//! so a job enqueued between the first attempt and the wait is still leased.

use std::sync::Arc;
use std::time::Duration;

use keel_store::{LeaseRequest, LeasedJob, Store, StoreError};
use tokio::sync::watch;

use crate::Clock;
use crate::limit::InFlight;

/// Longest idle sleep of the timer loop; also its retry pace after a storage error.
const MAX_TIMER_SLEEP_MS: i64 = 1_000;

pub(crate) async fn run_timers(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut wake = store.subscribe();
    while !*stopping.borrow() {
        wake.borrow_and_update();
        let now = clock.now();
        let next = match store.tick(now).await {
            Ok(tick) => tick.next_due,
            Err(e) => {
                tracing::warn!(message = "Timer tick failed; retrying.", error = %e);
                None
            }
        };
        let wait_ms = next.map_or(MAX_TIMER_SLEEP_MS, |t| {
            t.millis_since(clock.now()).clamp(0, MAX_TIMER_SLEEP_MS)
        });
        if wait_ms == 0 {
            // More is due at once (a backlog); yield so requests interleave with the catch-up.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            // Something changed (new work, or an earlier due time): recompute.
            _ = wake.changed() => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Leases, waiting up to `wait_ms` for work when none is available (`Store::wait_and_lease`).
/// Before it waits it gives back its in-flight budget slot: a waiting poll costs no work. Shutdown
/// ends the wait at once, with no jobs.
pub(crate) async fn lease_with_wait(
    store: &dyn Store,
    clock: &dyn Clock,
    req: LeaseRequest,
    wait_ms: i64,
    mut stopping: watch::Receiver<bool>,
    in_flight: Option<&InFlight>,
) -> Result<Vec<LeasedJob>, StoreError> {
    let jobs = store.lease(req.clone(), clock.now()).await?;
    if !jobs.is_empty() || wait_ms <= 0 || *stopping.borrow() {
        return Ok(jobs);
    }
    if let Some(slot) = in_flight {
        slot.release();
    }
    let now = || clock.now();
    let wait = Duration::from_millis(wait_ms as u64);
    tokio::select! {
        leased = store.wait_and_lease(req, &now, wait) => leased,
        // Dropping the wait gives it up: the store leases nothing more for it.
        _ = stopping.wait_for(|s| *s) => Ok(jobs),
    }
}
