//! The keel client: typed calls for the HTTP API ([`Client`]) and a worker runtime
//! ([`worker::Worker`]) that leases, runs handlers, heartbeats and acknowledges.
//! Depends on keel-core for the domain types only; knows nothing of the server's crates.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod error;
mod types;
pub mod worker;

pub use client::{
    ADMIN_TOKEN_FILE, Client, ClientBuilder, DEFAULT_URL, JobPager, RetryPolicy, is_loopback_url,
};
pub use error::{Error, FieldProblem, Problem, ProblemKind};
pub use keel_core::{Backoff, Job, State, Time};
pub use types::{
    AckItem, AckOutcome, AckResult, AuditActor, AuditEntry, AuditPage, Counts, CreatedToken,
    EnqueueRequest, Enqueued, Event, Failure, JobFilter, JobPage, LeaseInfo, LeaseRequest,
    LeasedJob, NewToken, QueueInfo, QueuePatch, ScheduleInfo, ScheduleRequest, ScheduleRun,
    SchemaInfo, TargetInfo, TokenInfo,
};
