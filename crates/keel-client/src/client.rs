//! `Client`: one typed method per API call, over one request path that retries what is safe to
//! retry.
//!
//! Retry rule: a request is retried only when the server certainly did not act on it
//! (connection refused, `429`, `503`), or when acting twice is harmless (reads; enqueues, which
//! always carry an idempotency key). `Retry-After` overrides the computed delay.

use std::time::{Duration, Instant};

use keel_core::{Backoff, Job, State, Time};
use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{Error, Problem};
use crate::types::{
    AckItem, AckResult, AuditPage, CreatedToken, EnqueueRequest, Enqueued, Event, Failure,
    JobFilter, JobPage, LeaseRequest, LeasedJob, NewToken, QueueInfo, QueuePatch, ScheduleInfo,
    ScheduleRequest, SchemaInfo, TargetInfo, TokenInfo,
};

pub const DEFAULT_URL: &str = "http://127.0.0.1:8470";

/// How transient failures are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// No retry starts after this long since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            backoff: Backoff {
                initial_ms: 100,
                max_ms: 5_000,
                jitter: 0.5,
            },
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }
}

pub struct ClientBuilder {
    url: String,
    token: Option<String>,
    admin_token_dir: Option<std::path::PathBuf>,
    ca_certs: Vec<Vec<u8>>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
}

/// The file `keel serve` writes its first admin token to, inside its data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

impl ClientBuilder {
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts the PEM certificate(s) in `pem` as well as the system's roots: for a server whose
    /// certificate is self-signed or from a private CA.
    pub fn ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certs.push(pem.into());
        self
    }

    /// Uses the admin token a local `keel serve` wrote to `<data_dir>/admin.token`. `build`
    /// reads it, and refuses when the URL is not loopback: a local admin secret must never be
    /// sent to another host.
    pub fn admin_token_from(mut self, data_dir: impl Into<std::path::PathBuf>) -> Self {
        self.admin_token_dir = Some(data_dir.into());
        self
    }

    /// Per request, excluding long-poll waits (added on top for `lease`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        // reqwest's rustls needs a process-wide crypto provider; keep one already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = Vec::new();
        for pem in &self.ca_certs {
            roots.extend(
                reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::Invalid(format!("the CA certificate is not PEM: {e}")))?,
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let base = self.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Invalid(format!(
                "the server URL must start with http:// or https://, got {base:?}"
            )));
        }
        let token = match (self.token, self.admin_token_dir) {
            (Some(t), _) => Some(t),
            (None, Some(dir)) => {
                if !is_loopback_url(&base) {
                    return Err(Error::Invalid(format!(
                        "refusing to send the local admin token to {base}, which is not a loopback address; pass a token"
                    )));
                }
                let path = dir.join(ADMIN_TOKEN_FILE);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Error::Invalid(format!(
                        "cannot read the admin token at {}: {e}",
                        path.display()
                    ))
                })?;
                Some(text.trim().to_owned())
            }
            (None, None) => None,
        };
        Ok(Client {
            http,
            base,
            token,
            timeout: self.timeout,
            retry: self.retry,
        })
    }
}

/// A keel API client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
}

/// Whether repeating a request could change the outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Unsafe,
}

impl Client {
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            admin_token_dir: None,
            ca_certs: Vec::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
    }

    /// A client for `url` with default settings.
    /// A client configured the way the `keel` CLI is: `KEEL_URL` (default [`DEFAULT_URL`]),
    /// `KEEL_TOKEN`, or else, for a loopback URL, the admin token of the local server in
    /// `KEEL_DATA_DIR` (default `./keel-data`) when that file exists.
    pub fn from_env() -> Result<Client, Error> {
        let url = std::env::var("KEEL_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let builder = Client::builder(url.clone());
        if let Ok(token) = std::env::var("KEEL_TOKEN") {
            return builder.token(token).build();
        }
        let dir = std::path::PathBuf::from(
            std::env::var("KEEL_DATA_DIR").unwrap_or_else(|_| "./keel-data".to_owned()),
        );
        if is_loopback_url(&url) && dir.join(ADMIN_TOKEN_FILE).exists() {
            builder.admin_token_from(dir).build()
        } else {
            builder.build()
        }
    }

    pub fn new(url: impl Into<String>) -> Result<Client, Error> {
        Client::builder(url).build()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        repeat: Repeat,
        extra_timeout: Duration,
    ) -> Result<(T, reqwest::header::HeaderMap), Error> {
        let url = format!("{}{}", self.base, path);
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Invalid(format!("cannot encode the request: {e}")))?;
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(self.timeout + extra_timeout);
            if let Some(b) = &body {
                req = req
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let can_retry =
                attempt < self.retry.max_attempts && started.elapsed() < self.retry.max_elapsed;
            let wait = match req.send().await {
                Ok(res)
                    if matches!(
                        res.status(),
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) && can_retry =>
                {
                    retry_after(res.headers()).unwrap_or_else(|| self.backoff(attempt))
                }
                Ok(res) => return decode(res).await,
                Err(e) if can_retry && (e.is_connect() || repeat == Repeat::Safe) => {
                    tracing::debug!(message = "Request failed; retrying.", %url, error = %e, attempt);
                    self.backoff(attempt)
                }
                Err(source) => return Err(Error::Transport { url, source }),
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let sample = (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
        Duration::from_millis(self.retry.backoff.delay_ms(attempt, sample).max(0) as u64)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        Ok(self
            .request(Method::GET, path, None::<&()>, Repeat::Safe, Duration::ZERO)
            .await?
            .0)
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        repeat: Repeat,
    ) -> Result<T, Error> {
        Ok(self
            .request(Method::POST, path, Some(body), repeat, Duration::ZERO)
            .await?
            .0)
    }

    /// Enqueues one job. Without an idempotency key the client adds one, so a retry after a
    /// lost response returns the same job instead of creating another.
    pub async fn enqueue(&self, mut req: EnqueueRequest) -> Result<Enqueued, Error> {
        req.idempotency_key.get_or_insert_with(generated_key);
        let (job, headers) = self
            .request::<Job>(
                Method::POST,
                "/v1/jobs",
                Some(&req),
                Repeat::Safe,
                Duration::ZERO,
            )
            .await?;
        let replayed = headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        Ok(Enqueued { job, replayed })
    }

    /// Enqueues up to 1,000 jobs in one request: all or none. Items get keys as in `enqueue`.
    pub async fn enqueue_batch(&self, mut jobs: Vec<EnqueueRequest>) -> Result<Vec<Job>, Error> {
        for j in &mut jobs {
            j.idempotency_key.get_or_insert_with(generated_key);
        }
        #[derive(serde::Deserialize)]
        struct Out {
            jobs: Vec<Job>,
        }
        let out: Out = self
            .post("/v1/jobs/batch", &json!({ "jobs": jobs }), Repeat::Safe)
            .await?;
        Ok(out.jobs)
    }

    pub async fn get_job(&self, id: Uuid) -> Result<Job, Error> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// One page of jobs, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<JobPage, Error> {
        let mut query: Vec<(&str, String)> = vec![];
        let pairs = [
            ("queue", &filter.queue),
            ("kind", &filter.kind),
            ("tag", &filter.tag),
            ("cursor", &filter.cursor),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                query.push((k, v.clone()));
            }
        }
        if let Some(s) = filter.state {
            query.push(("state", s.as_str().to_owned()));
        }
        if let Some(l) = filter.limit {
            query.push(("limit", l.to_string()));
        }
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let path = if qs.is_empty() {
            "/v1/jobs".to_owned()
        } else {
            format!("/v1/jobs?{}", qs.join("&"))
        };
        self.get(&path).await
    }

    /// Every job matching `filter`, page by page: call `next` until it returns `None`.
    pub fn jobs(&self, filter: JobFilter) -> JobPager {
        JobPager {
            client: self.clone(),
            filter,
            buffer: Vec::new(),
            done: false,
        }
    }

    pub async fn job_events(&self, id: Uuid) -> Result<Vec<Event>, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            events: Vec<Event>,
        }
        Ok(self
            .get::<Out>(&format!("/v1/jobs/{id}/events"))
            .await?
            .events)
    }

    pub async fn cancel(&self, id: Uuid) -> Result<Job, Error> {
        self.post(&format!("/v1/jobs/{id}/cancel"), &json!({}), Repeat::Unsafe)
            .await
    }

    pub async fn retry(&self, id: Uuid) -> Result<Job, Error> {
        self.post(&format!("/v1/jobs/{id}/retry"), &json!({}), Repeat::Unsafe)
            .await
    }

    /// Leases jobs, waiting up to `req.wait_ms` for work.
    pub async fn lease(&self, req: &LeaseRequest) -> Result<Vec<LeasedJob>, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            jobs: Vec<LeasedJob>,
        }
        let wait = Duration::from_millis(req.wait_ms);
        let (out, _): (Out, _) = self
            .request(Method::POST, "/v1/lease", Some(req), Repeat::Unsafe, wait)
            .await?;
        Ok(out.jobs)
    }

    pub async fn heartbeat(
        &self,
        id: Uuid,
        token: &str,
        lease_ms: Option<u64>,
    ) -> Result<Time, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            expires_at: Time,
        }
        let body = json!({ "lease_token": token, "lease_ms": lease_ms });
        Ok(self
            .post::<Out>(&format!("/v1/jobs/{id}/heartbeat"), &body, Repeat::Safe)
            .await?
            .expires_at)
    }

    pub async fn complete(
        &self,
        id: Uuid,
        token: &str,
        result: Option<Value>,
    ) -> Result<Job, Error> {
        let body = json!({ "lease_token": token, "result": result });
        self.post(&format!("/v1/jobs/{id}/complete"), &body, Repeat::Unsafe)
            .await
    }

    pub async fn fail(
        &self,
        id: Uuid,
        token: &str,
        failure: Failure,
        retry_in: Option<Duration>,
    ) -> Result<Job, Error> {
        let body = json!({ "lease_token": token, "error": failure, "retry_in_ms": retry_in.map(|d| d.as_millis() as u64) });
        self.post(&format!("/v1/jobs/{id}/fail"), &body, Repeat::Unsafe)
            .await
    }

    /// Records many outcomes in one request; each item succeeds or fails on its own.
    pub async fn ack(&self, items: &[AckItem]) -> Result<Vec<AckResult>, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            items: Vec<AckResult>,
        }
        Ok(self
            .post::<Out>("/v1/ack", &json!({ "items": items }), Repeat::Unsafe)
            .await?
            .items)
    }

    pub async fn queues(&self) -> Result<Vec<QueueInfo>, Error> {
        self.get("/v1/queues").await
    }

    pub async fn queue(&self, name: &str) -> Result<QueueInfo, Error> {
        self.get(&format!("/v1/queues/{}", encode(name))).await
    }

    pub async fn configure_queue(
        &self,
        name: &str,
        patch: &QueuePatch,
    ) -> Result<QueueInfo, Error> {
        let path = format!("/v1/queues/{}", encode(name));
        Ok(self
            .request(
                Method::PUT,
                &path,
                Some(patch),
                Repeat::Safe,
                Duration::ZERO,
            )
            .await?
            .0)
    }

    pub async fn pause(&self, name: &str) -> Result<QueueInfo, Error> {
        self.post(
            &format!("/v1/queues/{}/pause", encode(name)),
            &json!({}),
            Repeat::Safe,
        )
        .await
    }

    pub async fn resume(&self, name: &str) -> Result<QueueInfo, Error> {
        self.post(
            &format!("/v1/queues/{}/resume", encode(name)),
            &json!({}),
            Repeat::Safe,
        )
        .await
    }

    /// Dead (or cancelled) jobs of a queue back to available; returns how many.
    pub async fn replay(
        &self,
        name: &str,
        state: State,
        kind: Option<&str>,
        limit: Option<u32>,
    ) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            replayed: u64,
        }
        let body = json!({ "state": state.as_str(), "kind": kind, "limit": limit });
        Ok(self
            .post::<Out>(
                &format!("/v1/queues/{}/replay", encode(name)),
                &body,
                Repeat::Unsafe,
            )
            .await?
            .replayed)
    }

    /// Deletes a queue's jobs in `state`; returns how many.
    pub async fn purge(&self, name: &str, state: State) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Out {
            purged: u64,
        }
        let body = json!({ "state": state.as_str() });
        Ok(self
            .post::<Out>(
                &format!("/v1/queues/{}/purge", encode(name)),
                &body,
                Repeat::Unsafe,
            )
            .await?
            .purged)
    }

    /// `GET /readyz`: whether the server can write to storage.
    /// Creates an API token (admin only). The answer holds the secret: it is shown only here.
    pub async fn create_token(&self, req: &NewToken) -> Result<CreatedToken, Error> {
        self.post("/v1/tokens", req, Repeat::Unsafe).await
    }

    /// Every token (admin only); never their secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        self.get("/v1/tokens").await
    }

    /// Revokes a token at once (admin only).
    pub async fn delete_token(&self, id: Uuid) -> Result<(), Error> {
        self.request::<()>(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None::<&()>,
            Repeat::Safe,
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    /// Sets (creates or replaces) the payload schema of `kind` (admin only). An invalid schema
    /// is a `422` problem with pointers into it.
    pub async fn put_schema(&self, kind: &str, schema: &Value) -> Result<SchemaInfo, Error> {
        let body = json!({ "schema": schema });
        Ok(self
            .request(
                Method::PUT,
                &format!("/v1/schemas/{}", encode(kind)),
                Some(&body),
                Repeat::Safe,
                Duration::ZERO,
            )
            .await?
            .0)
    }

    pub async fn schema(&self, kind: &str) -> Result<SchemaInfo, Error> {
        self.get(&format!("/v1/schemas/{}", encode(kind))).await
    }

    pub async fn schemas(&self) -> Result<Vec<SchemaInfo>, Error> {
        self.get("/v1/schemas").await
    }

    pub async fn delete_schema(&self, kind: &str) -> Result<(), Error> {
        self.request::<()>(
            Method::DELETE,
            &format!("/v1/schemas/{}", encode(kind)),
            None::<&()>,
            Repeat::Safe,
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    /// The server's metrics page (`GET /metrics`, Prometheus text format; docs/operations.md
    /// lists the series). One attempt, no retries: a monitoring read should not wait.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        let url = format!("{}/metrics", self.base);
        let res = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|source| Error::Transport {
                url: url.clone(),
                source,
            })?;
        let status = res.status();
        if !status.is_success() {
            decode::<Value>(res).await?;
            return Err(Error::Decode {
                status: status.as_u16(),
                message: "GET /metrics failed".into(),
            });
        }
        res.text().await.map_err(|e| Error::Decode {
            status: status.as_u16(),
            message: e.to_string(),
        })
    }

    /// Push origins with their circuit breakers (this server's view).
    pub async fn targets(&self) -> Result<Vec<TargetInfo>, Error> {
        self.get("/v1/targets").await
    }

    /// Creates or replaces the schedule `name` (admin only). Replacing keeps its clock: no tick
    /// it already fired fires again.
    pub async fn put_schedule(
        &self,
        name: &str,
        req: &ScheduleRequest,
    ) -> Result<ScheduleInfo, Error> {
        Ok(self
            .request(
                Method::PUT,
                &format!("/v1/schedules/{}", encode(name)),
                Some(req),
                Repeat::Safe,
                Duration::ZERO,
            )
            .await?
            .0)
    }

    pub async fn schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        self.get(&format!("/v1/schedules/{}", encode(name))).await
    }

    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>, Error> {
        self.get("/v1/schedules").await
    }

    /// Deletes a schedule; the jobs it enqueued stay.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), Error> {
        self.request::<()>(
            Method::DELETE,
            &format!("/v1/schedules/{}", encode(name)),
            None::<&()>,
            Repeat::Safe,
            Duration::ZERO,
        )
        .await
        .map(|_| ())
    }

    pub async fn pause_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        self.post(
            &format!("/v1/schedules/{}/pause", encode(name)),
            &json!({}),
            Repeat::Safe,
        )
        .await
    }

    /// Resumes at the next tick from now; ticks missed while paused do not run.
    pub async fn resume_schedule(&self, name: &str) -> Result<ScheduleInfo, Error> {
        self.post(
            &format!("/v1/schedules/{}/resume", encode(name)),
            &json!({}),
            Repeat::Safe,
        )
        .await
    }

    /// One page of the audit log, newest first; pass the previous page's `next_cursor`.
    pub async fn audit(&self, limit: u32, cursor: Option<&str>) -> Result<AuditPage, Error> {
        let mut path = format!("/v1/audit?limit={limit}");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", encode(c)));
        }
        self.get(&path).await
    }

    pub async fn ready(&self) -> Result<(), Error> {
        self.get::<Value>("/readyz").await.map(|_| ())
    }
}

/// Pages through `GET /v1/jobs`.
pub struct JobPager {
    client: Client,
    filter: JobFilter,
    buffer: Vec<Job>,
    done: bool,
}

impl JobPager {
    /// The next job, fetching the next page when needed; `None` after the last.
    pub async fn next(&mut self) -> Option<Result<Job, Error>> {
        if self.buffer.is_empty() && !self.done {
            match self.client.list_jobs(&self.filter).await {
                Ok(page) => {
                    self.done = page.next_cursor.is_none();
                    self.filter.cursor = page.next_cursor;
                    self.buffer = page.jobs;
                    self.buffer.reverse();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.buffer.pop().map(Ok)
    }
}

fn generated_key() -> String {
    format!("keel-client:{}", Uuid::new_v4().simple())
}

/// Percent-encodes a query value or path segment (names are `[A-Za-z0-9._:-]`, but input may not be).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Retry-After` in seconds or as an HTTP date, capped at a minute.
fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = jiff_http_date(text)?;
            let now = std::time::SystemTime::now();
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(Duration::from_secs(60)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn jiff_http_date(text: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| m == month)? + 1;
    let iso = format!("{year}-{month:02}-{day:0>2}T{time}Z");
    let t = Time::parse_rfc3339(&iso).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_millis(t.as_millis().max(0) as u64))
}

async fn decode<T: DeserializeOwned>(
    res: reqwest::Response,
) -> Result<(T, header::HeaderMap), Error> {
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.map_err(|e| Error::Decode {
        status: status.as_u16(),
        message: e.to_string(),
    })?;
    if status.is_success() {
        // `204 No Content` decodes as JSON null, so `T = ()` works for it.
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        let value = serde_json::from_slice(body).map_err(|e| Error::Decode {
            status: status.as_u16(),
            message: format!("{e}"),
        })?;
        return Ok((value, headers));
    }
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(p) => Err(Error::Problem(Box::new(p))),
        Err(_) => Err(Error::Decode {
            status: status.as_u16(),
            message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&h),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn encoding_keeps_names_and_escapes_the_rest() {
        assert_eq!(encode("tenant:7.a_b-c"), "tenant:7.a_b-c");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}

/// Whether `url`'s host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod loopback_tests {
    use super::is_loopback_url;

    #[test]
    fn only_loopback_hosts_count() {
        for yes in [
            "http://127.0.0.1:8470",
            "http://localhost",
            "https://[::1]:1/x",
            "http://127.9.9.9",
        ] {
            assert!(is_loopback_url(yes), "{yes}");
        }
        for no in [
            "http://10.0.0.1:8470",
            "http://example.com",
            "http://127.0.0.1.evil.com",
            "http://localhost.evil.com",
            "http://user@evil.com",
            "http://evil.com/127.0.0.1",
        ] {
            assert!(!is_loopback_url(no), "{no}");
        }
    }
}
