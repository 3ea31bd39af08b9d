//! Bad input gets a precise RFC 9457 problem and writes nothing.

use serde_json::{Value, json};

use crate::helpers::{TestServer, job, pointers};

async fn raw(
    s: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, String, Value) {
    let mut req = s.http.post(s.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_bad_enqueue_gets_its_own_problem_and_writes_nothing() {
    let s = TestServer::start().await;
    let deep = format!(
        "{{\"queue\":\"q\",\"kind\":\"k\",\"payload\":{}1{}}}",
        "[".repeat(70),
        "]".repeat(70)
    );
    let big_payload =
        json!({"queue": "q", "kind": "k", "payload": "x".repeat((1 << 20) + 10)}).to_string();
    // (what, content type, body, status, problem slug, error pointers)
    type Case<'a> = (&'a str, Option<&'a str>, String, u16, &'a str, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("malformed JSON", Some("application/json"), "{\"queue\":".into(), 400, "malformed-json", vec![]),
        ("trailing garbage", Some("application/json"), format!("{} x", job("q")), 400, "malformed-json", vec![]),
        ("no content type", None, job("q").to_string(), 415, "unsupported-media-type", vec![]),
        ("text/plain", Some("text/plain"), job("q").to_string(), 415, "unsupported-media-type", vec![]),
        ("unknown field", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"colour":"red"}).to_string(), 422, "validation-failed", vec!["/colour"]),
        ("missing payload", Some("application/json"), json!({"queue":"q","kind":"k"}).to_string(), 422, "validation-failed", vec!["/payload"]),
        ("wrong type", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"priority":"high"}).to_string(), 422, "validation-failed", vec!["/priority"]),
        ("priority out of range", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"priority":1001}).to_string(), 422, "validation-failed", vec!["/priority"]),
        ("bad names", Some("application/json"), json!({"queue":"has space","kind":"","payload":1,"tags":["ok","no/slash"]}).to_string(), 422, "validation-failed", vec!["/queue", "/kind", "/tags/1"]),
        ("name too long", Some("application/json"), json!({"queue":"q".repeat(129),"kind":"k","payload":1}).to_string(), 422, "validation-failed", vec!["/queue"]),
        ("run_at and delay_ms", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"run_at":"2026-11-23T06:00:00.000Z","delay_ms":5}).to_string(), 422, "validation-failed", vec!["/delay_ms"]),
        ("bad run_at", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"run_at":"tomorrow"}).to_string(), 422, "validation-failed", vec!["/run_at"]),
        ("negative delay", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"delay_ms":-1}).to_string(), 422, "validation-failed", vec!["/delay_ms"]),
        ("max_attempts 0", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"max_attempts":0}).to_string(), 422, "validation-failed", vec!["/max_attempts"]),
        ("bad backoff", Some("application/json"), json!({"queue":"q","kind":"k","payload":1,"backoff":{"initial_ms":10,"max_ms":5,"jitter":2}}).to_string(), 422, "validation-failed", vec!["/backoff/max_ms", "/backoff/jitter"]),
        ("too deep", Some("application/json"), deep, 422, "validation-failed", vec![""]),
        ("payload over 1 MiB", Some("application/json"), big_payload, 422, "validation-failed", vec!["/payload"]),
        ("body over 4 MiB", Some("application/json"), json!({"queue":"q","kind":"k","payload":"x".repeat(5 << 20)}).to_string(), 413, "payload-too-large", vec![]),
    ];
    for (what, ct, body, status, slug, want) in cases {
        let (got, content_type, problem) = raw(&s, "/v1/jobs", ct, body).await;
        assert_eq!(got, status, "{what}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{what}");
        assert_eq!(
            problem["type"],
            format!("urn:keel:problem:{slug}"),
            "{what}"
        );
        assert_eq!(problem["status"], status, "{what}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{what}: {problem}"
        );
        assert_eq!(pointers(&problem), want, "{what}: {problem}");
    }
    assert_eq!(s.job_count().await, 0, "nothing was written");
    assert_eq!(
        s.get("/v1/queues", 200).await,
        json!([]),
        "no queue was created"
    );
}

#[tokio::test]
async fn idempotency_header_must_agree_with_the_body() {
    let s = TestServer::start().await;
    let mut body = job("q");
    body["idempotency_key"] = json!("a");
    let res = s
        .http
        .post(s.url("/v1/jobs"))
        .header("idempotency-key", "b")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(pointers(&problem), ["/idempotency_key"]);
    let res = s
        .http
        .post(s.url("/v1/jobs"))
        .header("idempotency-key", "has space")
        .json(&job("q"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(s.job_count().await, 0);
}

#[tokio::test]
async fn a_batch_reports_every_bad_item_by_pointer_and_writes_nothing() {
    let s = TestServer::start().await;
    let p = s.post("/v1/jobs/batch", json!({"jobs": [job("q"), {"queue": "bad name", "kind": "k", "payload": 1}, job("q"), {"queue": "q", "kind": "k", "payload": 1, "priority": 5000}]}), 422).await;
    assert_eq!(pointers(&p), ["/jobs/1/queue", "/jobs/3/priority"]);
    let p = s
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [job("q"), {"queue": "q", "kind": "k"}]}),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/jobs/1/payload"]);
    let p = s.post("/v1/jobs/batch", json!({"jobs": []}), 422).await;
    assert_eq!(pointers(&p), ["/jobs"]);
    let many: Vec<Value> = (0..1001).map(|_| job("q")).collect();
    s.post("/v1/jobs/batch", json!({"jobs": many}), 422).await;
    assert_eq!(s.job_count().await, 0);
}

#[tokio::test]
async fn worker_and_queue_inputs_are_checked() {
    let s = TestServer::start().await;
    let p = s
        .post(
            "/v1/lease",
            json!({"queues": [], "max_jobs": 0, "wait_ms": 60001, "lease_ms": 0}),
            422,
        )
        .await;
    assert_eq!(
        pointers(&p),
        ["/queues", "/max_jobs", "/wait_ms", "/lease_ms"]
    );
    let id = s.enqueue(job("q")).await["id"].as_str().unwrap().to_owned();
    let p = s
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease_token": "t", "error": {"message": "m"}, "retry_in_ms": -5}),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/retry_in_ms"]);
    let p = s
        .post(
            &format!("/v1/jobs/{id}/fail"),
            json!({"lease_token": "t"}),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/error"]);
    let p = s.post("/v1/ack", json!({"items": [{"id": id, "lease_token": "t", "outcome": "failed"}, {"id": "nope", "lease_token": "t", "outcome": "completed"}]}), 422).await;
    assert_eq!(pointers(&p), ["/items/0/error", "/items/1/id"]);
    let p = s
        .post(
            "/v1/ack",
            json!({"items": [{"id": id, "lease_token": "t", "outcome": "maybe"}]}),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/items/0/outcome"]);
    let p = s
        .call(
            "PUT",
            "/v1/queues/q",
            Some(json!({"concurrency": 0, "max_attempts": 1001, "fairness": "strict"})),
            422,
        )
        .await;
    assert_eq!(
        pointers(&p),
        ["/fairness"],
        "unsupported settings are refused, not ignored"
    );
    let p = s
        .call(
            "PUT",
            "/v1/queues/q",
            Some(json!({"concurrency": 0, "max_attempts": 1001, "rate_limit": {"per_second": 1}})),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/concurrency", "/max_attempts"]);
    let p = s
        .call(
            "PUT",
            "/v1/queues/q",
            Some(json!({"concurrency": 0, "max_attempts": 1001})),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/concurrency", "/max_attempts"]);
    let p = s
        .post("/v1/queues/q/purge", json!({"state": "running"}), 422)
        .await;
    assert_eq!(pointers(&p), ["/state"]);
    let p = s
        .post(
            "/v1/queues/q/replay",
            json!({"state": "completed", "limit": 0}),
            422,
        )
        .await;
    assert_eq!(pointers(&p), ["/state", "/limit"]);
    let p = s
        .get("/v1/jobs?limit=501&state=sleeping&colour=red&cursor=x", 422)
        .await;
    assert_eq!(pointers(&p), ["/limit", "/state", "/colour", "/cursor"]);
    assert_eq!(s.job(&id).await["state"], "available", "nothing changed");
    assert_eq!(
        s.get("/v1/queues/q", 200).await["config"]["concurrency"],
        Value::Null
    );
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_are_problems() {
    let s = TestServer::start().await;
    let p = s.get("/v1/nope", 404).await;
    assert_eq!(p["type"], "urn:keel:problem:not-found");
    let p = s.call("DELETE", "/v1/jobs", None, 405).await;
    assert_eq!(p["type"], "urn:keel:problem:method-not-allowed");
    let p = s.get("/v1/jobs/not-a-uuid", 404).await;
    assert_eq!(p["type"], "urn:keel:problem:not-found");
    s.get(&format!("/v1/jobs/{}", uuid::Uuid::now_v7()), 404)
        .await;
    s.get(&format!("/v1/jobs/{}/events", uuid::Uuid::now_v7()), 404)
        .await;
    s.post(
        &format!("/v1/jobs/{}/cancel", uuid::Uuid::now_v7()),
        json!({}),
        404,
    )
    .await;
    s.get("/v1/queues/none", 404).await;
    s.post("/v1/queues/none/pause", json!({}), 404).await;
    s.post("/v1/queues/none/purge", json!({"state": "dead"}), 404)
        .await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let s = TestServer::start().await;
    let res = s
        .http
        .get(s.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = s.http.get(s.url("/v1/nope")).send().await.unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(generated).is_ok_and(|u| u.get_version_num() == 4),
        "errors carry an id too, a v4 UUID: {generated}"
    );
    // Generated ids come from a per-thread buffer of randomness: none may repeat.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let res = s.http.get(s.url("/healthz")).send().await.unwrap();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(seen.insert(id.clone()), "request id {id} given twice");
    }
}
