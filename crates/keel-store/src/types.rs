//! The values that cross the `Store` trait: requests and answers in domain terms, not SQL.

use keel_core::{Job, Json, QueueConfig, QueueOverrides, State, Time};
use serde::Serialize;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Enqueued {
    pub job: Job,
    /// The idempotency key matched an earlier identical request; `job` is the original.
    pub replayed: bool,
}

#[derive(Clone, Debug)]
pub struct LeaseRequest {
    /// Tried in this order.
    pub queues: Vec<String>,
    pub max_jobs: usize,
    /// Defaults to each job's `timeout_ms`.
    pub lease_ms: Option<i64>,
    pub worker: Option<String>,
}

#[derive(Clone, Debug)]
pub struct LeasedJob {
    pub job: Job,
    /// The fencing token; shown once, stored only as a hash.
    pub token: String,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: Uuid,
    pub token: String,
    pub kind: OutcomeKind,
}

#[derive(Clone, Debug)]
pub enum OutcomeKind {
    Completed {
        result: Option<Json>,
    },
    Failed {
        message: String,
        kind: Option<String>,
        retryable: bool,
        retry_in_ms: Option<i64>,
    },
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub queue: Option<String>,
    pub state: Option<State>,
    pub kind: Option<String>,
    pub tag: Option<String>,
    pub limit: usize,
    /// Only jobs with an id below this one (the previous page's last id).
    pub before: Option<Uuid>,
}

#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<Uuid>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub scheduled: u64,
    pub available: u64,
    pub running: u64,
    pub completed: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl Counts {
    pub fn add(&mut self, state: State, n: u64) {
        let slot = match state {
            State::Scheduled => &mut self.scheduled,
            State::Available => &mut self.available,
            State::Running => &mut self.running,
            State::Completed => &mut self.completed,
            State::Dead => &mut self.dead,
            State::Cancelled => &mut self.cancelled,
        };
        *slot += n;
    }
}

#[derive(Clone, Debug)]
pub struct QueueInfo {
    pub name: String,
    pub paused: bool,
    /// What the operator set; `config` is the effective result with server defaults.
    pub overrides: QueueOverrides,
    pub config: QueueConfig,
    pub counts: Counts,
    pub oldest_available_age_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct ReplayFilter {
    /// `Dead` or `Cancelled`.
    pub state: State,
    pub kind: Option<String>,
    pub limit: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct Tick {
    /// When something will next be due (a scheduled job, a lease expiry, retention), if known.
    pub next_due: Option<Time>,
}
