//! Decisions both backends make the same way, kept out of their SQL so the two cannot drift:
//! how an enqueue batch meets idempotency keys, how ids are made, how an outcome becomes a
//! state-machine command, and how a schedule's firing is recorded and audited.

use std::collections::HashMap;

use keel_core::{Command, Failure, Job, NewJob, ScheduleSpec, State, Time, schedule::Firing};
use uuid::Uuid;

use crate::StoreError;
use crate::types::{Enqueued, OutcomeKind, ReplayFilter, RunOutcome, ScheduleRun};

/// What an enqueue does with one item, decided for the whole batch before anything is written,
/// so a conflict anywhere writes nothing.
pub(crate) enum Plan {
    /// A new job; with the request's fingerprint when it carries an idempotency key.
    Create(Option<String>),
    /// The key is live for an identical request: answer with that job. If the job is gone
    /// (purged, or past a retention shorter than the key's life), the key is free again and the
    /// item is created with `fingerprint`.
    Replay { id: Uuid, fingerprint: String },
    /// Same key and request as an earlier item of this batch.
    SameAs(usize),
}

/// What a planned item comes to once the store has looked up a replay's original job.
pub(crate) enum Resolved {
    /// Answer with an existing job (an earlier item of the batch, or the key's original).
    Answer(Box<Enqueued>),
    /// Create a new job; `stale_key`: the key's row names a job that is gone and must be
    /// replaced.
    Create {
        fingerprint: Option<String>,
        stale_key: bool,
    },
}

impl Plan {
    /// The job whose existence decides this item (a replay's original), for the store to load.
    pub(crate) fn original(&self) -> Option<Uuid> {
        match self {
            Plan::Replay { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Resolves the item given the batch's answers so far and the loaded `original`.
    pub(crate) fn resolve(self, earlier: &[Enqueued], original: Option<&Job>) -> Resolved {
        match self {
            Plan::SameAs(i) => Resolved::Answer(Box::new(Enqueued {
                job: earlier[i].job.clone(),
                replayed: true,
            })),
            Plan::Replay { fingerprint, .. } => match original {
                Some(job) => Resolved::Answer(Box::new(Enqueued {
                    job: job.clone(),
                    replayed: true,
                })),
                None => Resolved::Create {
                    fingerprint: Some(fingerprint),
                    stale_key: true,
                },
            },
            Plan::Create(fingerprint) => Resolved::Create {
                fingerprint,
                stale_key: false,
            },
        }
    }
}

/// The live keys a batch names, as `(queue, key) → (job id, fingerprint)`.
pub(crate) type LiveKeys = HashMap<(String, String), (Uuid, String)>;

/// The `(queue, key)` pairs of a batch's keyed items, for the store to look up.
pub(crate) fn keys_of(jobs: &[NewJob]) -> impl Iterator<Item = (&str, &str)> {
    jobs.iter()
        .filter_map(|j| Some((j.queue.as_str(), j.idempotency_key.as_deref()?)))
}

/// Plans a batch against the live keys the store found.
pub(crate) fn plan_enqueue(jobs: &[NewJob], live: &LiveKeys) -> Result<Vec<Plan>, StoreError> {
    let mut plans = Vec::with_capacity(jobs.len());
    let mut seen: HashMap<(&str, &str), (usize, String)> = HashMap::new();
    for (i, new) in jobs.iter().enumerate() {
        let Some(key) = new.idempotency_key.as_deref() else {
            plans.push(Plan::Create(None));
            continue;
        };
        let fingerprint = new.fingerprint();
        let conflict = || StoreError::IdempotencyConflict {
            index: i,
            queue: new.queue.clone(),
            key: key.to_owned(),
        };
        if let Some((first, fp)) = seen.get(&(new.queue.as_str(), key)) {
            if *fp != fingerprint {
                return Err(conflict());
            }
            plans.push(Plan::SameAs(*first));
            continue;
        }
        seen.insert((new.queue.as_str(), key), (i, fingerprint.clone()));
        match live.get(&(new.queue.clone(), key.to_owned())) {
            Some((_, fp)) if *fp != fingerprint => return Err(conflict()),
            Some((id, _)) => plans.push(Plan::Replay {
                id: *id,
                fingerprint,
            }),
            None => plans.push(Plan::Create(Some(fingerprint))),
        }
    }
    Ok(plans)
}

impl OutcomeKind {
    /// The state-machine command for this outcome; `jitter` is a uniform sample in `[0, 1)`
    /// for a retry's backoff.
    pub(crate) fn into_command(self, token: String, jitter: f64) -> Command {
        match self {
            OutcomeKind::Completed { result } => Command::Complete { token, result },
            OutcomeKind::Released => Command::Release { token },
            OutcomeKind::Failed {
                message,
                kind,
                retryable,
                retry_in_ms,
            } => Command::Fail(Failure {
                token,
                message,
                kind,
                retryable,
                retry_in_ms,
                jitter,
            }),
        }
    }
}

/// Job ids and jitter samples.
///
/// Ids are UUIDv7 that sort after every id this generator made before: the 48-bit millisecond
/// never goes back, and within one millisecond the 12-bit `rand_a` field counts up (when it runs
/// out, the millisecond moves on by one). The remaining 62 bits are random. A store seeds it
/// with the newest id it holds (`continue_after`), so ids stay ordered across restarts.
pub(crate) struct Ids {
    rng: SplitMix64,
    last_ms: i64,
    /// The `rand_a` counter of the last id within `last_ms`.
    seq: u16,
}

impl Ids {
    pub(crate) fn new() -> Ids {
        Ids {
            rng: SplitMix64(Uuid::new_v4().as_u128() as u64),
            last_ms: 0,
            seq: 0,
        }
    }

    /// Continues after `newest` (an id already stored) if it is ahead of this generator.
    pub(crate) fn continue_after(&mut self, newest: Uuid) {
        let bytes = newest.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&bytes[..6]);
        let newest_ms = u64::from_be_bytes(ms) as i64;
        if newest_ms >= self.last_ms {
            self.last_ms = newest_ms;
            self.seq = u16::from_be_bytes([bytes[6], bytes[7]]) & 0x0FFF;
        }
    }

    pub(crate) fn next(&mut self, now: Time) -> Uuid {
        let ms = now.as_millis();
        if ms > self.last_ms {
            self.last_ms = ms;
            self.seq = 0;
        } else if self.seq >= 0x0FFF {
            self.last_ms += 1;
            self.seq = 0;
        } else {
            self.seq += 1;
        }
        let rand_b = self.rng.next_u64();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&(self.last_ms as u64).to_be_bytes()[2..]);
        bytes[6..8].copy_from_slice(&(0x7000 | self.seq).to_be_bytes());
        bytes[8..].copy_from_slice(&rand_b.to_be_bytes());
        bytes[8] = (bytes[8] & 0x3F) | 0x80; // RFC 9562 variant
        Uuid::from_bytes(bytes)
    }

    /// Uniform in `[0, 1)`, for backoff jitter; not for secrets (lease tokens come from the OS).
    pub(crate) fn jitter(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A small, fast generator.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Jobs per transaction of a replay or purge, so one large operation never holds a writer (or
/// row locks) for long.
pub(crate) const BULK_CHUNK: usize = 1_000;

/// Runs `chunk(n)` (which moves up to `n` jobs, one transaction, and returns how many it moved)
/// until `limit` jobs are moved or a chunk comes back short; returns the total.
pub(crate) async fn in_chunks<F, Fut>(limit: usize, mut chunk: F) -> Result<u64, StoreError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0u64;
    let mut left = limit;
    while left > 0 {
        let want = left.min(BULK_CHUNK);
        let n = chunk(want).await?;
        total += n;
        left -= want;
        if (n as usize) < want {
            break;
        }
    }
    Ok(total)
}

/// Jobs given to `Store::import` keep the state machine's rule that `finished_at` is set exactly
/// when the state is final: both stores find finished jobs by it (SQLite's indexes by state,
/// `sqlite/rows.rs`). Only a hand-edited export can break it.
pub(crate) fn check_importable(jobs: &[Job]) -> Result<(), StoreError> {
    match jobs
        .iter()
        .find(|j| j.state.is_final() != j.finished_at.is_some())
    {
        Some(job) => Err(StoreError::Conflict(format!(
            "job {}: finished_at must be set exactly when the state is final ({})",
            job.id, job.state
        ))),
        None => Ok(()),
    }
}

/// The audit data of a replay of `filter` that moved `replayed` jobs.
pub(crate) fn replay_audit(filter: &ReplayFilter, replayed: u64) -> serde_json::Value {
    serde_json::json!({"state": filter.state, "kind": filter.kind, "limit": filter.limit, "replayed": replayed})
}

/// The audit data of a purge of `state` that deleted `purged` jobs.
pub(crate) fn purge_audit(state: State, purged: u64) -> serde_json::Value {
    serde_json::json!({"state": state, "purged": purged})
}

/// The run record of ticks a firing skipped under its catch-up rule, if any.
pub(crate) fn skipped_run(schedule: &str, firing: &Firing, now: Time) -> Option<ScheduleRun> {
    let (from, until) = firing.skipped?;
    tracing::warn!(message = "Schedule skipped missed ticks.", schedule = %schedule, from = %from, until = %until);
    Some(ScheduleRun {
        tick_at: from,
        fired_at: now,
        outcome: RunOutcome::Skipped,
        job_id: None,
        skipped_until: Some(until),
    })
}

/// The run record of one fired tick from what enqueueing its job answered. A taken key means
/// the tick fired before (from this template or an earlier version of it): a duplicate, still
/// exactly once. Any other error is the firing's.
pub(crate) fn tick_run(
    schedule: &str,
    tick: Time,
    now: Time,
    enqueued: Result<Vec<Enqueued>, StoreError>,
) -> Result<ScheduleRun, StoreError> {
    let (outcome, job_id) = match enqueued {
        Ok(mut done) => match done.pop() {
            Some(e) if e.replayed => (RunOutcome::Duplicate, Some(e.job.id)),
            Some(e) => (RunOutcome::Enqueued, Some(e.job.id)),
            None => (RunOutcome::Duplicate, None),
        },
        Err(StoreError::IdempotencyConflict { .. }) => (RunOutcome::Duplicate, None),
        Err(e) => return Err(e),
    };
    tracing::info!(message = "Schedule fired.", schedule = %schedule, tick = %tick, outcome = outcome.as_str(), job_id = ?job_id);
    Ok(ScheduleRun {
        tick_at: tick,
        fired_at: now,
        outcome,
        job_id,
        skipped_until: None,
    })
}

/// The audit action and data of a schedule's creation or replacement: its clock and target,
/// never the payload.
pub(crate) fn put(
    spec: &ScheduleSpec,
    created: bool,
    paused: bool,
) -> (&'static str, serde_json::Value) {
    let action = if created {
        "schedule.created"
    } else {
        "schedule.updated"
    };
    let data = serde_json::json!({
        "cadence": spec.cadence,
        "catch_up": spec.catch_up,
        "queue": spec.job.queue,
        "kind": spec.job.kind,
        "paused": paused,
    });
    (action, data)
}

pub(crate) fn pause_action(paused: bool) -> &'static str {
    if paused {
        "schedule.paused"
    } else {
        "schedule.resumed"
    }
}
