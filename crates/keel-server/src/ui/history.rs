//! Recent throughput per queue for the overview's charts: every `EVERY` the sampler reads what
//! this process has committed per queue (`keel_store::observe::totals`, the same facts as the
//! `keel_jobs_*_total` counters) and keeps the last `KEEP` readings. Rates are differences of
//! neighbouring readings, so they are this node's (as `keel status` says of its rates too).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use keel_store::observe::{Totals, totals};

/// How often a reading is taken.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// Readings kept: ten minutes.
const KEEP: usize = 121;

#[derive(Default)]
pub(crate) struct History {
    readings: Mutex<VecDeque<HashMap<String, Totals>>>,
}

/// Per interval, jobs completed and attempts failed per second.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub(crate) struct Rate {
    pub(crate) completed: f64,
    pub(crate) failed: f64,
}

impl History {
    pub(crate) fn record(&self, reading: HashMap<String, Totals>) {
        let mut r = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(reading);
    }

    /// The rates of `queue` over the readings kept, oldest first (empty before two readings).
    pub(crate) fn rates(&self, queue: &str) -> Vec<Rate> {
        let r = self.readings.lock().unwrap_or_else(|e| e.into_inner());
        let secs = EVERY.as_secs_f64();
        let of = |m: &HashMap<String, Totals>| m.get(queue).copied().unwrap_or_default();
        r.iter()
            .zip(r.iter().skip(1))
            .map(|(a, b)| {
                let (a, b) = (of(a), of(b));
                Rate {
                    completed: b.completed.saturating_sub(a.completed) as f64 / secs,
                    failed: b.failed.saturating_sub(a.failed) as f64 / secs,
                }
            })
            .collect()
    }

    /// Takes a reading every `EVERY` until aborted.
    pub(crate) async fn sample(&self) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            self.record(totals().into_iter().collect());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(completed: u64, failed: u64) -> HashMap<String, Totals> {
        let t = Totals {
            completed,
            failed,
            ..Totals::default()
        };
        HashMap::from([("q".to_owned(), t)])
    }

    #[test]
    fn rates_are_per_second_differences_and_the_window_is_bounded() {
        let h = History::default();
        assert!(h.rates("q").is_empty());
        h.record(reading(0, 0));
        h.record(reading(50, 5));
        h.record(reading(50, 5));
        let secs = EVERY.as_secs_f64();
        assert_eq!(
            h.rates("q"),
            vec![
                Rate {
                    completed: 50.0 / secs,
                    failed: 5.0 / secs
                },
                Rate {
                    completed: 0.0,
                    failed: 0.0
                }
            ]
        );
        assert_eq!(h.rates("other").len(), 2, "an unknown queue reads as idle");
        for i in 0..300 {
            h.record(reading(i, 0));
        }
        assert_eq!(h.rates("q").len(), KEEP - 1);
    }
}
