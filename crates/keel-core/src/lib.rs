//! keel's domain: what a job is, how it may change, and the rules for backoff, fencing,
//! idempotency and input. Pure: no I/O, no async, no clock (time is always a parameter), no
//! randomness (jitter samples are parameters).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod access;
pub mod backoff;
pub mod breaker;
pub mod event;
pub mod job;
mod job_json;
pub mod lease;
pub mod queue;
pub mod schedule;
pub mod time;
pub mod transition;
pub mod validate;

pub use access::{Role, Scope};
pub use backoff::Backoff;
pub use event::{DeadReason, Event, EventData, apply, project};
pub use job::{Job, JobError, Json, Lease, NewJob, State, When};
pub use job_json::{json_byte_needs_escape, json_str_is_plain, write_json_str, write_json_value};
pub use queue::{
    BreakerConfig, QueueConfig, QueueOverrides, RateLimit, Retention, Target, TokenBucket,
};
pub use schedule::{Cadence, CatchUp, JobTemplate, ScheduleClock, ScheduleSpec, Ticker};
pub use time::Time;
pub use transition::{Command, Failure, TransitionError, step, transition};
pub use validate::{FieldError, Limits};
