//! Dispatch: the timer loop that drives `Store::tick`, and the long-poll loop of `/v1/lease`.
//!
//! Invariant: a long poll never misses work. It reads the store's wake counter before trying to
//! lease, and waits only for a change after that read, so a job enqueued between the attempt and
//! the wait still wakes it.

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

/// Leases, waiting up to `wait_ms` for work when none is available. Before its first wait it
/// gives back its in-flight budget slot: a waiting poll costs no work.
pub(crate) async fn lease_with_wait(
    store: &dyn Store,
    clock: &dyn Clock,
    req: LeaseRequest,
    wait_ms: i64,
    mut stopping: watch::Receiver<bool>,
    in_flight: Option<&InFlight>,
) -> Result<Vec<LeasedJob>, StoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.max(0) as u64);
    let mut wake = store.subscribe();
    loop {
        wake.borrow_and_update();
        let jobs = store.lease(req.clone(), clock.now()).await?;
        if !jobs.is_empty() || *stopping.borrow() {
            return Ok(jobs);
        }
        if let Some(slot) = in_flight {
            slot.release();
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(jobs),
            changed = wake.changed() => if changed.is_err() { return Ok(jobs) },
            _ = stopping.changed() => return Ok(jobs),
        }
    }
}
