//! Request and response shapes of the API, as a Rust program sees them.

use std::time::Duration;

use keel_core::{Backoff, Job, QueueConfig, State, Time};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::Error;

/// `POST /v1/jobs` (and one item of a batch). Build with [`EnqueueRequest::new`]; it also
/// reads from JSON with the API's field names (empty `queue`/`kind` when absent).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    #[serde(default)]
    pub queue: String,
    #[serde(default)]
    pub kind: String,
    pub payload: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl EnqueueRequest {
    pub fn new(
        queue: impl Into<String>,
        kind: impl Into<String>,
        payload: Value,
    ) -> EnqueueRequest {
        EnqueueRequest {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            priority: None,
            run_at: None,
            delay_ms: None,
            max_attempts: None,
            timeout_ms: None,
            backoff: None,
            idempotency_key: None,
            tags: vec![],
        }
    }

    /// A request whose payload is any serialisable value.
    pub fn with_payload<T: Serialize>(
        queue: impl Into<String>,
        kind: impl Into<String>,
        payload: &T,
    ) -> Result<EnqueueRequest, Error> {
        let payload =
            serde_json::to_value(payload).map_err(|e| Error::Invalid(format!("payload: {e}")))?;
        Ok(EnqueueRequest::new(queue, kind, payload))
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn run_at(mut self, at: Time) -> Self {
        self.run_at = Some(at);
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay_ms = Some(delay.as_millis() as u64);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis() as u64);
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Without one, the client generates a key, so retries never create a second job.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// The answer to an enqueue.
#[derive(Clone, Debug)]
pub struct Enqueued {
    pub job: Job,
    /// The key had been used for an identical request; `job` is the original.
    pub replayed: bool,
}

/// Filters of `GET /v1/jobs`.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<State>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    /// Page size, 1–500 (server default 50).
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}

/// One event of a job's history.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Event {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub at: Time,
    #[serde(default)]
    pub data: Value,
}

/// `POST /v1/lease`.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseRequest {
    pub queues: Vec<String>,
    pub max_jobs: u32,
    pub wait_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LeaseInfo {
    pub token: String,
    pub expires_at: Time,
}

/// A job handed to this worker, with its fencing token.
#[derive(Clone, Debug)]
pub struct LeasedJob {
    pub job: Job,
    pub lease: LeaseInfo,
}

impl<'de> Deserialize<'de> for LeasedJob {
    /// The wire form is the job's fields plus `lease`. `#[serde(flatten)]` cannot carry the
    /// payload's raw JSON, so each field is kept as raw text and the job decoded from that:
    /// the payload reaches the handler byte for byte as the server sent it.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LeasedJob, D::Error> {
        use serde::de::Error as _;
        use serde_json::value::RawValue;
        let mut fields = std::collections::BTreeMap::<String, Box<RawValue>>::deserialize(d)?;
        let lease = fields
            .remove("lease")
            .ok_or_else(|| D::Error::missing_field("lease"))?;
        let lease: LeaseInfo = serde_json::from_str(lease.get()).map_err(D::Error::custom)?;
        let text = serde_json::to_string(&fields).map_err(D::Error::custom)?;
        let job = serde_json::from_str(&text).map_err(D::Error::custom)?;
        Ok(LeasedJob { job, lease })
    }
}

/// A failure report for `fail` and `ack`.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub message: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub retryable: bool,
}

/// One item of `POST /v1/ack`.
#[derive(Clone, Debug, Serialize)]
pub struct AckItem {
    pub id: Uuid,
    pub lease_token: String,
    pub outcome: AckOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Completed,
    Failed,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AckResult {
    pub id: Uuid,
    pub status: u16,
    pub job: Option<Job>,
    #[serde(default)]
    pub error: Option<Value>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub scheduled: u64,
    pub available: u64,
    pub running: u64,
    pub completed: u64,
    pub dead: u64,
    pub cancelled: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub paused: bool,
    pub config: QueueConfig,
    pub counts: Counts,
    pub oldest_available_age_ms: Option<i64>,
}

/// `PUT /v1/queues/{name}`: `Some(Some(v))` sets, `Some(None)` resets to the server default,
/// `None` leaves a setting alone.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueuePatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Option<Backoff>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Option<keel_core::Retention>>,
    /// A token bucket on hand-outs (leases and pushes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Option<keel_core::RateLimit>>,
    /// Push mode: keel delivers the queue's jobs to this target (`Some(None)`: back to pull).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Option<keel_core::Target>>,
}

/// A kind's payload schema.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SchemaInfo {
    pub kind: String,
    pub schema: Value,
    /// 1 when first set, then one more per replacement.
    pub version: i64,
    pub updated_at: Time,
}

/// `PUT /v1/schedules/{name}`: a job template enqueued on a cron pattern in a time zone, or
/// every `every_ms`. The job must not set `run_at`, `delay_ms` or `idempotency_key`: each tick's
/// job runs at its tick and is keyed `schedule:<name>:<tick>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// IANA zone of `cron` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    /// `none`, `one` (the default) or `all`: what happens to ticks missed while down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<String>,
    /// Create or leave it paused (`None`: as it was; a new one runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    pub job: EnqueueRequest,
}

impl ScheduleRequest {
    pub fn cron(expr: impl Into<String>, timezone: impl Into<String>, job: EnqueueRequest) -> Self {
        ScheduleRequest {
            cron: Some(expr.into()),
            timezone: Some(timezone.into()),
            every_ms: None,
            catch_up: None,
            paused: None,
            job,
        }
    }

    pub fn every(every: Duration, job: EnqueueRequest) -> Self {
        ScheduleRequest {
            cron: None,
            timezone: None,
            every_ms: Some(every.as_millis() as u64),
            catch_up: None,
            paused: None,
            job,
        }
    }

    pub fn catch_up(mut self, mode: impl Into<String>) -> Self {
        self.catch_up = Some(mode.into());
        self
    }

    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = Some(paused);
        self
    }
}

/// A schedule as the server shows it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ScheduleInfo {
    pub name: String,
    #[serde(default)]
    pub cron: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub every_ms: Option<u64>,
    pub catch_up: String,
    pub paused: bool,
    pub job: EnqueueRequest,
    /// `None` while paused.
    pub next_run_at: Option<Time>,
    pub last_tick_at: Option<Time>,
    pub created_at: Time,
    pub updated_at: Time,
    /// Newest first (the last 20).
    pub runs: Vec<ScheduleRun>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ScheduleRun {
    pub tick_at: Time,
    pub fired_at: Time,
    /// `enqueued`, `duplicate` (the tick's job already existed) or `skipped` (by catch-up).
    pub outcome: String,
    pub job_id: Option<Uuid>,
    /// For `skipped`: the last skipped tick (`tick_at` is the first).
    #[serde(default)]
    pub skipped_until: Option<Time>,
}

/// One push origin and its circuit breaker (`GET /v1/targets`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TargetInfo {
    pub origin: String,
    pub queues: Vec<String>,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub consecutive_failures: u32,
    pub opened_at: Option<Time>,
    pub next_probe_at: Option<Time>,
    pub history: Vec<Value>,
}

/// `POST /v1/tokens`.
#[derive(Clone, Debug, Serialize)]
pub struct NewToken {
    pub name: String,
    /// `admin`, `producer`, `worker` or `viewer`.
    pub role: String,
    /// Queue glob patterns (`billing.*`); `None` for every queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub queues: Option<Vec<String>>,
    pub created_at: Time,
}

/// The answer to creating a token: its details and the secret, shown this once.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuditActor {
    pub token_id: Option<Uuid>,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Time,
    pub actor: AuditActor,
    pub action: String,
    pub target: String,
    pub data: Value,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_job_keeps_its_raw_payload_and_lease() {
        let wire = r#"{"attempt":1,"backoff":{"initial_ms":1,"jitter":0.0,"max_ms":2},"created_at":"2026-11-23T06:00:00.000Z",
            "finished_at":null,"id":"01a207c0-de0a-7000-a07d-54c82918c868","idempotency_key":null,"kind":"k","last_error":null,
            "lease":{"expires_at":"2026-11-23T06:00:30.000Z","token":"t0k"},"max_attempts":3,"payload":{"b":[1,2],"a":"x"},
            "priority":0,"queue":"q","result":null,"run_at":"2026-11-23T06:00:00.000Z","state":"running","tags":["t"],
            "timeout_ms":30000,"updated_at":"2026-11-23T06:00:00.000Z"}"#;
        let leased: LeasedJob = serde_json::from_str(wire).unwrap();
        assert_eq!(leased.lease.token, "t0k");
        assert_eq!(leased.job.state, State::Running);
        assert_eq!(leased.job.payload.get(), r#"{"b":[1,2],"a":"x"}"#);
    }
}
