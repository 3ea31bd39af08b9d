//! Test harness: `TestServer` starts `keel_server::serve` on 127.0.0.1:0 over a SQLite store in a
//! temporary directory; its request helpers state the status they expect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_server::{ServerConfig, SystemClock};
use keel_store::{SqliteConfig, SqliteStore, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub struct TestServer {
    pub addr: SocketAddr,
    /// Sends the bootstrap admin token with every request.
    pub http: reqwest::Client,
    /// The bootstrap admin token (None with auth off).
    pub admin_token: Option<String>,
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Box<dyn Send + Sync>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        TestServer::start_in(config, dir.path().to_owned(), dir).await
    }

    /// Serves a store in `data_dir`; `keep` lives as long as the server (a temp dir, a mount).
    pub async fn start_in(
        config: ServerConfig,
        data_dir: std::path::PathBuf,
        keep: impl Send + Sync + 'static,
    ) -> TestServer {
        install_tls_provider();
        let dir = Box::new(keep) as Box<dyn Send + Sync>;
        let clock = Arc::new(SystemClock);
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                SqliteConfig::new(&data_dir),
                keel_server::Clock::now(&*clock),
            )
            .unwrap(),
        );
        let admin_token = if config.auth {
            keel_server::ensure_admin_token(&*store, keel_server::Clock::now(&*clock))
                .await
                .unwrap()
        } else {
            None
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &admin_token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(keel_server::serve(
            listener,
            store.clone(),
            clock,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        TestServer {
            addr,
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            admin_token,
            store,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends JSON and asserts the status; returns the body as JSON (Null when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>, expect: u16) -> Value {
        let mut req = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(
            status,
            StatusCode::from_u16(expect).unwrap(),
            "{method} {path} answered {status}: {text}"
        );
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    pub async fn post(&self, path: &str, body: Value, expect: u16) -> Value {
        self.call("POST", path, Some(body), expect).await
    }

    pub async fn get(&self, path: &str, expect: u16) -> Value {
        self.call("GET", path, None, expect).await
    }

    pub async fn enqueue(&self, body: Value) -> Value {
        self.post("/v1/jobs", body, 201).await
    }

    /// Leases from `queue` (no waiting) and returns the jobs.
    pub async fn lease(&self, queue: &str, max_jobs: u32, lease_ms: u32) -> Vec<Value> {
        let res = self
            .post(
                "/v1/lease",
                json!({"queues": [queue], "max_jobs": max_jobs, "lease_ms": lease_ms}),
                200,
            )
            .await;
        res["jobs"].as_array().unwrap().clone()
    }

    /// Polls `check` until it returns Some, failing after `secs` seconds.
    pub async fn eventually<T, F, Fut>(&self, secs: u64, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}"), 200).await
    }

    pub async fn job_count(&self) -> usize {
        self.get("/v1/jobs?limit=500", 200).await["jobs"]
            .as_array()
            .unwrap()
            .len()
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl TestServer {
    /// Sends a request with `token` (or none) and returns the status, the body as JSON (Null when
    /// empty) and the headers; asserts nothing.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = reqwest::Client::new().request(method.parse().unwrap(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            headers,
        )
    }

    /// Creates a token through the API (as the admin) and returns (id, secret).
    pub async fn token(&self, role: &str, queues: Option<&[&str]>) -> (String, String) {
        let mut body = json!({"name": format!("{role}-token"), "role": role});
        if let Some(q) = queues {
            body["queues"] = json!(q);
        }
        let t = self.post("/v1/tokens", body, 201).await;
        (
            t["id"].as_str().unwrap().to_owned(),
            t["token"].as_str().unwrap().to_owned(),
        )
    }
}

/// reqwest's rustls (enabled in the workspace build by keel-client) needs a process-wide
/// crypto provider before any client is built.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The `pointer` of each `errors` item of a problem, in order.
pub fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["pointer"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn job(queue: &str) -> Value {
    json!({"queue": queue, "kind": "test.kind", "payload": {"n": 1}})
}
