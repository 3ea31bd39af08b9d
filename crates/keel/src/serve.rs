//! `keel serve`: open the store, bind, serve until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_server::{Clock, ServerConfig, SystemClock};
use keel_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, Store};
use tokio::net::TcpListener;

/// Where the server keeps its data: SQLite in --data-dir, or PostgreSQL with --database.
#[derive(clap::Args, Clone)]
pub struct StorageArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/db): several keel nodes can share
    /// it. Without it, keel uses embedded SQLite in --data-dir.
    #[arg(long, env = "KEEL_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// The PostgreSQL schema keel's tables live in (created if missing).
    #[arg(long, env = "KEEL_DATABASE_SCHEMA", default_value = "public")]
    pub database_schema: String,
    /// PostgreSQL connections per keel process.
    #[arg(long, env = "KEEL_DATABASE_POOL_SIZE", default_value_t = 16)]
    pub database_pool_size: usize,
}

impl StorageArgs {
    pub fn pg_config(&self) -> Option<PgConfig> {
        let url = self.database.as_ref()?;
        let mut config = PgConfig::new(url.clone());
        config.schema = self.database_schema.clone();
        config.pool_size = self.database_pool_size.max(1);
        Some(config)
    }

    /// Opens the store (applying migrations). The URL is never printed: it may hold a password.
    pub async fn open(
        &self,
        data_dir: &Path,
        now: keel_core::Time,
    ) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self.pg_config() {
            Some(config) => Arc::new(PgStore::open(config, now).await.with_context(|| {
                format!(
                    "opening PostgreSQL (--database / KEEL_DATABASE_URL, schema {})",
                    self.database_schema
                )
            })?),
            None => Arc::new(
                SqliteStore::open(SqliteConfig::new(data_dir), now).with_context(|| {
                    format!(
                        "opening the store in --data-dir {} (KEEL_DATA_DIR)",
                        data_dir.display()
                    )
                })?,
            ),
        })
    }

    fn describe(&self, data_dir: &Path) -> String {
        match &self.database {
            Some(_) => format!("postgresql (schema {})", self.database_schema),
            None => format!("sqlite ({})", data_dir.display()),
        }
    }
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel serve\n  keel serve --listen 0.0.0.0:8470 --data-dir /var/lib/keel\n  KEEL_DATA_DIR=/tmp/keel keel serve --no-auth\n  KEEL_DATABASE_URL=postgres://keel@db/keel keel serve --listen 0.0.0.0:8470\n\nOn first start keel creates an admin token, prints it once and writes it to <data-dir>/admin.token (mode 0600); client commands on this machine read it from there."
)]
pub struct ServeArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Export trace spans to this OTLP/HTTP collector (base URL; `/v1/traces` is added). Needs a
    /// keel built with `--features otlp`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "KEEL_LISTEN", default_value = "127.0.0.1:8470")]
    listen: SocketAddr,
    /// Serve without tokens: every request acts as admin. Refused unless --listen is loopback.
    #[arg(long, env = "KEEL_NO_AUTH")]
    no_auth: bool,
    /// Job API requests in flight at once; more are refused at once with 429 overloaded.
    #[arg(long, env = "KEEL_MAX_IN_FLIGHT", default_value_t = 1024)]
    max_in_flight: usize,
    /// Requests per second each token may make (with --token-burst); off when not set.
    #[arg(long, env = "KEEL_TOKEN_RATE_LIMIT")]
    token_rate_limit: Option<u32>,
    /// Requests a token may make at once above its rate (default: the rate).
    #[arg(long, env = "KEEL_TOKEN_BURST", requires = "token_rate_limit")]
    token_burst: Option<u32>,
    /// Open connections at most; more are closed at once.
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Seconds a client gets to send its request headers (and to finish a TLS handshake).
    #[arg(long, env = "KEEL_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,
    /// Seconds a client gets to send a whole request body; then 408.
    #[arg(long, env = "KEEL_BODY_TIMEOUT_SECS", default_value_t = 30)]
    body_timeout_secs: u64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "KEEL_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Largest job payload in bytes (422 beyond).
    #[arg(long, env = "KEEL_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    max_payload_bytes: usize,
    /// Largest job result in bytes (422 beyond).
    #[arg(long, env = "KEEL_MAX_RESULT_BYTES", default_value_t = 64 << 10)]
    max_result_bytes: usize,
    /// Most jobs in one batch enqueue or ack.
    #[arg(long, env = "KEEL_MAX_BATCH", default_value_t = 1_000)]
    max_batch: usize,
    /// Deepest JSON nesting accepted in a request body.
    #[arg(long, env = "KEEL_MAX_JSON_DEPTH", default_value_t = 64)]
    max_json_depth: usize,
    /// PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "KEEL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "KEEL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Let push targets be loopback or private-network addresses (link-local and cloud
    /// metadata addresses are refused regardless).
    #[arg(long, env = "KEEL_ALLOW_PRIVATE_TARGETS")]
    allow_private_targets: bool,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "KEEL_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    shutdown_grace_secs: u64,
}

pub async fn serve(args: ServeArgs, data_dir: &Path) -> anyhow::Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        bail!(
            "--no-auth (KEEL_NO_AUTH) needs a loopback --listen address, got {}; without tokens anyone who can \
             reach the port could do anything",
            args.listen
        );
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            keel_server::Tls::from_pem_files(cert, key)
                .map_err(|e| anyhow::anyhow!("--tls-cert/--tls-key: {e}"))?,
        ),
        _ => None,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = args.storage.open(data_dir, clock.now()).await?;
    if !args.no_auth {
        bootstrap_admin_token(&*store, data_dir, clock.now()).await?;
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {} (KEEL_LISTEN)", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(message = "keel is serving.", %addr, storage = %args.storage.describe(data_dir), auth = !args.no_auth, tls = tls.is_some());
    let config = ServerConfig {
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace_secs),
        auth: !args.no_auth,
        max_in_flight: args.max_in_flight,
        token_rate_limit: args
            .token_rate_limit
            .map(|rate| (rate, args.token_burst.unwrap_or(rate))),
        limits: keel_core::Limits {
            max_body_bytes: args.max_body_bytes,
            max_payload_bytes: args.max_payload_bytes,
            max_result_bytes: args.max_result_bytes,
            max_batch: args.max_batch.max(1),
            max_json_depth: args.max_json_depth.max(1),
            ..Default::default()
        },
        conn: keel_server::ConnLimits {
            max_connections: args.max_connections,
            header_read_timeout: std::time::Duration::from_secs(args.header_timeout_secs.max(1)),
            body_read_timeout: std::time::Duration::from_secs(args.body_timeout_secs.max(1)),
            ..Default::default()
        },
        tls,
        allow_private_targets: args.allow_private_targets,
    };
    keel_server::serve(
        listener,
        store,
        clock,
        config,
        keel_client::worker::shutdown_signal(),
    )
    .await
    .context("serving")?;
    Ok(())
}

/// On a store without tokens, creates the first admin token, writes it to
/// `<data-dir>/admin.token` (mode 0600, replaced atomically) and prints it once on stderr. The
/// secret never reaches the logs.
async fn bootstrap_admin_token(
    store: &dyn Store,
    data_dir: &Path,
    now: keel_core::Time,
) -> anyhow::Result<()> {
    let Some(secret) = keel_server::ensure_admin_token(store, now)
        .await
        .context("creating the first admin token")?
    else {
        return Ok(());
    };
    let path = data_dir.join(keel_client::ADMIN_TOKEN_FILE);
    std::fs::create_dir_all(data_dir)
        .and_then(|()| write_secret(&path, &secret))
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    tracing::info!(message = "Created the first admin token.", path = %path.display());
    eprintln!(
        "keel: created the first admin token. It is shown once here and kept in {} (mode 0600):\n\n    {secret}\n",
        path.display()
    );
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// `keel migrate`: creates or upgrades the schema without serving.
pub async fn migrate(storage: &StorageArgs, data_dir: &Path) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match storage.pg_config() {
        Some(config) => PgStore::migrate(&config, now)
            .await
            .context("migrating PostgreSQL (--database / KEEL_DATABASE_URL)")?,
        None => {
            let store = storage.open(data_dir, now).await?;
            store.close().await.context("closing the store")?;
        }
    }
    eprintln!(
        "keel: the {} schema is up to date.",
        storage.describe(data_dir)
    );
    Ok(())
}
