//! Schedules: put (create or replace), get, list, delete, pause, resume. The firing itself is the
//! store's (`Store::tick`); these handlers validate and record changes, which are audited.
//!
//! A schedule belongs to its job's queue for scoping: a scoped token sees and changes only the
//! schedules whose queue its patterns allow (others are not found, as with jobs).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::schedule::CadenceError;
use keel_core::validate::check_name;
use keel_core::{Cadence, CatchUp, FieldError, JobTemplate, ScheduleSpec, Time};
use keel_store::{ScheduleRecord, ScheduleRun, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Caller, Need};
use crate::extract::Body;
use crate::problem::ApiError;
use crate::wire::{At, EnqueueBody};

/// A schedule: `cron` (in `timezone`, default UTC) or `every_ms`, not both.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleBody {
    /// 5 fields (or 6 with seconds first), or @hourly/@daily/@weekly/@monthly/@yearly.
    #[schema(max_length = 256)]
    cron: Option<String>,
    /// An IANA zone name; cron only.
    timezone: Option<String>,
    #[schema(minimum = 1_000, maximum = 31_622_400_000i64)]
    every_ms: Option<i64>,
    #[schema(value_type = Option<CatchUp>)]
    catch_up: Option<String>,
    paused: Option<bool>,
    /// The job each tick enqueues: `run_at`, `delay_ms` and `idempotency_key` are refused
    /// (each tick's job runs at the tick and is keyed `schedule:<name>:<tick>`).
    job: EnqueueBody,
}

impl ScheduleBody {
    /// Validates into a spec, collecting every violation with its pointer.
    fn validate(self, st: &AppState, errors: &mut Vec<FieldError>) -> Option<ScheduleSpec> {
        let cadence = match (self.cron, self.every_ms) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new(
                    "/every_ms",
                    "give cron or every_ms, not both",
                ));
                None
            }
            (None, None) => {
                errors.push(FieldError::new("", "give cron (with timezone) or every_ms"));
                None
            }
            (Some(expr), None) => Some(Cadence::Cron {
                expr,
                timezone: self.timezone.unwrap_or_else(|| "UTC".to_owned()),
            }),
            (None, Some(every_ms)) => {
                if self.timezone.is_some() {
                    errors.push(FieldError::new(
                        "/timezone",
                        "applies to cron only; every_ms ticks are instants",
                    ));
                }
                Some(Cadence::Every { every_ms })
            }
        };
        if let Some(Err(e)) = cadence.as_ref().map(Cadence::ticker) {
            let (pointer, message) = match e {
                CadenceError::Cron(m) => ("/cron", m),
                CadenceError::TimeZone(m) => ("/timezone", m),
                CadenceError::Every(m) => ("/every_ms", m),
            };
            errors.push(FieldError::new(pointer, message));
        }
        let catch_up = match self.catch_up.as_deref() {
            None => CatchUp::default(),
            Some(text) => CatchUp::parse(text).unwrap_or_else(|| {
                errors.push(FieldError::new(
                    "/catch_up",
                    format!("must be \"none\", \"one\" or \"all\", got {text:?}"),
                ));
                CatchUp::default()
            }),
        };
        for (set, field) in [
            (self.job.run_at.is_some(), "run_at"),
            (self.job.delay_ms.is_some(), "delay_ms"),
            (self.job.idempotency_key.is_some(), "idempotency_key"),
        ] {
            if set {
                errors.push(FieldError::new(
                    format!("/job/{field}"),
                    "is set by each tick (the job runs at its tick, keyed by schedule and tick)",
                ));
            }
        }
        let job = self
            .job
            .validate(At::Path("/job"), &st.config.limits, errors)?;
        st.schemas
            .check(&job.kind, &job.payload, At::Path("/job"), errors);
        Some(ScheduleSpec {
            cadence: cadence?,
            catch_up,
            job: JobTemplate::from_new_job(job),
        })
        .filter(|_| errors.is_empty())
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Schedule)]
pub(crate) struct ScheduleView {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    every_ms: Option<i64>,
    catch_up: CatchUp,
    paused: bool,
    job: JobTemplate,
    #[schema(required)]
    next_run_at: Option<Time>,
    #[schema(required)]
    last_tick_at: Option<Time>,
    created_at: Time,
    updated_at: Time,
    runs: Vec<RunView>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ScheduleRun)]
struct RunView {
    tick_at: Time,
    fired_at: Time,
    #[schema(pattern = "^(enqueued|duplicate|skipped)$")]
    outcome: &'static str,
    #[schema(required)]
    job_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_until: Option<Time>,
}

impl From<ScheduleRun> for RunView {
    fn from(r: ScheduleRun) -> RunView {
        RunView {
            tick_at: r.tick_at,
            fired_at: r.fired_at,
            outcome: r.outcome.as_str(),
            job_id: r.job_id,
            skipped_until: r.skipped_until,
        }
    }
}

impl From<ScheduleRecord> for ScheduleView {
    fn from(r: ScheduleRecord) -> ScheduleView {
        let (cron, timezone, every_ms) = match r.spec.cadence {
            Cadence::Cron { expr, timezone } => (Some(expr), Some(timezone), None),
            Cadence::Every { every_ms } => (None, None, Some(every_ms)),
        };
        ScheduleView {
            name: r.name,
            cron,
            timezone,
            every_ms,
            catch_up: r.spec.catch_up,
            paused: r.paused,
            job: r.spec.job,
            next_run_at: r.next_run_at,
            last_tick_at: r.last_tick_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
            runs: r.runs.into_iter().map(Into::into).collect(),
        }
    }
}

fn no_schedule(name: &str) -> ApiError {
    ApiError::NotFound(format!("no schedule is named {name:?}"))
}

/// Maps a store error of an operation on schedule `name`: "not found" names the schedule.
fn schedule_error(name: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => no_schedule(name),
        other => other.into(),
    }
}

/// The schedule if it exists and the caller's scope covers its queue.
async fn visible(
    st: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<Option<ScheduleRecord>, ApiError> {
    if check_name(name).is_err() {
        return Ok(None);
    }
    Ok(st
        .store
        .schedule(name)
        .await?
        .filter(|s| caller.sees(&s.spec.job.queue)))
}

#[utoipa::path(
    put,
    path = "/v1/schedules/{name}",
    operation_id = "putSchedule",
    summary = "Create or replace a schedule (cron in a time zone, or every_ms)",
    tag = "schedules",
    params(
        ("name" = crate::openapi::Name, Path, description = "The schedule's name.")
    ),
    request_body = ScheduleBody,
    responses(
        (status = 201, description = "Created.", body = ScheduleView),
        (status = 200, description = "Replaced.", body = ScheduleView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<ScheduleBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureSchedules)?;
    if let Err(m) = check_name(&name) {
        return Err(ApiError::field(
            "",
            format!("the schedule name in the path {m}"),
        ));
    }
    let paused = body.paused;
    let mut errors = vec![];
    let spec = body.validate(&st, &mut errors);
    let Some(spec) = spec.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    // Only admins configure schedules and admin tokens are unscoped today; the checks keep
    // scoping right if a scoped role ever may.
    caller.require_queue(Need::ConfigureSchedules, &spec.job.queue)?;
    let existing = st.store.schedule(&name).await?;
    if let Some(old) = &existing {
        // Replacing moves the schedule's jobs; the caller must own the queue it leaves too.
        caller.require_queue(Need::ConfigureSchedules, &old.spec.job.queue)?;
    }
    let record = st
        .store
        .put_schedule(&name, spec, paused, &caller.actor(), st.clock.now())
        .await?;
    tracing::info!(message = "Schedule set.", schedule = %name, queue = %record.spec.job.queue, next_run_at = ?record.next_run_at.map(|t| t.to_string()), by = %caller.0.name);
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ScheduleView::from(record))).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    operation_id = "getSchedule",
    summary = "A schedule",
    tag = "schedules",
    params(
        ("name" = crate::openapi::Name, Path, description = "The schedule's name.")
    ),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadSchedules)?;
    let record = visible(&st, &caller, &name)
        .await?
        .ok_or_else(|| no_schedule(&name))?;
    Ok(Json(ScheduleView::from(record)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/schedules",
    operation_id = "listSchedules",
    summary = "Every schedule, with its next tick and latest runs",
    tag = "schedules",
    responses(
        (status = 200, description = "Schedules.", body = [ScheduleView])
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Need::ReadSchedules)?;
    let all: Vec<ScheduleView> = st
        .store
        .schedules()
        .await?
        .into_iter()
        .filter(|s| caller.sees(&s.spec.job.queue))
        .map(Into::into)
        .collect();
    Ok(Json(all).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    operation_id = "deleteSchedule",
    summary = "Delete a schedule (its jobs stay)",
    tag = "schedules",
    params(
        ("name" = crate::openapi::Name, Path, description = "The schedule's name.")
    ),
    responses(
        (status = 204, description = "Deleted.")
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureSchedules)?;
    if visible(&st, &caller, &name).await?.is_none() {
        return Err(no_schedule(&name));
    }
    st.store
        .delete_schedule(&name, &caller.actor(), st.clock.now())
        .await
        .map_err(schedule_error(&name))?;
    tracing::info!(message = "Schedule deleted.", schedule = %name, by = %caller.0.name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn set_paused(
    st: AppState,
    caller: Caller,
    name: String,
    paused: bool,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureSchedules)?;
    if visible(&st, &caller, &name).await?.is_none() {
        return Err(no_schedule(&name));
    }
    let record = st
        .store
        .set_schedule_paused(&name, paused, &caller.actor(), st.clock.now())
        .await
        .map_err(schedule_error(&name))?;
    tracing::info!(message = if paused { "Schedule paused." } else { "Schedule resumed." }, schedule = %name, by = %caller.0.name);
    Ok(Json(ScheduleView::from(record)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    operation_id = "pauseSchedule",
    summary = "Stop firing until resumed",
    tag = "schedules",
    params(
        ("name" = crate::openapi::Name, Path, description = "The schedule's name.")
    ),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn pause(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(st, caller, name, true).await
}

#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    operation_id = "resumeSchedule",
    summary = "Fire again from the next tick (ticks missed while paused do not run)",
    tag = "schedules",
    params(
        ("name" = crate::openapi::Name, Path, description = "The schedule's name.")
    ),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn resume(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(st, caller, name, false).await
}
