//! Retry backoff: how long a failed job waits before its next attempt.
//!
//! After failed attempt N the delay is `d' = min(max_ms, initial_ms × 2^(N−1))` and the chosen
//! delay lies in `[d' × (1 − jitter), d']`. The random sample is a parameter, so this is pure.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial_ms: 1_000,
            max_ms: 3_600_000,
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (1-based). `sample` is uniform in `[0, 1)`.
    pub fn delay_ms(&self, attempt: u32, sample: f64) -> i64 {
        let exp = attempt.saturating_sub(1).min(62);
        let ceiling = self
            .initial_ms
            .saturating_mul(1_i64 << exp)
            .min(self.max_ms)
            .max(0);
        let sample = if sample.is_finite() {
            sample.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jitter = self.jitter.clamp(0.0, 1.0);
        // Subtract a fraction of the ceiling, so the result never exceeds it and never drops
        // below `ceiling × (1 − jitter)`.
        let cut = (ceiling as f64 * jitter * sample).floor() as i64;
        (ceiling - cut).clamp(0, ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_initial_and_caps_at_max() {
        let b = Backoff {
            initial_ms: 1_000,
            max_ms: 10_000,
            jitter: 0.0,
        };
        let got: Vec<i64> = (1..=6).map(|n| b.delay_ms(n, 0.7)).collect();
        assert_eq!(got, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(b.delay_ms(u32::MAX, 0.0), 3_600_000);
    }

    proptest! {
        #[test]
        fn delay_lies_in_the_jitter_window(
            initial in 0i64..10_000_000, max in 0i64..100_000_000, jitter in 0.0f64..=1.0,
            attempt in 1u32..200, sample in 0.0f64..1.0,
        ) {
            let b = Backoff { initial_ms: initial, max_ms: max, jitter };
            let ceiling = (initial as i128 * (1i128 << (attempt - 1).min(62))).min(max as i128) as f64;
            let d = b.delay_ms(attempt, sample) as f64;
            prop_assert!(d <= ceiling);
            prop_assert!(d >= (ceiling * (1.0 - jitter)).floor() - 1.0);
        }
    }
}
