//! The route table and the middleware around it. Each handler module owns one area of API.md.

mod admin;
mod health;
mod jobs;
mod queues;
mod schedules;
mod schemas;
mod workers;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Response};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::AppState;
use crate::auth::authenticate;
use crate::limit::{Budget, shed};
use crate::problem::ApiError;

/// Health endpoints' own budget: they stay answerable while the job API sheds load.
const OPS_BUDGET: usize = 64;

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    // The job API: shed (outermost) → authenticate → handler. `route_layer` keeps unmatched
    // paths out of both, so a 404 costs nothing and needs no token.
    let api = Router::new()
        .route("/v1/jobs", post(jobs::enqueue).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::enqueue_batch))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/heartbeat", post(workers::heartbeat))
        .route("/v1/jobs/{id}/complete", post(workers::complete))
        .route("/v1/jobs/{id}/fail", post(workers::fail))
        .route("/v1/lease", post(workers::lease))
        .route("/v1/ack", post(workers::ack))
        .route("/v1/queues", get(queues::list))
        .route("/v1/queues/{name}", get(queues::get).put(queues::put))
        .route("/v1/queues/{name}/pause", post(queues::pause))
        .route("/v1/queues/{name}/resume", post(queues::resume))
        .route("/v1/queues/{name}/replay", post(queues::replay))
        .route("/v1/queues/{name}/purge", post(queues::purge))
        .route("/v1/targets", get(queues::targets))
        .route(
            "/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::delete_token),
        )
        .route("/v1/audit", get(admin::audit))
        .route("/v1/schemas", get(schemas::list))
        .route(
            "/v1/schemas/{kind}",
            get(schemas::get).put(schemas::put).delete(schemas::delete),
        )
        .route("/v1/schedules", get(schedules::list))
        .route(
            "/v1/schedules/{name}",
            get(schedules::get)
                .put(schedules::put)
                .delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route_layer(from_fn_with_state(state.clone(), authenticate))
        .route_layer(from_fn_with_state(
            Budget::new(state.config.max_in_flight),
            shed,
        ));
    let ops = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/openapi.json", get(health::openapi))
        .route("/metrics", get(crate::metrics::scrape))
        .route_layer(from_fn_with_state(Budget::new(OPS_BUDGET), shed));
    Router::new()
        .merge(api)
        .merge(ops)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id);
                    crate::trace::adopt(&span, req.headers().get("traceparent").and_then(|v| v.to_str().ok()));
                    span
                })
                .on_request(())
                .on_response(|res: &Response<_>, latency: Duration, _span: &Span| {
                    tracing::info!(message = "Request served.", status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1e3);
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal("a handler panicked".into()).into_response()))
}
