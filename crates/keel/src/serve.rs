//! `keel serve`: open the store, bind, serve until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_server::{Clock, ServerConfig, SystemClock};
use keel_store::{SqliteConfig, SqliteStore};
use tokio::net::TcpListener;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel serve\n  keel serve --listen 127.0.0.1:9000 --data-dir /var/lib/keel\n  KEEL_DATA_DIR=/tmp/keel keel serve"
)]
pub struct ServeArgs {
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

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
    keel_server::serve(
        listener,
        Arc::new(store),
        clock,
        config,
        keel_client::worker::shutdown_signal(),
    )
    .await
    .context("serving")?;
    Ok(())
}
