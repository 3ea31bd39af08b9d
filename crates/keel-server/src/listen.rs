//! Accepting connections: plain TCP or TLS (rustls), each served by hyper's HTTP/1.1 with limits
//! that protect the server from slow or oversized clients.
//!
//! Invariants:
//! - A connection slot is taken before any work on a connection and given back when it closes;
//!   beyond `max_connections` a new connection is closed at once, so idle or slow clients cannot
//!   grow memory without bound.
//! - A client that does not finish its request headers within `header_read_timeout` (or its TLS
//!   handshake within the same time) is disconnected; headers larger than `max_header_bytes` or
//!   more numerous than `max_headers` get `431`. Body reads have their own deadline (`Body`
//!   extractor, `408 request-timeout`).
//! - On shutdown every connection is told to finish its current request and close; `serve`
//!   bounds how long that may take.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::Service;

/// The answer of every request: the panic guard's (outermost layer's) body type.
type Answer = hyper::Response<tower_http::body::UnsyncBoxBody<hyper::body::Bytes, tower::BoxError>>;

/// What `run` serves: the application as one tower service (`routes::router`), cloned for each
/// connection and each request.
pub(crate) trait App:
    Service<Request<Incoming>, Response = Answer, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: Service<Request<Incoming>, Response = Answer, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + 'static
{
}

/// The most headers hyper takes when not told otherwise (its `DEFAULT_MAX_HEADERS`).
const HYPER_MAX_HEADERS: usize = 100;

/// Connection-level limits; `ServerConfig` carries them.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// For the request line and headers of each request, and for a TLS handshake.
    pub header_read_timeout: Duration,
    /// The whole request body must arrive within this.
    pub body_read_timeout: Duration,
    /// Bytes of request line and headers (at least 8 KiB, hyper's floor).
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            max_headers: HYPER_MAX_HEADERS,
        }
    }
}

/// A certificate chain and key for HTTPS.
#[derive(Clone)]
pub struct Tls(pub(crate) Arc<rustls::ServerConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

impl Tls {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Tls, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("reading the certificate {}: {e}", cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("reading the private key {}: {e}", key.display()))?;
        Tls::from_der(certs, key)
    }

    pub fn from_der(
        certs: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS protocol versions: {e}"))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls(Arc::new(config)))
    }
}

/// Accepts and serves connections until `stopping` turns true, then waits for open connections
/// to finish their current request.
pub(crate) async fn run(
    listener: TcpListener,
    app: impl App,
    tls: Option<Tls>,
    limits: ConnLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let acceptor = tls.map(|t| TlsAcceptor::from(t.0));
    // Every connection task holds a sender; `recv` returns `None` once all have ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(message = "Accept failed.", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            true = stopped(&mut stopping) => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(message = "Connection limit reached; closing a new connection.", %peer);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor, limits, stopping, open) = (
            app.clone(),
            acceptor.clone(),
            limits.clone(),
            stopping.clone(),
            open.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let _open = open;
            match acceptor {
                None => serve_one(tcp, app, &limits, stopping).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => serve_one(stream, app, &limits, stopping).await,
                        Ok(Err(e)) => {
                            tracing::debug!(message = "TLS handshake failed.", %peer, error = %e)
                        }
                        Err(_) => tracing::debug!(message = "TLS handshake timed out.", %peer),
                    }
                }
            }
        });
    }
    drop(open);
    let _ = all_closed.recv().await;
}

async fn serve_one<I>(
    io: I,
    app: impl App,
    limits: &ConnLimits,
    mut stopping: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8 << 10))
        .keep_alive(true);
    // hyper parses into arrays of its default size, 100, kept on the stack; any size set here,
    // even 100, is a vector it fills element by element for every request (~1,700 instructions,
    // 6% of `/healthz`, docs/performance.md). The default means the same limit.
    if limits.max_headers != HYPER_MAX_HEADERS {
        http.max_headers(limits.max_headers);
    }
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let stop = tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::debug!(message = "Connection ended with an error.", error = %e);
            }
            false
        }
        seen = stopped(&mut stopping) => seen,
    };
    if stop {
        // Finish the request in progress (if any), then close.
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
    }
}

/// Resolves once shutdown has begun (`true`), or with `false` if it never can.
async fn stopped(stopping: &mut watch::Receiver<bool>) -> bool {
    stopping.wait_for(|s| *s).await.is_ok()
}
