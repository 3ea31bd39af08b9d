//! Queue configuration: the overrides an operator set, and the effective values a job gets.
//!
//! Invariant: a queue's effective config is always complete; a field the operator did not set
//! falls back to the server's defaults, so changing defaults changes every queue not overriding it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::time::Time;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub completed_ms: i64,
    pub dead_ms: i64,
}

/// A push queue's HTTP target: keel POSTs each job's payload to `url` (API.md "Push delivery").
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub url: String,
    /// Extra request headers (never keel's own `Keel-*`, `Idempotency-Key` or `webhook-*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Whole-request time limit; the connect limit is the smaller of this and 5 s.
    #[serde(default = "default_target_timeout_ms")]
    pub timeout_ms: i64,
    /// A Standard Webhooks secret (`whsec_` + base64). Stored as given; every read and every
    /// audit entry shows [`REDACTED`] instead (see [`Target::redacted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
    #[serde(default)]
    pub breaker: BreakerConfig,
}

/// What reads show in place of a secret.
pub const REDACTED: &str = "***";

pub fn default_target_timeout_ms() -> i64 {
    30_000
}

impl Target {
    /// This target as reads and the audit log show it: the signing secret masked.
    pub fn redacted(&self) -> Target {
        Target {
            signing_secret: self.signing_secret.as_ref().map(|_| REDACTED.to_owned()),
            ..self.clone()
        }
    }
}

/// The circuit breaker of a target's origin.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed deliveries that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before one probe; doubles on each re-open up to 600,000.
    pub open_ms: i64,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 5,
            open_ms: 30_000,
        }
    }
}

/// A queue's hand-out rate: a token bucket of `burst` tokens refilled at `per_second`. A lease
/// or a push takes one token per job; an empty bucket hands out nothing.
#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// The bucket of one queue, kept in memory by the store (a restart starts it full).
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct TokenBucket {
    tokens: f64,
    at: Time,
}

impl TokenBucket {
    pub fn full(limit: &RateLimit, now: Time) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(limit.burst.max(1)),
            at: now,
        }
    }

    /// A bucket as a store persisted it (`tokens` counted at `at`).
    pub fn from_parts(tokens: f64, at: Time) -> TokenBucket {
        TokenBucket { tokens, at }
    }

    /// What a store persists: the tokens and when they were counted.
    pub fn parts(&self) -> (f64, Time) {
        (self.tokens, self.at)
    }

    fn refill(&mut self, limit: &RateLimit, now: Time) {
        let elapsed = now.millis_since(self.at).max(0) as f64 / 1_000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst.max(1)));
        self.at = self.at.max(now);
    }

    /// Takes up to `want` whole tokens; returns how many it took.
    pub fn take(&mut self, limit: &RateLimit, want: usize, now: Time) -> usize {
        self.refill(limit, now);
        let n = (self.tokens.floor() as usize).min(want);
        self.tokens -= n as f64;
        n
    }

    /// When the next whole token will be there (now if one is).
    pub fn next_token_at(&self, limit: &RateLimit) -> Time {
        if self.tokens >= 1.0 || limit.per_second <= 0.0 {
            return self.at;
        }
        let ms = ((1.0 - self.tokens) / limit.per_second * 1_000.0).ceil() as i64;
        self.at.plus_ms(ms.max(1))
    }
}

/// What an operator set on a queue; `None` means "use the server default".
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Push mode: keel delivers this queue's jobs to the target itself. No server default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

impl QueueOverrides {
    /// These overrides as the audit log records them (secrets masked).
    pub fn redacted(&self) -> QueueOverrides {
        QueueOverrides {
            target: self.target.as_ref().map(Target::redacted),
            ..self.clone()
        }
    }
}

/// The effective configuration of a queue.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueConfig {
    /// Most jobs of this queue running at once, across all workers; `None` is unlimited.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub concurrency: Option<u32>,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    pub backoff: Backoff,
    pub retention: Retention,
    /// `None`: pull mode (workers lease the jobs).
    #[cfg_attr(feature = "openapi", schema(required))]
    pub target: Option<Target>,
    /// `None`: no rate limit.
    #[cfg_attr(feature = "openapi", schema(required))]
    pub rate_limit: Option<RateLimit>,
}

impl Default for QueueConfig {
    /// The server-wide defaults.
    fn default() -> QueueConfig {
        QueueConfig {
            concurrency: None,
            max_attempts: 20,
            timeout_ms: 30_000,
            backoff: Backoff::default(),
            retention: Retention {
                completed_ms: 24 * 3_600_000,
                dead_ms: 7 * 24 * 3_600_000,
            },
            target: None,
            rate_limit: None,
        }
    }
}

impl QueueConfig {
    pub fn with_overrides(defaults: &QueueConfig, o: &QueueOverrides) -> QueueConfig {
        QueueConfig {
            concurrency: o.concurrency.or(defaults.concurrency),
            max_attempts: o.max_attempts.unwrap_or(defaults.max_attempts),
            timeout_ms: o.timeout_ms.unwrap_or(defaults.timeout_ms),
            backoff: o.backoff.unwrap_or(defaults.backoff),
            retention: o.retention.unwrap_or(defaults.retention),
            target: o.target.clone(),
            rate_limit: o.rate_limit,
        }
    }

    /// This config as reads show it (secrets masked).
    pub fn redacted(&self) -> QueueConfig {
        QueueConfig {
            target: self.target.as_ref().map(Target::redacted),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_hands_out_its_burst_then_the_rate() {
        let limit = RateLimit {
            per_second: 2.0,
            burst: 3,
        };
        let t0 = Time::from_millis(1_000_000);
        let mut b = TokenBucket::full(&limit, t0);
        assert_eq!(b.take(&limit, 10, t0), 3);
        assert_eq!(b.take(&limit, 10, t0), 0);
        assert_eq!(b.next_token_at(&limit), t0.plus_ms(500));
        assert_eq!(b.take(&limit, 10, t0.plus_ms(499)), 0);
        assert_eq!(b.take(&limit, 10, t0.plus_ms(500)), 1);
        // Idle time refills up to the burst, never beyond.
        assert_eq!(b.take(&limit, 10, t0.plus_ms(60_000)), 3);
        // A clock that goes back takes nothing it has not earned.
        assert_eq!(b.take(&limit, 10, t0), 0);
    }
}
