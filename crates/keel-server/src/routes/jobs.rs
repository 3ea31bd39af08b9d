//! Producers and readers: enqueue (single and batch), get, list, events, cancel, retry.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_core::validate::check_name;
use keel_core::{FieldError, NewJob, State as JobState};
use keel_store::{JobFilter, StoreError};

use crate::AppState;
use crate::auth::{Caller, Need};
use crate::extract::{Body, job_id};
use crate::problem::ApiError;
use crate::wire::{
    At, BatchBody, EnqueueBody, check_idempotency_key, job_answer, job_room, write_json_array,
    written_answer,
};

const DEFAULT_LIMIT: i64 = 50;

/// `{"jobs": [...]}` of a batch, plus `next_cursor` (possibly null) for a listing page.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Jobs)]
pub(crate) struct JobsView<'a> {
    jobs: Vec<&'a keel_core::Job>,
    /// Listings only: pass as `cursor` for the next page; null on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    next_cursor: Option<Option<String>>,
}

impl JobsView<'_> {
    /// Appends what `Serialize` writes for this view, each job by `Job::write_json`.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"jobs\":");
        write_json_array(out, &self.jobs, |job, out| job.write_json(out));
        if let Some(cursor) = &self.next_cursor {
            out.extend_from_slice(b",\"next_cursor\":");
            match cursor {
                Some(c) => keel_core::write_json_str(out, c),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b'}');
    }

    fn answer(&self, status: StatusCode) -> Response {
        let room = 80 + self.jobs.iter().map(|j| job_room(j)).sum::<usize>();
        written_answer(status, room, |out| self.write_json(out))
    }
}

const MAX_LIMIT: i64 = 500;

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct EventsView<'a> {
    events: Vec<EventView<'a>>,
}

/// One event of a job: what happened (`type`, `data`), when, and its place in the store's log.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
struct EventView<'a> {
    seq: i64,
    at: keel_core::Time,
    #[serde(flatten)]
    data: &'a keel_core::EventData,
}

#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "enqueue",
    summary = "Enqueue one job",
    tag = "jobs",
    params(
        ("Idempotency-Key" = Option<crate::openapi::IdempotencyKey>, Header, description = "The same as the body's idempotency_key; give one, or both equal."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, stored with the job(s) and handed on in leases and push deliveries; ignored when it does not parse.")
    ),
    request_body = EnqueueBody,
    responses(
        (status = 201, description = "Created; on disk before this answer.", body = keel_core::Job, headers(("Location" = String, description = "The job's URL."))),
        (status = 200, description = "An identical earlier request with the same idempotency key: its job.", body = keel_core::Job, headers(("Idempotent-Replayed" = String, description = "true")))
    ),
    security(("bearer" = []))
)]
pub(crate) async fn enqueue(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(mut body): Body<EnqueueBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Enqueue)?;
    let mut errors = vec![];
    if let Some(value) = headers.get("idempotency-key") {
        let key = value.to_str().unwrap_or("").to_owned();
        check_idempotency_key(&key, "/idempotency_key", &mut errors);
        match &body.idempotency_key {
            Some(k) if *k != key => errors.push(FieldError::new(
                "/idempotency_key",
                "differs from the Idempotency-Key header; give one, or both equal",
            )),
            _ => body.idempotency_key = Some(key),
        }
    }
    let new = body
        .validate(At::Path(""), &st.config.limits, &mut errors)
        .map(|new| with_trace(new, &headers));
    let Some(new) = new.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    caller.require_queue(Need::Enqueue, &new.queue)?;
    st.schemas
        .check(&new.kind, &new.payload, At::Path(""), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut out = st
        .store
        .enqueue(vec![new], st.clock.now())
        .await
        .map_err(|e| match e {
            StoreError::IdempotencyConflict { .. } => {
                let err = ApiError::from(e);
                match err {
                    ApiError::IdempotencyKeyReused(d, _) => {
                        ApiError::IdempotencyKeyReused(d, Some("/idempotency_key".into()))
                    }
                    other => other,
                }
            }
            other => other.into(),
        })?;
    let Some(done) = out.pop() else {
        return Err(ApiError::Internal("enqueue returned no job".into()));
    };
    let mut res = if done.replayed {
        let mut res = job_answer(StatusCode::OK, &done.job);
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        res
    } else {
        job_answer(StatusCode::CREATED, &done.job)
    };
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/jobs/{}", done.job.id)) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    // Fields as `&str`: recorded as they are, without the `fmt` machinery (a line per enqueue).
    let mut id = uuid::Uuid::encode_buffer();
    let job_id = &*done.job.id.hyphenated().encode_lower(&mut id);
    tracing::info!(
        message = "Job enqueued.",
        job_id,
        queue = done.job.queue.as_str(),
        kind = done.job.kind.as_str(),
        replayed = done.replayed
    );
    Ok(res)
}

#[utoipa::path(
    post,
    path = "/v1/jobs/batch",
    operation_id = "enqueueBatch",
    summary = "Enqueue up to 1,000 jobs, all or none",
    tag = "jobs",
    params(
        ("traceparent" = Option<String>, Header, description = "W3C trace context, stored with the job(s) and handed on in leases and push deliveries; ignored when it does not parse.")
    ),
    request_body = BatchBody,
    responses(
        (status = 201, description = "Created (replays come back as their original job).", body = JobsView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn enqueue_batch(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<BatchBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Enqueue)?;
    if headers.contains_key("idempotency-key") {
        return Err(ApiError::field(
            "",
            "the Idempotency-Key header does not apply to a batch; set idempotency_key on each job",
        ));
    }
    let max = st.config.limits.max_batch;
    if body.jobs.is_empty() || body.jobs.len() > max {
        return Err(ApiError::field(
            "/jobs",
            format!("must hold 1 to {max} jobs, got {}", body.jobs.len()),
        ));
    }
    let mut errors = vec![];
    let jobs: Vec<_> = body
        .jobs
        .into_iter()
        .enumerate()
        .filter_map(|(i, j)| j.validate(At::Item("/jobs", i), &st.config.limits, &mut errors))
        .map(|new| with_trace(new, &headers))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    for job in &jobs {
        caller.require_queue(Need::Enqueue, &job.queue)?;
    }
    for (i, job) in jobs.iter().enumerate() {
        st.schemas
            .check(&job.kind, &job.payload, At::Item("/jobs", i), &mut errors);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let out = st.store.enqueue(jobs, st.clock.now()).await?;
    let jobs: Vec<_> = out.iter().map(|e| &e.job).collect();
    tracing::info!(
        message = "Batch enqueued.",
        jobs = jobs.len(),
        replayed = out.iter().filter(|e| e.replayed).count()
    );
    let view = JobsView {
        jobs,
        next_cursor: None,
    };
    Ok(view.answer(StatusCode::CREATED))
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "getJob",
    summary = "Read a job",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    responses(
        (status = 200, description = "The job.", body = keel_core::Job)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadJobs)?;
    let id = job_id(&id)?;
    match st
        .store
        .get_job(id)
        .await?
        .filter(|j| caller.sees(&j.queue))
    {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(ApiError::NotFound(format!("no job has id {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/events",
    operation_id = "jobEvents",
    summary = "A job's history, oldest first",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    responses(
        (status = 200, description = "Events.", body = EventsView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn events(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadJobs)?;
    let id = job_id(&id)?;
    // A job's queue never changes, so checking the current row covers its whole history; once
    // the row is gone (purged, retention), only an unscoped caller may read the leftovers.
    let visible = match st.store.get_job(id).await? {
        Some(job) => caller.sees(&job.queue),
        None => caller.scope() == keel_core::Scope::All,
    };
    if !visible {
        return Err(ApiError::NotFound(format!("no job has id {id}")));
    }
    match st.store.job_events(id).await? {
        Some(events) => {
            let events = events
                .iter()
                .map(|e| EventView {
                    seq: e.seq,
                    at: e.at,
                    data: &e.data,
                })
                .collect();
            Ok(Json(EventsView { events }).into_response())
        }
        None => Err(ApiError::NotFound(format!("no job has id {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "listJobs",
    summary = "List jobs, newest first",
    tag = "jobs",
    params(
        ("queue" = Option<crate::openapi::Name>, Query),
        ("kind" = Option<crate::openapi::Name>, Query),
        ("tag" = Option<crate::openapi::Name>, Query),
        ("state" = Option<keel_core::State>, Query),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 500, description = "Default 50."),
        ("cursor" = Option<uuid::Uuid>, Query, description = "The next_cursor of the previous page.")
    ),
    responses(
        (status = 200, description = "A page of jobs.", body = JobsView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadJobs)?;
    let Query(params) = query.map_err(|e| ApiError::field("", format!("bad query string: {e}")))?;
    let mut filter = JobFilter {
        limit: DEFAULT_LIMIT as usize,
        ..Default::default()
    };
    let mut errors = vec![];
    for (key, value) in params {
        let pointer = format!("/{key}");
        let name = |errors: &mut Vec<FieldError>| match check_name(&value) {
            Ok(()) => Some(value.clone()),
            Err(m) => {
                errors.push(FieldError::new(&pointer, m));
                None
            }
        };
        match key.as_str() {
            "queue" => filter.queue = name(&mut errors),
            "kind" => filter.kind = name(&mut errors),
            "tag" => filter.tag = name(&mut errors),
            "state" => match JobState::parse(&value) {
                Some(s) => filter.state = Some(s),
                None => errors.push(FieldError::new(
                    &pointer,
                    "must be one of scheduled, available, running, completed, dead, cancelled",
                )),
            },
            "limit" => match value.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => filter.limit = n as usize,
                _ => errors.push(FieldError::new(
                    &pointer,
                    format!("must be an integer from 1 to {MAX_LIMIT}"),
                )),
            },
            "cursor" => match uuid::Uuid::parse_str(&value) {
                Ok(id) => filter.before = Some(id),
                Err(_) => errors.push(FieldError::new(
                    &pointer,
                    "is not a cursor returned by this endpoint",
                )),
            },
            _ => errors.push(FieldError::new(&pointer, "is not a known query parameter")),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    if let Some(q) = &filter.queue {
        caller.require_queue(Need::ReadJobs, q)?;
    }
    filter.scope = caller.scope();
    let page = st.store.list_jobs(filter).await?;
    let jobs: Vec<_> = page.jobs.iter().collect();
    let view = JobsView {
        jobs,
        next_cursor: Some(page.next.map(|id| id.to_string())),
    };
    Ok(view.answer(StatusCode::OK))
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/cancel",
    operation_id = "cancelJob",
    summary = "Cancel a job that is not final",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    responses(
        (status = 200, description = "The job.", body = keel_core::Job)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::CancelJobs)?;
    let id = job_id(&id)?;
    let job = st.store.cancel(id, caller.scope(), st.clock.now()).await?;
    tracing::info!(message = "Job cancelled.", job_id = %job.id, queue = %job.queue);
    Ok(Json(job).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    operation_id = "retryJob",
    summary = "A dead or cancelled job back to available",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    responses(
        (status = 200, description = "The job.", body = keel_core::Job)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn retry(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Need::RetryJobs)?;
    let id = job_id(&id)?;
    let job = st.store.retry(id, caller.scope(), st.clock.now()).await?;
    tracing::info!(message = "Job retried.", job_id = %job.id, queue = %job.queue);
    Ok(Json(job).into_response())
}

/// Attaches the request's W3C `traceparent` to a job. A header that does not parse is ignored,
/// as the Trace Context recommendation asks of a receiver, and the job carries none.
fn with_trace(mut new: NewJob, headers: &HeaderMap) -> NewJob {
    new.traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(keel_core::validate::traceparent);
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::workers::tests::odd_job;

    #[test]
    fn the_jobs_answer_is_what_serde_writes() {
        let (a, mut b) = (odd_job(), odd_job());
        b.traceparent = None;
        for next_cursor in [None, Some(None), Some(Some("01a24cb5-\"x".to_owned()))] {
            for jobs in [vec![], vec![&a, &b]] {
                let view = JobsView {
                    jobs,
                    next_cursor: next_cursor.clone(),
                };
                let mut out = Vec::new();
                view.write_json(&mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    serde_json::to_string(&view).unwrap()
                );
            }
        }
    }
}
