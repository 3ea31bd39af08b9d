//! keel's HTTP server: routes (parse, check, call the store, map errors), dispatch (long polls and
//! the timer loop) and the middleware stack. It holds no job rules: those live in keel-core and
//! are applied by the store.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod dispatch;
mod extract;
mod limit;
mod listen;
mod metrics;
mod openapi;
mod problem;
mod push;
mod routes;
mod schemas;
mod target;
mod trace;
mod ui;
mod wire;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_core::{Limits, Time};
use keel_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{ensure_admin_token, generate_token};
pub use listen::{ConnLimits, Tls};
pub use problem::ApiError;

/// The source of "now"; injected so tests can control it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Time;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Time::from_millis(ms)
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub limits: Limits,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Require a bearer token on the job API. Off only for `--no-auth` on loopback.
    pub auth: bool,
    /// Job API requests in flight at once; beyond it, `429 overloaded` at once.
    pub max_in_flight: usize,
    /// Per-token rate limit: (requests per second, burst). `None`: no limit.
    pub token_rate_limit: Option<(u32, u32)>,
    /// Connection limits and slow-client timeouts.
    pub conn: ConnLimits,
    /// Serve HTTPS with this identity; plain HTTP when `None`.
    pub tls: Option<Tls>,
    /// Let push targets be loopback or private addresses (link-local never).
    pub allow_private_targets: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(10),
            auth: true,
            max_in_flight: 1_024,
            token_rate_limit: None,
            conn: ConnLimits::default(),
            tls: None,
            allow_private_targets: false,
        }
    }
}

/// What every handler can reach, behind one `Arc`: axum clones the state for every extractor and
/// middleware that takes it, several times per request, and one shared count to bump is cheaper
/// than eight (their atomics bounce between the cores; ~6% of the HTTP threads' time per enqueue,
/// docs/performance.md). Fields are crate-private; handlers get what they need.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) auth: Arc<auth::Auth>,
    pub(crate) schemas: Arc<schemas::Schemas>,
    pub(crate) push: Arc<push::Push>,
    pub(crate) ui: Arc<ui::Ui>,
    /// Turns true when shutdown begins; long polls end early on it.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The served OpenAPI document, serialised once when the routes are built (`routes::router`).
    pub(crate) openapi: std::sync::OnceLock<axum::body::Bytes>,
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (long polls return at once), stops the timers and closes the store, which
/// flushes the writer. Returns when all of that is done.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limiter = config
        .token_rate_limit
        .map(|(rate, burst)| limit::RateLimiter::new(rate, burst));
    let auth = auth::Auth::load(&*store, config.auth, limiter)
        .await
        .map_err(|e| std::io::Error::other(format!("loading tokens: {e}")))?;
    let schemas = schemas::Schemas::load(&*store)
        .await
        .map_err(|e| std::io::Error::other(format!("loading payload schemas: {e}")))?;
    let push = Arc::new(
        push::Push::new(store.clone(), clock.clone(), config.allow_private_targets)
            .map_err(|e| std::io::Error::other(format!("building the push client: {e}")))?,
    );
    let (stop, stopping) = watch::channel(false);
    let grace = config.shutdown_grace;
    let (tls, conn_limits) = (config.tls.clone(), config.conn.clone());
    let state = AppState(Arc::new(Shared {
        store: store.clone(),
        clock: clock.clone(),
        config: Arc::new(config),
        auth: Arc::new(auth),
        schemas: Arc::new(schemas),
        push: push.clone(),
        ui: Arc::new(ui::Ui::new()?),
        stopping: stopping.clone(),
        openapi: std::sync::OnceLock::new(),
    }));
    let sampler = {
        let ui = state.ui.clone();
        tokio::spawn(async move { ui.history.sample().await })
    };
    // Installed before the first request, so every counted change lands in it.
    metrics::recorder();
    let timers = tokio::spawn(dispatch::run_timers(store.clone(), clock, stopping.clone()));
    let upkeep = tokio::spawn(metrics::upkeep());
    let deliveries = tokio::spawn(push.run(stopping.clone(), grace));
    let app = routes::router(state);
    let mut stopping_for_grace = stopping.clone();
    let stopper = tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            message = "Shutting down: no new connections; finishing in-flight requests."
        );
        let _ = stop.send(true);
    });
    // In-flight requests get `grace` after shutdown begins; then the process moves on regardless.
    tokio::select! {
        () = listen::run(listener, app, tls, conn_limits, stopping.clone()) => {}
        _ = async {
            let _ = stopping_for_grace.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(message = "Grace period over; abandoning remaining requests.");
        }
    }
    stopper.abort();
    upkeep.abort();
    sampler.abort();
    let _ = deliveries.await;
    let _ = timers.await;
    if let Err(e) = store.close().await {
        tracing::error!(message = "Store did not close cleanly.", error = %e);
    }
    tracing::info!(message = "Stopped.");
    Ok(())
}
