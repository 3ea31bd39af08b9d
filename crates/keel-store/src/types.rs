//! The values that cross the `Store` trait: requests and answers in domain terms, not SQL.

use keel_core::{Job, Json, QueueConfig, QueueOverrides, Role, ScheduleSpec, Scope, State, Time};
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
    /// For a push attempt: what the target answered, recorded as a `delivery` event before
    /// the outcome, in the same transaction.
    pub delivery: Option<DeliveryReport>,
}

/// A push attempt's answer (see `EventData::Delivery`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    pub status: Option<u16>,
    pub duration_ms: i64,
    pub error: Option<String>,
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
    /// The attempt is given back unfinished and does not count (push delivery at shutdown).
    Released,
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
    /// Only jobs in queues the scope allows (a scoped token's listing).
    pub scope: Scope,
}

#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    pub next: Option<Uuid>,
}

impl JobPage {
    /// A page from up to `limit + 1` rows read: the extra row only says another page follows.
    pub(crate) fn from_overfetched(mut jobs: Vec<Job>, limit: usize) -> JobPage {
        let next = if jobs.len() > limit {
            jobs.truncate(limit);
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        JobPage { jobs, next }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Who made a change; recorded with admin changes in the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The API token's id; `None` for the server itself or an unauthenticated local server.
    pub token_id: Option<Uuid>,
    pub name: String,
}

impl Actor {
    /// Changes the server makes on its own behalf (bootstrap, `--no-auth` requests).
    pub fn system(name: &str) -> Actor {
        Actor {
            token_id: None,
            name: name.to_owned(),
        }
    }
}

/// An API token as stored: never the secret, only its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    /// Queue glob patterns; `None` means every queue.
    pub queues: Option<Vec<String>>,
    /// `keel_core::access::api_token_hash` of the secret.
    pub hash: String,
    pub created_at: Time,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SchemaRecord {
    pub kind: String,
    pub schema: Json,
    /// Starts at 1 and increases with each replacement.
    pub version: i64,
    pub updated_at: Time,
}

/// One admin change.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: Time,
    pub actor: Actor,
    /// `token.created`, `queue.purged`, ... (docs/api.md lists them).
    pub action: String,
    /// What was changed: a token id, a queue name, a kind.
    pub target: String,
    pub data: serde_json::Value,
}

/// A schedule as stored, with where its clock stands and its latest runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleRecord {
    pub name: String,
    pub spec: ScheduleSpec,
    pub paused: bool,
    /// The next tick that will fire; `None` while paused.
    pub next_run_at: Option<Time>,
    /// The latest tick fired or skipped; no tick at or before it fires again.
    pub last_tick_at: Option<Time>,
    pub created_at: Time,
    pub updated_at: Time,
    /// Newest first, at most [`SCHEDULE_RUNS_KEPT`].
    pub runs: Vec<ScheduleRun>,
}

/// How many runs a schedule keeps for display.
pub const SCHEDULE_RUNS_KEPT: usize = 20;

/// One tick's fate (or, for `Skipped`, a span of ticks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRun {
    pub tick_at: Time,
    pub fired_at: Time,
    pub outcome: RunOutcome,
    /// The tick's job (for `Enqueued`, and for `Duplicate` when the earlier job still exists).
    pub job_id: Option<Uuid>,
    /// For `Skipped`: the last skipped tick (`tick_at` is the first).
    pub skipped_until: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    Enqueued,
    /// The tick's idempotency key was already taken: the job exists from an earlier firing.
    Duplicate,
    /// Missed ticks the schedule's `catch_up` rule did not run.
    Skipped,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Enqueued => "enqueued",
            RunOutcome::Duplicate => "duplicate",
            RunOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<RunOutcome> {
        [
            RunOutcome::Enqueued,
            RunOutcome::Duplicate,
            RunOutcome::Skipped,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}
