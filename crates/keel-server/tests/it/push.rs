//! Push delivery against real local HTTP servers that misbehave on purpose: slow, hanging,
//! resetting, 5xx, 503 with Retry-After, 429, 404, 410, redirects, huge bodies; the breaker; the
//! bulkhead; target validation and the address policy; secrets never read back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use keel_server::ServerConfig;
use serde_json::{Value, json};

use crate::helpers::{TestServer, pointers};

/// One request a target received: path, headers, body.
type Request = (String, HashMap<String, String>, Bytes);

/// What the target saw: each request's headers and body, by path.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<Request>>>,
    healthy: Arc<AtomicBool>,
    slow_in_flight: Arc<AtomicUsize>,
    slow_max: Arc<AtomicUsize>,
}

async fn record(seen: &Seen, path: &str, headers: &HeaderMap, body: Bytes) {
    let h = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    seen.requests
        .lock()
        .unwrap()
        .push((path.to_owned(), h, body));
}

/// A target server on 127.0.0.1:0 with one route per behaviour.
async fn target() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    seen.healthy.store(true, Ordering::SeqCst);
    let app = Router::new()
        .route(
            "/ok",
            post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/ok", &h, b).await;
                (
                    StatusCode::OK,
                    [("content-type", "application/json")],
                    r#"{"received": true}"#,
                )
            }),
        )
        .route("/500", post(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/503",
            post(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "7")],
                    "later",
                )
            }),
        )
        .route("/429", post(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route("/404", post(|| async { StatusCode::NOT_FOUND }))
        .route("/410", post(|| async { StatusCode::GONE }))
        .route(
            "/redirect",
            post(|| async { (StatusCode::FOUND, [("location", "/ok")]) }),
        )
        .route(
            "/slow",
            post(|State(s): State<Seen>| async move {
                let n = s.slow_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.slow_max.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                s.slow_in_flight.fetch_sub(1, Ordering::SeqCst);
                StatusCode::OK
            }),
        )
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/big",
            post(|| async { (StatusCode::OK, "x".repeat(200 << 10)) }),
        )
        .route(
            "/flaky",
            post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| async move {
                record(&s, "/flaky", &h, b).await;
                if s.healthy.load(Ordering::SeqCst) {
                    StatusCode::NO_CONTENT.into_response()
                } else {
                    StatusCode::BAD_GATEWAY.into_response()
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// A server that accepts connections and resets them at once.
async fn resetting() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            // SO_LINGER 0 makes the close a reset, which is the point here.
            #[allow(deprecated)]
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
        }
    });
    addr
}

async fn keel() -> TestServer {
    TestServer::start_with(ServerConfig {
        allow_private_targets: true,
        ..Default::default()
    })
    .await
}

async fn push_queue(s: &TestServer, queue: &str, target: Value) {
    let body = json!({"target": target, "max_attempts": 3,
                      "backoff": {"initial_ms": 60_000, "max_ms": 600_000, "jitter": 0.0}});
    s.call("PUT", &format!("/v1/queues/{queue}"), Some(body), 200)
        .await;
}

/// Waits until the job has left `available` and `running`, then returns it with its events.
async fn settled(s: &TestServer, id: &str) -> (Value, Vec<Value>) {
    let job = s
        .eventually(10, &format!("job {id} to settle"), || async {
            let job = s.job(id).await;
            (!matches!(job["state"].as_str(), Some("available" | "running"))).then_some(job)
        })
        .await;
    let events = s.get(&format!("/v1/jobs/{id}/events"), 200).await["events"]
        .as_array()
        .unwrap()
        .clone();
    (job, events)
}

fn delivery(events: &[Value]) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "delivery")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_classified_as_api_md_says() {
    let (addr, seen) = target().await;
    let reset = resetting().await;
    let s = keel().await;
    let cases: Vec<(&str, String, i64)> = vec![
        ("ok", format!("http://{addr}/ok"), 5_000),
        ("e500", format!("http://{addr}/500"), 5_000),
        ("e503", format!("http://{addr}/503"), 5_000),
        ("e429", format!("http://{addr}/429"), 5_000),
        ("e404", format!("http://{addr}/404"), 5_000),
        ("e410", format!("http://{addr}/410"), 5_000),
        ("redirect", format!("http://{addr}/redirect"), 5_000),
        ("slow", format!("http://{addr}/slow"), 300),
        ("hang", format!("http://{addr}/hang"), 300),
        ("reset", format!("http://{reset}/"), 5_000),
        ("big", format!("http://{addr}/big"), 5_000),
    ];
    let mut ids = HashMap::new();
    for (queue, url, timeout_ms) in &cases {
        push_queue(
            &s,
            queue,
            json!({"url": url, "timeout_ms": timeout_ms, "headers": {"x-team": "billing"}}),
        )
        .await;
        let job = s
            .enqueue(
                json!({"queue": queue, "kind": "partner.sync", "payload": {"n": 1},
                            "idempotency_key": format!("key-{queue}")}),
            )
            .await;
        ids.insert(*queue, job["id"].as_str().unwrap().to_owned());
    }

    let (job, events) = settled(&s, &ids["ok"]).await;
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"], json!({"received": true}));
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["enqueued", "leased", "delivery", "completed"]);
    let d = delivery(&events);
    assert_eq!(
        (d["data"]["status"].clone(), d["data"]["attempt"].clone()),
        (json!(200), json!(1))
    );
    assert!(d["data"]["duration_ms"].as_i64().unwrap() >= 0);
    let requests = seen.requests.lock().unwrap().clone();
    let (_, headers, body) = requests.iter().find(|(p, _, _)| p == "/ok").unwrap();
    assert_eq!(body.as_ref(), br#"{"n":1}"#);
    assert_eq!(headers["keel-job-id"], ids["ok"]);
    assert_eq!(headers["keel-queue"], "ok");
    assert_eq!(headers["keel-kind"], "partner.sync");
    assert_eq!(headers["keel-attempt"], "1");
    assert_eq!(headers["idempotency-key"], "key-ok");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-team"], "billing");
    assert!(
        !headers.contains_key("webhook-signature"),
        "no secret, no signature"
    );

    for (queue, status) in [("e500", 500), ("e429", 429)] {
        let (job, events) = settled(&s, &ids[queue]).await;
        assert_eq!(
            (job["state"].clone(), job["attempt"].clone()),
            (json!("scheduled"), json!(1)),
            "{queue}"
        );
        assert_eq!(delivery(&events)["data"]["status"], status, "{queue}");
        assert_eq!(
            job["last_error"]["message"],
            format!("target answered {status}")
        );
    }
    let (job, events) = settled(&s, &ids["e503"]).await;
    assert_eq!(job["state"], "scheduled");
    let scheduled = events.iter().find(|e| e["type"] == "scheduled").unwrap();
    assert_eq!(
        scheduled["data"]["delay_ms"], 7_000,
        "Retry-After honoured: {events:?}"
    );

    for (queue, status) in [("e404", 404), ("e410", 410), ("redirect", 302)] {
        let (job, events) = settled(&s, &ids[queue]).await;
        assert_eq!(
            (job["state"].clone(), job["attempt"].clone()),
            (json!("dead"), json!(1)),
            "{queue}"
        );
        assert_eq!(delivery(&events)["data"]["status"], status, "{queue}");
    }
    for queue in ["slow", "hang"] {
        let (job, events) = settled(&s, &ids[queue]).await;
        assert_eq!(job["state"], "scheduled", "{queue}");
        let d = delivery(&events);
        assert_eq!(d["data"]["status"], Value::Null, "{queue}");
        assert_eq!(d["data"]["error"], "no answer within 300 ms", "{queue}");
        assert!(
            d["data"]["duration_ms"].as_i64().unwrap() < 1_500,
            "{queue}: {d}"
        );
    }
    let (job, events) = settled(&s, &ids["reset"]).await;
    assert_eq!(job["state"], "scheduled");
    assert_eq!(delivery(&events)["data"]["status"], Value::Null);

    let (job, _) = settled(&s, &ids["big"]).await;
    assert_eq!(job["state"], "completed");
    assert_eq!(
        job["result"].as_str().unwrap().len(),
        64 << 10,
        "result cut at 64 KiB"
    );
    assert!(s.store.verify().await.unwrap().mismatched.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_spares_attempts_and_closes_after_recovery_while_other_origins_deliver() {
    let (flaky, seen) = target().await;
    let (fine, _) = target().await;
    let s = keel().await;
    let body = json!({"target": {"url": format!("http://{flaky}/flaky"),
                                 "breaker": {"failure_threshold": 2, "open_ms": 600}},
                      "max_attempts": 10, "backoff": {"initial_ms": 100, "max_ms": 100, "jitter": 0.0}});
    s.call("PUT", "/v1/queues/partner", Some(body), 200).await;
    push_queue(&s, "healthy", json!({"url": format!("http://{fine}/ok")})).await;
    seen.healthy.store(false, Ordering::SeqCst);

    for n in 0..2 {
        s.enqueue(json!({"queue": "partner", "kind": "k", "payload": {"n": n}}))
            .await;
    }
    let open = s
        .eventually(10, "the breaker to open", || async {
            let targets = s.get("/v1/targets", 200).await;
            let t = targets
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["queues"] == json!(["partner"]))
                .cloned()?;
            (t["state"] == "open").then_some(t)
        })
        .await;
    assert_eq!(open["origin"], format!("http://{flaky}"));
    assert!(
        open["consecutive_failures"].as_u64().unwrap() >= 2,
        "{open}"
    );
    assert!(open["next_probe_at"].is_string());
    assert_eq!(open["history"][0]["change"], "opened");

    // While it is open, new jobs wait without being charged an attempt, and the healthy
    // origin keeps delivering.
    let mut waiting = vec![];
    for n in 0..5 {
        let job = s
            .enqueue(json!({"queue": "partner", "kind": "k", "payload": {"later": n}}))
            .await;
        waiting.push(job["id"].as_str().unwrap().to_owned());
    }
    let healthy = s
        .enqueue(json!({"queue": "healthy", "kind": "k", "payload": {}}))
        .await;
    let (job, _) = settled(&s, healthy["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "completed");
    let probes_before = seen.requests.lock().unwrap().len();
    for id in &waiting {
        let job = s.job(id).await;
        assert!(job["attempt"].as_u64().unwrap() <= 1, "{job}");
    }

    // The origin recovers: the next probe closes the breaker and everything delivers.
    seen.healthy.store(true, Ordering::SeqCst);
    s.eventually(15, "every partner job to complete", || async {
        let q = s.get("/v1/queues/partner", 200).await;
        (q["counts"]["completed"] == 7).then_some(())
    })
    .await;
    let mut charged_while_open = 0;
    for id in &waiting {
        let job = s.job(id).await;
        assert_eq!(job["state"], "completed");
        if job["attempt"] != 1 {
            charged_while_open += 1;
        }
    }
    // At most one of them can have been a failed probe; none paid for the open time.
    assert!(
        charged_while_open <= 1,
        "jobs were charged attempts while the breaker was open"
    );
    assert!(
        probes_before <= 2 + 3,
        "the open breaker let {probes_before} requests through"
    );
    let targets = s.get("/v1/targets", 200).await;
    let t = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["queues"] == json!(["partner"]))
        .unwrap()
        .clone();
    assert_eq!(
        (t["state"].clone(), t["consecutive_failures"].clone()),
        (json!("closed"), json!(0))
    );
    let changes: Vec<&str> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes.last(), Some(&"closed"), "{t}");

    // The breaker's state and history are in /metrics and, durably, in the audit log.
    let res = s.http.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    let origin = format!("origin=\"http://{flaky}\"");
    assert!(
        text.contains(&format!("keel_push_breaker_state{{{origin}}} 0")),
        "{text}"
    );
    assert!(
        text.contains("# TYPE keel_push_breaker_opened_total counter"),
        "{text}"
    );
    let opened: u64 = text
        .lines()
        .find(|l| l.starts_with(&format!("keel_push_breaker_opened_total{{{origin}}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(opened >= 1, "{text}");
    let audit = s.get("/v1/audit?limit=100", 200).await;
    let recorded: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == format!("http://{flaky}"))
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        recorded.first(),
        Some(&("breaker.closed".to_owned(), "push".to_owned())),
        "{audit}"
    );
    assert!(
        recorded.iter().any(|(a, _)| a == "breaker.opened"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_saturating_one_queue_does_not_delay_another() {
    let (addr, seen) = target().await;
    let s = keel().await;
    let body = json!({"target": {"url": format!("http://{addr}/slow"), "timeout_ms": 5_000},
                      "concurrency": 2});
    s.call("PUT", "/v1/queues/slowq", Some(body), 200).await;
    push_queue(&s, "fastq", json!({"url": format!("http://{addr}/ok")})).await;
    for n in 0..8 {
        s.enqueue(json!({"queue": "slowq", "kind": "k", "payload": {"n": n}}))
            .await;
    }
    // Let the slow queue fill its two slots, then send work to the other queue.
    s.eventually(5, "slow deliveries to start", || async {
        (seen.slow_in_flight.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let mut fast = vec![];
    for n in 0..5 {
        let job = s
            .enqueue(json!({"queue": "fastq", "kind": "k", "payload": {"n": n}}))
            .await;
        fast.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &fast {
        let (job, _) = settled(&s, id).await;
        assert_eq!(job["state"], "completed");
    }
    // The fast queue finished while the slow one was still working through its backlog.
    let slow = s.get("/v1/queues/slowq", 200).await;
    assert!(
        slow["counts"]["completed"].as_u64().unwrap() <= 4,
        "the slow queue was not still busy: {slow}"
    );
    assert_eq!(
        seen.slow_max.load(Ordering::SeqCst),
        2,
        "the bulkhead held at 2"
    );
}

#[tokio::test]
async fn targets_are_validated_and_secrets_never_read_back() {
    let s = TestServer::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"url": "ftp://example.com/x"}), &["/target/url"]),
        (json!({"url": "not a url"}), &["/target/url"]),
        (
            json!({"url": "http://169.254.169.254/latest"}),
            &["/target/url"],
        ),
        (json!({"url": "http://127.0.0.1:9/x"}), &["/target/url"]),
        (json!({"url": "http://localhost:9/x"}), &["/target/url"]),
        (json!({"url": "http://[::1]:9/x"}), &["/target/url"]),
        (
            json!({"url": "http://user:pw@example.com/"}),
            &["/target/url"],
        ),
        (
            json!({"url": "https://example.com/", "headers": {"Keel-Job-Id": "x"}}),
            &["/target/headers/Keel-Job-Id"],
        ),
        (
            json!({"url": "https://example.com/", "signing_secret": "plain"}),
            &["/target/signing_secret"],
        ),
        (
            json!({"url": "https://example.com/", "signing_secret": "***"}),
            &["/target/signing_secret"],
        ),
        (
            json!({"url": "https://example.com/", "timeout_ms": 0, "breaker": {"failure_threshold": 0}}),
            &["/target/timeout_ms", "/target/breaker/failure_threshold"],
        ),
    ];
    for (target, expected) in cases {
        let (status, problem, _) = s
            .call_as(
                s.admin_token.as_deref(),
                "PUT",
                "/v1/queues/hooks",
                Some(json!({"target": target})),
            )
            .await;
        assert_eq!(status, 422, "{target} -> {problem}");
        assert_eq!(pointers(&problem), expected, "{target} -> {problem}");
    }
    s.get("/v1/queues/hooks", 404).await;

    let q = s
        .call(
            "PUT",
            "/v1/queues/hooks",
            Some(json!({"target": {"url": "https://example.com/hook", "signing_secret": secret}})),
            200,
        )
        .await;
    assert_eq!(q["config"]["target"]["signing_secret"], "***");
    assert_eq!(q["config"]["target"]["timeout_ms"], 30_000);
    assert_eq!(
        q["config"]["target"]["breaker"],
        json!({"failure_threshold": 5, "open_ms": 30_000})
    );
    // A read-modify-write sends "***" back: the secret stays.
    let mut target = q["config"]["target"].clone();
    target["timeout_ms"] = json!(1_000);
    s.call(
        "PUT",
        "/v1/queues/hooks",
        Some(json!({"target": target})),
        200,
    )
    .await;
    let (queues, _) = (s.get("/v1/queues", 200).await, ());
    assert!(!queues.to_string().contains("MfKQ9r8"), "{queues}");
    let audit = s.get("/v1/audit?limit=50", 200).await;
    assert!(
        !audit.to_string().contains("MfKQ9r8"),
        "secret in the audit log: {audit}"
    );
    let stored = s
        .store
        .queue("hooks", keel_core::Time::EPOCH)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.config.target.unwrap().signing_secret.as_deref(),
        Some(secret),
        "the secret survived the read-modify-write"
    );
    // `null` returns the queue to pull mode.
    let q = s
        .call(
            "PUT",
            "/v1/queues/hooks",
            Some(json!({"target": null})),
            200,
        )
        .await;
    assert_eq!(q["config"]["target"], Value::Null);
}

#[tokio::test]
async fn a_name_that_resolves_to_a_forbidden_address_is_refused_at_connect_time() {
    // This machine's own host name resolves to a loopback address (/etc/hosts), which the
    // configuration check cannot see: the resolver of the push client must refuse it.
    let host = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let resolves_to_loopback = tokio::net::lookup_host((host.as_str(), 80))
        .await
        .map(|mut a| a.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    assert!(
        resolves_to_loopback,
        "test premise: {host} resolves to loopback here"
    );
    let (addr, seen) = target().await;
    let s = TestServer::start().await;
    push_queue(
        &s,
        "sneaky",
        json!({"url": format!("http://{host}:{}/ok", addr.port())}),
    )
    .await;
    let job = s
        .enqueue(json!({"queue": "sneaky", "kind": "k", "payload": {}}))
        .await;
    let (job, events) = settled(&s, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "dead", "{job}");
    let d = delivery(&events);
    assert!(
        d["data"]["error"]
            .as_str()
            .unwrap()
            .contains("forbidden address"),
        "{d}"
    );
    assert!(
        seen.requests.lock().unwrap().is_empty(),
        "the request was sent"
    );
}

/// The Python with the `standardwebhooks` package (`.ci/run` makes it); `None` on a laptop
/// without it, where the test says it skipped.
fn webhook_verifier() -> Option<String> {
    std::env::var("KEEL_WEBHOOKS_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
}

fn verify_with_reference_library(
    python: &str,
    secret: &str,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> (bool, String) {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/verify_webhook.py"
    );
    let wanted: HashMap<&str, &str> = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .into_iter()
        .map(|h| (h, headers.get(h).map(String::as_str).unwrap_or("")))
        .collect();
    let mut child = std::process::Command::new(python)
        .args([script, secret, &serde_json::to_string(&wanted).unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_reference_library() {
    let Some(python) = webhook_verifier() else {
        eprintln!(
            "skipped: signatures_verify_with_the_standard_webhooks_reference_library needs \
             KEEL_WEBHOOKS_PYTHON (a Python with `pip install standardwebhooks`; .ci/run sets it)"
        );
        return;
    };
    let (addr, seen) = target().await;
    let s = keel().await;
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    push_queue(
        &s,
        "signed",
        json!({"url": format!("http://{addr}/ok"), "signing_secret": secret}),
    )
    .await;
    let job = s
        .enqueue(json!({"queue": "signed", "kind": "invoice.paid", "payload": {"amount": 4200, "note": "ünïcode"}}))
        .await;
    let (done, _) = settled(&s, job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "completed");
    let requests = seen.requests.lock().unwrap().clone();
    let (_, headers, body) = requests.iter().find(|(p, _, _)| p == "/ok").unwrap();
    assert_eq!(headers["webhook-id"], job["id"].as_str().unwrap());
    assert!(headers["webhook-signature"].starts_with("v1,"));
    let (ok, text) = verify_with_reference_library(&python, secret, headers, body);
    assert!(
        ok,
        "the reference library rejected keel's signature: {text}"
    );
    // The check can fail: a changed body or another secret is rejected.
    let (ok, _) = verify_with_reference_library(&python, secret, headers, b"{\"amount\":1}");
    assert!(!ok, "a tampered body verified");
    let (ok, _) = verify_with_reference_library(
        &python,
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        headers,
        body,
    );
    assert!(!ok, "another secret verified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_unfinished_at_shutdown_is_released_without_costing_an_attempt() {
    let (addr, _) = target().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_in(
        ServerConfig {
            allow_private_targets: true,
            shutdown_grace: Duration::from_millis(300),
            ..Default::default()
        },
        dir.path().to_owned(),
        (),
    )
    .await;
    push_queue(
        &s,
        "stuck",
        json!({"url": format!("http://{addr}/hang"), "timeout_ms": 60_000}),
    )
    .await;
    let job = s
        .enqueue(json!({"queue": "stuck", "kind": "k", "payload": {}}))
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    s.eventually(5, "the delivery to start", || async {
        (s.job(&id).await["state"] == "running").then_some(())
    })
    .await;
    let store = s.store.clone();
    s.shutdown().await;
    drop(store);

    let store = keel_store::SqliteStore::open(
        keel_store::SqliteConfig::new(dir.path()),
        keel_core::Time::EPOCH,
    )
    .unwrap();
    let id: uuid::Uuid = id.parse().unwrap();
    let job = keel_store::Store::get_job(&store, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.state, job.attempt),
        (keel_core::State::Available, 0),
        "{job:?}"
    );
    let events = keel_store::Store::job_events(&store, id)
        .await
        .unwrap()
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.data.type_name()).collect();
    assert_eq!(types, ["enqueued", "leased", "released"]);
    assert!(
        keel_store::Store::verify(&store)
            .await
            .unwrap()
            .mismatched
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_push_queue_delivers_at_its_rate() {
    let (addr, _) = target().await;
    let s = keel().await;
    let body = json!({"target": {"url": format!("http://{addr}/ok")},
                      "rate_limit": {"per_second": 5, "burst": 1}});
    let q = s.call("PUT", "/v1/queues/paced", Some(body), 200).await;
    assert_eq!(
        q["config"]["rate_limit"],
        json!({"per_second": 5.0, "burst": 1})
    );
    let mut ids = vec![];
    for n in 0..6 {
        let job = s
            .enqueue(json!({"queue": "paced", "kind": "k", "payload": {"n": n}}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let mut at = vec![];
    for id in &ids {
        let (job, events) = settled(&s, id).await;
        assert_eq!(job["state"], "completed");
        let t = keel_core::Time::parse_rfc3339(delivery(&events)["at"].as_str().unwrap()).unwrap();
        at.push(t.as_millis());
    }
    at.sort();
    // One token at a time, five per second: consecutive deliveries at least ~200 ms apart.
    for pair in at.windows(2) {
        assert!(pair[1] - pair[0] >= 180, "deliveries too close: {at:?}");
    }
    for (body, pointer) in [
        (
            json!({"rate_limit": {"per_second": 0}}),
            "/rate_limit/per_second",
        ),
        (
            json!({"rate_limit": {"per_second": 5, "burst": 0}}),
            "/rate_limit/burst",
        ),
    ] {
        let (status, problem, _) = s
            .call_as(
                s.admin_token.as_deref(),
                "PUT",
                "/v1/queues/paced",
                Some(body),
            )
            .await;
        assert_eq!(
            (status, pointers(&problem)),
            (422, vec![pointer.to_owned()])
        );
    }
}

/// Enqueues with a `traceparent` header and returns the answer's status and body.
async fn enqueue_traced(s: &TestServer, path: &str, tp: &str, body: Value) -> (u16, Value) {
    let res = s
        .http
        .post(s.url(path))
        .header("traceparent", tp)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_travels_from_enqueue_to_the_worker_and_the_target() {
    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";
    let (addr, seen) = target().await;
    let s = keel().await;

    // Pull: stored with the job, read back, and handed to the worker in the lease.
    let body = json!({"queue": "traced", "kind": "k", "payload": {}, "idempotency_key": "t-1"});
    let (status, job) = enqueue_traced(&s, "/v1/jobs", TP, body.clone()).await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["traceparent"], TP);
    // A client's retry from another span is the same request, and keeps the first context.
    let (status, again) = enqueue_traced(&s, "/v1/jobs", OTHER, body).await;
    assert_eq!((status, &again["id"]), (200, &job["id"]), "{again}");
    assert_eq!(again["traceparent"], TP);
    let id = job["id"].as_str().unwrap();
    assert_eq!(s.job(id).await["traceparent"], TP);
    let leased = s.lease("traced", 1, 30_000).await;
    assert_eq!(leased[0]["traceparent"], TP);

    // A header that does not parse is ignored, as the recommendation asks: no context, no error.
    let (status, plain) = enqueue_traced(
        &s,
        "/v1/jobs",
        "00-not-a-trace-01",
        json!({"queue": "traced", "kind": "k", "payload": {}}),
    )
    .await;
    assert_eq!(status, 201, "{plain}");
    assert!(plain.get("traceparent").is_none(), "{plain}");

    // Push: a batch's jobs all carry the header's context, and the target receives it.
    push_queue(
        &s,
        "traced-push",
        json!({"url": format!("http://{addr}/ok")}),
    )
    .await;
    let (status, out) = enqueue_traced(
        &s,
        "/v1/jobs/batch",
        TP,
        json!({"jobs": [{"queue": "traced-push", "kind": "k", "payload": {"n": 1}}]}),
    )
    .await;
    assert_eq!(status, 201, "{out}");
    let pushed = out["jobs"][0]["id"].as_str().unwrap().to_owned();
    let (done, _) = settled(&s, &pushed).await;
    assert_eq!(done["state"], "completed");
    let requests = seen.requests.lock().unwrap().clone();
    let (_, headers, _) = requests
        .iter()
        .find(|(p, h, _)| p == "/ok" && h.get("keel-job-id") == Some(&pushed))
        .unwrap();
    assert_eq!(headers["traceparent"], TP);
}
