//! keel's storage: the [`Store`] trait that every backend implements, the SQLite backend, and
//! (with the `testing` feature) the conformance suite that proves a backend keeps the promises.
//!
//! Invariants every backend keeps (the suite checks each):
//! - A call returns `Ok` only after its changes are durable (committed and fsync'd).
//! - Every job change appends events and updates the job's row in the same transaction, through
//!   `keel_core::step`; folding a job's events reproduces its row.
//! - A lease never scans the jobs table; a queue never has more running jobs than its concurrency.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod error;
pub mod observe;
pub mod postgres;
mod rules;
pub mod sqlite;
mod types;
mod verify;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::StoreError;
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{GROUPS_AHEAD, SqliteConfig, SqliteStore, SyncHook};
pub use types::{
    Actor, AuditEntry, Counts, DeliveryReport, Enqueued, JobFilter, JobPage, LeaseRequest,
    LeasedJob, Outcome, OutcomeKind, QueueInfo, ReplayFilter, RunOutcome, SCHEDULE_RUNS_KEPT,
    ScheduleRecord, ScheduleRun, SchemaRecord, Tick, TokenRecord,
};
pub use verify::VerifyReport;

use std::time::Duration;

use async_trait::async_trait;
use keel_core::{Event, Job, Json, NewJob, QueueOverrides, ScheduleSpec, Scope, State, Time};
use tokio::sync::watch;
use uuid::Uuid;

/// Durable storage of jobs, their events and queue settings. Every method that changes state
/// takes `now` from the caller, so behaviour is deterministic under test.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates jobs, all or none. An item whose idempotency key is live in its queue comes back as
    /// the original job (`replayed`) if the request is identical; otherwise the whole call fails
    /// with `IdempotencyConflict`.
    async fn enqueue(&self, jobs: Vec<NewJob>, now: Time) -> Result<Vec<Enqueued>, StoreError>;

    /// Hands out up to `max_jobs` available jobs from the queues in order, honouring pause and
    /// concurrency limits. Never waits; see `wait_and_lease` for long polls.
    async fn lease(&self, req: LeaseRequest, now: Time) -> Result<Vec<LeasedJob>, StoreError>;

    /// A long poll: leases like `lease`, and when nothing is available waits up to `wait` for
    /// work and leases it then; empty when the wait runs out. It tries at once first, so calling
    /// it after a `lease` that found nothing misses no work in between. `now` is read whenever a
    /// lease is made. Dropping the future gives up the wait: from then on nothing is leased for
    /// it (a lease made in the instant before the drop stays leased until it expires, like any
    /// lease whose answer was lost).
    ///
    /// The default waits on `subscribe` and tries again after each change. The SQLite store parks
    /// the request in its writer instead, which leases to it in the same transaction, and so the
    /// same fsync, that makes work available.
    async fn wait_and_lease(
        &self,
        req: LeaseRequest,
        now: &(dyn Fn() -> Time + Send + Sync),
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut wake = self.subscribe();
        loop {
            // Read the counter before trying: a change after the attempt then wakes the wait.
            wake.borrow_and_update();
            let jobs = self.lease(req.clone(), now()).await?;
            if !jobs.is_empty() {
                return Ok(jobs);
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(jobs),
                changed = wake.changed() => if changed.is_err() { return Ok(jobs) },
            }
        }
    }

    // Commands on one job take the caller's `scope`: a job in a queue outside it is `NotFound`,
    // exactly as if it did not exist (checked where the job is loaded, so it costs no extra read).

    /// Extends a lease; returns the new expiry.
    async fn heartbeat(
        &self,
        id: Uuid,
        token: String,
        lease_ms: i64,
        scope: Scope,
        now: Time,
    ) -> Result<Time, StoreError>;

    /// Records outcomes (complete / fail) in one transaction; each item succeeds or fails alone.
    async fn record_outcomes(
        &self,
        items: Vec<Outcome>,
        scope: Scope,
        now: Time,
    ) -> Result<Vec<Result<Job, StoreError>>, StoreError>;

    async fn cancel(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError>;

    /// A dead or cancelled job back to available with a fresh attempt budget.
    async fn retry(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError>;

    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StoreError>;

    /// Newest first, keyset-paginated by id.
    async fn list_jobs(&self, filter: JobFilter) -> Result<JobPage, StoreError>;

    /// The job's events oldest first; `None` when the store has never had the job (or its
    /// events passed retention).
    async fn job_events(&self, id: Uuid) -> Result<Option<Vec<Event>>, StoreError>;

    async fn queues(&self, now: Time) -> Result<Vec<QueueInfo>, StoreError>;

    async fn queue(&self, name: &str, now: Time) -> Result<Option<QueueInfo>, StoreError>;

    // Admin changes take the `actor` and record an audit entry in the same transaction.

    /// Replaces the queue's overrides (creating the queue if needed).
    async fn configure_queue(
        &self,
        name: &str,
        overrides: QueueOverrides,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError>;

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError>;

    /// Dead or cancelled jobs of a queue back to available; returns how many.
    async fn replay(
        &self,
        queue: &str,
        filter: ReplayFilter,
        actor: &Actor,
        now: Time,
    ) -> Result<u64, StoreError>;

    /// Deletes the queue's jobs in `state` (recording a `purged` event each); returns how many.
    async fn purge(
        &self,
        queue: &str,
        state: State,
        actor: &Actor,
        now: Time,
    ) -> Result<u64, StoreError>;

    /// Stores a new API token (only its hash).
    async fn create_token(
        &self,
        token: TokenRecord,
        actor: &Actor,
        now: Time,
    ) -> Result<(), StoreError>;

    /// Deletes a token; returns what it was. The last admin token cannot be deleted
    /// (`Conflict`), so a store always keeps a way in once it has one.
    async fn delete_token(
        &self,
        id: Uuid,
        actor: &Actor,
        now: Time,
    ) -> Result<TokenRecord, StoreError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Creates or replaces the payload schema of `kind`; the caller has checked it is valid.
    async fn put_schema(
        &self,
        kind: &str,
        schema: Json,
        actor: &Actor,
        now: Time,
    ) -> Result<SchemaRecord, StoreError>;

    async fn delete_schema(&self, kind: &str, actor: &Actor, now: Time) -> Result<(), StoreError>;

    /// Every schema, by kind.
    async fn schemas(&self) -> Result<Vec<SchemaRecord>, StoreError>;

    /// Appends an audit entry for a change the server made on its own (a push breaker opening
    /// or closing), which is not one of the admin changes above.
    async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        data: serde_json::Value,
        now: Time,
    ) -> Result<(), StoreError>;

    /// Audit entries newest first; `before` is the previous page's last `seq`.
    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;

    /// Creates or replaces the schedule `name` (the caller has checked the cadence and the job
    /// template), paused or not (`None`: as it was; a new one runs). A replaced schedule keeps
    /// its clock: no tick it fired fires again.
    async fn put_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
        paused: Option<bool>,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError>;

    /// Deletes a schedule; jobs it already enqueued stay.
    async fn delete_schedule(&self, name: &str, actor: &Actor, now: Time)
    -> Result<(), StoreError>;

    /// Pauses or resumes a schedule. Resuming starts at the first tick at or after `now`.
    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError>;

    /// Every schedule by name, each with its newest runs.
    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError>;

    /// Runs what is due at `now`: scheduled jobs become available, expired leases count as failed
    /// attempts, schedules enqueue their due ticks (exactly once each), retention deletes old
    /// finished jobs and expired idempotency keys.
    async fn tick(&self, now: Time) -> Result<Tick, StoreError>;

    /// A counter that increases whenever jobs may have become leasable. The timer loop, push
    /// delivery and the default `wait_and_lease` wait on it.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Whether the store can currently write.
    async fn check_ready(&self) -> Result<(), StoreError>;

    /// Jobs in id order after `after`, for export and verification.
    async fn export_jobs(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Events in `seq` order after `after_seq`, for export and verification.
    async fn export_events(&self, after_seq: i64, limit: usize) -> Result<Vec<Event>, StoreError>;

    /// Adds jobs (with their leases) and events exactly as another store exported them, to move
    /// between backends. Events are appended in the order given with new `seq` numbers. If any
    /// job's id already exists the call fails with `Conflict` and writes nothing.
    async fn import(&self, jobs: Vec<Job>, events: Vec<Event>, now: Time)
    -> Result<(), StoreError>;

    /// Finishes in-flight writes and stops; later calls fail with `Unavailable`.
    async fn close(&self) -> Result<(), StoreError>;

    /// Folds every event and compares the result with the jobs table.
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        verify::run(self).await
    }
}
