//! Push delivery: keel itself POSTs the jobs of queues that have a `target`.
//!
//! One loop leases from each push queue through the ordinary `Store::lease` (so pause, the
//! queue's concurrency limit — its bulkhead, shared with any pull workers — fencing and lease
//! expiry all apply unchanged) and runs each delivery as its own task; the outcome goes back
//! through `Store::record_outcomes` with the attempt's `delivery` report, under the attempt's
//! lease token, so a delivery that outlives its lease cannot decide the job.
//!
//! Invariants:
//! - A delivery never holds a slot beyond its target's `timeout_ms` (the whole request, body
//!   read included, is bounded by it), and its lease outlasts that by [`LEASE_MARGIN_MS`].
//! - While an origin's breaker is open, no job of that origin is leased, so none is charged an
//!   attempt; when half-open, exactly one probe is in flight.
//! - Classification is API.md's: 2xx completes (body ≤ 64 KiB kept as `result`); 408, 425, 429,
//!   5xx, time-outs and connection errors are retryable (`Retry-After` honoured, capped by the
//!   job's backoff maximum); any other status — and a forbidden address — is final (`dead`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_core::breaker::{Breaker, BreakerChange};
use keel_core::{Job, Json, QueueConfig, Scope, Target, Time};
use keel_store::{DeliveryReport, LeaseRequest, LeasedJob, Outcome, OutcomeKind, Store};
use reqwest::Url;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::Clock;
use crate::target::{Forbidden, check_url, http_client, origin, sign};

/// A lease outlasts its delivery's time limit by this much, so the outcome arrives first.
const LEASE_MARGIN_MS: i64 = 5_000;
/// Deliveries in flight per push queue when the queue sets no concurrency limit.
pub const DEFAULT_PUSH_CONCURRENCY: usize = 64;
/// The most of a response body kept as the job's result.
const MAX_RESULT_BYTES: usize = 64 << 10;
/// How often the loop re-reads which queues push, besides when told.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The push engine's shared state: breakers per origin and deliveries in flight per queue.
pub(crate) struct Push {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    allow_private: bool,
    breakers: Mutex<HashMap<String, OriginState>>,
    /// Each delivery in flight: its queue (the per-queue count is derived from it) and lease
    /// token (so shutdown can give it back).
    in_flight: Mutex<HashMap<uuid::Uuid, InFlight>>,
    /// A delivery finished or a queue was reconfigured: the loop looks again.
    changed: Notify,
    reconfigured: std::sync::atomic::AtomicBool,
}

struct InFlight {
    queue: String,
    token: String,
}

/// A metric family: name, type, help, and how to read it from an origin.
type MetricFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&OriginState) -> u64,
);

#[derive(Default)]
struct OriginState {
    breaker: Breaker,
    /// The newest breaker changes, newest last (at most 20).
    history: Vec<BreakerEvent>,
    /// Times the breaker opened since this server started.
    opened_total: u64,
}

#[derive(Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct BreakerEvent {
    pub(crate) at: Time,
    /// `opened` or `closed`.
    #[schema(pattern = "^(opened|closed)$")]
    pub(crate) change: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) open_ms: Option<i64>,
}

/// One origin as `GET /v1/targets` shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Origin)]
pub(crate) struct OriginView {
    pub(crate) origin: String,
    pub(crate) queues: Vec<String>,
    #[serde(flatten)]
    pub(crate) breaker: Breaker,
    pub(crate) history: Vec<BreakerEvent>,
}

impl OriginView {
    pub(crate) fn queues(&self) -> &[String] {
        &self.queues
    }
}

impl Push {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        allow_private: bool,
    ) -> Result<Push, reqwest::Error> {
        Ok(Push {
            store,
            clock,
            http: http_client(allow_private)?,
            allow_private,
            breakers: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            reconfigured: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// A queue's settings changed: re-read the push queues now.
    pub(crate) fn reconfigure(&self) {
        self.reconfigured
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Every origin of a push queue, with its breaker and history.
    pub(crate) async fn origins(&self) -> Result<Vec<OriginView>, keel_store::StoreError> {
        let queues = self.store.queues(self.clock.now()).await?;
        let mut by_origin: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for q in queues {
            if let Some(url) = q
                .config
                .target
                .as_ref()
                .and_then(|t| Url::parse(&t.url).ok())
            {
                by_origin.entry(origin(&url)).or_default().push(q.name);
            }
        }
        let breakers = lock(&self.breakers);
        Ok(by_origin
            .into_iter()
            .map(|(o, queues)| {
                let state = breakers.get(&o);
                OriginView {
                    breaker: state.map(|s| s.breaker.clone()).unwrap_or_default(),
                    history: state.map(|s| s.history.clone()).unwrap_or_default(),
                    origin: o,
                    queues,
                }
            })
            .collect())
    }

    /// The breakers in the Prometheus text format (label values escaped).
    pub(crate) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let breakers = lock(&self.breakers);
        let mut origins: Vec<(&String, &OriginState)> = breakers.iter().collect();
        origins.sort_by_key(|(o, _)| o.as_str());
        let families: [MetricFamily; 3] = [
            (
                "keel_push_breaker_state",
                "gauge",
                "Circuit breaker of a push origin: 0 closed, 1 half-open, 2 open.",
                |s| match s.breaker.state {
                    keel_core::breaker::BreakerState::Closed => 0,
                    keel_core::breaker::BreakerState::HalfOpen => 1,
                    keel_core::breaker::BreakerState::Open => 2,
                },
            ),
            (
                "keel_push_breaker_consecutive_failures",
                "gauge",
                "Consecutive failed deliveries to a push origin.",
                |s| u64::from(s.breaker.consecutive_failures),
            ),
            (
                "keel_push_breaker_opened_total",
                "counter",
                "Times the breaker of a push origin opened since the server started.",
                |s| s.opened_total,
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (origin, state) in &origins {
                let label = crate::metrics::label(origin);
                let _ = writeln!(out, "{name}{{origin=\"{label}\"}} {}", value(state));
            }
        }
    }

    /// The delivery loop; returns when `stopping` turns true and in-flight deliveries have
    /// finished (or `grace` ran out; those still running are then released).
    pub(crate) async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>, grace: Duration) {
        let mut wake = self.store.subscribe();
        let mut queues: Vec<(String, QueueConfig)> = vec![];
        let mut refreshed = Instant::now();
        let mut tasks = JoinSet::new();
        while !*stopping.borrow() {
            wake.borrow_and_update();
            let told = self
                .reconfigured
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            if told || refreshed.elapsed() >= REFRESH_EVERY {
                match self.store.queues(self.clock.now()).await {
                    Ok(all) => {
                        queues = all
                            .into_iter()
                            .filter(|q| q.config.target.is_some())
                            .map(|q| (q.name, q.config))
                            .collect();
                        refreshed = Instant::now();
                    }
                    Err(e) => tracing::warn!(message = "Push: could not read queues.", error = %e),
                }
            }
            let mut next_probe: Option<Time> = None;
            for (name, config) in &queues {
                if let Some(at) = self.start_deliveries(name, config, &mut tasks).await {
                    next_probe = Some(next_probe.map_or(at, |n: Time| n.min(at)));
                }
            }
            while tasks.try_join_next().is_some() {}
            let idle = next_probe.map_or(IDLE_WAIT, |at| {
                Duration::from_millis(at.millis_since(self.clock.now()).clamp(1, 1_000) as u64)
            });
            tokio::select! {
                _ = wake.changed() => {}
                () = self.changed.notified() => {}
                () = tokio::time::sleep(idle) => {}
                _ = stopping.changed() => {}
            }
        }
        if !tasks.is_empty() {
            tracing::info!(
                message = "Push: waiting for deliveries in flight.",
                count = tasks.len()
            );
            let all_done = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(grace, all_done).await.is_err() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                self.release_unfinished().await;
            }
        }
    }

    /// Gives every delivery still in flight back to its queue without counting the attempt
    /// (the target may have received it; the `Idempotency-Key` header lets it tell).
    async fn release_unfinished(&self) {
        let unfinished: Vec<(uuid::Uuid, InFlight)> = lock(&self.in_flight).drain().collect();
        if unfinished.is_empty() {
            return;
        }
        let items = unfinished
            .into_iter()
            .map(|(id, d)| Outcome {
                id,
                token: d.token,
                kind: OutcomeKind::Released,
                delivery: None,
            })
            .collect();
        match self
            .store
            .record_outcomes(items, Scope::All, self.clock.now())
            .await
        {
            Ok(results) => {
                let released = results.iter().filter(|r| r.is_ok()).count();
                tracing::warn!(
                    message = "Push: grace over; unfinished deliveries released without counting the attempt.",
                    released
                );
            }
            Err(e) => {
                tracing::warn!(message = "Push: could not release unfinished deliveries; their leases will expire.", error = %e)
            }
        }
    }

    /// Leases what the queue's free slots and its origin's breaker allow and starts each
    /// delivery. Returns when an open breaker next admits a probe.
    async fn start_deliveries(
        self: &Arc<Self>,
        queue: &str,
        config: &QueueConfig,
        tasks: &mut JoinSet<()>,
    ) -> Option<Time> {
        let target = config.target.as_ref()?;
        let url = Url::parse(&target.url).ok()?;
        let origin = origin(&url);
        let limit = config
            .concurrency
            .map_or(DEFAULT_PUSH_CONCURRENCY, |c| c as usize);
        let busy = lock(&self.in_flight)
            .values()
            .filter(|d| d.queue == queue)
            .count();
        let free = limit.saturating_sub(busy);
        let now = self.clock.now();
        let (admitted, probe_at) = {
            let mut breakers = lock(&self.breakers);
            let b = &mut breakers.entry(origin.clone()).or_default().breaker;
            (b.admit(free, now), b.wakes_at())
        };
        if admitted == 0 {
            return probe_at;
        }
        let req = LeaseRequest {
            queues: vec![queue.to_owned()],
            max_jobs: admitted,
            lease_ms: Some(target.timeout_ms + LEASE_MARGIN_MS),
            worker: Some("keel-push".to_owned()),
        };
        let leased = match self.store.lease(req, now).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(message = "Push: lease failed.", queue, error = %e);
                vec![]
            }
        };
        if leased.is_empty() {
            // A half-open probe slot that found no job is handed back.
            if let Some(s) = lock(&self.breakers).get_mut(&origin) {
                s.breaker.probe_abandoned();
            }
        }
        for job in leased {
            let flight = InFlight {
                queue: queue.to_owned(),
                token: job.token.clone(),
            };
            lock(&self.in_flight).insert(job.job.id, flight);
            let me = self.clone();
            let (target, origin) = (target.clone(), origin.clone());
            tasks.spawn(async move {
                let id = job.job.id;
                me.deliver(job, &target, &origin).await;
                lock(&me.in_flight).remove(&id);
                me.changed.notify_one();
            });
        }
        None
    }

    async fn deliver(&self, leased: LeasedJob, target: &Target, origin: &str) {
        let job = &leased.job;
        let started = Instant::now();
        let span = tracing::info_span!("push.delivery", job_id = %job.id, queue = %job.queue, kind = %job.kind, attempt = job.attempt, origin = %origin);
        crate::trace::adopt(&span, job.traceparent.as_deref());
        let answer = self
            .attempt(job, target, &span)
            .instrument(span.clone())
            .await;
        let duration_ms = started.elapsed().as_millis() as i64;
        let now = self.clock.now();
        let verdict = classify(answer, job, now);
        tracing::info!(
            message = "Delivery attempted.",
            job_id = %job.id, queue = %job.queue, kind = %job.kind, attempt = job.attempt,
            status = ?verdict.report.status, duration_ms, outcome = verdict.outcome_name(),
            error = ?verdict.report.error,
        );
        let outcome = Outcome {
            id: job.id,
            token: leased.token.clone(),
            kind: verdict.kind,
            delivery: Some(DeliveryReport {
                duration_ms,
                ..verdict.report
            }),
        };
        match self
            .store
            .record_outcomes(vec![outcome], Scope::All, now)
            .await
        {
            Ok(mut results) => {
                if let Some(Err(e)) = results.pop() {
                    tracing::warn!(message = "Delivery outcome refused (the lease moved on).", job_id = %job.id, error = %e);
                }
            }
            Err(e) => {
                tracing::warn!(message = "Delivery outcome not recorded; the lease will expire.", job_id = %job.id, error = %e)
            }
        }
        let change = {
            let mut breakers = lock(&self.breakers);
            let state = breakers.entry(origin.to_owned()).or_default();
            let change = state.breaker.record(verdict.healthy, &target.breaker, now);
            if let Some(c) = change {
                if matches!(c, BreakerChange::Opened { .. }) {
                    state.opened_total += 1;
                }
                state.history.push(BreakerEvent {
                    at: now,
                    change: match c {
                        BreakerChange::Opened { .. } => "opened",
                        BreakerChange::Closed => "closed",
                    },
                    open_ms: match c {
                        BreakerChange::Opened { open_ms } => Some(open_ms),
                        BreakerChange::Closed => None,
                    },
                });
                let extra = state.history.len().saturating_sub(20);
                state.history.drain(..extra);
            }
            change
        };
        let (action, data) = match change {
            Some(BreakerChange::Opened { open_ms }) => {
                tracing::warn!(message = "Breaker opened.", origin, open_ms);
                (
                    "breaker.opened",
                    serde_json::json!({"open_ms": open_ms, "queue": job.queue}),
                )
            }
            Some(BreakerChange::Closed) => {
                tracing::info!(message = "Breaker closed.", origin);
                ("breaker.closed", serde_json::json!({"queue": job.queue}))
            }
            None => return,
        };
        // Recorded in the audit log, so an operator can see later when a partner was cut off.
        let actor = keel_store::Actor::system("push");
        if let Err(e) = self
            .store
            .record_audit(&actor, action, origin, data, now)
            .await
        {
            tracing::warn!(message = "Breaker change not recorded.", origin, error = %e);
        }
    }

    /// Sends one attempt and reads at most `MAX_RESULT_BYTES` of the answer, all within the
    /// target's time limit.
    async fn attempt(&self, job: &Job, target: &Target, span: &tracing::Span) -> Answer {
        let url = match Url::parse(&target.url) {
            Ok(u) => u,
            Err(e) => return Answer::Refused(format!("bad target URL: {e}")),
        };
        if let Err(why) = check_url(&url, self.allow_private) {
            return Answer::Refused(why);
        }
        let body = job.payload.get().as_bytes().to_vec();
        let mut req = self
            .http
            .post(url)
            .timeout(Duration::from_millis(target.timeout_ms.max(1) as u64))
            .header("content-type", "application/json")
            .header("keel-job-id", job.id.to_string())
            .header("keel-queue", &job.queue)
            .header("keel-kind", &job.kind)
            .header("keel-attempt", job.attempt.to_string())
            .header(
                "idempotency-key",
                job.idempotency_key
                    .clone()
                    .unwrap_or_else(|| job.id.to_string()),
            );
        if let Some(tp) = crate::trace::outgoing(span, job.traceparent.as_deref()) {
            req = req.header("traceparent", tp);
        }
        for (name, value) in &target.headers {
            req = req.header(name, value);
        }
        if let Some(secret) = &target.signing_secret {
            let id = job.id.to_string();
            let ts = self.clock.now().as_millis() / 1000;
            if let Some(sig) = sign(secret, &id, ts, &body) {
                req = req
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig);
            }
        }
        let mut res = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => return describe(e, target.timeout_ms),
        };
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        if (200..300).contains(&status) {
            loop {
                match res.chunk().await {
                    Ok(Some(chunk)) => {
                        let room = MAX_RESULT_BYTES - body.len();
                        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        if body.len() >= MAX_RESULT_BYTES {
                            break;
                        }
                    }
                    Ok(None) => break,
                    // The status is in: a body cut short still completes the job.
                    Err(_) => break,
                }
            }
        }
        Answer::Status {
            status,
            retry_after,
            body,
        }
    }
}

enum Answer {
    Status {
        status: u16,
        retry_after: Option<String>,
        body: Vec<u8>,
    },
    /// No answer (time-out, connection refused or reset, TLS failure).
    Failed(String),
    /// The host resolved only to addresses the policy forbids; nothing was sent.
    Forbidden(String),
    /// Not sent: the address is forbidden.
    Refused(String),
}

struct Verdict {
    kind: OutcomeKind,
    report: DeliveryReport,
    /// For the breaker: the origin answered in a way that shows it is up.
    healthy: bool,
}

impl Verdict {
    fn outcome_name(&self) -> &'static str {
        match &self.kind {
            OutcomeKind::Completed { .. } => "completed",
            OutcomeKind::Failed {
                retryable: true, ..
            } => "retry",
            OutcomeKind::Failed { .. } => "dead",
            OutcomeKind::Released => "released",
        }
    }
}

fn classify(answer: Answer, job: &Job, now: Time) -> Verdict {
    let failed =
        |status: Option<u16>, message: String, retryable: bool, retry_in_ms: Option<i64>| Verdict {
            kind: OutcomeKind::Failed {
                message: message.clone(),
                kind: Some("delivery".to_owned()),
                retryable,
                retry_in_ms,
            },
            report: DeliveryReport {
                status,
                duration_ms: 0,
                error: Some(message),
            },
            healthy: !retryable,
        };
    match answer {
        Answer::Status { status, body, .. } if (200..300).contains(&status) => Verdict {
            kind: OutcomeKind::Completed {
                result: Some(result_of(&body)),
            },
            report: DeliveryReport {
                status: Some(status),
                duration_ms: 0,
                error: None,
            },
            healthy: true,
        },
        Answer::Status {
            status,
            retry_after,
            ..
        } if matches!(status, 408 | 425 | 429) || (500..600).contains(&status) => {
            let delay = retry_after
                .as_deref()
                .and_then(|v| retry_after_ms(v, now))
                .map(|ms| ms.min(job.backoff.max_ms));
            failed(
                Some(status),
                format!("target answered {status}"),
                true,
                delay,
            )
        }
        Answer::Status { status, .. } => failed(
            Some(status),
            format!("target answered {status}, which is not retried"),
            false,
            None,
        ),
        Answer::Failed(why) => failed(None, why, true, None),
        Answer::Forbidden(why) => failed(None, why, false, None),
        Answer::Refused(why) => failed(None, format!("not sent: {why}"), false, None),
    }
}

/// `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP date.
fn retry_after_ms(value: &str, now: Time) -> Option<i64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some((secs.min(1 << 31) as i64) * 1000);
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?;
    Some(
        at.timestamp()
            .as_millisecond()
            .saturating_sub(now.as_millis())
            .max(0),
    )
}

/// A response body as a result: its JSON if it parses, else the text (lossy UTF-8).
fn result_of(body: &[u8]) -> Json {
    if body.is_empty() {
        return Json::null();
    }
    match std::str::from_utf8(body)
        .ok()
        .and_then(|t| Json::from_text(t.to_owned()).ok())
    {
        Some(json) => json,
        None => Json::from_value(&serde_json::Value::String(
            String::from_utf8_lossy(body).into_owned(),
        )),
    }
}

/// A transport error as an answer, with a short, secret-free description: the resolver's
/// refusal of a forbidden address is final; anything else is a failure worth retrying.
fn describe(e: reqwest::Error, timeout_ms: i64) -> Answer {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        if let Some(f) = s.downcast_ref::<Forbidden>() {
            return Answer::Forbidden(f.0.clone());
        }
        source = s.source();
    }
    Answer::Failed(if e.is_timeout() {
        format!("no answer within {timeout_ms} ms")
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        // Without the URL: it may carry a token in its query.
        let text = e.without_url().to_string();
        text.chars().take(200).collect()
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = Time::parse_rfc3339("2026-11-23T06:00:00Z").unwrap_or(Time::EPOCH);
        assert_eq!(retry_after_ms("7", now), Some(7_000));
        assert_eq!(
            retry_after_ms("Mon, 23 Nov 2026 06:00:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Mon, 23 Nov 2026 05:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("soon", now), None);
    }
}
