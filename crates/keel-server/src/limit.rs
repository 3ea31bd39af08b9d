//! Back-pressure: the in-flight budget (load shedding) and per-token rate limits.
//!
//! Invariants:
//! - The job API never queues requests it cannot serve: a request that finds the budget full is
//!   answered `429 overloaded` at once, before authentication or any storage work.
//! - Health, readiness and the OpenAPI document have their own budget, so they answer while the
//!   job API sheds load.
//! - A long poll holds a budget slot while it works, not while it waits for jobs, so idle workers
//!   cannot starve producers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::problem::ApiError;

/// A bounded number of requests in flight.
#[derive(Clone)]
pub(crate) struct Budget(Arc<Semaphore>);

impl Budget {
    pub(crate) fn new(slots: usize) -> Budget {
        Budget(Arc::new(Semaphore::new(slots.max(1))))
    }
}

/// The slot a request holds; a long poll gives it back before it waits.
#[derive(Clone)]
pub(crate) struct InFlight(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl InFlight {
    pub(crate) fn release(&self) {
        if let Ok(mut slot) = self.0.lock() {
            slot.take();
        }
    }
}

/// Middleware: takes a slot or answers `429 overloaded` with `Retry-After` immediately.
pub(crate) async fn shed(State(budget): State<Budget>, mut req: Request, next: Next) -> Response {
    match take_slot(&budget, &mut req) {
        Ok(slot) => {
            let res = next.run(req).await;
            drop(slot);
            res
        }
        Err(overloaded) => overloaded.into_response(),
    }
}

/// Takes a slot for `req` (also put in its extensions, for a long poll to give back), or says
/// `429 overloaded`. The caller holds the returned slot until the answer is made: extensions are
/// dropped as soon as an extractor consumes the request (reading the body does), which would
/// give the slot back while the body is still arriving.
pub(crate) fn take_slot(budget: &Budget, req: &mut Request) -> Result<InFlight, ApiError> {
    match budget.0.clone().try_acquire_owned() {
        Ok(permit) => {
            let slot = InFlight(Arc::new(Mutex::new(Some(permit))));
            req.extensions_mut().insert(slot.clone());
            Ok(slot)
        }
        Err(_) => Err(ApiError::Overloaded),
    }
}

/// GCRA ("leaky bucket as a meter") per token: `per_second` sustained, up to `burst` at once.
/// Memory is one timestamp per token that has made a request.
pub(crate) struct RateLimiter {
    /// Nanoseconds between requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now a token's schedule may run: `interval * burst`.
    tolerance_ns: u64,
    base: Instant,
    /// Per token: the theoretical arrival time of its next request, in ns since `base`.
    tat: Mutex<HashMap<Uuid, u64>>,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32) -> RateLimiter {
        let interval_ns = 1_000_000_000 / u64::from(per_second.max(1));
        RateLimiter {
            interval_ns,
            tolerance_ns: interval_ns * u64::from(burst.max(1)),
            base: Instant::now(),
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok` to proceed, or `Err(ms)` to wait before the next request would pass.
    pub(crate) fn check(&self, key: Uuid) -> Result<(), u64> {
        let now = self.base.elapsed().as_nanos() as u64;
        self.check_at(key, now)
    }

    fn check_at(&self, key: Uuid, now_ns: u64) -> Result<(), u64> {
        let Ok(mut tat) = self.tat.lock() else {
            return Ok(());
        };
        let t = tat.entry(key).or_insert(now_ns);
        let next = (*t).max(now_ns) + self.interval_ns;
        if next > now_ns + self.tolerance_ns {
            let wait_ns = next - now_ns - self.tolerance_ns;
            return Err(wait_ns.div_ceil(1_000_000));
        }
        *t = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_sustained_rate() {
        let l = RateLimiter::new(10, 3);
        let k = Uuid::from_u128(1);
        for _ in 0..3 {
            assert_eq!(l.check_at(k, 0), Ok(()));
        }
        let wait = l.check_at(k, 0).unwrap_err();
        assert_eq!(wait, 100, "one interval at 10/s");
        assert!(l.check_at(k, 50_000_000).is_err());
        assert_eq!(l.check_at(k, 100_000_000), Ok(()));
        // Other tokens have their own budget.
        assert_eq!(l.check_at(Uuid::from_u128(2), 100_000_000), Ok(()));
        // After a long pause the full burst is back, not more.
        let later = 10_000_000_000;
        for _ in 0..3 {
            assert_eq!(l.check_at(k, later), Ok(()));
        }
        assert!(l.check_at(k, later).is_err());
    }
}
