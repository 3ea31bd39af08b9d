//! The SQLite backend: one file (`<data-dir>/keel.db`) in WAL mode.
//!
//! Writes go to the writer thread (`writer.rs`) over a channel and are answered after their group
//! commits and the sync thread (`sync.rs`) has fsynced the WAL past that commit. Reads use a
//! small pool of read-only connections on blocking threads; WAL lets them run beside the writer,
//! and since writes answer only after commit, a read that follows an acknowledged write sees it.

mod access;
pub mod backup;
mod checkpoint;
mod enqueued;
mod held;
mod index;
mod park;
mod rows;
mod schedules;
mod schema;
mod sync;
mod writer;

pub use self::sync::{GROUPS_AHEAD, SyncHook};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keel_core::{
    Event, Job, Json, NewJob, QueueConfig, QueueOverrides, ScheduleSpec, Scope, State, Time,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use self::rows::{
    COUNT_FINISHED, COUNT_LIVE, EVENT_COLUMNS, JOB_COLUMNS, SELECT_JOB, event_from_row,
    job_from_row, state_col,
};
use self::writer::{JobCommand, Request, Step, Writer, answer};
use crate::types::{
    Actor, AuditEntry, Counts, Enqueued, JobFilter, JobPage, LeaseRequest, LeasedJob, Outcome,
    QueueInfo, ReplayFilter, ScheduleRecord, SchemaRecord, Tick, TokenRecord,
};
use crate::{Store, StoreError};

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub data_dir: PathBuf,
    /// Server-wide queue defaults.
    pub defaults: QueueConfig,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl_ms: i64,
    /// Runs before each fsync of the WAL (`sync.rs`); for tests that hold one back or fail it.
    #[doc(hidden)]
    pub sync_hook: Option<SyncHook>,
}

impl SqliteConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> SqliteConfig {
        SqliteConfig {
            data_dir: data_dir.into(),
            defaults: QueueConfig::default(),
            idempotency_ttl_ms: 24 * 3_600_000,
            sync_hook: None,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("keel.db")
    }
}

pub struct SqliteStore {
    /// An exclusive OS lock on `<data-dir>/keel.lock`, held until `close`: the writer's
    /// in-memory index assumes it is the data dir's only writer.
    dir_lock: Mutex<Option<std::fs::File>>,
    requests: mpsc::Sender<Request>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Answers each group once its commit is on disk; stops when the writer does.
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Stops when the writer does (it holds the checkpointer's only `Nudge`).
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Arc<ReadPool>,
    defaults: QueueConfig,
    signal: watch::Receiver<u64>,
    healthy: Arc<AtomicBool>,
}

/// Below this much free space on the data dir's filesystem the store reports not ready.
const READY_MIN_FREE_BYTES: u64 = 1024 * 1024;

impl SqliteStore {
    /// Opens (creating if needed) the store in `config.data_dir`, migrates it and starts the writer.
    pub fn open(config: SqliteConfig, now: Time) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let dir_lock = lock_data_dir(&config.data_dir)?;
        let path = config.db_path();
        let mut conn = Connection::open(&path).map_err(StoreError::sqlite)?;
        schema::configure(&conn).map_err(StoreError::sqlite)?;
        schema::migrate(&mut conn, now.as_millis())?;

        let (signal_tx, signal) = watch::channel(0);
        let healthy = Arc::new(AtomicBool::new(true));
        let (checkpointer, nudge) = checkpoint::start(&path)?;
        let (syncer, to_syncer) = sync::start(&path, healthy.clone(), config.sync_hook.clone())?;
        let writer = Writer::new(
            conn,
            config.defaults.clone(),
            config.idempotency_ttl_ms,
            signal_tx,
            healthy.clone(),
            nudge,
            to_syncer,
        )?;
        let (requests, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("keel-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            dir_lock: Mutex::new(Some(dir_lock)),
            requests,
            writer: Mutex::new(Some(handle)),
            syncer: Mutex::new(Some(syncer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            readers: Arc::new(ReadPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            defaults: config.defaults,
            signal,
            healthy,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(writer::Reply<T>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(make(reply))
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    /// Runs `f` on the writer inside a group transaction and returns its answer after commit.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Step<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call(|reply| {
            Request::Call(Box::new(move |w: &mut Writer| {
                let r = w.guard(f);
                answer(reply, r)
            }))
        })
        .await
    }

    /// Records an admin change made in several transactions (replay and purge work in chunks).
    async fn audit_after(
        &self,
        actor: &Actor,
        action: &'static str,
        target: &str,
        data: serde_json::Value,
        now: Time,
    ) -> Result<(), StoreError> {
        let (actor, target) = (actor.clone(), target.to_owned());
        self.run(move |w| Ok(Ok(w.audit(&actor, action, &target, &data, now)?)))
            .await
    }

    /// A schedule just written, read back (a concurrent delete makes it `NotFound`).
    async fn schedule_after_write(&self, name: String) -> Result<ScheduleRecord, StoreError> {
        self.read(move |conn| schedules::read_schedule(conn, &name))
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }

    async fn queue_infos(
        &self,
        only: Option<String>,
        now: Time,
    ) -> Result<Vec<QueueInfo>, StoreError> {
        let defaults = self.defaults.clone();
        self.read(move |conn| {
            let mut queues: Vec<QueueInfo> = Vec::new();
            let mut stmt = conn.prepare_cached(
                "SELECT name, paused, overrides FROM queues WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([&only], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?, r.get::<_, String>(2)?)))?;
            for row in rows {
                let (name, paused, overrides) = row?;
                let overrides: QueueOverrides = serde_json::from_str(&overrides).unwrap_or_default();
                queues.push(QueueInfo {
                    name,
                    paused,
                    config: QueueConfig::with_overrides(&defaults, &overrides),
                    overrides,
                    counts: Counts::default(),
                    oldest_available_age_ms: None,
                });
            }
            for q in &mut queues {
                // Unfinished and finished jobs are counted through their own indexes
                // (`jobs_queue_live`, `jobs_queue_state_finished`; `finished_at` is set exactly
                // when a job is finished).
                let (live, oldest): ([i64; 3], Option<i64>) = conn
                    .prepare_cached(COUNT_LIVE)?
                    .query_row([&q.name], |r| Ok(([r.get(0)?, r.get(1)?, r.get(2)?], r.get(3)?)))?;
                for (state, n) in [State::Scheduled, State::Available, State::Running].into_iter().zip(live) {
                    q.counts.add(state, n.max(0) as u64);
                }
                let mut stmt = conn.prepare_cached(COUNT_FINISHED)?;
                let rows = stmt.query_map([&q.name], |r| Ok((state_col(r, 0)?, r.get::<_, i64>(1)?)))?;
                for row in rows {
                    let (state, n) = row?;
                    q.counts.add(state, n.max(0) as u64);
                }
                q.oldest_available_age_ms = oldest.map(|t| now.millis_since(Time::from_millis(t)).max(0));
            }
            Ok(queues)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, jobs: Vec<NewJob>, now: Time) -> Result<Vec<Enqueued>, StoreError> {
        self.call(|reply| Request::Enqueue { jobs, now, reply })
            .await
    }

    async fn lease(&self, req: LeaseRequest, now: Time) -> Result<Vec<LeasedJob>, StoreError> {
        self.call(|reply| Request::Lease { req, now, reply }).await
    }

    async fn wait_and_lease(
        &self,
        req: LeaseRequest,
        now: &(dyn Fn() -> Time + Send + Sync),
        wait: Duration,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let until = Instant::now() + wait;
        let now = now();
        self.call(|reply| Request::Park {
            req,
            now,
            until,
            reply,
        })
        .await
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        token: String,
        lease_ms: i64,
        scope: Scope,
        now: Time,
    ) -> Result<Time, StoreError> {
        let job = self
            .call(|reply| Request::Apply {
                id,
                cmd: JobCommand::Heartbeat { token, lease_ms },
                scope,
                now,
                reply,
            })
            .await?;
        job.lease
            .map(|l| l.expires_at)
            .ok_or_else(|| StoreError::Internal("heartbeat left no lease".into()))
    }

    async fn record_outcomes(
        &self,
        items: Vec<Outcome>,
        scope: Scope,
        now: Time,
    ) -> Result<Vec<Result<Job, StoreError>>, StoreError> {
        self.call(|reply| Request::Outcomes {
            items,
            scope,
            now,
            reply,
        })
        .await
    }

    async fn cancel(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError> {
        self.call(|reply| Request::Apply {
            id,
            cmd: JobCommand::Cancel,
            scope,
            now,
            reply,
        })
        .await
    }

    async fn retry(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError> {
        self.call(|reply| Request::Apply {
            id,
            cmd: JobCommand::Retry,
            scope,
            now,
            reply,
        })
        .await
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(&SELECT_JOB)?
                .query_row([id.into_bytes()], job_from_row)
                .optional()
        })
        .await
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        let limit = filter.limit.max(1);
        let jobs = self
            .read(move |conn| {
                // A scope becomes `queue GLOB ?` terms: its patterns use only name characters and
                // `*`, for which SQLite's GLOB and `keel_core::access::glob_match` agree.
                let scope_sql = match filter.scope.patterns() {
                    None => String::new(),
                    Some(p) => format!(
                        " AND ({})",
                        (0..p.len()).map(|i| format!("queue GLOB ?{}", 7 + i)).collect::<Vec<_>>().join(" OR ")
                    ),
                };
                let sql = format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR state = ?2) \
                     AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR id < ?4) \
                     AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?5)){scope_sql} \
                     ORDER BY id DESC LIMIT ?6"
                );
                let mut stmt = conn.prepare_cached(&sql)?;
                let fixed = params![
                    filter.queue,
                    filter.state.map(State::as_str),
                    filter.kind,
                    filter.before.map(|u| u.into_bytes()),
                    filter.tag,
                    (limit + 1) as i64
                ];
                let mut all: Vec<&dyn rusqlite::ToSql> = fixed.to_vec();
                for p in filter.scope.patterns().unwrap_or_default() {
                    all.push(p);
                }
                let rows = stmt.query_map(all.as_slice(), job_from_row)?;
                rows.collect::<rusqlite::Result<Vec<Job>>>()
            })
            .await?;
        Ok(JobPage::from_overfetched(jobs, limit))
    }

    async fn job_events(&self, id: Uuid) -> Result<Option<Vec<Event>>, StoreError> {
        let events = self
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE job_id = ?1 ORDER BY seq"
                ))?;
                stmt.query_map([id.into_bytes()], event_from_row)?
                    .collect::<rusqlite::Result<Vec<Event>>>()
            })
            .await?;
        Ok(if events.is_empty() {
            None
        } else {
            Some(events)
        })
    }

    async fn queues(&self, now: Time) -> Result<Vec<QueueInfo>, StoreError> {
        self.queue_infos(None, now).await
    }

    async fn queue(&self, name: &str, now: Time) -> Result<Option<QueueInfo>, StoreError> {
        Ok(self
            .queue_infos(Some(name.to_owned()), now)
            .await?
            .into_iter()
            .next())
    }

    async fn configure_queue(
        &self,
        name: &str,
        overrides: QueueOverrides,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        let target = name.clone();
        self.run(move |w| {
            let data = serde_json::to_value(overrides.redacted()).unwrap_or_default();
            if let Err(e) = w.configure_queue(&target, overrides, now)? {
                return Ok(Err(e));
            }
            w.audit(&actor, "queue.configured", &target, &data, now)?;
            Ok(Ok(()))
        })
        .await?;
        self.queue(&name, now).await?.ok_or(StoreError::NotFound)
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        let target = name.clone();
        self.run(move |w| {
            if let Err(e) = w.set_paused(&target, paused, now)? {
                return Ok(Err(e));
            }
            let action = if paused {
                "queue.paused"
            } else {
                "queue.resumed"
            };
            w.audit(&actor, action, &target, &serde_json::json!({}), now)?;
            Ok(Ok(()))
        })
        .await?;
        self.queue(&name, now).await?.ok_or(StoreError::NotFound)
    }

    async fn replay(
        &self,
        queue: &str,
        filter: ReplayFilter,
        actor: &Actor,
        now: Time,
    ) -> Result<u64, StoreError> {
        let total = crate::rules::in_chunks(filter.limit, |n| {
            let chunk = ReplayFilter {
                limit: n,
                ..filter.clone()
            };
            let q = queue.to_owned();
            self.run(move |w| w.replay(&q, &chunk, now))
        })
        .await?;
        let data = crate::rules::replay_audit(&filter, total);
        self.audit_after(actor, "queue.replayed", queue, data, now)
            .await?;
        Ok(total)
    }

    async fn purge(
        &self,
        queue: &str,
        state: State,
        actor: &Actor,
        now: Time,
    ) -> Result<u64, StoreError> {
        let total = crate::rules::in_chunks(usize::MAX, |n| {
            let q = queue.to_owned();
            self.run(move |w| w.purge(&q, state, n, now))
        })
        .await?;
        let data = crate::rules::purge_audit(state, total);
        self.audit_after(actor, "queue.purged", queue, data, now)
            .await?;
        Ok(total)
    }

    async fn create_token(
        &self,
        token: TokenRecord,
        actor: &Actor,
        now: Time,
    ) -> Result<(), StoreError> {
        let actor = actor.clone();
        self.run(move |w| w.create_token(&token, &actor, now)).await
    }

    async fn delete_token(
        &self,
        id: Uuid,
        actor: &Actor,
        now: Time,
    ) -> Result<TokenRecord, StoreError> {
        let actor = actor.clone();
        self.run(move |w| w.delete_token(id, &actor, now)).await
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read(access::read_tokens).await
    }

    async fn put_schema(
        &self,
        kind: &str,
        schema: Json,
        actor: &Actor,
        now: Time,
    ) -> Result<SchemaRecord, StoreError> {
        let (kind, actor) = (kind.to_owned(), actor.clone());
        self.run(move |w| w.put_schema(&kind, &schema, &actor, now))
            .await
    }

    async fn delete_schema(&self, kind: &str, actor: &Actor, now: Time) -> Result<(), StoreError> {
        let (kind, actor) = (kind.to_owned(), actor.clone());
        self.run(move |w| w.delete_schema(&kind, &actor, now)).await
    }

    async fn schemas(&self) -> Result<Vec<SchemaRecord>, StoreError> {
        self.read(access::read_schemas).await
    }

    async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        data: serde_json::Value,
        now: Time,
    ) -> Result<(), StoreError> {
        let (actor, action, target) = (actor.clone(), action.to_owned(), target.to_owned());
        self.run(move |w| Ok(Ok(w.audit(&actor, &action, &target, &data, now)?)))
            .await
    }

    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |conn| access::read_audit(conn, before, limit))
            .await
    }

    async fn put_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
        paused: Option<bool>,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        let n = name.clone();
        self.run(move |w| w.put_schedule(&n, spec, paused, &actor, now))
            .await?;
        self.schedule_after_write(name).await
    }

    async fn delete_schedule(
        &self,
        name: &str,
        actor: &Actor,
        now: Time,
    ) -> Result<(), StoreError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        self.run(move |w| w.delete_schedule(&name, &actor, now))
            .await
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError> {
        let (name, actor) = (name.to_owned(), actor.clone());
        let n = name.clone();
        self.run(move |w| w.set_schedule_paused(&n, paused, &actor, now))
            .await?;
        self.schedule_after_write(name).await
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.read(|conn| schedules::read_schedules(conn, None))
            .await
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let name = name.to_owned();
        self.read(move |conn| schedules::read_schedule(conn, &name))
            .await
    }

    async fn tick(&self, now: Time) -> Result<Tick, StoreError> {
        self.call(|reply| Request::Tick { now, reply }).await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.clone()
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.call(|reply| Request::Ping { reply }).await?;
        if !self.healthy.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("the last write failed".into()));
        }
        // A write that succeeded is not proof enough: a small one can reuse WAL space a
        // checkpoint freed while the filesystem has no room left for anything larger.
        match rustix::fs::statvfs(&self.readers.path) {
            // (A filesystem that reports no size at all, `f_blocks` 0, is not judged by it.)
            Ok(fs)
                if fs.f_blocks > 0
                    && fs.f_bavail.saturating_mul(fs.f_frsize) < READY_MIN_FREE_BYTES =>
            {
                Err(StoreError::Unavailable(format!(
                    "the data dir's filesystem has less than {} KiB free",
                    READY_MIN_FREE_BYTES / 1024
                )))
            }
            Ok(_) => Ok(()),
            // Free space cannot be read here (an unusual filesystem): the write probe decides.
            Err(_) => Ok(()),
        }
    }

    async fn export_jobs(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
            ))?;
            stmt.query_map(
                params![after.map(|u| u.into_bytes()), limit as i64],
                job_from_row,
            )?
            .collect()
        })
        .await
    }

    async fn export_events(&self, after_seq: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            stmt.query_map(params![after_seq, limit as i64], event_from_row)?
                .collect()
        })
        .await
    }

    async fn import(
        &self,
        jobs: Vec<Job>,
        events: Vec<Event>,
        now: Time,
    ) -> Result<(), StoreError> {
        self.run(move |w| w.import(jobs, events, now)).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Closing twice is fine: the second finds the writer gone.
        let _ = self.call(|reply| Request::Close { reply }).await;
        // The writer first: the syncer and the checkpointer stop when it drops their channels.
        join_thread(&self.writer, "writer").await?;
        join_thread(&self.syncer, "sync").await?;
        join_thread(&self.checkpointer, "checkpoint").await?;
        // The file is written and the writer gone: another store may open the data dir now.
        if let Ok(mut lock) = self.dir_lock.lock() {
            lock.take();
        }
        Ok(())
    }
}

/// Waits for a store thread to end (once; a second call finds the slot empty).
async fn join_thread(
    slot: &Mutex<Option<std::thread::JoinHandle<()>>>,
    name: &str,
) -> Result<(), StoreError> {
    let handle = slot
        .lock()
        .map_err(|_| StoreError::Internal(format!("{name} thread handle poisoned")))?
        .take();
    if let Some(handle) = handle {
        tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?
            .map_err(|_| StoreError::Internal(format!("the {name} thread panicked")))?;
    }
    Ok(())
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("keel.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "another keel process is using {}; one data dir serves one process",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// Read-only connections, reused across reads.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 8;

impl ReadPool {
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(StoreError::sqlite)?,
        };
        let result = f(&conn).map_err(StoreError::sqlite);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=1;")?;
    Ok(conn)
}
