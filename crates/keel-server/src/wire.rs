//! Wire types: request bodies as clients send them, their validation into domain values, and
//! the shapes of responses. Validation collects every violation with a JSON pointer.

use keel_core::validate::{check_name, check_range};
use keel_core::{
    Backoff, FieldError, Job, Json, Limits, NewJob, QueueOverrides, Retention, State, Time, When,
};
use keel_store::{LeasedJob, QueueInfo};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const MAX_DELAY_MS: i64 = 365 * 24 * 3_600_000;
pub const MAX_TIMEOUT_MS: i64 = 24 * 3_600_000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_LEASE_WAIT_MS: i64 = 60_000;
pub const MAX_LEASE_JOBS: i64 = 1_000;
pub const MAX_CONCURRENCY: i64 = 100_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffBody {
    pub initial_ms: i64,
    pub max_ms: i64,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_jitter() -> f64 {
    Backoff::default().jitter
}

impl BackoffBody {
    fn validate(&self, at: &str, errors: &mut Vec<FieldError>) -> Backoff {
        check_range(
            errors,
            &format!("{at}/initial_ms"),
            self.initial_ms,
            1,
            MAX_DELAY_MS,
        );
        check_range(
            errors,
            &format!("{at}/max_ms"),
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    pub queue: String,
    pub kind: String,
    pub payload: Box<RawValue>,
    pub priority: Option<i64>,
    pub run_at: Option<String>,
    pub delay_ms: Option<i64>,
    pub max_attempts: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub backoff: Option<BackoffBody>,
    pub idempotency_key: Option<String>,
    pub tags: Option<Vec<String>>,
}

impl EnqueueBody {
    /// Validates into a `NewJob`; `at` is this body's pointer prefix ("" or "/jobs/3").
    pub fn validate(
        self,
        at: &str,
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
        check_range(errors, &format!("{at}/priority"), priority, -1000, 1000);
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
                check_range(errors, &format!("{at}/delay_ms"), ms, 0, MAX_DELAY_MS);
                When::Delay(ms)
            }
            (None, None) => When::Now,
        };
        if let Some(n) = self.max_attempts {
            check_range(errors, &format!("{at}/max_attempts"), n, 1, 1000);
        }
        if let Some(ms) = self.timeout_ms {
            check_range(errors, &format!("{at}/timeout_ms"), ms, 1, MAX_TIMEOUT_MS);
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub jobs: Vec<EnqueueBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    pub queues: Vec<String>,
    pub max_jobs: Option<i64>,
    pub wait_ms: Option<i64>,
    pub lease_ms: Option<i64>,
    pub worker: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_token: String,
    pub lease_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_token: String,
    pub result: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub retryable: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_token: String,
    pub error: ErrorBody,
    pub retry_in_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckOutcome {
    Completed,
    Failed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckItem {
    pub id: String,
    pub lease_token: String,
    pub outcome: AckOutcome,
    pub result: Option<Box<RawValue>>,
    pub error: Option<ErrorBody>,
    pub retry_in_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    pub items: Vec<AckItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    pub state: String,
}

/// A queue's settings as `PUT /v1/queues/{name}` takes them: each field present replaces the
/// override, `null` removes it (back to the server default), absent leaves it alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuePatch {
    #[serde(default, deserialize_with = "present")]
    pub concurrency: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub max_attempts: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub timeout_ms: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    pub backoff: Option<Option<BackoffBody>>,
    #[serde(default, deserialize_with = "present")]
    pub retention: Option<Option<RetentionBody>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<RateLimitBody>>,
    /// Push mode; `null` returns the queue to pull mode.
    #[serde(default, deserialize_with = "present")]
    pub target: Option<Option<crate::target::TargetBody>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    pub per_second: f64,
    /// Default: `per_second` rounded up (at least 1).
    pub burst: Option<i64>,
}

/// The highest rate limit accepted, jobs per second.
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionBody {
    pub completed_ms: i64,
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

#[derive(Serialize)]
pub struct LeaseView {
    pub token: String,
    pub expires_at: Time,
}

#[derive(Serialize)]
pub struct LeasedJobView {
    #[serde(flatten)]
    pub job: Job,
    pub lease: LeaseView,
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

#[derive(Serialize)]
pub struct QueueView {
    pub name: String,
    pub paused: bool,
    pub config: keel_core::QueueConfig,
    pub counts: keel_store::Counts,
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
