//! The route table and the middleware around it. Each handler module owns one area of API.md.

mod admin;
mod health;
pub(crate) mod jobs;
pub(crate) mod queues;
mod schedules;
mod schemas;
mod workers;

use std::cell::RefCell;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Request, Response};
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use keel_core::lease::Tokens;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use tracing::Span;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::auth::admit;
use crate::limit::{Budget, shed};
use crate::problem::ApiError;

/// Health endpoints' own budget: they stay answerable while the job API sheds load.
const OPS_BUDGET: usize = 64;

/// The whole application: the middleware stack around the route table, as one service that
/// `listen::run` serves. Outermost first: catch panics, set and echo `x-request-id`, the request
/// span and its log line, the body limit, then routing and, per route, `track` (metrics), and for
/// the job API `admit` (an in-flight slot, then the token).
pub(crate) fn router(state: AppState) -> impl crate::listen::App {
    let body_limit = state.config.limits.max_body_bytes;
    // The job API: `admit` (shed, then authenticate) → handler. `route_layer` keeps unmatched
    // paths out of both, so a 404 costs nothing and needs no token. Handlers are registered
    // with utoipa-axum's `routes!`, which takes each one's path and method from its
    // `#[utoipa::path]`: the route table and the OpenAPI document are one list.
    let api = OpenApiRouter::new()
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(jobs::enqueue_batch))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::retry))
        .routes(routes!(workers::heartbeat))
        .routes(routes!(workers::complete))
        .routes(routes!(workers::fail))
        .routes(routes!(workers::lease))
        .routes(routes!(workers::ack))
        .routes(routes!(queues::list))
        .routes(routes!(queues::get, queues::put))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(queues::replay))
        .routes(routes!(queues::purge))
        .routes(routes!(queues::targets))
        .routes(routes!(admin::create_token, admin::list_tokens))
        .routes(routes!(admin::delete_token))
        .routes(routes!(admin::audit))
        .routes(routes!(schemas::list))
        .routes(routes!(schemas::get, schemas::put, schemas::delete))
        .routes(routes!(schedules::list))
        .routes(routes!(schedules::get, schedules::put, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .route_layer(from_fn_with_state(
            (Budget::new(state.config.max_in_flight), state.clone()),
            admit,
        ));
    let ops = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::openapi))
        .routes(routes!(crate::metrics::scrape))
        .route_layer(from_fn_with_state(Budget::new(OPS_BUDGET), shed));
    let (routes, api_doc) = api.merge(ops).split_for_parts();
    // Kept in the state for its one route, rather than added to every request (an `Extension`
    // layer clones it into each request's extensions).
    let doc = serde_json::to_vec(&crate::openapi::document(api_doc)).unwrap_or_default();
    let _ = state.openapi.set(doc.into());
    // `track` needs the matched route, which only exists inside the router, so it is the one
    // layer added per route; the rest wrap the router once. A layer added with `Router::layer`
    // wraps every route in a boxed service of its own, and each request cloned and boxed every
    // level again: five of them cost a sixth of `/healthz`'s instructions (docs/performance.md).
    let routed = routes
        .merge(crate::ui::router(state.clone()))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::metrics::track));
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a handler panicked".into()).into_response()
        }))
        .layer(SetRequestIdLayer::x_request_id(RequestIds))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let span = tracing::info_span!(
                        "request",
                        method = req.method().as_str(),
                        path = req.uri().path(),
                        request_id
                    );
                    crate::trace::adopt(
                        &span,
                        req.headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok()),
                    );
                    span
                })
                .on_request(())
                .on_response(|res: &Response<_>, latency: Duration, _span: &Span| {
                    tracing::info!(
                        message = "Request served.",
                        status = res.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1e3
                    );
                })
                .on_failure(()),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .service(routed)
}

/// `x-request-id` for a request that came without one: a v4 UUID, its randomness drawn for 64
/// ids at a time per thread, instead of a `getrandom` system call per request. Without
/// randomness (the OS refused it) the request goes on without an id rather than fail.
#[derive(Clone, Copy)]
struct RequestIds;

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        thread_local! {
            static IDS: RefCell<Tokens> = RefCell::new(Tokens::new(64));
        }
        let id = IDS.with(|ids| ids.borrow_mut().next_uuid()).ok()?;
        let mut text = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .ok()
            .map(RequestId::new)
    }
}
