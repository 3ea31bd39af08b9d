//! How a `Job` and an `Event` map to SQLite rows, shared by the writer and the readers so the
//! two can never disagree on a column.

use keel_core::{Event, EventData, Job, JobError, Json, Lease, State, Time};
use rusqlite::types::Type;
use rusqlite::{Row, params};
use uuid::Uuid;

pub(crate) const JOB_COLUMNS: &str = "id, queue, kind, payload, state, priority, attempt, max_attempts, \
    timeout_ms, backoff, run_at, created_at, updated_at, finished_at, idempotency_key, tags, last_error, \
    result, lease_token_hash, lease_expires_at, lease_worker, lease_leased_at, traceparent";

pub(crate) const INSERT_JOB: &str = "INSERT INTO jobs (id, queue, kind, payload, state, priority, attempt, \
    max_attempts, timeout_ms, backoff, run_at, created_at, updated_at, finished_at, idempotency_key, tags, \
    last_error, result, lease_token_hash, lease_expires_at, lease_worker, lease_leased_at, traceparent) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)";

/// Only the columns that can change after enqueue, so unchanged indexes are not rewritten.
pub(crate) const UPDATE_JOB: &str = "UPDATE jobs SET state = ?2, attempt = ?3, run_at = ?4, updated_at = ?5, \
    finished_at = ?6, last_error = ?7, result = ?8, lease_token_hash = ?9, lease_expires_at = ?10, \
    lease_worker = ?11, lease_leased_at = ?12 WHERE id = ?1";

fn conversion(col: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, Box::new(e))
}

fn json_col<T: serde::de::DeserializeOwned>(row: &Row, col: usize) -> rusqlite::Result<T> {
    let text: String = row.get(col)?;
    serde_json::from_str(&text).map_err(|e| conversion(col, e))
}

fn raw_col(row: &Row, col: usize) -> rusqlite::Result<Option<Json>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| Json::from_text(t).map_err(|e| conversion(col, e)))
        .transpose()
}

pub(crate) fn uuid_col(row: &Row, col: usize) -> rusqlite::Result<Uuid> {
    let bytes: [u8; 16] = row.get(col)?;
    Ok(Uuid::from_bytes(bytes))
}

pub(crate) fn state_col(row: &Row, col: usize) -> rusqlite::Result<State> {
    let text: String = row.get(col)?;
    State::parse(&text).ok_or_else(|| {
        conversion(
            col,
            std::io::Error::other(format!("unknown state {text:?}")),
        )
    })
}

/// Reads a job from a row selected with `JOB_COLUMNS`.
pub(crate) fn job_from_row(row: &Row) -> rusqlite::Result<Job> {
    let last_error: Option<String> = row.get(16)?;
    let lease_hash: Option<String> = row.get(18)?;
    let lease_expires: Option<i64> = row.get(19)?;
    let leased_at: Option<i64> = row.get(21)?;
    Ok(Job {
        id: uuid_col(row, 0)?,
        queue: row.get(1)?,
        kind: row.get(2)?,
        payload: raw_col(row, 3)?.unwrap_or_else(Json::null),
        state: state_col(row, 4)?,
        priority: row.get(5)?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        timeout_ms: row.get(8)?,
        backoff: json_col(row, 9)?,
        run_at: Time::from_millis(row.get(10)?),
        created_at: Time::from_millis(row.get(11)?),
        updated_at: Time::from_millis(row.get(12)?),
        finished_at: row.get::<_, Option<i64>>(13)?.map(Time::from_millis),
        idempotency_key: row.get(14)?,
        tags: json_col(row, 15)?,
        last_error: last_error
            .map(|t| serde_json::from_str::<JobError>(&t).map_err(|e| conversion(16, e)))
            .transpose()?,
        result: raw_col(row, 17)?,
        traceparent: row.get(22)?,
        lease: match (lease_hash, lease_expires) {
            (Some(token_hash), Some(expires_at)) => Some(Lease {
                token_hash,
                leased_at: Time::from_millis(leased_at.unwrap_or(expires_at)),
                expires_at: Time::from_millis(expires_at),
                worker: row.get(20)?,
            }),
            _ => None,
        },
    })
}

/// Inserts a new job's row.
pub(crate) fn insert_job(conn: &rusqlite::Connection, job: &Job) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(INSERT_JOB)?;
    let lease = job.lease.as_ref();
    stmt.execute(params![
        job.id.into_bytes(),
        job.queue,
        job.kind,
        job.payload.get(),
        job.state.as_str(),
        job.priority,
        job.attempt,
        job.max_attempts,
        job.timeout_ms,
        to_json(&job.backoff)?,
        job.run_at.as_millis(),
        job.created_at.as_millis(),
        job.updated_at.as_millis(),
        job.finished_at.map(Time::as_millis),
        job.idempotency_key,
        to_json(&job.tags)?,
        job.last_error.as_ref().map(to_json).transpose()?,
        job.result.as_ref().map(Json::get),
        lease.map(|l| &l.token_hash),
        lease.map(|l| l.expires_at.as_millis()),
        lease.and_then(|l| l.worker.as_ref()),
        lease.map(|l| l.leased_at.as_millis()),
        job.traceparent,
    ])?;
    Ok(())
}

/// Writes the mutable columns of an existing job's row.
pub(crate) fn update_job(conn: &rusqlite::Connection, job: &Job) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(UPDATE_JOB)?;
    let lease = job.lease.as_ref();
    stmt.execute(params![
        job.id.into_bytes(),
        job.state.as_str(),
        job.attempt,
        job.run_at.as_millis(),
        job.updated_at.as_millis(),
        job.finished_at.map(Time::as_millis),
        job.last_error.as_ref().map(to_json).transpose()?,
        job.result.as_ref().map(Json::get),
        lease.map(|l| &l.token_hash),
        lease.map(|l| l.expires_at.as_millis()),
        lease.and_then(|l| l.worker.as_ref()),
        lease.map(|l| l.leased_at.as_millis()),
    ])?;
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Reads an event from `seq, job_id, at, data`; `data` holds the tagged event
/// (`{"type": ..., "data": {...}}`), so one parse gives the `EventData`.
pub(crate) fn event_from_row(row: &Row) -> rusqlite::Result<Event> {
    let seq: i64 = row.get(0)?;
    let job_id = uuid_col(row, 1)?;
    let at = Time::from_millis(row.get(2)?);
    let text: String = row.get(3)?;
    let data: EventData = serde_json::from_str(&text).map_err(|e| conversion(3, e))?;
    Ok(Event {
        seq,
        job_id,
        at,
        data,
    })
}

/// Appends an event. `type` is kept in its own column for filtering.
pub(crate) fn insert_event(
    conn: &rusqlite::Connection,
    job_id: Uuid,
    at: Time,
    data: &EventData,
) -> rusqlite::Result<()> {
    let body = to_json(data)?;
    let mut stmt =
        conn.prepare_cached("INSERT INTO events (job_id, at, type, data) VALUES (?1, ?2, ?3, ?4)")?;
    stmt.execute(params![
        job_id.into_bytes(),
        at.as_millis(),
        data.type_name(),
        body
    ])?;
    Ok(())
}
