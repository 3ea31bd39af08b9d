//! The crash torture test: the real `keel serve` under continuous load (producers with
//! idempotency keys; workers that complete, fail, abandon, and complete too late) is killed with
//! `kill -9` at random moments and restarted, again and again. At the end every promise is
//! checked against the test's own log of what the server acknowledged:
//!
//! - every acknowledged enqueue exists, exactly once per idempotency key, and no job exists that
//!   nobody enqueued;
//! - every job is final or legitimately pending (nothing stays `running` once leases expire);
//! - every acknowledged completion is in the job's history, made with the lease that was current
//!   (the `completed` event follows a `leased` event whose token hash is the worker's token, with
//!   only heartbeats between): no stale lease ever decided an outcome;
//! - the jobs table equals the fold of the events.
//!
//! It runs on SQLite, and on PostgreSQL when `KEEL_TEST_DATABASE_URL` is set (the keel process
//! is killed; the database stays up and must never see a broken promise either).
//! `KEEL_TORTURE_KILLS` sets the number of crashes (default 20); `KEEL_TORTURE_SEED` the seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::{EventData, State};
use serde_json::{Value, json};

mod common;
use common::Keel;

/// A small deterministic generator, so a failing run can be repeated with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Default)]
struct Log {
    /// Idempotency key → job id, for every enqueue answered 2xx.
    acked: HashMap<String, String>,
    /// Keys sent whose answer never came (the server died): re-sent after the restart.
    unanswered: HashSet<String>,
    /// Job id → lease token of every completion answered 200.
    completed: HashMap<String, String>,
    /// Completions refused with 409 (a lease that was no longer current): expected, counted.
    refused_stale: u64,
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Result<(u16, Value), ()> {
    let res = http.post(url).json(&body).send().await.map_err(|_| ())?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

fn enqueue_body(key: &str) -> Value {
    json!({"queue": "torture", "kind": "k", "payload": {"key": key}, "idempotency_key": key,
           "max_attempts": 50, "backoff": {"initial_ms": 50, "max_ms": 200}})
}

async fn producer(
    http: reqwest::Client,
    base: String,
    log: Arc<Mutex<Log>>,
    first: u64,
    stop: Arc<AtomicBool>,
) {
    let mut k = first;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("t-{k}");
        k += 1;
        log.lock().unwrap().unanswered.insert(key.clone());
        match post(&http, format!("{base}/v1/jobs"), enqueue_body(&key)).await {
            Ok((200 | 201, job)) => {
                let mut l = log.lock().unwrap();
                l.unanswered.remove(&key);
                l.acked.insert(key, job["id"].as_str().unwrap().to_owned());
            }
            Ok((status, body)) => panic!("enqueue answered {status}: {body}"),
            Err(()) => return, // the server is gone; the key stays unanswered
        }
        // Producers slower than the workers, so jobs also get leased, failed and finished.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn report(
    http: &reqwest::Client,
    base: &str,
    log: &Mutex<Log>,
    id: String,
    path: &str,
    body: Value,
) -> Result<(), ()> {
    let token = body["lease_token"].as_str().unwrap_or_default().to_owned();
    match post(http, format!("{base}/v1/jobs/{id}/{path}"), body).await {
        Ok((200, _)) if path == "complete" => {
            log.lock().unwrap().completed.insert(id, token);
        }
        Ok((200, _)) => {}
        Ok((409, _)) => log.lock().unwrap().refused_stale += 1,
        Ok((status, body)) => panic!("{path} answered {status}: {body}"),
        Err(()) => return Err(()),
    }
    Ok(())
}

async fn worker(
    http: reqwest::Client,
    base: String,
    log: Arc<Mutex<Log>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let lease = json!({"queues": ["torture"], "max_jobs": 10, "lease_ms": 400, "wait_ms": 100});
        let Ok((200, got)) = post(&http, format!("{base}/v1/lease"), lease).await else {
            return;
        };
        for j in got["jobs"].as_array().unwrap() {
            let id = j["id"].as_str().unwrap().to_owned();
            let token = j["lease"]["token"].as_str().unwrap().to_owned();
            let roll = rng.below(100);
            let done = match roll {
                0..70 => {
                    report(
                        &http,
                        &base,
                        &log,
                        id,
                        "complete",
                        json!({"lease_token": token}),
                    )
                    .await
                }
                70..85 => {
                    let body = json!({"lease_token": token, "error": {"message": "transient"}});
                    report(&http, &base, &log, id, "fail", body).await
                }
                85..93 => continue, // abandoned: its lease must expire and count as a failed attempt
                _ => {
                    // Too late: once the lease (400 ms) has expired the job may be someone
                    // else's; the answer must then be 409, and a 200 must still be current.
                    let (http, base, log) = (http.clone(), base.clone(), log.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                        let _ = report(
                            &http,
                            &base,
                            &log,
                            id,
                            "complete",
                            json!({"lease_token": token}),
                        )
                        .await;
                    });
                    Ok(())
                }
            };
            if done.is_err() {
                return;
            }
        }
    }
}

/// Where the tortured server keeps its data.
enum Backend {
    Sqlite,
    Postgres(keel_store::testing::PgHarness),
}

impl Backend {
    fn start(&self, dir: &std::path::Path) -> Keel {
        match self {
            Backend::Sqlite => Keel::start(dir),
            Backend::Postgres(pg) => Keel::start_with(
                dir,
                "127.0.0.1:0",
                &["--database", &pg.url, "--database-schema", &pg.schema],
            ),
        }
    }

    async fn open(&self, dir: &std::path::Path) -> Box<dyn keel_store::Store> {
        let t = keel_core::Time::from_millis(0);
        match self {
            Backend::Sqlite => Box::new(
                keel_store::SqliteStore::open(keel_store::SqliteConfig::new(dir), t).unwrap(),
            ),
            Backend::Postgres(pg) => {
                Box::new(keel_store::PgStore::open(pg.config(), t).await.unwrap())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_again_and_again_under_mixed_load_breaks_no_promise() {
    torture(&Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_again_and_again_on_postgres_breaks_no_promise() {
    let Some(pg) = keel_store::testing::PgHarness::new().await else {
        return;
    };
    torture(&Backend::Postgres(pg)).await;
}

async fn torture(backend: &Backend) {
    let kills: u64 = std::env::var("KEEL_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("KEEL_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("torture: {kills} crashes, seed {seed} (KEEL_TORTURE_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<Mutex<Log>> = Arc::default();
    for round in 0..kills {
        let keel = backend.start(dir.path());
        let http = keel.http(Duration::from_secs(5));
        let base = keel.base.clone();
        // Keys left unanswered by the last crash are re-sent first: exactly once, or created now.
        let retry: Vec<String> = log.lock().unwrap().unanswered.iter().cloned().collect();
        for key in retry {
            if let Ok((200 | 201, job)) =
                post(&http, format!("{base}/v1/jobs"), enqueue_body(&key)).await
            {
                let mut l = log.lock().unwrap();
                l.unanswered.remove(&key);
                l.acked.insert(key, job["id"].as_str().unwrap().to_owned());
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = vec![];
        for p in 0..2 {
            tasks.push(tokio::spawn(producer(
                http.clone(),
                base.clone(),
                log.clone(),
                round * 1_000_000 + p * 100_000,
                stop.clone(),
            )));
        }
        for w in 0..4 {
            tasks.push(tokio::spawn(worker(
                http.clone(),
                base.clone(),
                log.clone(),
                seed ^ (round << 8) ^ w,
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.below(1_200))).await;
        keel.kill_9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }

    // Recovery: restart, re-send what is still unanswered, let every lease expire.
    let keel = backend.start(dir.path());
    let http = keel.http(Duration::from_secs(10));
    let base = keel.base.clone();
    let retry: Vec<String> = log.lock().unwrap().unanswered.iter().cloned().collect();
    for key in retry {
        let (status, job) = post(&http, format!("{base}/v1/jobs"), enqueue_body(&key))
            .await
            .unwrap();
        assert!(
            status == 200 || status == 201,
            "re-sending {key}: {status} {job}"
        );
        let mut l = log.lock().unwrap();
        l.unanswered.remove(&key);
        l.acked.insert(key, job["id"].as_str().unwrap().to_owned());
    }
    keel.wait_until_nothing_runs("torture").await;
    assert!(keel.terminate().success());

    // The offline check of the data dir against the log.
    let log = std::mem::take(&mut *log.lock().unwrap());
    let store = backend.open(dir.path()).await;
    let store: &dyn keel_store::Store = &*store;
    let mut jobs = BTreeMap::new();
    let mut after = None;
    loop {
        let page = store.export_jobs(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for j in page {
            jobs.insert(j.id.to_string(), j);
        }
    }
    let mut events: HashMap<String, Vec<EventData>> = HashMap::new();
    let mut seq = 0;
    loop {
        let page = store.export_events(seq, 5_000).await.unwrap();
        let Some(last) = page.last() else { break };
        seq = last.seq;
        for e in page {
            events.entry(e.job_id.to_string()).or_default().push(e.data);
        }
    }
    let mut problems: Vec<String> = vec![];

    // 1. Acknowledged enqueues exist, once per key; no job nobody enqueued.
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for (id, j) in &jobs {
        by_key
            .entry(j.idempotency_key.clone().unwrap_or_default())
            .or_default()
            .push(id.clone());
    }
    for (key, id) in &log.acked {
        match by_key.get(key).map(Vec::as_slice) {
            Some([only]) if only == id => {}
            other => problems.push(format!(
                "acknowledged enqueue {key} → {id}: found {other:?}"
            )),
        }
    }
    for (key, ids) in &by_key {
        if !log.acked.contains_key(key) {
            problems.push(format!(
                "jobs {ids:?} with key {key:?} that no acknowledged enqueue created"
            ));
        }
    }
    // 2. Final or legitimately pending.
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, j) in &jobs {
        *states.entry(j.state.as_str()).or_default() += 1;
        if j.state == State::Running {
            problems.push(format!(
                "job {id} is still running after every lease expired"
            ));
        }
    }
    // 3. Acknowledged completions were made with the current lease.
    for (id, token) in &log.completed {
        let Some(history) = events.get(id) else {
            problems.push(format!(
                "acknowledged completion of {id}: the job has no events"
            ));
            continue;
        };
        let Some(done) = history
            .iter()
            .position(|e| matches!(e, EventData::Completed { .. }))
        else {
            problems.push(format!(
                "acknowledged completion of {id} is not in its history"
            ));
            continue;
        };
        let lease = history[..done].iter().rev().find_map(|e| match e {
            EventData::Leased { token_hash, .. } => Some(token_hash.clone()),
            _ => None,
        });
        if lease.as_deref() != Some(keel_core::lease::token_hash(token).as_str()) {
            problems.push(format!(
                "job {id} was completed with a lease that was not current"
            ));
        }
    }
    // 4. In every history, a completion directly follows its lease (heartbeats aside), and
    //    happens at most once.
    for (id, history) in &events {
        let completions = history
            .iter()
            .filter(|e| matches!(e, EventData::Completed { .. }))
            .count();
        if completions > 1 {
            problems.push(format!("job {id} completed {completions} times"));
        }
        for (i, e) in history.iter().enumerate() {
            if matches!(e, EventData::Completed { .. }) {
                let before = history[..i]
                    .iter()
                    .rev()
                    .find(|e| !matches!(e, EventData::Heartbeat { .. }));
                if !matches!(before, Some(EventData::Leased { .. })) {
                    problems.push(format!(
                        "job {id}: completed after {:?}, not after its lease",
                        before.map(EventData::type_name)
                    ));
                }
            }
        }
    }
    // 5. Rows equal the fold of events.
    let report = store.verify().await.unwrap();
    for id in &report.mismatched {
        problems.push(format!("job {id}: row differs from the fold of its events"));
    }
    store.close().await.unwrap();

    println!(
        "torture: checked {} acknowledged enqueues, {} acknowledged completions ({} stale completions refused), \
         {} jobs {:?}, {} jobs' histories, rows == fold of events over {} jobs",
        log.acked.len(),
        log.completed.len(),
        log.refused_stale,
        jobs.len(),
        states,
        events.len(),
        report.jobs
    );
    assert!(
        log.acked.len() > 100,
        "the load never got going: {} acknowledged enqueues",
        log.acked.len()
    );
    assert!(
        problems.is_empty(),
        "{} broken promises (seed {seed}):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
