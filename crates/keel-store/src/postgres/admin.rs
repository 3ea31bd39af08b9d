//! Queues, tokens, payload schemas, the audit log and schedules in PostgreSQL. Every admin
//! change writes its audit row in the same transaction as the change.

use deadpool_postgres::{Client, GenericClient};
use keel_core::{Json, QueueConfig, QueueOverrides, Role, ScheduleClock, ScheduleSpec, Time};
use tokio_postgres::Row;
use uuid::Uuid;

use super::jobs::parse_overrides;
use super::rows::{Writes, execute, query};
use super::{PgError, Shared};
use crate::StoreError;
use crate::types::{
    Actor, AuditEntry, Counts, QueueInfo, RunOutcome, SCHEDULE_RUNS_KEPT, ScheduleRecord,
    ScheduleRun, SchemaRecord, TokenRecord,
};

fn bad(what: &str, e: impl std::fmt::Display) -> PgError {
    PgError::Store(StoreError::Internal(format!(
        "stored {what} is invalid: {e}"
    )))
}

/// Appends one audit row. Call it only once the change itself has succeeded.
async fn audit(
    tx: &impl GenericClient,
    actor: &Actor,
    action: &str,
    target: &str,
    data: &serde_json::Value,
    now: Time,
) -> Result<(), PgError> {
    execute(
        tx,
        "INSERT INTO audit (at, actor_id, actor_name, action, target, data) VALUES ($1, $2, $3, $4, $5, $6::text::json)",
        &[&now.as_millis(), &actor.token_id, &actor.name, &action, &target, &data.to_string()],
    )
    .await?;
    Ok(())
}

/// An audit entry on its own (changes made in several transactions, and the server's own).
pub(super) async fn audit_alone(
    c: &mut Client,
    actor: &Actor,
    action: &str,
    target: &str,
    data: &serde_json::Value,
    now: Time,
) -> Result<(), PgError> {
    audit(&*c, actor, action, target, data, now).await
}

pub(super) async fn queue_infos(
    c: &Client,
    sh: &Shared,
    only: Option<&str>,
    now: Time,
) -> Result<Vec<QueueInfo>, PgError> {
    let mut out = Vec::new();
    for r in query(
        c,
        "SELECT name, paused, overrides::text FROM queues WHERE $1::text IS NULL OR name = $1 ORDER BY name",
        &[&only],
    )
    .await?
    {
        let name: String = r.try_get(0)?;
        let overrides = parse_overrides(&name, &r.try_get::<_, String>(2)?)?;
        let mut counts = Counts::default();
        for s in query(
            c,
            "SELECT state, count(*) FROM jobs WHERE queue = $1 GROUP BY state",
            &[&name],
        )
        .await?
        {
            let state: String = s.try_get(0)?;
            let state = keel_core::State::parse(&state).ok_or_else(|| bad("state", &state))?;
            counts.add(state, s.try_get::<_, i64>(1)?.max(0) as u64);
        }
        let oldest: Option<i64> = query(
            c,
            "SELECT min(run_at) FROM jobs WHERE queue = $1 AND state = 'available'",
            &[&name],
        )
        .await?
        .first()
        .map(|r| r.try_get(0))
        .transpose()?
        .flatten();
        out.push(QueueInfo {
            paused: r.try_get(1)?,
            config: QueueConfig::with_overrides(&sh.defaults, &overrides),
            overrides,
            counts,
            oldest_available_age_ms: oldest
                .map(|t| now.millis_since(Time::from_millis(t)).max(0)),
            name,
        });
    }
    Ok(out)
}

pub(super) async fn configure_queue(
    c: &mut Client,
    sh: &Shared,
    name: &str,
    overrides: &QueueOverrides,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    execute(
        &tx,
        "INSERT INTO queues (name, created_at, updated_at) VALUES ($1, $2, $2) ON CONFLICT DO NOTHING",
        &[&name, &now.as_millis()],
    )
    .await?;
    let before = query(
        &tx,
        "SELECT overrides::text FROM queues WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await?;
    let before = match before.first() {
        Some(r) => parse_overrides(name, &r.try_get::<_, String>(0)?)?,
        None => QueueOverrides::default(),
    };
    let old = QueueConfig::with_overrides(&sh.defaults, &before);
    let new = QueueConfig::with_overrides(&sh.defaults, overrides);
    let text = serde_json::to_string(overrides).map_err(|e| bad("overrides", e))?;
    // A changed rate limit starts with a full bucket.
    execute(
        &tx,
        "UPDATE queues SET overrides = $2::text::json, updated_at = $3, \
         rate_tokens = CASE WHEN $4 THEN NULL ELSE rate_tokens END, \
         rate_at = CASE WHEN $4 THEN NULL ELSE rate_at END WHERE name = $1",
        &[
            &name,
            &text,
            &now.as_millis(),
            &(old.rate_limit != new.rate_limit),
        ],
    )
    .await?;
    let data = serde_json::to_value(overrides.redacted()).unwrap_or_default();
    audit(&tx, actor, "queue.configured", name, &data, now).await?;
    // A raised concurrency limit can make jobs leasable.
    let mut w = Writes::default();
    w.wake = true;
    w.queues_changed = true;
    w.commit(tx, sh).await
}

pub(super) async fn set_paused(
    c: &mut Client,
    sh: &Shared,
    name: &str,
    paused: bool,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    let n = execute(
        &tx,
        "UPDATE queues SET paused = $2, updated_at = $3 WHERE name = $1",
        &[&name, &paused, &now.as_millis()],
    )
    .await?;
    if n == 0 {
        return Err(StoreError::NotFound.into());
    }
    let action = if paused {
        "queue.paused"
    } else {
        "queue.resumed"
    };
    audit(&tx, actor, action, name, &serde_json::json!({}), now).await?;
    let mut w = Writes::default();
    w.wake = !paused;
    w.queues_changed = true;
    w.commit(tx, sh).await
}

const TOKEN_COLUMNS: &str = "id, name, role, queues::text, hash, created_at";

fn token_from_row(r: &Row) -> Result<TokenRecord, PgError> {
    let role: String = r.try_get(2)?;
    let queues: Option<String> = r.try_get(3)?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: Role::parse(&role).ok_or_else(|| bad("role", &role))?,
        queues: queues
            .map(|q| serde_json::from_str(&q).map_err(|e| bad("token queues", e)))
            .transpose()?,
        hash: r.try_get(4)?,
        created_at: Time::from_millis(r.try_get(5)?),
    })
}

pub(super) async fn create_token(
    c: &mut Client,
    token: &TokenRecord,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    let queues = token
        .queues
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| bad("token queues", e))?;
    execute(
        &tx,
        "INSERT INTO tokens (id, name, role, queues, hash, created_at) VALUES ($1, $2, $3, $4::text::json, $5, $6)",
        &[&token.id, &token.name, &token.role.as_str(), &queues, &token.hash, &token.created_at.as_millis()],
    )
    .await?;
    let data = serde_json::json!({"name": token.name, "role": token.role, "queues": token.queues});
    audit(
        &tx,
        actor,
        "token.created",
        &token.id.to_string(),
        &data,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_token(
    c: &mut Client,
    id: Uuid,
    actor: &Actor,
    now: Time,
) -> Result<TokenRecord, PgError> {
    let tx = c.transaction().await?;
    let rows = query(
        &tx,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = $1 FOR UPDATE"),
        &[&id],
    )
    .await?;
    let Some(token) = rows.first().map(token_from_row).transpose()? else {
        return Err(StoreError::NotFound.into());
    };
    if token.role == Role::Admin {
        // Locks every admin token, so two nodes cannot each delete one of the last two.
        let admins = query(
            &tx,
            "SELECT id FROM tokens WHERE role = 'admin' FOR UPDATE",
            &[],
        )
        .await?
        .len();
        if admins <= 1 {
            return Err(StoreError::Conflict(
                "this is the last admin token; create another admin token before deleting it"
                    .into(),
            )
            .into());
        }
    }
    execute(&tx, "DELETE FROM tokens WHERE id = $1", &[&id]).await?;
    let data = serde_json::json!({"name": token.name, "role": token.role});
    audit(&tx, actor, "token.deleted", &id.to_string(), &data, now).await?;
    tx.commit().await?;
    Ok(token)
}

pub(super) async fn tokens(c: &Client) -> Result<Vec<TokenRecord>, PgError> {
    query(
        c,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
        &[],
    )
    .await?
    .iter()
    .map(token_from_row)
    .collect()
}

pub(super) async fn put_schema(
    c: &mut Client,
    kind: &str,
    schema: &Json,
    actor: &Actor,
    now: Time,
) -> Result<SchemaRecord, PgError> {
    let tx = c.transaction().await?;
    let version: i64 = query(
        &tx,
        "INSERT INTO schemas (kind, schema, version, updated_at) VALUES ($1, $2::text::json, 1, $3) \
         ON CONFLICT (kind) DO UPDATE SET schema = excluded.schema, version = schemas.version + 1, \
         updated_at = excluded.updated_at RETURNING version",
        &[&kind, &schema.get(), &now.as_millis()],
    )
    .await?
    .first()
    .map(|r| r.try_get(0))
    .transpose()?
    .unwrap_or(1);
    audit(
        &tx,
        actor,
        "schema.put",
        kind,
        &serde_json::json!({"version": version}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(SchemaRecord {
        kind: kind.to_owned(),
        schema: schema.clone(),
        version,
        updated_at: now,
    })
}

pub(super) async fn delete_schema(
    c: &mut Client,
    kind: &str,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    if execute(&tx, "DELETE FROM schemas WHERE kind = $1", &[&kind]).await? == 0 {
        return Err(StoreError::NotFound.into());
    }
    audit(
        &tx,
        actor,
        "schema.deleted",
        kind,
        &serde_json::json!({}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn schemas(c: &Client) -> Result<Vec<SchemaRecord>, PgError> {
    query(
        c,
        "SELECT kind, schema::text, version, updated_at FROM schemas ORDER BY kind",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(SchemaRecord {
            kind: r.try_get(0)?,
            schema: Json::from_text(r.try_get(1)?).map_err(|e| bad("schema", e))?,
            version: r.try_get(2)?,
            updated_at: Time::from_millis(r.try_get(3)?),
        })
    })
    .collect()
}

pub(super) async fn audit_log(
    c: &Client,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, PgError> {
    query(
        c,
        "SELECT seq, at, actor_id, actor_name, action, target, data::text FROM audit \
         WHERE $1::bigint IS NULL OR seq < $1 ORDER BY seq DESC LIMIT $2",
        &[&before, &(limit as i64)],
    )
    .await?
    .iter()
    .map(|r| {
        let data: String = r.try_get(6)?;
        Ok(AuditEntry {
            seq: r.try_get(0)?,
            at: Time::from_millis(r.try_get(1)?),
            actor: Actor {
                token_id: r.try_get(2)?,
                name: r.try_get(3)?,
            },
            action: r.try_get(4)?,
            target: r.try_get(5)?,
            data: serde_json::from_str(&data).map_err(|e| bad("audit data", e))?,
        })
    })
    .collect()
}

fn parse_spec(text: &str) -> Result<ScheduleSpec, PgError> {
    serde_json::from_str(text).map_err(|e| bad("schedule", e))
}

fn clock_from_row(r: &Row, at: usize) -> Result<ScheduleClock, PgError> {
    Ok(ScheduleClock {
        paused: r.try_get(at)?,
        next_run_at: r.try_get::<_, Option<i64>>(at + 1)?.map(Time::from_millis),
        last_tick_at: r.try_get::<_, Option<i64>>(at + 2)?.map(Time::from_millis),
    })
}

pub(super) async fn put_schedule(
    c: &mut Client,
    sh: &Shared,
    name: &str,
    spec: &ScheduleSpec,
    paused: Option<bool>,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let ticker = spec
        .cadence
        .ticker()
        .map_err(|e| StoreError::Internal(format!("unchecked cadence: {e}")))?;
    let tx = c.transaction().await?;
    let existing = query(
        &tx,
        "SELECT paused, next_run_at, last_tick_at FROM schedules WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await?
    .first()
    .map(|r| clock_from_row(r, 0))
    .transpose()?;
    let clock = ScheduleClock::after_put(&ticker, existing.as_ref(), paused, now);
    let text = serde_json::to_string(spec).map_err(|e| bad("schedule", e))?;
    execute(
        &tx,
        "INSERT INTO schedules (name, spec, paused, next_run_at, last_tick_at, created_at, updated_at) \
         VALUES ($1, $2::text::json, $3, $4, NULL, $5, $5) \
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, paused = excluded.paused, \
         next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
        &[&name, &text, &clock.paused, &clock.next_run_at.map(Time::as_millis), &now.as_millis()],
    )
    .await?;
    let (action, data) = crate::rules::put(spec, existing.is_none(), clock.paused);
    audit(&tx, actor, action, name, &data, now).await?;
    let mut w = Writes::default();
    w.due_at(clock.next_run_at);
    w.commit(tx, sh).await
}

pub(super) async fn delete_schedule(
    c: &mut Client,
    name: &str,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    if execute(&tx, "DELETE FROM schedules WHERE name = $1", &[&name]).await? == 0 {
        return Err(StoreError::NotFound.into());
    }
    execute(
        &tx,
        "DELETE FROM schedule_runs WHERE schedule = $1",
        &[&name],
    )
    .await?;
    audit(
        &tx,
        actor,
        "schedule.deleted",
        name,
        &serde_json::json!({}),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn set_schedule_paused(
    c: &mut Client,
    sh: &Shared,
    name: &str,
    paused: bool,
    actor: &Actor,
    now: Time,
) -> Result<(), PgError> {
    let tx = c.transaction().await?;
    let rows = query(
        &tx,
        "SELECT spec::text, paused, next_run_at, last_tick_at FROM schedules WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await?;
    let Some(row) = rows.first() else {
        return Err(StoreError::NotFound.into());
    };
    let spec = parse_spec(&row.try_get::<_, String>(0)?)?;
    let clock = clock_from_row(row, 1)?;
    let ticker = spec
        .cadence
        .ticker()
        .map_err(|e| StoreError::Internal(format!("schedule {name} cannot be armed: {e}")))?;
    let after = clock.after_pause(&ticker, paused, now);
    if after != clock {
        execute(
            &tx,
            "UPDATE schedules SET paused = $2, next_run_at = $3, updated_at = $4 WHERE name = $1",
            &[
                &name,
                &after.paused,
                &after.next_run_at.map(Time::as_millis),
                &now.as_millis(),
            ],
        )
        .await?;
    }
    let action = crate::rules::pause_action(paused);
    audit(&tx, actor, action, name, &serde_json::json!({}), now).await?;
    let mut w = Writes::default();
    w.due_at(after.next_run_at);
    w.commit(tx, sh).await
}

/// Schedules by name (one when `only` is given), each with its newest runs.
pub(super) async fn schedules(
    c: &Client,
    only: Option<&str>,
) -> Result<Vec<ScheduleRecord>, PgError> {
    let mut out = Vec::new();
    for r in query(
        c,
        "SELECT name, spec::text, paused, next_run_at, last_tick_at, created_at, updated_at \
         FROM schedules WHERE $1::text IS NULL OR name = $1 ORDER BY name",
        &[&only],
    )
    .await?
    {
        let name: String = r.try_get(0)?;
        let clock = clock_from_row(&r, 2)?;
        let mut runs = Vec::new();
        for run in query(
            c,
            "SELECT tick_at, fired_at, outcome, job_id, skipped_until FROM schedule_runs \
             WHERE schedule = $1 ORDER BY seq DESC LIMIT $2",
            &[&name, &(SCHEDULE_RUNS_KEPT as i64)],
        )
        .await?
        {
            let outcome: String = run.try_get(2)?;
            runs.push(ScheduleRun {
                tick_at: Time::from_millis(run.try_get(0)?),
                fired_at: Time::from_millis(run.try_get(1)?),
                outcome: RunOutcome::parse(&outcome).ok_or_else(|| bad("run outcome", &outcome))?,
                job_id: run.try_get(3)?,
                skipped_until: run.try_get::<_, Option<i64>>(4)?.map(Time::from_millis),
            });
        }
        out.push(ScheduleRecord {
            spec: parse_spec(&r.try_get::<_, String>(1)?)?,
            paused: clock.paused,
            next_run_at: clock.next_run_at,
            last_tick_at: clock.last_tick_at,
            created_at: Time::from_millis(r.try_get(5)?),
            updated_at: Time::from_millis(r.try_get(6)?),
            runs,
            name,
        });
    }
    Ok(out)
}
