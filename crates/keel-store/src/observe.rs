//! Metrics of committed job changes, the same for every backend.
//!
//! Invariant: a change is counted once, and only after the transaction that wrote it committed.
//! A backend notes each job change in a `Tally` while it writes (`Tally::note`, next to where it
//! saves the row and its events) and calls `Tally::emit` after its `COMMIT` succeeded; a call that
//! rolls back or is retried drops its tally instead. The counters are therefore the committed
//! events, not the attempts to write them.
//!
//! Metrics go through the `metrics` facade: without a recorder installed (a library user, most
//! tests) they cost a branch. Label values are bounded: at most `MAX_LABEL_VALUES` distinct queue
//! names and as many kinds are kept per process, later ones are reported as `_other`, so a
//! client inventing names cannot grow the metric set without bound. Job ids are never labels.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::{EventData, Job, Time};
use metrics::SharedString;

/// Distinct values kept per label (queue, kind) before the rest become `_other`.
pub const MAX_LABEL_VALUES: usize = 500;
const OTHER: &str = "_other";

/// Names of the metrics this module emits; the server registers their help text and buckets.
pub mod names {
    pub const ENQUEUED: &str = "keel_jobs_enqueued_total";
    pub const COMPLETED: &str = "keel_jobs_completed_total";
    pub const FAILED: &str = "keel_jobs_failed_total";
    pub const DEAD: &str = "keel_jobs_dead_total";
    pub const QUEUE_WAIT: &str = "keel_job_queue_wait_seconds";
    pub const RUN_TIME: &str = "keel_job_run_seconds";
    pub const COMMIT: &str = "keel_store_commit_seconds";
    pub const BATCH: &str = "keel_store_batch_size";
}

/// Interned, bounded label values.
struct Labels {
    queues: HashMap<String, SharedString>,
    kinds: HashMap<String, SharedString>,
}

static LABELS: Mutex<Option<Labels>> = Mutex::new(None);

fn bounded(map: &mut HashMap<String, SharedString>, value: &str) -> SharedString {
    if let Some(v) = map.get(value) {
        return v.clone();
    }
    if map.len() >= MAX_LABEL_VALUES {
        return SharedString::const_str(OTHER);
    }
    let shared = SharedString::from(Arc::<str>::from(value));
    map.insert(value.to_owned(), shared.clone());
    shared
}

/// The label values of a job's queue and kind.
fn labels(job: &Job) -> (SharedString, SharedString) {
    let mut guard = LABELS.lock().unwrap_or_else(|e| e.into_inner());
    let labels = guard.get_or_insert_with(|| Labels {
        queues: HashMap::new(),
        kinds: HashMap::new(),
    });
    (
        bounded(&mut labels.queues, &job.queue),
        bounded(&mut labels.kinds, &job.kind),
    )
}

#[derive(Clone, Copy)]
enum What {
    Enqueued,
    Completed,
    /// A failed attempt: reported, or its lease expired.
    Failed,
    Dead,
    /// Leased after waiting this long since it became due.
    Waited(Duration),
    /// An attempt ended (any outcome) after running this long.
    Ran(Duration),
}

struct Seen {
    queue: SharedString,
    kind: SharedString,
    what: What,
}

/// The changes of one transaction, waiting for its commit.
#[derive(Default)]
pub(crate) struct Tally {
    seen: Vec<Seen>,
    /// The labels of the last job noted: the next job is nearly always of the same queue and
    /// kind (a batch, a lease), and `labels` takes a process-wide lock and two hash lookups.
    last: Option<(SharedString, SharedString)>,
}

fn since(from: Time, to: Time) -> Duration {
    Duration::from_millis(to.as_millis().saturating_sub(from.as_millis()).max(0) as u64)
}

impl Tally {
    /// Notes one job change (`before` → `after` through `events`, at `now`).
    pub(crate) fn note(
        &mut self,
        before: Option<&Job>,
        after: Option<&Job>,
        events: &[EventData],
        now: Time,
    ) {
        let Some(job) = after.or(before) else {
            return;
        };
        for ev in events {
            let what = match ev {
                EventData::Enqueued { .. } => What::Enqueued,
                EventData::Leased { .. } => match before {
                    Some(b) => What::Waited(since(b.run_at, now)),
                    None => continue,
                },
                EventData::Completed { .. } => What::Completed,
                EventData::Failed { .. } | EventData::LeaseExpired { .. } => What::Failed,
                EventData::Dead { .. } => What::Dead,
                _ => continue,
            };
            let (queue, kind) = match &self.last {
                Some((q, k)) if **q == *job.queue && **k == *job.kind => (q.clone(), k.clone()),
                _ => self.last.insert(self::labels(job)).clone(),
            };
            if let (What::Completed | What::Failed, Some(lease)) =
                (what, before.and_then(|b| b.lease.as_ref()))
            {
                self.seen.push(Seen {
                    queue: queue.clone(),
                    kind: kind.clone(),
                    what: What::Ran(since(lease.leased_at, now)),
                });
            }
            self.seen.push(Seen { queue, kind, what });
        }
    }

    /// Forgets what was noted (the transaction rolled back).
    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }

    /// Reports what was noted; call after the commit succeeded. Counts of one (queue, kind)
    /// are summed first, so a batch of a thousand enqueues is one counter update, not a
    /// thousand registry lookups on the writer's thread.
    pub(crate) fn emit(&mut self) {
        let mut sums: Vec<(&'static str, SharedString, SharedString, u64)> = Vec::new();
        for s in self.seen.drain(..) {
            let (q, k) = (s.queue, s.kind);
            let name = match s.what {
                What::Enqueued => names::ENQUEUED,
                What::Completed => names::COMPLETED,
                What::Failed => names::FAILED,
                What::Dead => names::DEAD,
                What::Waited(d) => {
                    metrics::histogram!(names::QUEUE_WAIT, "queue" => q).record(d);
                    continue;
                }
                What::Ran(d) => {
                    metrics::histogram!(names::RUN_TIME, "queue" => q, "kind" => k).record(d);
                    continue;
                }
            };
            match sums
                .iter_mut()
                .find(|(n, sq, sk, _)| *n == name && *sq == q && *sk == k)
            {
                Some(sum) => sum.3 += 1,
                None => sums.push((name, q, k, 1)),
            }
        }
        if sums.is_empty() {
            return;
        }
        let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let totals = totals.get_or_insert_with(HashMap::new);
        for (name, q, k, n) in sums {
            let slot = match name {
                names::ENQUEUED => 0,
                names::COMPLETED => 1,
                names::FAILED => 2,
                _ => 3,
            };
            let entry = totals.entry(q.clone()).or_default();
            entry[slot] += n;
            metrics::counter!(name, "queue" => q, "kind" => k).increment(n);
        }
    }
}

/// Jobs enqueued, completed, failed (attempts) and dead in one queue since this process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub enqueued: u64,
    pub completed: u64,
    pub failed: u64,
    pub dead: u64,
}

/// The committed counts per queue label (bounded as the metrics are), by slot
/// `[enqueued, completed, failed, dead]`.
static TOTALS: Mutex<Option<HashMap<SharedString, [u64; 4]>>> = Mutex::new(None);

/// What this process has counted per queue so far: the same committed facts as the
/// `keel_jobs_*_total` counters, summed over kinds (the admin UI's rates come from these).
pub fn totals() -> Vec<(String, Totals)> {
    let guard = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .iter()
        .flatten()
        .map(|(q, [e, c, f, d])| {
            let t = Totals {
                enqueued: *e,
                completed: *c,
                failed: *f,
                dead: *d,
            };
            (q.to_string(), t)
        })
        .collect()
}

/// Reports one write transaction of `backend`: how many calls it carried and how long its
/// commit took.
pub(crate) fn commit(backend: &'static str, calls: usize, took: Duration) {
    metrics::histogram!(names::COMMIT, "backend" => backend).record(took);
    metrics::histogram!(names::BATCH, "backend" => backend).record(calls as f64);
}
