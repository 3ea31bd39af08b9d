//! Enqueue, idempotency, batches, reads, listing and history.

use serde_json::{Value, json};

use crate::helpers::{TestServer, job};

#[tokio::test]
async fn enqueue_answers_201_with_the_stored_job_and_its_history() {
    let s = TestServer::start().await;
    let mut body = job("emails");
    body["priority"] = json!(7);
    body["tags"] = json!(["tenant:7"]);
    body["max_attempts"] = json!(3);
    let created = s.enqueue(body).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(created["state"], "available");
    assert_eq!(
        (
            created["priority"].as_i64(),
            created["max_attempts"].as_i64(),
            created["attempt"].as_i64()
        ),
        (Some(7), Some(3), Some(0))
    );
    assert_eq!(created["payload"], json!({"n": 1}));
    let at = created["created_at"].as_str().unwrap();
    assert!(
        at.ends_with('Z') && at.len() == 24,
        "RFC 3339 UTC with milliseconds: {at}"
    );
    assert_eq!(
        s.job(id).await,
        created,
        "a read returns what the write acknowledged"
    );
    let events = s.get(&format!("/v1/jobs/{id}/events"), 200).await;
    assert_eq!(events["events"][0]["type"], "enqueued");
    assert!(events["events"][0]["seq"].as_i64().is_some());
}

#[tokio::test]
async fn same_key_and_body_replays_and_a_different_body_conflicts() {
    let s = TestServer::start().await;
    let body = job("q");
    let first = s
        .http
        .post(s.url("/v1/jobs"))
        .header("idempotency-key", "signup-42")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["idempotency_key"], "signup-42");
    let mut same = body.clone();
    same["idempotency_key"] = json!("signup-42");
    let again = s
        .http
        .post(s.url("/v1/jobs"))
        .json(&same)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let mut different = same.clone();
    different["payload"] = json!({"n": 2});
    let p = s.post("/v1/jobs", different, 409).await;
    assert_eq!(p["type"], "urn:keel:problem:idempotency-key-reused");
    assert_eq!(p["errors"][0]["pointer"], "/idempotency_key");
    assert_eq!(s.job_count().await, 1);
}

#[tokio::test]
async fn a_batch_is_all_or_nothing_in_request_order() {
    let s = TestServer::start().await;
    let mut keyed = job("q");
    keyed["idempotency_key"] = json!("k1");
    let original = s.enqueue(keyed.clone()).await;
    let out = s
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [job("a"), keyed.clone(), job("b")]}),
            201,
        )
        .await;
    let jobs = out["jobs"].as_array().unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| j["queue"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "q", "b"]
    );
    assert_eq!(
        jobs[1], original,
        "a replayed item comes back as the original job"
    );
    let mut conflicting = keyed;
    conflicting["priority"] = json!(1);
    let p = s
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [job("c"), conflicting]}),
            409,
        )
        .await;
    assert_eq!(p["errors"][0]["pointer"], "/jobs/1/idempotency_key");
    assert_eq!(
        s.job_count().await,
        3,
        "the conflicting batch wrote nothing"
    );
}

#[tokio::test]
async fn listing_pages_newest_first_with_a_stable_cursor_and_filters() {
    let s = TestServer::start().await;
    let mut ids = vec![];
    for i in 0..7 {
        let mut b = job(if i % 2 == 0 { "even" } else { "odd" });
        if i == 3 {
            b["kind"] = json!("special");
            b["tags"] = json!(["vip"]);
        }
        ids.push(s.enqueue(b).await["id"].as_str().unwrap().to_owned());
    }
    let mut seen = vec![];
    let mut url = "/v1/jobs?limit=3".to_owned();
    loop {
        let page = s.get(&url, 200).await;
        seen.extend(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        s.enqueue(job("even")).await; // concurrent writes must not disturb later pages
        match page["next_cursor"].as_str() {
            Some(c) => url = format!("/v1/jobs?limit=3&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(seen[..7], expected[..], "no duplicates, no gaps");
    assert_eq!(
        s.get("/v1/jobs?queue=odd", 200).await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        s.get("/v1/jobs?kind=special", 200).await["jobs"][0]["id"],
        ids[3]
    );
    assert_eq!(
        s.get("/v1/jobs?tag=vip", 200).await["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.get("/v1/jobs?state=running", 200).await["jobs"],
        json!([])
    );
}

#[tokio::test]
async fn delayed_jobs_wait_and_priorities_order_hand_out() {
    let s = TestServer::start().await;
    let mut later = job("q");
    later["delay_ms"] = json!(60_000);
    let later = s.enqueue(later).await;
    assert_eq!(later["state"], "scheduled");
    let mut at = job("q");
    at["run_at"] = json!("2099-01-01T00:00:00.000Z");
    assert_eq!(s.enqueue(at).await["state"], "scheduled");
    let low = s.enqueue(job("q")).await;
    let mut high = job("q");
    high["priority"] = json!(100);
    let high = s.enqueue(high).await;
    let leased = s.lease("q", 10, 30_000).await;
    let ids: Vec<_> = leased.iter().map(|j| j["id"].clone()).collect();
    assert_eq!(
        ids,
        vec![high["id"].clone(), low["id"].clone()],
        "scheduled jobs are not handed out"
    );
}

#[tokio::test]
async fn payloads_are_stored_compact_with_key_order_kept() {
    let s = TestServer::start().await;
    let body = "{\"queue\":\"q\",\"kind\":\"k\",\"payload\": { \"z\" : [1, 2],\n \"a\": \" spaced  string \" }}";
    let res = s
        .http
        .post(s.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let text = res.text().await.unwrap();
    assert!(
        text.contains(r#""payload":{"z":[1,2],"a":" spaced  string "}"#),
        "{text}"
    );
}
