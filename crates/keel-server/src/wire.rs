//! Wire types: request bodies as clients send them, their validation into domain values, and
//! the shapes of responses. Validation collects every violation with a JSON pointer.

use keel_core::validate::{check_name, check_range};
use keel_core::{
    Backoff, FieldError, Job, Json, Limits, NewJob, QueueOverrides, Retention, State, Time, When,
};
use keel_store::{LeasedJob, QueueInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::openapi::{IdempotencyKey, Name};

pub const MAX_DELAY_MS: i64 = 365 * 24 * 3_600_000;
pub const MAX_TIMEOUT_MS: i64 = 24 * 3_600_000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_LEASE_WAIT_MS: i64 = 60_000;
pub const MAX_LEASE_JOBS: i64 = 1_000;
pub const MAX_CONCURRENCY: i64 = 100_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackoffBody {
    #[schema(minimum = 1, maximum = 31_536_000_000i64)]
    pub initial_ms: i64,
    /// At least `initial_ms`.
    #[schema(minimum = 1, maximum = 31_536_000_000i64)]
    pub max_ms: i64,
    #[serde(default = "default_jitter")]
    #[schema(minimum = 0, maximum = 1)]
    pub jitter: f64,
}

fn default_jitter() -> f64 {
    Backoff::default().jitter
}

impl BackoffBody {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) -> Backoff {
        check_range(
            errors,
            format_args!("{at}/initial_ms"),
            self.initial_ms,
            1,
            MAX_DELAY_MS,
        );
        check_range(
            errors,
            format_args!("{at}/max_ms"),
            self.max_ms,
            self.initial_ms.max(1),
            MAX_DELAY_MS,
        );
        if !(0.0..=1.0).contains(&self.jitter) {
            errors.push(FieldError::new(
                format!("{at}/jitter"),
                "must be between 0 and 1",
            ));
        }
        Backoff {
            initial_ms: self.initial_ms,
            max_ms: self.max_ms,
            jitter: self.jitter,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    #[schema(value_type = Name)]
    pub queue: String,
    #[schema(value_type = Name)]
    pub kind: String,
    /// Any JSON; checked against the kind's schema when one is set.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Higher runs first.
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i64>,
    /// When to run (RFC 3339); give this or `delay_ms`, not both.
    #[schema(value_type = Option<Time>)]
    pub run_at: Option<String>,
    #[schema(minimum = 0, maximum = 31_536_000_000i64)]
    pub delay_ms: Option<i64>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<i64>,
    pub backoff: Option<BackoffBody>,
    #[schema(value_type = Option<IdempotencyKey>)]
    pub idempotency_key: Option<String>,
    #[schema(value_type = Option<Vec<Name>>, max_items = 32)]
    pub tags: Option<Vec<String>>,
}

/// A body's JSON pointer prefix: `""`, `"/job"`, or `"/jobs/3"` in a batch. Written out only
/// when a field is wrong: a batch's good jobs format no pointers (that formatting was ~8% of
/// the HTTP threads' instructions per batched job).
#[derive(Clone, Copy)]
pub enum At<'a> {
    Path(&'a str),
    Item(&'a str, usize),
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Path(p) => f.write_str(p),
            At::Item(p, i) => write!(f, "{p}/{i}"),
        }
    }
}

impl EnqueueBody {
    /// Validates into a `NewJob`; `at` is this body's pointer prefix.
    pub fn validate(
        self,
        at: At<'_>,
        limits: &Limits,
        errors: &mut Vec<FieldError>,
    ) -> Option<NewJob> {
        let before = errors.len();
        let name = |field: &str, value: &str, errors: &mut Vec<FieldError>| {
            if let Err(m) = check_name(value) {
                errors.push(FieldError::new(format!("{at}/{field}"), m));
            }
        };
        name("queue", &self.queue, errors);
        name("kind", &self.kind, errors);
        let payload_len = self.payload.get().len();
        if payload_len > limits.max_payload_bytes {
            errors.push(FieldError::new(
                format!("{at}/payload"),
                format!(
                    "is {payload_len} bytes; the limit is {}",
                    limits.max_payload_bytes
                ),
            ));
        }
        let priority = self.priority.unwrap_or(0);
        check_range(errors, format_args!("{at}/priority"), priority, -1000, 1000);
        let when = match (&self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    format!("{at}/delay_ms"),
                    "give run_at or delay_ms, not both",
                ));
                When::Now
            }
            (Some(text), None) => match Time::parse_rfc3339(text) {
                Ok(t) => When::At(t),
                Err(m) => {
                    errors.push(FieldError::new(format!("{at}/run_at"), m));
                    When::Now
                }
            },
            (None, Some(ms)) => {
                check_range(errors, format_args!("{at}/delay_ms"), ms, 0, MAX_DELAY_MS);
                When::Delay(ms)
            }
            (None, None) => When::Now,
        };
        if let Some(n) = self.max_attempts {
            check_range(errors, format_args!("{at}/max_attempts"), n, 1, 1000);
        }
        if let Some(ms) = self.timeout_ms {
            check_range(
                errors,
                format_args!("{at}/timeout_ms"),
                ms,
                1,
                MAX_TIMEOUT_MS,
            );
        }
        let backoff = self
            .backoff
            .as_ref()
            .map(|b| b.validate(&format!("{at}/backoff"), errors));
        if let Some(key) = &self.idempotency_key {
            check_idempotency_key(key, &format!("{at}/idempotency_key"), errors);
        }
        let tags = self.tags.unwrap_or_default();
        if tags.len() > limits.max_tags {
            errors.push(FieldError::new(
                format!("{at}/tags"),
                format!("at most {} tags", limits.max_tags),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            if let Err(m) = check_name(tag) {
                errors.push(FieldError::new(format!("{at}/tags/{i}"), m));
            }
        }
        if errors.len() > before {
            return None;
        }
        Some(NewJob {
            queue: self.queue,
            kind: self.kind,
            payload: compact(self.payload),
            priority: priority as i32,
            when,
            max_attempts: self.max_attempts.map(|n| n as u32),
            timeout_ms: self.timeout_ms,
            backoff,
            idempotency_key: self.idempotency_key,
            tags,
            traceparent: None,
        })
    }
}

/// Idempotency keys: 1–255 visible ASCII characters.
pub fn check_idempotency_key(key: &str, pointer: &str, errors: &mut Vec<FieldError>) {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        errors.push(FieldError::new(
            pointer,
            "must be 1-255 visible ASCII characters",
        ));
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    #[schema(min_items = 1, max_items = 1000)]
    pub jobs: Vec<EnqueueBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    #[schema(value_type = Vec<Name>, min_items = 1, max_items = 64)]
    pub queues: Vec<String>,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_jobs: Option<i64>,
    /// How long to wait for work when there is none.
    #[schema(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<i64>,
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    #[schema(max_length = 255)]
    pub worker: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_token: String,
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_token: String,
    #[schema(value_type = serde_json::Value)]
    pub result: Option<Box<RawValue>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    #[schema(max_length = 8192)]
    pub message: String,
    #[serde(rename = "type")]
    #[schema(max_length = 128)]
    pub kind: Option<String>,
    pub retryable: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_token: String,
    pub error: ErrorBody,
    /// Overrides the backoff for this retry.
    #[schema(minimum = 0, maximum = 31_536_000_000i64)]
    pub retry_in_ms: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Completed,
    Failed,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    #[schema(value_type = uuid::Uuid)]
    pub id: String,
    pub lease_token: String,
    pub outcome: AckOutcome,
    /// With `completed` only.
    #[schema(value_type = serde_json::Value)]
    pub result: Option<Box<RawValue>>,
    /// Required with `failed`, refused with `completed`.
    pub error: Option<ErrorBody>,
    /// With `failed` only.
    #[schema(minimum = 0, maximum = 31_536_000_000i64)]
    pub retry_in_ms: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<AckItem>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// `dead` (the default) or `cancelled`.
    #[schema(pattern = "^(dead|cancelled)$")]
    pub state: Option<String>,
    #[schema(value_type = Option<Name>)]
    pub kind: Option<String>,
    #[schema(minimum = 1, maximum = 100_000)]
    pub limit: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    #[schema(pattern = "^(dead|completed|cancelled|available)$")]
    pub state: String,
}

/// A queue's settings as `PUT /v1/queues/{name}` takes them: each field present replaces the
/// override, `null` removes it (back to the server default), absent leaves it alone.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 100_000)]
    pub concurrency: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub max_attempts: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 86_400_000)]
    pub timeout_ms: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<BackoffBody>)]
    pub backoff: Option<Option<BackoffBody>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RetentionBody>)]
    pub retention: Option<Option<RetentionBody>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<RateLimitBody>)]
    pub rate_limit: Option<Option<RateLimitBody>>,
    /// Push mode; `null` returns the queue to pull mode.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::target::TargetBody>)]
    pub target: Option<Option<crate::target::TargetBody>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    #[schema(exclusive_minimum = 0, maximum = 1_000_000)]
    pub per_second: f64,
    /// Default: `per_second` rounded up (at least 1).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: Option<i64>,
}

/// The highest rate limit accepted, jobs per second.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    #[schema(minimum = 0)]
    pub completed_ms: i64,
    #[schema(minimum = 0)]
    pub dead_ms: i64,
}

/// Distinguishes `"field": null` (Some(None)) from an absent field (None).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl QueuePatch {
    pub fn apply(
        self,
        mut o: QueueOverrides,
        allow_private_targets: bool,
    ) -> Result<QueueOverrides, Vec<FieldError>> {
        let mut errors = vec![];
        if let Some(v) = self.target {
            let current = o.target.take();
            o.target = v.map(|t| t.validate(current.as_ref(), allow_private_targets, &mut errors));
        }
        if let Some(v) = self.concurrency {
            o.concurrency = v.map(|n| {
                check_range(&mut errors, "/concurrency", n, 1, MAX_CONCURRENCY);
                n.clamp(1, MAX_CONCURRENCY) as u32
            });
        }
        if let Some(v) = self.max_attempts {
            o.max_attempts = v.map(|n| {
                check_range(&mut errors, "/max_attempts", n, 1, 1000);
                n.clamp(1, 1000) as u32
            });
        }
        if let Some(v) = self.timeout_ms {
            if let Some(n) = v {
                check_range(&mut errors, "/timeout_ms", n, 1, MAX_TIMEOUT_MS);
            }
            o.timeout_ms = v;
        }
        if let Some(v) = self.backoff {
            o.backoff = v.map(|b| b.validate("/backoff", &mut errors));
        }
        if let Some(v) = self.rate_limit {
            o.rate_limit = v.map(|r| {
                if !(r.per_second > 0.0 && r.per_second <= MAX_RATE_PER_SECOND) {
                    errors.push(FieldError::new(
                        "/rate_limit/per_second",
                        format!("must be above 0 and at most {MAX_RATE_PER_SECOND}"),
                    ));
                }
                let default_burst = r.per_second.clamp(1.0, MAX_RATE_PER_SECOND).ceil() as i64;
                let burst = r.burst.unwrap_or(default_burst);
                check_range(&mut errors, "/rate_limit/burst", burst, 1, 1_000_000);
                keel_core::RateLimit {
                    per_second: r.per_second,
                    burst: burst.clamp(1, 1_000_000) as u32,
                }
            });
        }
        if let Some(v) = self.retention {
            o.retention = v.map(|r| {
                check_range(
                    &mut errors,
                    "/retention/completed_ms",
                    r.completed_ms,
                    0,
                    i64::MAX / 2,
                );
                check_range(
                    &mut errors,
                    "/retention/dead_ms",
                    r.dead_ms,
                    0,
                    i64::MAX / 2,
                );
                Retention {
                    completed_ms: r.completed_ms,
                    dead_ms: r.dead_ms,
                }
            });
        }
        if errors.is_empty() {
            Ok(o)
        } else {
            Err(errors)
        }
    }
}

/// Validates a result or payload-like JSON against a size limit.
pub fn optional_json(
    raw: Option<Box<RawValue>>,
    pointer: &str,
    limit: usize,
) -> Result<Option<Json>, FieldError> {
    match raw {
        Some(r) if r.get().len() > limit => Err(FieldError::new(
            pointer,
            format!("is {} bytes; the limit is {limit}", r.get().len()),
        )),
        r => Ok(r.map(compact)),
    }
}

/// Stores JSON without the client's insignificant whitespace.
fn compact(raw: Box<RawValue>) -> Json {
    match keel_core::validate::compact_json(raw.get()) {
        std::borrow::Cow::Borrowed(_) => Json(raw),
        std::borrow::Cow::Owned(text) => Json::from_text(text).unwrap_or(Json(raw)),
    }
}

pub fn parse_state(text: &str, pointer: &str, allowed: &[State]) -> Result<State, FieldError> {
    match State::parse(text) {
        Some(s) if allowed.contains(&s) => Ok(s),
        _ => Err(FieldError::new(
            pointer,
            format!(
                "must be one of {}",
                allowed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[derive(Serialize, ToSchema)]
pub struct LeaseView {
    pub token: String,
    pub expires_at: Time,
}

/// An answer of JSON that `write` appends to a buffer of `room` bytes made up front. axum's
/// `Json` starts at 128 bytes and doubles, so a batch's answer (~600 KB) was copied a dozen
/// times on its way out. `room` is a guess; the buffer still grows past it if it must. The
/// answers that carry jobs write them with `Job::write_json` (keel-core's `job_json.rs`).
pub(crate) fn written_answer(
    status: axum::http::StatusCode,
    room: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut buf = Vec::with_capacity(room);
    write(&mut buf);
    let json = axum::http::HeaderValue::from_static("application/json");
    (status, [(axum::http::header::CONTENT_TYPE, json)], buf).into_response()
}

/// Appends `items` as a JSON array, each written by `write`.
pub(crate) fn write_json_array<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut write: impl FnMut(&T, &mut Vec<u8>),
) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(item, out);
    }
    out.push(b']');
}

/// One job as the answer.
pub(crate) fn job_answer(status: axum::http::StatusCode, job: &Job) -> axum::response::Response {
    written_answer(status, job_room(job), |out| job.write_json(out))
}

/// A little more than the bytes of `job`'s JSON, for `written_answer`'s `room`.
pub(crate) fn job_room(job: &Job) -> usize {
    let texts = job.payload.get().len()
        + job.result.as_ref().map_or(0, |r| r.get().len())
        + job.tags.iter().map(|t| t.len() + 3).sum::<usize>()
        + job.idempotency_key.as_ref().map_or(0, String::len)
        + job.last_error.as_ref().map_or(0, |e| e.message.len() + 96);
    // The fixed fields (keys, id, times, numbers, backoff) take ~420 bytes.
    512 + texts
}

/// A job as a lease hands it out: the job and its lease.
#[derive(Serialize, ToSchema)]
pub struct LeasedJobView {
    #[serde(flatten)]
    pub job: Job,
    pub lease: LeaseView,
}

impl LeasedJobView {
    /// Appends what `Serialize` writes for this view.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        self.job.write_json_fields(out);
        out.extend_from_slice(b",\"lease\":{\"token\":");
        keel_core::write_json_str(out, &self.lease.token);
        out.extend_from_slice(b",\"expires_at\":");
        self.lease.expires_at.write_json(out);
        out.extend_from_slice(b"}}");
    }
}

impl From<LeasedJob> for LeasedJobView {
    fn from(l: LeasedJob) -> LeasedJobView {
        let expires_at = l
            .job
            .lease
            .as_ref()
            .map_or(l.job.updated_at, |x| x.expires_at);
        LeasedJobView {
            job: l.job,
            lease: LeaseView {
                token: l.token,
                expires_at,
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    pub config: keel_core::QueueConfig,
    pub counts: keel_store::Counts,
    /// How long the oldest available job has waited; null when none is available.
    #[schema(required, minimum = 0)]
    pub oldest_available_age_ms: Option<i64>,
}

impl From<QueueInfo> for QueueView {
    fn from(q: QueueInfo) -> QueueView {
        QueueView {
            name: q.name,
            paused: q.paused,
            config: q.config.redacted(),
            counts: q.counts,
            oldest_available_age_ms: q.oldest_available_age_ms,
        }
    }
}
