//! The circuit breaker of one push-target origin (`scheme://host:port`), as API.md states it:
//! closed until `failure_threshold` consecutive failed deliveries; then open for `open_ms`, during
//! which the origin's jobs are not attempted (and so not charged an attempt); then half-open,
//! when exactly one probe may go; a successful probe closes it, a failed one re-opens it with
//! the open time doubled (at most [`MAX_OPEN_MS`]).
//!
//! Pure: the caller passes `now` and reports each delivery's result.

use serde::Serialize;

use crate::queue::BreakerConfig;
use crate::time::Time;

pub const MAX_OPEN_MS: i64 = 600_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Breaker {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub opened_at: Option<Time>,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub next_probe_at: Option<Time>,
    /// The open time of the current (or next) opening.
    #[serde(skip)]
    open_ms: i64,
    #[serde(skip)]
    probe_in_flight: bool,
}

/// What a delivery result did to the breaker, for logging.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BreakerChange {
    Opened { open_ms: i64 },
    Closed,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            next_probe_at: None,
            open_ms: 0,
            probe_in_flight: false,
        }
    }
}

impl Breaker {
    /// How many deliveries may start now (`wanted` at most). Open and due for a probe: turns
    /// half-open and allows exactly one.
    pub fn admit(&mut self, wanted: usize, now: Time) -> usize {
        match self.state {
            BreakerState::Closed => wanted,
            BreakerState::Open => match self.next_probe_at {
                Some(at) if at <= now && wanted > 0 => {
                    self.state = BreakerState::HalfOpen;
                    self.probe_in_flight = true;
                    1
                }
                _ => 0,
            },
            BreakerState::HalfOpen => {
                if self.probe_in_flight || wanted == 0 {
                    0
                } else {
                    self.probe_in_flight = true;
                    1
                }
            }
        }
    }

    /// When an open breaker next admits a probe.
    pub fn wakes_at(&self) -> Option<Time> {
        (self.state == BreakerState::Open)
            .then_some(self.next_probe_at)
            .flatten()
    }

    /// Records one delivery's result. `healthy`: the origin answered in a way that shows it is
    /// up (2xx, or a non-retryable status such as 404); otherwise a failure (5xx, 408, 425, 429,
    /// time-out, connection error).
    pub fn record(
        &mut self,
        healthy: bool,
        cfg: &BreakerConfig,
        now: Time,
    ) -> Option<BreakerChange> {
        if healthy {
            self.consecutive_failures = 0;
            if self.state == BreakerState::Closed {
                return None;
            }
            *self = Breaker::default();
            return Some(BreakerChange::Closed);
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let open_ms = match self.state {
            // A failed probe: open again for twice as long.
            BreakerState::HalfOpen => (self.open_ms.max(cfg.open_ms) * 2).min(MAX_OPEN_MS),
            // Deliveries that started before the breaker opened may still fail; they change
            // nothing more.
            BreakerState::Open => return None,
            BreakerState::Closed if self.consecutive_failures >= cfg.failure_threshold.max(1) => {
                cfg.open_ms.min(MAX_OPEN_MS)
            }
            BreakerState::Closed => return None,
        };
        self.state = BreakerState::Open;
        self.open_ms = open_ms;
        self.opened_at = Some(now);
        self.next_probe_at = Some(now.plus_ms(open_ms));
        self.probe_in_flight = false;
        Some(BreakerChange::Opened { open_ms })
    }

    /// A delivery admitted as a probe ended without a result the breaker can judge (the server
    /// is shutting down): let another probe go.
    pub fn probe_abandoned(&mut self) {
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Time = Time::from_millis_const(1_000_000);

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_ms: 1_000,
        }
    }

    #[test]
    fn opens_after_the_threshold_then_probes_once_and_doubles_on_failure() {
        let mut b = Breaker::default();
        assert_eq!(b.admit(10, T), 10);
        assert_eq!(b.record(false, &cfg(), T), None);
        assert_eq!(b.record(false, &cfg(), T), None);
        assert_eq!(
            b.record(false, &cfg(), T),
            Some(BreakerChange::Opened { open_ms: 1_000 })
        );
        assert_eq!(b.state, BreakerState::Open);
        assert_eq!(b.admit(10, T.plus_ms(999)), 0, "open: nothing goes");
        assert_eq!(b.wakes_at(), Some(T.plus_ms(1_000)));
        assert_eq!(b.admit(10, T.plus_ms(1_000)), 1, "one probe");
        assert_eq!(b.state, BreakerState::HalfOpen);
        assert_eq!(b.admit(10, T.plus_ms(1_001)), 0, "only one probe at a time");
        let at = T.plus_ms(1_100);
        assert_eq!(
            b.record(false, &cfg(), at),
            Some(BreakerChange::Opened { open_ms: 2_000 })
        );
        assert_eq!(b.next_probe_at, Some(at.plus_ms(2_000)));
        assert_eq!(b.admit(1, at.plus_ms(2_000)), 1);
        assert_eq!(
            b.record(true, &cfg(), at.plus_ms(2_050)),
            Some(BreakerChange::Closed)
        );
        assert_eq!(b.state, BreakerState::Closed);
        assert_eq!((b.consecutive_failures, b.opened_at), (0, None));
        assert_eq!(b.admit(7, at.plus_ms(2_051)), 7);
    }

    #[test]
    fn a_success_resets_the_count_and_the_open_time_is_capped() {
        let mut b = Breaker::default();
        b.record(false, &cfg(), T);
        b.record(false, &cfg(), T);
        b.record(true, &cfg(), T);
        assert_eq!(b.record(false, &cfg(), T), None, "count restarted");
        let big = BreakerConfig {
            failure_threshold: 1,
            open_ms: 500_000,
        };
        let mut b = Breaker::default();
        b.record(false, &big, T);
        b.admit(1, T.plus_ms(500_000));
        assert_eq!(
            b.record(false, &big, T.plus_ms(500_001)),
            Some(BreakerChange::Opened {
                open_ms: MAX_OPEN_MS
            })
        );
        // Late failures of deliveries admitted before it opened change nothing.
        assert_eq!(b.record(false, &big, T.plus_ms(500_002)), None);
    }
}
