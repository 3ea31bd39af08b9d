//! Schedules over HTTP: the round trip, firing through the real timer loop, validation with
//! pointers (and nothing stored), roles and queue scopes, the audit trail.

use serde_json::{Value, json};

use crate::helpers::{TestServer, pointers};

fn template(queue: &str) -> Value {
    json!({"queue": queue, "kind": "report.daily", "payload": {"n": 1}})
}

#[tokio::test]
async fn a_schedule_round_trips_and_fires_through_the_timer_loop() {
    let s = TestServer::start().await;
    let created = s
        .call(
            "PUT",
            "/v1/schedules/heartbeat",
            Some(json!({"every_ms": 1000, "job": template("ticks")})),
            201,
        )
        .await;
    assert_eq!(created["every_ms"], 1000);
    assert_eq!(created["catch_up"], "one");
    assert_eq!(created["paused"], false);
    assert!(created.get("cron").is_none(), "{created}");
    assert!(created["next_run_at"].is_string());
    assert_eq!(created["job"]["queue"], "ticks");

    // The timer loop fires it; a long-polling worker receives the tick's job.
    let res = s
        .post(
            "/v1/lease",
            json!({"queues": ["ticks"], "max_jobs": 1, "wait_ms": 5000}),
            200,
        )
        .await;
    let job = &res["jobs"][0];
    let key = job["idempotency_key"].as_str().unwrap();
    assert!(key.starts_with("schedule:heartbeat:"), "{key}");
    assert_eq!(
        key,
        format!("schedule:heartbeat:{}", job["run_at"].as_str().unwrap())
    );
    assert_eq!(job["kind"], "report.daily");
    let fired = s.get("/v1/schedules/heartbeat", 200).await;
    let run = fired["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job_id"] == job["id"])
        .unwrap_or_else(|| panic!("no run names job {}: {fired}", job["id"]));
    assert_eq!(run["outcome"], "enqueued");
    assert_eq!(run["tick_at"], job["run_at"]);

    // Replacing answers 200 and keeps the clock; cron in a zone shows its next real tick.
    let replaced = s
        .call(
            "PUT",
            "/v1/schedules/heartbeat",
            Some(
                json!({"cron": "0 7 * * MON-FRI", "timezone": "Europe/Berlin",
                        "catch_up": "none", "job": template("ticks")}),
            ),
            200,
        )
        .await;
    assert_eq!(replaced["cron"], "0 7 * * MON-FRI");
    assert_eq!(replaced["timezone"], "Europe/Berlin");
    assert!(replaced.get("every_ms").is_none());
    let next = replaced["next_run_at"].as_str().unwrap();
    // 07:00 in Berlin is 06:00Z in winter and 05:00Z in summer.
    assert!(
        next.ends_with("T06:00:00.000Z") || next.ends_with("T05:00:00.000Z"),
        "{next}"
    );
    assert_eq!(replaced["created_at"], created["created_at"]);

    let paused = s
        .post("/v1/schedules/heartbeat/pause", json!(null), 200)
        .await;
    assert_eq!(
        (paused["paused"].clone(), paused["next_run_at"].clone()),
        (json!(true), Value::Null)
    );
    let resumed = s
        .post("/v1/schedules/heartbeat/resume", json!(null), 200)
        .await;
    assert_eq!(resumed["next_run_at"], replaced["next_run_at"]);

    let list = s.get("/v1/schedules", 200).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    s.call("DELETE", "/v1/schedules/heartbeat", None, 204).await;
    s.call("DELETE", "/v1/schedules/heartbeat", None, 404).await;
    s.get("/v1/schedules/heartbeat", 404).await;
    s.post("/v1/schedules/heartbeat/pause", json!(null), 404)
        .await;
    // The job it enqueued stays.
    s.job(job["id"].as_str().unwrap()).await;

    let audit = s.get("/v1/audit?limit=50", 200).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "heartbeat")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "schedule.deleted",
            "schedule.resumed",
            "schedule.paused",
            "schedule.updated",
            "schedule.created"
        ]
    );
}

#[tokio::test]
async fn a_schedule_created_paused_does_not_fire() {
    let s = TestServer::start().await;
    let created = s
        .call(
            "PUT",
            "/v1/schedules/later",
            Some(json!({"every_ms": 1000, "paused": true, "job": template("later")})),
            201,
        )
        .await;
    assert_eq!(
        (created["paused"].clone(), created["next_run_at"].clone()),
        (json!(true), Value::Null)
    );
    // Two ticks' worth of long poll: nothing arrives.
    let res = s
        .post(
            "/v1/lease",
            json!({"queues": ["later"], "max_jobs": 1, "wait_ms": 2100}),
            200,
        )
        .await;
    assert_eq!(res["jobs"], json!([]));
}

#[tokio::test]
async fn bad_schedules_get_422_with_pointers_and_store_nothing() {
    let s = TestServer::start().await;
    s.call(
        "PUT",
        "/v1/schemas/report.daily",
        Some(json!({"schema": {"type": "object", "properties": {"n": {"type": "integer"}}}})),
        201,
    )
    .await;
    let job = template("q");
    let mut timed = template("q");
    timed["run_at"] = json!("2030-01-01T00:00:00Z");
    timed["idempotency_key"] = json!("k");
    let mut bad_queue = template("q");
    bad_queue["queue"] = json!("no spaces");
    let mut bad_payload = template("q");
    bad_payload["payload"] = json!({"n": "one"});
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"cron": "61 * * * *", "job": job}), &["/cron"]),
        (json!({"cron": "0 0 30 2 *", "job": job}), &["/cron"]),
        (json!({"cron": "* * *", "job": job}), &["/cron"]),
        (
            json!({"cron": "0 7 * * *", "timezone": "Mars/Olympus", "job": job}),
            &["/timezone"],
        ),
        (
            json!({"cron": "0 7 * * *", "every_ms": 60000, "job": job}),
            &["/every_ms"],
        ),
        (json!({"job": job}), &[""]),
        (json!({"every_ms": 10, "job": job}), &["/every_ms"]),
        (
            json!({"every_ms": 60000, "timezone": "UTC", "job": job}),
            &["/timezone"],
        ),
        (
            json!({"every_ms": 60000, "catch_up": "sometimes", "job": job}),
            &["/catch_up"],
        ),
        (
            json!({"every_ms": 60000, "job": timed}),
            &["/job/run_at", "/job/idempotency_key"],
        ),
        (
            json!({"every_ms": 60000, "job": bad_queue}),
            &["/job/queue"],
        ),
        (
            json!({"every_ms": 60000, "job": bad_payload}),
            &["/job/payload/n"],
        ),
        (
            json!({"every_ms": 5, "catch_up": 3, "job": job}),
            &["/catch_up"],
        ),
    ];
    for (body, expected) in cases {
        let (status, problem, _) = s
            .call_as(
                s.admin_token.as_deref(),
                "PUT",
                "/v1/schedules/s",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body} -> {problem}");
        assert_eq!(
            problem["type"], "urn:keel:problem:validation-failed",
            "{body} -> {problem}"
        );
        assert_eq!(pointers(&problem), expected, "{body} -> {problem}");
    }
    let (status, problem, _) = s
        .call_as(
            s.admin_token.as_deref(),
            "PUT",
            "/v1/schedules/bad%20name",
            Some(json!({"every_ms": 60000, "job": job})),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(s.get("/v1/schedules", 200).await, json!([]));
    let audit = s.get("/v1/audit?limit=50", 200).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["action"].as_str().unwrap().starts_with("schedule.")),
        "{audit}"
    );
}

#[tokio::test]
async fn roles_and_queue_scopes_limit_schedules() {
    let s = TestServer::start().await;
    let body = |queue: &str| json!({"every_ms": 3_600_000, "job": template(queue)});
    s.call(
        "PUT",
        "/v1/schedules/b-hourly",
        Some(body("team-b.jobs")),
        201,
    )
    .await;
    let (_, viewer) = s.token("viewer", None).await;
    let (_, producer) = s.token("producer", None).await;
    let (status, list, _) = s.call_as(Some(&viewer), "GET", "/v1/schedules", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let (status, _, _) = s
        .call_as(Some(&viewer), "PUT", "/v1/schedules/v", Some(body("x")))
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = s
        .call_as(Some(&producer), "GET", "/v1/schedules", None)
        .await;
    assert_eq!(status, 403);

    // A viewer scoped to team A's queues sees team A's schedules only; team B's do not exist
    // for it.
    s.call(
        "PUT",
        "/v1/schedules/a-hourly",
        Some(body("team-a.jobs")),
        201,
    )
    .await;
    let (_, team_a) = s.token("viewer", Some(&["team-a.*"])).await;
    let (_, list, _) = s.call_as(Some(&team_a), "GET", "/v1/schedules", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-hourly"]);
    let (status, _, _) = s
        .call_as(Some(&team_a), "GET", "/v1/schedules/a-hourly", None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = s
        .call_as(Some(&team_a), "GET", "/v1/schedules/b-hourly", None)
        .await;
    assert_eq!(status, 404);
    for (method, path) in [
        ("DELETE", "/v1/schedules/a-hourly"),
        ("POST", "/v1/schedules/a-hourly/pause"),
    ] {
        let (status, _, _) = s.call_as(Some(&team_a), method, path, None).await;
        assert_eq!(status, 403, "{method} {path}");
    }
    let a = s.get("/v1/schedules/a-hourly", 200).await;
    assert_eq!(a["paused"], false);
}
