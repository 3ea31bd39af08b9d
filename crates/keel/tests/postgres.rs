//! keel on PostgreSQL as real processes: several nodes sharing one database (one of them
//! `kill -9`-ed under load) complete every job exactly once, and an outage of the database
//! itself gives fast 503s and loses nothing acknowledged. Needs `KEEL_TEST_DATABASE_URL`;
//! without it each test says it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_store::testing::PgHarness;
use serde_json::{Value, json};

mod common;
use common::Keel;

/// Starts a node on the harness's database; `token_from` is a node whose admin token to use
/// (only the first node creates one).
fn node(pg: &PgHarness, dir: &Path, token_from: Option<&Keel>) -> Keel {
    if let Some(first) = token_from {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("admin.token"), &first.token).unwrap();
    }
    Keel::start_with(
        dir,
        "127.0.0.1:0",
        &[
            "--database",
            &pg.url,
            "--database-schema",
            &pg.schema,
            "--database-pool-size",
            "8",
        ],
    )
}

async fn post(
    http: &reqwest::Client,
    url: String,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let res = http.post(url).json(&body).send().await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

const JOBS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_complete_every_job_exactly_once_with_one_killed() {
    let Some(pg) = PgHarness::new().await else {
        return;
    };
    let dirs = tempfile::tempdir().unwrap();
    let first = node(&pg, &dirs.path().join("a"), None);
    let second = node(&pg, &dirs.path().join("b"), Some(&first));
    let third = node(&pg, &dirs.path().join("c"), Some(&first));
    let bases: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|k| k.base.clone())
        .collect();
    let http = first.http(Duration::from_secs(10));

    // Workers, two per node, each long-polling its node. A worker whose node dies moves on to
    // the next one. Completions the server acknowledged are counted per job.
    let acked_completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    // Jobs whose ack got no answer (the node died, or the request timed out): the server may or
    // may not have committed it, and the worker cannot tell.
    let in_doubt: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = vec![];
    for w in 0..6 {
        let (http, bases, acked, in_doubt, stop) = (
            http.clone(),
            bases.clone(),
            acked_completions.clone(),
            in_doubt.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut at = w % 3;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let base = &bases[at];
                let lease = json!({"queues": ["multi"], "max_jobs": 50, "lease_ms": 3000, "wait_ms": 500});
                let got = match post(&http, format!("{base}/v1/lease"), lease).await {
                    Ok((200, got)) => got,
                    _ => {
                        at = (at + 1) % bases.len();
                        continue;
                    }
                };
                let jobs = got["jobs"].as_array().cloned().unwrap_or_default();
                if jobs.is_empty() {
                    continue;
                }
                if at == 2 {
                    // The third node's workers take their time, so it dies holding leases.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let items: Vec<Value> = jobs
                    .iter()
                    .map(|j| json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "completed"}))
                    .collect();
                match post(&http, format!("{base}/v1/ack"), json!({"items": items})).await {
                    Ok((200, answer)) => {
                        let mut acked = acked.lock().unwrap();
                        for item in answer["items"].as_array().unwrap() {
                            if item["status"] == 200 {
                                *acked.entry(item["id"].as_str().unwrap().to_owned()).or_default() += 1;
                            }
                        }
                    }
                    // The node died with these leases, before or after committing the ack:
                    // uncommitted ones expire and run again elsewhere.
                    _ => {
                        let mut in_doubt = in_doubt.lock().unwrap();
                        for job in &jobs {
                            in_doubt.insert(job["id"].as_str().unwrap().to_owned());
                        }
                        at = (at + 1) % bases.len();
                    }
                }
            }
        }));
    }

    // Producers: batches of 1,000 with idempotency keys, spread over the nodes.
    let mut enqueued: HashMap<String, String> = HashMap::new();
    let mut third = Some(third);
    let mut held_by_the_dead = 0;
    for batch in 0..JOBS / 1_000 {
        let jobs: Vec<Value> = (batch * 1_000..(batch + 1) * 1_000)
            .map(|n| json!({"queue": "multi", "kind": "k", "payload": {"n": n}, "idempotency_key": format!("job-{n}")}))
            .collect();
        let base = &bases[batch % 2]; // the third node is killed midway; producers use the others
        let (status, body) = post(
            &http,
            format!("{base}/v1/jobs/batch"),
            json!({"jobs": jobs}),
        )
        .await
        .unwrap();
        assert!(
            status == 200 || status == 201,
            "batch answered {status}: {body}"
        );
        for (i, item) in body["jobs"].as_array().unwrap().iter().enumerate() {
            enqueued.insert(
                format!("job-{}", batch * 1_000 + i),
                item["id"].as_str().unwrap().to_owned(),
            );
        }
        if batch == JOBS / 2_000 {
            // Midway the third node dies while a worker of it holds leases (taken just now, so
            // the kill always finds some; their acks can never reach that node again).
            let held = loop {
                let lease =
                    json!({"queues": ["multi"], "max_jobs": 25, "lease_ms": 3000, "wait_ms": 1000});
                let (status, got) = post(&http, format!("{}/v1/lease", bases[2]), lease)
                    .await
                    .unwrap();
                assert_eq!(status, 200, "{got}");
                let n = got["jobs"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    break n;
                }
            };
            third.take().unwrap().kill_9();
            held_by_the_dead = held;
        }
    }
    assert_eq!(enqueued.len(), JOBS);

    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let q: Value = http
            .get(format!("{}/v1/queues/multi", bases[0]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if q["counts"]["completed"] == JOBS {
            break;
        }
        assert!(Instant::now() < deadline, "not every job completed: {q}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Exactly once, as the workers saw it: no job's completion was acknowledged twice, and
    // every enqueued job's was acknowledged once, except where the ack's answer was lost with
    // the killed node (its commit is checked against the database below).
    let acked = acked_completions.lock().unwrap().clone();
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "completions acknowledged twice: {twice:?}"
    );
    let in_doubt = in_doubt.lock().unwrap().clone();
    let missing: Vec<_> = enqueued
        .values()
        .filter(|id| !acked.contains_key(*id) && !in_doubt.contains(*id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "jobs never acknowledged complete: {missing:?}"
    );

    // And as the database holds it: one `completed` event per job, rows equal to the events.
    let store = keel_store::PgStore::open(pg.config(), keel_store::testing::T0)
        .await
        .unwrap();
    let mut after = None;
    let mut seen = 0;
    loop {
        let page = keel_store::Store::export_jobs(&store, after, 5_000)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen += page.len();
        assert!(page.iter().all(|j| j.state == keel_core::State::Completed));
    }
    assert_eq!(seen, JOBS, "no job lost or duplicated in the jobs table");
    let report = keel_store::Store::verify(&store).await.unwrap();
    assert!(
        report.mismatched.is_empty(),
        "rows differ from their events: {:?}",
        report.mismatched
    );
    let events = events_by_type(&pg).await;
    assert_eq!(
        events.get("completed").copied(),
        Some(JOBS as i64),
        "{events:?}"
    );
    assert!(
        events.get("lease_expired").copied().unwrap_or(0) >= held_by_the_dead as i64,
        "the {held_by_the_dead} leases held through the killed node had to expire: {events:?}"
    );
}

async fn events_by_type(pg: &PgHarness) -> HashMap<String, i64> {
    let (client, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            &format!(
                "SELECT type, count(*) FROM {}.events GROUP BY type",
                pg.schema
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// A PostgreSQL server of the test's own (from the installed binaries, on a free port), so the
/// test can stop and start it without touching the shared one. As root it runs as `postgres`.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl PrivatePg {
    fn start() -> PrivatePg {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path().join("bin"))
                    .find(|p| p.join("initdb").exists())
            })
            .expect("this test needs the PostgreSQL server binaries (/usr/lib/postgresql/*/bin)");
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg { dir, bin, port };
        let data = pg.data();
        if is_root() {
            std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
        }
        let ok = pg
            .run(
                "initdb",
                &["-D", &data, "-U", "postgres", "-A", "trust", "--no-sync"],
            )
            .success();
        assert!(ok, "initdb failed");
        pg.pg_ctl(&["start", "-w", "-l", &format!("{data}/log")]);
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) -> std::process::ExitStatus {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            std::process::Command::new(exe)
        };
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let mut all = vec!["-D", &data, "-o", &options];
        all.extend_from_slice(args);
        assert!(self.run("pg_ctl", &all).success(), "pg_ctl {args:?} failed");
    }

    /// Stops it the hard way: no checkpoint, as a crash or a failover would.
    fn crash(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "stop", "-m", "immediate"]);
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_gives_fast_503s_and_loses_nothing_acknowledged() {
    // Runs where the PostgreSQL tests run (the shared server is not touched: this test has its own).
    if std::env::var(keel_store::testing::TEST_DATABASE_ENV).is_err() {
        eprintln!(
            "skipped: {} is not set, so this PostgreSQL test did not run",
            keel_store::testing::TEST_DATABASE_ENV
        );
        return;
    }
    let pg = PrivatePg::start();
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start_with(dir.path(), "127.0.0.1:0", &["--database", &pg.url()]);
    let base = keel.base.clone();
    let http = keel.http(Duration::from_secs(30));

    // Producers enqueue with idempotency keys and record every answer.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let unavailable: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut producers = vec![];
    for p in 0..4 {
        let (http, base, acked, unavailable, stop) = (
            http.clone(),
            base.clone(),
            acked.clone(),
            unavailable.clone(),
            stop.clone(),
        );
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("p{p}-{n}");
                let body = json!({"queue": "outage", "kind": "k", "payload": {"n": n}, "idempotency_key": key});
                let started = Instant::now();
                let res = http.post(format!("{base}/v1/jobs")).json(&body).send().await.unwrap();
                let status = res.status().as_u16();
                let retry_after = res.headers().contains_key("retry-after");
                let body: Value = res.json().await.unwrap_or(Value::Null);
                match status {
                    200 | 201 => {
                        acked.lock().unwrap().insert(key, body["id"].as_str().unwrap().to_owned());
                    }
                    503 => {
                        assert_eq!(body["type"].as_str().map(|t| t.ends_with("storage-unavailable")), Some(true), "{body}");
                        unavailable.lock().unwrap().push((started.elapsed(), retry_after));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("enqueue answered {other}: {body}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_outage = acked.lock().unwrap().len();
    assert!(
        before_outage > 0,
        "load reached the server before the outage"
    );

    pg.crash();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(ready, 503, "/readyz while PostgreSQL is down");
    {
        let seen = unavailable.lock().unwrap();
        assert!(!seen.is_empty(), "no 503 during the outage");
        let slowest = seen.iter().map(|(d, _)| *d).max().unwrap();
        assert!(slowest < Duration::from_secs(3), "a 503 took {slowest:?}");
        assert!(
            seen.iter().all(|(_, retry_after)| *retry_after),
            "every 503 carries Retry-After"
        );
    }

    pg.pg_ctl(&["start", "-w", "-l", &format!("{}/log", pg.data())]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keel did not recover after PostgreSQL came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_recovery = acked.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > at_recovery,
        "enqueues succeed again after recovery"
    );

    // Every acknowledged job is there (on a fresh client, to be sure nothing is cached).
    let fresh = keel.http(Duration::from_secs(10));
    for (key, id) in &acked {
        let res = fresh
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "acknowledged job {id} ({key}) is missing after the outage"
        );
    }
    eprintln!(
        "outage: {} enqueues acknowledged ({before_outage} before the crash), {} answered 503",
        acked.len(),
        unavailable.lock().unwrap().len()
    );
}

fn keel_cmd(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keel {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every line but the header (which carries the export time).
fn body_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["header"]["keel_export"], 1);
    lines.map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_move_a_store_from_sqlite_to_postgresql_and_back() {
    let Some(pg) = PgHarness::new().await else {
        return;
    };
    let dirs = tempfile::tempdir().unwrap();
    let sqlite_dir = dirs.path().join("sqlite");

    // A store with something of everything: configured and paused queues, a schema, a
    // schedule, a scoped token, finished, dead, waiting and running jobs.
    let keel = Keel::start(&sqlite_dir);
    let (base, http) = (keel.base.clone(), keel.http(Duration::from_secs(10)));
    let ok = |r: (u16, Value)| assert!(r.0 < 300, "{r:?}");
    ok(post(&http, format!("{base}/v1/jobs/batch"), json!({"jobs": (0..30).map(|n| json!({"queue": "moving", "kind": "k", "payload": {"n": n}, "tags": ["t"]})).collect::<Vec<_>>()})).await.unwrap());
    ok(post(
        &http,
        format!("{base}/v1/jobs"),
        json!({"queue": "later", "kind": "k", "payload": {}, "delay_ms": 3_600_000}),
    )
    .await
    .unwrap());
    let put = |path: &str, body: Value| http.put(format!("{base}{path}")).json(&body).send();
    assert!(
        put(
            "/v1/queues/moving",
            json!({"concurrency": 50, "max_attempts": 2})
        )
        .await
        .unwrap()
        .status()
        .is_success()
    );
    assert!(
        put("/v1/schemas/k", json!({"schema": {"type": "object"}}))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    assert!(put("/v1/schedules/nightly", json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "job": {"queue": "later", "kind": "k", "payload": {}}})).await.unwrap().status().is_success());
    ok(post(
        &http,
        format!("{base}/v1/tokens"),
        json!({"name": "billing", "role": "producer", "queues": ["billing.*"]}),
    )
    .await
    .unwrap());
    let (_, leased) = post(
        &http,
        format!("{base}/v1/lease"),
        json!({"queues": ["moving"], "max_jobs": 12, "lease_ms": 600_000}),
    )
    .await
    .unwrap();
    let leased = leased["jobs"].as_array().unwrap().clone();
    let mut items = vec![];
    for (i, j) in leased.iter().enumerate().take(10) {
        items.push(if i < 7 {
            json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "completed"})
        } else {
            json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "failed", "error": {"message": "no", "retryable": false}})
        });
    }
    ok(
        post(&http, format!("{base}/v1/ack"), json!({"items": items}))
            .await
            .unwrap(),
    );
    ok(
        post(&http, format!("{base}/v1/queues/later/pause"), json!({}))
            .await
            .unwrap(),
    );
    // Two jobs stay running across the move; their workers' tokens must still work after it.
    let still_running: Vec<(String, String)> = leased[10..12]
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_owned(),
                j["lease"]["token"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(keel.terminate().success());

    let first = dirs.path().join("from-sqlite.jsonl");
    keel_cmd(&[
        "export",
        "--data-dir",
        sqlite_dir.to_str().unwrap(),
        "--out",
        first.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&first).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let imported = keel_cmd(&[
        "import",
        "--database",
        &pg.url,
        "--database-schema",
        &pg.schema,
        "--from",
        first.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&imported.stderr).contains("imported 31 jobs"),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    // Importing twice is refused and changes nothing.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "import",
            "--database",
            &pg.url,
            "--database-schema",
            &pg.schema,
            "--from",
            first.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds jobs"));

    let second = dirs.path().join("from-postgres.jsonl");
    keel_cmd(&[
        "export",
        "--database",
        &pg.url,
        "--database-schema",
        &pg.schema,
        "--out",
        second.to_str().unwrap(),
    ]);
    assert_eq!(
        body_lines(&first),
        body_lines(&second),
        "PostgreSQL holds exactly what SQLite held"
    );

    // And back into a fresh SQLite data dir.
    let back_dir = dirs.path().join("back");
    keel_cmd(&[
        "import",
        "--data-dir",
        back_dir.to_str().unwrap(),
        "--from",
        second.to_str().unwrap(),
    ]);
    let third = dirs.path().join("back.jsonl");
    keel_cmd(&[
        "export",
        "--data-dir",
        back_dir.to_str().unwrap(),
        "--out",
        third.to_str().unwrap(),
    ]);
    assert_eq!(body_lines(&first), body_lines(&third));

    // Served from PostgreSQL with the old admin token, the running jobs' workers finish them.
    let pg_dir = dirs.path().join("pg-node");
    std::fs::create_dir_all(&pg_dir).unwrap();
    std::fs::copy(sqlite_dir.join("admin.token"), pg_dir.join("admin.token")).unwrap();
    let node = node(&pg, &pg_dir, None);
    let http = node.http(Duration::from_secs(10));
    for (id, token) in &still_running {
        let (status, job) = post(
            &http,
            format!("{}/v1/jobs/{id}/complete", node.base),
            json!({"lease_token": token}),
        )
        .await
        .unwrap();
        assert_eq!(
            (status, job["state"].as_str()),
            (200, Some("completed")),
            "{job}"
        );
    }
    let q: Value = http
        .get(format!("{}/v1/queues/moving", node.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(q["counts"]["completed"], 9);
    assert_eq!(q["counts"]["dead"], 3);
    assert_eq!(q["config"]["concurrency"], 50);
    let later: Value = http
        .get(format!("{}/v1/queues/later", node.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(later["paused"], true);
}

/// The value of the first sample of `name` whose line holds every label in `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_postgresql_count_committed_changes_of_every_write_path() {
    let Some(pg) = PgHarness::new().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let k = node(&pg, dir.path(), None);
    let http = k.http(Duration::from_secs(10));
    // Single enqueues without keys go through the grouping combiner; a batch with keys through
    // a transaction: both must count.
    for n in 0..5 {
        let (status, _) = post(
            &http,
            format!("{}/v1/jobs", k.base),
            json!({"queue": "pgm", "kind": "k", "payload": {"n": n}}),
        )
        .await
        .unwrap();
        assert_eq!(status, 201);
    }
    let jobs: Vec<Value> = (0..5)
        .map(|n| json!({"queue": "pgm", "kind": "k", "payload": {"b": n}, "idempotency_key": format!("b{n}")}))
        .collect();
    let (status, _) = post(
        &http,
        format!("{}/v1/jobs/batch", k.base),
        json!({"jobs": jobs}),
    )
    .await
    .unwrap();
    assert_eq!(status, 201);
    let (_, leased) = post(
        &http,
        format!("{}/v1/lease", k.base),
        json!({"queues": ["pgm"], "max_jobs": 10, "lease_ms": 30_000}),
    )
    .await
    .unwrap();
    let items: Vec<Value> = leased["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "completed"}))
        .collect();
    assert_eq!(items.len(), 10);
    let (status, _) = post(&http, format!("{}/v1/ack", k.base), json!({"items": items}))
        .await
        .unwrap();
    assert_eq!(status, 200);

    let text = reqwest::get(format!("{}/metrics", k.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let q = "queue=\"pgm\"";
    assert_eq!(
        sample(&text, "keel_jobs_enqueued_total", &[q]),
        10.0,
        "{text}"
    );
    assert_eq!(sample(&text, "keel_jobs_completed_total", &[q]), 10.0);
    assert_eq!(
        sample(&text, "keel_job_queue_wait_seconds_count", &[q]),
        10.0
    );
    assert_eq!(sample(&text, "keel_job_run_seconds_count", &[q]), 10.0);
    assert_eq!(
        sample(&text, "keel_queue_jobs", &[q, "state=\"completed\""]),
        10.0
    );
    assert!(
        sample(
            &text,
            "keel_store_commit_seconds_count",
            &["backend=\"postgres\""]
        ) >= 3.0
    );
    assert!(
        sample(
            &text,
            "keel_store_batch_size_sum",
            &["backend=\"postgres\""]
        ) >= 3.0
    );
    assert_eq!(sample(&text, "keel_store_up", &[]), 1.0);
    k.terminate();
}
