//! Pull workers over HTTP: fencing, retries to dead and back, concurrency, long polls, acks,
//! and shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestServer, job};

fn id_of(j: &Value) -> String {
    j["id"].as_str().unwrap().to_owned()
}

fn token_of(j: &Value) -> String {
    j["lease"]["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn stale_worker_cannot_complete_after_its_lease_expired_and_another_took_the_job() {
    let s = TestServer::start().await;
    let mut body = job("q");
    body["backoff"] = json!({"initial_ms": 1, "max_ms": 1, "jitter": 0});
    let id = id_of(&s.enqueue(body).await);
    let a = s.lease("q", 1, 200).await.remove(0);
    assert_eq!(a["attempt"], 1);
    assert!(a["lease"]["expires_at"].is_string());
    // Worker B long-polls and gets the job once A's lease expires and the retry is due.
    let b = s
        .post(
            "/v1/lease",
            json!({"queues": ["q"], "wait_ms": 10_000, "lease_ms": 30_000}),
            200,
        )
        .await["jobs"][0]
        .clone();
    assert_eq!((id_of(&b), b["attempt"].as_i64()), (id.clone(), Some(2)));
    for (path, body) in [
        (
            "complete",
            json!({"lease_token": token_of(&a), "result": {"by": "A"}}),
        ),
        (
            "fail",
            json!({"lease_token": token_of(&a), "error": {"message": "late"}}),
        ),
        ("heartbeat", json!({"lease_token": token_of(&a)})),
    ] {
        let p = s.post(&format!("/v1/jobs/{id}/{path}"), body, 409).await;
        assert_eq!(p["type"], "urn:keel:problem:lease-lost", "{path}");
    }
    assert_eq!(s.job(&id).await["state"], "running", "A changed nothing");
    let done = s
        .post(
            &format!("/v1/jobs/{id}/complete"),
            json!({"lease_token": token_of(&b), "result": {"by": "B"}}),
            200,
        )
        .await;
    assert_eq!(
        (done["state"].as_str(), done["result"].clone()),
        (Some("completed"), json!({"by": "B"}))
    );
    let types: Vec<_> = s.get(&format!("/v1/jobs/{id}/events"), 200).await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "enqueued",
            "leased",
            "lease_expired",
            "scheduled",
            "available",
            "leased",
            "completed"
        ]
    );
}

#[tokio::test]
async fn failures_retry_with_backoff_until_dead_and_replay_brings_them_back() {
    let s = TestServer::start().await;
    let mut body = job("q");
    body["max_attempts"] = json!(3);
    body["backoff"] = json!({"initial_ms": 50, "max_ms": 100, "jitter": 0});
    let id = id_of(&s.enqueue(body).await);
    let mut last = Value::Null;
    for attempt in 1..=3 {
        let leased = s
            .post(
                "/v1/lease",
                json!({"queues": ["q"], "wait_ms": 10_000}),
                200,
            )
            .await["jobs"][0]
            .clone();
        assert_eq!(leased["attempt"], attempt);
        last = s.post(&format!("/v1/jobs/{id}/fail"), json!({"lease_token": token_of(&leased), "error": {"message": format!("attempt {attempt}"), "type": "Timeout"}}), 200).await;
        if attempt < 3 {
            assert_eq!(last["state"], "scheduled");
            let delay = jiff_ms(&last["run_at"]) - jiff_ms(&last["updated_at"]);
            assert_eq!(
                delay,
                50 * (1 << (attempt - 1)),
                "backoff doubles from initial_ms"
            );
        }
    }
    assert_eq!(last["state"], "dead");
    assert_eq!(last["last_error"]["message"], "attempt 3");
    assert_eq!(last["last_error"]["type"], "Timeout");
    let q = s.get("/v1/queues/q", 200).await;
    assert_eq!(q["counts"]["dead"], 1);
    assert_eq!(
        s.post("/v1/queues/q/replay", json!({"state": "dead"}), 200)
            .await,
        json!({"replayed": 1})
    );
    let again = s.job(&id).await;
    assert_eq!(
        (again["state"].as_str(), again["attempt"].as_i64()),
        (Some("available"), Some(0))
    );
    let leased = s.lease("q", 1, 30_000).await.remove(0);
    s.post(
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token_of(&leased)}),
        200,
    )
    .await;
    assert_eq!(s.job(&id).await["state"], "completed");
    // A non-retryable failure is dead at once; retry of a completed job is refused.
    let id2 = id_of(&s.enqueue(job("q")).await);
    let l = s.lease("q", 1, 30_000).await.remove(0);
    let dead = s.post(&format!("/v1/jobs/{id2}/fail"), json!({"lease_token": token_of(&l), "error": {"message": "bad input", "retryable": false}}), 200).await;
    assert_eq!(
        (dead["state"].as_str(), dead["attempt"].as_i64()),
        (Some("dead"), Some(1))
    );
    assert_eq!(
        s.post(&format!("/v1/jobs/{id}/retry"), json!({}), 409)
            .await["type"],
        "urn:keel:problem:invalid-state"
    );
    assert_eq!(
        s.post(&format!("/v1/jobs/{id2}/retry"), json!({}), 200)
            .await["state"],
        "available"
    );
    let report = s.store.verify().await.unwrap();
    assert!(
        report.mismatched.is_empty(),
        "jobs table equals the fold of events: {:?}",
        report.mismatched
    );
}

fn jiff_ms(v: &Value) -> i64 {
    keel_core::Time::parse_rfc3339(v.as_str().unwrap())
        .unwrap()
        .as_millis()
}

#[tokio::test]
async fn concurrency_limit_holds_across_many_concurrent_workers() {
    let s = Arc::new(TestServer::start().await);
    s.call(
        "PUT",
        "/v1/queues/limited",
        Some(json!({"concurrency": 3})),
        200,
    )
    .await;
    let jobs: Vec<Value> = (0..40).map(|_| job("limited")).collect();
    s.post("/v1/jobs/batch", json!({"jobs": jobs}), 201).await;
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = vec![];
    for _ in 0..10 {
        let (s, running, peak, done) = (s.clone(), running.clone(), peak.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < 40 {
                let got = s
                    .post(
                        "/v1/lease",
                        json!({"queues": ["limited"], "max_jobs": 5, "wait_ms": 200}),
                        200,
                    )
                    .await;
                let got = got["jobs"].as_array().unwrap().clone();
                let now = running.fetch_add(got.len(), Ordering::SeqCst) + got.len();
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                for j in got {
                    running.fetch_sub(1, Ordering::SeqCst);
                    s.post(
                        &format!("/v1/jobs/{}/complete", id_of(&j)),
                        json!({"lease_token": token_of(&j)}),
                        200,
                    )
                    .await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 40);
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "at most 3 jobs ran at once, saw {peak}");
    assert_eq!(
        s.get("/v1/queues/limited", 200).await["counts"]["completed"],
        40
    );
}

#[tokio::test]
async fn long_poll_wakes_on_enqueue_and_times_out_empty() {
    let s = Arc::new(TestServer::start().await);
    let started = Instant::now();
    let empty = s
        .post(
            "/v1/lease",
            json!({"queues": ["idle"], "wait_ms": 300}),
            200,
        )
        .await;
    assert_eq!(empty["jobs"], json!([]));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited the full wait_ms"
    );

    let poller = {
        let s = s.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = s
                .post(
                    "/v1/lease",
                    json!({"queues": ["other", "wake"], "wait_ms": 30_000}),
                    200,
                )
                .await;
            (got, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = id_of(&s.enqueue(job("wake")).await);
    let (got, waited) = tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id_of(&got["jobs"][0]), id);
    assert!(
        waited < Duration::from_secs(10),
        "woken by the enqueue, not by wait_ms: {waited:?}"
    );
}

#[tokio::test]
async fn a_delayed_job_wakes_a_long_poll_when_it_becomes_due() {
    let s = TestServer::start().await;
    let mut body = job("soon");
    body["delay_ms"] = json!(300);
    let id = id_of(&s.enqueue(body).await);
    let got = s
        .post(
            "/v1/lease",
            json!({"queues": ["soon"], "wait_ms": 20_000}),
            200,
        )
        .await;
    assert_eq!(id_of(&got["jobs"][0]), id);
}

#[tokio::test]
async fn heartbeat_extends_and_ack_records_each_item() {
    let s = TestServer::start().await;
    s.post(
        "/v1/jobs/batch",
        json!({"jobs": [job("q"), job("q"), job("q")]}),
        201,
    )
    .await;
    let l = s.lease("q", 3, 300).await;
    let hb = s
        .post(
            &format!("/v1/jobs/{}/heartbeat", id_of(&l[0])),
            json!({"lease_token": token_of(&l[0]), "lease_ms": 60_000}),
            200,
        )
        .await;
    assert!(jiff_ms(&hb["expires_at"]) > jiff_ms(&l[0]["lease"]["expires_at"]));
    // Let the other two leases expire; the heartbeated one survives.
    s.eventually(10, "unheartbeated leases expire", || async {
        (s.job(&id_of(&l[1])).await["state"] != "running").then_some(())
    })
    .await;
    let res = s.post("/v1/ack", json!({"items": [
        {"id": id_of(&l[0]), "lease_token": token_of(&l[0]), "outcome": "completed", "result": 42},
        {"id": id_of(&l[1]), "lease_token": token_of(&l[1]), "outcome": "completed"},
        {"id": id_of(&l[2]), "lease_token": token_of(&l[2]), "outcome": "failed", "error": {"message": "x"}},
    ]}), 200).await;
    let statuses: Vec<_> = res["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 409, 409]);
    assert_eq!(res["items"][0]["job"]["result"], 42);
    assert_eq!(res["items"][1]["job"], Value::Null);
    assert_eq!(
        res["items"][1]["error"]["type"],
        "urn:keel:problem:lease-lost"
    );
}

#[tokio::test]
async fn cancel_revokes_a_running_lease_and_final_jobs_refuse() {
    let s = TestServer::start().await;
    let id = id_of(&s.enqueue(job("q")).await);
    let l = s.lease("q", 1, 30_000).await.remove(0);
    assert_eq!(
        s.post(&format!("/v1/jobs/{id}/cancel"), json!({}), 200)
            .await["state"],
        "cancelled"
    );
    s.post(
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token_of(&l)}),
        409,
    )
    .await;
    assert_eq!(
        s.post(&format!("/v1/jobs/{id}/cancel"), json!({}), 409)
            .await["type"],
        "urn:keel:problem:invalid-state"
    );
    assert_eq!(s.job(&id).await["state"], "cancelled");
}

#[tokio::test]
async fn shutdown_ends_long_polls_and_returns() {
    let s = TestServer::start().await;
    let http = s.http.clone();
    let url = s.url("/v1/lease");
    let poll = tokio::spawn(async move {
        http.post(url)
            .json(&json!({"queues": ["q"], "wait_ms": 60_000}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), s.shutdown())
        .await
        .expect("serve returned");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        poll.await.unwrap()["jobs"],
        json!([]),
        "the long poll answered empty instead of hanging"
    );
}

/// A worker whose connection closes while its long poll waits is leased nothing: the job that
/// arrives afterwards goes to the next worker, not to a lease nobody will ever hear of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_whose_connection_closed_is_leased_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let body = json!({"queues": ["hangup"], "wait_ms": 20_000}).to_string();
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let request = format!(
        "POST /v1/lease HTTP/1.1\r\nhost: keel\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        s.admin_token.as_deref().unwrap(),
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the long poll answered with nothing to lease"
    );
    drop(tcp);
    // The server learns of the close from the socket; give it a moment to read the FIN.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = id_of(&s.enqueue(job("hangup")).await);
    let leased = s.lease("hangup", 10, 30_000).await;
    assert_eq!(
        leased.iter().map(id_of).collect::<Vec<_>>(),
        vec![id],
        "the job was leased to a long poll whose connection had closed"
    );
}
