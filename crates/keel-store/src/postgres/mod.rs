//! The PostgreSQL backend: several stateless keel nodes share one database.
//!
//! Each call is one transaction on a pooled connection (`deadpool-postgres`), committed before
//! the call returns (`synchronous_commit` is the server's; keel never turns it off). There is no
//! writer thread and no in-memory dispatch index: the database is the only shared state, so any
//! node may serve any request.
//!
//! - Leasing (`jobs.rs`) takes the next available jobs of a queue with `FOR UPDATE SKIP
//!   LOCKED` on the `jobs_ready` index; a queue with a concurrency or rate limit is leased with
//!   its `queues` row locked, so the running count and the token bucket are exact across nodes.
//! - Wake-ups: after a commit that made work leasable (or something due sooner), the node wakes
//!   its own waiters and its notifier sends one merged `NOTIFY` (outside the transaction: a
//!   `NOTIFY` inside would hold PostgreSQL's notify lock across the commit's WAL flush and
//!   serialize every writer). Every node's listener (`listen.rs`) turns it into a bump of
//!   `subscribe()` and a lower `next_due`. A notification is only a hint: long polls re-try the
//!   lease, and timers re-read the database at least every [`DUE_CACHE_MS`].
//! - Timers (`tick`) run in a transaction that first takes `pg_try_advisory_xact_lock`: one
//!   node at a time does the work; a node that dies holds nothing, so the next tick of any live
//!   node takes over.
//! - Every failure to reach the database is `StoreError::Unavailable` (503) within the call's
//!   time budget; the pool opens new connections when the server is back.

mod admin;
mod combine;
mod jobs;
mod listen;
mod rows;
mod schema;

pub use rows::glob_to_like;

/// The advisory-lock key the timers of a schema run under (for operators and tests: holding it
/// from elsewhere pauses every node's timers).
pub fn timer_lock_key(schema: &str) -> i64 {
    schema::lock_key("timers", schema)
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use keel_core::{
    Event, Job, Json, NewJob, QueueConfig, QueueOverrides, ScheduleSpec, Scope, State, Time,
};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use crate::rules::Ids;
use crate::types::{
    Actor, AuditEntry, Enqueued, JobFilter, JobPage, LeaseRequest, LeasedJob, Outcome, QueueInfo,
    ReplayFilter, ScheduleRecord, SchemaRecord, Tick, TokenRecord,
};
use crate::{Store, StoreError};

/// How long `tick` trusts what it knows of the next due time before reading the database
/// again (a missed notification costs at most this much delay).
pub const DUE_CACHE_MS: i64 = 2_000;

#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://user@host:port/db?...` (libpq-style key=value strings work too).
    pub url: String,
    /// The schema keel's tables live in; created if missing. Several keel deployments (or test
    /// runs) can share one database in different schemas.
    pub schema: String,
    /// Connections in the pool (the listener has one more of its own).
    pub pool_size: usize,
    /// Longest a call may take, waiting for a connection included; then `Unavailable`.
    pub call_timeout: Duration,
    /// Server-wide queue defaults.
    pub defaults: QueueConfig,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl_ms: i64,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            schema: "public".into(),
            pool_size: 16,
            call_timeout: Duration::from_secs(5),
            defaults: QueueConfig::default(),
            idempotency_ttl_ms: 24 * 3_600_000,
        }
    }
}

/// What every call of one store shares.
pub(crate) struct Shared {
    pub(crate) defaults: QueueConfig,
    pub(crate) idempotency_ttl_ms: i64,
    pub(crate) ids: Mutex<Ids>,
    /// The NOTIFY channel of this schema.
    pub(crate) channel: String,
    /// The key of the timers' advisory lock in this schema.
    pub(crate) timer_lock: i64,
    signal: watch::Sender<u64>,
    due: Mutex<Due>,
    /// Queue settings as last read, so an enqueue or a lease need not read them each time.
    /// Forgotten when any node changes a queue (`c` notification) and after `QUEUE_CACHE_TTL`.
    queues: Mutex<HashMap<String, CachedQueue>>,
    /// What this node's commits announced and the notifier has not sent yet.
    pending: Mutex<Pending>,
    announced: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    wake: bool,
    due: Option<Time>,
    queues_changed: bool,
}

/// How long cached queue settings are trusted without a notification (a backstop for a lost
/// notification; a change is normally seen by every node within milliseconds).
const QUEUE_CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct CachedQueue {
    pub(crate) paused: bool,
    pub(crate) config: QueueConfig,
    read_at: std::time::Instant,
}

/// What this node knows of the next due time without asking the database.
struct Due {
    /// The earliest due time read at the last timer pass or hinted since.
    next: Option<Time>,
    /// When the database was last read (store time); `None`: read at the next tick.
    read_at: Option<Time>,
    /// When a rate-limited queue with ready work gets its next token: waiters are woken then.
    rate_wake: Option<Time>,
    /// When retention runs next on this node.
    retention_at: Time,
}

impl Shared {
    fn wake(&self) {
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Something will be due at `at` (a hint from this node's write or another's NOTIFY).
    pub(crate) fn hint_due(&self, at: Time) {
        let sooner = match self.due.lock() {
            Ok(mut due) => {
                let sooner = due.next.is_none_or(|n| at < n);
                if sooner {
                    due.next = Some(at);
                }
                sooner
            }
            Err(_) => true,
        };
        if sooner {
            // The timer loop re-plans its sleep.
            self.wake();
        }
    }

    pub(crate) fn hint_rate_wake(&self, at: Time) {
        if let Ok(mut due) = self.due.lock() {
            due.rate_wake = Some(due.rate_wake.map_or(at, |w| w.min(at)));
        }
        self.hint_due(at);
    }

    /// Forget what is cached: the next tick reads the database, and queue settings are read
    /// again (after a lost listener).
    pub(crate) fn forget_due(&self) {
        if let Ok(mut due) = self.due.lock() {
            due.read_at = None;
        }
        self.forget_queues();
        self.wake();
    }

    /// Queues an announcement for the other nodes (sent by `listen::notify`).
    pub(crate) fn publish(&self, wake: bool, due: Option<Time>, queues_changed: bool) {
        if !wake && due.is_none() && !queues_changed {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.wake |= wake;
            p.due = match (p.due, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            p.queues_changed |= queues_changed;
        }
        self.announced.notify_one();
    }

    fn take_announcements(&self) -> Option<String> {
        let mut p = self.pending.lock().ok()?;
        let taken = std::mem::take(&mut *p);
        listen::payload(taken.wake, taken.due, taken.queues_changed)
    }

    /// Puts back an announcement that could not be sent.
    fn requeue_announcement(&self, payload: &str) {
        let (mut wake, mut due, mut queues) = (false, None, false);
        for part in payload.split(',') {
            match part {
                "w" => wake = true,
                "c" => queues = true,
                d => {
                    due = d
                        .strip_prefix('d')
                        .and_then(|m| m.parse().ok())
                        .map(Time::from_millis)
                }
            }
        }
        self.publish(wake, due, queues);
    }

    pub(crate) fn forget_queues(&self) {
        if let Ok(mut q) = self.queues.lock() {
            q.clear();
        }
    }

    /// The cached settings of `name`, if read within `QUEUE_CACHE_TTL`.
    pub(crate) fn cached_queue(&self, name: &str) -> Option<CachedQueue> {
        let q = self.queues.lock().ok()?;
        q.get(name)
            .filter(|c| c.read_at.elapsed() < QUEUE_CACHE_TTL)
            .cloned()
    }

    pub(crate) fn cache_queue(&self, name: &str, paused: bool, overrides: &QueueOverrides) {
        if let Ok(mut q) = self.queues.lock() {
            q.insert(
                name.to_owned(),
                CachedQueue {
                    paused,
                    config: QueueConfig::with_overrides(&self.defaults, overrides),
                    read_at: std::time::Instant::now(),
                },
            );
        }
    }

    pub(crate) fn next_id(&self, now: Time) -> Result<Uuid, StoreError> {
        self.ids
            .lock()
            .map(|mut ids| ids.next(now))
            .map_err(|_| StoreError::Internal("id generator poisoned".into()))
    }

    pub(crate) fn jitter(&self) -> f64 {
        self.ids.lock().map(|mut ids| ids.jitter()).unwrap_or(0.5)
    }
}

/// An error inside a PostgreSQL call: a domain refusal, a database error, or a lost race that
/// the call retries from the start (a concurrent enqueue took the same idempotency key).
pub(crate) enum PgError {
    Store(StoreError),
    Db(tokio_postgres::Error),
    Retry,
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        PgError::Db(e)
    }
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> PgError {
        PgError::Store(e)
    }
}

impl PgError {
    fn retryable(&self) -> bool {
        match self {
            PgError::Retry => true,
            PgError::Db(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
            }),
            PgError::Store(_) => false,
        }
    }

    pub(crate) fn into_store(self) -> StoreError {
        match self {
            PgError::Store(e) => e,
            PgError::Db(e) => db_error(&e),
            PgError::Retry => {
                StoreError::Unavailable("lost a race too many times; try again".into())
            }
        }
    }
}

/// What a database error means to the caller: the server gone, shutting down, read-only (a
/// standby after failover) or out of resources is `Unavailable`; a full disk is `Full`; the rest
/// is a bug or a broken schema (`Internal`).
pub(crate) fn db_error(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        let source = std::error::Error::source(e);
        let io = source.is_some_and(|s| s.is::<std::io::Error>());
        // "error connecting to server" says little without its cause ("Connection refused").
        let text = match source {
            Some(s) => format!("PostgreSQL: {e}: {s}"),
            None => format!("PostgreSQL: {e}"),
        };
        return if e.is_closed() || io {
            StoreError::Unavailable(text)
        } else {
            StoreError::Internal(text)
        };
    };
    let code = db.code().code();
    if *db.code() == SqlState::DISK_FULL {
        StoreError::Full
    } else if code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION
    {
        StoreError::Unavailable(format!("PostgreSQL: {}", db.message()))
    } else {
        StoreError::Internal(format!("PostgreSQL {code}: {}", db.message()))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_error(&e),
        other => StoreError::Unavailable(format!("PostgreSQL connection pool: {other}")),
    }
}

/// Runs `$body` (an expression using the pooled client `$c` and the shared state `$sh`) as one
/// call: retried from the start when it lost a race, bounded by the store's call timeout.
macro_rules! call {
    ($store:expr, |$c:ident, $sh:ident| $body:expr) => {{
        let store = $store;
        let attempt = async {
            let mut tries = 0u32;
            loop {
                if store.closed.load(Ordering::Acquire) {
                    break Err(StoreError::Unavailable("the store is closed".into()));
                }
                #[allow(unused_mut)]
                let mut $c = store.pool.get().await.map_err(pool_error)?;
                let $sh: &Shared = &store.shared;
                match $body.await {
                    Ok(v) => break Ok(v),
                    Err(e) => {
                        // A failed call dropped its transaction, which queued a ROLLBACK on this
                        // connection. Wait for it, so the call's row locks are gone before anyone
                        // hears of the failure (else a lease on another connection could skip a
                        // job still locked by a refused command).
                        let _ = $c.batch_execute("").await;
                        if e.retryable() && tries < 5 {
                            tries += 1;
                        } else {
                            break Err(e.into_store());
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(store.call_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            )),
        }
    }};
}

pub struct PgStore {
    pool: Pool,
    shared: Arc<Shared>,
    call_timeout: Duration,
    closed: AtomicBool,
    signal: watch::Receiver<u64>,
    /// Enqueues without idempotency keys, to be written in groups (`combine.rs`).
    combiner: tokio::sync::mpsc::UnboundedSender<combine::Call>,
    /// The listener, the notifier and the combiners.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl PgStore {
    /// Connects, applies migrations (under an advisory lock, so nodes starting together take
    /// turns) and starts the listener. Fails with `Unavailable` when the server cannot be reached.
    pub async fn open(config: PgConfig, now: Time) -> Result<PgStore, StoreError> {
        let pg = schema::connect_config(&config)?;
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(config.call_timeout))
            .create_timeout(Some(config.call_timeout))
            .recycle_timeout(Some(config.call_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(pool_error)?;
        schema::check_durable(&client)
            .await
            .map_err(PgError::into_store)?;
        schema::migrate(&mut client, &config.schema, now)
            .await
            .map_err(PgError::into_store)?;
        let mut ids = Ids::new();
        let newest: Option<Uuid> = client
            .query_one("SELECT (SELECT id FROM jobs ORDER BY id DESC LIMIT 1)", &[])
            .await
            .map_err(|e| db_error(&e))?
            .get(0);
        if let Some(id) = newest {
            ids.continue_after(id);
        }
        drop(client);

        let (signal_tx, signal) = watch::channel(0);
        let shared = Arc::new(Shared {
            defaults: config.defaults.clone(),
            idempotency_ttl_ms: config.idempotency_ttl_ms,
            ids: Mutex::new(ids),
            channel: format!("keel_{}", config.schema),
            timer_lock: schema::lock_key("timers", &config.schema),
            signal: signal_tx,
            queues: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            announced: tokio::sync::Notify::new(),
            due: Mutex::new(Due {
                next: None,
                read_at: None,
                rate_wake: None,
                retention_at: Time::EPOCH,
            }),
        });
        let listener = tokio::spawn(listen::run(pg, shared.clone()));
        let notifier = tokio::spawn(listen::notify(pool.clone(), shared.clone()));
        let (combiner, mut background) =
            combine::start(pool.clone(), shared.clone(), config.call_timeout);
        background.extend([listener, notifier]);
        Ok(PgStore {
            pool,
            shared,
            call_timeout: config.call_timeout,
            closed: AtomicBool::new(false),
            signal,
            combiner,
            background: Mutex::new(background),
        })
    }

    /// Creates the schema and applies migrations without starting a store (`keel migrate`).
    pub async fn migrate(config: &PgConfig, now: Time) -> Result<(), StoreError> {
        let pg = schema::connect_config(config)?;
        let (mut client, connection) = pg.connect(NoTls).await.map_err(|e| db_error(&e))?;
        let driver = tokio::spawn(connection);
        let r = schema::migrate(&mut client, &config.schema, now)
            .await
            .map_err(PgError::into_store);
        drop(client);
        let _ = driver.await;
        r
    }

    async fn audit_after(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        data: serde_json::Value,
        now: Time,
    ) -> Result<(), StoreError> {
        call!(self, |c, _sh| admin::audit_alone(
            &mut c, actor, action, target, &data, now
        ))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn enqueue(&self, jobs: Vec<NewJob>, now: Time) -> Result<Vec<Enqueued>, StoreError> {
        if crate::rules::keys_of(&jobs).next().is_none() && !self.closed.load(Ordering::Acquire) {
            // Nothing to look up: written together with whatever else is waiting.
            let (reply, answer) = tokio::sync::oneshot::channel();
            if self.combiner.send((jobs, now, reply)).is_ok() {
                return answer.await.unwrap_or_else(|_| {
                    Err(StoreError::Unavailable("the store is closed".into()))
                });
            }
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        call!(self, |c, sh| jobs::enqueue_call(&mut c, sh, &jobs, now))
    }

    async fn lease(&self, req: LeaseRequest, now: Time) -> Result<Vec<LeasedJob>, StoreError> {
        call!(self, |c, sh| jobs::lease(&mut c, sh, &req, now))
    }

    async fn heartbeat(
        &self,
        id: Uuid,
        token: String,
        lease_ms: i64,
        scope: Scope,
        now: Time,
    ) -> Result<Time, StoreError> {
        let cmd = keel_core::Command::Heartbeat { token, lease_ms };
        let job = call!(self, |c, sh| jobs::apply_one(
            &mut c, sh, id, &cmd, &scope, now
        ))?;
        job.and_then(|j| j.lease)
            .map(|l| l.expires_at)
            .ok_or_else(|| StoreError::Internal("heartbeat left no lease".into()))
    }

    async fn record_outcomes(
        &self,
        items: Vec<Outcome>,
        scope: Scope,
        now: Time,
    ) -> Result<Vec<Result<Job, StoreError>>, StoreError> {
        call!(self, |c, sh| jobs::outcomes(
            &mut c, sh, &items, &scope, now
        ))
    }

    async fn cancel(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError> {
        let cmd = keel_core::Command::Cancel;
        call!(self, |c, sh| jobs::apply_one(
            &mut c, sh, id, &cmd, &scope, now
        ))?
        .ok_or(StoreError::NotFound)
    }

    async fn retry(&self, id: Uuid, scope: Scope, now: Time) -> Result<Job, StoreError> {
        let cmd = keel_core::Command::Retry;
        call!(self, |c, sh| jobs::apply_one(
            &mut c, sh, id, &cmd, &scope, now
        ))?
        .ok_or(StoreError::NotFound)
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StoreError> {
        call!(self, |c, _sh| rows::get_job(&c, id))
    }

    async fn list_jobs(&self, filter: JobFilter) -> Result<JobPage, StoreError> {
        call!(self, |c, _sh| rows::list_jobs(&c, &filter))
    }

    async fn job_events(&self, id: Uuid) -> Result<Option<Vec<Event>>, StoreError> {
        let events = call!(self, |c, _sh| rows::events_of(&c, id))?;
        Ok((!events.is_empty()).then_some(events))
    }

    async fn queues(&self, now: Time) -> Result<Vec<QueueInfo>, StoreError> {
        call!(self, |c, sh| admin::queue_infos(&c, sh, None, now))
    }

    async fn queue(&self, name: &str, now: Time) -> Result<Option<QueueInfo>, StoreError> {
        Ok(
            call!(self, |c, sh| admin::queue_infos(&c, sh, Some(name), now))?
                .into_iter()
                .next(),
        )
    }

    async fn configure_queue(
        &self,
        name: &str,
        overrides: QueueOverrides,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError> {
        call!(self, |c, sh| admin::configure_queue(
            &mut c, sh, name, &overrides, actor, now
        ))?;
        self.queue(name, now).await?.ok_or(StoreError::NotFound)
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<QueueInfo, StoreError> {
        call!(self, |c, sh| admin::set_paused(
            &mut c, sh, name, paused, actor, now
        ))?;
        self.queue(name, now).await?.ok_or(StoreError::NotFound)
    }

    async fn replay(
        &self,
        queue: &str,
        filter: ReplayFilter,
        actor: &Actor,
        now: Time,
    ) -> Result<u64, StoreError> {
        let total = crate::rules::in_chunks(filter.limit, |n| {
            let filter = &filter;
            async move {
                call!(self, |c, sh| jobs::replay_chunk(
                    &mut c, sh, queue, filter, n, now
                ))
            }
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
        let total = crate::rules::in_chunks(usize::MAX, |n| async move {
            call!(self, |c, sh| jobs::purge_chunk(
                &mut c, sh, queue, state, n, now
            ))
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
        call!(self, |c, _sh| admin::create_token(
            &mut c, &token, actor, now
        ))
    }

    async fn delete_token(
        &self,
        id: Uuid,
        actor: &Actor,
        now: Time,
    ) -> Result<TokenRecord, StoreError> {
        call!(self, |c, _sh| admin::delete_token(&mut c, id, actor, now))
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        call!(self, |c, _sh| admin::tokens(&c))
    }

    async fn put_schema(
        &self,
        kind: &str,
        schema: Json,
        actor: &Actor,
        now: Time,
    ) -> Result<SchemaRecord, StoreError> {
        call!(self, |c, _sh| admin::put_schema(
            &mut c, kind, &schema, actor, now
        ))
    }

    async fn delete_schema(&self, kind: &str, actor: &Actor, now: Time) -> Result<(), StoreError> {
        call!(self, |c, _sh| admin::delete_schema(
            &mut c, kind, actor, now
        ))
    }

    async fn schemas(&self) -> Result<Vec<SchemaRecord>, StoreError> {
        call!(self, |c, _sh| admin::schemas(&c))
    }

    async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        data: serde_json::Value,
        now: Time,
    ) -> Result<(), StoreError> {
        self.audit_after(actor, action, target, data, now).await
    }

    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        call!(self, |c, _sh| admin::audit_log(&c, before, limit))
    }

    async fn put_schedule(
        &self,
        name: &str,
        spec: ScheduleSpec,
        paused: Option<bool>,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError> {
        call!(self, |c, sh| admin::put_schedule(
            &mut c, sh, name, &spec, paused, actor, now
        ))?;
        self.schedule(name).await?.ok_or(StoreError::NotFound)
    }

    async fn delete_schedule(
        &self,
        name: &str,
        actor: &Actor,
        now: Time,
    ) -> Result<(), StoreError> {
        call!(self, |c, _sh| admin::delete_schedule(
            &mut c, name, actor, now
        ))
    }

    async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Result<ScheduleRecord, StoreError> {
        call!(self, |c, sh| admin::set_schedule_paused(
            &mut c, sh, name, paused, actor, now
        ))?;
        self.schedule(name).await?.ok_or(StoreError::NotFound)
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        call!(self, |c, _sh| admin::schedules(&c, None))
    }

    async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(call!(self, |c, _sh| admin::schedules(&c, Some(name)))?
            .into_iter()
            .next())
    }

    async fn tick(&self, now: Time) -> Result<Tick, StoreError> {
        let cached = {
            let mut due = self
                .shared
                .due
                .lock()
                .map_err(|_| StoreError::Internal("due cache poisoned".into()))?;
            if due.rate_wake.is_some_and(|at| at <= now) {
                // A rate-limited queue has a token again: waiting workers and pushes try again.
                due.rate_wake = None;
                self.shared.wake();
            }
            let fresh = due
                .read_at
                .is_some_and(|r| r <= now && now.millis_since(r) < DUE_CACHE_MS);
            let nothing_due = due.next.is_none_or(|n| now < n) && now < due.retention_at;
            (fresh && nothing_due).then(|| {
                let recheck = due.read_at.map(|r| r.plus_ms(DUE_CACHE_MS));
                [due.next, recheck, due.rate_wake, Some(due.retention_at)]
                    .into_iter()
                    .flatten()
                    .min()
            })
        };
        if let Some(next_due) = cached {
            return Ok(Tick { next_due });
        }
        let retention = self
            .shared
            .due
            .lock()
            .map(|d| now >= d.retention_at)
            .unwrap_or(true);
        let pass = call!(self, |c, sh| jobs::tick(&mut c, sh, retention, now))?;
        let mut due = self
            .shared
            .due
            .lock()
            .map_err(|_| StoreError::Internal("due cache poisoned".into()))?;
        due.read_at = Some(now);
        due.next = pass.next_due;
        if pass.retention_handled {
            due.retention_at = if pass.more_retention {
                now
            } else {
                now.plus_ms(jobs::RETENTION_EVERY_MS)
            };
        }
        let next_due = [
            pass.next_due,
            Some(now.plus_ms(DUE_CACHE_MS)),
            due.rate_wake,
            Some(due.retention_at),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(Tick { next_due })
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.signal.clone()
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        call!(self, |c, _sh| schema::check_writable(&c))
    }

    async fn export_jobs(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<Job>, StoreError> {
        call!(self, |c, _sh| rows::export_jobs(&c, after, limit))
    }

    async fn export_events(&self, after_seq: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        call!(self, |c, _sh| rows::export_events(&c, after_seq, limit))
    }

    async fn import(
        &self,
        jobs: Vec<Job>,
        events: Vec<Event>,
        now: Time,
    ) -> Result<(), StoreError> {
        call!(self, |c, sh| jobs::import(&mut c, sh, &jobs, &events, now))
    }

    async fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        let tasks = self
            .background
            .lock()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        for task in tasks {
            task.abort();
        }
        self.pool.close();
        Ok(())
    }
}
