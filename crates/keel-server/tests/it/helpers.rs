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
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(SystemClock);
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                SqliteConfig::new(dir.path()),
                keel_server::Clock::now(&*clock),
            )
            .unwrap(),
        );
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
            http: reqwest::Client::new(),
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

pub fn job(queue: &str) -> Value {
    json!({"queue": queue, "kind": "test.kind", "payload": {"n": 1}})
}
