//! Tokens, roles and queue scopes: who gets in, what each role may do, what a scoped token can
//! see, revocation, audit, rate limits.

use serde_json::{Value, json};

use crate::helpers::{TestServer, job, pointers};

fn slug(problem: &Value) -> &str {
    problem["type"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("urn:keel:problem:")
}

#[tokio::test]
async fn no_unknown_or_malformed_tokens_get_401_and_change_nothing() {
    let s = TestServer::start().await;
    let client = reqwest::Client::new();
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("unknown token", Some("Bearer keel_0000".into())),
        ("not bearer", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("empty bearer", Some("Bearer ".into())),
        (
            "lower-case scheme with the right token",
            s.admin_token.as_ref().map(|t| format!("bearer{t}")),
        ),
    ];
    for (what, header) in cases {
        let mut req = client.post(s.url("/v1/jobs")).json(&job("q"));
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{what}");
        assert_eq!(
            res.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer realm=\"keel\"",
            "{what}"
        );
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let body: Value = res.json().await.unwrap();
        assert_eq!(slug(&body), "unauthorized", "{what}");
    }
    assert_eq!(s.job_count().await, 0);
    // The scheme is case-insensitive; the token is not.
    let token = s.admin_token.clone().unwrap();
    let res = client
        .get(s.url("/v1/jobs"))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let res = client
        .get(s.url("/v1/jobs"))
        .header("authorization", format!("Bearer {}", token.to_uppercase()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    // Health needs no token.
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = s.call_as(None, "GET", path, None).await;
        assert_eq!(status, 200, "{path}");
    }
}

/// Every route × every role: the status each role gets. A status other than 403 proves the
/// request got past authorisation (409 = reached the state machine).
#[tokio::test]
async fn each_role_may_do_exactly_what_the_role_table_says() {
    let s = TestServer::start().await;
    let mut tokens = vec![("admin", s.admin_token.clone().unwrap())];
    for role in ["producer", "worker", "viewer"] {
        tokens.push((role, s.token(role, None).await.1));
    }
    // (method, path with {id} for a fresh job / {tok} for a fresh token, body, [admin, producer, worker, viewer])
    type Row = (&'static str, &'static str, Value, [u16; 4]);
    let q = "billing.invoices";
    let rows: Vec<Row> = vec![
        ("POST", "/v1/jobs", job(q), [201, 201, 403, 403]),
        (
            "POST",
            "/v1/jobs/batch",
            json!({"jobs": [job(q)]}),
            [201, 201, 403, 403],
        ),
        ("GET", "/v1/jobs", Value::Null, [200, 200, 200, 200]),
        ("GET", "/v1/jobs/{id}", Value::Null, [200, 200, 200, 200]),
        (
            "GET",
            "/v1/jobs/{id}/events",
            Value::Null,
            [200, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/jobs/{id}/cancel",
            json!({}),
            [200, 200, 403, 403],
        ),
        (
            "POST",
            "/v1/jobs/{id}/retry",
            json!({}),
            [409, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/lease",
            json!({"queues": [q]}),
            [200, 403, 200, 403],
        ),
        (
            "POST",
            "/v1/jobs/{id}/heartbeat",
            json!({"lease_token": "x", "lease_ms": 1000}),
            [409, 403, 409, 403],
        ),
        (
            "POST",
            "/v1/jobs/{id}/complete",
            json!({"lease_token": "x"}),
            [409, 403, 409, 403],
        ),
        (
            "POST",
            "/v1/jobs/{id}/fail",
            json!({"lease_token": "x", "error": {"message": "m"}}),
            [409, 403, 409, 403],
        ),
        (
            "POST",
            "/v1/ack",
            json!({"items": [{"id": "{id}", "lease_token": "x", "outcome": "completed"}]}),
            [200, 403, 200, 403],
        ),
        ("GET", "/v1/queues", Value::Null, [200, 403, 403, 200]),
        (
            "GET",
            "/v1/queues/billing.invoices",
            Value::Null,
            [200, 403, 403, 200],
        ),
        (
            "PUT",
            "/v1/queues/billing.invoices",
            json!({"concurrency": 5}),
            [200, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/queues/billing.invoices/pause",
            json!({}),
            [200, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/queues/billing.invoices/resume",
            json!({}),
            [200, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/queues/billing.invoices/replay",
            json!({}),
            [200, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/queues/billing.invoices/purge",
            json!({"state": "dead"}),
            [200, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"name": "x", "role": "viewer"}),
            [201, 403, 403, 403],
        ),
        ("GET", "/v1/tokens", Value::Null, [200, 403, 403, 403]),
        (
            "DELETE",
            "/v1/tokens/{tok}",
            Value::Null,
            [204, 403, 403, 403],
        ),
        ("GET", "/v1/audit", Value::Null, [200, 403, 403, 200]),
        (
            "PUT",
            "/v1/schemas/report.kind",
            json!({"schema": {"type": "object"}}),
            [201, 403, 403, 403],
        ),
        ("GET", "/v1/schemas", Value::Null, [200, 403, 403, 200]),
        (
            "GET",
            "/v1/schemas/report.kind",
            Value::Null,
            [200, 403, 403, 200],
        ),
        (
            "DELETE",
            "/v1/schemas/report.kind",
            Value::Null,
            [204, 403, 403, 403],
        ),
    ];
    let mut failures = vec![];
    for (method, path, body, expected) in &rows {
        for ((role, token), want) in tokens.iter().zip(expected) {
            // A fresh job and token per call, so one role's call cannot change another's answer.
            let id = s.enqueue(job(q)).await["id"].as_str().unwrap().to_owned();
            let (tok, _) = s.token("viewer", None).await;
            let path = path.replace("{id}", &id).replace("{tok}", &tok);
            let body = (!body.is_null())
                .then(|| serde_json::from_str(&body.to_string().replace("{id}", &id)).unwrap());
            let (status, problem, _) = s.call_as(Some(token), method, &path, body).await;
            if status != *want {
                failures.push(format!(
                    "{role} {method} {path}: got {status}, want {want}: {problem}"
                ));
            } else if status == 403 {
                assert_eq!(slug(&problem), "forbidden");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role table violated:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_scoped_token_never_sees_or_touches_other_queues() {
    let s = TestServer::start().await;
    let mine = s.enqueue(job("billing.invoices")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = s.enqueue(job("hr.payroll")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, producer) = s.token("producer", Some(&["billing.*"])).await;
    let (_, viewer) = s.token("viewer", Some(&["billing.*"])).await;
    let (_, worker) = s.token("worker", Some(&["billing.*"])).await;
    let p = Some(producer.as_str());

    // Enqueue outside the scope: refused, and a batch with one such job writes nothing.
    let (status, _, _) = s
        .call_as(p, "POST", "/v1/jobs", Some(job("hr.payroll")))
        .await;
    assert_eq!(status, 403);
    let batch = json!({"jobs": [job("billing.x"), job("hr.payroll")]});
    let (status, _, _) = s.call_as(p, "POST", "/v1/jobs/batch", Some(batch)).await;
    assert_eq!(status, 403);
    assert_eq!(s.job_count().await, 2);

    // Listing shows only its queues; asking for another queue is refused.
    let (status, list, _) = s.call_as(p, "GET", "/v1/jobs", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()]);
    let (status, _, _) = s.call_as(p, "GET", "/v1/jobs?queue=hr.payroll", None).await;
    assert_eq!(status, 403);

    // Another queue's job does not exist for it: read, events, cancel all 404, nothing changes.
    for (method, path) in [
        ("GET", format!("/v1/jobs/{theirs}")),
        ("GET", format!("/v1/jobs/{theirs}/events")),
        ("POST", format!("/v1/jobs/{theirs}/cancel")),
    ] {
        let (status, _, _) = s.call_as(p, method, &path, Some(json!({}))).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    assert_eq!(s.job(&theirs).await["state"], "available");
    let (status, _, _) = s.call_as(p, "GET", &format!("/v1/jobs/{mine}"), None).await;
    assert_eq!(status, 200);

    // A scoped viewer lists only its queues, and cannot read the audit log (it spans all).
    let v = Some(viewer.as_str());
    let (_, queues, _) = s.call_as(v, "GET", "/v1/queues", None).await;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["billing.invoices"]);
    assert_eq!(
        s.call_as(v, "GET", "/v1/queues/hr.payroll", None).await.0,
        403
    );
    assert_eq!(s.call_as(v, "GET", "/v1/audit", None).await.0, 403);

    // A scoped worker cannot lease other queues, nor report on their jobs even with a valid
    // lease token obtained elsewhere.
    let w = Some(worker.as_str());
    assert_eq!(
        s.call_as(
            w,
            "POST",
            "/v1/lease",
            Some(json!({"queues": ["hr.payroll"]}))
        )
        .await
        .0,
        403
    );
    let leased = s.lease("hr.payroll", 1, 30_000).await;
    let token = leased[0]["lease"]["token"].as_str().unwrap();
    let ack = json!({"items": [{"id": theirs, "lease_token": token, "outcome": "completed"}]});
    let (status, res, _) = s.call_as(w, "POST", "/v1/ack", Some(ack)).await;
    assert_eq!(status, 200);
    assert_eq!(res["items"][0]["status"], 404, "{res}");
    let complete = json!({"lease_token": token});
    let (status, _, _) = s
        .call_as(
            w,
            "POST",
            &format!("/v1/jobs/{theirs}/complete"),
            Some(complete),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(s.job(&theirs).await["state"], "running");
}

#[tokio::test]
async fn a_deleted_token_is_refused_at_once_and_secrets_are_never_shown_again() {
    let s = TestServer::start().await;
    let (id, secret) = s.token("producer", None).await;
    assert!(
        secret.starts_with("keel_") && secret.len() == 69,
        "{secret}"
    );
    let (status, _, _) = s
        .call_as(Some(&secret), "POST", "/v1/jobs", Some(job("q")))
        .await;
    assert_eq!(status, 201);

    let listed = s.get("/v1/tokens", 200).await;
    assert!(!listed.to_string().contains(&secret));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token").is_none() && t.get("hash").is_none())
    );
    // Storage holds the hash only.
    let stored = s.store.tokens().await.unwrap();
    let rec = stored.iter().find(|t| t.id.to_string() == id).unwrap();
    assert_ne!(rec.hash, secret);
    assert!(!rec.hash.contains(&secret[5..]));

    s.call("DELETE", &format!("/v1/tokens/{id}"), None, 204)
        .await;
    let (status, body, _) = s
        .call_as(Some(&secret), "POST", "/v1/jobs", Some(job("q")))
        .await;
    assert_eq!((status, slug(&body)), (401, "unauthorized"));
    s.call("DELETE", &format!("/v1/tokens/{id}"), None, 404)
        .await;

    // The audit log names who did it, and never the secret.
    let audit = s.get("/v1/audit", 200).await;
    assert!(!audit.to_string().contains(&secret));
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(&actions[..2], ["token.deleted", "token.created"]);
    assert_eq!(audit["entries"][0]["actor"]["name"], "admin");
    assert_eq!(audit["entries"][0]["target"], id.as_str());
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_deleted() {
    let s = TestServer::start().await;
    let tokens = s.get("/v1/tokens", 200).await;
    let admin_id = tokens[0]["id"].as_str().unwrap().to_owned();
    let res = s
        .call("DELETE", &format!("/v1/tokens/{admin_id}"), None, 409)
        .await;
    assert_eq!(slug(&res), "invalid-state");
    // With a second admin, the first can go.
    let (_, second) = s.token("admin", None).await;
    let (status, _, _) = s
        .call_as(
            Some(&second),
            "DELETE",
            &format!("/v1/tokens/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = s
        .call_as(s.admin_token.as_deref(), "GET", "/v1/jobs", None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn bad_token_requests_are_422_with_pointers() {
    let s = TestServer::start().await;
    let cases = [
        (json!({"name": "", "role": "viewer"}), vec!["/name"]),
        (json!({"name": "x", "role": "root"}), vec!["/role"]),
        (
            json!({"name": "x", "role": "admin", "queues": ["a"]}),
            vec!["/queues"],
        ),
        (
            json!({"name": "x", "role": "worker", "queues": []}),
            vec!["/queues"],
        ),
        (
            json!({"name": "x", "role": "worker", "queues": ["ok.*", "bad/one"]}),
            vec!["/queues/1"],
        ),
        (
            json!({"name": "x", "role": "worker", "extra": 1}),
            vec!["/extra"],
        ),
    ];
    for (body, want) in cases {
        let res = s.post("/v1/tokens", body.clone(), 422).await;
        assert_eq!(pointers(&res), want, "{body}");
    }
    assert_eq!(s.get("/v1/tokens", 200).await.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_changes_are_audited_with_the_token_that_made_them() {
    let s = TestServer::start().await;
    let (ops_id, ops) = s.token("admin", None).await;
    let o = Some(ops.as_str());
    s.enqueue(job("mail")).await;
    assert_eq!(
        s.call_as(o, "PUT", "/v1/queues/mail", Some(json!({"concurrency": 2})))
            .await
            .0,
        200
    );
    assert_eq!(
        s.call_as(o, "POST", "/v1/queues/mail/pause", Some(json!({})))
            .await
            .0,
        200
    );
    assert_eq!(
        s.call_as(
            o,
            "POST",
            "/v1/queues/mail/purge",
            Some(json!({"state": "available"}))
        )
        .await
        .0,
        200
    );
    let audit = s.get("/v1/audit?limit=3", 200).await;
    let got: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
                e["actor"]["token_id"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("queue.purged", "mail"),
        ("queue.paused", "mail"),
        ("queue.configured", "mail"),
    ];
    for ((action, target, actor), (wa, wt)) in got.iter().zip(want) {
        assert_eq!(
            (action.as_str(), target.as_str(), actor.as_str()),
            (wa, wt, ops_id.as_str())
        );
    }
    assert_eq!(audit["entries"][0]["data"]["purged"], 1);
    // The next page continues where this one stopped.
    let cursor = audit["next_cursor"].as_str().unwrap();
    let next = s.get(&format!("/v1/audit?cursor={cursor}"), 200).await;
    assert_eq!(next["entries"][0]["action"], "token.created");
    s.get("/v1/audit?cursor=abc", 422).await;
}

#[tokio::test]
async fn no_auth_mode_needs_no_token() {
    let s = TestServer::start_with(keel_server::ServerConfig {
        auth: false,
        ..Default::default()
    })
    .await;
    let (status, _, _) = s.call_as(None, "POST", "/v1/jobs", Some(job("q"))).await;
    assert_eq!(status, 201);
    let audit = s.get("/v1/audit", 200).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 0);
    s.call("PUT", "/v1/queues/q", Some(json!({"concurrency": 1})), 200)
        .await;
    let audit = s.get("/v1/audit", 200).await;
    assert_eq!(
        audit["entries"][0]["actor"],
        json!({"token_id": null, "name": "no-auth"})
    );
}

#[tokio::test]
async fn a_token_over_its_rate_limit_gets_429_with_retry_after() {
    let s = TestServer::start_with(keel_server::ServerConfig {
        token_rate_limit: Some((1, 3)),
        ..Default::default()
    })
    .await;
    let (_, t) = s.token("viewer", None).await;
    let mut statuses = vec![];
    let mut retry_after = None;
    for _ in 0..5 {
        let (status, body, headers) = s.call_as(Some(&t), "GET", "/v1/jobs", None).await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(slug(&body), "rate-limited");
            retry_after = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[4], 429, "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
}
