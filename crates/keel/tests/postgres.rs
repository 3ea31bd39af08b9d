//! keel on PostgreSQL as real processes: several nodes sharing one database (one of them
//! `kill -9`-ed under load) complete every job exactly once, and an outage of the database
//! itself gives fast 503s and loses nothing acknowledged. Needs `KEEL_TEST_DATABASE_URL`;
//! without it each test says it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
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
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = vec![];
    for w in 0..6 {
        let (http, bases, acked, stop) = (
            http.clone(),
            bases.clone(),
            acked_completions.clone(),
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
                    // The node died with these leases: they expire and run again elsewhere.
                    _ => at = (at + 1) % bases.len(),
                }
            }
        }));
    }

    // Producers: batches of 1,000 with idempotency keys, spread over the nodes.
    let mut enqueued: HashMap<String, String> = HashMap::new();
    let mut third = Some(third);
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
            // Midway, with leases outstanding on every node, the third node dies.
            tokio::time::sleep(Duration::from_millis(200)).await;
            third.take().unwrap().kill_9();
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
    // every enqueued job's was acknowledged once.
    let acked = acked_completions.lock().unwrap().clone();
    let twice: Vec<_> = acked.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "completions acknowledged twice: {twice:?}"
    );
    let missing: Vec<_> = enqueued
        .values()
        .filter(|id| !acked.contains_key(*id))
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
        events.get("lease_expired").copied().unwrap_or(0) > 0,
        "the killed node held leases that had to expire: {events:?}"
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
