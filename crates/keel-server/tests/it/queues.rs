//! Queue settings, pause and resume, purge, health.

use serde_json::{Value, json};

use crate::helpers::{TestServer, job};

#[tokio::test]
async fn put_sets_and_null_resets_settings() {
    let s = TestServer::start().await;
    let q = s.call("PUT", "/v1/queues/reports", Some(json!({"concurrency": 4, "max_attempts": 5, "backoff": {"initial_ms": 10, "max_ms": 20}})), 200).await;
    assert_eq!(
        (
            q["config"]["concurrency"].as_i64(),
            q["config"]["max_attempts"].as_i64()
        ),
        (Some(4), Some(5))
    );
    let created = s.enqueue(job("reports")).await;
    assert_eq!(created["max_attempts"], 5, "jobs take the queue's defaults");
    assert_eq!(
        created["backoff"],
        json!({"initial_ms": 10, "max_ms": 20, "jitter": 0.25})
    );
    let q = s
        .call(
            "PUT",
            "/v1/queues/reports",
            Some(json!({"max_attempts": null})),
            200,
        )
        .await;
    assert_eq!(
        q["config"]["max_attempts"], 20,
        "null goes back to the server default"
    );
    assert_eq!(
        q["config"]["concurrency"], 4,
        "absent fields are left alone"
    );
    let listed = s.get("/v1/queues", 200).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["counts"]["available"], 1);
    assert!(listed[0]["oldest_available_age_ms"].as_i64().unwrap() >= 0);
}

#[tokio::test]
async fn a_paused_queue_hands_out_nothing_until_resumed() {
    let s = TestServer::start().await;
    s.enqueue(job("q")).await;
    assert_eq!(
        s.post("/v1/queues/q/pause", json!({}), 200).await["paused"],
        true
    );
    assert!(s.lease("q", 1, 1000).await.is_empty());
    assert_eq!(
        s.post("/v1/queues/q/resume", json!({}), 200).await["paused"],
        false
    );
    assert_eq!(s.lease("q", 1, 1000).await.len(), 1);
}

#[tokio::test]
async fn purge_deletes_by_state_and_keeps_the_history() {
    let s = TestServer::start().await;
    let a = s.enqueue(job("q")).await["id"].as_str().unwrap().to_owned();
    let b = s.enqueue(job("q")).await["id"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/jobs/{b}/cancel"), json!({}), 200)
        .await;
    assert_eq!(
        s.post("/v1/queues/q/purge", json!({"state": "cancelled"}), 200)
            .await,
        json!({"purged": 1})
    );
    s.get(&format!("/v1/jobs/{b}"), 404).await;
    let events = s.get(&format!("/v1/jobs/{b}/events"), 200).await;
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "purged");
    assert_eq!(s.job(&a).await["state"], "available");
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/healthz", 200).await, json!({"status": "ok"}));
    assert_eq!(s.get("/readyz", 200).await, json!({"status": "ready"}));
    let _: Value = s.get("/v1/queues", 200).await;
}
