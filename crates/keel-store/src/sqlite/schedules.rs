//! Schedules in SQLite. The writer keeps every schedule armed in memory (its compiled ticker and
//! next tick) so the timer loop knows when the next one is due without a query, and fires due
//! ticks inside `tick`'s transaction: the tick's job, the schedule's new `next_run_at` and
//! `last_tick_at`, and the run record commit together, so a crash either keeps all of them or
//! none, and the tick's idempotency key stops a second firing of the same tick from any path.
//! Memory follows disk: a failed group reloads the armed set from the table.

use std::collections::HashMap;

use keel_core::schedule::{Ticker, plan_firing};
use keel_core::{ScheduleClock, ScheduleSpec, Time};
use rusqlite::{Connection, Row, params};
use uuid::Uuid;

use super::writer::{Fatal, Step, Writer};
use crate::StoreError;
use crate::types::{Actor, RunOutcome, SCHEDULE_RUNS_KEPT, ScheduleRecord, ScheduleRun};

/// Ticks one schedule fires in one pass at most (a long `catch_up: all` backlog continues in
/// the next pass, which is due at once), so a backlog cannot stall the writer.
const MAX_TICKS_PER_PASS: usize = 1_000;

/// A schedule as the writer keeps it between ticks.
pub(super) struct Armed {
    spec: ScheduleSpec,
    ticker: Ticker,
    clock: ScheduleClock,
}

pub(super) type ArmedSet = HashMap<String, Armed>;

/// The next due tick of every armed, unpaused schedule.
pub(super) fn next_due(armed: &ArmedSet) -> Option<Time> {
    armed
        .values()
        .filter(|a| !a.clock.paused)
        .filter_map(|a| a.clock.next_run_at)
        .min()
}

pub(super) fn load_armed(conn: &Connection) -> Result<ArmedSet, Fatal> {
    let mut out = ArmedSet::new();
    let mut stmt =
        conn.prepare("SELECT name, spec, paused, next_run_at, last_tick_at FROM schedules")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        let spec = spec_col(r, 1)?;
        // A schedule whose cadence no longer compiles (a zone removed from a newer tzdb) stays
        // stored and readable but is not armed; it is logged so an operator can fix it.
        let ticker = match spec.cadence.ticker() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(message = "Schedule cannot be armed.", schedule = %name, error = %e);
                continue;
            }
        };
        out.insert(
            name,
            Armed {
                spec,
                ticker,
                clock: ScheduleClock {
                    paused: r.get(2)?,
                    next_run_at: r.get::<_, Option<i64>>(3)?.map(Time::from_millis),
                    last_tick_at: r.get::<_, Option<i64>>(4)?.map(Time::from_millis),
                },
            },
        );
    }
    Ok(out)
}

fn spec_json(spec: &ScheduleSpec) -> Result<String, Fatal> {
    serde_json::to_string(spec).map_err(|e| Fatal(StoreError::Internal(e.to_string())))
}

impl Writer {
    /// Creates or replaces a schedule (`ScheduleClock::after_put` has the clock rule).
    pub(super) fn put_schedule(
        &mut self,
        name: &str,
        spec: ScheduleSpec,
        paused: Option<bool>,
        actor: &Actor,
        now: Time,
    ) -> Step<()> {
        let ticker = match spec.cadence.ticker() {
            Ok(t) => t,
            Err(e) => return Ok(Err(StoreError::Internal(format!("unchecked cadence: {e}")))),
        };
        let existing = self.schedules.get(name).map(|a| &a.clock);
        let created = existing.is_none();
        let clock = ScheduleClock::after_put(&ticker, existing, paused, now);
        let text = spec_json(&spec)?;
        self.conn
            .prepare_cached(
                "INSERT INTO schedules (name, spec, paused, next_run_at, last_tick_at, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?5) \
                 ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, paused = excluded.paused, \
                 next_run_at = excluded.next_run_at, updated_at = excluded.updated_at",
            )?
            .execute(params![name, text, clock.paused, clock.next_run_at.map(Time::as_millis), now.as_millis()])?;
        let (action, data) = crate::rules::put(&spec, created, clock.paused);
        self.audit(actor, action, name, &data, now)?;
        self.schedules.insert(
            name.to_owned(),
            Armed {
                spec,
                ticker,
                clock,
            },
        );
        Ok(Ok(()))
    }

    pub(super) fn delete_schedule(&mut self, name: &str, actor: &Actor, now: Time) -> Step<()> {
        let n = self
            .conn
            .prepare_cached("DELETE FROM schedules WHERE name = ?1")?
            .execute([name])?;
        if n == 0 {
            return Ok(Err(StoreError::NotFound));
        }
        self.conn
            .prepare_cached("DELETE FROM schedule_runs WHERE schedule = ?1")?
            .execute([name])?;
        self.audit(actor, "schedule.deleted", name, &serde_json::json!({}), now)?;
        self.schedules.remove(name);
        Ok(Ok(()))
    }

    /// Pausing stops firing; resuming starts again at the first tick at or after `now`
    /// (`ScheduleClock::after_pause`).
    pub(super) fn set_schedule_paused(
        &mut self,
        name: &str,
        paused: bool,
        actor: &Actor,
        now: Time,
    ) -> Step<()> {
        let Some(armed) = self.schedules.get_mut(name) else {
            return Ok(Err(StoreError::NotFound));
        };
        if armed.clock.paused != paused {
            armed.clock = armed.clock.after_pause(&armed.ticker, paused, now);
            let next = armed.clock.next_run_at;
            self.conn
                .prepare_cached(
                    "UPDATE schedules SET paused = ?2, next_run_at = ?3, updated_at = ?4 WHERE name = ?1",
                )?
                .execute(params![name, paused, next.map(Time::as_millis), now.as_millis()])?;
        }
        let action = crate::rules::pause_action(paused);
        self.audit(actor, action, name, &serde_json::json!({}), now)?;
        Ok(Ok(()))
    }

    /// Fires every due tick of every unpaused schedule (bounded per schedule per pass).
    pub(super) fn fire_schedules(&mut self, now: Time) -> Result<(), Fatal> {
        let mut due: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, a)| !a.clock.paused && a.clock.next_run_at.is_some_and(|n| n <= now))
            .map(|(name, _)| name.clone())
            .collect();
        due.sort();
        for name in due {
            self.fire_schedule(&name, now)?;
        }
        Ok(())
    }

    fn fire_schedule(&mut self, name: &str, now: Time) -> Result<(), Fatal> {
        let Some(armed) = self.schedules.get(name) else {
            return Ok(());
        };
        let Some(next) = armed.clock.next_run_at else {
            return Ok(());
        };
        let firing = plan_firing(
            &armed.ticker,
            next,
            now,
            armed.spec.catch_up,
            MAX_TICKS_PER_PASS,
        );
        let template = armed.spec.job.clone();
        let mut runs = Vec::with_capacity(firing.fire.len() + 1);
        let mut last = armed.clock.last_tick_at;
        if let Some(run) = crate::rules::skipped_run(name, &firing, now) {
            last = last.max(run.skipped_until);
            runs.push(run);
        }
        for tick in firing.fire {
            let enqueued = self.enqueue(vec![template.job_at(name, tick)], now)?;
            runs.push(crate::rules::tick_run(name, tick, now, enqueued).map_err(Fatal)?);
            last = last.max(Some(tick));
        }
        self.conn
            .prepare_cached(
                "UPDATE schedules SET next_run_at = ?2, last_tick_at = ?3 WHERE name = ?1",
            )?
            .execute(params![
                name,
                firing.next_run_at.map(Time::as_millis),
                last.map(Time::as_millis)
            ])?;
        for run in &runs {
            self.conn
                .prepare_cached(
                    "INSERT INTO schedule_runs (schedule, tick_at, fired_at, outcome, job_id, skipped_until) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    name,
                    run.tick_at.as_millis(),
                    run.fired_at.as_millis(),
                    run.outcome.as_str(),
                    run.job_id.map(|u| u.into_bytes()),
                    run.skipped_until.map(Time::as_millis)
                ])?;
        }
        self.conn
            .prepare_cached(
                "DELETE FROM schedule_runs WHERE schedule = ?1 AND seq <= \
                 (SELECT seq FROM schedule_runs WHERE schedule = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![name, SCHEDULE_RUNS_KEPT as i64])?;
        if let Some(armed) = self.schedules.get_mut(name) {
            armed.clock.next_run_at = firing.next_run_at;
            armed.clock.last_tick_at = last;
        }
        Ok(())
    }
}

fn spec_col(r: &Row<'_>, i: usize) -> rusqlite::Result<ScheduleSpec> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

/// Schedules by name (one when `only` is given), each with its newest runs.
pub(super) fn read_schedules(
    conn: &Connection,
    only: Option<&str>,
) -> rusqlite::Result<Vec<ScheduleRecord>> {
    let mut out: Vec<ScheduleRecord> = conn
        .prepare_cached(
            "SELECT name, spec, paused, next_run_at, last_tick_at, created_at, updated_at \
             FROM schedules WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?
        .query_map([only], |r| {
            Ok(ScheduleRecord {
                name: r.get(0)?,
                spec: spec_col(r, 1)?,
                paused: r.get(2)?,
                next_run_at: r.get::<_, Option<i64>>(3)?.map(Time::from_millis),
                last_tick_at: r.get::<_, Option<i64>>(4)?.map(Time::from_millis),
                created_at: Time::from_millis(r.get(5)?),
                updated_at: Time::from_millis(r.get(6)?),
                runs: vec![],
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut runs = conn.prepare_cached(
        "SELECT tick_at, fired_at, outcome, job_id, skipped_until FROM schedule_runs \
         WHERE schedule = ?1 ORDER BY seq DESC LIMIT ?2",
    )?;
    for s in &mut out {
        s.runs = runs
            .query_map(params![s.name, SCHEDULE_RUNS_KEPT as i64], |r| {
                let outcome: String = r.get(2)?;
                Ok(ScheduleRun {
                    tick_at: Time::from_millis(r.get(0)?),
                    fired_at: Time::from_millis(r.get(1)?),
                    outcome: RunOutcome::parse(&outcome).ok_or_else(|| {
                        rusqlite::Error::FromSqlConversionFailure(
                            2,
                            rusqlite::types::Type::Text,
                            format!("unknown run outcome {outcome:?}").into(),
                        )
                    })?,
                    job_id: r.get::<_, Option<[u8; 16]>>(3)?.map(Uuid::from_bytes),
                    skipped_until: r.get::<_, Option<i64>>(4)?.map(Time::from_millis),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(out)
}

/// One schedule, if it exists.
pub(super) fn read_schedule(
    conn: &Connection,
    name: &str,
) -> rusqlite::Result<Option<ScheduleRecord>> {
    Ok(read_schedules(conn, Some(name))?.into_iter().next())
}
