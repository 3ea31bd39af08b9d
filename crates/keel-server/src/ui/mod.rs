//! The admin web UI at `/ui`: server-rendered HTML (askama templates compiled into the binary),
//! one small script for live refresh, no external assets (a strict Content-Security-Policy says
//! so to the browser too).
//!
//! Invariants:
//! - The UI has no powers of its own. A page shows what the session's token may read, through
//!   the same `Need` checks and queue scopes as the API; every action calls the API's own
//!   handler with that token's `Caller`, so validation, permission checks, audit entries and
//!   logs are the API's, and a refusal is the API's problem shown as a page.
//! - What a token's role cannot do is not offered: forms for actions are rendered only when
//!   `permits(role, need)` (and refused by the API's handler regardless).
//! - Every POST carries a CSRF token, the HMAC of the session's API token under a per-process
//!   key, and is refused with 403 before anything else without the right one. The session
//!   cookie holds the API token: HttpOnly, SameSite=Strict, Path=/ui, and Secure under TLS.
//! - A bulk action (replay, purge) is confirmed on a page that states how many jobs it will
//!   touch; the confirmation carries that count, and if the queue changed meanwhile the action
//!   is not taken and the new count is shown for another confirmation.

mod history;
mod pages;

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};
use keel_core::access::hashes_equal;
use keel_core::{State as JobState, Time};
use keel_store::JobFilter;

pub(crate) use history::History;

use crate::AppState;
use crate::auth::{Caller, Need, permits};
use crate::extract::job_id;
use crate::limit::{Budget, shed};
use crate::problem::ApiError;
use crate::routes::{jobs, queues};
use crate::wire::{BackoffBody, PurgeBody, QueuePatch, RateLimitBody, ReplayBody, RetentionBody};
use pages::*;

/// The session cookie.
const COOKIE: &str = "keel_ui";
/// UI requests in flight at once: the UI cannot take the job API's budget.
const UI_BUDGET: usize = 64;
/// Jobs per page of a queue's listing.
const PAGE: usize = 50;

/// The UI's own state: the CSRF key and the throughput history.
pub(crate) struct Ui {
    csrf_key: [u8; 32],
    pub(crate) history: History,
}

impl Ui {
    pub(crate) fn new() -> std::io::Result<Ui> {
        let mut csrf_key = [0u8; 32];
        getrandom::fill(&mut csrf_key)
            .map_err(|e| std::io::Error::other(format!("the OS random source failed: {e}")))?;
        Ok(Ui {
            csrf_key,
            history: History::default(),
        })
    }

    /// The CSRF token of a session: hex HMAC-SHA256 of its API token.
    fn csrf_for(&self, token: &str) -> String {
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.csrf_key) else {
            return String::new();
        };
        mac.update(token.as_bytes());
        keel_core::lease::hex(&mac.finalize().into_bytes())
    }
}

pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/live", get(live))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/targets", get(targets))
        .route("/ui/queues/{name}", get(queue))
        .route("/ui/queues/{name}/{action}", post(queue_action))
        .route("/ui/jobs/{id}", get(job))
        .route("/ui/jobs/{id}/live", get(job_live))
        .route("/ui/jobs/{id}/{action}", post(job_action))
        .route("/ui/assets/{file}", get(asset))
        .route_layer(from_fn_with_state(Budget::new(UI_BUDGET), shed))
        .layer(axum::middleware::map_response(harden))
        .with_state(state)
}

/// Headers on every UI answer: only our own scripts, styles and forms; no framing; no sniffing.
async fn harden(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The caller of a UI request, from the session cookie; no valid session sends the browser to
/// the login page.
pub(crate) struct Session {
    caller: Caller,
    csrf: String,
}

impl Session {
    fn can(&self, need: Need) -> bool {
        permits(self.caller.0.role, need)
    }

    fn chrome(&self) -> Chrome {
        Chrome {
            who: format!("{} ({})", self.caller.0.name, self.caller.0.role.as_str()),
            csrf: self.csrf.clone(),
        }
    }

    /// Whether a POST's form carries this session's CSRF token.
    fn csrf_ok(&self, form: &HashMap<String, String>) -> bool {
        form.get("_csrf")
            .is_some_and(|t| !self.csrf.is_empty() && hashes_equal(t, &self.csrf))
    }
}

/// The answer to a POST without the session's CSRF token: nothing was done.
fn csrf_refused() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "The form did not carry this session's CSRF token; reload the page and try again.",
        None,
    )
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Session, Response> {
        let token = cookie(&parts.headers, COOKIE);
        match st.auth.admit(token) {
            Ok(caller) => {
                let csrf = st.ui.csrf_for(token.unwrap_or("no-auth"));
                Ok(Session { caller, csrf })
            }
            Err(ApiError::RateLimited(_)) => Err(error_page(
                StatusCode::TOO_MANY_REQUESTS,
                "This token is over its rate limit; try again in a moment.",
                None,
            )),
            Err(_) => Err(Redirect::to("/ui/login").into_response()),
        }
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(message = "A UI template failed to render.", error = %e);
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

fn error_page(status: StatusCode, detail: &str, chrome: Option<Chrome>) -> Response {
    let page = ErrorPage {
        chrome: chrome.unwrap_or_default(),
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        detail: detail.to_owned(),
    };
    render(status, &page)
}

/// A page, or why it cannot be shown.
fn show(page: Result<impl Template, ApiError>, s: &Session) -> Response {
    match page {
        Ok(p) => render(StatusCode::OK, &p),
        Err(e) => api_error(e, s),
    }
}

/// An API refusal (or failure) as a page.
fn api_error(e: ApiError, s: &Session) -> Response {
    let detail = e.slug_and_detail()["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    error_page(e.status(), &detail, Some(s.chrome()))
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "ui.css" => (
            include_str!("../../assets/ui.css"),
            "text/css; charset=utf-8",
        ),
        "ui.js" => (
            include_str!("../../assets/ui.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

// Login and logout.

async fn login_form(State(st): State<AppState>) -> Response {
    if !st.auth.enabled() {
        return Redirect::to("/ui").into_response();
    }
    render(StatusCode::OK, &LoginPage::default())
}

async fn login(
    State(st): State<AppState>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").map(|t| t.trim()).unwrap_or_default();
    // A token is `keel_` and hex digits; anything else cannot be one, nor belong in a cookie.
    let plausible = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match st.auth.admit(Some(token).filter(|_| plausible)) {
        Ok(_) => {
            let secure = if st.config.tls.is_some() {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=43200{secure}"
            );
            let mut res = Redirect::to("/ui").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                res.headers_mut().insert(header::SET_COOKIE, v);
            }
            res
        }
        Err(_) => {
            let page = LoginPage {
                error: "That token is unknown or was revoked.".into(),
                ..LoginPage::default()
            };
            render(StatusCode::UNAUTHORIZED, &page)
        }
    }
}

async fn logout(s: Session, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    if !s.csrf_ok(&form) {
        return csrf_refused();
    }
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("keel_ui=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}

// Overview.

async fn queue_rows(st: &AppState, s: &Session) -> Result<Vec<QueueRow>, ApiError> {
    s.caller.require(Need::ReadQueues)?;
    let now = st.clock.now();
    Ok(st
        .store
        .queues(now)
        .await?
        .into_iter()
        .filter(|q| s.caller.sees(&q.name))
        .map(|q| QueueRow::new(q, &st.ui.history))
        .collect())
}

async fn origin_rows(st: &AppState, s: &Session) -> Result<Vec<OriginRow>, ApiError> {
    let mut origins = st.push.origins().await?;
    origins.retain(|o| o.queues().iter().any(|q| s.caller.sees(q)));
    Ok(origins.iter().map(OriginRow::new).collect())
}

async fn overview(State(st): State<AppState>, s: Session) -> Response {
    let page = async {
        Ok::<_, ApiError>(Overview {
            chrome: s.chrome(),
            queues: queue_rows(&st, &s).await?,
            origins: origin_rows(&st, &s).await?,
        })
    };
    show(page.await, &s)
}

/// The overview's data as JSON, polled by `ui.js` to refresh the page in place.
async fn live(State(st): State<AppState>, s: Session) -> Response {
    let data = async {
        Ok::<_, ApiError>(serde_json::json!({
            "queues": queue_rows(&st, &s).await?,
            "origins": origin_rows(&st, &s).await?,
        }))
    };
    match data.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn targets(State(st): State<AppState>, s: Session) -> Response {
    let page = async {
        s.caller.require(Need::ReadQueues)?;
        Ok::<_, ApiError>(TargetsPage {
            chrome: s.chrome(),
            origins: origin_rows(&st, &s).await?,
        })
    };
    show(page.await, &s)
}

// A queue.

/// The filters of a queue's job listing, as the page's GET form sends them.
#[derive(serde::Deserialize, Default)]
pub(crate) struct Filters {
    #[serde(default)]
    state: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    tag: String,
    /// Only jobs created before this local date-time (`YYYY-MM-DDTHH:MM`, UTC).
    #[serde(default)]
    before: String,
    #[serde(default)]
    cursor: String,
    /// What the last action did (a [`Done`] code), and how many jobs it touched.
    #[serde(default)]
    done: String,
    n: Option<u64>,
}

impl Filters {
    /// The banner for `done`: fixed texts only, so a crafted link cannot put words on a page.
    pub(crate) fn notice(&self) -> String {
        Done::ALL
            .into_iter()
            .find(|d| d.code() == self.done)
            .map(|d| d.text(self.n.unwrap_or(0)))
            .unwrap_or_default()
    }
}

/// What a UI action did, as the page after it says.
#[derive(Clone, Copy)]
enum Done {
    Paused,
    Resumed,
    Saved,
    Replayed,
    Purged,
    Nothing,
    Cancelled,
    Retried,
}

impl Done {
    const ALL: [Done; 8] = [
        Done::Paused,
        Done::Resumed,
        Done::Saved,
        Done::Replayed,
        Done::Purged,
        Done::Nothing,
        Done::Cancelled,
        Done::Retried,
    ];

    fn code(self) -> &'static str {
        match self {
            Done::Paused => "paused",
            Done::Resumed => "resumed",
            Done::Saved => "saved",
            Done::Replayed => "replayed",
            Done::Purged => "purged",
            Done::Nothing => "nothing",
            Done::Cancelled => "cancelled",
            Done::Retried => "retried",
        }
    }

    fn text(self, n: u64) -> String {
        match self {
            Done::Paused => "Paused.".into(),
            Done::Resumed => "Resumed.".into(),
            Done::Saved => "Settings saved.".into(),
            Done::Replayed => format!("Replayed {n} dead jobs."),
            Done::Purged => format!("Purged {n} dead jobs."),
            Done::Nothing => "Nothing to do.".into(),
            Done::Cancelled => "Cancelled.".into(),
            Done::Retried => "Retried: available again.".into(),
        }
    }
}

/// The listing filter these form values ask for, or what is wrong with them.
fn job_filter(queue: &str, f: &Filters, s: &Session) -> Result<JobFilter, ApiError> {
    let mut filter = JobFilter {
        queue: Some(queue.to_owned()),
        limit: PAGE,
        scope: s.caller.scope(),
        ..JobFilter::default()
    };
    let name = |field: &str, v: &str| {
        keel_core::validate::check_name(v)
            .map(|()| v.to_owned())
            .map_err(|m| ApiError::field(format!("/{field}"), m))
    };
    if !f.state.is_empty() {
        filter.state = Some(
            JobState::parse(&f.state)
                .ok_or_else(|| ApiError::field("/state", "is not a job state"))?,
        );
    }
    if !f.kind.is_empty() {
        filter.kind = Some(name("kind", &f.kind)?);
    }
    if !f.tag.is_empty() {
        filter.tag = Some(name("tag", &f.tag)?);
    }
    // Ids are UUIDv7, ordered by creation time: "created before T" is the cursor of the
    // smallest id minted at T.
    if !f.before.is_empty() {
        // Browsers send `HH:MM`, or `HH:MM:SS` when the field's step allows seconds.
        let seconds = if f.before.matches(':').count() >= 2 {
            ""
        } else {
            ":00"
        };
        let at = Time::parse_rfc3339(&format!("{}{seconds}Z", f.before))
            .map_err(|m| ApiError::field("/before", m))?;
        filter.before = Some(
            uuid::Builder::from_unix_timestamp_millis(at.as_millis() as u64, &[0; 10]).into_uuid(),
        );
    }
    if !f.cursor.is_empty() {
        let c = uuid::Uuid::parse_str(&f.cursor)
            .map_err(|_| ApiError::field("/cursor", "is not a cursor this page gave"))?;
        filter.before = Some(filter.before.map_or(c, |b| b.min(c)));
    }
    Ok(filter)
}

async fn queue(
    State(st): State<AppState>,
    s: Session,
    Path(name): Path<String>,
    Query(f): Query<Filters>,
) -> Response {
    let page = async {
        keel_core::validate::check_name(&name)
            .map_err(|_| ApiError::NotFound(format!("no queue is named {name:?}")))?;
        s.caller.require_queue(Need::ReadQueues, &name)?;
        let q = st
            .store
            .queue(&name, st.clock.now())
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no queue is named {name:?}")))?;
        let filter = job_filter(&name, &f, &s)?;
        let listing = st.store.list_jobs(filter).await?;
        Ok::<_, ApiError>(QueuePage::new(s.chrome(), q, listing, f, &s))
    };
    show(page.await, &s)
}

/// What an API handler answered, as the UI's next step: back to `to` saying what was done
/// (to `n` jobs), or the refusal as a page.
fn after(
    answer: Result<Response, ApiError>,
    to: &str,
    done: Done,
    n: u64,
    s: &Session,
) -> Response {
    match answer {
        Ok(r) if r.status().is_success() => {
            Redirect::to(&format!("{to}?done={}&n={n}", done.code())).into_response()
        }
        Ok(r) => r,
        Err(e) => api_error(e, s),
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `""` → reset to the default (`null`), a number → that, anything else → refused by name.
fn patch_field(
    form: &HashMap<String, String>,
    field: &str,
) -> Result<Option<Option<i64>>, ApiError> {
    match form.get(field).map(|v| v.trim()) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(v) => v
            .parse::<i64>()
            .map(|n| Some(Some(n)))
            .map_err(|_| ApiError::field(format!("/{field}"), "must be a whole number")),
    }
}

/// A finite number from a form field, if it holds one.
fn number(form: &HashMap<String, String>, field: &str) -> Option<f64> {
    form.get(field)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite())
}

/// Fields that make one setting together (backoff, retention): all empty resets it, all whole
/// numbers set it, anything between is refused naming what is missing; absent leaves it alone.
fn group<const N: usize>(
    form: &HashMap<String, String>,
    fields: [&str; N],
) -> Result<Option<Option<[i64; N]>>, ApiError> {
    let mut values = [0i64; N];
    let mut given = 0;
    for (i, f) in fields.iter().enumerate() {
        if let Some(Some(v)) = patch_field(form, f)? {
            values[i] = v;
            given += 1;
        }
    }
    let present = fields.iter().any(|f| form.contains_key(*f));
    match given {
        _ if !present => Ok(None),
        0 => Ok(Some(None)),
        n if n == N => Ok(Some(Some(values))),
        _ => Err(ApiError::field(
            format!("/{}", fields.join(", /")),
            "give all of these, or none to use the server default",
        )),
    }
}

async fn queue_action(
    State(st): State<AppState>,
    s: Session,
    Path((name, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if !s.csrf_ok(&form) {
        return csrf_refused();
    }
    let back = format!("/ui/queues/{}", urlencode(&name));
    let path = axum::extract::Path(name.clone());
    match action.as_str() {
        "pause" => after(
            queues::pause(State(st), s.caller.clone(), path).await,
            &back,
            Done::Paused,
            0,
            &s,
        ),
        "resume" => after(
            queues::resume(State(st), s.caller.clone(), path).await,
            &back,
            Done::Resumed,
            0,
            &s,
        ),
        "config" => {
            let patch = (|| {
                Ok::<_, ApiError>(QueuePatch {
                    concurrency: patch_field(&form, "concurrency")?,
                    max_attempts: patch_field(&form, "max_attempts")?,
                    timeout_ms: patch_field(&form, "timeout_ms")?,
                    backoff: group(&form, ["backoff_initial_ms", "backoff_max_ms"])?.map(|g| {
                        g.map(|[initial_ms, max_ms]| BackoffBody {
                            initial_ms,
                            max_ms,
                            jitter: number(&form, "backoff_jitter")
                                .unwrap_or(keel_core::Backoff::default().jitter),
                        })
                    }),
                    retention: group(&form, ["retention_completed_ms", "retention_dead_ms"])?.map(
                        |g| {
                            g.map(|[completed_ms, dead_ms]| RetentionBody {
                                completed_ms,
                                dead_ms,
                            })
                        },
                    ),
                    rate_limit: match form.get("rate_per_second").map(|v| v.trim()) {
                        None => None,
                        Some("") => Some(None),
                        Some(_) => Some(Some(RateLimitBody {
                            per_second: number(&form, "rate_per_second").ok_or_else(|| {
                                ApiError::field("/rate_limit/per_second", "must be a number")
                            })?,
                            burst: patch_field(&form, "rate_burst")?.flatten(),
                        })),
                    },
                    // Push targets (URL, headers, signing secret) are set through the API.
                    target: None,
                })
            })();
            let answer = match patch {
                Ok(p) => {
                    queues::put(State(st), s.caller.clone(), path, crate::extract::Body(p)).await
                }
                Err(e) => Err(e),
            };
            after(answer, &back, Done::Saved, 0, &s)
        }
        "replay" | "purge" => bulk(st, s, name, &action, &form, &back).await,
        _ => error_page(
            StatusCode::NOT_FOUND,
            "no such queue action",
            Some(s.chrome()),
        ),
    }
}

/// Replay or purge a queue's dead letters, after a confirmation that names the count.
async fn bulk(
    st: AppState,
    s: Session,
    name: String,
    action: &str,
    form: &HashMap<String, String>,
    back: &str,
) -> Response {
    if let Err(e) = s.caller.require_queue(Need::ConfigureQueues, &name) {
        return api_error(e, &s);
    }
    let dead = match st.store.queue(&name, st.clock.now()).await {
        Ok(Some(q)) => q.counts.dead,
        Ok(None) => {
            return api_error(
                ApiError::NotFound(format!("no queue is named {name:?}")),
                &s,
            );
        }
        Err(e) => return api_error(e.into(), &s),
    };
    let expected = form.get("expected").and_then(|v| v.parse::<u64>().ok());
    let confirmed = form.get("confirm").is_some_and(|v| v == "yes");
    if !confirmed || expected != Some(dead) {
        let page = ConfirmPage {
            chrome: s.chrome(),
            queue: name,
            action: action.to_owned(),
            count: dead,
            changed: confirmed.then_some(expected.unwrap_or(0)),
        };
        return render(StatusCode::OK, &page);
    }
    if dead == 0 {
        return after(
            Ok(StatusCode::OK.into_response()),
            back,
            Done::Nothing,
            0,
            &s,
        );
    }
    let path = axum::extract::Path(name);
    let answer = if action == "replay" {
        let body = ReplayBody {
            state: Some("dead".into()),
            kind: None,
            limit: Some(dead as i64),
        };
        queues::replay(
            State(st),
            s.caller.clone(),
            path,
            crate::extract::Body(body),
        )
        .await
    } else {
        let body = PurgeBody {
            state: "dead".into(),
        };
        queues::purge(
            State(st),
            s.caller.clone(),
            path,
            crate::extract::Body(body),
        )
        .await
    };
    let done = if action == "replay" {
        Done::Replayed
    } else {
        Done::Purged
    };
    after(answer, back, done, dead, &s)
}

// A job.

/// The job `id` names, if the session's token may read it (as `GET /v1/jobs/{id}` decides).
async fn visible_job(st: &AppState, s: &Session, id: &str) -> Result<keel_core::Job, ApiError> {
    s.caller.require(Need::ReadJobs)?;
    let id = job_id(id)?;
    st.store
        .get_job(id)
        .await?
        .filter(|j| s.caller.sees(&j.queue))
        .ok_or_else(|| ApiError::NotFound(format!("no job has id {id}")))
}

async fn job(
    State(st): State<AppState>,
    s: Session,
    Path(id): Path<String>,
    Query(f): Query<Filters>,
) -> Response {
    let page = async {
        let job = visible_job(&st, &s, &id).await?;
        let events = st.store.job_events(job.id).await?.unwrap_or_default();
        Ok::<_, ApiError>(JobPage::new(s.chrome(), job, &events, &s, f.notice()))
    };
    show(page.await, &s)
}

/// A job's state and last change, polled by `ui.js` so an open job page follows the job.
async fn job_live(State(st): State<AppState>, s: Session, Path(id): Path<String>) -> Response {
    match visible_job(&st, &s, &id).await {
        Ok(job) => axum::Json(serde_json::json!({
            "state": job.state.as_str(),
            "updated_at": job.updated_at,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn job_action(
    State(st): State<AppState>,
    s: Session,
    Path((id, action)): Path<(String, String)>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> Response {
    if !s.csrf_ok(&form) {
        return csrf_refused();
    }
    let back = format!("/ui/jobs/{}", urlencode(&id));
    let path = axum::extract::Path(id);
    match action.as_str() {
        "cancel" => after(
            jobs::cancel(State(st), s.caller.clone(), path).await,
            &back,
            Done::Cancelled,
            0,
            &s,
        ),
        "retry" => after(
            jobs::retry(State(st), s.caller.clone(), path).await,
            &back,
            Done::Retried,
            0,
            &s,
        ),
        _ => error_page(
            StatusCode::NOT_FOUND,
            "no such job action",
            Some(s.chrome()),
        ),
    }
}
