//! The writer thread: the only code that writes the SQLite file.
//!
//! It drains every request waiting on its channel, applies them in one transaction, commits, and
//! hands the answers to the sync thread (`sync.rs`), which sends them once an fsync of the WAL
//! covers the commit; meanwhile the writer takes the next group. Every job change goes
//! through `save`, which appends the events, writes the row and updates, in step, the in-memory
//! index and the copy of the job kept for its next change (`held.rs`). A storage error rolls
//! back the whole group, answers every caller with it, and rebuilds the in-memory state from
//! disk, so memory never holds what the disk does not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use keel_core::lease::{Tokens, token_hash};
use keel_core::{
    Command, Event, EventData, Job, NewJob, QueueConfig, QueueOverrides, Scope, State, Time,
    TokenBucket, step,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::checkpoint::{Nudge, writer_fallback_pages};
use super::held::Held;
use super::index::{Entry, Index};
use super::park::{Parked, ParkedSet};
use super::rows::{
    EventBuffer, IDS_FINISHED, IDS_FINISHED_BEFORE, IDS_LIVE, LOAD_JOB, LOAD_JOB_ROWID, insert_job,
    insert_jobs, job_from_row, update_job, uuid_col,
};
use super::schedules::{self, ArmedSet, load_armed};
use super::sync::{Group, Syncer};
use crate::StoreError;
use crate::observe::Tally;
use crate::rules::{Ids, LiveKeys, Resolved, keys_of, plan_enqueue};
use crate::types::{Enqueued, LeaseRequest, LeasedJob, Outcome, ReplayFilter, Tick};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Request {
    Enqueue {
        jobs: Vec<NewJob>,
        now: Time,
        reply: Reply<Vec<Enqueued>>,
    },
    Lease {
        req: LeaseRequest,
        now: Time,
        reply: Reply<Vec<LeasedJob>>,
    },
    /// A long poll: leases at once, or parks until work arrives or `until` passes (`park.rs`).
    Park {
        req: LeaseRequest,
        now: Time,
        until: Instant,
        reply: Reply<Vec<LeasedJob>>,
    },
    Apply {
        id: Uuid,
        cmd: JobCommand,
        scope: Scope,
        now: Time,
        reply: Reply<Job>,
    },
    Outcomes {
        items: Vec<Outcome>,
        scope: Scope,
        now: Time,
        reply: Reply<Vec<Result<Job, StoreError>>>,
    },
    /// Any other change: runs on the writer inside the group's transaction (admin changes,
    /// tokens, schemas). The closure answers its caller through the returned `Done`.
    Call(Box<dyn FnOnce(&mut Writer) -> Done + Send>),
    Tick {
        now: Time,
        reply: Reply<Tick>,
    },
    Ping {
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
}

/// Single-job commands that arrive over the API.
pub(crate) enum JobCommand {
    Heartbeat { token: String, lease_ms: i64 },
    Cancel,
    Retry,
}

/// Requests drained into one transaction at most; bounds one commit's latency.
const MAX_GROUP: usize = 2_048;
/// An enqueue of at least this many jobs inserts its rows at once; smaller ones wait in
/// `Writer::new_rows` for more, up to this many.
const ROWS_HELD: usize = 64;
/// Events buffered before the writer inserts them ahead of its group's end.
const EVENTS_HELD: usize = 4_096;
/// A queue asked for jobs within this long is being worked: its new available jobs are likely
/// leased soon, so the writer keeps copies of them (`Writer::lease_near`, `held.rs`).
const ASKED_WITHIN_MS: i64 = 30_000;
/// Jobs promoted or expired in one tick at most, so a backlog cannot stall the writer.
const TIMER_BATCH: usize = 5_000;
/// Finished jobs deleted per queue and state in one retention pass.
const RETENTION_BATCH: i64 = 1_000;
const RETENTION_EVERY_MS: i64 = 1_000;

/// A storage failure: the whole group rolls back.
pub(super) struct Fatal(pub(super) StoreError);

impl From<rusqlite::Error> for Fatal {
    fn from(e: rusqlite::Error) -> Fatal {
        Fatal(StoreError::sqlite(e))
    }
}

/// Outer error: the group fails. Inner error: this request fails alone, having written nothing.
pub(super) type Step<T> = Result<Result<T, StoreError>, Fatal>;

/// Sends a caller its answer once the group's fate is known.
pub(crate) type Done = Box<dyn FnOnce(Option<&StoreError>) + Send>;

/// `Writer::lease_near`'s answer for the last queue it looked up, over one run of new rows.
#[derive(Default)]
struct AskedMemo(Option<(String, bool)>);

struct QueueState {
    config: QueueConfig,
    paused: bool,
    /// The rate limit's bucket (memory only: a restart or a failed group starts it full).
    bucket: Option<TokenBucket>,
    /// When a worker last asked this queue for jobs (a lease or a long poll; memory only). The
    /// writer keeps copies of a queue's available jobs only while it is asked (`lease_near`).
    asked_at: Option<Time>,
}

impl QueueState {
    fn new(config: QueueConfig, paused: bool) -> QueueState {
        let bucket = config
            .rate_limit
            .map(|l| TokenBucket::full(&l, Time::EPOCH));
        QueueState {
            config,
            paused,
            bucket,
            asked_at: None,
        }
    }
}

pub(crate) struct Writer {
    pub(super) conn: Connection,
    defaults: QueueConfig,
    idempotency_ttl_ms: i64,
    index: Index,
    /// Copies of jobs just written, so their next change need not read them back (`held.rs`).
    held: Held,
    /// Lease tokens, their randomness drawn for many at a time.
    tokens: Tokens,
    queues: HashMap<String, QueueState>,
    pub(super) schedules: ArmedSet,
    ids: Ids,
    next_retention: Time,
    /// When a rate-limited queue with ready jobs gets its next token: waiters are woken then.
    rate_wake: Option<Time>,
    /// Set when the current group made a job leasable; the signal is sent after commit.
    wake: bool,
    /// Long polls waiting for work, leased to at the end of a group that sets `wake`.
    parked: ParkedSet,
    /// The latest `now` any request brought: the time of a lease made for a parked request.
    now_seen: Time,
    fatal: Option<StoreError>,
    signal: watch::Sender<u64>,
    healthy: Arc<AtomicBool>,
    /// The current group's job changes, reported once it commits (`observe.rs`).
    tally: Tally,
    /// New rows of the group's small enqueues, inserted together (`flush_rows`).
    new_rows: Vec<Job>,
    /// The current group's events, inserted before it commits (`flush_events`).
    events: EventBuffer,
    /// Asks the checkpoint thread to copy the WAL into the database file (`checkpoint.rs`).
    checkpoint: Nudge,
    /// Where each group's answers wait for its fsync (`sync.rs`); after a failed fsync every
    /// later group is refused.
    syncer: Syncer,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        defaults: QueueConfig,
        idempotency_ttl_ms: i64,
        signal: watch::Sender<u64>,
        healthy: Arc<AtomicBool>,
        checkpoint: Nudge,
        syncer: Syncer,
    ) -> Result<Writer, StoreError> {
        // Every statement the writer runs stays prepared (rusqlite keeps 16 by default; the
        // writer has more than that, counting one multi-row event insert per chunk size).
        conn.set_prepared_statement_cache_capacity(64);
        // The checkpoint thread copies the WAL; the writer checkpoints only if it falls behind.
        let page_size: i64 = conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(StoreError::sqlite)?;
        conn.pragma_update(None, "wal_autocheckpoint", writer_fallback_pages(page_size))
            .map_err(StoreError::sqlite)?;
        // COMMIT does not wait for the disk; the syncer does, before anyone is answered.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::sqlite)?;
        let mut writer = Writer {
            conn,
            defaults,
            idempotency_ttl_ms,
            index: Index::default(),
            held: Held::default(),
            tokens: Tokens::new(256),
            queues: HashMap::new(),
            schedules: ArmedSet::new(),
            ids: Ids::new(),
            next_retention: Time::EPOCH,
            rate_wake: None,
            wake: false,
            parked: ParkedSet::default(),
            now_seen: Time::EPOCH,
            fatal: None,
            signal,
            healthy,
            tally: Tally::default(),
            new_rows: Vec::new(),
            events: EventBuffer::default(),
            checkpoint,
            syncer,
        };
        writer.reload().map_err(|f| f.0)?;
        Ok(writer)
    }

    /// Rebuilds the in-memory state from disk (at start, and after a failed commit).
    fn reload(&mut self) -> Result<(), Fatal> {
        self.queues.clear();
        self.held.clear();
        self.new_rows.clear();
        let mut stmt = self
            .conn
            .prepare("SELECT name, paused, overrides FROM queues")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        for row in rows {
            let (name, paused, overrides) = row?;
            let overrides: QueueOverrides = serde_json::from_str(&overrides).map_err(|e| {
                Fatal(StoreError::Internal(format!(
                    "queue {name}: bad overrides: {e}"
                )))
            })?;
            let config = QueueConfig::with_overrides(&self.defaults, &overrides);
            self.queues.insert(name, QueueState::new(config, paused));
        }
        drop(stmt);
        self.schedules = load_armed(&self.conn)?;

        self.index = Index::default();
        let mut stmt = self.conn.prepare(
            "SELECT id, queue, state, priority, run_at, lease_expires_at FROM jobs \
             WHERE state IN ('scheduled', 'available', 'running')",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let queue: String = r.get(1)?;
            let entry = Entry {
                id: uuid_col(r, 0)?,
                queue: &queue,
                state: super::rows::state_col(r, 2)?,
                priority: r.get(3)?,
                run_at: Time::from_millis(r.get(4)?),
                lease_expires_at: r.get::<_, Option<i64>>(5)?.map(Time::from_millis),
            };
            self.index.update(None, Some(entry));
        }
        let last: Option<[u8; 16]> = self
            .conn
            .query_row("SELECT max(id) FROM jobs", [], |r| r.get(0))
            .optional()?
            .flatten();
        if let Some(bytes) = last {
            self.ids.continue_after(Uuid::from_bytes(bytes));
        }
        Ok(())
    }

    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        loop {
            let next = match self.parked.next_until() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(until) => rx.recv_timeout(until.saturating_duration_since(Instant::now())),
            };
            let first = match next {
                Ok(req) => req,
                Err(RecvTimeoutError::Timeout) => {
                    self.parked.expire(Instant::now());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            self.syncer.wait_for_disk();
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            if self.process(group) {
                break;
            }
            // A busy writer never times out on its channel; waits still end on time.
            self.parked.expire(Instant::now());
        }
        self.parked.close();
        tracing::debug!(message = "Writer stopped.");
    }

    /// Applies one group in one transaction and hands its answers to the syncer (`sync.rs`),
    /// which sends them once the commit is on disk; returns true when asked to close.
    fn process(&mut self, group: Vec<Request>) -> bool {
        let calls = group.len();
        let mut done: Vec<Done> = Vec::with_capacity(calls);
        let mut close = false;
        self.wake = false;
        let due_before = self.next_due();
        let changes_before = self.conn.total_changes();
        // A failed fsync stops every write until restart (`sync.rs`): nothing is begun.
        let poisoned = self.syncer.poisoned();
        let began = poisoned.is_none();
        self.fatal = match poisoned {
            Some(e) => Some(e),
            None => self
                .conn
                .execute_batch("BEGIN IMMEDIATE")
                .err()
                .map(StoreError::sqlite),
        };
        for req in group {
            if let Request::Close { .. } = req {
                close = true;
            }
            done.push(self.handle(req));
            self.flush_events_if_many();
        }
        if self.wake && !self.parked.is_empty() {
            self.serve_parked(&mut done);
        }
        self.flush_new_rows();
        self.flush_events();
        let committing = Instant::now();
        if self.fatal.is_none()
            && let Err(e) = self.conn.execute_batch("COMMIT")
        {
            self.fatal = Some(StoreError::sqlite(e));
        }
        let fatal = self.fatal.take();
        let wrote = fatal.is_none() && self.conn.total_changes() > changes_before;
        match &fatal {
            None => {
                if wrote {
                    self.checkpoint.after_commit();
                }
                // Something became due sooner: the timer loop must re-plan its sleep.
                let due_after = self.next_due();
                self.wake |= due_after.is_some_and(|a| due_before.is_none_or(|b| a < b));
            }
            Some(e) if began => {
                tracing::error!(message = "Write group failed; rolled back.", error = %e);
                self.tally.clear();
                let _ = self.conn.execute_batch("ROLLBACK");
                if let Err(Fatal(e)) = self.reload() {
                    tracing::error!(message = "Could not reload state after a failed write.", error = %e);
                }
                self.wake = true;
            }
            Some(_) => self.tally.clear(),
        }
        self.syncer.send(Group {
            done,
            fatal,
            wrote,
            tally: std::mem::take(&mut self.tally),
            committing,
            calls,
        });
        // Woken workers lease in a later group, whose answer waits for its own sync, so they
        // may start now, while this group's sync runs.
        if self.wake {
            self.signal.send_modify(|n| *n = n.wrapping_add(1));
        }
        close
    }

    fn handle(&mut self, req: Request) -> Done {
        if !matches!(req, Request::Enqueue { .. }) {
            // Anything but an enqueue may read or change job rows with SQL of its own.
            self.flush_new_rows();
        }
        match req {
            Request::Enqueue { jobs, now, reply } => {
                self.saw(now);
                let r = self.guard(|w| w.enqueue(jobs, now));
                answer(reply, r)
            }
            Request::Lease { req, now, reply } => {
                self.saw(now);
                let r = self.guard(|w| w.lease(&req, now));
                answer(reply, r)
            }
            Request::Park {
                req,
                now,
                until,
                reply,
            } => {
                self.saw(now);
                match self.guard(|w| w.lease(&req, now)) {
                    Ok(jobs) if jobs.is_empty() => {
                        self.parked.park(Parked {
                            req,
                            now,
                            until,
                            reply,
                        });
                        // Answered later, by `serve_parked` or when the wait runs out.
                        Box::new(|_| {})
                    }
                    r => answer(reply, r),
                }
            }
            Request::Apply {
                id,
                cmd,
                scope,
                now,
                reply,
            } => {
                self.saw(now);
                let r = self.guard(|w| {
                    let cmd = match cmd {
                        JobCommand::Heartbeat { token, lease_ms } => {
                            Command::Heartbeat { token, lease_ms }
                        }
                        JobCommand::Cancel => Command::Cancel,
                        JobCommand::Retry => Command::Retry,
                    };
                    w.apply_in(id, &cmd, &scope, now)
                });
                answer(reply, r.and_then(|j| j.ok_or(StoreError::NotFound)))
            }
            Request::Outcomes {
                items,
                scope,
                now,
                reply,
            } => {
                self.saw(now);
                let r = self.guard(|w| {
                    let mut out = Vec::with_capacity(items.len());
                    for item in items {
                        if let Some(d) = item.delivery {
                            let delivered = Command::Delivered {
                                token: item.token.clone(),
                                status: d.status,
                                duration_ms: d.duration_ms,
                                error: d.error,
                            };
                            if let Err(e) = w.apply_in(item.id, &delivered, &scope, now)? {
                                out.push(Err(e));
                                continue;
                            }
                        }
                        let cmd = item.kind.into_command(item.token, w.ids.jitter());
                        out.push(
                            w.apply_in(item.id, &cmd, &scope, now)?
                                .and_then(|j| j.ok_or(StoreError::NotFound)),
                        );
                    }
                    Ok(Ok(out))
                });
                answer(reply, r)
            }
            Request::Call(f) => f(self),
            Request::Tick { now, reply } => {
                self.saw(now);
                let r = self.guard(|w| w.tick(now));
                answer(reply, r)
            }
            Request::Ping { reply } => {
                // After a failed write nothing else may come to prove recovery (clients back
                // off while readiness says no), so a ping then writes a probe row itself.
                let r = if self.healthy.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    self.guard(|w| {
                        w.conn
                            .prepare_cached("INSERT OR REPLACE INTO readiness_probe (id, at) VALUES (1, unixepoch())")?
                            .execute([])?;
                        Ok(Ok(()))
                    })
                };
                answer(reply, r)
            }
            Request::Close { reply } => {
                self.parked.close();
                answer(reply, Ok(()))
            }
        }
    }

    fn saw(&mut self, now: Time) {
        self.now_seen = self.now_seen.max(now);
    }

    /// Leases to parked long polls, oldest first, now that this group made work leasable. Each
    /// lease is part of the group: its answer leaves with the group's, after the same fsync.
    fn serve_parked(&mut self, done: &mut Vec<Done>) {
        let mut waiting = self.parked.take();
        let mut unserved = std::collections::VecDeque::with_capacity(waiting.len());
        while let Some(p) = waiting.pop_front() {
            if p.abandoned() {
                continue;
            }
            if self.fatal.is_some() {
                unserved.push_back(p);
                continue;
            }
            let now = self.now_seen.max(p.now);
            match self.guard(|w| w.lease(&p.req, now)) {
                Ok(jobs) if jobs.is_empty() => unserved.push_back(p),
                r => done.push(answer(p.reply, r)),
            }
            self.flush_events_if_many();
        }
        self.parked.put_back(unserved);
    }

    /// Inserts the events the group's requests buffered, before the group commits: a failure
    /// fails the group, so no answer claims a change whose events were not written. After a
    /// failure they are dropped with the rest of the transaction. Flushing once per group
    /// rather than once per request puts the events of many small requests (single enqueues,
    /// push outcomes) into one multi-row `INSERT` (docs/performance.md).
    fn flush_events(&mut self) {
        if self.fatal.is_some() {
            self.events.clear();
        } else if let Err(e) = self.events.flush(&self.conn) {
            self.fatal = Some(StoreError::sqlite(e));
        }
    }

    /// Inserts the new rows small enqueues left waiting, or drops them after a failure (the
    /// group rolls back); a failed insert fails the group.
    fn flush_new_rows(&mut self) {
        if self.fatal.is_some() {
            self.new_rows.clear();
        } else if let Err(Fatal(e)) = self.flush_rows() {
            self.fatal = Some(e);
        }
    }

    /// Inserts the rows waiting in `new_rows`. Invariant: a new job's row is in the table
    /// before anything in the writer reads or changes a job row (`load`, `save`, any request
    /// but an enqueue: all call this first) and before its group commits, so no read misses
    /// it and no answer leaves without it. Waiting lets a group of single enqueues insert
    /// their rows in multi-row statements, as a batch does.
    ///
    /// Once written, the rows of a worked queue's jobs become the writer's copies (`keep`,
    /// `held.rs`): their next change is their lease.
    fn flush_rows(&mut self) -> Result<(), Fatal> {
        if !self.new_rows.is_empty() {
            let rows: Vec<&Job> = self.new_rows.iter().collect();
            let rowids = insert_jobs(&self.conn, &rows)?;
            let mut new_rows = std::mem::take(&mut self.new_rows);
            let mut asked = AskedMemo::default();
            for (job, rowid) in new_rows.drain(..).zip(rowids) {
                if self.lease_near(&job, &mut asked) {
                    self.held.put_owned(job, rowid);
                }
            }
            self.new_rows = new_rows;
        }
        Ok(())
    }

    /// Flushes early once many events wait, so a group of large requests (up to `MAX_GROUP`
    /// batches of a thousand jobs) holds a bounded number in memory.
    fn flush_events_if_many(&mut self) {
        if self.events.len() >= EVENTS_HELD {
            self.flush_events();
        }
    }

    /// Runs a handler unless the group already failed; records a storage failure as the group's.
    pub(super) fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Writer) -> Step<T>,
    ) -> Result<T, StoreError> {
        if let Some(e) = &self.fatal {
            return Err(e.duplicate());
        }
        match f(self) {
            Ok(r) => r,
            Err(Fatal(e)) => {
                let copy = e.duplicate();
                self.fatal = Some(e);
                Err(copy)
            }
        }
    }

    /// The earliest moment something is due: a scheduled job, a lease expiry, a schedule's tick.
    fn next_due(&self) -> Option<Time> {
        [
            self.index.next_due(),
            schedules::next_due(&self.schedules),
            self.rate_wake,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// A job's row, with its rowid.
    fn load(&mut self, id: Uuid) -> Result<Option<(Job, i64)>, Fatal> {
        self.flush_rows()?;
        let mut stmt = self.conn.prepare_cached(&LOAD_JOB)?;
        let row = stmt.query_row([id.into_bytes()], |r| {
            Ok((job_from_row(r)?, r.get(LOAD_JOB_ROWID)?))
        });
        Ok(row.optional()?)
    }

    /// Whether `job`, just written, is to be leased soon if it is available: its queue was
    /// asked for jobs within `ASKED_WITHIN_MS`. A queue nobody works would otherwise fill the
    /// copies' room with jobs that wait, leaving none for a queue that is worked (held.rs).
    /// Jobs in other states are kept or not by `Held` alone. `asked` remembers the answer for
    /// the last queue looked up: a batch's jobs nearly always share theirs, and a lookup per
    /// job was 1.5% of the writer's work per batched job.
    fn lease_near(&self, job: &Job, asked: &mut AskedMemo) -> bool {
        if job.state != State::Available {
            return true;
        }
        if let Some((queue, near)) = &asked.0
            && *queue == job.queue
        {
            return *near;
        }
        let near = self
            .queues
            .get(&job.queue)
            .and_then(|q| q.asked_at)
            .is_some_and(|at| at >= self.now_seen.plus_ms(-ASKED_WITHIN_MS));
        asked.0 = Some((job.queue.clone(), near));
        near
    }

    /// Keeps a copy of `job`, just written at `rowid`, if its next change is near (`held.rs`).
    fn keep(&mut self, job: &Job, rowid: i64, asked: &mut AskedMemo) {
        if self.lease_near(job, asked) {
            self.held.put(job, rowid);
        }
    }

    /// A job about to be changed, with its rowid: the copy kept when it was last written, or
    /// its row. The copy is taken out, so a change that is refused leaves none behind
    /// (`held.rs`).
    fn take(&mut self, id: Uuid) -> Result<Option<(Job, i64)>, Fatal> {
        // Rows still waiting become copies when written: the lease of a job enqueued earlier in
        // the group finds its copy.
        self.flush_rows()?;
        match self.held.take(id) {
            Some(job) => Ok(Some(job)),
            None => self.load(id),
        }
    }

    /// Persists one job change: its events, its row, the writer's copy and the index, together.
    /// `before` comes with its row's rowid (`take`).
    fn save(
        &mut self,
        before: Option<(&Job, i64)>,
        after: Option<&Job>,
        events: &[EventData],
        now: Time,
    ) -> Result<(), Fatal> {
        let Some(id) = before.map(|(j, _)| j).or(after).map(|j| j.id) else {
            return Ok(());
        };
        self.flush_rows()?;
        match (before, after) {
            (None, Some(a)) => {
                insert_job(&self.conn, a)?;
                self.keep(a, self.conn.last_insert_rowid(), &mut AskedMemo::default());
            }
            (Some((b, rowid)), Some(a)) => {
                update_job(&self.conn, a, rowid, b.finished_at)?;
                self.keep(a, rowid, &mut AskedMemo::default());
            }
            (Some(_), None) => {
                self.conn
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute([id.into_bytes()])?;
                self.held.forget(id);
            }
            // `id` came from one of them.
            (None, None) => {}
        }
        self.record(id, before.map(|(j, _)| j), after, events, now)
    }

    /// Everything `save` does but the row: events, counts, the index. Only `enqueue` calls it
    /// alone, and writes its new rows itself, together (`flush_rows` says when).
    fn record(
        &mut self,
        id: Uuid,
        before: Option<&Job>,
        after: Option<&Job>,
        events: &[EventData],
        now: Time,
    ) -> Result<(), Fatal> {
        for ev in events {
            self.events.push(id, now, ev)?;
        }
        self.tally.note(before, after, events, now);
        let change = self
            .index
            .update(before.map(Entry::from), after.map(Entry::from));
        self.wake |= change.leasable;
        Ok(())
    }

    /// Records a new job with its `enqueued` event (the caller inserts its row, `insert_jobs`).
    /// The event owns the job meanwhile, so no job is copied; the job comes back for the answer.
    fn record_created(&mut self, job: Job, now: Time) -> Result<Job, Fatal> {
        let events = [EventData::Enqueued { job: Box::new(job) }];
        let [EventData::Enqueued { job }] = &events else {
            return Err(Fatal(StoreError::Internal("no enqueued event".into())));
        };
        self.record(job.id, None, Some(job), &events, now)?;
        match events {
            [EventData::Enqueued { job }] => Ok(*job),
            _ => Err(Fatal(StoreError::Internal("no enqueued event".into()))),
        }
    }

    /// Loads a job, runs the state machine and saves the result. `Ok(None)`: purged.
    fn apply(&mut self, id: Uuid, cmd: &Command, now: Time) -> Step<Option<Job>> {
        self.apply_in(id, cmd, &Scope::All, now)
    }

    /// Applies `cmd` to a job whose queue `scope` allows; a job outside it is `NotFound`, exactly
    /// as if it did not exist, so a scoped token learns nothing about other queues.
    fn apply_in(&mut self, id: Uuid, cmd: &Command, scope: &Scope, now: Time) -> Step<Option<Job>> {
        let Some((job, rowid)) = self.take(id)?.filter(|(j, _)| scope.allows(&j.queue)) else {
            return Ok(Err(StoreError::NotFound));
        };
        match step(&job, cmd, now) {
            Err(e) => Ok(Err(e.into())),
            Ok((next, events)) => {
                self.save(Some((&job, rowid)), next.as_ref(), &events, now)?;
                Ok(Ok(next))
            }
        }
    }

    fn queue_config(&mut self, name: &str, now: Time) -> Result<QueueConfig, Fatal> {
        if let Some(q) = self.queues.get(name) {
            return Ok(q.config.clone());
        }
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO queues (name, paused, overrides, created_at, updated_at) VALUES (?1, 0, '{}', ?2, ?2)")?
            .execute(params![name, now.as_millis()])?;
        let config = self.defaults.clone();
        self.queues
            .insert(name.to_owned(), QueueState::new(config.clone(), false));
        Ok(config)
    }

    pub(super) fn enqueue(&mut self, jobs: Vec<NewJob>, now: Time) -> Step<Vec<Enqueued>> {
        let mut live = LiveKeys::new();
        for (queue, key) in keys_of(&jobs) {
            let found: Option<([u8; 16], String)> = self
                .conn
                .prepare_cached("SELECT job_id, fingerprint FROM idempotency_keys WHERE queue = ?1 AND key = ?2 AND expires_at > ?3")?
                .query_row(params![queue, key, now.as_millis()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((id, fp)) = found {
                live.insert(
                    (queue.to_owned(), key.to_owned()),
                    (Uuid::from_bytes(id), fp),
                );
            }
        }
        let plans = match plan_enqueue(&jobs, &live) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let mut out: Vec<Enqueued> = Vec::with_capacity(jobs.len());
        // A batch is nearly always one queue: its settings are looked up once per run of it.
        let mut settings: Option<(String, QueueConfig)> = None;
        for (new, plan) in jobs.into_iter().zip(plans) {
            let original = match plan.original() {
                Some(id) => self.load(id)?.map(|(job, _)| job),
                None => None,
            };
            // A stale key row is replaced below (INSERT OR REPLACE).
            let fingerprint = match plan.resolve(&out, original.as_ref()) {
                Resolved::Answer(e) => {
                    out.push(*e);
                    continue;
                }
                Resolved::Create { fingerprint, .. } => fingerprint,
            };
            let config = match &settings {
                Some((queue, config)) if *queue == new.queue => config,
                _ => {
                    let config = self.queue_config(&new.queue, now)?;
                    &settings.insert((new.queue.clone(), config)).1
                }
            };
            let id = self.ids.next(now);
            let job = self.record_created(new.into_job(id, config, now), now)?;
            if let (Some(key), Some(fingerprint)) = (&job.idempotency_key, fingerprint) {
                self.conn
                            .prepare_cached(
                                "INSERT OR REPLACE INTO idempotency_keys (queue, key, job_id, fingerprint, expires_at) \
                                 VALUES (?1, ?2, ?3, ?4, ?5)",
                            )?
                            .execute(params![job.queue, key, id.into_bytes(), fingerprint, now.plus_ms(self.idempotency_ttl_ms).as_millis()])?;
            }
            out.push(Enqueued {
                job,
                replayed: false,
            });
        }
        // The new rows, in one statement per chunk. Nothing above read them back: a replay of a
        // key created in this request is resolved from `out`, and `load` reads earlier requests'
        // (inserting any still waiting first). A small enqueue's rows wait for others'.
        let created: Vec<&Job> = out.iter().filter(|e| !e.replayed).map(|e| &e.job).collect();
        if created.len() >= ROWS_HELD {
            let rowids = insert_jobs(&self.conn, &created)?;
            let mut asked = AskedMemo::default();
            for (job, rowid) in created.into_iter().zip(rowids) {
                self.keep(job, rowid, &mut asked);
            }
        } else {
            self.new_rows.extend(created.into_iter().cloned());
            if self.new_rows.len() >= ROWS_HELD {
                self.flush_rows()?;
            }
        }
        Ok(Ok(out))
    }

    /// Inserts exported jobs and events as they are (see `Store::import`).
    pub(super) fn import(&mut self, jobs: Vec<Job>, events: Vec<Event>, now: Time) -> Step<()> {
        if let Err(e) = crate::rules::check_importable(&jobs) {
            return Ok(Err(e));
        }
        for job in &jobs {
            if self.load(job.id)?.is_some() {
                return Ok(Err(StoreError::Conflict(format!(
                    "job {} already exists in this store",
                    job.id
                ))));
            }
        }
        for job in &jobs {
            self.queue_config(&job.queue, now)?;
            insert_job(&self.conn, job)?;
            let change = self.index.update(None, Some(Entry::from(job)));
            self.wake |= change.leasable;
            self.ids.continue_after(job.id);
        }
        for ev in &events {
            self.events.push(ev.job_id, ev.at, &ev.data)?;
        }
        Ok(Ok(()))
    }

    fn lease(&mut self, req: &LeaseRequest, now: Time) -> Step<Vec<LeasedJob>> {
        // Jobs due now are leasable now, however late the timer is.
        self.promote_due(now)?;
        let mut out = Vec::new();
        for queue in &req.queues {
            let Some(q) = self.queues.get_mut(queue) else {
                continue;
            };
            q.asked_at = Some(now);
            if q.paused {
                continue;
            }
            let concurrency = q.config.concurrency;
            let rate = q.config.rate_limit;
            while out.len() < req.max_jobs {
                if concurrency.is_some_and(|c| self.index.running(queue) >= c) {
                    break;
                }
                let Some(id) = self.index.next_ready(queue) else {
                    break;
                };
                if let (Some(limit), Some(bucket)) = (
                    rate,
                    self.queues.get_mut(queue).and_then(|q| q.bucket.as_mut()),
                ) && bucket.take(&limit, 1, now) == 0
                {
                    // Over its rate: hand out nothing more, and wake waiters when a token is due.
                    let at = bucket.next_token_at(&limit);
                    self.rate_wake = Some(self.rate_wake.map_or(at, |w| w.min(at)));
                    break;
                }
                let Some((job, rowid)) = self.take(id)? else {
                    return Err(Fatal(StoreError::Internal(format!(
                        "ready index names missing job {id}"
                    ))));
                };
                let token = self
                    .tokens
                    .next_token()
                    .map_err(|e| Fatal(StoreError::no_token(e)))?;
                let cmd = Command::Lease {
                    token_hash: token_hash(&token),
                    lease_ms: req.lease_ms.unwrap_or(job.timeout_ms),
                    worker: req.worker.clone(),
                };
                let (next, events) = step(&job, &cmd, now).map_err(|e| {
                    Fatal(StoreError::Internal(format!(
                        "ready index out of step for {id}: {e}"
                    )))
                })?;
                self.save(Some((&job, rowid)), next.as_ref(), &events, now)?;
                if let Some(job) = next {
                    out.push(LeasedJob { job, token });
                }
            }
        }
        Ok(Ok(out))
    }

    fn promote_due(&mut self, now: Time) -> Result<(), Fatal> {
        for entry in self.index.due_scheduled(now, TIMER_BATCH) {
            self.run_timer(entry, &Command::Promote, now)?;
        }
        Ok(())
    }

    /// Applies a timer's command to a due job. A refusal means the index was out of step with
    /// the row (which the invariant rules out); the entry is dropped and logged rather than left
    /// due forever.
    fn run_timer(&mut self, entry: (Time, Uuid), cmd: &Command, now: Time) -> Result<(), Fatal> {
        if let Err(e) = self.apply(entry.1, cmd, now)? {
            tracing::error!(message = "Timer entry did not match its job; dropped.", job_id = %entry.1, error = %e);
            self.index.forget_timer(entry);
        }
        Ok(())
    }

    fn tick(&mut self, now: Time) -> Step<Tick> {
        self.promote_due(now)?;
        if self.rate_wake.is_some_and(|at| at <= now) {
            // A rate-limited queue has a token again: waiting workers and pushes try again.
            self.rate_wake = None;
            self.wake = true;
        }
        for entry in self.index.expired_leases(now, TIMER_BATCH) {
            let jitter = self.ids.jitter();
            self.run_timer(entry, &Command::ExpireLease { jitter }, now)?;
        }
        if now >= self.next_retention {
            let more = self.retention(now)?;
            self.next_retention = if more {
                now
            } else {
                now.plus_ms(RETENTION_EVERY_MS)
            };
        }
        self.fire_schedules(now)?;
        let next_due = self
            .next_due()
            .map_or(self.next_retention, |t| t.min(self.next_retention));
        Ok(Ok(Tick {
            next_due: Some(next_due),
        }))
    }

    /// Deletes finished jobs past their queue's retention, with their events, and expired
    /// idempotency keys. Returns true when a batch limit was hit (more is due at once).
    fn retention(&mut self, now: Time) -> Result<bool, Fatal> {
        // No buffered event may outlive the deletion of its job's events.
        self.events.flush(&self.conn)?;
        let mut more = false;
        let plan: Vec<(String, State, Time)> = self
            .queues
            .iter()
            .flat_map(|(name, q)| {
                let r = q.config.retention;
                [
                    (name.clone(), State::Completed, now.plus_ms(-r.completed_ms)),
                    (name.clone(), State::Dead, now.plus_ms(-r.dead_ms)),
                    (name.clone(), State::Cancelled, now.plus_ms(-r.dead_ms)),
                ]
            })
            .collect();
        for (queue, state, cutoff) in plan {
            let ids: Vec<[u8; 16]> = self
                .conn
                .prepare_cached(IDS_FINISHED_BEFORE)?
                .query_map(
                    params![queue, state.as_str(), cutoff.as_millis(), RETENTION_BATCH],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            more |= ids.len() as i64 == RETENTION_BATCH;
            for id in ids {
                self.conn
                    .prepare_cached("DELETE FROM events WHERE job_id = ?1")?
                    .execute([id])?;
                self.conn
                    .prepare_cached("DELETE FROM jobs WHERE id = ?1")?
                    .execute([id])?;
            }
        }
        let keys = self
            .conn
            .prepare_cached(
                "DELETE FROM idempotency_keys WHERE (queue, key) IN \
                 (SELECT queue, key FROM idempotency_keys WHERE expires_at <= ?1 LIMIT ?2)",
            )?
            .execute(params![now.as_millis(), RETENTION_BATCH])?;
        more |= keys as i64 == RETENTION_BATCH;
        Ok(more)
    }

    fn upsert_queue(&mut self, name: &str, now: Time) -> Result<(), Fatal> {
        self.queue_config(name, now)?;
        self.conn
            .prepare_cached("UPDATE queues SET updated_at = ?2 WHERE name = ?1")?
            .execute(params![name, now.as_millis()])?;
        Ok(())
    }

    pub(super) fn configure_queue(
        &mut self,
        name: &str,
        overrides: QueueOverrides,
        now: Time,
    ) -> Step<()> {
        self.saw(now);
        self.upsert_queue(name, now)?;
        let text = serde_json::to_string(&overrides)
            .map_err(|e| Fatal(StoreError::Internal(e.to_string())))?;
        self.conn
            .prepare_cached("UPDATE queues SET overrides = ?2 WHERE name = ?1")?
            .execute(params![name, text])?;
        if let Some(q) = self.queues.get_mut(name) {
            let config = QueueConfig::with_overrides(&self.defaults, &overrides);
            if config.rate_limit != q.config.rate_limit {
                q.bucket = config.rate_limit.map(|l| TokenBucket::full(&l, now));
            }
            q.config = config;
        }
        // A raised concurrency limit can make jobs leasable.
        self.wake = true;
        Ok(Ok(()))
    }

    pub(super) fn set_paused(&mut self, name: &str, paused: bool, now: Time) -> Step<()> {
        self.saw(now);
        let Some(q) = self.queues.get_mut(name) else {
            return Ok(Err(StoreError::NotFound));
        };
        q.paused = paused;
        self.conn
            .prepare_cached("UPDATE queues SET paused = ?2, updated_at = ?3 WHERE name = ?1")?
            .execute(params![name, paused, now.as_millis()])?;
        self.wake |= !paused;
        Ok(Ok(()))
    }

    /// Ids of `queue`'s jobs in `state`: unfinished ones oldest first, finished ones earliest
    /// finished first (the order of the index each is found through, `rows::IDS_LIVE`,
    /// `rows::IDS_FINISHED`).
    fn ids_in_state(
        &self,
        queue: &str,
        state: State,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Uuid>, Fatal> {
        let mut stmt = self.conn.prepare_cached(if state.is_final() {
            IDS_FINISHED
        } else {
            IDS_LIVE
        })?;
        let ids = stmt
            .query_map(params![queue, state.as_str(), kind, limit as i64], |r| {
                uuid_col(r, 0)
            })?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    pub(super) fn replay(&mut self, queue: &str, filter: &ReplayFilter, now: Time) -> Step<u64> {
        if !self.queues.contains_key(queue) {
            return Ok(Err(StoreError::NotFound));
        }
        let mut n = 0;
        for id in self.ids_in_state(queue, filter.state, filter.kind.as_deref(), filter.limit)? {
            if self.apply(id, &Command::Retry, now)?.is_ok() {
                n += 1;
            }
        }
        Ok(Ok(n))
    }

    pub(super) fn purge(
        &mut self,
        queue: &str,
        state: State,
        limit: usize,
        now: Time,
    ) -> Step<u64> {
        if !self.queues.contains_key(queue) {
            return Ok(Err(StoreError::NotFound));
        }
        let mut n = 0;
        for id in self.ids_in_state(queue, state, None, limit)? {
            if self.apply(id, &Command::Purge, now)?.is_ok() {
                n += 1;
            }
        }
        Ok(Ok(n))
    }
}

pub(super) fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Done {
    Box::new(move |fatal: Option<&StoreError>| {
        let _ = reply.send(match fatal {
            Some(e) => Err(e.duplicate()),
            None => result,
        });
    })
}
