//! `GET /metrics`: the Prometheus text format.
//!
//! Three sources, one page:
//! - events counted as they happen, through the `metrics` facade into one process-wide
//!   Prometheus recorder (`recorder()`): job changes after their commit (`keel_store::observe`),
//!   the store's commit latency and group size, and HTTP requests by route (`track`);
//! - gauges read from the store at scrape time (`queue_gauges`): depth by state, oldest available
//!   age, paused, so they are exact on every node of a shared database;
//! - the push breakers of this server (`push.rs`).
//!
//! Label values are bounded: routes are the route table's templates (`/v1/jobs/{id}`), never
//! raw paths; queue and kind values are capped by `keel_store::observe`; no job ids.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_store::StoreError;
use keel_store::observe::names;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

pub(crate) const HTTP_REQUESTS: &str = "keel_http_requests_total";
pub(crate) const HTTP_DURATION: &str = "keel_http_request_duration_seconds";

/// Histogram buckets in seconds: 0.5 ms to 10 min, for request, commit, wait and run times.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 600.0,
];
/// Calls per store commit.
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The process's recorder, installed on first use. `None` when another recorder was installed
/// first (an embedding program's own): then `/metrics` shows only the scrape-time gauges.
pub(crate) fn recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH.into()), BATCH))
                .map(|b| b.build_recorder());
            let recorder = match built {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(message = "Metrics recorder not built.", error = %e);
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    message = "Another metrics recorder is installed; /metrics shows only gauges."
                );
                return None;
            }
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        names::ENQUEUED,
        "Jobs created (idempotent replays not counted)."
    );
    describe_counter!(names::COMPLETED, "Jobs completed.");
    describe_counter!(
        names::FAILED,
        "Failed attempts: reported failures and expired leases."
    );
    describe_counter!(names::DEAD, "Jobs that became dead.");
    describe_histogram!(
        names::QUEUE_WAIT,
        Unit::Seconds,
        "From a job's run_at to its lease."
    );
    describe_histogram!(
        names::RUN_TIME,
        Unit::Seconds,
        "From lease to the attempt's outcome (completed, failed, lease expired)."
    );
    describe_histogram!(
        names::COMMIT,
        Unit::Seconds,
        "Store commit latency (fsync included)."
    );
    describe_histogram!(names::BATCH, "Store calls carried by one commit.");
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route and status."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency, by route."
    );
}

/// Keeps the recorder's histograms bounded between scrapes.
pub(crate) async fn upkeep() {
    let Some(handle) = recorder() else {
        return;
    };
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// The method as a label: the standard ones by name, any other (HTTP allows extension methods,
/// which a client could invent without end) as `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Middleware: counts each request by route template, method and status, and times it.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    count(route, method, res.status().as_u16(), started.elapsed());
    res
}

/// Records a request in the histogram and counter of its route, method and status. The handles
/// are registered once per thread and kept: registering builds the labels (three strings) and
/// looks them up in the recorder's registry, which was most of what counting a request cost.
/// Bounded by the route table, the methods `method_label` names and the status codes.
fn count(route: &str, method: &'static str, status: u16, took: Duration) {
    type ByStatus = Vec<(u16, metrics::Counter)>;
    type ByMethod = Vec<(&'static str, metrics::Histogram, ByStatus)>;
    thread_local! {
        static KEPT: std::cell::RefCell<std::collections::HashMap<String, ByMethod>> =
            std::cell::RefCell::default();
    }
    let duration =
        || metrics::histogram!(HTTP_DURATION, "route" => route.to_owned(), "method" => method);
    let requests = || metrics::counter!(HTTP_REQUESTS, "route" => route.to_owned(), "method" => method, "status" => status.to_string());
    KEPT.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            // Not reachable (nothing here records re-entrantly); counted the slow way regardless.
            duration().record(took);
            requests().increment(1);
            return;
        };
        if !kept.contains_key(route) {
            kept.insert(route.to_owned(), Vec::new());
        }
        let Some(methods) = kept.get_mut(route) else {
            return;
        };
        let at = match methods.iter().position(|(m, _, _)| *m == method) {
            Some(at) => at,
            None => {
                methods.push((method, duration(), Vec::new()));
                methods.len() - 1
            }
        };
        let (_, histogram, statuses) = &mut methods[at];
        histogram.record(took);
        match statuses.iter().find(|(s, _)| *s == status) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = requests();
                counter.increment(1);
                statuses.push((status, counter));
            }
        }
    });
}

/// Escapes a label value for the text format (also used for the push breakers' origins).
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Depth by state, oldest available age and paused, per queue, read from the store now.
async fn queue_gauges(st: &AppState, out: &mut String) -> Result<(), StoreError> {
    use std::fmt::Write;
    let queues = st.store.queues(st.clock.now()).await?;
    let _ = writeln!(
        out,
        "# HELP keel_queue_jobs Jobs in a queue by state.\n# TYPE keel_queue_jobs gauge"
    );
    for q in &queues {
        let name = label(&q.name);
        let c = q.counts;
        for (state, n) in [
            ("scheduled", c.scheduled),
            ("available", c.available),
            ("running", c.running),
            ("completed", c.completed),
            ("dead", c.dead),
            ("cancelled", c.cancelled),
        ] {
            let _ = writeln!(
                out,
                "keel_queue_jobs{{queue=\"{name}\",state=\"{state}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP keel_queue_oldest_available_age_seconds Age of the oldest available job (0 when none).\n\
         # TYPE keel_queue_oldest_available_age_seconds gauge"
    );
    for q in &queues {
        let age = q.oldest_available_age_ms.unwrap_or(0).max(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "keel_queue_oldest_available_age_seconds{{queue=\"{}\"}} {age}",
            label(&q.name)
        );
    }
    let _ = writeln!(
        out,
        "# HELP keel_queue_paused 1 when the queue is paused.\n# TYPE keel_queue_paused gauge"
    );
    for q in &queues {
        let _ = writeln!(
            out,
            "keel_queue_paused{{queue=\"{}\"}} {}",
            label(&q.name),
            u8::from(q.paused)
        );
    }
    Ok(())
}

/// `GET /metrics`: no token, served by the operations bulkhead (API.md).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics (docs/operations.md lists them)",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain")
    ),
    security(())
)]
pub(crate) async fn scrape(State(st): State<AppState>) -> Response {
    let mut out = recorder().map(|h| h.render()).unwrap_or_default();
    // Storage being down is when operators most need the rest of this page: say so instead of
    // failing the scrape.
    let up = match queue_gauges(&st, &mut out).await {
        Ok(()) => 1,
        Err(e) => {
            tracing::warn!(message = "Metrics scrape could not read the queues.", error = %e);
            0
        }
    };
    out.push_str(&format!(
        "# HELP keel_store_up 1 when the last scrape could read the store.\n\
         # TYPE keel_store_up gauge\nkeel_store_up {up}\n"
    ));
    st.push.render_metrics(&mut out);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
