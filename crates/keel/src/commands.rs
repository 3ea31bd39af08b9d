//! The client subcommands: each turns its arguments into `keel_client` calls and prints the
//! answer as a table (or JSON with `--json`). Errors go to `render::report`.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use keel_client::{
    Client, EnqueueRequest, Error, JobFilter, QueuePatch, ScheduleInfo, ScheduleRequest, State,
    Time,
};
use serde::Serialize;
use serde_json::Value;

use crate::render::{self, JOB_HEADERS, Style, exit, job_row, relative};

pub struct Ctx {
    pub client: Client,
    pub json: bool,
    pub style: Style,
}

impl Ctx {
    pub(crate) fn print_json(&self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("keel: cannot encode the answer: {e}"),
        }
    }
}

pub type Outcome = Result<u8, Error>;

pub fn parse_state(text: &str) -> Result<State, String> {
    State::parse(text).ok_or_else(|| {
        format!(
            "{text:?} is not a state (scheduled, available, running, completed, dead, cancelled)"
        )
    })
}

pub fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))
}

pub fn parse_id(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text).map_err(|_| format!("{text:?} is not a job id"))
}

#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// Queue name (with --stdin: for lines that have none).
    pub queue: Option<String>,
    /// Job kind (with --stdin: for lines that have none).
    pub kind: Option<String>,
    /// JSON payload (default `{}`).
    #[arg(value_parser = parse_json)]
    pub payload: Option<Value>,
    /// Read enqueue bodies as JSON lines from stdin and send them in batches of 1,000.
    #[arg(long)]
    pub stdin: bool,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    #[arg(long, conflicts_with = "run_at")]
    pub delay_ms: Option<u64>,
    /// RFC 3339 time, e.g. 2026-11-23T06:00:00Z.
    #[arg(long, value_parser = Time::parse_rfc3339)]
    pub run_at: Option<Time>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

pub async fn enqueue(ctx: &Ctx, a: EnqueueArgs) -> Outcome {
    if a.stdin {
        return enqueue_lines(ctx, a).await;
    }
    let (Some(queue), Some(kind)) = (a.queue, a.kind) else {
        eprintln!("keel: give QUEUE and KIND (or --stdin to read JSON lines)");
        return Ok(exit::USAGE);
    };
    let mut req = EnqueueRequest::new(
        queue,
        kind,
        a.payload.unwrap_or(Value::Object(Default::default())),
    );
    req.priority = a.priority;
    req.delay_ms = a.delay_ms;
    req.run_at = a.run_at;
    req.max_attempts = a.max_attempts;
    req.idempotency_key = a.idempotency_key;
    req.tags = a.tags;
    let done = ctx.client.enqueue(req).await?;
    if ctx.json {
        ctx.print_json(&done.job);
    } else {
        let verb = if done.replayed {
            "already enqueued (idempotent replay)"
        } else {
            "enqueued"
        };
        println!(
            "{verb} {} ({}, {})",
            done.job.id,
            done.job.queue,
            ctx.style.state(done.job.state)
        );
    }
    Ok(exit::OK)
}

/// JSON lines on stdin, each an enqueue body; `QUEUE`/`KIND` fill lines that lack them.
/// Sent through the batch API, 1,000 per request (each batch all-or-nothing).
async fn enqueue_lines(ctx: &Ctx, a: EnqueueArgs) -> Outcome {
    let mut jobs = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| Error::Invalid(format!("reading stdin: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut req: EnqueueRequest = serde_json::from_str(&line)
            .map_err(|e| Error::Invalid(format!("line {}: {e}", n + 1)))?;
        if req.queue.is_empty() {
            req.queue = a.queue.clone().unwrap_or_default();
        }
        if req.kind.is_empty() {
            req.kind = a.kind.clone().unwrap_or_default();
        }
        jobs.push((n + 1, req));
    }
    let bar = crate::render::progress_bar(Some(jobs.len() as u64), "jobs");
    let mut created = Vec::new();
    for chunk in jobs.chunks(1_000) {
        let reqs: Vec<EnqueueRequest> = chunk.iter().map(|(_, r)| r.clone()).collect();
        match ctx.client.enqueue_batch(reqs).await {
            Ok(out) => created.extend(out),
            Err(Error::Problem(mut p)) => {
                bar.abandon();
                // Point at input lines rather than batch positions.
                for f in &mut p.errors {
                    if let Some(rest) = f.pointer.strip_prefix("/jobs/") {
                        let (idx, field) = rest.split_once('/').unwrap_or((rest, ""));
                        if let Some((line, _)) =
                            idx.parse::<usize>().ok().and_then(|i| chunk.get(i))
                        {
                            f.pointer = format!("line {line}: /{field}");
                        }
                        p.detail = format!("{} (line numbers of stdin)", p.detail);
                    }
                }
                eprintln!(
                    "keel: {} jobs were enqueued before this batch failed",
                    created.len()
                );
                return Err(Error::Problem(p));
            }
            Err(e) => {
                bar.abandon();
                eprintln!(
                    "keel: {} jobs were enqueued before this batch failed",
                    created.len()
                );
                return Err(e);
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if ctx.json {
        ctx.print_json(&created);
    } else {
        println!("enqueued {} jobs", created.len());
    }
    Ok(exit::OK)
}

pub async fn jobs_ls(ctx: &Ctx, filter: JobFilter, all: bool) -> Outcome {
    let mut jobs = Vec::new();
    if all {
        let mut pager = ctx.client.jobs(JobFilter {
            limit: Some(500),
            ..filter
        });
        while let Some(job) = pager.next().await {
            jobs.push(job?);
        }
    } else {
        jobs = ctx.client.list_jobs(&filter).await?.jobs;
    }
    if ctx.json {
        ctx.print_json(&jobs);
        return Ok(exit::OK);
    }
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(exit::OK);
    }
    let now = render::now();
    let rows: Vec<Vec<String>> = jobs.iter().map(|j| job_row(&ctx.style, j, now)).collect();
    render::table(&ctx.style, &JOB_HEADERS, &rows);
    Ok(exit::OK)
}

pub async fn jobs_show(ctx: &Ctx, id: uuid::Uuid) -> Outcome {
    let job = ctx.client.get_job(id).await?;
    if ctx.json {
        ctx.print_json(&job);
        return Ok(exit::OK);
    }
    let now = render::now();
    let s = &ctx.style;
    let when = |t: Time| format!("{t} ({})", relative(t, now));
    println!("{} {}", s.bold("job"), job.id);
    println!("  queue       {}", job.queue);
    println!("  kind        {}", job.kind);
    println!("  state       {}", s.state(job.state));
    println!("  attempt     {}/{}", job.attempt, job.max_attempts);
    println!("  priority    {}", job.priority);
    println!("  run at      {}", when(job.run_at));
    println!("  created     {}", when(job.created_at));
    println!("  updated     {}", when(job.updated_at));
    if let Some(t) = job.finished_at {
        println!("  finished    {}", when(t));
    }
    if let Some(k) = &job.idempotency_key {
        println!("  key         {k}");
    }
    if !job.tags.is_empty() {
        println!("  tags        {}", job.tags.join(", "));
    }
    if let Some(e) = &job.last_error {
        let kind = e
            .kind
            .as_deref()
            .map(|k| format!("{k}: "))
            .unwrap_or_default();
        println!(
            "  last error  {kind}{} (attempt {}, {})",
            e.message,
            e.attempt,
            relative(e.at, now)
        );
    }
    println!("{}", s.bold("payload"));
    println!("{}", pretty(job.payload.get()));
    if let Some(r) = &job.result {
        println!("{}", s.bold("result"));
        println!("{}", pretty(r.get()));
    }
    Ok(exit::OK)
}

fn pretty(raw: &str) -> String {
    serde_json::from_str::<Value>(raw)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| raw.to_owned())
}

pub async fn jobs_events(ctx: &Ctx, id: uuid::Uuid) -> Outcome {
    let events = ctx.client.job_events(id).await?;
    if ctx.json {
        ctx.print_json(&events);
        return Ok(exit::OK);
    }
    let now = render::now();
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let detail = if e.kind == "enqueued" {
                String::new()
            } else {
                render::truncate(&e.data.to_string(), 80)
            };
            vec![
                e.seq.to_string(),
                relative(e.at, now),
                e.kind.clone(),
                detail,
            ]
        })
        .collect();
    render::table(&ctx.style, &["SEQ", "WHEN", "EVENT", "DETAIL"], &rows);
    Ok(exit::OK)
}

pub async fn jobs_action(ctx: &Ctx, id: uuid::Uuid, cancel: bool) -> Outcome {
    let job = if cancel {
        ctx.client.cancel(id).await?
    } else {
        ctx.client.retry(id).await?
    };
    if ctx.json {
        ctx.print_json(&job);
    } else {
        println!(
            "{} {} ({})",
            if cancel { "cancelled" } else { "retried" },
            job.id,
            ctx.style.state(job.state)
        );
    }
    Ok(exit::OK)
}

pub async fn queues_ls(ctx: &Ctx) -> Outcome {
    let queues = ctx.client.queues().await?;
    if ctx.json {
        ctx.print_json(&queues);
        return Ok(exit::OK);
    }
    if queues.is_empty() {
        println!("no queues");
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let c = q.counts;
            vec![
                q.name.clone(),
                if q.paused {
                    ctx.style
                        .state(State::Scheduled)
                        .replace("scheduled", "paused")
                } else {
                    "active".into()
                },
                c.available.to_string(),
                c.scheduled.to_string(),
                c.running.to_string(),
                c.completed.to_string(),
                if c.dead > 0 {
                    ctx.style
                        .state(State::Dead)
                        .replace("dead", &c.dead.to_string())
                } else {
                    "0".into()
                },
                q.oldest_available_age_ms
                    .map(age)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    render::table(
        &ctx.style,
        &[
            "QUEUE",
            "STATUS",
            "AVAILABLE",
            "SCHEDULED",
            "RUNNING",
            "COMPLETED",
            "DEAD",
            "OLDEST",
        ],
        &rows,
    );
    Ok(exit::OK)
}

pub(crate) fn age(ms: i64) -> String {
    relative(Time::from_millis(0), Time::from_millis(ms))
        .trim_end_matches(" ago")
        .to_owned()
}

pub async fn queues_show(ctx: &Ctx, name: &str) -> Outcome {
    let q = ctx.client.queue(name).await?;
    print_queue(ctx, &q);
    Ok(exit::OK)
}

fn print_queue(ctx: &Ctx, q: &keel_client::QueueInfo) {
    if ctx.json {
        ctx.print_json(q);
        return;
    }
    let s = &ctx.style;
    let c = &q.config;
    println!(
        "{} {}{}",
        s.bold("queue"),
        q.name,
        if q.paused { " (paused)" } else { "" }
    );
    println!(
        "  concurrency   {}",
        c.concurrency
            .map_or("unlimited".to_owned(), |n| n.to_string())
    );
    println!("  max attempts  {}", c.max_attempts);
    println!("  timeout       {} ms", c.timeout_ms);
    println!(
        "  backoff       {} ms .. {} ms, jitter {}",
        c.backoff.initial_ms, c.backoff.max_ms, c.backoff.jitter
    );
    println!(
        "  retention     completed {} ms, dead {} ms",
        c.retention.completed_ms, c.retention.dead_ms
    );
    if let Some(r) = &c.rate_limit {
        println!("  rate limit    {} jobs/s, burst {}", r.per_second, r.burst);
    }
    if let Some(t) = &c.target {
        println!(
            "  push target   {} (timeout {} ms{})",
            t.url,
            t.timeout_ms,
            if t.signing_secret.is_some() {
                ", signed"
            } else {
                ""
            }
        );
    }
    let n = q.counts;
    println!(
        "  jobs          {} available, {} scheduled, {} running, {} completed, {} dead, {} cancelled",
        n.available, n.scheduled, n.running, n.completed, n.dead, n.cancelled
    );
    if let Some(ms) = q.oldest_available_age_ms {
        println!("  oldest        {} waiting", age(ms));
    }
}

pub async fn queues_set(ctx: &Ctx, name: &str, patch: QueuePatch) -> Outcome {
    let q = ctx.client.configure_queue(name, &patch).await?;
    print_queue(ctx, &q);
    Ok(exit::OK)
}

pub async fn queues_pause(ctx: &Ctx, name: &str, pause: bool) -> Outcome {
    let q = if pause {
        ctx.client.pause(name).await?
    } else {
        ctx.client.resume(name).await?
    };
    if ctx.json {
        ctx.print_json(&q);
    } else {
        println!("{} {}", if pause { "paused" } else { "resumed" }, q.name);
    }
    Ok(exit::OK)
}

pub async fn queues_replay(
    ctx: &Ctx,
    name: &str,
    state: State,
    kind: Option<&str>,
    limit: Option<u32>,
) -> Outcome {
    let n = ctx.client.replay(name, state, kind, limit).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "replayed": n }));
    } else {
        println!("replayed {n} {} jobs of {name}", state.as_str());
    }
    Ok(exit::OK)
}

pub async fn queues_purge(ctx: &Ctx, name: &str, state: State, yes: bool) -> Outcome {
    if !yes {
        let q = ctx.client.queue(name).await?;
        let n = match state {
            State::Dead => q.counts.dead,
            State::Completed => q.counts.completed,
            State::Cancelled => q.counts.cancelled,
            State::Available => q.counts.available,
            _ => 0,
        };
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "keel: purge deletes {n} {} jobs of {name}; add --yes to confirm",
                state.as_str()
            );
            return Ok(exit::USAGE);
        }
        eprint!(
            "Delete {n} {} jobs of {name}? Type the queue name to confirm: ",
            state.as_str()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != name {
            eprintln!("keel: not confirmed; nothing deleted");
            return Ok(exit::USAGE);
        }
    }
    let n = ctx.client.purge(name, state).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "purged": n }));
    } else {
        println!("purged {n} {} jobs of {name}", state.as_str());
    }
    Ok(exit::OK)
}

/// How the CLI retries a server that refuses connections or answers 429/503: briefly, so a
/// restarting server is ridden through but a wrong URL fails within a few seconds.
pub fn retry_policy() -> keel_client::RetryPolicy {
    keel_client::RetryPolicy {
        max_attempts: 5,
        max_elapsed: Duration::from_secs(5),
        ..Default::default()
    }
}

pub async fn tokens_create(ctx: &Ctx, req: &keel_client::NewToken) -> Outcome {
    let created = ctx.client.create_token(req).await?;
    if ctx.json {
        ctx.print_json(&created);
    } else {
        eprintln!(
            "created {} token {} ({}); the secret is shown only now:",
            created.info.role, created.info.name, created.info.id
        );
        println!("{}", created.token);
    }
    Ok(exit::OK)
}

pub async fn tokens_ls(ctx: &Ctx) -> Outcome {
    let tokens = ctx.client.tokens().await?;
    if ctx.json {
        ctx.print_json(&tokens);
        return Ok(exit::OK);
    }
    let now = render::now();
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.role.clone(),
                t.queues
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |q| q.join(",")),
                relative(t.created_at, now),
            ]
        })
        .collect();
    render::table(
        &ctx.style,
        &["ID", "NAME", "ROLE", "QUEUES", "CREATED"],
        &rows,
    );
    Ok(exit::OK)
}

pub async fn tokens_rm(ctx: &Ctx, id: uuid::Uuid) -> Outcome {
    ctx.client.delete_token(id).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "deleted": id }));
    } else {
        println!("revoked token {id}");
    }
    Ok(exit::OK)
}

pub async fn audit(ctx: &Ctx, limit: u32) -> Outcome {
    let page = ctx.client.audit(limit.clamp(1, 500), None).await?;
    if ctx.json {
        ctx.print_json(&page.entries);
        return Ok(exit::OK);
    }
    if page.entries.is_empty() {
        println!("no admin changes recorded");
        return Ok(exit::OK);
    }
    let now = render::now();
    let rows: Vec<Vec<String>> = page
        .entries
        .iter()
        .map(|e| {
            vec![
                relative(e.at, now),
                e.actor.name.clone(),
                e.action.clone(),
                e.target.clone(),
                render::truncate(&e.data.to_string(), 60),
            ]
        })
        .collect();
    render::table(
        &ctx.style,
        &["WHEN", "BY", "ACTION", "TARGET", "DETAILS"],
        &rows,
    );
    Ok(exit::OK)
}

#[derive(clap::Args)]
pub struct ScheduleArgs {
    /// Schedule name ([A-Za-z0-9._:-], up to 128 characters).
    pub name: String,
    /// Cron pattern: 5 fields (6 with seconds first) or @hourly, @daily, ...
    #[arg(
        long,
        conflicts_with = "every_ms",
        required_unless_present = "every_ms"
    )]
    pub cron: Option<String>,
    /// IANA time zone of --cron (default UTC).
    #[arg(long, requires = "cron")]
    pub timezone: Option<String>,
    /// Tick every N milliseconds instead (on multiples of N since the Unix epoch).
    #[arg(long)]
    pub every_ms: Option<u64>,
    /// What runs after downtime: none, one (default) or all of the missed ticks.
    #[arg(long, value_parser = ["none", "one", "all"])]
    pub catch_up: Option<String>,
    /// Create it (or leave it) paused.
    #[arg(long)]
    pub paused: bool,
    /// The queue of each tick's job.
    #[arg(long)]
    pub queue: String,
    /// The kind of each tick's job.
    #[arg(long)]
    pub kind: String,
    /// JSON payload of each tick's job (default `{}`).
    #[arg(long, value_parser = parse_json)]
    pub payload: Option<Value>,
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i32>,
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

pub async fn schedules_set(ctx: &Ctx, a: ScheduleArgs) -> Outcome {
    let mut job = EnqueueRequest::new(
        a.queue,
        a.kind,
        a.payload.unwrap_or(Value::Object(Default::default())),
    );
    job.priority = a.priority;
    job.max_attempts = a.max_attempts;
    job.tags = a.tags;
    let req = ScheduleRequest {
        cron: a.cron,
        timezone: a.timezone,
        every_ms: a.every_ms,
        catch_up: a.catch_up,
        paused: a.paused.then_some(true),
        job,
    };
    let info = ctx.client.put_schedule(&a.name, &req).await?;
    if ctx.json {
        ctx.print_json(&info);
    } else {
        let next = info
            .next_run_at
            .map_or("paused".to_owned(), |t| format!("next tick {t}"));
        println!("set schedule {} ({next})", info.name);
    }
    Ok(exit::OK)
}

fn cadence(s: &ScheduleInfo) -> String {
    match (&s.cron, &s.timezone, s.every_ms) {
        (Some(c), Some(tz), _) => format!("{c} ({tz})"),
        (Some(c), None, _) => c.clone(),
        (None, _, Some(ms)) => format!("every {ms} ms"),
        _ => "?".to_owned(),
    }
}

pub async fn schedules_ls(ctx: &Ctx) -> Outcome {
    let all = ctx.client.schedules().await?;
    let now = render::now();
    print_list(
        ctx,
        &all,
        "no schedules",
        &["NAME", "CADENCE", "QUEUE/KIND", "NEXT", "LAST RUN"],
        |s| {
            vec![
                s.name.clone(),
                cadence(s),
                format!("{}/{}", s.job.queue, s.job.kind),
                s.next_run_at
                    .map_or("paused".to_owned(), |t| relative(t, now)),
                s.runs.first().map_or("-".to_owned(), |r| {
                    format!("{} {}", r.outcome, relative(r.tick_at, now))
                }),
            ]
        },
    )
}

pub async fn schedules_show(ctx: &Ctx, name: &str) -> Outcome {
    let s = ctx.client.schedule(name).await?;
    if ctx.json {
        ctx.print_json(&s);
        return Ok(exit::OK);
    }
    let now = render::now();
    println!("schedule   {}", s.name);
    println!("cadence    {}", cadence(&s));
    println!("catch-up   {}", s.catch_up);
    println!(
        "job        {}/{} {}",
        s.job.queue, s.job.kind, s.job.payload
    );
    match s.next_run_at {
        Some(t) => println!("next tick  {t} ({})", relative(t, now)),
        None => println!("next tick  - (paused)"),
    }
    if s.runs.is_empty() {
        println!("no runs yet");
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = s
        .runs
        .iter()
        .map(|r| {
            vec![
                r.tick_at.to_string(),
                r.outcome.clone(),
                match (r.job_id, r.skipped_until) {
                    (Some(id), _) => id.to_string(),
                    (None, Some(until)) => format!("through {until}"),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    render::table(&ctx.style, &["TICK", "OUTCOME", "JOB"], &rows);
    Ok(exit::OK)
}

pub async fn schedules_rm(ctx: &Ctx, name: &str) -> Outcome {
    ctx.client.delete_schedule(name).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "deleted": name }));
    } else {
        println!("deleted schedule {name} (the jobs it enqueued stay)");
    }
    Ok(exit::OK)
}

pub async fn schedules_pause(ctx: &Ctx, name: &str, paused: bool) -> Outcome {
    let s = if paused {
        ctx.client.pause_schedule(name).await?
    } else {
        ctx.client.resume_schedule(name).await?
    };
    if ctx.json {
        ctx.print_json(&s);
    } else if let Some(t) = s.next_run_at {
        println!("resumed schedule {name}; next tick {t}");
    } else {
        println!("paused schedule {name}");
    }
    Ok(exit::OK)
}

pub async fn targets(ctx: &Ctx) -> Outcome {
    let all = ctx.client.targets().await?;
    let now = render::now();
    print_list(
        ctx,
        &all,
        "no push targets",
        &["ORIGIN", "BREAKER", "FAILURES", "NEXT PROBE", "QUEUES"],
        |t| {
            vec![
                t.origin.clone(),
                t.state.replace('_', "-"),
                t.consecutive_failures.to_string(),
                t.next_probe_at
                    .map_or("-".to_owned(), |at| relative(at, now)),
                t.queues.join(","),
            ]
        },
    )
}

/// A listing: the items as JSON with `--json`; otherwise `empty` when there are none, else a
/// table with one `row` per item.
fn print_list<T: Serialize>(
    ctx: &Ctx,
    items: &[T],
    empty: &str,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Outcome {
    if ctx.json {
        ctx.print_json(&items);
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        render::table(&ctx.style, headers, &rows);
    }
    Ok(exit::OK)
}

pub async fn schemas_set(ctx: &Ctx, kind: &str, file: &std::path::Path) -> Outcome {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Error::Invalid(format!("reading stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Error::Invalid(format!("reading {}: {e}", file.display())))?
    };
    let schema: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{} is not JSON: {e}", file.display())))?;
    let info = ctx.client.put_schema(kind, &schema).await?;
    if ctx.json {
        ctx.print_json(&info);
    } else {
        println!(
            "set the payload schema of {} (version {})",
            info.kind, info.version
        );
    }
    Ok(exit::OK)
}

pub async fn schemas_show(ctx: &Ctx, kind: &str) -> Outcome {
    let info = ctx.client.schema(kind).await?;
    if ctx.json {
        ctx.print_json(&info);
    } else {
        ctx.print_json(&info.schema);
    }
    Ok(exit::OK)
}

pub async fn schemas_ls(ctx: &Ctx) -> Outcome {
    let all = ctx.client.schemas().await?;
    let now = render::now();
    print_list(
        ctx,
        &all,
        "no payload schemas",
        &["KIND", "VERSION", "UPDATED"],
        |s| {
            vec![
                s.kind.clone(),
                s.version.to_string(),
                relative(s.updated_at, now),
            ]
        },
    )
}

pub async fn schemas_rm(ctx: &Ctx, kind: &str) -> Outcome {
    ctx.client.delete_schema(kind).await?;
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "deleted": kind }));
    } else {
        println!("deleted the payload schema of {kind}");
    }
    Ok(exit::OK)
}
