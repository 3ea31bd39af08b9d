//! Property-based fuzzing of the HTTP API (bounded, so it runs in CI): arbitrary JSON, near-valid
//! bodies with one field replaced by anything, and arbitrary bytes, sent to every route that takes
//! a body. No answer may be a 5xx, every error must be a well-formed problem, and afterwards the
//! store's rows must still equal the fold of its events.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::helpers::TestServer;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        Just(json!(i64::MAX)),
        Just(json!(-1)),
        Just(json!("")),
        "[a-z.:_*-]{1,10}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body for each route, to mutate one field at a time.
fn valid_bodies(id: &str) -> Vec<(&'static str, String, Value)> {
    vec![
        (
            "POST",
            "/v1/jobs".into(),
            json!({"queue": "fz", "kind": "k", "payload": {"a": 1}, "priority": 1, "delay_ms": 10, "max_attempts": 3, "timeout_ms": 1000, "backoff": {"initial_ms": 1, "max_ms": 2}, "idempotency_key": "x", "tags": ["t"]}),
        ),
        (
            "POST",
            "/v1/jobs/batch".into(),
            json!({"jobs": [{"queue": "fz", "kind": "k", "payload": 1}]}),
        ),
        (
            "POST",
            "/v1/lease".into(),
            json!({"queues": ["fz"], "max_jobs": 2, "lease_ms": 1000, "wait_ms": 0, "worker": "w"}),
        ),
        (
            "POST",
            "/v1/ack".into(),
            json!({"items": [{"id": id, "lease_token": "t", "outcome": "failed", "error": {"message": "m", "retryable": true}, "retry_in_ms": 5}]}),
        ),
        (
            "POST",
            format!("/v1/jobs/{id}/complete"),
            json!({"lease_token": "t", "result": {"r": 1}}),
        ),
        (
            "POST",
            format!("/v1/jobs/{id}/fail"),
            json!({"lease_token": "t", "error": {"message": "m", "type": "E"}}),
        ),
        (
            "POST",
            format!("/v1/jobs/{id}/heartbeat"),
            json!({"lease_token": "t", "lease_ms": 100}),
        ),
        (
            "PUT",
            "/v1/queues/fz".into(),
            json!({"concurrency": 2, "max_attempts": 3, "timeout_ms": 100, "backoff": {"initial_ms": 1, "max_ms": 5}, "retention": {"completed_ms": 1000, "dead_ms": 1000}}),
        ),
        (
            "POST",
            "/v1/queues/fz/replay".into(),
            json!({"state": "dead", "kind": "k", "limit": 5}),
        ),
        (
            "POST",
            "/v1/queues/fz/purge".into(),
            json!({"state": "completed"}),
        ),
        (
            "POST",
            "/v1/tokens".into(),
            json!({"name": "n", "role": "viewer", "queues": ["fz*"]}),
        ),
        (
            "PUT",
            "/v1/schemas/fz.kind".into(),
            json!({"schema": {"type": "object"}}),
        ),
        (
            "PUT",
            "/v1/schedules/fz".into(),
            json!({"cron": "*/5 * * * *", "timezone": "Europe/Berlin", "catch_up": "all", "paused": false,
                   "job": {"queue": "fz", "kind": "k", "payload": {"a": 1}, "priority": 1, "max_attempts": 3, "tags": ["t"]}}),
        ),
    ]
}

/// Replaces the value at a random path of `body` (or the whole body) with `with`.
fn mutate(body: &Value, pick: usize, with: Value) -> Value {
    let mut b = body.clone();
    if let Value::Object(map) = &mut b {
        let keys: Vec<String> = map.keys().cloned().collect();
        if !keys.is_empty() {
            let key = &keys[pick % keys.len()];
            match map.get_mut(key) {
                Some(Value::Array(items)) if !items.is_empty() && pick.is_multiple_of(2) => {
                    if let Value::Object(inner) = &mut items[0] {
                        let ks: Vec<String> = inner.keys().cloned().collect();
                        inner.insert(ks[pick % ks.len()].clone(), with);
                    } else {
                        items[0] = with;
                    }
                }
                Some(slot) => *slot = with,
                None => {}
            }
            return b;
        }
    }
    with
}

async fn send(s: &TestServer, method: &str, path: &str, body: Vec<u8>) -> Result<(), String> {
    let res = s
        .http
        .request(method.parse().unwrap(), s.url(path))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| format!("transport error: {e}"))?;
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap_or_default();
    let shown = String::from_utf8_lossy(&body)
        .chars()
        .take(300)
        .collect::<String>();
    if status >= 500 {
        return Err(format!(
            "{method} {path} answered {status}: {text}\nbody: {shown}"
        ));
    }
    if status >= 400 {
        let p: Value = serde_json::from_str(&text)
            .map_err(|_| format!("{method} {path} {status}: not JSON: {text}"))?;
        let ok = ct == "application/problem+json"
            && p["status"] == status
            && p["type"].as_str().is_some_and(|t| t.starts_with("urn:keel:problem:"))
            && p["title"].is_string()
            && p["detail"].is_string()
            // Messages speak JSON, never our Rust type names.
            && !text.contains("struct ");
        if !ok {
            return Err(format!(
                "{method} {path} {status}: malformed problem {text}\nbody: {shown}"
            ));
        }
    }
    Ok(())
}

#[test]
fn no_body_on_any_route_gets_a_5xx_or_a_malformed_problem() {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let s = Arc::new(rt.block_on(TestServer::start()));
    let id = rt.block_on(s.enqueue(json!({"queue": "fz", "kind": "k", "payload": 1})))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Payloads of kind "k" also go through a schema, so the payload validator is fuzzed too.
    let schema = json!({"schema": {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "integer", "minimum": 0},
        "s": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
        "n": {"type": "array", "items": {"type": ["number", "null"]}, "maxItems": 3},
        "o": {"type": "object", "additionalProperties": false, "properties": {"x": {"enum": [1, "1", null]}}}}}});
    rt.block_on(s.call("PUT", "/v1/schemas/k", Some(schema), 201));
    let routes = valid_bodies(&id);
    let n = routes.len();
    let mut runner = TestRunner::new(Config {
        cases: 1_500,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..n,
        any::<usize>(),
        any_json(),
        prop::collection::vec(any::<u8>(), 0..64),
        0..4u8,
    );
    runner
        .run(&strategy, |(route, pick, value, bytes, mode)| {
            let (method, path, valid) = &routes[route];
            let body = match mode {
                0 => mutate(valid, pick, value).to_string().into_bytes(),
                1 => value.to_string().into_bytes(),
                2 => bytes,
                // A valid body with garbage appended or cut short.
                _ => {
                    let mut t = valid.to_string().into_bytes();
                    t.truncate(pick % (t.len() + 1));
                    t
                }
            };
            rt.block_on(send(&s, method, path, body))
                .map_err(TestCaseError::fail)
        })
        .unwrap();
    let report = rt.block_on(s.store.verify()).unwrap();
    assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
}
