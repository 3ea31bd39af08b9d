//! `GET /metrics`: served without a token, and its counters, histograms and gauges move as jobs
//! flow (scrape, work, scrape again).

use std::collections::BTreeMap;

use serde_json::json;

use crate::helpers::TestServer;

/// One sample: the metric name and its labels.
type Series = (String, BTreeMap<String, String>);

/// Parses the text format into samples (enough of it for keel's output: no escapes in values
/// used here, no timestamps).
fn parse(text: &str) -> Vec<(Series, f64)> {
    let mut out = vec![];
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.push(((name.to_owned(), labels), value.parse().unwrap()));
    }
    out
}

/// The value of the sample `name` whose labels include all of `want` (0 when absent).
fn value(samples: &[(Series, f64)], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(s: &TestServer) -> (String, Vec<(Series, f64)>) {
    // No token: API.md lists /metrics among the endpoints that need none.
    let res = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_jobs_flow() {
    let s = TestServer::start().await;
    let q = "metrics-flow";
    let (_, before) = scrape(&s).await;
    let posts = value(
        &before,
        "keel_http_requests_total",
        &[("route", "/v1/jobs"), ("method", "POST"), ("status", "201")],
    );
    let commits = value(&before, "keel_store_commit_seconds_count", &[]);

    let mut ids = vec![];
    for n in 0..3 {
        let job = s
            .enqueue(json!({"queue": q, "kind": "m.kind", "payload": {"n": n}}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let leased = s.lease(q, 2, 30_000).await;
    assert_eq!(leased.len(), 2);
    let token = |j: &serde_json::Value| j["lease"]["token"].as_str().unwrap().to_owned();
    s.post(
        &format!("/v1/jobs/{}/complete", leased[0]["id"].as_str().unwrap()),
        json!({"lease_token": token(&leased[0]), "result": {"ok": true}}),
        200,
    )
    .await;
    s.post(
        &format!("/v1/jobs/{}/fail", leased[1]["id"].as_str().unwrap()),
        json!({"lease_token": token(&leased[1]), "error": {"message": "no", "retryable": false}}),
        200,
    )
    .await;

    // Invented methods do not become label values (a client could invent them without end).
    for invented in ["BREW", "WHEN"] {
        let res = s
            .http
            .request(invented.parse().unwrap(), s.url("/v1/jobs"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405);
    }

    let (text, after) = scrape(&s).await;
    assert!(!text.contains("BREW") && !text.contains("WHEN"), "{text}");
    assert!(
        value(
            &after,
            "keel_http_requests_total",
            &[("method", "other"), ("status", "405")]
        ) >= 2.0
    );
    let by = [("queue", q), ("kind", "m.kind")];
    assert_eq!(value(&after, "keel_jobs_enqueued_total", &by), 3.0);
    assert_eq!(value(&after, "keel_jobs_completed_total", &by), 1.0);
    assert_eq!(value(&after, "keel_jobs_failed_total", &by), 1.0);
    assert_eq!(value(&after, "keel_jobs_dead_total", &by), 1.0);
    let qq = [("queue", q)];
    assert_eq!(value(&after, "keel_job_queue_wait_seconds_count", &qq), 2.0);
    assert_eq!(value(&after, "keel_job_run_seconds_count", &by), 2.0);
    for (state, n) in [
        ("available", 1.0),
        ("running", 0.0),
        ("completed", 1.0),
        ("dead", 1.0),
    ] {
        assert_eq!(
            value(&after, "keel_queue_jobs", &[("queue", q), ("state", state)]),
            n,
            "{state}"
        );
    }
    assert!(value(&after, "keel_queue_oldest_available_age_seconds", &qq) >= 0.0);
    assert!(text.contains(&format!(
        "keel_queue_oldest_available_age_seconds{{queue=\"{q}\"}}"
    )));
    assert_eq!(value(&after, "keel_store_up", &[]), 1.0);
    // Requests are counted by route template, never by raw path or job id.
    assert!(
        value(
            &after,
            "keel_http_requests_total",
            &[("route", "/v1/jobs"), ("method", "POST"), ("status", "201")]
        ) >= posts + 3.0
    );
    assert!(
        value(
            &after,
            "keel_http_requests_total",
            &[("route", "/v1/jobs/{id}/complete"), ("status", "200")]
        ) >= 1.0
    );
    for id in &ids {
        assert!(!text.contains(id.as_str()), "a job id is in a label");
    }
    // Every write committed and was timed.
    assert!(value(&after, "keel_store_commit_seconds_count", &[]) >= commits + 5.0);
    assert!(
        value(
            &after,
            "keel_store_batch_size_count",
            &[("backend", "sqlite")]
        ) >= 1.0
    );
}
