//! `keel bench`: a load generator for a running keel (or a throw-away one with `--spawn`), over
//! real HTTP on loopback. Each scenario reports throughput and HdrHistogram latency percentiles,
//! and every throughput is also stated as a ratio to two rates measured in the same run, so
//! figures hold on a noisy machine: `floor`, the machine's plain HTTP request rate (a minimal
//! hyper server in a child process that answers every request with the same few bytes, what
//! DESIGN.md calls the HTTP floor), and `baseline`, the request rate of `GET /healthz` on the
//! keel under test (which carries keel's per-request work: its request span, log line and
//! metrics).
//!
//! Scenarios: `floor` (see above; on the machine running the bench), `baseline` (GET /healthz),
//! `enqueue` (one job per request), `batch` (POST
//! /v1/jobs/batch), `drain` (pull workers: lease N, ack N in one request, from a backlog queued
//! before they start), `steady` (each connection enqueues a batch of N, then leases N and acks
//! them: producers and workers at once, the queue near empty), `store-enqueue`, `store-batch`
//! and `store-drain` (the loads of `enqueue`, `batch` and `drain` given straight to a SQLite
//! store in the bench's own process, with no HTTP: each HTTP figure's ceiling, see
//! [`store`]), `latency` (enqueue at a
//! fixed rate; a long-polling worker measures enqueue → receive), `fsync` (the disk's own durable
//! write, the baseline of `latency`: see [`fsync`]), `push` (keel delivers to a fast
//! local target that answers 204: the queue is filled while paused, then resumed, and the time
//! until every job is completed is measured; throughput only, no per-request latency), `scale`
//! (with `--spawn` only: `--scale-jobs` jobs queued through batches, then the server's resident
//! memory, and how long a restart takes until it serves again with all of them; not in the
//! default list, as it writes a large store).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};

mod store;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Floor,
    Baseline,
    Enqueue,
    Batch,
    Drain,
    Steady,
    StoreEnqueue,
    StoreBatch,
    StoreDrain,
    Fsync,
    Latency,
    Push,
    Scale,
}

impl Scenario {
    /// Its name on the command line, in the table and in `--json` (`store-batch`).
    fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }
}

#[derive(clap::Args, Clone)]
#[command(
    after_help = "Examples:\n  keel bench --spawn                                  # every scenario against a throw-away server\n  keel bench --spawn --scenarios baseline,enqueue -c 64 --jobs 50000\n  keel bench --url http://127.0.0.1:8470 --scenarios drain --lease-size 100 --json"
)]
pub struct BenchArgs {
    /// Start a throw-away `keel serve` (release build recommended) on a temporary data dir.
    #[arg(long)]
    spawn: bool,
    /// Scenarios, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "floor,baseline,enqueue,batch,drain,steady,store-enqueue,store-batch,store-drain,fsync,latency,push"
    )]
    scenarios: Vec<Scenario>,
    /// Internal: serve the `floor` scenario's minimal HTTP server (the bench starts it as a child
    /// process) instead of running scenarios.
    #[arg(long, hide = true)]
    serve_floor: bool,
    /// Jobs (or requests, for floor and baseline) per scenario.
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Concurrent connections (workers for drain).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// Jobs per batch request.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Jobs per lease (and per ack) in the drain scenario.
    #[arg(long, default_value_t = 100)]
    lease_size: usize,
    /// Offered rate (jobs per second) of the latency scenario.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Upper bound on each scenario's duration, in seconds.
    #[arg(long, default_value_t = 60)]
    max_secs: u64,
    /// Jobs queued by the `scale` scenario.
    #[arg(long, default_value_t = 1_000_000)]
    scale_jobs: u64,
    /// Where the `fsync` scenario writes its file, and the `store-*` scenarios their store (in a
    /// scratch directory, removed afterwards): a directory on the server's disk. Default: the
    /// spawned server's data directory with `--spawn`, else the system's temporary directory.
    #[arg(long)]
    fsync_dir: Option<PathBuf>,
}

impl BenchArgs {
    /// Jobs per batch request, and the connections that send them (`batch`, `scale`,
    /// `store-batch`): the API's 1,000 at most, on up to 16 connections.
    fn batches(&self) -> (u64, usize) {
        (
            self.batch_size.clamp(1, 1_000) as u64,
            self.concurrency.min(16),
        )
    }

    /// Jobs per lease (and per ack), and the workers that lease them (`drain`, `steady`,
    /// `store-drain`): the API's 1,000 at most, up to 32 workers.
    fn workers(&self) -> (u64, usize) {
        (
            self.lease_size.clamp(1, 1_000) as u64,
            self.concurrency.min(32),
        )
    }
}

#[derive(Serialize)]
struct Report {
    scenario: Scenario,
    /// HTTP requests made (`fsync`: syncs made, both halves; `store-*`: calls to the store).
    requests: u64,
    /// Jobs moved (requests for baseline; `fsync`: the syncs made back to back).
    jobs: u64,
    secs: f64,
    jobs_per_sec: f64,
    /// `jobs_per_sec` over the baseline's requests per second, when a baseline ran (not for
    /// `fsync`, which makes no request, nor `latency`, whose rate is the one it offered).
    ratio_to_baseline: Option<f64>,
    /// `jobs_per_sec` over the `floor` scenario's requests per second, when it ran (the same
    /// scenarios as `ratio_to_baseline`).
    ratio_to_floor: Option<f64>,
    /// `latency` only: its p50 over the p50 of the `fsync` scenario run before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_to_fsync: Option<f64>,
    /// Latency in milliseconds of each request (of enqueue → receive for `latency`).
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
    /// `scale` only: what the server process held and how fast it came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    scale: Option<ScaleFigures>,
}

#[derive(Serialize)]
struct ScaleFigures {
    /// Jobs queued (all available) when measured.
    queued: u64,
    /// Resident memory with them queued, and the process's peak until then (MiB).
    rss_mib: f64,
    peak_rss_mib: f64,
    /// From starting the process again to "keel is serving." (index rebuilt, port bound).
    restart_secs: f64,
    /// Resident memory right after the restart (MiB).
    rss_after_restart_mib: f64,
}

/// Where requests go: a lean HTTP/1.1 client (hyper, keep-alive connections reused from a small
/// pool, bodies serialised once by the caller, answers not parsed unless asked), so the load
/// generator spends as little of the shared CPU as it can. Plain HTTP only.
#[derive(Clone)]
struct Target {
    /// `host:port` to connect to, and the `Host` header.
    authority: String,
    auth: Option<HeaderValue>,
    idle: Arc<std::sync::Mutex<Vec<SendRequest<Full<Bytes>>>>>,
}

impl Target {
    fn new(base: String, token: Option<&str>) -> anyhow::Result<Target> {
        let Some(rest) = base.strip_prefix("http://") else {
            bail!("keel bench speaks plain HTTP to a loopback or private listener; got {base}");
        };
        let authority = rest.split('/').next().unwrap_or(rest).to_owned();
        let auth = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .context("the token is not a valid header value")?;
        Ok(Target {
            authority,
            auth,
            idle: Arc::default(),
        })
    }

    /// The same client for a server that moved (a restart binds a new port).
    fn moved_to(&self, base: String) -> anyhow::Result<Target> {
        let mut moved = Target::new(base, None)?;
        moved.auth = self.auth.clone();
        Ok(moved)
    }

    /// Drops the pooled connections; the next requests open new ones.
    fn forget_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let idle = self.idle.lock().map_err(|e| e.to_string())?.pop();
            match idle {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One request; the answer's status and body. The connection goes back to the pool when the
    /// answer was read whole.
    async fn raw(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let mut conn = self.connection().await?;
        conn.ready().await.map_err(|e| e.to_string())?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(a) = &self.auth {
            req = req.header(hyper::header::AUTHORIZATION, a.clone());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let res = tokio::time::timeout(Duration::from_secs(90), conn.send_request(req))
            .await
            .map_err(|_| "no answer in 90 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        Ok((status, bytes))
    }

    /// Sends pre-serialised JSON; a non-2xx answer is an error carrying its status and body.
    async fn post_bytes(&self, path: &str, body: Bytes) -> Result<Bytes, String> {
        let (status, bytes) = self.raw(hyper::Method::POST, path, body).await?;
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)))
        }
    }

    async fn put(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.send(hyper::Method::PUT, path, body).await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.send(hyper::Method::POST, path, body).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.json(hyper::Method::GET, path, Bytes::new()).await
    }

    /// Sends JSON and parses the answer; a non-2xx answer is an error carrying its status and body.
    async fn send(&self, method: hyper::Method, path: &str, body: &Value) -> Result<Value, String> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| e.to_string())?);
        self.json(method, path, body).await
    }

    async fn json(&self, method: hyper::Method, path: &str, body: Bytes) -> Result<Value, String> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{status}: {v}"))
        }
    }
}

/// Serialises a request body once, for every request that sends it.
fn bytes_of(body: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

/// A server started for the run; killed (SIGTERM, then waited for) at the end.
struct Spawned {
    child: Child,
    dir: PathBuf,
}

impl Spawned {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Stops the server and starts it again on the same data dir; returns its new base URL and
    /// how long the new process took to serve.
    fn restart(&mut self) -> anyhow::Result<(String, Duration)> {
        self.stop();
        let started = Instant::now();
        let (child, addr) = start_server(&self.dir)?;
        self.child = child;
        Ok((format!("http://{addr}"), started.elapsed()))
    }

    /// (resident, peak resident) memory of the server process in MiB, from /proc.
    fn memory_mib(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("reading the server's /proc status")?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map(|kib| kib / 1024.0)
        };
        match (field("VmRSS:"), field("VmHWM:")) {
            (Some(rss), Some(peak)) => Ok((rss, peak)),
            _ => bail!("no VmRSS/VmHWM in /proc status"),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts this binary as a child with `args`, then whatever `configure` adds (more arguments
/// after `args`, environment, a piped stdin), reads its stdout until `address` finds the address it listens on in a line, and keeps
/// draining the rest so the pipe never fills; returns the child and that address.
fn start_child(
    what: &str,
    args: &[&str],
    configure: impl FnOnce(&mut Command),
    address: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<(Child, String)> {
    use std::io::{BufRead, BufReader};
    let exe = std::env::current_exe().context("finding the keel binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    configure(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} exited before it listened");
        };
        if let Some(addr) = address(&line) {
            break addr;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

/// Starts `keel serve` on `dir` and waits for "keel is serving."; returns it and its address.
fn start_server(dir: &std::path::Path) -> anyhow::Result<(Child, String)> {
    start_child(
        "the spawned keel serve",
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--allow-private-targets",
            "--data-dir",
        ],
        |cmd| {
            cmd.arg(dir).env("RUST_LOG", "warn,keel=info");
        },
        |line| {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            (v["message"] == "keel is serving.")
                .then(|| v["addr"].as_str().unwrap_or_default().to_owned())
        },
    )
}

fn spawn_server() -> anyhow::Result<(Spawned, String, String)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("keel-bench-{}-{nanos}", std::process::id()));
    let (child, addr) = start_server(&dir)?;
    let spawned = Spawned { child, dir };
    let token = std::fs::read_to_string(spawned.dir.join(keel_client::ADMIN_TOKEN_FILE))
        .context("reading the spawned server's admin token")?;
    let base = format!("http://{addr}");
    Ok((spawned, base, token.trim().to_owned()))
}

pub async fn run(
    args: BenchArgs,
    url: &str,
    token: Option<String>,
    json_out: bool,
) -> anyhow::Result<()> {
    if args.serve_floor {
        return serve_floor().await;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (mut server, base, token) = if args.spawn {
        let (s, base, token) = spawn_server()?;
        (Some(s), base, Some(token))
    } else {
        (None, url.trim_end_matches('/').to_owned(), token)
    };
    let mut target = Target::new(base, token.as_deref())?;
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut reports: Vec<Report> = Vec::new();
    let mut baseline_rate: Option<f64> = None;
    let mut floor_rate: Option<f64> = None;
    let mut fsync_p50: Option<f64> = None;
    let fsync_dir = args
        .fsync_dir
        .clone()
        .or_else(|| server.as_ref().map(|s| s.dir.clone()))
        .unwrap_or_else(std::env::temp_dir);
    // The store-* scenarios share one store, as the HTTP scenarios share the server's.
    let mut scratch = store::Scratch::new(&fsync_dir, &run_id);
    let ran: anyhow::Result<()> = async {
        for scenario in &args.scenarios {
            let queue = format!("bench.{run_id}.{}", scenario.name());
            if !json_out {
                eprintln!("{}…", scenario.name());
            }
            // Connections left idle by the last scenario may be closed by the server (its header
            // read timeout) just as this one picks them up; a POST on such a connection fails
            // without reaching the server and would count as an error of this scenario.
            target.forget_idle();
            let mut report = match scenario {
                Scenario::Floor => floor(&args).await?,
                Scenario::Baseline => baseline(&target, &args).await,
                Scenario::Enqueue => enqueue(&target, &args, &queue).await,
                Scenario::Batch => batch(&target, &args, &queue).await,
                Scenario::Drain => drain(&target, &args, &queue).await?,
                Scenario::Steady => steady(&target, &args, &queue).await,
                Scenario::StoreEnqueue | Scenario::StoreBatch => {
                    store::enqueue(*scenario, &args, &queue, scratch.store()?).await
                }
                Scenario::StoreDrain => store::drain(&args, &queue, scratch.store()?).await?,
                Scenario::Fsync => {
                    let (dir, a) = (fsync_dir.clone(), args.clone());
                    tokio::task::spawn_blocking(move || fsync(&dir, &a))
                        .await
                        .context("the fsync scenario's thread failed")??
                }
                Scenario::Latency => latency(&target, &args, &queue).await?,
                Scenario::Push => push(&target, &args, &queue, json_out).await?,
                Scenario::Scale => scale(&mut target, &args, &queue, server.as_mut()).await?,
            };
            if report.skipped.is_none() {
                match scenario {
                    Scenario::Baseline => baseline_rate = Some(report.jobs_per_sec),
                    Scenario::Floor => floor_rate = Some(report.jobs_per_sec),
                    _ => {}
                }
            }
            // The throughput of `latency` is the rate it offered, not what keel can take, and `fsync`
            // makes no request: neither has a ratio to the request rate.
            match scenario {
                Scenario::Fsync => fsync_p50 = Some(report.p50_ms),
                Scenario::Latency => {
                    report.ratio_to_fsync = fsync_p50
                        .filter(|f| *f > 0.0 && report.skipped.is_none())
                        .map(|f| report.p50_ms / f);
                }
                _ => {
                    let measured = report.skipped.is_none() && report.jobs_per_sec > 0.0;
                    let ratio = |rate: Option<f64>| {
                        rate.filter(|_| measured).map(|r| report.jobs_per_sec / r)
                    };
                    report.ratio_to_baseline = ratio(baseline_rate);
                    report.ratio_to_floor = ratio(floor_rate);
                }
            }
            reports.push(report);
        }
        Ok(())
    }
    .await;
    scratch.finish().await;
    ran?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    Ok(())
}

fn skipped(scenario: Scenario, why: &str) -> Report {
    Report {
        scenario,
        requests: 0,
        jobs: 0,
        secs: 0.0,
        jobs_per_sec: 0.0,
        ratio_to_baseline: None,
        ratio_to_floor: None,
        ratio_to_fsync: None,
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        errors: 0,
        skipped: Some(why.to_owned()),
        scale: None,
    }
}

/// Microseconds from 1 µs to 100 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 100_000_000, 3) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e}"),
    }
}

fn report(
    scenario: Scenario,
    requests: u64,
    jobs: u64,
    elapsed: Duration,
    h: &Histogram<u64>,
    errors: u64,
) -> Report {
    let secs = elapsed.as_secs_f64();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    Report {
        scenario,
        requests,
        jobs,
        secs,
        jobs_per_sec: if secs > 0.0 { jobs as f64 / secs } else { 0.0 },
        ratio_to_baseline: None,
        ratio_to_floor: None,
        ratio_to_fsync: None,
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1_000.0,
        errors,
        skipped: None,
        scale: None,
    }
}

fn progress(total: u64, json_out: bool) -> indicatif::ProgressBar {
    if json_out || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("  {bar:40} {pos}/{len} {per_sec} {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn payload(bytes: usize) -> Value {
    json!({ "data": "x".repeat(bytes.saturating_sub(12)) })
}

/// Runs `concurrency` loops that each claim `step` units of `total` and call `one` for them,
/// recording each call's latency; stops at `total` or `max_secs`.
async fn closed_loop<F, Fut>(
    args: &BenchArgs,
    total: u64,
    step: u64,
    concurrency: usize,
    one: F,
) -> (u64, u64, u64, Duration, Histogram<u64>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let claimed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let one = Arc::new(one);
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let bar = progress(total, false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (claimed, done, errors, requests, one, bar) = (
            claimed.clone(),
            done.clone(),
            errors.clone(),
            requests.clone(),
            one.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            while Instant::now() < deadline {
                let first = claimed.fetch_add(step, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let n = step.min(total - first);
                let t = Instant::now();
                let r = one(first).await;
                let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                requests.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(()) => {
                        done.fetch_add(n, Ordering::Relaxed);
                        bar.inc(n);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            h
        }));
    }
    let mut merged = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = merged.add(h);
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    (
        requests.load(Ordering::Relaxed),
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        elapsed,
        merged,
    )
}

/// `GET /healthz` at `concurrency` connections, `jobs` times.
async fn baseline(target: &Target, args: &BenchArgs) -> Report {
    let t = target.clone();
    let (req, done, errs, elapsed, h) =
        closed_loop(args, args.jobs, 1, args.concurrency, move |_| {
            let t = t.clone();
            async move {
                let (status, _) = t.raw(hyper::Method::GET, "/healthz", Bytes::new()).await?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            }
        })
        .await;
    report(Scenario::Baseline, req, done, elapsed, &h, errs)
}

/// The machine's plain HTTP request rate: the same load as `baseline`, through the same client,
/// against a minimal hyper server in a child process (so, like keel, it has its own process and
/// threads on the shared cores), which answers every request with the same 15 bytes.
async fn floor(args: &BenchArgs) -> anyhow::Result<Report> {
    let started = start_child(
        "the floor server",
        &["bench", "--serve-floor"],
        |cmd| {
            cmd.stdin(Stdio::piped());
        },
        |line| line.strip_prefix("floor listening on ").map(str::to_owned),
    );
    let Ok((mut child, addr)) = started else {
        return Ok(skipped(Scenario::Floor, "the floor server did not start"));
    };
    let mut report = baseline(&Target::new(format!("http://{addr}"), None)?, args).await;
    report.scenario = Scenario::Floor;
    // Closing its stdin ends it; the kill covers a child that stopped reading.
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    Ok(report)
}

/// The `floor` scenario's server (`keel bench --serve-floor`): HTTP/1.1 on an ephemeral loopback
/// port, printed on the first line of stdout; `200 {"status":"ok"}` to every request, with no
/// logging, routing or middleware. It exits when its stdin closes, so it never outlives the
/// bench that started it.
async fn serve_floor() -> anyhow::Result<()> {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "floor listening on {addr}")?;
        out.flush()?;
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let answer = service_fn(|_req| async {
                let mut res =
                    hyper::Response::new(Full::new(Bytes::from_static(br#"{"status":"ok"}"#)));
                res.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok::<_, std::convert::Infallible>(res)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

async fn enqueue(target: &Target, args: &BenchArgs, queue: &str) -> Report {
    let (t, body) = (
        target.clone(),
        bytes_of(&json!({"queue": queue, "kind": "bench", "payload": payload(args.payload_bytes)})),
    );
    let (req, done, errs, elapsed, h) =
        closed_loop(args, args.jobs, 1, args.concurrency, move |_| {
            let (t, body) = (t.clone(), body.clone());
            async move { t.post_bytes("/v1/jobs", body).await.map(|_| ()) }
        })
        .await;
    report(Scenario::Enqueue, req, done, elapsed, &h, errs)
}

fn batch_body(queue: &str, n: u64, payload_bytes: usize) -> Bytes {
    let job = json!({"queue": queue, "kind": "bench", "payload": payload(payload_bytes)});
    bytes_of(&json!({ "jobs": vec![job; n as usize] }))
}

async fn batch(target: &Target, args: &BenchArgs, queue: &str) -> Report {
    let (step, connections) = args.batches();
    let (t, body) = (target.clone(), batch_body(queue, step, args.payload_bytes));
    let (req, done, errs, elapsed, h) =
        closed_loop(args, args.jobs, step, connections, move |_| {
            let (t, body) = (t.clone(), body.clone());
            async move { t.post_bytes("/v1/jobs/batch", body).await.map(|_| ()) }
        })
        .await;
    report(Scenario::Batch, req, done, elapsed, &h, errs)
}

/// Fills the queue (untimed) through batches.
async fn fill(target: &Target, queue: &str, jobs: u64, payload_bytes: usize) -> anyhow::Result<()> {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1_000);
        target
            .post_bytes("/v1/jobs/batch", batch_body(queue, n, payload_bytes))
            .await
            .map_err(|e| anyhow::anyhow!("filling the queue: {e}"))?;
        left -= n;
    }
    Ok(())
}

/// What the drain reads of a lease answer: only each job's id and token, borrowed from the
/// answer (no `Value` tree per job; the load generator shares the cores with the server).
#[derive(serde::Deserialize)]
struct LeaseAnswer<'a> {
    #[serde(borrow)]
    jobs: Vec<LeasedJob<'a>>,
}

#[derive(serde::Deserialize)]
struct LeasedJob<'a> {
    id: &'a str,
    #[serde(borrow)]
    lease: LeaseToken<'a>,
}

#[derive(serde::Deserialize)]
struct LeaseToken<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct AckBody<'a> {
    items: Vec<AckItem<'a>>,
}

#[derive(Serialize)]
struct AckItem<'a> {
    id: &'a str,
    lease_token: &'a str,
    outcome: &'static str,
}

/// What the drain checks of an ack answer: every item's status (each job is skipped unread).
#[derive(serde::Deserialize)]
struct AckAnswer {
    items: Vec<AckStatus>,
}

#[derive(serde::Deserialize)]
struct AckStatus {
    status: u16,
}

/// One unit of drain work: a lease of up to `lease` jobs and one ack completing all of them.
/// An ack item that is not 200 is an error. Returns how many jobs were completed: 0 when the
/// lease found none (and no ack is sent).
async fn lease_and_ack(t: &Target, lease_body: Bytes) -> Result<u64, String> {
    let answer = t.post_bytes("/v1/lease", lease_body).await?;
    let leased: LeaseAnswer = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    if leased.jobs.is_empty() {
        return Ok(0);
    }
    let ack = AckBody {
        items: leased
            .jobs
            .iter()
            .map(|j| AckItem {
                id: j.id,
                lease_token: j.lease.token,
                outcome: "completed",
            })
            .collect(),
    };
    let ack = Bytes::from(serde_json::to_vec(&ack).map_err(|e| e.to_string())?);
    let answer = t.post_bytes("/v1/ack", ack).await?;
    let acked: AckAnswer = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    match acked.items.iter().find(|i| i.status != 200) {
        Some(i) => Err(format!("an ack item was answered {}", i.status)),
        None => Ok(acked.items.len() as u64),
    }
}

/// A drain's unit of work that completed nothing: the backlog ran out before `--jobs` were
/// drained, which is an error of the scenario (`drain`, `store-drain`).
fn drained(completed: u64) -> Result<(), String> {
    match completed {
        0 => Err("the queue ran dry".into()),
        _ => Ok(()),
    }
}

/// The body of a worker's lease of up to `lease` jobs of `queue` (`drain`, `steady`).
fn lease_body(queue: &str, lease: u64) -> Bytes {
    bytes_of(&json!({"queues": [queue], "max_jobs": lease, "lease_ms": 60_000}))
}

async fn drain(target: &Target, args: &BenchArgs, queue: &str) -> anyhow::Result<Report> {
    fill(target, queue, args.jobs, args.payload_bytes).await?;
    let (lease, workers) = args.workers();
    let t = target.clone();
    let lease_body = lease_body(queue, lease);
    // Each unit of work is one lease of up to `lease` jobs plus one ack of all of them.
    let (req, done, errs, elapsed, h) = closed_loop(args, args.jobs, lease, workers, move |_| {
        let (t, lease_body) = (t.clone(), lease_body.clone());
        async move { lease_and_ack(&t, lease_body).await.and_then(drained) }
    })
    .await;
    Ok(report(Scenario::Drain, req * 2, done, elapsed, &h, errs))
}

/// Producers and workers at once, the queue kept near empty: each unit is three requests, a
/// batch of `--lease-size` jobs enqueued, a lease of up to as many, and one ack completing them.
/// Throughput is the jobs completed per second. (Every lease follows its own unit's enqueue and
/// takes at most as many, so none finds the queue empty; one that did would complete nothing.)
async fn steady(target: &Target, args: &BenchArgs, queue: &str) -> Report {
    let (lease, workers) = args.workers();
    let t = target.clone();
    let batch = batch_body(queue, lease, args.payload_bytes);
    let lease_body = lease_body(queue, lease);
    let completed = Arc::new(AtomicU64::new(0));
    let counted = completed.clone();
    let (req, _, errs, elapsed, h) = closed_loop(args, args.jobs, lease, workers, move |_| {
        let (t, batch, lease_body) = (t.clone(), batch.clone(), lease_body.clone());
        let completed = counted.clone();
        async move {
            t.post_bytes("/v1/jobs/batch", batch).await?;
            let n = lease_and_ack(&t, lease_body).await?;
            completed.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }
    })
    .await;
    let done = completed.load(Ordering::Relaxed);
    report(Scenario::Steady, req * 3, done, elapsed, &h, errs)
}

/// Queues `--scale-jobs` jobs, then measures the server's memory and a restart (see the module
/// doc). The fill is reported as the scenario's throughput.
async fn scale(
    target: &mut Target,
    args: &BenchArgs,
    queue: &str,
    server: Option<&mut Spawned>,
) -> anyhow::Result<Report> {
    let Some(server) = server else {
        return Ok(skipped(
            Scenario::Scale,
            "needs --spawn (it restarts the server it measures)",
        ));
    };
    let (step, connections) = args.batches();
    let (t, body) = (target.clone(), batch_body(queue, step, args.payload_bytes));
    let fill_args = BenchArgs {
        max_secs: args.max_secs.max(3_600),
        ..args.clone()
    };
    let (req, done, errs, elapsed, h) =
        closed_loop(&fill_args, args.scale_jobs, step, connections, move |_| {
            let (t, body) = (t.clone(), body.clone());
            async move { t.post_bytes("/v1/jobs/batch", body).await.map(|_| ()) }
        })
        .await;
    let (rss, peak) = server.memory_mib()?;
    let (base, took) = server.restart()?;
    *target = target.moved_to(base)?;
    let (rss_after, _) = server.memory_mib()?;
    let q = target
        .get(&format!("/v1/queues/{queue}"))
        .await
        .map_err(|e| anyhow::anyhow!("reading the queue after the restart: {e}"))?;
    let available = q["counts"]["available"].as_u64().unwrap_or(0);
    if available != done {
        bail!(
            "after the restart the queue holds {available} available jobs, not the {done} queued"
        );
    }
    let mut r = report(Scenario::Scale, req, done, elapsed, &h, errs);
    r.scale = Some(ScaleFigures {
        queued: available,
        rss_mib: rss,
        peak_rss_mib: peak,
        restart_secs: took.as_secs_f64(),
        rss_after_restart_mib: rss_after,
    });
    Ok(r)
}

/// Push delivery to a fast local target (204, no body), `-c` deliveries in flight.
async fn push(
    target: &Target,
    args: &BenchArgs,
    queue: &str,
    json_out: bool,
) -> anyhow::Result<Report> {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the push target")?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let config = json!({"concurrency": args.concurrency.max(1),
                        "target": {"url": format!("http://{addr}/"), "timeout_ms": 10_000}});
    if let Err(e) = target.put(&format!("/v1/queues/{queue}"), &config).await {
        server.abort();
        return Ok(skipped(
            Scenario::Push,
            &format!(
                "the server refused a loopback target; start it with --allow-private-targets ({e})"
            ),
        ));
    }
    let pause = target
        .post(&format!("/v1/queues/{queue}/pause"), &json!({}))
        .await;
    pause.map_err(|e| anyhow::anyhow!("pausing the push queue: {e}"))?;
    fill(target, queue, args.jobs, args.payload_bytes).await?;
    let bar = progress(args.jobs, json_out);
    let started = Instant::now();
    let resume = target
        .post(&format!("/v1/queues/{queue}/resume"), &json!({}))
        .await;
    resume.map_err(|e| anyhow::anyhow!("resuming the push queue: {e}"))?;
    let deadline = started + Duration::from_secs(args.max_secs.max(1));
    let (completed, dead) = loop {
        let q = target
            .get(&format!("/v1/queues/{queue}"))
            .await
            .unwrap_or(Value::Null);
        let completed = q["counts"]["completed"].as_u64().unwrap_or(0);
        let dead = q["counts"]["dead"].as_u64().unwrap_or(0);
        bar.set_position(completed);
        if completed + dead >= args.jobs || Instant::now() >= deadline {
            break (completed, dead);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    server.abort();
    Ok(report(
        Scenario::Push,
        received.load(Ordering::Relaxed),
        completed,
        elapsed,
        &histogram(),
        dead,
    ))
}

/// Bytes each `fsync` sample writes before it syncs.
const FSYNC_WRITE: usize = 4096;
/// Samples of each half of the `fsync` scenario, at most.
const FSYNC_SAMPLES: u64 = 400;

/// The `fsync` scenario: the disk's own durable-write latency, the floor under every answer keel
/// gives (it syncs before it acknowledges), so `latency` can be stated as a ratio that holds on
/// another disk. Each sample writes 4 KiB into a file whose blocks are already allocated and
/// written (so the sync flushes data, not file-system metadata) and `fdatasync`s it.
///
/// Two halves: back to back, whose rate is the report's throughput (comparable with DESIGN.md's
/// "one fsync takes ~135 µs, ~7,300/s"); then one sample every `1/--rate` s, whose latencies are
/// the report's percentiles. The paced half is what a sync meets in the `latency` scenario, and
/// on some disks (this project's virtual machines among them) a sync after an idle gap takes
/// twice as long as one in a run. Both halves together stay within `--max-secs`.
fn fsync(dir: &std::path::Path, args: &BenchArgs) -> anyhow::Result<Report> {
    use std::os::unix::fs::FileExt;
    const SLOTS: u64 = 64;
    // Removed when dropped, also on an error.
    let temp = tempfile::Builder::new()
        .prefix("keel-bench-fsync-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let (file, path) = (temp.as_file(), temp.path());
    let block = vec![0x5a_u8; FSYNC_WRITE];
    let at = |i: u64| (i % SLOTS) * FSYNC_WRITE as u64;
    for i in 0..SLOTS {
        file.write_all_at(&block, at(i))?;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    let write_and_sync = |i: u64| -> anyhow::Result<Duration> {
        file.write_all_at(&block, at(i))?;
        let t = Instant::now();
        file.sync_data()
            .with_context(|| format!("syncing {}", path.display()))?;
        Ok(t.elapsed())
    };
    let deadline = Instant::now() + Duration::from_secs(args.max_secs.max(1));
    let samples = args.jobs.clamp(1, FSYNC_SAMPLES);
    let started = Instant::now();
    let mut in_a_run = 0;
    while in_a_run < samples && Instant::now() < deadline {
        write_and_sync(in_a_run)?;
        in_a_run += 1;
    }
    let run_took = started.elapsed();
    let rate = args.rate.max(1);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut h = histogram();
    let started = Instant::now();
    let mut paced = 0;
    while paced < samples {
        let slot = started + interval.saturating_mul(u32::try_from(paced).unwrap_or(u32::MAX));
        if slot >= deadline {
            break;
        }
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
        let _ = h.record(write_and_sync(paced)?.as_micros().max(1) as u64);
        paced += 1;
    }
    Ok(report(
        Scenario::Fsync,
        in_a_run + paced,
        in_a_run,
        run_took,
        &h,
        0,
    ))
}

/// Enqueues at `rate` jobs/s (open loop); a long-polling worker records enqueue → receive.
async fn latency(target: &Target, args: &BenchArgs, queue: &str) -> anyhow::Result<Report> {
    let total = args.jobs.min(args.rate.max(1) * args.max_secs.max(1));
    let origin = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let worker = {
        let (t, q, received) = (target.clone(), queue.to_owned(), received.clone());
        let deadline = origin + Duration::from_secs(args.max_secs + 5);
        tokio::spawn(async move {
            let mut h = histogram();
            while received.load(Ordering::Relaxed) < total && Instant::now() < deadline {
                let Ok(got) = t
                    .post("/v1/lease", &json!({"queues": [q], "max_jobs": 100, "wait_ms": 1_000, "lease_ms": 60_000}))
                    .await
                else {
                    continue;
                };
                let now = origin.elapsed().as_micros() as u64;
                let jobs = got["jobs"].as_array().cloned().unwrap_or_default();
                let mut items = Vec::with_capacity(jobs.len());
                for j in &jobs {
                    let sent = j["payload"]["sent_us"].as_u64().unwrap_or(now);
                    let _ = h.record(now.saturating_sub(sent).max(1));
                    items.push(json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "completed"}));
                }
                received.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                if !items.is_empty() {
                    let _ = t.post("/v1/ack", &json!({ "items": items })).await;
                }
            }
            h
        })
    };
    // Let the worker's first long poll start before the first job.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut errors = 0;
    let mut sends = Vec::new();
    let bar = progress(total, false);
    for i in 0..total {
        tokio::time::sleep_until((started + interval * i as u32).into()).await;
        let t = target.clone();
        let body = json!({"queue": queue, "kind": "bench", "payload": {"sent_us": origin.elapsed().as_micros() as u64}});
        sends.push(tokio::spawn(async move {
            t.post("/v1/jobs", &body).await.is_ok()
        }));
        bar.inc(1);
    }
    for s in sends {
        if !matches!(s.await, Ok(true)) {
            errors += 1;
        }
    }
    bar.finish_and_clear();
    let h = worker.await.unwrap_or_else(|_| histogram());
    let elapsed = started.elapsed();
    Ok(report(
        Scenario::Latency,
        total,
        received.load(Ordering::Relaxed),
        elapsed,
        &h,
        errors,
    ))
}

fn print_table(reports: &[Report]) {
    println!(
        "{:<13} {:>9} {:>9} {:>8} {:>12} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "SCENARIO",
        "REQUESTS",
        "JOBS",
        "SECS",
        "JOBS/S",
        "×FLOOR",
        "×BASE",
        "P50 MS",
        "P90 MS",
        "P99 MS",
        "MAX MS",
        "ERRORS"
    );
    for r in reports {
        let name = r.scenario.name();
        if let Some(why) = &r.skipped {
            println!("{name:<13} skipped: {why}");
            continue;
        }
        let ratio = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
        println!(
            "{name:<13} {:>9} {:>9} {:>8.2} {:>12.0} {:>7} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7}",
            r.requests,
            r.jobs,
            r.secs,
            r.jobs_per_sec,
            ratio(r.ratio_to_floor),
            ratio(r.ratio_to_baseline),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.errors
        );
        if r.scenario == Scenario::Fsync {
            println!(
                "{:<13} JOBS/S: 4 KiB writes synced back to back; percentiles: the same, one every 1/--rate s",
                ""
            );
        }
        if let Some(x) = r.ratio_to_fsync {
            println!("{:<13} p50 = {x:.1}× the disk's paced fsync p50", "");
        }
        if let Some(f) = &r.scale {
            println!(
                "{:<13} {} jobs queued: resident {:.0} MiB (peak {:.0} MiB); restart to serving {:.2} s, then resident {:.0} MiB",
                "", f.queued, f.rss_mib, f.peak_rss_mib, f.restart_secs, f.rss_after_restart_mib
            );
        }
    }
}
