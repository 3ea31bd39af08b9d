//! The real `keel` binary as a child process: crash (`kill -9`) and restart lose nothing that was
//! acknowledged, SIGTERM exits 0, and the listener rules hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::Keel;

async fn post(
    http: &reqwest::Client,
    url: String,
    body: Value,
) -> Result<(u16, Value), reqwest::Error> {
    let res = http.post(url).json(&body).send().await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_job() {
    let dir = tempfile::tempdir().unwrap();
    // key -> job id, for every enqueue the server acknowledged (2xx).
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    // job ids whose completion the server acknowledged.
    let completed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut next_key = 0usize;

    for round in 0..4 {
        let keel = Keel::start(dir.path());
        let base = keel.base.clone();
        let http = keel.http(Duration::from_secs(10));
        let mut tasks = vec![];
        for p in 0..6 {
            let (http, base, acked) = (http.clone(), base.clone(), acked.clone());
            let first = next_key + p * 10_000;
            tasks.push(tokio::spawn(async move {
                for k in first..first + 10_000 {
                    let key = format!("key-{k}");
                    let body = json!({"queue": "crash", "kind": "k", "payload": {"k": k}, "idempotency_key": key});
                    match post(&http, format!("{base}/v1/jobs"), body).await {
                        Ok((201 | 200, job)) => {
                            acked.lock().unwrap().insert(key, job["id"].as_str().unwrap().to_owned());
                        }
                        Ok((status, body)) => panic!("unexpected {status}: {body}"),
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        {
            let (http, base, completed) = (http.clone(), base.clone(), completed.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((200, got)) = post(&http, format!("{base}/v1/lease"), json!({"queues": ["crash"], "max_jobs": 20, "lease_ms": 2000, "wait_ms": 100})).await else { return };
                    // Complete half; abandon the rest so their leases must be recovered.
                    for j in got["jobs"].as_array().unwrap().iter().step_by(2) {
                        let id = j["id"].as_str().unwrap().to_owned();
                        let body = json!({"lease_token": j["lease"]["token"]});
                        match post(&http, format!("{base}/v1/jobs/{id}/complete"), body).await {
                            Ok((200, _)) => {
                                completed.lock().unwrap().insert(id);
                            }
                            Ok((status, body)) => panic!("complete answered {status}: {body}"),
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        // Let load build, then crash at a moment that varies by round.
        tokio::time::sleep(Duration::from_millis(300 + 170 * round)).await;
        keel.kill_9();
        for t in tasks {
            t.await.unwrap();
        }
        next_key += 60_000;
    }

    let acked = acked.lock().unwrap().clone();
    let completed = completed.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "the load generator got work acknowledged ({})",
        acked.len()
    );
    let keel = Keel::start(dir.path());
    let base = keel.base.clone();
    let http = keel.http(Duration::from_secs(10));
    for (key, id) in &acked {
        let res = http
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "acknowledged job {id} ({key}) is missing after kill -9"
        );
        let job: Value = res.json().await.unwrap();
        assert_eq!(job["idempotency_key"], key.as_str());
        if completed.contains(id) {
            assert_eq!(
                job["state"], "completed",
                "acknowledged completion of {id} was lost"
            );
        }
    }
    // Exactly once: re-sending every acknowledged key creates nothing new.
    for (key, id) in acked.iter().take(200) {
        let k: usize = key.trim_start_matches("key-").parse().unwrap();
        let body =
            json!({"queue": "crash", "kind": "k", "payload": {"k": k}, "idempotency_key": key});
        let (status, job) = post(&http, format!("{base}/v1/jobs"), body).await.unwrap();
        assert_eq!((status, job["id"].as_str()), (200, Some(id.as_str())));
    }
    // Abandoned leases are recovered: nothing stays running once the leases (2 s) are over.
    keel.wait_until_nothing_runs("crash").await;
    let before: Value = http
        .get(format!("{base}/v1/queues/crash"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = keel.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // A graceful stop and start serves the same state.
    let keel = Keel::start(dir.path());
    let after: Value = http
        .get(format!("{}/v1/queues/crash", keel.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Time passes between the two reads, so a retry may have become due (scheduled → available).
    let waiting = |q: &Value| {
        q["counts"]["scheduled"].as_i64().unwrap() + q["counts"]["available"].as_i64().unwrap()
    };
    for state in ["completed", "running", "dead", "cancelled"] {
        assert_eq!(
            after["counts"][state], before["counts"][state],
            "{state} changed across a graceful restart"
        );
    }
    assert_eq!(
        waiting(&after),
        waiting(&before),
        "waiting jobs changed across a graceful restart"
    );
    assert!(keel.terminate().success());

    // Offline check of the data dir: the jobs table equals the fold of the events.
    let store = keel_store::SqliteStore::open(
        keel_store::SqliteConfig::new(dir.path()),
        keel_core::Time::from_millis(0),
    )
    .unwrap();
    let report = keel_store::Store::verify(&store).await.unwrap();
    assert!(
        report.mismatched.is_empty(),
        "rows differ from their events: {:?}",
        report.mismatched
    );
    assert!(report.jobs >= acked.len());
    println!(
        "checked {} acknowledged enqueues, {} acknowledged completions, {} jobs, {} events",
        acked.len(),
        completed.len(),
        report.jobs,
        report.events
    );
}

/// A schedule ticking every second through three `kill -9`s: every tick from the first to the
/// last fired exactly once (no duplicate, and with `catch_up: all` no gap across the downtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_ticks_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let keel = Keel::start(dir.path());
        let http = keel.http(Duration::from_secs(10));
        if round == 0 {
            let body = json!({"every_ms": 1000, "catch_up": "all",
                              "job": {"queue": "ticks", "kind": "tick", "payload": {}}});
            let res = http
                .put(format!("{}/v1/schedules/second", keel.base))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
        // Run for a while, then crash at a moment that varies around the tick instants.
        tokio::time::sleep(Duration::from_millis(1_500 + 330 * round)).await;
        keel.kill_9();
        // Stay down across at least one tick.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
    }
    let keel = Keel::start(dir.path());
    let client = keel.client();
    // The restart catches up the ticks missed while down; pausing then freezes the record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.pause_schedule("second").await.unwrap();
    let filter = keel_client::JobFilter {
        queue: Some("ticks".into()),
        limit: Some(500),
        ..Default::default()
    };
    let page = client.list_jobs(&filter).await.unwrap();
    let mut ticks: Vec<i64> = page
        .jobs
        .iter()
        .map(|j| {
            let key = j.idempotency_key.clone().unwrap();
            assert_eq!(
                key,
                format!("schedule:second:{}", j.run_at),
                "key names the tick"
            );
            j.run_at.as_millis()
        })
        .collect();
    ticks.sort();
    assert!(ticks.len() >= 5, "ticks fired: {ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "a tick fired twice or was lost across a crash: {ticks:?}"
        );
    }
    let s = client.schedule("second").await.unwrap();
    assert!(
        s.runs.iter().all(|r| r.outcome == "enqueued"),
        "{:?}",
        s.runs
    );
    assert_eq!(s.last_tick_at.map(|t| t.as_millis()), ticks.last().copied());
}

#[test]
fn no_auth_is_refused_on_a_non_loopback_listener() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--no-auth", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("loopback") && stderr.contains("--no-auth"),
        "{stderr}"
    );
    assert!(!dir.path().join("admin.token").exists());
}

#[tokio::test]
async fn first_start_creates_one_admin_token_file_readable_only_by_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let path = dir.path().join("admin.token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(keel.token.starts_with("keel_") && keel.token.len() == 69);
    // The token works; no token does not.
    let anon = reqwest::Client::new();
    let res = anon
        .get(format!("{}/v1/jobs", keel.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = keel
        .http(Duration::from_secs(5))
        .get(format!("{}/v1/jobs", keel.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A restart keeps the token and does not make another.
    let first = keel.token.clone();
    assert!(keel.terminate().success());
    let keel = Keel::start(dir.path());
    assert_eq!(keel.token, first);
    let tokens = keel.client().tokens().await.unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].role, "admin");
    let logs = keel.logs.lock().unwrap().join("\n");
    assert!(logs.contains("keel is serving."));
    assert!(!logs.contains(&first[5..]), "the secret reached the logs");
}

#[test]
fn serve_help_states_the_flags_and_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "KEEL_LISTEN",
        "127.0.0.1:8470",
        "--data-dir",
        "KEEL_DATA_DIR",
        "./keel-data",
    ] {
        assert!(help.contains(needle), "help lacks {needle}: {help}");
    }
}
