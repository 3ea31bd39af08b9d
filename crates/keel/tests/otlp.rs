//! OTLP export (`--features otlp`): a real `keel serve` sends its spans to a local collector
//! over HTTP/protobuf, and a push delivery continues the job's trace: the target receives a
//! `traceparent` with the producer's trace id and keel's delivery span as parent.
//! `.ci/run` runs it with `cargo test -p keel --features otlp --test otlp`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[cfg(not(feature = "otlp"))]
#[test]
fn without_the_feature_an_otlp_endpoint_is_refused_plainly() {
    eprintln!(
        "skipped: the OTLP export test needs `--features otlp` (cargo test -p keel --features otlp --test otlp)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
        ])
        .env("KEEL_DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--features otlp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "otlp")]
mod with_otlp {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use serde_json::json;

    use crate::common::Keel;

    /// What a local HTTP server received: path, headers, body.
    type Received = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

    async fn recorder() -> (String, Received) {
        let seen: Received = Arc::default();
        let app = Router::new()
            .fallback(
                |State(s): State<Received>, uri: axum::http::Uri, h: HeaderMap, b: Bytes| async move {
                    s.lock().unwrap().push((uri.path().to_owned(), h, b));
                    ""
                },
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_the_collector_and_deliveries_continue_the_trace() {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        const PARENT: &str = "00f067aa0ba902b7";
        let (collector, spans) = recorder().await;
        let (target, deliveries) = recorder().await;
        let dir = tempfile::tempdir().unwrap();
        let k = Keel::start_with(
            dir.path(),
            "127.0.0.1:0",
            &["--otlp-endpoint", &collector, "--allow-private-targets"],
        );
        let http = k.http(Duration::from_secs(10));
        let res = http
            .put(format!("{}/v1/queues/traced", k.base))
            .json(&json!({"target": {"url": format!("{target}/hook")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let res = http
            .post(format!("{}/v1/jobs", k.base))
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .json(&json!({"queue": "traced", "kind": "k", "payload": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);

        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let sent = loop {
            if let Some((_, h, _)) = deliveries.lock().unwrap().first() {
                break h["traceparent"].to_str().unwrap().to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "no delivery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let fields: Vec<&str> = sent.split('-').collect();
        assert_eq!(
            fields[1], TRACE,
            "the delivery left the producer's trace: {sent}"
        );
        assert_ne!(
            fields[2], PARENT,
            "the delivery is not a child of keel's span: {sent}"
        );
        let delivery_span = fields[2].to_owned();

        // SIGTERM flushes the batch; then the collector holds the spans.
        assert!(k.terminate().success());
        let received = spans.lock().unwrap().clone();
        assert!(!received.is_empty(), "no spans exported");
        let (path, headers, _) = &received[0];
        assert_eq!(path, "/v1/traces");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let all: Vec<u8> = received.iter().flat_map(|(_, _, b)| b.to_vec()).collect();
        assert!(
            contains(&all, &hex(TRACE)),
            "no span in the producer's trace"
        );
        assert!(
            contains(&all, &hex(&delivery_span)),
            "the delivery span the target saw was not exported"
        );
        assert!(contains(&all, b"push.delivery") && contains(&all, b"request"));
    }
}

#[cfg(feature = "otlp")]
mod common;
