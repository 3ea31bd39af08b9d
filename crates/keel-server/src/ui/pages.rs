//! What each page shows, already formatted: the templates (`templates/ui/`) only lay it out.

use askama::Template;
use keel_core::{EventData, Job, Json, State as JobState, Time};
use keel_store::{JobPage as Listing, QueueInfo};
use serde::Serialize;

use super::history::{History, Rate};
use super::{Filters, Session};
use crate::auth::Need;
use crate::push::OriginView;

/// The page frame: who is logged in and the session's CSRF token for its forms.
#[derive(Clone, Default)]
pub(crate) struct Chrome {
    pub(crate) who: String,
    pub(crate) csrf: String,
}

#[derive(Template, Default)]
#[template(path = "ui/login.html")]
pub(crate) struct LoginPage {
    pub(crate) chrome: Chrome,
    pub(crate) error: String,
}

#[derive(Template)]
#[template(path = "ui/error.html")]
pub(crate) struct ErrorPage {
    pub(crate) chrome: Chrome,
    pub(crate) status: u16,
    pub(crate) title: String,
    pub(crate) detail: String,
}

/// "—" for nothing, else the time as RFC 3339.
fn when(t: Option<Time>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| t.to_string())
}

/// A duration for people: `850 ms`, `12 s`, `4 min`, `3 h`, `2 d`.
pub(crate) fn span(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{} s", ms / 1_000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

fn pretty(json: &Json) -> String {
    serde_json::from_str::<serde_json::Value>(json.get())
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| json.get().to_owned())
}

/// One queue on the overview (and in `/ui/live`).
#[derive(Serialize)]
pub(crate) struct QueueRow {
    pub(crate) name: String,
    pub(crate) paused: bool,
    pub(crate) scheduled: u64,
    pub(crate) available: u64,
    pub(crate) running: u64,
    pub(crate) completed: u64,
    pub(crate) dead: u64,
    pub(crate) cancelled: u64,
    pub(crate) oldest: String,
    /// Completed and failed per second over the last minutes, oldest first.
    pub(crate) rates: Vec<Rate>,
    /// The failed share of outcomes over the window, as a percentage ("—" without outcomes).
    pub(crate) failure_rate: String,
}

impl QueueRow {
    pub(crate) fn new(q: QueueInfo, history: &History) -> QueueRow {
        let rates = history.rates(&q.name);
        let (done, failed) = rates
            .iter()
            .fold((0.0, 0.0), |(d, f), r| (d + r.completed, f + r.failed));
        let failure_rate = if done + failed > 0.0 {
            format!("{:.0} %", 100.0 * failed / (done + failed))
        } else {
            "—".to_owned()
        };
        QueueRow {
            name: q.name,
            paused: q.paused,
            scheduled: q.counts.scheduled,
            available: q.counts.available,
            running: q.counts.running,
            completed: q.counts.completed,
            dead: q.counts.dead,
            cancelled: q.counts.cancelled,
            oldest: q
                .oldest_available_age_ms
                .map_or_else(|| "—".to_owned(), span),
            rates,
            failure_rate,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct BreakerChange {
    pub(crate) at: String,
    pub(crate) change: &'static str,
    pub(crate) open_for: String,
}

/// One push origin and its breaker.
#[derive(Serialize)]
pub(crate) struct OriginRow {
    pub(crate) origin: String,
    pub(crate) queues: String,
    pub(crate) state: &'static str,
    pub(crate) failures: u32,
    pub(crate) opened_at: String,
    pub(crate) next_probe_at: String,
    /// Newest first.
    pub(crate) history: Vec<BreakerChange>,
}

impl OriginRow {
    pub(crate) fn new(o: &OriginView) -> OriginRow {
        let state = match o.breaker.state {
            keel_core::breaker::BreakerState::Closed => "closed",
            keel_core::breaker::BreakerState::Open => "open",
            keel_core::breaker::BreakerState::HalfOpen => "half_open",
        };
        OriginRow {
            origin: o.origin.clone(),
            queues: o.queues.join(", "),
            state,
            failures: o.breaker.consecutive_failures,
            opened_at: when(o.breaker.opened_at),
            next_probe_at: when(o.breaker.next_probe_at),
            history: o
                .history
                .iter()
                .rev()
                .map(|e| BreakerChange {
                    at: e.at.to_string(),
                    change: e.change,
                    open_for: e.open_ms.map(span).unwrap_or_default(),
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
pub(crate) struct Overview {
    pub(crate) chrome: Chrome,
    pub(crate) queues: Vec<QueueRow>,
    pub(crate) origins: Vec<OriginRow>,
}

#[derive(Template)]
#[template(path = "ui/targets.html")]
pub(crate) struct TargetsPage {
    pub(crate) chrome: Chrome,
    pub(crate) origins: Vec<OriginRow>,
}

pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) state: &'static str,
    pub(crate) attempt: String,
    pub(crate) created: String,
    pub(crate) updated: String,
    pub(crate) error: String,
}

impl JobRow {
    fn new(j: &Job) -> JobRow {
        JobRow {
            id: j.id.to_string(),
            kind: j.kind.clone(),
            state: j.state.as_str(),
            attempt: format!("{}/{}", j.attempt, j.max_attempts),
            created: j.created_at.to_string(),
            updated: j.updated_at.to_string(),
            error: j
                .last_error
                .as_ref()
                .map(|e| e.message.chars().take(120).collect())
                .unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/queue.html")]
pub(crate) struct QueuePage {
    pub(crate) chrome: Chrome,
    pub(crate) name: String,
    pub(crate) paused: bool,
    pub(crate) counts: Vec<(&'static str, u64)>,
    pub(crate) oldest: String,
    /// The effective settings, for reading.
    pub(crate) settings: Vec<(&'static str, String)>,
    /// The overrides an admin can edit ("" = the server default).
    pub(crate) concurrency: String,
    pub(crate) max_attempts: String,
    pub(crate) timeout_ms: String,
    pub(crate) backoff_initial_ms: String,
    pub(crate) backoff_max_ms: String,
    pub(crate) backoff_jitter: String,
    pub(crate) retention_completed_ms: String,
    pub(crate) retention_dead_ms: String,
    pub(crate) rate_per_second: String,
    pub(crate) rate_burst: String,
    pub(crate) dead: u64,
    pub(crate) can_configure: bool,
    pub(crate) jobs: Vec<JobRow>,
    /// The next page's URL, or "".
    pub(crate) next: String,
    pub(crate) state: String,
    pub(crate) kind: String,
    pub(crate) tag: String,
    pub(crate) before: String,
    pub(crate) states: [&'static str; 6],
    pub(crate) notice: String,
}

impl QueuePage {
    pub(crate) fn new(
        chrome: Chrome,
        q: QueueInfo,
        listing: Listing,
        f: Filters,
        s: &Session,
    ) -> QueuePage {
        let notice = f.notice();
        let c = &q.config;
        let mut settings = vec![
            (
                "Concurrency",
                c.concurrency
                    .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
            ),
            ("Max attempts", c.max_attempts.to_string()),
            ("Timeout", span(c.timeout_ms)),
            (
                "Backoff",
                format!(
                    "{} to {}, jitter {}",
                    span(c.backoff.initial_ms),
                    span(c.backoff.max_ms),
                    c.backoff.jitter
                ),
            ),
            (
                "Retention",
                format!(
                    "completed {}, dead {}",
                    span(c.retention.completed_ms),
                    span(c.retention.dead_ms)
                ),
            ),
        ];
        settings.push((
            "Delivery",
            c.target.as_ref().map_or_else(
                || "pull (workers lease)".to_owned(),
                |t| format!("push to {}", t.url),
            ),
        ));
        if let Some(r) = &c.rate_limit {
            settings.push((
                "Rate limit",
                format!("{}/s, burst {}", r.per_second, r.burst),
            ));
        }
        let next = listing.next.map_or_else(String::new, |cursor| {
            let mut url = format!("/ui/queues/{}?cursor={cursor}", q.name);
            for (k, v) in [
                ("state", &f.state),
                ("kind", &f.kind),
                ("tag", &f.tag),
                ("before", &f.before),
            ] {
                if !v.is_empty() {
                    url.push_str(&format!("&{k}={}", super::urlencode(v)));
                }
            }
            url
        });
        let o = &q.overrides;
        let n = q.counts;
        QueuePage {
            chrome,
            paused: q.paused,
            counts: vec![
                ("scheduled", n.scheduled),
                ("available", n.available),
                ("running", n.running),
                ("completed", n.completed),
                ("dead", n.dead),
                ("cancelled", n.cancelled),
            ],
            oldest: q
                .oldest_available_age_ms
                .map_or_else(|| "—".to_owned(), span),
            settings,
            concurrency: o.concurrency.map(|v| v.to_string()).unwrap_or_default(),
            max_attempts: o.max_attempts.map(|v| v.to_string()).unwrap_or_default(),
            timeout_ms: o.timeout_ms.map(|v| v.to_string()).unwrap_or_default(),
            backoff_initial_ms: o
                .backoff
                .map(|b| b.initial_ms.to_string())
                .unwrap_or_default(),
            backoff_max_ms: o.backoff.map(|b| b.max_ms.to_string()).unwrap_or_default(),
            backoff_jitter: o.backoff.map(|b| b.jitter.to_string()).unwrap_or_default(),
            retention_completed_ms: o
                .retention
                .map(|r| r.completed_ms.to_string())
                .unwrap_or_default(),
            retention_dead_ms: o
                .retention
                .map(|r| r.dead_ms.to_string())
                .unwrap_or_default(),
            rate_per_second: o
                .rate_limit
                .map(|r| r.per_second.to_string())
                .unwrap_or_default(),
            rate_burst: o
                .rate_limit
                .map(|r| r.burst.to_string())
                .unwrap_or_default(),
            dead: n.dead,
            can_configure: s.can(Need::ConfigureQueues),
            jobs: listing.jobs.iter().map(JobRow::new).collect(),
            next,
            name: q.name,
            state: f.state,
            kind: f.kind,
            tag: f.tag,
            before: f.before,
            states: JobState::ALL.map(JobState::as_str),
            notice,
        }
    }
}

#[derive(Template)]
#[template(path = "ui/confirm.html")]
pub(crate) struct ConfirmPage {
    pub(crate) chrome: Chrome,
    pub(crate) queue: String,
    /// `replay` or `purge`.
    pub(crate) action: String,
    pub(crate) count: u64,
    /// The count an earlier confirmation named, when the queue changed since.
    pub(crate) changed: Option<u64>,
}

pub(crate) struct EventRow {
    pub(crate) at: String,
    pub(crate) kind: &'static str,
    pub(crate) detail: String,
    /// How long the attempt or delivery took, where the event ends one.
    pub(crate) took: String,
    /// An attempt that went wrong.
    pub(crate) bad: bool,
}

fn timeline(events: &[keel_core::Event]) -> Vec<EventRow> {
    let mut leased_at: Option<Time> = None;
    let mut rows = Vec::with_capacity(events.len());
    for e in events {
        let since_lease = |at: Time| {
            leased_at
                .map(|l| span(at.millis_since(l)))
                .unwrap_or_default()
        };
        let (detail, took, bad) = match &e.data {
            EventData::Enqueued { job } => (
                format!(
                    "into {} as {}, {} attempts allowed",
                    job.queue, job.kind, job.max_attempts
                ),
                String::new(),
                false,
            ),
            EventData::Available {} => ("due".to_owned(), String::new(), false),
            EventData::Leased {
                attempt,
                expires_at,
                worker,
                ..
            } => {
                leased_at = Some(e.at);
                let by = worker
                    .as_deref()
                    .map(|w| format!(" by {w}"))
                    .unwrap_or_default();
                (
                    format!("attempt {attempt}{by}, lease until {expires_at}"),
                    String::new(),
                    false,
                )
            }
            EventData::Heartbeat { expires_at } => {
                (format!("lease until {expires_at}"), String::new(), false)
            }
            EventData::Completed { .. } => ("succeeded".to_owned(), since_lease(e.at), false),
            EventData::Failed { error, retryable } => {
                let kind = error
                    .kind
                    .as_deref()
                    .map(|k| format!("{k}: "))
                    .unwrap_or_default();
                let retry = if *retryable { "" } else { " (not retryable)" };
                (
                    format!("attempt {}: {kind}{}{retry}", error.attempt, error.message),
                    since_lease(e.at),
                    true,
                )
            }
            EventData::LeaseExpired { attempt } => (
                format!("attempt {attempt}: the lease expired without an outcome"),
                since_lease(e.at),
                true,
            ),
            EventData::Scheduled { run_at, delay_ms } => (
                format!("retry in {} (at {run_at})", span(*delay_ms)),
                String::new(),
                false,
            ),
            EventData::Dead { reason } => {
                let why = match reason {
                    keel_core::DeadReason::MaxAttempts => "every attempt failed",
                    keel_core::DeadReason::NonRetryable => "a failure was not retryable",
                };
                (why.to_owned(), String::new(), true)
            }
            EventData::Cancelled { from } => (format!("from {from}"), String::new(), false),
            EventData::Retried { from } => {
                (format!("from {from}, attempts reset"), String::new(), false)
            }
            EventData::Purged { from } => (format!("from {from}"), String::new(), false),
            EventData::Released { attempt } => (
                format!("attempt {attempt} given back unfinished"),
                String::new(),
                false,
            ),
            EventData::Delivery {
                attempt,
                status,
                duration_ms,
                error,
            } => {
                let answer = status.map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
                let error = error
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let bad = !status.is_some_and(|s| (200..300).contains(&s));
                (
                    format!("push attempt {attempt}: {answer}{error}"),
                    span(*duration_ms),
                    bad,
                )
            }
        };
        rows.push(EventRow {
            at: e.at.to_string(),
            kind: e.data.type_name(),
            detail,
            took,
            bad,
        });
    }
    rows
}

#[derive(Template)]
#[template(path = "ui/job.html")]
pub(crate) struct JobPage {
    pub(crate) chrome: Chrome,
    pub(crate) id: String,
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) state: &'static str,
    /// When the job last changed: the page follows it while this moves.
    pub(crate) updated: String,
    pub(crate) facts: Vec<(&'static str, String)>,
    pub(crate) last_error: String,
    pub(crate) payload: String,
    /// Pretty JSON, or "" before completion.
    pub(crate) result: String,
    pub(crate) timeline: Vec<EventRow>,
    pub(crate) can_cancel: bool,
    pub(crate) can_retry: bool,
    pub(crate) notice: String,
}

impl JobPage {
    pub(crate) fn new(
        chrome: Chrome,
        job: Job,
        events: &[keel_core::Event],
        s: &Session,
        notice: String,
    ) -> JobPage {
        let mut facts = vec![
            (
                "Attempts",
                format!("{} of {}", job.attempt, job.max_attempts),
            ),
            ("Priority", job.priority.to_string()),
            ("Runs at", job.run_at.to_string()),
            ("Created", job.created_at.to_string()),
            ("Updated", job.updated_at.to_string()),
            ("Finished", when(job.finished_at)),
            ("Timeout", span(job.timeout_ms)),
        ];
        if !job.tags.is_empty() {
            facts.push(("Tags", job.tags.join(", ")));
        }
        if let Some(k) = &job.idempotency_key {
            facts.push(("Idempotency key", k.clone()));
        }
        if let Some(t) = &job.traceparent {
            facts.push(("Trace", t.clone()));
        }
        JobPage {
            chrome,
            id: job.id.to_string(),
            state: job.state.as_str(),
            updated: job.updated_at.to_string(),
            last_error: job
                .last_error
                .as_ref()
                .map(|e| format!("attempt {}: {}", e.attempt, e.message))
                .unwrap_or_default(),
            payload: pretty(&job.payload),
            result: job.result.as_ref().map(pretty).unwrap_or_default(),
            timeline: timeline(events),
            can_cancel: !job.state.is_final() && s.can(Need::CancelJobs),
            can_retry: matches!(job.state, JobState::Dead | JobState::Cancelled)
                && s.can(Need::RetryJobs),
            notice,
            facts,
            queue: job.queue,
            kind: job.kind,
        }
    }
}
