//! `keel`: the command line. `keel serve` runs the server on embedded SQLite storage.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use keel_server::{Clock, ServerConfig, SystemClock};
use keel_store::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "keel", version, about = "A durable background-job server.")]
struct Cli {
    /// Log format: `json` (default when stdout is not a terminal) or `pretty`.
    #[arg(long, env = "KEEL_LOG_FORMAT", global = true)]
    log_format: Option<LogFormat>,
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
    /// Run the server on embedded SQLite storage.
    ///
    /// Example: keel serve --listen 127.0.0.1:8470 --data-dir ./keel-data
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on. Until token auth exists, only loopback addresses are accepted.
    #[arg(long, env = "KEEL_LISTEN", default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// Directory holding the database (created if missing).
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "./keel-data")]
    data_dir: PathBuf,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
    }
}

fn init_logs(format: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {} (KEEL_LISTEN) is not a loopback address; keel has no token auth yet, so it only \
             listens on loopback (for example 127.0.0.1:8470)",
            args.listen
        );
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store =
        SqliteStore::open(SqliteConfig::new(&args.data_dir), clock.now()).with_context(|| {
            format!(
                "opening the store in --data-dir {} (KEEL_DATA_DIR)",
                args.data_dir.display()
            )
        })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {} (KEEL_LISTEN)", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(message = "keel is serving.", %addr, data_dir = %args.data_dir.display());
    let config = ServerConfig {
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
        ..Default::default()
    };
    keel_server::serve(listener, Arc::new(store), clock, config, shutdown_signal())
        .await
        .context("serving")?;
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
