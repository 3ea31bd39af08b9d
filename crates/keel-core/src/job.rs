//! The job: its fields, its states, and how an enqueue request becomes one.
//!
//! A `Job` is only ever changed by applying events (see `event.rs`); this module builds the
//! initial job from a validated [`NewJob`] and the queue's effective defaults.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::queue::QueueConfig;
use crate::time::Time;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for `run_at` (a delayed job or a retry's backoff).
    Scheduled,
    Available,
    /// Leased by a worker or being pushed.
    Running,
    Completed,
    Dead,
    Cancelled,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Scheduled,
        State::Available,
        State::Running,
        State::Completed,
        State::Dead,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Available => "available",
            State::Running => "running",
            State::Completed => "completed",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Final until an explicit retry.
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Dead | State::Cancelled)
    }

    /// The waiting state of a job due at `run_at`, seen at `now`.
    pub fn waiting(run_at: Time, now: Time) -> State {
        if run_at <= now {
            State::Available
        } else {
            State::Scheduled
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// JSON text kept exactly as received (already validated as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json(pub Box<RawValue>);

impl Json {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    pub fn from_value(value: &serde_json::Value) -> Json {
        // A Value always serialises to valid JSON, so this cannot fail; keep a safe fallback.
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        Json::from_text(text).unwrap_or_else(|_| Json::null())
    }

    pub fn from_text(text: String) -> Result<Json, serde_json::Error> {
        RawValue::from_string(text).map(Json)
    }

    pub fn null() -> Json {
        // `RawValue::NULL` is a &'static RawValue; `to_owned` gives the box.
        Json(RawValue::NULL.to_owned())
    }
}

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.get() == other.get()
    }
}

/// What a failed attempt reported.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobError {
    pub message: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Which attempt failed.
    pub attempt: u32,
    pub at: Time,
}

/// The current lease of a running job. Only the token's hash is kept (`lease.rs`). Serialized
/// only where a whole store is copied (`keel export`); the API never shows it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Lease {
    pub token_hash: String,
    /// When this attempt began (the `leased` event's time): run time is measured from here.
    pub leased_at: Time,
    pub expires_at: Time,
    pub worker: Option<String>,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value))]
    pub payload: Json,
    pub state: State,
    pub priority: i32,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    pub backoff: Backoff,
    pub run_at: Time,
    pub created_at: Time,
    pub updated_at: Time,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub finished_at: Option<Time>,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(required))]
    pub last_error: Option<JobError>,
    /// What the job's completion reported; null until then.
    #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value, required))]
    pub result: Option<Json>,
    /// The W3C trace context of the request that enqueued the job, handed on to whoever runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub lease: Option<Lease>,
}

/// A validated enqueue request (names checked, numbers in range, `run_at` xor `delay_ms`).
#[derive(Clone, PartialEq, Debug)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: Json,
    pub priority: i32,
    pub when: When,
    pub max_attempts: Option<u32>,
    pub timeout_ms: Option<i64>,
    pub backoff: Option<Backoff>,
    pub idempotency_key: Option<String>,
    pub tags: Vec<String>,
    /// A validated W3C `traceparent` (`validate::traceparent`).
    pub traceparent: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum When {
    Now,
    At(Time),
    Delay(i64),
}

impl NewJob {
    /// The job this request creates, with the queue's effective defaults filled in.
    pub fn into_job(self, id: Uuid, queue: &QueueConfig, now: Time) -> Job {
        let run_at = match self.when {
            When::Now => now,
            When::At(t) => t,
            When::Delay(ms) => now.plus_ms(ms),
        };
        Job {
            id,
            state: State::waiting(run_at, now),
            priority: self.priority,
            attempt: 0,
            max_attempts: self.max_attempts.unwrap_or(queue.max_attempts),
            timeout_ms: self.timeout_ms.unwrap_or(queue.timeout_ms),
            backoff: self.backoff.unwrap_or(queue.backoff),
            run_at,
            created_at: now,
            updated_at: now,
            finished_at: None,
            last_error: None,
            result: None,
            lease: None,
            queue: self.queue,
            kind: self.kind,
            payload: self.payload,
            idempotency_key: self.idempotency_key,
            traceparent: self.traceparent,
            tags: self.tags,
        }
    }

    /// Identifies "the same request" for idempotency: a hash of every field as the client sent
    /// it (relative `delay_ms` stays relative), with the payload's object keys sorted so that
    /// two serialisations of the same JSON agree. `traceparent` is left out: a client's retry
    /// from a new span is still the same request.
    pub fn fingerprint(&self) -> String {
        let payload: serde_json::Value =
            serde_json::from_str(self.payload.get()).unwrap_or(serde_json::Value::Null);
        let when = match self.when {
            When::Now => serde_json::json!(null),
            When::At(t) => serde_json::json!({ "run_at": t.as_millis() }),
            When::Delay(ms) => serde_json::json!({ "delay_ms": ms }),
        };
        let canonical = serde_json::json!([
            self.queue,
            self.kind,
            payload,
            self.priority,
            when,
            self.max_attempts,
            self.timeout_ms,
            self.backoff,
            self.idempotency_key,
            self.tags,
        ]);
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        crate::lease::hex(&digest)
    }
}
