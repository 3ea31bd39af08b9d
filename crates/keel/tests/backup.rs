//! `keel backup`, `keel restore` and `keel verify` against a real server under load, with real
//! files. The restore-after-a-purge test walks docs/runbooks/restore-after-operator-error.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_core::{State, Time};
use keel_store::{SqliteConfig, SqliteStore, Store};
use serde_json::{Value, json};
use uuid::Uuid;

mod common;
use common::Keel;

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "keel failed: {text}");
    text
}

fn now() -> Time {
    Time::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(dir), now()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_every_job_acknowledged_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, restored) = (tmp.path().join("live"), tmp.path().join("restored"));
    let file = tmp.path().join("keel.backup");
    let server = Keel::start(&live);
    let http = server.http(Duration::from_secs(10));

    // Producers and a worker keep writing for the whole backup.
    let acked: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = vec![];
    for p in 0..4 {
        let (http, base, acked, stop) = (
            http.clone(),
            server.base.clone(),
            acked.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let res = http
                    .post(format!("{base}/v1/jobs"))
                    .json(
                        &json!({"queue": "load", "kind": "k", "payload": {"p": p, "n": n},
                                  "idempotency_key": format!("p{p}-{n}")}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201);
                let job: Value = res.json().await.unwrap();
                acked
                    .lock()
                    .unwrap()
                    .push(job["id"].as_str().unwrap().parse().unwrap());
                n += 1;
            }
        }));
    }
    {
        let (http, base, stop) = (http.clone(), server.base.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let res: Value = http
                    .post(format!("{base}/v1/lease"))
                    .json(&json!({"queues": ["load"], "max_jobs": 20, "lease_ms": 30_000}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let items: Vec<Value> = res["jobs"].as_array().unwrap().iter()
                    .map(|j| json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "completed"}))
                    .collect();
                if !items.is_empty() {
                    http.post(format!("{base}/v1/ack")).json(&json!({"items": items})).send().await.unwrap();
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<Uuid> = acked.lock().unwrap().clone();
    let args: Vec<String> = ["backup", "--data-dir", s(&live), "--out", s(&file)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = ok(&out);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let during = acked.lock().unwrap().len();
    assert!(
        during > before.len(),
        "the load did not run during the backup"
    );
    assert!(text.contains("sha256"), "{text}");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("keel.backup.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["format"], 1);
    assert!(manifest["event_high_water"].as_i64().unwrap() > 0);
    assert!(manifest["jobs"].as_u64().unwrap() >= before.len() as u64);

    ok(&keel(&["verify", "--backup", s(&file)]));
    let text = ok(&keel(&[
        "restore",
        "--from",
        s(&file),
        "--data-dir",
        s(&restored),
    ]));
    assert!(text.contains("verified"), "{text}");
    ok(&keel(&["verify", "--data-dir", s(&restored)]));
    let store = open(&restored).await;
    for id in &before {
        assert!(
            store.get_job(*id).await.unwrap().is_some(),
            "job {id} was acknowledged before the backup began and is not in it"
        );
    }
    let report = store.verify().await.unwrap();
    assert!(report.mismatched.is_empty());
    assert_eq!(report.jobs as u64, manifest["jobs"].as_u64().unwrap());
    store.close().await.unwrap();
    server.terminate();

    // A restore never overwrites a store.
    let out = keel(&["restore", "--from", s(&file), "--data-dir", s(&restored)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a store"));

    // A damaged backup is refused by verify and restore alike, before anything is written.
    let damaged = tmp.path().join("damaged.backup");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&damaged, bytes).unwrap();
    std::fs::copy(
        tmp.path().join("keel.backup.manifest.json"),
        tmp.path().join("damaged.backup.manifest.json"),
    )
    .unwrap();
    for args in [
        vec!["verify", "--backup", s(&damaged)],
        vec![
            "restore",
            "--from",
            s(&damaged),
            "--data-dir",
            s(&tmp.path().join("never")),
        ],
    ] {
        let out = keel(&args);
        assert!(!out.status.success(), "{args:?} accepted a damaged backup");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("does not match its manifest"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!tmp.path().join("never").join("keel.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_moment_before_a_purge_brings_the_purged_jobs_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, restored) = (tmp.path().join("live"), tmp.path().join("restored"));
    let file = tmp.path().join("after-purge.backup");
    let server = Keel::start(&live);
    let http = server.http(Duration::from_secs(10));
    let base = server.base.clone();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("{base}{path}")).json(&body);
        async move {
            let res = req.send().await.unwrap();
            assert!(res.status().is_success(), "{}", res.status());
            res.json::<Value>().await.unwrap()
        }
    };

    // Five jobs fail for good and sit in the dead-letter state; one other job completes.
    let mut dead = vec![];
    for n in 0..5 {
        let job = post(
            "/v1/jobs",
            json!({"queue": "billing", "kind": "charge", "payload": {"n": n}, "max_attempts": 1}),
        )
        .await;
        dead.push(job["id"].as_str().unwrap().parse::<Uuid>().unwrap());
    }
    let leased = post(
        "/v1/lease",
        json!({"queues": ["billing"], "max_jobs": 5, "lease_ms": 30_000}),
    )
    .await;
    let items: Vec<Value> = leased["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            json!({"id": j["id"], "lease_token": j["lease"]["token"], "outcome": "failed",
                        "error": {"message": "card declined", "retryable": false}})
        })
        .collect();
    assert_eq!(items.len(), 5);
    post("/v1/ack", json!({"items": items})).await;

    // The moment to go back to, then the mistake: the dead letters are purged.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before_purge = now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let purged = post("/v1/queues/billing/purge", json!({"state": "dead"})).await;
    assert_eq!(purged["purged"], 5);
    let later = post(
        "/v1/jobs",
        json!({"queue": "billing", "kind": "charge", "payload": {"late": true}}),
    )
    .await;
    let later: Uuid = later["id"].as_str().unwrap().parse().unwrap();

    // The runbook: back up now (the server keeps running), restore to before the purge.
    ok(&keel(&[
        "backup",
        "--data-dir",
        s(&live),
        "--out",
        s(&file),
    ]));
    server.terminate();
    let text = ok(&keel(&[
        "restore",
        "--from",
        s(&file),
        "--to-time",
        &before_purge.to_string(),
        "--data-dir",
        s(&restored),
    ]));
    assert!(text.contains("rewound"), "{text}");
    ok(&keel(&["verify", "--data-dir", s(&restored)]));

    let store = open(&restored).await;
    for id in &dead {
        let job = store.get_job(*id).await.unwrap();
        assert_eq!(
            job.map(|j| j.state),
            Some(State::Dead),
            "purged job {id} did not come back"
        );
    }
    assert!(
        store.get_job(later).await.unwrap().is_none(),
        "a job created after the moment survived"
    );
    let audit = store.audit_log(None, 10).await.unwrap();
    assert!(
        audit.iter().any(|a| a.action == "store.restored"),
        "{audit:?}"
    );
    assert!(
        !audit.iter().any(|a| a.action.contains("purge")),
        "the purge is still in the audit log"
    );
    store.close().await.unwrap();

    // --to-time after the backup cannot be honoured and says so.
    let out = keel(&[
        "restore",
        "--from",
        s(&file),
        "--to-time",
        "2999-01-01T00:00:00Z",
        "--data-dir",
        s(&tmp.path().join("x")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("after the backup was taken"));
}
