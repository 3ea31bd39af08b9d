//! How a `Job` and an `Event` map to SQLite rows, shared by the writer and the readers so the
//! two can never disagree on a column.

use keel_core::{Backoff, Event, EventData, Job, JobError, Json, Lease, State, Time};
use rusqlite::types::Type;
use rusqlite::{Row, params};
use uuid::Uuid;

use super::enqueued;

pub(crate) const JOB_COLUMNS: &str = "id, queue, kind, payload, state, priority, attempt, max_attempts, \
    timeout_ms, backoff, run_at, created_at, updated_at, finished_at, idempotency_key, tags, last_error, \
    result, lease_token_hash, lease_expires_at, lease_worker, lease_leased_at, traceparent";

/// One job by id, with `JOB_COLUMNS` (built once: the writer loads a job per lease and per ack).
pub(crate) static SELECT_JOB: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"));

/// One job by id with its rowid after `JOB_COLUMNS` (the writer's read: it updates by rowid).
pub(crate) static LOAD_JOB: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {JOB_COLUMNS}, rowid FROM jobs WHERE id = ?1"));

/// The column of `LOAD_JOB` that holds the rowid.
pub(crate) const LOAD_JOB_ROWID: usize = 23;

/// Only the columns that can change after enqueue, so unchanged indexes are not rewritten. The
/// row is found by its rowid (a search of the table's integer keys), not by searching the id
/// index; `id = ?1` is checked on the row found, so a wrong rowid changes nothing.
const UPDATE_JOB: &str = "UPDATE jobs SET state = ?2, attempt = ?3, run_at = ?4, updated_at = ?5, \
    finished_at = ?6, last_error = ?7, result = ?8, lease_token_hash = ?9, lease_expires_at = ?10, \
    lease_worker = ?11, lease_leased_at = ?12 WHERE rowid = ?13 AND id = ?1";

/// `UPDATE_JOB` without `finished_at`, for every change that keeps it: all but a job's finish and
/// its replay. SQLite maintains an index only when the SET names one of its columns or a column of
/// its WHERE, so a lease, a heartbeat or a retry's backoff leave `jobs_queue_live` (partial on
/// `finished_at IS NULL`) alone (migration 6).
const UPDATE_JOB_SAME_FINISH: &str = "UPDATE jobs SET state = ?2, attempt = ?3, run_at = ?4, \
    updated_at = ?5, last_error = ?7, result = ?8, lease_token_hash = ?9, lease_expires_at = ?10, \
    lease_worker = ?11, lease_leased_at = ?12 WHERE rowid = ?13 AND id = ?1";

/// Jobs by queue and state. Unfinished jobs are found through `jobs_queue_live` (queue, id) and
/// finished ones through `jobs_queue_state_finished` (queue, state, finished_at), both partial
/// on `finished_at`, which is set exactly when a job is finished (keel-core's state machine).
/// SQLite uses a partial index only for a query whose WHERE names its condition, so each of these
/// does; `tests::queries_by_state_search_their_index` holds every one to its plan.
///
/// Counts of a queue's unfinished jobs (scheduled, available, running) and when its
/// longest-waiting available job became due, in one pass over them: `GROUP BY state` would sort
/// every row, since this index is not in state order.
pub(crate) const COUNT_LIVE: &str = "SELECT count(*) FILTER (WHERE state = 'scheduled'), \
    count(*) FILTER (WHERE state = 'available'), count(*) FILTER (WHERE state = 'running'), \
    min(run_at) FILTER (WHERE state = 'available') \
    FROM jobs WHERE queue = ?1 AND finished_at IS NULL";
/// Counts of a queue's finished jobs by state.
pub(crate) const COUNT_FINISHED: &str =
    "SELECT state, count(*) FROM jobs WHERE queue = ?1 AND finished_at IS NOT NULL GROUP BY state";
/// Ids of a queue's unfinished jobs in one state (?2), optionally of one kind (?3), oldest first.
pub(crate) const IDS_LIVE: &str = "SELECT id FROM jobs WHERE queue = ?1 AND finished_at IS NULL \
    AND state = ?2 AND (?3 IS NULL OR kind = ?3) ORDER BY id LIMIT ?4";
/// Ids of a queue's finished jobs in one state (?2), optionally of one kind (?3), earliest
/// finished first.
pub(crate) const IDS_FINISHED: &str = "SELECT id FROM jobs WHERE queue = ?1 AND state = ?2 \
    AND finished_at IS NOT NULL AND (?3 IS NULL OR kind = ?3) ORDER BY finished_at LIMIT ?4";
/// Ids of a queue's jobs finished in one state (?2) before ?3 (retention).
pub(crate) const IDS_FINISHED_BEFORE: &str = "SELECT id FROM jobs WHERE queue = ?1 AND state = ?2 \
    AND finished_at IS NOT NULL AND finished_at < ?3 LIMIT ?4";

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

/// The backoff column. Rows nearly always share their queue's retry settings, so the text
/// last parsed on this thread is remembered with its value: parsing its float was ~1.5% of
/// the writer's instructions when leasing. The memo's key is the whole text.
fn backoff_col(row: &Row, col: usize) -> rusqlite::Result<Backoff> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(String, Backoff)>> =
            const { std::cell::RefCell::new(None) };
    }
    let text = row.get_ref(col)?.as_str().map_err(|e| conversion(col, e))?;
    LAST.with_borrow_mut(|last| {
        if let Some((seen, backoff)) = last.as_ref()
            && seen == text
        {
            return Ok(*backoff);
        }
        let backoff: Backoff = serde_json::from_str(text).map_err(|e| conversion(col, e))?;
        *last = Some((text.to_owned(), backoff));
        Ok(backoff)
    })
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
        backoff: backoff_col(row, 9)?,
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

static INSERT_JOBS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    CHUNKS.map(|rows| multi_row_insert_sql(&format!("jobs ({JOB_COLUMNS})"), JOB_PARAMS, rows))
});
/// Columns of `JOB_COLUMNS`, bound in that order by `bind_job`.
const JOB_PARAMS: usize = 23;

/// Inserts new jobs' rows in multi-row statements: one statement-cache lookup and one
/// statement per chunk instead of per job (an enqueue's rows are written when it is done).
/// Returns each row's rowid, in the order of `jobs` (`insert_chunked`).
pub(crate) fn insert_jobs(
    conn: &rusqlite::Connection,
    jobs: &[&Job],
) -> rusqlite::Result<Vec<i64>> {
    // The jobs of a batch nearly always share their retry settings, whose text (floats) took
    // 4% of the writer's instructions when written out per job.
    let mut backoff: Option<(Backoff, String)> = None;
    insert_chunked(conn, jobs, &INSERT_JOBS, JOB_PARAMS, |stmt, at, job| {
        let text = match &backoff {
            Some((same, text)) if *same == job.backoff => text,
            _ => &backoff.insert((job.backoff, to_json(&job.backoff)?)).1,
        };
        bind_job(stmt, at, job, text)
    })
}

/// Binds one job's `JOB_COLUMNS` values at parameters `at + 1 ..= at + JOB_PARAMS`;
/// `backoff` is the text of `job.backoff`.
fn bind_job(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    job: &Job,
    backoff: &str,
) -> rusqlite::Result<()> {
    let lease = job.lease.as_ref();
    let values: [&dyn rusqlite::ToSql; JOB_PARAMS] = [
        &job.id.into_bytes(),
        &job.queue,
        &job.kind,
        &job.payload.get(),
        &job.state.as_str(),
        &job.priority,
        &job.attempt,
        &job.max_attempts,
        &job.timeout_ms,
        &backoff,
        &job.run_at.as_millis(),
        &job.created_at.as_millis(),
        &job.updated_at.as_millis(),
        &job.finished_at.map(Time::as_millis),
        &job.idempotency_key,
        &to_json(&job.tags)?,
        &job.last_error.as_ref().map(to_json).transpose()?,
        &job.result.as_ref().map(Json::get),
        &lease.map(|l| &l.token_hash),
        &lease.map(|l| l.expires_at.as_millis()),
        &lease.and_then(|l| l.worker.as_ref()),
        &lease.map(|l| l.leased_at.as_millis()),
        &job.traceparent,
    ];
    bind_set(stmt, at, &values)
}

/// Binds `values` at parameters `at + 1 ..` and leaves those that are NULL unbound.
///
/// Precondition: every parameter of `stmt` is NULL, which holds for a statement just taken from
/// `prepare_cached` (rusqlite clears the bindings of a statement as it goes back into the
/// cache, and a new one starts with none) that has not been bound since. A new job's row and
/// each change of a job carry 3-9 NULLs of 12-23 values, and binding one cost ~120
/// instructions: 3.6% of the writer's work per batched job (docs/performance.md).
/// `rows::tests::null_values_left_unbound_read_back_as_null` fails if the precondition stops
/// holding.
fn bind_set(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};
    for (i, v) in values.iter().enumerate() {
        let value = v.to_sql()?;
        if !matches!(
            value,
            ToSqlOutput::Borrowed(ValueRef::Null) | ToSqlOutput::Owned(Value::Null)
        ) {
            stmt.raw_bind_parameter(at + i + 1, value)?;
        }
    }
    Ok(())
}

/// Inserts a new job's row (the one-row statement of `insert_jobs`).
pub(crate) fn insert_job(conn: &rusqlite::Connection, job: &Job) -> rusqlite::Result<()> {
    insert_jobs(conn, &[job]).map(drop)
}

/// Writes the mutable columns of an existing job's row, `rowid` (from `LOAD_JOB`, or kept with
/// the writer's copy). `finished_before` is the row's `finished_at` before the change: when it
/// stays, the column is left out of the statement. A rowid that is not this job's row is an
/// error, and changes nothing.
pub(crate) fn update_job(
    conn: &rusqlite::Connection,
    job: &Job,
    rowid: i64,
    finished_before: Option<Time>,
) -> rusqlite::Result<()> {
    let same_finish = job.finished_at == finished_before;
    let mut stmt = conn.prepare_cached(if same_finish {
        UPDATE_JOB_SAME_FINISH
    } else {
        UPDATE_JOB
    })?;
    let lease = job.lease.as_ref();
    bind_set(
        &mut stmt,
        0,
        params![
            job.id.into_bytes(),
            job.state.as_str(),
            job.attempt,
            job.run_at.as_millis(),
            job.updated_at.as_millis(),
            // ?6 is not in UPDATE_JOB_SAME_FINISH; unbound, as NULL is.
            job.finished_at
                .filter(|_| !same_finish)
                .map(Time::as_millis),
            job.last_error.as_ref().map(to_json).transpose()?,
            job.result.as_ref().map(Json::get),
            lease.map(|l| &l.token_hash),
            lease.map(|l| l.expires_at.as_millis()),
            lease.and_then(|l| l.worker.as_ref()),
            lease.map(|l| l.leased_at.as_millis()),
            rowid,
        ],
    )?;
    let changed = stmt.raw_execute()?;
    match changed {
        1 => Ok(()),
        n => Err(rusqlite::Error::StatementChangedRows(n)),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// The columns `event_from_row` reads.
pub(crate) const EVENT_COLUMNS: &str = "seq, job_id, at, type, data";

/// An event's stored text: the tagged event (`{"type": ..., "data": {...}}`), except that an
/// `enqueued` event leaves out of its job what the row already says (`enqueued.rs`). Serialised
/// into a buffer sized for it up front (growing it step by step showed in the writer's profile).
fn event_json(job_id: Uuid, at: Time, data: &EventData) -> rusqlite::Result<String> {
    let to_sql = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let room = match data {
        EventData::Enqueued { job } => return enqueued::encode(job, job_id, at).map_err(to_sql),
        EventData::Completed { result: Some(r) } => 64 + r.get().len(),
        EventData::Failed { error, .. } => 128 + error.message.len(),
        _ => 160,
    };
    let mut buf = Vec::with_capacity(room);
    serde_json::to_writer(&mut buf, data).map_err(to_sql)?;
    String::from_utf8(buf).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Reads an event from `EVENT_COLUMNS`; one parse of `data` gives the `EventData`.
pub(crate) fn event_from_row(row: &Row) -> rusqlite::Result<Event> {
    let seq: i64 = row.get(0)?;
    let job_id = uuid_col(row, 1)?;
    let at = Time::from_millis(row.get(2)?);
    let text: String = row.get(4)?;
    let data = if row.get_ref(3)?.as_str()? == "enqueued" {
        enqueued::decode(&text, job_id, at)
    } else {
        serde_json::from_str(&text)
    }
    .map_err(|e| conversion(4, e))?;
    Ok(Event {
        seq,
        job_id,
        at,
        data,
    })
}

/// Events written by the writer, in the order they happened, waiting to be inserted.
///
/// Each change's events are pushed here and inserted by `flush` with multi-row `INSERT`s (one
/// statement per up to 64 events instead of one per event: each statement costs a VM start and,
/// for the `AUTOINCREMENT` key, a read and a write of `sqlite_sequence`). The writer flushes before
/// its group commits (and earlier once `EVENTS_HELD` wait) and before deleting events, inside the
/// group's transaction, so an event is never missing from a commit that holds its job's row, and
/// `seq` follows push order.
#[derive(Default)]
pub(crate) struct EventBuffer {
    rows: Vec<(Uuid, Time, &'static str, String)>,
}

/// Statement sizes of the multi-row inserts, largest first: any count is a sum of these, and the
/// statement cache holds one statement per size.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// `INSERT OR FAIL INTO {into} VALUES (?1, …), …`: `rows` rows of `width` parameters each.
///
/// `OR FAIL`: a multi-row `INSERT` that may abort halfway makes SQLite keep a statement journal
/// (a copy of every page the statement touches, 4% of the writer's time in batch enqueue) to
/// undo its own first rows; these statements cannot conflict, and any failure (a full disk)
/// rolls the whole group back anyway, so nothing needs undoing one statement at a time.
fn multi_row_insert_sql(into: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT OR FAIL INTO {into} VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", i * width + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Inserts `rows` in order, in statements of the `CHUNKS` sizes (`sqls` holds one per size);
/// `bind` binds one row at the parameter offset given. Returns each row's rowid, in order.
fn insert_chunked<T>(
    conn: &rusqlite::Connection,
    rows: &[T],
    sqls: &[String; 4],
    width: usize,
    mut bind: impl FnMut(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<Vec<i64>> {
    let mut rowids = Vec::with_capacity(rows.len());
    let mut rest = rows;
    for (size, sql) in CHUNKS.iter().zip(sqls) {
        while rest.len() >= *size {
            let (chunk, tail) = rest.split_at(*size);
            let mut stmt = conn.prepare_cached(sql)?;
            for (i, row) in chunk.iter().enumerate() {
                bind(&mut stmt, i * width, row)?;
            }
            stmt.raw_execute()?;
            // SQLite inserts a statement's rows in order and, as none names its rowid, gives
            // each one more than the largest rowid before it: the chunk's rows are the `size`
            // rowids ending at the connection's last insert. (`update_job` checks the id on the
            // row a rowid finds, so a wrong one could fail a group, never change another job.)
            let last = conn.last_insert_rowid();
            rowids.extend((0..*size as i64).rev().map(|back| last - back));
            rest = tail;
        }
    }
    Ok(rowids)
}

static INSERT_EVENTS: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    CHUNKS.map(|rows| multi_row_insert_sql("events (job_id, at, type, data)", 4, rows))
});

impl EventBuffer {
    /// Serialises an event and queues it. `type` is kept in its own column for filtering.
    pub(crate) fn push(
        &mut self,
        job_id: Uuid,
        at: Time,
        data: &EventData,
    ) -> rusqlite::Result<()> {
        self.rows
            .push((job_id, at, data.type_name(), event_json(job_id, at, data)?));
        Ok(())
    }

    /// Events waiting to be inserted.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Inserts every queued event, in order. The buffer is empty afterwards, also on error (the
    /// writer then rolls the transaction back).
    pub(crate) fn flush(&mut self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        let result = self.insert_all(conn);
        self.rows.clear();
        result
    }

    /// Drops the queued events (their transaction is being rolled back).
    pub(crate) fn clear(&mut self) {
        self.rows.clear();
    }

    fn insert_all(&self, conn: &rusqlite::Connection) -> rusqlite::Result<()> {
        insert_chunked(conn, &self.rows, &INSERT_EVENTS, 4, |stmt, at, row| {
            let (job_id, time, kind, body) = row;
            stmt.raw_bind_parameter(at + 1, job_id.as_bytes().as_slice())?;
            stmt.raw_bind_parameter(at + 2, time.as_millis())?;
            stmt.raw_bind_parameter(at + 3, kind)?;
            stmt.raw_bind_parameter(at + 4, body)
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::QueueConfig;

    fn read(conn: &rusqlite::Connection, id: Uuid) -> Job {
        conn.query_row(&SELECT_JOB, [id.into_bytes()], job_from_row)
            .unwrap()
    }

    /// A job with every column that can be NULL set.
    fn full(n: u128) -> Job {
        let mut new = crate::testing::job("q");
        new.idempotency_key = Some(format!("key-{n}"));
        let mut job = new.into_job(Uuid::from_u128(n), &QueueConfig::default(), Time::EPOCH);
        job.state = State::Running;
        job.finished_at = Some(Time::from_millis(5));
        job.last_error = Some(JobError {
            message: "boom".into(),
            kind: Some("Err".into()),
            attempt: 1,
            at: Time::from_millis(4),
        });
        job.result = Some(Json::from_value(&serde_json::json!({"r": 1})));
        job.lease = Some(Lease {
            token_hash: "ab".repeat(32),
            leased_at: Time::from_millis(2),
            expires_at: Time::from_millis(3),
            worker: Some("w".into()),
        });
        job
    }

    /// A job with every column that can be NULL left NULL.
    fn bare(n: u128) -> Job {
        let mut job = crate::testing::job("q").into_job(
            Uuid::from_u128(n),
            &QueueConfig::default(),
            Time::EPOCH,
        );
        job.traceparent = None;
        job
    }

    /// The writer keeps a copy of each new job with the rowid `insert_jobs` returns and later
    /// updates the row by that rowid (`held.rs`): each must be its row's, in every chunk size,
    /// also after the row with the largest rowid was deleted.
    #[test]
    fn insert_jobs_returns_each_rows_rowid() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, 0).unwrap();
        let mut n = 0;
        let mut check = |conn: &rusqlite::Connection, count: usize| {
            let jobs: Vec<Job> = (0..count)
                .map(|_| {
                    n += 1;
                    bare(n)
                })
                .collect();
            let rowids = insert_jobs(conn, &jobs.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(rowids.len(), count);
            for (job, rowid) in jobs.iter().zip(&rowids) {
                let found: i64 = conn
                    .query_row(
                        "SELECT rowid FROM jobs WHERE id = ?1",
                        [job.id.into_bytes()],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(*rowid, found, "job {n} of {count}");
            }
            rowids
        };
        check(&conn, 1);
        // 64 + 16 + 4 + 1 + 1: every chunk size, and one size twice.
        let rowids = check(&conn, 86);
        conn.execute("DELETE FROM jobs WHERE rowid = ?1", [rowids[85]])
            .unwrap();
        check(&conn, 7);
    }

    /// `bind_set` leaves NULLs unbound, trusting a cached statement to come back with none
    /// bound. Each statement here runs first with every nullable value set and then, taken from
    /// the cache again, with none: a value left over from the first run would show in the second
    /// row read back.
    #[test]
    fn null_values_left_unbound_read_back_as_null() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, 0).unwrap();
        let (a, b) = (full(1), bare(2));
        insert_job(&conn, &a).unwrap();
        insert_job(&conn, &b).unwrap();
        assert_eq!(read(&conn, a.id), a);
        assert_eq!(
            read(&conn, b.id),
            b,
            "an insert kept a value from the one before"
        );

        let rowid = |id: Uuid| -> i64 {
            conn.query_row(
                "SELECT rowid FROM jobs WHERE id = ?1",
                [id.into_bytes()],
                |r| r.get(0),
            )
            .unwrap()
        };
        let (a_row, b_row) = (rowid(a.id), rowid(b.id));
        // Now b gets every value and a none, through the same cached UPDATE.
        let (mut a2, mut b2) = (bare(1), full(2));
        a2.idempotency_key = a.idempotency_key.clone();
        b2.idempotency_key = None;
        update_job(&conn, &b2, b_row, b.finished_at).unwrap();
        update_job(&conn, &a2, a_row, a.finished_at).unwrap();
        // The UPDATE writes only the columns that change after enqueue.
        a2.traceparent = a.traceparent.clone();
        b2.traceparent = None;
        assert_eq!(read(&conn, b.id), b2);
        assert_eq!(
            read(&conn, a.id),
            a2,
            "an update kept a value from the one before"
        );

        // The same through the statement for a change that keeps `finished_at`: b keeps its
        // finish and gets every other value, then a keeps having none.
        let mut b3 = b2.clone();
        b3.attempt = 2;
        update_job(&conn, &b3, b_row, b2.finished_at).unwrap();
        update_job(&conn, &a2, a_row, a2.finished_at).unwrap();
        assert_eq!(read(&conn, b.id), b3);
        assert_eq!(
            read(&conn, a.id),
            a2,
            "an update kept a value from the one before"
        );
    }

    /// One text column of every row `sql` gives, its parameters left unbound.
    fn column(conn: &rusqlite::Connection, sql: &str, col: usize) -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let mut rows = stmt.raw_query();
        let mut out = vec![];
        while let Some(row) = rows.next().unwrap() {
            out.push(row.get(col).unwrap());
        }
        out
    }

    fn plan(conn: &rusqlite::Connection, sql: &str) -> String {
        column(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3).join("; ")
    }

    /// Every query by state searches the index its comment names. SQLite takes a partial index
    /// only when the query's WHERE implies the index's own; one that does not falls back to
    /// reading every job of the store, which no test of results would notice.
    #[test]
    fn queries_by_state_search_their_index() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, 0).unwrap();
        for (sql, index) in [
            (COUNT_LIVE, "jobs_queue_live"),
            (COUNT_FINISHED, "jobs_queue_state_finished"),
            (IDS_LIVE, "jobs_queue_live"),
            (IDS_FINISHED, "jobs_queue_state_finished"),
            (IDS_FINISHED_BEFORE, "jobs_queue_state_finished"),
        ] {
            let plan = plan(&conn, sql);
            assert!(
                plan.starts_with(&format!("SEARCH jobs USING INDEX {index} "))
                    || plan.starts_with(&format!("SEARCH jobs USING COVERING INDEX {index} ")),
                "{sql}\n  plan: {plan}"
            );
            assert!(
                !plan.contains("TEMP B-TREE"),
                "a sort: {sql}\n  plan: {plan}"
            );
        }
    }

    /// Index entries an UPDATE statement may delete and insert (`IdxDelete`, `IdxInsert`).
    fn index_writes(conn: &rusqlite::Connection, sql: &str) -> usize {
        column(conn, &format!("EXPLAIN {sql}"), 1)
            .iter()
            .filter(|op| *op == "IdxDelete" || *op == "IdxInsert")
            .count()
    }

    /// A change that keeps `finished_at` (a lease, a heartbeat, a retry's wait) may write only
    /// the index keyed by state, `jobs_queue_state_finished` (and only for a finished job, so in
    /// practice not at all); `UPDATE_JOB` writes `jobs_queue_live` too.
    #[test]
    fn an_update_that_keeps_the_finish_leaves_the_live_index_alone() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut conn, 0).unwrap();
        assert_eq!(index_writes(&conn, UPDATE_JOB), 4);
        assert_eq!(index_writes(&conn, UPDATE_JOB_SAME_FINISH), 2);
    }

    /// The backoff memo gives back a value only for the very text it parsed: each step changes
    /// the text (by one character, or not at all) and must read as `serde_json` reads it.
    #[test]
    fn a_backoff_column_is_remembered_only_for_its_text() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let texts = [
            r#"{"initial_ms":1000,"max_ms":3600000,"jitter":0.25}"#,
            r#"{"initial_ms":1000,"max_ms":3600000,"jitter":0.25}"#,
            r#"{"initial_ms":1000,"max_ms":3600000,"jitter":0.5}"#,
            r#"{"initial_ms":2000,"max_ms":3600000,"jitter":0.5}"#,
            r#"{"initial_ms":1000,"max_ms":3600000,"jitter":0.25}"#,
        ];
        for text in texts {
            let read = conn
                .query_row("SELECT ?1", [text], |r| backoff_col(r, 0))
                .unwrap();
            assert_eq!(
                read,
                serde_json::from_str::<Backoff>(text).unwrap(),
                "{text}"
            );
        }
        let bad = conn.query_row("SELECT 'nope'", [], |r| backoff_col(r, 0));
        assert!(bad.is_err());
    }
}
