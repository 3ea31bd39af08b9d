//! How a `Job` and an `Event` map to PostgreSQL rows, and [`Writes`]: the changes of one
//! transaction, written with a fixed number of statements whatever their count (`unnest` of
//! arrays), then announced with one `NOTIFY` in the same transaction.

use std::collections::HashMap;
use std::time::Instant;

use deadpool_postgres::{Client, GenericClient};
use keel_core::{Event, EventData, Job, JobError, Json, Lease, State, Time};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{PgError, Shared};
use crate::StoreError;
use crate::observe::{self, Tally};
use crate::types::{JobFilter, JobPage};

/// The select list every job read uses (JSON columns as text, byte for byte as stored).
pub(super) const JOB_COLUMNS: &str = "id, queue, kind, payload::text, state, priority, attempt, max_attempts, \
    timeout_ms, backoff::text, run_at, created_at, updated_at, finished_at, idempotency_key, tags, \
    last_error::text, result::text, lease_token_hash, lease_expires_at, lease_worker, lease_leased_at, \
    traceparent";

fn bad(what: &str, e: impl std::fmt::Display) -> PgError {
    PgError::Store(StoreError::Internal(format!(
        "stored {what} is invalid: {e}"
    )))
}

fn json_text(text: String, what: &str) -> Result<Json, PgError> {
    Json::from_text(text).map_err(|e| bad(what, e))
}

pub(super) fn job_from_row(row: &Row) -> Result<Job, PgError> {
    let state: String = row.try_get(4)?;
    let backoff: String = row.try_get(9)?;
    let last_error: Option<String> = row.try_get(16)?;
    let result: Option<String> = row.try_get(17)?;
    let lease_hash: Option<String> = row.try_get(18)?;
    let lease_expires: Option<i64> = row.try_get(19)?;
    let leased_at: Option<i64> = row.try_get(21)?;
    Ok(Job {
        id: row.try_get(0)?,
        queue: row.try_get(1)?,
        kind: row.try_get(2)?,
        payload: json_text(row.try_get(3)?, "payload")?,
        state: State::parse(&state).ok_or_else(|| bad("state", &state))?,
        priority: row.try_get(5)?,
        attempt: row.try_get::<_, i32>(6)?.max(0) as u32,
        max_attempts: row.try_get::<_, i32>(7)?.max(0) as u32,
        timeout_ms: row.try_get(8)?,
        backoff: serde_json::from_str(&backoff).map_err(|e| bad("backoff", e))?,
        run_at: Time::from_millis(row.try_get(10)?),
        created_at: Time::from_millis(row.try_get(11)?),
        updated_at: Time::from_millis(row.try_get(12)?),
        finished_at: row.try_get::<_, Option<i64>>(13)?.map(Time::from_millis),
        idempotency_key: row.try_get(14)?,
        tags: row.try_get(15)?,
        last_error: last_error
            .map(|t| serde_json::from_str::<JobError>(&t).map_err(|e| bad("last_error", e)))
            .transpose()?,
        result: result.map(|t| json_text(t, "result")).transpose()?,
        traceparent: row.try_get(22)?,
        lease: match (lease_hash, lease_expires) {
            (Some(token_hash), Some(expires_at)) => Some(Lease {
                token_hash,
                leased_at: Time::from_millis(leased_at.unwrap_or(expires_at)),
                expires_at: Time::from_millis(expires_at),
                worker: row.try_get(20)?,
            }),
            _ => None,
        },
    })
}

pub(super) fn jobs_from_rows(rows: &[Row]) -> Result<Vec<Job>, PgError> {
    rows.iter().map(job_from_row).collect()
}

pub(super) fn event_from_row(row: &Row) -> Result<Event, PgError> {
    let text: String = row.try_get(3)?;
    Ok(Event {
        seq: row.try_get(0)?,
        job_id: row.try_get(1)?,
        at: Time::from_millis(row.try_get(2)?),
        data: serde_json::from_str(&text).map_err(|e| bad("event", e))?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, PgError> {
    serde_json::to_string(value).map_err(|e| PgError::Store(StoreError::Internal(e.to_string())))
}

/// Runs a query through the connection's statement cache (one round trip once prepared).
pub(super) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

/// Runs a statement through the connection's statement cache; returns the rows it changed.
pub(super) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// What happens to one job's row by the end of a transaction.
enum RowOp {
    Insert(Job),
    Update(Job),
    Delete,
}

/// The changes of one transaction: events in the order they happened, the final row of each
/// job touched, and what to announce.
pub(super) struct Writes {
    events: Vec<(Uuid, Time, EventData)>,
    order: Vec<Uuid>,
    rows: HashMap<Uuid, RowOp>,
    /// A job became leasable, or a running job stopped (a concurrency slot freed).
    pub(super) wake: bool,
    /// The earliest moment something written here becomes due (run_at, lease expiry).
    pub(super) due: Option<Time>,
    /// A queue's settings or pause changed: every node forgets its cached queue settings.
    pub(super) queues_changed: bool,
    /// How many store calls this transaction carries (more than one when grouped).
    pub(super) calls: usize,
    /// The job changes, reported after the commit (`observe.rs`).
    tally: Tally,
}

impl Default for Writes {
    fn default() -> Writes {
        Writes {
            events: Vec::new(),
            order: Vec::new(),
            rows: HashMap::new(),
            wake: false,
            due: None,
            queues_changed: false,
            calls: 1,
            tally: Tally::default(),
        }
    }
}

impl Writes {
    /// Records one job change (`before` → `after`, `None` for created / deleted).
    pub(super) fn record(
        &mut self,
        before: Option<&Job>,
        after: Option<&Job>,
        events: Vec<EventData>,
        now: Time,
    ) {
        let Some(id) = before.or(after).map(|j| j.id) else {
            return;
        };
        self.tally.note(before, after, &events, now);
        self.events.extend(events.into_iter().map(|e| (id, now, e)));
        let op = match (before, after) {
            (_, None) => Some(RowOp::Delete),
            (None, Some(a)) => Some(RowOp::Insert(a.clone())),
            (Some(_), Some(a)) => Some(RowOp::Update(a.clone())),
        };
        let previous = self.rows.remove(&id);
        if previous.is_none() {
            self.order.push(id);
        }
        let op = match (previous, op) {
            // Created and changed in this transaction: still an insert, of the final row.
            (Some(RowOp::Insert(_)), Some(RowOp::Update(a))) => Some(RowOp::Insert(a)),
            // Created and deleted in this transaction: no row at all.
            (Some(RowOp::Insert(_)), Some(RowOp::Delete)) => None,
            (_, op) => op,
        };
        if let Some(op) = op {
            self.rows.insert(id, op);
        }
        let was = before.map(|j| j.state);
        let is = after.map(|j| j.state);
        self.wake |= is == Some(State::Available) && was != Some(State::Available);
        self.wake |= was == Some(State::Running) && is != Some(State::Running);
        if let Some(a) = after {
            let due = match a.state {
                State::Scheduled => Some(a.run_at),
                State::Running => a.lease.as_ref().map(|l| l.expires_at),
                _ => None,
            };
            self.due_at(due);
        }
    }

    /// Appends events exactly as given (their own time and job; an import).
    pub(super) fn events_as_given(&mut self, events: &[Event]) {
        self.events
            .extend(events.iter().map(|e| (e.job_id, e.at, e.data.clone())));
    }

    pub(super) fn due_at(&mut self, at: Option<Time>) {
        if let Some(at) = at {
            self.due = Some(self.due.map_or(at, |d| d.min(at)));
        }
    }

    /// Writes every recorded change so far in one statement (later statements of the
    /// transaction see it). Without an explicit transaction, the statement is its own: atomic,
    /// and committed when it returns.
    pub(super) async fn flush(&mut self, c: &impl GenericClient) -> Result<(), PgError> {
        if self.order.is_empty() && self.events.is_empty() {
            return Ok(());
        }
        let mut deletes = Vec::new();
        let mut inserts = Columns::default();
        let mut updates = Columns::default();
        for id in self.order.drain(..) {
            match self.rows.remove(&id) {
                Some(RowOp::Insert(j)) => inserts.push(&j)?,
                Some(RowOp::Update(j)) => updates.push(&j)?,
                Some(RowOp::Delete) => deletes.push(id),
                None => {}
            }
        }
        let mut ev = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, at, e) in self.events.drain(..) {
            ev.0.push(id);
            ev.1.push(at.as_millis());
            ev.2.push(e.type_name().to_owned());
            ev.3.push(to_json(&e)?);
        }
        // Only the parts with rows: a smaller statement plans faster (plans are custom, see
        // `schema.rs`), and each shape is prepared once per connection.
        let i = &inserts;
        let u = &updates;
        let mut parts: Vec<String> = Vec::with_capacity(4);
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(40);
        if !deletes.is_empty() {
            parts.push(format!(
                "d AS (DELETE FROM jobs WHERE id = ANY(${}::uuid[]))",
                params.len() + 1
            ));
            params.push(&deletes);
        }
        if !i.id.is_empty() {
            parts.push(format!(
                "i AS (INSERT INTO jobs (id, queue, kind, payload, state, priority, attempt, max_attempts, timeout_ms, \
                 backoff, run_at, created_at, updated_at, finished_at, idempotency_key, tags, last_error, result, \
                 lease_token_hash, lease_expires_at, lease_worker, lease_leased_at, traceparent) \
                 SELECT u.id, u.queue, u.kind, u.payload::json, u.state, u.priority, u.attempt, u.max_attempts, \
                 u.timeout_ms, u.backoff::json, u.run_at, u.created_at, u.updated_at, u.finished_at, u.key, \
                 ARRAY(SELECT json_array_elements_text(u.tags::json)), u.last_error::json, u.result::json, \
                 u.lease_hash, u.lease_expires, u.lease_worker, u.leased_at, u.traceparent \
                 FROM unnest({}) AS u(id, queue, kind, payload, state, priority, attempt, max_attempts, timeout_ms, \
                 backoff, run_at, created_at, updated_at, finished_at, key, tags, last_error, result, lease_hash, \
                 lease_expires, lease_worker, leased_at, traceparent))",
                placeholders(params.len(), INSERT_TYPES)
            ));
            params.extend_from_slice(&[
                &i.id,
                &i.queue,
                &i.kind,
                &i.payload,
                &i.state,
                &i.priority,
                &i.attempt,
                &i.max_attempts,
                &i.timeout,
                &i.backoff,
                &i.run_at,
                &i.created,
                &i.updated,
                &i.finished,
                &i.key,
                &i.tags,
                &i.last_error,
                &i.result,
                &i.lease_hash,
                &i.lease_expires,
                &i.lease_worker,
                &i.leased_at,
                &i.traceparent,
            ]);
        }
        if !u.id.is_empty() {
            parts.push(format!(
                "u AS (UPDATE jobs SET state = u.state, attempt = u.attempt, run_at = u.run_at, updated_at = u.updated_at, \
                 finished_at = u.finished_at, last_error = u.last_error::json, result = u.result::json, \
                 lease_token_hash = u.lease_hash, lease_expires_at = u.lease_expires, lease_worker = u.lease_worker, \
                 lease_leased_at = u.leased_at \
                 FROM unnest({}) AS u(id, state, attempt, run_at, updated_at, finished_at, last_error, result, \
                 lease_hash, lease_expires, lease_worker, leased_at) WHERE jobs.id = u.id)",
                placeholders(params.len(), UPDATE_TYPES)
            ));
            params.extend_from_slice(&[
                &u.id,
                &u.state,
                &u.attempt,
                &u.run_at,
                &u.updated,
                &u.finished,
                &u.last_error,
                &u.result,
                &u.lease_hash,
                &u.lease_expires,
                &u.lease_worker,
                &u.leased_at,
            ]);
        }
        if !ev.0.is_empty() {
            parts.push(format!(
                "e AS (INSERT INTO events (job_id, at, type, data) \
                 SELECT u.j, u.a, u.t, u.d::json FROM unnest({}) AS u(j, a, t, d))",
                placeholders(params.len(), EVENT_TYPES)
            ));
            params.extend_from_slice(&[&ev.0, &ev.1, &ev.2, &ev.3]);
        }
        execute(c, &format!("WITH {} SELECT 1", parts.join(", ")), &params).await?;
        Ok(())
    }

    /// Writes the rest and commits, then announces what changed (`announce`).
    pub(super) async fn commit(
        mut self,
        tx: deadpool_postgres::Transaction<'_>,
        shared: &Shared,
    ) -> Result<(), PgError> {
        self.flush(&tx).await?;
        let committing = Instant::now();
        tx.commit().await?;
        observe::commit("postgres", self.calls, committing.elapsed());
        self.announce(shared);
        Ok(())
    }

    /// Writes everything as one statement outside any transaction (atomic on its own), for a
    /// call whose reads needed no transaction, then announces what changed.
    pub(super) async fn commit_alone(mut self, c: &Client, shared: &Shared) -> Result<(), PgError> {
        let committing = Instant::now();
        self.flush(c).await?;
        observe::commit("postgres", self.calls, committing.elapsed());
        self.announce(shared);
        Ok(())
    }

    /// After commit: this node's waiters wake and its due time drops at once, and the other
    /// nodes are told through the notifier (`listen.rs`). The notification is sent after the
    /// commit, not inside the transaction: `NOTIFY` takes a database-wide lock from commit until
    /// the commit's WAL flush ends, which would serialize every writing transaction's fsync.
    fn announce(&mut self, shared: &Shared) {
        self.tally.emit();
        if self.queues_changed {
            shared.forget_queues();
        }
        if self.wake {
            shared.wake();
        }
        if let Some(due) = self.due {
            shared.hint_due(due);
        }
        shared.publish(self.wake, self.due, self.queues_changed);
    }
}

const INSERT_TYPES: &[&str] = &[
    "uuid", "text", "text", "text", "text", "int", "int", "int", "bigint", "text", "bigint",
    "bigint", "bigint", "bigint", "text", "text", "text", "text", "text", "bigint", "text",
    "bigint", "text",
];
const UPDATE_TYPES: &[&str] = &[
    "uuid", "text", "int", "bigint", "bigint", "bigint", "text", "text", "text", "bigint", "text",
    "bigint",
];
const EVENT_TYPES: &[&str] = &["uuid", "bigint", "text", "text"];

/// `$n::type[], …` for parameters numbered after the first `before`.
fn placeholders(before: usize, types: &[&str]) -> String {
    types
        .iter()
        .enumerate()
        .map(|(k, t)| format!("${}::{t}[]", before + k + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns of jobs to insert or update, one array per column.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    state: Vec<&'static str>,
    priority: Vec<i32>,
    attempt: Vec<i32>,
    max_attempts: Vec<i32>,
    timeout: Vec<i64>,
    backoff: Vec<String>,
    run_at: Vec<i64>,
    created: Vec<i64>,
    updated: Vec<i64>,
    finished: Vec<Option<i64>>,
    key: Vec<Option<String>>,
    tags: Vec<String>,
    last_error: Vec<Option<String>>,
    result: Vec<Option<String>>,
    lease_hash: Vec<Option<String>>,
    lease_expires: Vec<Option<i64>>,
    lease_worker: Vec<Option<String>>,
    leased_at: Vec<Option<i64>>,
    traceparent: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, j: &Job) -> Result<(), PgError> {
        self.id.push(j.id);
        self.queue.push(j.queue.clone());
        self.kind.push(j.kind.clone());
        self.payload.push(j.payload.get().to_owned());
        self.state.push(j.state.as_str());
        self.priority.push(j.priority);
        self.attempt.push(j.attempt as i32);
        self.max_attempts.push(j.max_attempts as i32);
        self.timeout.push(j.timeout_ms);
        self.backoff.push(to_json(&j.backoff)?);
        self.run_at.push(j.run_at.as_millis());
        self.created.push(j.created_at.as_millis());
        self.updated.push(j.updated_at.as_millis());
        self.finished.push(j.finished_at.map(Time::as_millis));
        self.key.push(j.idempotency_key.clone());
        self.tags.push(to_json(&j.tags)?);
        self.last_error
            .push(j.last_error.as_ref().map(to_json).transpose()?);
        self.result
            .push(j.result.as_ref().map(|r| r.get().to_owned()));
        let lease = j.lease.as_ref();
        self.lease_hash.push(lease.map(|l| l.token_hash.clone()));
        self.lease_expires
            .push(lease.map(|l| l.expires_at.as_millis()));
        self.lease_worker.push(lease.and_then(|l| l.worker.clone()));
        self.leased_at.push(lease.map(|l| l.leased_at.as_millis()));
        self.traceparent.push(j.traceparent.clone());
        Ok(())
    }
}

pub(super) async fn get_job(c: &impl GenericClient, id: Uuid) -> Result<Option<Job>, PgError> {
    let rows = query(
        c,
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
        &[&id],
    )
    .await?;
    rows.first().map(job_from_row).transpose()
}

/// Jobs by id, locked for update (in id order, so two callers never lock in opposite orders).
pub(super) async fn lock_jobs(
    c: &impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Job>, PgError> {
    let rows = query(
        c,
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE"),
        &[&ids],
    )
    .await?;
    rows.iter()
        .map(|r| job_from_row(r).map(|j| (j.id, j)))
        .collect()
}

/// A scope pattern (queue-name characters and `*`) as a `LIKE` pattern; `tests/glob_agrees.rs`
/// checks PostgreSQL's `LIKE` then agrees with `keel_core::access::glob_match`.
pub fn glob_to_like(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    for c in pattern.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn list_jobs(
    c: &impl GenericClient,
    filter: &JobFilter,
) -> Result<JobPage, PgError> {
    let limit = filter.limit.max(1);
    let scope: Option<Vec<String>> = filter
        .scope
        .patterns()
        .map(|p| p.iter().map(|g| glob_to_like(g)).collect());
    let rows = query(
            c,
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2) \
                 AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR id < $4) AND ($5::text IS NULL OR $5 = ANY(tags)) \
                 AND ($7::text[] IS NULL OR queue LIKE ANY($7)) ORDER BY id DESC LIMIT $6"
            ),
            &[
                &filter.queue,
                &filter.state.map(State::as_str),
                &filter.kind,
                &filter.before,
                &filter.tag,
                &((limit + 1) as i64),
                &scope,
            ],
        )
        .await?;
    let jobs = jobs_from_rows(&rows)?;
    Ok(JobPage::from_overfetched(jobs, limit))
}

pub(super) async fn events_of(c: &impl GenericClient, id: Uuid) -> Result<Vec<Event>, PgError> {
    let rows = query(
        c,
        "SELECT seq, job_id, at, data::text FROM events WHERE job_id = $1 ORDER BY seq",
        &[&id],
    )
    .await?;
    rows.iter().map(event_from_row).collect()
}

pub(super) async fn export_jobs(
    c: &impl GenericClient,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<Job>, PgError> {
    let rows = query(
        c,
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE $1::uuid IS NULL OR id > $1 ORDER BY id LIMIT $2"
        ),
        &[&after, &(limit as i64)],
    )
    .await?;
    jobs_from_rows(&rows)
}

pub(super) async fn export_events(
    c: &impl GenericClient,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<Event>, PgError> {
    let rows = query(
        c,
        "SELECT seq, job_id, at, data::text FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        &[&after_seq, &(limit as i64)],
    )
    .await?;
    rows.iter().map(event_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::glob_to_like;

    #[test]
    fn globs_become_like_patterns_with_like_specials_escaped() {
        assert_eq!(glob_to_like("billing.*"), "billing.%");
        assert_eq!(glob_to_like("a_b*"), "a\\_b%");
        assert_eq!(glob_to_like("*"), "%");
    }
}
