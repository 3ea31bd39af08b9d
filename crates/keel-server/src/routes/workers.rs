//! Pull workers: lease (long poll), heartbeat, complete, fail, and batch ack. The lease token is
//! a fencing token: the store refuses any outcome whose token is not the job's current lease.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_core::FieldError;
use keel_core::validate::check_range;
use keel_store::{LeaseRequest, Outcome, OutcomeKind, StoreError};

use crate::AppState;
use crate::auth::{Caller, Need};
use crate::dispatch::lease_with_wait;
use crate::extract::{Body, job_id};
use crate::limit::InFlight;
use crate::problem::ApiError;
use crate::wire::{
    AckBody, AckOutcome, CompleteBody, ErrorBody, FailBody, HeartbeatBody, LeaseBody,
    LeasedJobView, MAX_DELAY_MS, MAX_LEASE_JOBS, MAX_LEASE_WAIT_MS, MAX_TIMEOUT_MS, job_answer,
    job_room, optional_json, write_json_array, written_answer,
};

const MAX_QUEUES_PER_LEASE: usize = 64;
const MAX_ERROR_MESSAGE: usize = 8_192;
const MAX_WORKER_LEN: usize = 255;

#[utoipa::path(
    post,
    path = "/v1/lease",
    operation_id = "lease",
    summary = "Lease jobs, waiting up to wait_ms for work",
    tag = "workers",
    request_body = LeaseBody,
    responses(
        (status = 200, description = "Leased jobs (possibly none).", body = LeaseResponse)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn lease(
    State(st): State<AppState>,
    caller: Caller,
    in_flight: Option<axum::Extension<InFlight>>,
    Body(body): Body<LeaseBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Work)?;
    let mut errors = vec![];
    if body.queues.is_empty() || body.queues.len() > MAX_QUEUES_PER_LEASE {
        errors.push(FieldError::new(
            "/queues",
            format!("must name 1 to {MAX_QUEUES_PER_LEASE} queues"),
        ));
    }
    for (i, q) in body.queues.iter().enumerate() {
        if let Err(m) = keel_core::validate::check_name(q) {
            errors.push(FieldError::new(format!("/queues/{i}"), m));
        }
    }
    let max_jobs = body.max_jobs.unwrap_or(1);
    check_range(&mut errors, "/max_jobs", max_jobs, 1, MAX_LEASE_JOBS);
    let wait_ms = body.wait_ms.unwrap_or(0);
    check_range(&mut errors, "/wait_ms", wait_ms, 0, MAX_LEASE_WAIT_MS);
    if let Some(ms) = body.lease_ms {
        check_range(&mut errors, "/lease_ms", ms, 1, MAX_TIMEOUT_MS);
    }
    if body
        .worker
        .as_ref()
        .is_some_and(|w| w.len() > MAX_WORKER_LEN)
    {
        errors.push(FieldError::new(
            "/worker",
            format!("must be at most {MAX_WORKER_LEN} bytes"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    for q in &body.queues {
        caller.require_queue(Need::Work, q)?;
    }
    let req = LeaseRequest {
        queues: body.queues,
        max_jobs: max_jobs as usize,
        lease_ms: body.lease_ms,
        worker: body.worker,
    };
    let in_flight = in_flight.map(|e| e.0);
    let leased = lease_with_wait(
        &*st.store,
        &*st.clock,
        req,
        wait_ms,
        st.stopping.clone(),
        in_flight.as_ref(),
    )
    .await?;
    // One line per request, like a batch enqueue or an ack: it names the job when there is one
    // and counts them when there are many, whose own lines are debug (a lease of 100 jobs was
    // 100 lines, a tenth of the server's work in a drain).
    match leased.as_slice() {
        [] => {}
        [l] => {
            tracing::info!(message = "Job leased.", job_id = %l.job.id, queue = %l.job.queue, kind = %l.job.kind, attempt = l.job.attempt);
        }
        many => {
            tracing::info!(message = "Jobs leased.", jobs = many.len());
            for l in many {
                tracing::debug!(message = "Job leased.", job_id = %l.job.id, queue = %l.job.queue, kind = %l.job.kind, attempt = l.job.attempt);
            }
        }
    }
    let jobs: Vec<LeasedJobView> = leased.into_iter().map(Into::into).collect();
    Ok(LeaseResponse { jobs }.answer())
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/heartbeat",
    operation_id = "heartbeat",
    summary = "Extend a lease",
    tag = "workers",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    request_body = HeartbeatBody,
    responses(
        (status = 200, description = "The new expiry.", body = Expiry)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn heartbeat(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<HeartbeatBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Work)?;
    let id = job_id(&id)?;
    let lease_ms = match body.lease_ms {
        Some(ms) => {
            let mut errors = vec![];
            check_range(&mut errors, "/lease_ms", ms, 1, MAX_TIMEOUT_MS);
            if !errors.is_empty() {
                return Err(ApiError::Validation(errors));
            }
            ms
        }
        // Without lease_ms, extend by the job's timeout, as a lease does.
        None => match st
            .store
            .get_job(id)
            .await?
            .filter(|j| caller.sees(&j.queue))
        {
            Some(job) => job.timeout_ms,
            None => return Err(ApiError::NotFound(format!("no job has id {id}"))),
        },
    };
    let expires_at = st
        .store
        .heartbeat(
            id,
            body.lease_token,
            lease_ms,
            caller.scope(),
            st.clock.now(),
        )
        .await?;
    Ok(Json(Expiry { expires_at }).into_response())
}

/// When a heartbeaten lease now expires.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Expiry {
    expires_at: keel_core::Time,
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/complete",
    operation_id = "complete",
    summary = "Report success",
    tag = "workers",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    request_body = CompleteBody,
    responses(
        (status = 200, description = "The job.", body = keel_core::Job)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn complete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<CompleteBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Work)?;
    let id = job_id(&id)?;
    let result = optional_json(body.result, "/result", st.config.limits.max_result_bytes)
        .map_err(|e| ApiError::Validation(vec![e]))?;
    let outcome = Outcome {
        id,
        token: body.lease_token,
        kind: OutcomeKind::Completed { result },
        delivery: None,
    };
    single_outcome(&st, &caller, outcome).await
}

#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/fail",
    operation_id = "fail",
    summary = "Report a failure",
    tag = "workers",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id.")
    ),
    request_body = FailBody,
    responses(
        (status = 200, description = "The job.", body = keel_core::Job)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn fail(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<FailBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Work)?;
    let id = job_id(&id)?;
    let mut errors = vec![];
    let kind = failure(body.error, body.retry_in_ms, "", &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    single_outcome(
        &st,
        &caller,
        Outcome {
            id,
            token: body.lease_token,
            kind,
            delivery: None,
        },
    )
    .await
}

async fn single_outcome(
    st: &AppState,
    caller: &Caller,
    outcome: Outcome,
) -> Result<Response, ApiError> {
    let mut results = st
        .store
        .record_outcomes(vec![outcome], caller.scope(), st.clock.now())
        .await?;
    let job = results
        .pop()
        .unwrap_or(Err(StoreError::Internal("no outcome recorded".into())))?;
    tracing::info!(message = "Outcome recorded.", job_id = %job.id, queue = %job.queue, kind = %job.kind, state = %job.state, attempt = job.attempt);
    Ok(job_answer(StatusCode::OK, &job))
}

/// Validates a failure report; `at` is the pointer prefix of the object holding `error`.
fn failure(
    error: ErrorBody,
    retry_in_ms: Option<i64>,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> OutcomeKind {
    if error.message.len() > MAX_ERROR_MESSAGE {
        errors.push(FieldError::new(
            format!("{at}/error/message"),
            format!("must be at most {MAX_ERROR_MESSAGE} bytes"),
        ));
    }
    if error.kind.as_ref().is_some_and(|k| k.len() > 128) {
        errors.push(FieldError::new(
            format!("{at}/error/type"),
            "must be at most 128 bytes",
        ));
    }
    if let Some(ms) = retry_in_ms {
        check_range(
            errors,
            format_args!("{at}/retry_in_ms"),
            ms,
            0,
            MAX_DELAY_MS,
        );
    }
    OutcomeKind::Failed {
        message: error.message,
        kind: error.kind,
        retryable: error.retryable.unwrap_or(true),
        retry_in_ms,
    }
}

#[utoipa::path(
    post,
    path = "/v1/ack",
    operation_id = "ack",
    summary = "Report many outcomes; each item succeeds or fails alone",
    tag = "workers",
    request_body = AckBody,
    responses(
        (status = 200, description = "One result per item.", body = AckResponse)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn ack(
    State(st): State<AppState>,
    caller: Caller,
    Body(body): Body<AckBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::Work)?;
    let max = st.config.limits.max_batch;
    if body.items.is_empty() || body.items.len() > max {
        return Err(ApiError::field(
            "/items",
            format!("must hold 1 to {max} items, got {}", body.items.len()),
        ));
    }
    let mut errors = vec![];
    let mut outcomes = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.into_iter().enumerate() {
        let at = format!("/items/{i}");
        let Ok(id) = uuid::Uuid::parse_str(&item.id) else {
            errors.push(FieldError::new(format!("{at}/id"), "is not a job id"));
            continue;
        };
        let kind = match (item.outcome, item.error) {
            (AckOutcome::Completed, None) if item.retry_in_ms.is_none() => {
                match optional_json(
                    item.result,
                    &format!("{at}/result"),
                    st.config.limits.max_result_bytes,
                ) {
                    Ok(result) => OutcomeKind::Completed { result },
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
            }
            (AckOutcome::Completed, _) => {
                errors.push(FieldError::new(
                    at,
                    "error and retry_in_ms are only for outcome \"failed\"",
                ));
                continue;
            }
            (AckOutcome::Failed, None) => {
                errors.push(FieldError::new(
                    format!("{at}/error"),
                    "is required when outcome is \"failed\"",
                ));
                continue;
            }
            (AckOutcome::Failed, Some(error)) => {
                if item.result.is_some() {
                    errors.push(FieldError::new(
                        format!("{at}/result"),
                        "is only for outcome \"completed\"",
                    ));
                }
                failure(error, item.retry_in_ms, &at, &mut errors)
            }
        };
        outcomes.push(Outcome {
            id,
            token: item.lease_token,
            kind,
            delivery: None,
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let ids: Vec<_> = outcomes.iter().map(|o| o.id).collect();
    let results = st
        .store
        .record_outcomes(outcomes, caller.scope(), st.clock.now())
        .await?;
    let items: Vec<AckItemResult> = ids
        .into_iter()
        .zip(results)
        .map(|(id, r)| match r {
            Ok(job) => AckItemResult {
                id,
                status: 200,
                job: Some(job),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                AckItemResult {
                    id,
                    status: e.status().as_u16(),
                    job: None,
                    error: Some(e.slug_and_detail()),
                }
            }
        })
        .collect();
    Ok(AckResponse { items }.answer())
}

// Typed response shapes: serialising jobs straight to the body, not through a `Value` tree.

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LeaseResponse {
    jobs: Vec<LeasedJobView>,
}

/// One ack item's outcome: `status` 200 with the job, or the problem's status with its `type` and
/// `detail`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AckItemResult {
    id: uuid::Uuid,
    status: u16,
    #[schema(required)]
    job: Option<keel_core::Job>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    error: Option<serde_json::Value>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct AckResponse {
    items: Vec<AckItemResult>,
}

// The answers written by hand, each exactly what its `Serialize` writes (tests below), with
// the jobs by `Job::write_json`: a lease and an ack carry up to 100 whole jobs.

impl LeaseResponse {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"jobs\":");
        write_json_array(out, &self.jobs, LeasedJobView::write_json);
        out.push(b'}');
    }

    fn answer(&self) -> Response {
        // Each job also carries its lease: a token and an expiry.
        let room = 16
            + self
                .jobs
                .iter()
                .map(|j| job_room(&j.job) + 160)
                .sum::<usize>();
        written_answer(StatusCode::OK, room, |out| self.write_json(out))
    }
}

impl AckResponse {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"items\":");
        write_json_array(out, &self.items, |item, out| {
            out.extend_from_slice(b"{\"id\":");
            keel_core::write_json_value(out, &item.id);
            out.extend_from_slice(b",\"status\":");
            keel_core::write_json_value(out, &item.status);
            out.extend_from_slice(b",\"job\":");
            match &item.job {
                Some(job) => job.write_json(out),
                None => out.extend_from_slice(b"null"),
            }
            if let Some(error) = &item.error {
                out.extend_from_slice(b",\"error\":");
                keel_core::write_json_value(out, error);
            }
            out.push(b'}');
        });
        out.push(b'}');
    }

    fn answer(&self) -> Response {
        let room = 16
            + self
                .items
                .iter()
                .map(|i| 96 + i.job.as_ref().map_or(256, job_room))
                .sum::<usize>();
        written_answer(StatusCode::OK, room, |out| self.write_json(out))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use keel_core::{Job, Time};

    use super::*;
    use crate::wire::LeaseView;

    /// A job with text that needs escaping in every field that can hold it.
    pub(crate) fn odd_job() -> Job {
        serde_json::from_str(
            r#"{"id":"01a24cb5-666b-7000-bebc-0d64be80a003","queue":"q.1","kind":"k\"x\\y","payload":{"a": [1, "é"]},
                "state":"running","priority":-1,"attempt":2,"max_attempts":20,"timeout_ms":30000,
                "backoff":{"initial_ms":1000,"max_ms":3600000,"jitter":0.25},"run_at":"2026-12-06T18:54:46.379Z",
                "created_at":"2026-12-06T18:54:46.379Z","updated_at":"2026-12-06T18:54:46.380Z","finished_at":null,
                "idempotency_key":"é\n\u0001","tags":["a","b\"c"],
                "last_error":{"message":"m\t","type":"t","attempt":1,"at":"2026-12-06T18:54:46.379Z"},
                "result":[null],"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
        )
        .unwrap()
    }

    fn plain_job() -> Job {
        let mut job = odd_job();
        job.kind = "send".into();
        job.idempotency_key = None;
        job.tags.clear();
        job.last_error = None;
        job.result = None;
        job.traceparent = None;
        job
    }

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_lease_answer_is_what_serde_writes() {
        for jobs in [vec![], vec![odd_job(), plain_job()]] {
            let view = LeaseResponse {
                jobs: jobs
                    .into_iter()
                    .map(|job| LeasedJobView {
                        job,
                        lease: LeaseView {
                            token: "tok\"en".into(),
                            expires_at: Time::from_millis(1_800_000_000_000),
                        },
                    })
                    .collect(),
            };
            assert_eq!(
                written(|out| view.write_json(out)),
                serde_json::to_string(&view).unwrap()
            );
        }
    }

    #[test]
    fn the_ack_answer_is_what_serde_writes() {
        let view = AckResponse {
            items: vec![
                AckItemResult {
                    id: uuid::Uuid::from_u128(1),
                    status: 200,
                    job: Some(odd_job()),
                    error: None,
                },
                AckItemResult {
                    id: uuid::Uuid::from_u128(2),
                    status: 409,
                    job: None,
                    error: Some(
                        serde_json::json!({"type": "lease-mismatch", "detail": "a \"stale\" lease"}),
                    ),
                },
                AckItemResult {
                    id: uuid::Uuid::from_u128(3),
                    status: 200,
                    job: Some(plain_job()),
                    error: None,
                },
            ],
        };
        assert_eq!(
            written(|out| view.write_json(out)),
            serde_json::to_string(&view).unwrap()
        );
    }
}
