//! Job changes in PostgreSQL: enqueue, lease, outcomes and single-job commands, replay and
//! purge, and the timer pass. Each loads the rows it changes with `FOR UPDATE` (or `SKIP
//! LOCKED` where any row will do), runs `keel_core::step`, and records the result in
//! [`Writes`], which writes rows and events together and commits.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::{Client, GenericClient};
use keel_core::lease::{Tokens, token_hash};
use keel_core::schedule::plan_firing;
use keel_core::{
    Command, EventData, Job, NewJob, QueueConfig, QueueOverrides, ScheduleSpec, Scope, State, Time,
    TokenBucket, step,
};
use uuid::Uuid;

use super::rows::{JOB_COLUMNS, Writes, execute, jobs_from_rows, lock_jobs, query};
use super::{CachedQueue, PgError, Shared};
use crate::StoreError;
use crate::rules::{LiveKeys, Plan, Resolved, keys_of, plan_enqueue};
use crate::types::{Enqueued, LeaseRequest, LeasedJob, Outcome, ReplayFilter, SCHEDULE_RUNS_KEPT};

/// Jobs promoted or expired in one timer pass at most, so a backlog cannot hold one
/// transaction for long (the next pass is due at once).
const TIMER_BATCH: i64 = 5_000;
/// Finished jobs deleted per queue and state in one retention pass.
const RETENTION_BATCH: i64 = 1_000;
pub(super) const RETENTION_EVERY_MS: i64 = 1_000;
/// Ticks one schedule fires in one pass at most.
const MAX_TICKS_PER_PASS: usize = 1_000;

pub(super) async fn enqueue_call(
    c: &mut Client,
    sh: &Shared,
    jobs: &[NewJob],
    now: Time,
) -> Result<Vec<Enqueued>, PgError> {
    let mut w = Writes::default();
    let tx = c.transaction().await?;
    let out = enqueue(&tx, sh, &mut w, jobs, now).await?;
    w.commit(tx, sh).await?;
    Ok(out)
}

/// Records new jobs in `w` (the caller writes them), all or none: a conflict is decided before
/// anything is recorded. Keys are written here, in the caller's transaction: losing a race for
/// one to a concurrent transaction is `Retry` (the whole call starts again and then finds the
/// key taken).
pub(super) async fn enqueue(
    tx: &impl GenericClient,
    sh: &Shared,
    w: &mut Writes,
    jobs: &[NewJob],
    now: Time,
) -> Result<Vec<Enqueued>, PgError> {
    let (key_queues, keys): (Vec<&str>, Vec<&str>) = keys_of(jobs).unzip();
    let mut live = LiveKeys::new();
    if !keys.is_empty() {
        let rows = query(
            tx,
            "SELECT i.queue, i.key, i.job_id, i.fingerprint FROM idempotency_keys i \
             JOIN unnest($1::text[], $2::text[]) AS u(q, k) ON i.queue = u.q AND i.key = u.k \
             WHERE i.expires_at > $3",
            &[&key_queues, &keys, &now.as_millis()],
        )
        .await?;
        for r in rows {
            live.insert(
                (r.try_get(0)?, r.try_get(1)?),
                (r.try_get(2)?, r.try_get(3)?),
            );
        }
    }
    let plans = plan_enqueue(jobs, &live)?;
    let replays: Vec<Uuid> = plans.iter().filter_map(Plan::original).collect();
    let mut originals: HashMap<Uuid, Job> = HashMap::new();
    if !replays.is_empty() {
        let rows = query(
            tx,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY($1)"),
            &[&replays],
        )
        .await?;
        originals.extend(jobs_from_rows(&rows)?.into_iter().map(|j| (j.id, j)));
    }
    let configs = queue_configs(tx, sh, jobs.iter().map(|j| j.queue.as_str()), now).await?;

    let mut out: Vec<Enqueued> = Vec::with_capacity(jobs.len());
    let mut freed: (Vec<&str>, Vec<&str>) = Default::default();
    let mut taken: (Vec<&str>, Vec<&str>, Vec<Uuid>, Vec<String>) = Default::default();
    for (new, plan) in jobs.iter().zip(plans) {
        let original = plan.original().and_then(|id| originals.get(&id));
        let fingerprint = match plan.resolve(&out, original) {
            Resolved::Answer(e) => {
                out.push(*e);
                continue;
            }
            Resolved::Create {
                fingerprint,
                stale_key,
            } => {
                if let (true, Some(key)) = (stale_key, new.idempotency_key.as_deref()) {
                    // The original is gone: its key is free again.
                    freed.0.push(&new.queue);
                    freed.1.push(key);
                }
                fingerprint
            }
        };
        let config = configs.get(&new.queue).unwrap_or(&sh.defaults);
        let job = new.clone().into_job(sh.next_id(now)?, config, now);
        if let (Some(key), Some(fingerprint)) = (new.idempotency_key.as_deref(), fingerprint) {
            taken.0.push(&new.queue);
            taken.1.push(key);
            taken.2.push(job.id);
            taken.3.push(fingerprint);
        }
        let event = EventData::Enqueued {
            job: Box::new(job.clone()),
        };
        w.record(None, Some(&job), vec![event], now);
        out.push(Enqueued {
            job,
            replayed: false,
        });
    }
    if !freed.0.is_empty() {
        execute(
            tx,
            "DELETE FROM idempotency_keys i USING unnest($1::text[], $2::text[]) AS u(q, k) \
             WHERE i.queue = u.q AND i.key = u.k",
            &[&freed.0, &freed.1],
        )
        .await?;
    }
    if !taken.0.is_empty() {
        let expires = now.plus_ms(sh.idempotency_ttl_ms).as_millis();
        let n = execute(
            tx,
            "INSERT INTO idempotency_keys (queue, key, job_id, fingerprint, expires_at) \
             SELECT u.q, u.k, u.j, u.f, $5 FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[]) AS u(q, k, j, f) \
             ON CONFLICT (queue, key) DO UPDATE SET job_id = excluded.job_id, fingerprint = excluded.fingerprint, \
             expires_at = excluded.expires_at WHERE idempotency_keys.expires_at <= $6",
            &[&taken.0, &taken.1, &taken.2, &taken.3, &expires, &now.as_millis()],
        )
        .await?;
        if n < taken.0.len() as u64 {
            // A concurrent enqueue committed one of these keys first.
            return Err(PgError::Retry);
        }
    }
    Ok(out)
}

/// The effective config of each named queue, creating the queues that do not exist yet.
/// Served from the settings cache when every name is in it.
async fn queue_configs<'a>(
    c: &impl GenericClient,
    sh: &Shared,
    names: impl Iterator<Item = &'a str>,
    now: Time,
) -> Result<HashMap<String, QueueConfig>, PgError> {
    // Sorted, so concurrent first uses of the same queues insert in one order (no deadlock).
    let names: Vec<&str> = names.collect::<BTreeSet<_>>().into_iter().collect();
    let cached: Option<HashMap<String, QueueConfig>> = names
        .iter()
        .map(|n| sh.cached_queue(n).map(|q| ((*n).to_owned(), q.config)))
        .collect();
    if let Some(cached) = cached {
        return Ok(cached);
    }
    let rows = query(
        c,
        "WITH created AS (INSERT INTO queues (name, created_at, updated_at) \
         SELECT n, $2, $2 FROM unnest($1::text[]) AS n ON CONFLICT DO NOTHING RETURNING name) \
         SELECT name, paused, overrides::text FROM queues WHERE name = ANY($1) \
         UNION ALL SELECT name, false, '{}' FROM created",
        &[&names, &now.as_millis()],
    )
    .await?;
    let mut out = HashMap::new();
    for r in rows {
        let name: String = r.try_get(0)?;
        let overrides = parse_overrides(&name, &r.try_get::<_, String>(2)?)?;
        sh.cache_queue(&name, r.try_get(1)?, &overrides);
        out.insert(name, QueueConfig::with_overrides(&sh.defaults, &overrides));
    }
    Ok(out)
}

/// Pause and config of each named queue that exists (cached, or read).
async fn queue_states(
    c: &impl GenericClient,
    sh: &Shared,
    names: &[String],
) -> Result<HashMap<String, CachedQueue>, PgError> {
    let mut out = HashMap::new();
    let mut missing = Vec::new();
    for name in names {
        match sh.cached_queue(name) {
            Some(q) => {
                out.insert(name.clone(), q);
            }
            None => missing.push(name.as_str()),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    for r in query(
        c,
        "SELECT name, paused, overrides::text FROM queues WHERE name = ANY($1)",
        &[&missing],
    )
    .await?
    {
        let name: String = r.try_get(0)?;
        let overrides = parse_overrides(&name, &r.try_get::<_, String>(2)?)?;
        sh.cache_queue(&name, r.try_get(1)?, &overrides);
        if let Some(q) = sh.cached_queue(&name) {
            out.insert(name, q);
        }
    }
    Ok(out)
}

pub(super) fn parse_overrides(queue: &str, text: &str) -> Result<QueueOverrides, PgError> {
    serde_json::from_str(text).map_err(|e| {
        PgError::Store(StoreError::Internal(format!(
            "queue {queue}: bad overrides: {e}"
        )))
    })
}

/// Applies `cmd` to each job (errors are logged and the job skipped: a timer must not stall
/// on one row).
fn run_timer(w: &mut Writes, jobs: Vec<Job>, cmd: impl Fn() -> Command, now: Time) {
    for job in jobs {
        match step(&job, &cmd(), now) {
            Ok((next, events)) => w.record(Some(&job), next.as_ref(), events, now),
            Err(e) => {
                tracing::error!(message = "Timer found a job it cannot move; skipped.", job_id = %job.id, error = %e);
            }
        }
    }
}

pub(super) async fn lease(
    c: &mut Client,
    sh: &Shared,
    req: &LeaseRequest,
    now: Time,
) -> Result<Vec<LeasedJob>, PgError> {
    let tx = c.transaction().await?;
    let mut w = Writes::default();
    let queues = queue_states(&tx, sh, &req.queues).await?;
    // Jobs due now are leasable now, however late the timer is.
    let due = query(
        &tx,
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE queue = ANY($1) AND state = 'scheduled' AND run_at <= $2 \
             ORDER BY run_at LIMIT $3 FOR UPDATE SKIP LOCKED"
        ),
        &[&req.queues, &now.as_millis(), &TIMER_BATCH],
    )
    .await?;
    if !due.is_empty() {
        run_timer(&mut w, jobs_from_rows(&due)?, || Command::Promote, now);
        w.flush(&tx).await?;
    }

    let mut out = Vec::new();
    for queue in &req.queues {
        let Some(state) = queues.get(queue) else {
            continue;
        };
        let want = req.max_jobs.saturating_sub(out.len());
        if state.paused {
            continue;
        }
        if want == 0 {
            break;
        }
        let config = &state.config;
        let (want, mut bucket) = limits(&tx, queue, config, want, now).await?;
        if want == 0 {
            continue;
        }
        let rows = query(
            &tx,
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE queue = $1 AND state = 'available' \
                 ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[queue, &(want as i64)],
        )
        .await?;
        let mut ready = jobs_from_rows(&rows)?;
        if let (Some(limit), Some(b)) = (config.rate_limit, bucket.as_mut())
            && !ready.is_empty()
        {
            let granted = b.take(&limit, ready.len(), now);
            if granted < ready.len() {
                // Over its rate: hand out no more, and wake waiters when a token is due.
                sh.hint_rate_wake(b.next_token_at(&limit));
                ready.truncate(granted);
            }
            let (tokens, at) = b.parts();
            execute(
                &tx,
                "UPDATE queues SET rate_tokens = $2, rate_at = $3 WHERE name = $1",
                &[queue, &tokens, &at.as_millis()],
            )
            .await?;
        }
        let mut tokens = Tokens::new(ready.len());
        for job in ready {
            let token = tokens.next_token().map_err(StoreError::no_token)?;
            let cmd = Command::Lease {
                token_hash: token_hash(&token),
                lease_ms: req.lease_ms.unwrap_or(job.timeout_ms),
                worker: req.worker.clone(),
            };
            let (next, events) = step(&job, &cmd, now).map_err(StoreError::from)?;
            w.record(Some(&job), next.as_ref(), events, now);
            if let Some(job) = next {
                out.push(LeasedJob { job, token });
            }
        }
    }
    w.commit(tx, sh).await?;
    Ok(out)
}

/// How many jobs a lease may take from a queue with a concurrency or rate limit, with the
/// queue's row locked until commit so nodes leasing the same queue take turns (the running
/// count and the bucket are then exact), and the queue's token bucket.
async fn limits(
    tx: &impl GenericClient,
    queue: &str,
    config: &QueueConfig,
    want: usize,
    now: Time,
) -> Result<(usize, Option<TokenBucket>), PgError> {
    if config.concurrency.is_none() && config.rate_limit.is_none() {
        return Ok((want, None));
    }
    let rows = query(
        tx,
        "SELECT rate_tokens, rate_at FROM queues WHERE name = $1 FOR UPDATE",
        &[&queue],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Ok((0, None));
    };
    let mut want = want;
    if let Some(limit) = config.concurrency {
        let running: i64 = query(
            tx,
            "SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'",
            &[&queue],
        )
        .await?
        .first()
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
        want = want.min((i64::from(limit) - running).max(0) as usize);
    }
    let bucket = config.rate_limit.map(|limit| {
        match (
            row.try_get::<_, Option<f64>>(0).ok().flatten(),
            row.try_get::<_, Option<i64>>(1).ok().flatten(),
        ) {
            (Some(tokens), Some(at)) => TokenBucket::from_parts(tokens, Time::from_millis(at)),
            _ => TokenBucket::full(&limit, now),
        }
    });
    Ok((want, bucket))
}

/// One command on one job the scope allows; `Ok(None)`: the job was deleted (purge).
pub(super) async fn apply_one(
    c: &mut Client,
    sh: &Shared,
    id: Uuid,
    cmd: &Command,
    scope: &Scope,
    now: Time,
) -> Result<Option<Job>, PgError> {
    let tx = c.transaction().await?;
    let jobs = lock_jobs(&tx, &[id]).await?;
    let Some(job) = jobs.get(&id).filter(|j| scope.allows(&j.queue)) else {
        return Err(StoreError::NotFound.into());
    };
    let (next, events) = step(job, cmd, now).map_err(StoreError::from)?;
    let mut w = Writes::default();
    w.record(Some(job), next.as_ref(), events, now);
    w.commit(tx, sh).await?;
    Ok(next)
}

/// Outcomes in one transaction; each item succeeds or fails alone (a refused item writes
/// nothing). A push attempt's delivery is recorded before its outcome.
pub(super) async fn outcomes(
    c: &mut Client,
    sh: &Shared,
    items: &[Outcome],
    scope: &Scope,
    now: Time,
) -> Result<Vec<Result<Job, StoreError>>, PgError> {
    let tx = c.transaction().await?;
    let ids: Vec<Uuid> = items
        .iter()
        .map(|i| i.id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut jobs = lock_jobs(&tx, &ids).await?;
    let mut w = Writes::default();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let mut apply = |cmd: Command| -> Result<Job, StoreError> {
            let job = jobs
                .get(&item.id)
                .filter(|j| scope.allows(&j.queue))
                .ok_or(StoreError::NotFound)?;
            let (next, events) = step(job, &cmd, now)?;
            w.record(Some(job), next.as_ref(), events, now);
            match next {
                Some(next) => {
                    jobs.insert(item.id, next.clone());
                    Ok(next)
                }
                None => {
                    jobs.remove(&item.id);
                    Err(StoreError::NotFound)
                }
            }
        };
        if let Some(d) = &item.delivery {
            let delivered = Command::Delivered {
                token: item.token.clone(),
                status: d.status,
                duration_ms: d.duration_ms,
                error: d.error.clone(),
            };
            if let Err(e) = apply(delivered) {
                out.push(Err(e));
                continue;
            }
        }
        let cmd = item
            .kind
            .clone()
            .into_command(item.token.clone(), sh.jitter());
        out.push(apply(cmd));
    }
    w.commit(tx, sh).await?;
    Ok(out)
}

async fn queue_exists(tx: &impl GenericClient, queue: &str) -> Result<bool, PgError> {
    Ok(
        !query(tx, "SELECT 1 FROM queues WHERE name = $1", &[&queue])
            .await?
            .is_empty(),
    )
}

/// Applies `cmd` to up to `limit` jobs of `queue` in `state` (of `kind`, if given), finished
/// ones earliest finished first, others oldest first; returns how many it moved.
async fn bulk(
    c: &mut Client,
    sh: &Shared,
    queue: &str,
    (state, kind): (State, Option<&str>),
    limit: usize,
    cmd: Command,
    now: Time,
) -> Result<u64, PgError> {
    let tx = c.transaction().await?;
    if !queue_exists(&tx, queue).await? {
        return Err(StoreError::NotFound.into());
    }
    // Finished jobs earliest finished first (through `jobs_finished`), others oldest first, as
    // the SQLite store takes them.
    let order = if state.is_final() {
        "finished_at, id"
    } else {
        "id"
    };
    let rows = query(
        &tx,
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE queue = $1 AND state = $2 AND ($3::text IS NULL OR kind = $3) \
             ORDER BY {order} LIMIT $4 FOR UPDATE SKIP LOCKED"
        ),
        &[&queue, &state.as_str(), &kind, &(limit as i64)],
    )
    .await?;
    let mut w = Writes::default();
    let mut n = 0;
    for job in jobs_from_rows(&rows)? {
        if let Ok((next, events)) = step(&job, &cmd, now) {
            w.record(Some(&job), next.as_ref(), events, now);
            n += 1;
        }
    }
    w.commit(tx, sh).await?;
    Ok(n)
}

pub(super) async fn replay_chunk(
    c: &mut Client,
    sh: &Shared,
    queue: &str,
    filter: &ReplayFilter,
    limit: usize,
    now: Time,
) -> Result<u64, PgError> {
    let kind = filter.kind.as_deref();
    bulk(
        c,
        sh,
        queue,
        (filter.state, kind),
        limit,
        Command::Retry,
        now,
    )
    .await
}

pub(super) async fn purge_chunk(
    c: &mut Client,
    sh: &Shared,
    queue: &str,
    state: State,
    limit: usize,
    now: Time,
) -> Result<u64, PgError> {
    bulk(c, sh, queue, (state, None), limit, Command::Purge, now).await
}

/// What one timer pass found.
pub(super) struct TickPass {
    pub(super) next_due: Option<Time>,
    /// Retention ran in this pass, or another node holding the timers' lock runs it.
    pub(super) retention_handled: bool,
    /// Retention hit a batch limit: more is due at once.
    pub(super) more_retention: bool,
}

/// One timer pass, by whichever node holds the timers' advisory lock for this transaction:
/// due jobs become available, expired leases become failed attempts, schedules fire their due
/// ticks, and (when `retention` is due on this node) old finished jobs and expired
/// idempotency keys are deleted.
pub(super) async fn tick(
    c: &mut Client,
    sh: &Shared,
    retention: bool,
    now: Time,
) -> Result<TickPass, PgError> {
    let tx = c.transaction().await?;
    let locked: bool = query(
        &tx,
        "SELECT pg_try_advisory_xact_lock($1)",
        &[&sh.timer_lock],
    )
    .await?
    .first()
    .map(|r| r.try_get(0))
    .transpose()?
    .unwrap_or(false);
    if !locked {
        // Another node is running the timers (retention included) right now; look again soon.
        tx.commit().await?;
        return Ok(TickPass {
            next_due: Some(now.plus_ms(RETENTION_EVERY_MS)),
            retention_handled: true,
            more_retention: false,
        });
    }
    let mut w = Writes::default();
    let due = query(
        &tx,
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'scheduled' AND run_at <= $1 \
             ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        &[&now.as_millis(), &TIMER_BATCH],
    )
    .await?;
    let expired = query(
        &tx,
        &format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires_at <= $1 \
             ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED"
        ),
        &[&now.as_millis(), &TIMER_BATCH],
    )
    .await?;
    let backlog = due.len() as i64 == TIMER_BATCH || expired.len() as i64 == TIMER_BATCH;
    run_timer(&mut w, jobs_from_rows(&due)?, || Command::Promote, now);
    run_timer(
        &mut w,
        jobs_from_rows(&expired)?,
        || Command::ExpireLease {
            jitter: sh.jitter(),
        },
        now,
    );
    w.flush(&tx).await?;
    let more_retention = if retention {
        run_retention(&tx, sh, now).await?
    } else {
        false
    };
    fire_schedules(&tx, sh, &mut w, now).await?;
    let next_due = if backlog {
        Some(now)
    } else {
        let row = query(
            &tx,
            "SELECT (SELECT min(run_at) FROM jobs WHERE state = 'scheduled'), \
             (SELECT min(lease_expires_at) FROM jobs WHERE state = 'running'), \
             (SELECT min(next_run_at) FROM schedules WHERE NOT paused)",
            &[],
        )
        .await?;
        let mut next: Option<Time> = None;
        if let Some(r) = row.first() {
            for i in 0..3 {
                if let Some(t) = r.try_get::<_, Option<i64>>(i)? {
                    let t = Time::from_millis(t);
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    };
    // The pass's own writes need no hint to this node: it just read the next due time.
    w.due = None;
    w.commit(tx, sh).await?;
    Ok(TickPass {
        next_due,
        retention_handled: retention,
        more_retention,
    })
}

/// Deletes finished jobs past their queue's retention, with their events, and expired
/// idempotency keys. Returns true when a batch limit was hit.
async fn run_retention(tx: &impl GenericClient, sh: &Shared, now: Time) -> Result<bool, PgError> {
    let mut more = false;
    for r in query(tx, "SELECT name, overrides::text FROM queues", &[]).await? {
        let name: String = r.try_get(0)?;
        let config = QueueConfig::with_overrides(
            &sh.defaults,
            &parse_overrides(&name, &r.try_get::<_, String>(1)?)?,
        );
        let keep = config.retention;
        for (state, keep_ms) in [
            (State::Completed, keep.completed_ms),
            (State::Dead, keep.dead_ms),
            (State::Cancelled, keep.dead_ms),
        ] {
            let n = execute(
                tx,
                "WITH doomed AS (SELECT id FROM jobs WHERE queue = $1 AND state = $2 AND finished_at < $3 \
                 LIMIT $4 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM events WHERE job_id IN (SELECT id FROM doomed)) \
                 DELETE FROM jobs WHERE id IN (SELECT id FROM doomed)",
                &[&name, &state.as_str(), &now.plus_ms(-keep_ms).as_millis(), &RETENTION_BATCH],
            )
            .await?;
            more |= n as i64 == RETENTION_BATCH;
        }
    }
    let keys = execute(
        tx,
        "DELETE FROM idempotency_keys WHERE (queue, key) IN \
         (SELECT queue, key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
        &[&now.as_millis(), &RETENTION_BATCH],
    )
    .await?;
    Ok(more || keys as i64 == RETENTION_BATCH)
}

/// Fires every due tick of every unpaused schedule, each schedule's row locked: the tick's
/// job, the schedule's clock and the run records commit together, and the tick's idempotency
/// key stops any second firing.
async fn fire_schedules(
    tx: &impl GenericClient,
    sh: &Shared,
    w: &mut Writes,
    now: Time,
) -> Result<(), PgError> {
    let due = query(
        tx,
        "SELECT name, spec::text, next_run_at, last_tick_at FROM schedules \
         WHERE NOT paused AND next_run_at <= $1 ORDER BY name FOR UPDATE",
        &[&now.as_millis()],
    )
    .await?;
    for r in due {
        let name: String = r.try_get(0)?;
        let spec: ScheduleSpec = match serde_json::from_str(&r.try_get::<_, String>(1)?) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(message = "Schedule cannot be read; not fired.", schedule = %name, error = %e);
                continue;
            }
        };
        let ticker = match spec.cadence.ticker() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(message = "Schedule cannot be armed.", schedule = %name, error = %e);
                continue;
            }
        };
        let next = Time::from_millis(r.try_get(2)?);
        let mut last = r.try_get::<_, Option<i64>>(3)?.map(Time::from_millis);
        let firing = plan_firing(&ticker, next, now, spec.catch_up, MAX_TICKS_PER_PASS);
        let mut runs = Vec::with_capacity(firing.fire.len() + 1);
        if let Some(run) = crate::rules::skipped_run(&name, &firing, now) {
            last = last.max(run.skipped_until);
            runs.push(run);
        }
        for tick in &firing.fire {
            let enqueued = match enqueue(tx, sh, w, &[spec.job.job_at(&name, *tick)], now).await {
                Ok(done) => {
                    // Written now, so a later lookup in this pass sees the job.
                    w.flush(tx).await?;
                    Ok(done)
                }
                Err(PgError::Store(e)) => Err(e),
                Err(other) => return Err(other),
            };
            runs.push(crate::rules::tick_run(&name, *tick, now, enqueued)?);
            last = last.max(Some(*tick));
        }
        execute(
            tx,
            "UPDATE schedules SET next_run_at = $2, last_tick_at = $3 WHERE name = $1",
            &[
                &name,
                &firing.next_run_at.map(Time::as_millis),
                &last.map(Time::as_millis),
            ],
        )
        .await?;
        for run in &runs {
            execute(
                tx,
                "INSERT INTO schedule_runs (schedule, tick_at, fired_at, outcome, job_id, skipped_until) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &name,
                    &run.tick_at.as_millis(),
                    &run.fired_at.as_millis(),
                    &run.outcome.as_str(),
                    &run.job_id,
                    &run.skipped_until.map(Time::as_millis),
                ],
            )
            .await?;
        }
        execute(
            tx,
            "DELETE FROM schedule_runs WHERE schedule = $1 AND seq <= \
             (SELECT seq FROM schedule_runs WHERE schedule = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            &[&name, &(SCHEDULE_RUNS_KEPT as i64)],
        )
        .await?;
    }
    Ok(())
}

/// Inserts exported jobs and events as they are (see `Store::import`).
pub(super) async fn import(
    c: &mut Client,
    sh: &Shared,
    jobs: &[Job],
    events: &[keel_core::Event],
    now: Time,
) -> Result<(), PgError> {
    crate::rules::check_importable(jobs)?;
    let tx = c.transaction().await?;
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
    if let Some(r) = query(
        &tx,
        "SELECT id FROM jobs WHERE id = ANY($1) LIMIT 1",
        &[&ids],
    )
    .await?
    .first()
    {
        let id: Uuid = r.try_get(0)?;
        return Err(StoreError::Conflict(format!("job {id} already exists in this store")).into());
    }
    queue_configs(&tx, sh, jobs.iter().map(|j| j.queue.as_str()), now).await?;
    let mut w = Writes::default();
    for job in jobs {
        w.record(None, Some(job), vec![], now);
        if let Ok(mut g) = sh.ids.lock() {
            g.continue_after(job.id);
        }
    }
    w.events_as_given(events);
    w.commit(tx, sh).await
}
