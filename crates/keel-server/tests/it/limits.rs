//! Hostile clients: slow headers and bodies, oversized headers, too many connections, far more
//! requests than the in-flight budget, and HTTPS.

use std::time::Duration;

use keel_server::{ConnLimits, ServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestServer, job};

fn config(conn: ConnLimits) -> ServerConfig {
    ServerConfig {
        conn,
        ..Default::default()
    }
}

/// Reads until the peer closes (or 10 s pass, which fails the test).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("the server did not close the connection")
        .ok();
    String::from_utf8_lossy(&buf).into_owned()
}

fn head(s: &TestServer, method: &str, path: &str, extra: &str) -> String {
    let token = s.admin_token.as_deref().unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n{extra}",
        s.addr
    )
}

/// Sends `POST /v1/jobs` with its whole head but only the first `sent` bytes of `body`; the
/// rest is the caller's to send (or not). The connection closes after the answer.
async fn start_slow_enqueue(s: &TestServer, body: &str, sent: usize) -> TcpStream {
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let extra = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head(s, "POST", "/v1/jobs", &extra).as_bytes())
        .await
        .unwrap();
    c.write_all(&body.as_bytes()[..sent]).await.unwrap();
    c
}

#[tokio::test]
async fn a_client_that_stalls_its_headers_is_disconnected_without_an_answer() {
    let s = TestServer::start_with(config(ConnLimits {
        header_read_timeout: Duration::from_millis(300),
        ..Default::default()
    }))
    .await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = read_to_close(&mut c).await;
    assert!(!got.contains("200"), "{got}");
    // The server is fine for everyone else.
    s.get("/healthz", 200).await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_writes_nothing() {
    let s = TestServer::start_with(config(ConnLimits {
        body_read_timeout: Duration::from_millis(300),
        ..Default::default()
    }))
    .await;
    let body = job("q").to_string();
    let mut c = start_slow_enqueue(&s, &body, 10).await;
    let got = read_to_close(&mut c).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("urn:keel:problem:request-timeout"), "{got}");
    assert_eq!(s.job_count().await, 0);
}

#[tokio::test]
async fn oversized_or_too_many_headers_get_431() {
    let s = TestServer::start_with(config(ConnLimits {
        max_header_bytes: 16 << 10,
        max_headers: 20,
        ..Default::default()
    }))
    .await;
    let big = format!(
        "X-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(32 << 10)
    );
    let many: String = (0..40)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    for extra in [big, many] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(head(&s, "GET", "/v1/jobs", &extra).as_bytes())
            .await
            .unwrap();
        let got = read_to_close(&mut c).await;
        assert!(
            got.starts_with("HTTP/1.1 431"),
            "{}",
            &got[..got.len().min(200)]
        );
    }
    s.get("/v1/jobs", 200).await;
}

#[tokio::test]
async fn the_default_header_count_limit_holds_too() {
    // At the default (100) hyper is not told the limit but uses its own: the same one.
    let s = TestServer::start().await;
    assert_eq!(ConnLimits::default().max_headers, 100);
    let headers = |n: usize| {
        (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>() + "Connection: close\r\n\r\n"
    };
    // `head` adds Host and Authorization: 90 more fit, 110 do not.
    for (extra, status) in [(90, "HTTP/1.1 200"), (110, "HTTP/1.1 431")] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(head(&s, "GET", "/v1/jobs", &headers(extra)).as_bytes())
            .await
            .unwrap();
        let got = read_to_close(&mut c).await;
        assert!(
            got.starts_with(status),
            "{extra} headers: {}",
            &got[..got.len().min(200)]
        );
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let s = TestServer::start_with(config(ConnLimits {
        max_connections: 3,
        ..Default::default()
    }))
    .await;
    let mut held = vec![];
    for _ in 0..3 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(head(&s, "GET", "/healthz", "\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c); // keep-alive: still open, still holding its slot
    }
    let mut extra = TcpStream::connect(s.addr).await.unwrap();
    let _ = extra
        .write_all(head(&s, "GET", "/healthz", "\r\n").as_bytes())
        .await;
    let got = read_to_close(&mut extra).await;
    assert!(got.is_empty(), "{got}");
    drop(held);
    // Slots come back when connections close.
    s.eventually(5, "a slot is free again", || async {
        reqwest::get(s.url("/healthz"))
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn a_full_budget_sheds_at_once_health_still_answers_and_nothing_acknowledged_is_lost() {
    let s = TestServer::start_with(ServerConfig {
        max_in_flight: 4,
        ..Default::default()
    })
    .await;
    // Four requests whose bodies are still arriving hold the whole budget.
    let body = job("q").to_string();
    let mut slow = vec![];
    for _ in 0..4 {
        slow.push(start_slow_enqueue(&s, &body, 5).await);
    }
    // The fifth is refused at once, with Retry-After; health answers from its own budget.
    let refused = s
        .eventually(5, "the budget is full", || async {
            let (status, body, headers) = s
                .call_as(s.admin_token.as_deref(), "POST", "/v1/jobs", Some(job("q")))
                .await;
            (status == 429).then_some((body, headers))
        })
        .await;
    assert_eq!(refused.0["type"], "urn:keel:problem:overloaded");
    assert_eq!(refused.1["retry-after"], "1");
    s.get("/healthz", 200).await;
    s.get("/readyz", 200).await;
    // The held requests finish normally once their bodies arrive.
    for mut c in slow {
        c.write_all(&body.as_bytes()[5..]).await.unwrap();
        let got = read_to_close(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 201"), "{got}");
    }
    assert_eq!(s.job_count().await, 4);
    s.enqueue(job("q")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_far_beyond_the_budget_gets_only_2xx_or_429_and_loses_nothing() {
    let s = TestServer::start_with(ServerConfig {
        max_in_flight: 2,
        ..Default::default()
    })
    .await;
    let mut tasks = vec![];
    for i in 0..400 {
        let (http, url) = (s.http.clone(), s.url("/v1/jobs"));
        tasks.push(tokio::spawn(async move {
            let body = json!({"queue": "flood", "kind": "k", "payload": {"i": i}, "idempotency_key": format!("k{i}")});
            let res = http.post(url).json(&body).send().await.unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            (status, v["id"].as_str().map(str::to_owned))
        }));
    }
    let health = s.call_as(None, "GET", "/healthz", None).await.0;
    let mut acked = vec![];
    let mut shed = 0;
    for t in tasks {
        match t.await.unwrap() {
            (201, Some(id)) => acked.push(id),
            (429, _) => shed += 1,
            other => panic!("unexpected answer under load: {other:?}"),
        }
    }
    assert_eq!(health, 200);
    println!("{} acknowledged, {shed} shed", acked.len());
    assert!(
        !acked.is_empty() && shed > 0,
        "{} acknowledged, {shed} shed",
        acked.len()
    );
    for id in &acked {
        assert_eq!(s.job(id).await["queue"], "flood");
    }
    assert_eq!(
        s.get("/v1/queues/flood", 200).await["counts"]["available"],
        acked.len()
    );
}

#[tokio::test]
async fn https_serves_the_api_when_a_certificate_is_configured() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    // Through PEM files, as `keel serve --tls-cert --tls-key` loads them.
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = keel_server::Tls::from_pem_files(&cert_path, &key_path).unwrap();
    assert!(
        keel_server::Tls::from_pem_files(&key_path, &key_path).is_err(),
        "a key is not a certificate"
    );
    drop(key);
    let s = TestServer::start_with(ServerConfig {
        tls: Some(tls),
        ..Default::default()
    })
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let req = head(&s, "GET", "/v1/jobs", "Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.ok();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"jobs\":[]"), "{out}");

    // Plain HTTP to the TLS port gets no answer.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain
        .write_all(head(&s, "GET", "/healthz", "\r\n").as_bytes())
        .await
        .unwrap();
    let got = read_to_close(&mut plain).await;
    assert!(!got.contains("200"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_long_polls_do_not_use_up_the_budget() {
    let s = TestServer::start_with(ServerConfig {
        max_in_flight: 2,
        ..Default::default()
    })
    .await;
    let mut polls = vec![];
    for _ in 0..4 {
        let (http, url) = (s.http.clone(), s.url("/v1/lease"));
        polls.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .json(&json!({"queues": ["idle"], "wait_ms": 3000}))
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        }));
        // Each poll works briefly (one lease attempt, holding a slot), then waits without one.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Four polls wait, yet a producer gets through a budget of two.
    s.enqueue(job("q")).await;
    s.enqueue(job("q")).await;
    for p in polls {
        assert_eq!(p.await.unwrap(), 200);
    }
}
