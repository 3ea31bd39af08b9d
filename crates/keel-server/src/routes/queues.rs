//! Queues: list, read, configure, pause/resume, replay dead letters, purge.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use keel_core::validate::check_name;
use keel_core::{FieldError, QueueOverrides, State as JobState};
use keel_store::ReplayFilter;

use crate::AppState;
use crate::auth::{Caller, Need};
use crate::extract::Body;
use crate::problem::ApiError;
use crate::wire::{PurgeBody, QueuePatch, QueueView, ReplayBody, parse_state};

const MAX_REPLAY: i64 = 100_000;

fn no_queue(name: &str) -> ApiError {
    ApiError::NotFound(format!("no queue is named {name:?}"))
}

/// Maps a store error of an operation on queue `name`: "not found" names the queue.
fn queue_error(name: &str) -> impl Fn(keel_store::StoreError) -> ApiError + '_ {
    move |e| match e {
        keel_store::StoreError::NotFound => no_queue(name),
        other => other.into(),
    }
}

/// A queue name from the path; a name that breaks the rules cannot exist.
fn existing_name(name: &str) -> Result<&str, ApiError> {
    check_name(name).map(|()| name).map_err(|_| no_queue(name))
}

#[utoipa::path(
    get,
    path = "/v1/queues",
    operation_id = "listQueues",
    summary = "Every queue the token may see",
    tag = "queues",
    responses(
        (status = 200, description = "Queues.", body = [QueueView])
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Need::ReadQueues)?;
    let queues: Vec<QueueView> = st
        .store
        .queues(st.clock.now())
        .await?
        .into_iter()
        .filter(|q| caller.sees(&q.name))
        .map(Into::into)
        .collect();
    Ok(Json(queues).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    operation_id = "getQueue",
    summary = "Read a queue",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    responses(
        (status = 200, description = "The queue.", body = QueueView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = existing_name(&name)?;
    caller.require_queue(Need::ReadQueues, name)?;
    match st.store.queue(name, st.clock.now()).await? {
        Some(q) => Ok(Json(QueueView::from(q)).into_response()),
        None => Err(no_queue(name)),
    }
}

#[utoipa::path(
    put,
    path = "/v1/queues/{name}",
    operation_id = "configureQueue",
    summary = "Change a queue's settings (null resets one)",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    request_body = QueuePatch,
    responses(
        (status = 200, description = "The queue.", body = QueueView)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn put(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(patch): Body<QueuePatch>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureQueues)?;
    if let Err(m) = check_name(&name) {
        return Err(ApiError::field(
            "",
            format!("the queue name in the path {m}"),
        ));
    }
    let now = st.clock.now();
    let current = st
        .store
        .queue(&name, now)
        .await?
        .map(|q| q.overrides)
        .unwrap_or_else(QueueOverrides::default);
    let overrides = patch
        .apply(current, st.config.allow_private_targets)
        .map_err(ApiError::Validation)?;
    let q = st
        .store
        .configure_queue(&name, overrides, &caller.actor(), now)
        .await?;
    st.push.reconfigure();
    tracing::info!(message = "Queue configured.", queue = %name);
    Ok(Json(QueueView::from(q)).into_response())
}

async fn set_paused(
    st: AppState,
    caller: Caller,
    name: String,
    paused: bool,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureQueues)?;
    let name = existing_name(&name)?;
    let q = st
        .store
        .set_paused(name, paused, &caller.actor(), st.clock.now())
        .await
        .map_err(queue_error(name))?;
    tracing::info!(message = if paused { "Queue paused." } else { "Queue resumed." }, queue = %name);
    Ok(Json(QueueView::from(q)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    operation_id = "pauseQueue",
    summary = "Stop handing out the queue's jobs",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    responses(
        (status = 200, description = "The queue.", body = QueueView)
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
    path = "/v1/queues/{name}/resume",
    operation_id = "resumeQueue",
    summary = "Hand out the queue's jobs again",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    responses(
        (status = 200, description = "The queue.", body = QueueView)
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

#[utoipa::path(
    post,
    path = "/v1/queues/{name}/replay",
    operation_id = "replayQueue",
    summary = "Dead (or cancelled) jobs back to available",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "How many.", body = Replayed)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn replay(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<ReplayBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureQueues)?;
    let name = existing_name(&name)?;
    let mut errors: Vec<FieldError> = vec![];
    let state = parse_state(
        body.state.as_deref().unwrap_or("dead"),
        "/state",
        &[JobState::Dead, JobState::Cancelled],
    )
    .unwrap_or_else(|e| {
        errors.push(e);
        JobState::Dead
    });
    if let Some(Err(m)) = body.kind.as_deref().map(check_name) {
        errors.push(FieldError::new("/kind", m));
    }
    let limit = body.limit.unwrap_or(1_000);
    keel_core::validate::check_range(&mut errors, "/limit", limit, 1, MAX_REPLAY);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = ReplayFilter {
        state,
        kind: body.kind,
        limit: limit as usize,
    };
    let n = st
        .store
        .replay(name, filter, &caller.actor(), st.clock.now())
        .await
        .map_err(queue_error(name))?;
    tracing::info!(message = "Queue replayed.", queue = %name, replayed = n);
    Ok(Json(Replayed { replayed: n }).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/queues/{name}/purge",
    operation_id = "purgeQueue",
    summary = "Delete the queue's jobs in one state",
    tag = "queues",
    params(
        ("name" = crate::openapi::Name, Path, description = "The queue's name.")
    ),
    request_body = PurgeBody,
    responses(
        (status = 200, description = "How many.", body = Purged)
    ),
    security(("bearer" = []))
)]
pub(crate) async fn purge(
    State(st): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Body(body): Body<PurgeBody>,
) -> Result<Response, ApiError> {
    caller.require(Need::ConfigureQueues)?;
    let name = existing_name(&name)?;
    let allowed = [
        JobState::Dead,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Available,
    ];
    let state =
        parse_state(&body.state, "/state", &allowed).map_err(|e| ApiError::Validation(vec![e]))?;
    let n = st
        .store
        .purge(name, state, &caller.actor(), st.clock.now())
        .await
        .map_err(queue_error(name))?;
    tracing::info!(message = "Queue purged.", queue = %name, state = %state, purged = n);
    Ok(Json(Purged { purged: n }).into_response())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Replayed {
    replayed: u64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Purged {
    purged: u64,
}

/// `GET /v1/targets`: every push origin with its breaker (this node's view).
#[utoipa::path(
    get,
    path = "/v1/targets",
    operation_id = "listTargets",
    summary = "Push origins and their circuit breakers (this node's view)",
    tag = "queues",
    responses(
        (status = 200, description = "Origins.", body = [crate::push::OriginView])
    ),
    security(("bearer" = []))
)]
pub(crate) async fn targets(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Need::ReadQueues)?;
    let mut origins = st.push.origins().await?;
    origins.retain(|o| o.queues().iter().any(|q| caller.sees(q)));
    Ok(Json(origins).into_response())
}
