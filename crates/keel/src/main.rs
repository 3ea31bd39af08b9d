//! `keel`: the server (`keel serve`) and its command line client.

mod backup;
mod bench;
mod commands;
mod logformat;
mod logsink;
mod otel;
mod render;
mod serve;
mod status;
mod transfer;

/// mimalloc instead of glibc's malloc: the writer and the HTTP threads allocate per job (JSON,
/// rows, answers), and glibc's free lists cost ~10% of the writer's CPU (docs/performance.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use keel_client::{Backoff, Client, JobFilter, QueuePatch, State};

use crate::commands::{Ctx, EnqueueArgs, parse_id, parse_state};
use crate::render::{Style, exit};

const EXIT_CODES: &str = "Exit codes: 0 success; 1 the server refused the request; 2 usage error; \
3 server unreachable or failing; 4 job or queue not found.";

#[derive(Parser)]
#[command(name = "keel", version, about = "A durable background-job server and its command line.", after_help = EXIT_CODES)]
struct Cli {
    /// Log format of `keel serve`: `json` (default when stdout is not a terminal) or `pretty`.
    #[arg(long, env = "KEEL_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
    /// Server URL for client commands.
    #[arg(long, env = "KEEL_URL", global = true, default_value = keel_client::DEFAULT_URL)]
    url: String,
    /// API token for client commands. Default for a loopback --url: <data-dir>/admin.token.
    #[arg(long, env = "KEEL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// PEM file of a CA (or self-signed certificate) to trust for an https:// --url.
    #[arg(long, env = "KEEL_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// The server's data directory (`keel serve` keeps its database and admin.token there).
    #[arg(
        long,
        env = "KEEL_DATA_DIR",
        global = true,
        default_value = "./keel-data"
    )]
    data_dir: std::path::PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded SQLite in --data-dir, or PostgreSQL with --database).
    Serve(serve::ServeArgs),
    /// Create or upgrade the storage schema without serving (also done by `keel serve`).
    #[command(
        after_help = "Examples:\n  keel migrate --data-dir /var/lib/keel\n  KEEL_DATABASE_URL=postgres://keel@db/keel keel migrate"
    )]
    Migrate(serve::StorageArgs),
    /// Write a whole store (jobs, events, queues, tokens, schemas, schedules) as JSON lines.
    Export(transfer::ExportArgs),
    /// Load what `keel export` wrote into an empty store (SQLite or PostgreSQL).
    Import(transfer::ImportArgs),
    /// Take a consistent snapshot of the SQLite store while the server runs.
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data dir, optionally rewound to an earlier moment.
    Restore(backup::RestoreArgs),
    /// Check a store or a backup: checksum, integrity, and every row against its events.
    Verify(backup::VerifyArgs),
    /// Enqueue a job, or many from JSON lines on stdin.
    #[command(
        after_help = "Examples:\n  keel enqueue emails email.welcome '{\"to\": \"ada@example.com\"}'\n  keel enqueue emails email.welcome '{\"to\": \"ada@example.com\"}' --idempotency-key signup-42 --delay-ms 60000\n  cat jobs.jsonl | keel enqueue --stdin            # one enqueue body per line\n  echo '{\"payload\": {\"to\": \"ada@example.com\"}}' | keel enqueue --stdin emails email.welcome   # lines without queue/kind get these"
    )]
    Enqueue(EnqueueArgs),
    /// Inspect and act on jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Inspect and configure queues.
    #[command(subcommand)]
    Queues(QueuesCmd),
    /// Dead-letter shortcuts.
    #[command(subcommand)]
    Dead(DeadCmd),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Set, show, list and delete payload schemas (JSON Schema 2020-12 per job kind).
    #[command(subcommand)]
    Schemas(SchemasCmd),
    /// Create, list, pause and delete schedules (cron or fixed-interval jobs).
    #[command(subcommand)]
    Schedules(SchedulesCmd),
    /// One screen for humans: storage, queues (depths, oldest wait, rates) and breakers.
    #[command(
        after_help = "Examples:\n  keel status\n  keel status --interval-ms 5000     # rates over 5 s\n  keel status --interval-ms 0 --json  # no rates, no waiting\n\nRates are this server's, from two reads of /metrics (with several PostgreSQL nodes, ask each, or use Prometheus)."
    )]
    Status {
        /// Time between the two metric reads the rates come from (0: no rates).
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Show push targets' origins and their circuit breakers.
    #[command(after_help = "Examples:\n  keel targets\n  keel targets --json")]
    Targets,
    /// Show the audit log of admin changes, newest first.
    #[command(after_help = "Examples:\n  keel audit\n  keel audit --limit 200 --json")]
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Measure throughput and latency against a server (or a throw-away one with --spawn).
    Bench(bench::BenchArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  keel completions bash > /etc/bash_completion.d/keel\n  keel completions zsh > \"${fpath[1]}/_keel\""
    )]
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct ListArgs {
    #[arg(long)]
    queue: Option<String>,
    #[arg(long, value_parser = parse_state)]
    state: Option<State>,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    tag: Option<String>,
    /// Jobs per page (1-500).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Follow every page.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum JobsCmd {
    /// List jobs, newest first.
    #[command(
        after_help = "Examples:\n  keel jobs ls --queue emails --state dead\n  keel jobs ls --tag tenant:7 --all --json"
    )]
    Ls(ListArgs),
    /// Show one job with its payload and result.
    #[command(after_help = "Example:\n  keel jobs show 0193a3b2-7c1e-7d40-9a51-8f2f6c1f0b2e")]
    Show {
        #[arg(value_parser = parse_id)]
        id: uuid::Uuid,
    },
    /// A job's history, oldest first.
    #[command(after_help = "Example:\n  keel jobs events 0193a3b2-7c1e-7d40-9a51-8f2f6c1f0b2e")]
    Events {
        #[arg(value_parser = parse_id)]
        id: uuid::Uuid,
    },
    /// Cancel a job that is not finished (a running job's lease is revoked).
    #[command(after_help = "Example:\n  keel jobs cancel 0193a3b2-7c1e-7d40-9a51-8f2f6c1f0b2e")]
    Cancel {
        #[arg(value_parser = parse_id)]
        id: uuid::Uuid,
    },
    /// Retry a dead or cancelled job with a fresh attempt budget.
    #[command(after_help = "Example:\n  keel jobs retry 0193a3b2-7c1e-7d40-9a51-8f2f6c1f0b2e")]
    Retry {
        #[arg(value_parser = parse_id)]
        id: uuid::Uuid,
    },
}

#[derive(Subcommand)]
enum QueuesCmd {
    /// List queues with their job counts.
    #[command(after_help = "Example:\n  keel queues ls")]
    Ls,
    /// Show a queue's settings and counts.
    #[command(after_help = "Example:\n  keel queues show emails")]
    Show { name: String },
    /// Change a queue's settings; `default` puts a setting back to the server default.
    #[command(
        after_help = "Examples:\n  keel queues set emails --concurrency 5 --max-attempts 10\n  keel queues set emails --concurrency default\n  keel queues set emails --backoff 1000:60000:0.25\n  keel queues set partner-sync --rate-limit 50:100"
    )]
    Set {
        name: String,
        /// Most running jobs at once, or `default` (unlimited).
        #[arg(long)]
        concurrency: Option<Setting<u32>>,
        #[arg(long)]
        max_attempts: Option<Setting<u32>>,
        #[arg(long)]
        timeout_ms: Option<Setting<u64>>,
        /// INITIAL_MS:MAX_MS[:JITTER], or `default`.
        #[arg(long)]
        backoff: Option<Setting<BackoffArg>>,
        /// COMPLETED_MS:DEAD_MS, or `default`.
        #[arg(long)]
        retention: Option<Setting<RetentionArg>>,
        /// PER_SECOND[:BURST] jobs handed out (to workers and pushes), or `default` (no limit).
        #[arg(long)]
        rate_limit: Option<Setting<RateLimitArg>>,
    },
    /// Stop handing out the queue's jobs.
    #[command(after_help = "Example:\n  keel queues pause emails")]
    Pause { name: String },
    /// Hand out the queue's jobs again.
    #[command(after_help = "Example:\n  keel queues resume emails")]
    Resume { name: String },
    /// Put dead (or cancelled) jobs back to available with a fresh attempt budget.
    #[command(
        after_help = "Examples:\n  keel queues replay emails\n  keel queues replay emails --state cancelled --kind email.welcome --limit 100"
    )]
    Replay {
        name: String,
        #[arg(long, default_value = "dead", value_parser = parse_state)]
        state: State,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Delete a queue's jobs in one state (asks to confirm unless --yes).
    #[command(
        after_help = "Examples:\n  keel queues purge emails --state completed\n  keel queues purge emails --state dead --yes"
    )]
    Purge {
        name: String,
        #[arg(long, value_parser = parse_state)]
        state: State,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum DeadCmd {
    /// List dead jobs (all queues, or one).
    #[command(after_help = "Examples:\n  keel dead ls\n  keel dead ls --queue emails --all")]
    Ls {
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long)]
        all: bool,
    },
    /// Replay a queue's dead jobs.
    #[command(after_help = "Example:\n  keel dead replay emails --kind email.welcome")]
    Replay {
        queue: String,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Subcommand)]
enum SchedulesCmd {
    /// Create or replace a schedule; replacing keeps its clock (no tick fires twice).
    #[command(
        after_help = "Examples:\n  keel schedules set daily-report --cron '0 7 * * MON-FRI' --timezone Europe/Berlin --queue reports --kind report.daily --payload '{\"team\": \"sales\"}'\n  keel schedules set sync-partners --every-ms 300000 --queue sync --kind partner.sync --catch-up none"
    )]
    Set(Box<commands::ScheduleArgs>),
    /// List schedules with their next tick and last run.
    #[command(after_help = "Example:\n  keel schedules ls")]
    Ls,
    /// Show a schedule and its latest runs.
    #[command(after_help = "Example:\n  keel schedules show daily-report")]
    Show { name: String },
    /// Stop firing until resumed.
    #[command(after_help = "Example:\n  keel schedules pause daily-report")]
    Pause { name: String },
    /// Fire again from the next tick (ticks missed while paused do not run).
    #[command(after_help = "Example:\n  keel schedules resume daily-report")]
    Resume { name: String },
    /// Delete a schedule (the jobs it enqueued stay).
    #[command(after_help = "Example:\n  keel schedules rm daily-report")]
    Rm { name: String },
}

#[derive(Subcommand)]
enum SchemasCmd {
    /// Set a kind's schema from a file (or `-` for stdin); jobs already stored are not affected.
    #[command(
        after_help = "Examples:\n  keel schemas set email.welcome schemas/welcome.json\n  echo '{\"type\": \"object\", \"required\": [\"to\"]}' | keel schemas set email.welcome -"
    )]
    Set {
        kind: String,
        file: std::path::PathBuf,
    },
    /// Print a kind's schema.
    #[command(after_help = "Example:\n  keel schemas show email.welcome")]
    Show { kind: String },
    /// List the kinds that have a schema.
    #[command(after_help = "Example:\n  keel schemas ls")]
    Ls,
    /// Delete a kind's schema (its payloads are no longer checked).
    #[command(after_help = "Example:\n  keel schemas rm email.welcome")]
    Rm { kind: String },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create a token and print its secret (shown this once).
    #[command(
        after_help = "Examples:\n  keel tokens create billing-api --role producer --queue 'billing.*'\n  keel tokens create mailer --role worker --queue emails --queue emails.bulk\n  keel tokens create dashboards --role viewer"
    )]
    Create {
        name: String,
        /// admin, producer, worker or viewer.
        #[arg(long, value_parser = ["admin", "producer", "worker", "viewer"])]
        role: String,
        /// A queue glob pattern the token may use (repeatable; `*` matches any characters).
        /// Without any, the token may use every queue.
        #[arg(long = "queue")]
        queues: Vec<String>,
    },
    /// List tokens (never their secrets).
    #[command(after_help = "Example:\n  keel tokens ls --json")]
    Ls,
    /// Revoke a token at once.
    #[command(after_help = "Example:\n  keel tokens rm 0195a1c2-7d3e-7000-8000-000000000000")]
    Rm { id: uuid::Uuid },
}

/// A queue setting on the command line: a value, or `default`.
#[derive(Clone)]
enum Setting<T> {
    Value(T),
    Default,
}

impl<T: std::str::FromStr> std::str::FromStr for Setting<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "default" {
            Ok(Setting::Default)
        } else {
            s.parse::<T>()
                .map(Setting::Value)
                .map_err(|e| e.to_string())
        }
    }
}

impl<T> Setting<T> {
    fn into_patch<U>(self, f: impl FnOnce(T) -> U) -> Option<U> {
        match self {
            Setting::Value(v) => Some(f(v)),
            Setting::Default => None,
        }
    }
}

#[derive(Clone)]
struct BackoffArg(Backoff);

impl std::str::FromStr for BackoffArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |t: &str| {
            t.parse::<i64>()
                .map_err(|_| format!("{t:?} is not a number of milliseconds"))
        };
        match parts.as_slice() {
            [i, m] => Ok(BackoffArg(Backoff {
                initial_ms: num(i)?,
                max_ms: num(m)?,
                jitter: Backoff::default().jitter,
            })),
            [i, m, j] => Ok(BackoffArg(Backoff {
                initial_ms: num(i)?,
                max_ms: num(m)?,
                jitter: j
                    .parse()
                    .map_err(|_| format!("{j:?} is not a jitter between 0 and 1"))?,
            })),
            _ => Err("expected INITIAL_MS:MAX_MS[:JITTER]".into()),
        }
    }
}

#[derive(Clone)]
struct RateLimitArg(keel_core::RateLimit);

impl std::str::FromStr for RateLimitArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rate, burst) = match s.split_once(':') {
            Some((r, b)) => (r, Some(b)),
            None => (s, None),
        };
        let per_second: f64 = rate
            .parse()
            .map_err(|_| format!("{rate:?} is not a number of jobs per second"))?;
        let burst = match burst {
            Some(b) => b
                .parse::<u32>()
                .map_err(|_| format!("{b:?} is not a whole number of jobs"))?,
            None => per_second.clamp(1.0, 1_000_000.0).ceil() as u32,
        };
        Ok(RateLimitArg(keel_core::RateLimit { per_second, burst }))
    }
}

#[derive(Clone)]
struct RetentionArg(keel_core::Retention);

impl std::str::FromStr for RetentionArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (c, d) = s.split_once(':').ok_or("expected COMPLETED_MS:DEAD_MS")?;
        let num = |t: &str| {
            t.parse::<i64>()
                .map_err(|_| format!("{t:?} is not a number of milliseconds"))
        };
        Ok(RetentionArg(keel_core::Retention {
            completed_ms: num(c)?,
            dead_ms: num(d)?,
        }))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::from(exit::UNAVAILABLE);
        }
    };
    let code = match cli.command {
        Command::Serve(args) => {
            // Held until serving ends: dropping it flushes the last spans and lines.
            let _logs = match init_logs(cli.log_format, args.otlp_endpoint.as_deref()) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("keel: {e:#}");
                    return ExitCode::from(exit::USAGE);
                }
            };
            match runtime.block_on(serve::serve(args, &cli.data_dir)) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("keel: {e:#}");
                    1
                }
            }
        }
        Command::Migrate(storage) => match init_logs(cli.log_format, None) {
            Ok(_logs) => finish(runtime.block_on(serve::migrate(&storage, &cli.data_dir))),
            Err(e) => finish(Err(e)),
        },
        Command::Export(args) => finish(runtime.block_on(transfer::export(args, &cli.data_dir))),
        Command::Import(args) => finish(runtime.block_on(transfer::import(args, &cli.data_dir))),
        Command::Backup(args) => finish(backup::backup(args, &cli.data_dir)),
        Command::Restore(args) => finish(runtime.block_on(backup::restore(args, &cli.data_dir))),
        Command::Verify(args) => finish(runtime.block_on(backup::verify(args, &cli.data_dir))),
        Command::Bench(args) => {
            let local_token = cli.data_dir.join(keel_client::ADMIN_TOKEN_FILE);
            let token = cli.token.clone().or_else(|| {
                keel_client::is_loopback_url(&cli.url)
                    .then(|| std::fs::read_to_string(&local_token).ok())
                    .flatten()
                    .map(|t| t.trim().to_owned())
            });
            match runtime.block_on(bench::run(args, &cli.url, token, cli.json)) {
                Ok(()) => exit::OK,
                Err(e) => {
                    eprintln!("keel: bench: {e:#}");
                    exit::UNAVAILABLE
                }
            }
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            exit::OK
        }
        command => {
            let mut client = Client::builder(&cli.url).retry(commands::retry_policy());
            if let Some(path) = &cli.ca_cert {
                match std::fs::read(path) {
                    Ok(pem) => client = client.ca_cert_pem(pem),
                    Err(e) => {
                        eprintln!("keel: --ca-cert {}: {e}", path.display());
                        return ExitCode::from(exit::USAGE);
                    }
                }
            }
            let local_token = cli.data_dir.join(keel_client::ADMIN_TOKEN_FILE);
            let client = match cli.token {
                Some(t) => client.token(t),
                // A local server's admin token, never sent to another host.
                None if keel_client::is_loopback_url(&cli.url) && local_token.exists() => {
                    client.admin_token_from(&cli.data_dir)
                }
                None => client,
            };
            match client.build() {
                Err(e) => render::report(&e),
                Ok(client) => {
                    let ctx = Ctx {
                        client,
                        json: cli.json,
                        style: Style::detect(),
                    };
                    match runtime.block_on(run(&ctx, command)) {
                        Ok(code) => code,
                        Err(e) => render::report(&e),
                    }
                }
            }
        }
    };
    ExitCode::from(code)
}

async fn run(ctx: &Ctx, command: Command) -> commands::Outcome {
    match command {
        Command::Serve(_)
        | Command::Migrate(_)
        | Command::Export(_)
        | Command::Import(_)
        | Command::Backup(_)
        | Command::Restore(_)
        | Command::Verify(_)
        | Command::Bench(_)
        | Command::Completions { .. } => Ok(exit::OK),
        Command::Enqueue(args) => commands::enqueue(ctx, args).await,
        Command::Jobs(JobsCmd::Ls(a)) => {
            let filter = JobFilter {
                queue: a.queue,
                state: a.state,
                kind: a.kind,
                tag: a.tag,
                limit: Some(a.limit),
                cursor: None,
            };
            commands::jobs_ls(ctx, filter, a.all).await
        }
        Command::Jobs(JobsCmd::Show { id }) => commands::jobs_show(ctx, id).await,
        Command::Jobs(JobsCmd::Events { id }) => commands::jobs_events(ctx, id).await,
        Command::Jobs(JobsCmd::Cancel { id }) => commands::jobs_action(ctx, id, true).await,
        Command::Jobs(JobsCmd::Retry { id }) => commands::jobs_action(ctx, id, false).await,
        Command::Queues(QueuesCmd::Ls) => commands::queues_ls(ctx).await,
        Command::Queues(QueuesCmd::Show { name }) => commands::queues_show(ctx, &name).await,
        Command::Queues(QueuesCmd::Set {
            name,
            concurrency,
            max_attempts,
            timeout_ms,
            backoff,
            retention,
            rate_limit,
        }) => {
            let patch = QueuePatch {
                concurrency: concurrency.map(|s| s.into_patch(|v| v)),
                max_attempts: max_attempts.map(|s| s.into_patch(|v| v)),
                timeout_ms: timeout_ms.map(|s| s.into_patch(|v| v)),
                backoff: backoff.map(|s| s.into_patch(|b| b.0)),
                retention: retention.map(|s| s.into_patch(|r| r.0)),
                rate_limit: rate_limit.map(|s| s.into_patch(|r| r.0)),
                ..Default::default()
            };
            commands::queues_set(ctx, &name, patch).await
        }
        Command::Queues(QueuesCmd::Pause { name }) => {
            commands::queues_pause(ctx, &name, true).await
        }
        Command::Queues(QueuesCmd::Resume { name }) => {
            commands::queues_pause(ctx, &name, false).await
        }
        Command::Queues(QueuesCmd::Replay {
            name,
            state,
            kind,
            limit,
        }) => commands::queues_replay(ctx, &name, state, kind.as_deref(), limit).await,
        Command::Queues(QueuesCmd::Purge { name, state, yes }) => {
            commands::queues_purge(ctx, &name, state, yes).await
        }
        Command::Dead(DeadCmd::Ls { queue, limit, all }) => {
            let filter = JobFilter {
                queue,
                state: Some(State::Dead),
                limit: Some(limit),
                ..Default::default()
            };
            commands::jobs_ls(ctx, filter, all).await
        }
        Command::Dead(DeadCmd::Replay { queue, kind, limit }) => {
            commands::queues_replay(ctx, &queue, State::Dead, kind.as_deref(), limit).await
        }
        Command::Tokens(TokensCmd::Create { name, role, queues }) => {
            let req = keel_client::NewToken {
                name,
                role,
                queues: (!queues.is_empty()).then_some(queues),
            };
            commands::tokens_create(ctx, &req).await
        }
        Command::Tokens(TokensCmd::Ls) => commands::tokens_ls(ctx).await,
        Command::Tokens(TokensCmd::Rm { id }) => commands::tokens_rm(ctx, id).await,
        Command::Audit { limit } => commands::audit(ctx, limit).await,
        Command::Targets => commands::targets(ctx).await,
        Command::Status { interval_ms } => {
            status::status(ctx, std::time::Duration::from_millis(interval_ms)).await
        }
        Command::Schedules(SchedulesCmd::Set(args)) => commands::schedules_set(ctx, *args).await,
        Command::Schedules(SchedulesCmd::Ls) => commands::schedules_ls(ctx).await,
        Command::Schedules(SchedulesCmd::Show { name }) => {
            commands::schedules_show(ctx, &name).await
        }
        Command::Schedules(SchedulesCmd::Pause { name }) => {
            commands::schedules_pause(ctx, &name, true).await
        }
        Command::Schedules(SchedulesCmd::Resume { name }) => {
            commands::schedules_pause(ctx, &name, false).await
        }
        Command::Schedules(SchedulesCmd::Rm { name }) => commands::schedules_rm(ctx, &name).await,
        Command::Schemas(SchemasCmd::Set { kind, file }) => {
            commands::schemas_set(ctx, &kind, &file).await
        }
        Command::Schemas(SchemasCmd::Show { kind }) => commands::schemas_show(ctx, &kind).await,
        Command::Schemas(SchemasCmd::Ls) => commands::schemas_ls(ctx).await,
        Command::Schemas(SchemasCmd::Rm { kind }) => commands::schemas_rm(ctx, &kind).await,
    }
}

/// The exit code of a command that works on the store directly (migrate, export, import).
fn finish(result: anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("keel: {e:#}");
            exit::UNAVAILABLE
        }
    }
}

/// What keeps logging going; dropping it flushes the last spans (with `otlp`), then the last lines.
struct Logs {
    _spans: Option<otel::Guard>,
    _lines: logsink::Guard,
}

/// The log filter `RUST_LOG` asks for (default `info`), as one layer in front of all others.
///
/// Directives by target and level only (`warn,keel_server=debug`, the usual kind) become a
/// `Targets`, which decides per callsite once and keeps no state per span. Only a `RUST_LOG` with
/// span or field directives (`keel[request]=debug`) gets an `EnvFilter`, which must look up its
/// table of spans under a lock on every span enter and exit, five times a request
/// (docs/performance.md). A `RUST_LOG` neither can read means `info`, as before.
fn log_filter<S>(spec: Option<&str>) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::{EnvFilter, Targets};
    let spec = spec
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    // `Targets` would read `[span]` as part of a target name rather than refuse it.
    if !spec.contains(['[', '{'])
        && let Ok(targets) = spec.parse::<Targets>()
    {
        return targets.boxed();
    }
    match EnvFilter::try_new(spec) {
        Ok(filter) => filter.boxed(),
        Err(_) => Targets::new()
            .with_default(tracing::level_filters::LevelFilter::INFO)
            .boxed(),
    }
}

/// Sets up logging (and, with `otlp`, span export): lines go through `logsink`.
fn init_logs(format: Option<LogFormat>, otlp: Option<&str>) -> anyhow::Result<Logs> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::registry::Registry;
    use tracing_subscriber::util::SubscriberInitExt;
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let (sink, lines) = logsink::start();
    let fmt = tracing_subscriber::fmt::layer().with_writer(sink);
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![if json {
        fmt.fmt_fields(logformat::SpanFields)
            .event_format(logformat::JsonLines)
            .boxed()
    } else {
        fmt.boxed()
    }];
    let guard = match otlp {
        Some(endpoint) => {
            let (layer, guard) = otel::layer(endpoint)?;
            layers.push(layer);
            Some(guard)
        }
        None => None,
    };
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();
    Ok(Logs {
        _spans: guard,
        _lines: lines,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod log_filter_tests {
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::log_filter;

    /// Keeps `target level` of every event that reaches it.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", meta.target(), meta.level()));
        }
    }

    /// The events that pass `RUST_LOG=spec` out of a fixed set.
    fn passed(spec: Option<&str>) -> Vec<String> {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(seen.clone())
            .with(log_filter(spec));
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(target: "keel_server::routes", Level::DEBUG, "a");
            tracing::event!(target: "keel_server::routes", Level::INFO, "b");
            tracing::event!(target: "hyper::proto", Level::INFO, "c");
            tracing::event!(target: "hyper::proto", Level::WARN, "d");
            let span = tracing::info_span!(target: "keel_server::routes", "request");
            let _entered = span.enter();
            tracing::event!(target: "keel_server::jobs", Level::DEBUG, "e");
        });
        seen.0.lock().unwrap().clone()
    }

    #[test]
    fn rust_log_filters_by_target_level_and_span() {
        let info = [
            "keel_server::routes INFO",
            "hyper::proto INFO",
            "hyper::proto WARN",
        ];
        assert_eq!(passed(None), info);
        assert_eq!(passed(Some("")), info);
        // Unreadable: `info`, as before.
        assert_eq!(passed(Some("keel=loud")), info);
        assert_eq!(passed(Some("warn")), ["hyper::proto WARN"]);
        assert_eq!(
            passed(Some("warn,keel_server=debug")),
            [
                "keel_server::routes DEBUG",
                "keel_server::routes INFO",
                "hyper::proto WARN",
                "keel_server::jobs DEBUG",
            ]
        );
        // A span directive: only the debug line inside the `request` span, above the default.
        assert_eq!(
            passed(Some("warn,[request]=debug")),
            ["hyper::proto WARN", "keel_server::jobs DEBUG"]
        );
    }
}
