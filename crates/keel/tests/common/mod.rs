//! Runs the real `keel` binary as a child process for tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Keel {
    pub child: Child,
    pub base: String,
    pub addr: String,
    pub data_dir: PathBuf,
    /// The admin token the server wrote to `<data-dir>/admin.token` on first start.
    pub token: String,
    /// Every log line the server has written to stdout so far.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Keel {
    /// Starts `keel serve` on an ephemeral port (data dir via KEEL_DATA_DIR) and waits until it
    /// logs its address. Its logs are drained in the background so the pipe never fills.
    pub fn start(data_dir: &Path) -> Keel {
        Keel::start_on(data_dir, "127.0.0.1:0")
    }

    /// Starts on a given address (to come back on the same port after a crash).
    pub fn start_on(data_dir: &Path, listen: &str) -> Keel {
        Keel::start_with(data_dir, listen, &[])
    }

    /// Starts with extra `keel serve` flags.
    pub fn start_with(data_dir: &Path, listen: &str, extra: &[&str]) -> Keel {
        // reqwest's rustls needs a process-wide crypto provider before tests build clients.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", "--listen", listen])
            .args(extra)
            .env("KEEL_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn,keel=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines.next().expect("keel exited before serving").unwrap();
            logs.lock().unwrap().push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["message"] == "keel is serving." {
                break v["addr"].as_str().unwrap().to_owned();
            }
        };
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .expect("keel serve wrote no admin.token")
            .trim()
            .to_owned();
        Keel {
            child,
            base: format!("http://{addr}"),
            addr,
            data_dir: data_dir.to_owned(),
            token,
            logs,
        }
    }

    /// A `keel_client::Client` with the admin token.
    pub fn client(&self) -> keel_client::Client {
        keel_client::Client::builder(&self.base)
            .token(&self.token)
            .build()
            .unwrap()
    }

    /// Waits (up to 20 s) until `queue` has no running job: every abandoned lease has expired
    /// and been recovered. Fails the test otherwise.
    pub async fn wait_until_nothing_runs(&self, queue: &str) {
        let http = self.http(std::time::Duration::from_secs(10));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let q: Value = http
                .get(format!("{}/v1/queues/{queue}", self.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if q["counts"]["running"] == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expired leases were not recovered: {q}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A plain HTTP client that sends the admin token.
    pub fn http(&self, timeout: std::time::Duration) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .build()
            .unwrap()
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

/// A failing test must not leave a server behind (it would hold the test's pipes open).
impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
