//! `keel serve` logs: JSON lines when stdout is not a terminal, each line about a request or a
//! job carrying its ids, and never a payload or a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::Keel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_request_and_job_ids_and_no_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path());
    let http = k.http(Duration::from_secs(10));
    const SECRET: &str = "card-4242-4242-4242-4242";

    let res = http
        .post(format!("{}/v1/jobs", k.base))
        .header("x-request-id", "req-logs-1")
        .json(&json!({"queue": "logq", "kind": "charge", "payload": {"card": SECRET}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["x-request-id"], "req-logs-1");
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let leased: Value = http
        .post(format!("{}/v1/lease", k.base))
        .header("x-request-id", "req-logs-2")
        .json(&json!({"queues": ["logq"], "lease_ms": 30_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = leased["jobs"][0]["lease"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = http
        .post(format!("{}/v1/jobs/{id}/complete", k.base))
        .json(&json!({"lease_token": token, "result": {"receipt": SECRET}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // A lease of several jobs logs one line that counts them.
    let job = json!({"queue": "logq", "kind": "charge", "payload": {}});
    let res = http
        .post(format!("{}/v1/jobs/batch", k.base))
        .json(&json!({"jobs": [job, job, job]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = http
        .post(format!("{}/v1/lease", k.base))
        .header("x-request-id", "req-logs-3")
        .json(&json!({"queues": ["logq"], "max_jobs": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The lines arrive through a pipe; wait for the last ones we expect. A request's "Request
    // served." line is written as its response leaves, so it may come after the client has the
    // response: wait for the five requests' lines too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = k.logs.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("Outcome recorded."))
            && lines.iter().any(|l| l.contains("Jobs leased."))
            && lines
                .iter()
                .filter(|l| l.contains("Request served."))
                .count()
                >= 5
        {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outcome, lease and five request lines did not all arrive: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for v in &parsed {
        assert!(
            v["timestamp"].is_string() && v["level"].is_string() && v["message"].is_string(),
            "{v}"
        );
    }
    let line = |message: &str| {
        parsed
            .iter()
            .find(|v| v["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {parsed:#?}"))
    };
    let enqueued = line("Job enqueued.");
    assert_eq!(enqueued["job_id"], id.as_str());
    assert_eq!(enqueued["queue"], "logq");
    assert_eq!(enqueued["kind"], "charge");
    assert_eq!(enqueued["span"]["request_id"], "req-logs-1");
    let leased = line("Job leased.");
    assert_eq!(leased["job_id"], id.as_str());
    assert_eq!(leased["span"]["request_id"], "req-logs-2");
    let many = line("Jobs leased.");
    assert_eq!(many["jobs"], 3);
    assert_eq!(many["span"]["request_id"], "req-logs-3");
    assert!(
        !parsed
            .iter()
            .any(|v| v["message"] == "Job leased." && v["span"]["request_id"] == "req-logs-3"),
        "a lease of several jobs logged a line per job at info"
    );
    let outcome = line("Outcome recorded.");
    assert_eq!(outcome["job_id"], id.as_str());
    assert_eq!(outcome["queue"], "logq");
    assert_eq!(outcome["kind"], "charge");
    // A request without an id gets one, and its lines carry it.
    let generated = outcome["span"]["request_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{outcome}");
    let served = parsed
        .iter()
        .filter(|v| v["message"] == "Request served.")
        .count();
    assert!(served >= 5, "one line per request");

    let all = lines.join("\n");
    assert!(
        !all.contains(SECRET),
        "a payload or result reached the logs"
    );
    assert!(!all.contains(&k.token), "the admin token reached the logs");
}
