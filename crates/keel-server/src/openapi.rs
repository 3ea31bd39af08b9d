//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`.
//!
//! It is written here by hand, next to the route table, rather than derived with utoipa (see
//! ARCHITECTURE.md for why). Two tests keep it honest: `it::openapi` checks that every operation
//! it lists is routed (and every routed operation is listed), and in CI (`.ci/fuzz-api`)
//! `openapi-spec-validator` checks the served document against the OpenAPI 3.1 specification and
//! schemathesis checks that real responses match it.
//!
//! Invariant: every operation documents every status it can answer, including each problem
//! (`application/problem+json`) a request can meet before the handler (401, 408, 413, 415, 429).

use serde_json::{Map, Value, json};

/// A schema reference.
fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn nullable(schema: Value) -> Value {
    json!({ "anyOf": [schema, {"type": "null"}] })
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// What answers an operation may give, besides its successes.
#[derive(Clone, Copy)]
enum Errs {
    /// A read by path (`GET /v1/jobs/{id}`).
    Read,
    /// A read with query parameters.
    Query,
    /// A request with a JSON body.
    Body,
    /// A command without a body that can conflict (`cancel`, `retry`, `DELETE`).
    Command,
}

fn operation(
    id: &str,
    summary: &str,
    params: Vec<Value>,
    body: Option<Value>,
    successes: Vec<(&str, Value)>,
    errs: Errs,
) -> Value {
    let mut responses = Map::new();
    for (status, response) in successes {
        responses.insert(status.to_owned(), response);
    }
    let mut problems = vec!["401", "403", "404", "429", "500", "503"];
    match errs {
        Errs::Read => {}
        Errs::Query => problems.push("422"),
        Errs::Body => problems.extend(["400", "408", "409", "413", "415", "422", "507"]),
        Errs::Command => problems.extend(["409", "507"]),
    }
    for status in problems {
        responses.insert(
            status.to_owned(),
            json!({ "$ref": format!("#/components/responses/Problem{status}") }),
        );
    }
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "parameters": params,
        "responses": responses,
        "security": [{"bearer": []}],
    });
    if let Some(b) = body {
        op["requestBody"] = b;
    }
    op
}

fn path_param(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

fn query_param(name: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": schema })
}

fn name_schema() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$" })
}

/// 1–255 visible ASCII characters.
/// The W3C `traceparent` header an enqueue may carry; one that does not parse is ignored.
fn traceparent() -> Value {
    json!({"name": "traceparent", "in": "header", "required": false,
        "description": "W3C trace context, stored with the job(s) and handed on in leases and push deliveries; ignored when it does not parse.",
        "schema": {"type": "string"}})
}

fn idempotency_key() -> Value {
    json!({ "type": "string", "pattern": "^[!-~]{1,255}$" })
}

fn ms(max: i64) -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": max })
}

pub(crate) fn document() -> Value {
    let job_id = || path_param("id", json!({"type": "string", "format": "uuid"}));
    let queue_name = || path_param("name", name_schema());
    let kind_name = || path_param("kind", name_schema());
    let schedule_name = || path_param("name", name_schema());
    let job_ok = || ok("The job.", r("Job"));
    let queue_ok = || ok("The queue.", r("Queue"));
    let paths = json!({
        "/v1/jobs": {
            "post": operation("enqueue", "Enqueue one job", vec![
                json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": idempotency_key()}),
                traceparent(),
            ], Some(json_body(r("EnqueueRequest"))), vec![
                ("201", ok("Created; on disk before this answer.", r("Job"))),
                ("200", ok("An identical earlier request with the same idempotency key: its job.", r("Job"))),
            ], Errs::Body),
            "get": operation("listJobs", "List jobs, newest first", vec![
                query_param("queue", name_schema()),
                query_param("kind", name_schema()),
                query_param("tag", name_schema()),
                query_param("state", r("State")),
                query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                query_param("cursor", json!({"type": "string", "format": "uuid"})),
            ], None, vec![("200", ok("A page of jobs.", r("JobPage")))], Errs::Query),
        },
        "/v1/jobs/batch": {
            "post": operation("enqueueBatch", "Enqueue up to 1,000 jobs, all or none", vec![traceparent()],
                Some(json_body(json!({"type": "object", "required": ["jobs"], "additionalProperties": false,
                    "properties": {"jobs": {"type": "array", "minItems": 1, "maxItems": 1000, "items": r("EnqueueRequest")}}}))),
                vec![("201", ok("Created (replays come back as their original job).", r("JobList")))], Errs::Body),
        },
        "/v1/jobs/{id}": {
            "get": operation("getJob", "Read a job", vec![job_id()], None, vec![("200", job_ok())], Errs::Read),
        },
        "/v1/jobs/{id}/events": {
            "get": operation("jobEvents", "A job's history, oldest first", vec![job_id()], None,
                vec![("200", ok("Events.", json!({"type": "object", "required": ["events"],
                    "properties": {"events": {"type": "array", "items": r("Event")}}})))], Errs::Read),
        },
        "/v1/jobs/{id}/cancel": {
            "post": operation("cancelJob", "Cancel a job that is not final", vec![job_id()], None, vec![("200", job_ok())], Errs::Command),
        },
        "/v1/jobs/{id}/retry": {
            "post": operation("retryJob", "A dead or cancelled job back to available", vec![job_id()], None, vec![("200", job_ok())], Errs::Command),
        },
        "/v1/jobs/{id}/heartbeat": {
            "post": operation("heartbeat", "Extend a lease", vec![job_id()],
                Some(json_body(json!({"type": "object", "required": ["lease_token"], "additionalProperties": false,
                    "properties": {"lease_token": {"type": "string"}, "lease_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000}}}))),
                vec![("200", ok("The new expiry.", json!({"type": "object", "required": ["expires_at"], "properties": {"expires_at": r("Time")}})))], Errs::Body),
        },
        "/v1/jobs/{id}/complete": {
            "post": operation("complete", "Report success", vec![job_id()],
                Some(json_body(json!({"type": "object", "required": ["lease_token"], "additionalProperties": false,
                    "properties": {"lease_token": {"type": "string"}, "result": {}}}))),
                vec![("200", job_ok())], Errs::Body),
        },
        "/v1/jobs/{id}/fail": {
            "post": operation("fail", "Report a failure", vec![job_id()],
                Some(json_body(json!({"type": "object", "required": ["lease_token", "error"], "additionalProperties": false,
                    "properties": {"lease_token": {"type": "string"}, "error": r("ErrorReport"), "retry_in_ms": ms(31_536_000_000)}}))),
                vec![("200", job_ok())], Errs::Body),
        },
        "/v1/lease": {
            "post": operation("lease", "Lease jobs, waiting up to wait_ms for work", vec![],
                Some(json_body(json!({"type": "object", "required": ["queues"], "additionalProperties": false, "properties": {
                    "queues": {"type": "array", "minItems": 1, "maxItems": 64, "items": name_schema()},
                    "max_jobs": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "wait_ms": ms(60_000),
                    "lease_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                    "worker": {"type": "string", "maxLength": 255}}}))),
                vec![("200", ok("Leased jobs (possibly none).", json!({"type": "object", "required": ["jobs"],
                    "properties": {"jobs": {"type": "array", "items": r("LeasedJob")}}})))], Errs::Body),
        },
        "/v1/ack": {
            "post": operation("ack", "Report many outcomes; each item succeeds or fails alone", vec![],
                Some(json_body(json!({"type": "object", "required": ["items"], "additionalProperties": false, "properties": {
                    "items": {"type": "array", "minItems": 1, "maxItems": 1000, "items": r("AckItem")}}}))),
                vec![("200", ok("One result per item.", json!({"type": "object", "required": ["items"],
                    "properties": {"items": {"type": "array", "items": r("AckResult")}}})))], Errs::Body),
        },
        "/v1/queues": {
            "get": operation("listQueues", "Every queue the token may see", vec![], None,
                vec![("200", ok("Queues.", json!({"type": "array", "items": r("Queue")})))], Errs::Read),
        },
        "/v1/queues/{name}": {
            "get": operation("getQueue", "Read a queue", vec![queue_name()], None, vec![("200", queue_ok())], Errs::Read),
            "put": operation("configureQueue", "Change a queue's settings (null resets one)", vec![queue_name()],
                Some(json_body(r("QueuePatch"))), vec![("200", queue_ok())], Errs::Body),
        },
        "/v1/queues/{name}/pause": {
            "post": operation("pauseQueue", "Stop handing out the queue's jobs", vec![queue_name()], None, vec![("200", queue_ok())], Errs::Command),
        },
        "/v1/queues/{name}/resume": {
            "post": operation("resumeQueue", "Hand out the queue's jobs again", vec![queue_name()], None, vec![("200", queue_ok())], Errs::Command),
        },
        "/v1/queues/{name}/replay": {
            "post": operation("replayQueue", "Dead (or cancelled) jobs back to available", vec![queue_name()],
                Some(json_body(json!({"type": "object", "additionalProperties": false, "properties": {
                    "state": {"enum": ["dead", "cancelled"]}, "kind": name_schema(),
                    "limit": {"type": "integer", "minimum": 1, "maximum": 100_000}}}))),
                vec![("200", ok("How many.", json!({"type": "object", "required": ["replayed"], "properties": {"replayed": {"type": "integer", "minimum": 0}}})))], Errs::Body),
        },
        "/v1/queues/{name}/purge": {
            "post": operation("purgeQueue", "Delete the queue's jobs in one state", vec![queue_name()],
                Some(json_body(json!({"type": "object", "required": ["state"], "additionalProperties": false, "properties": {
                    "state": {"enum": ["dead", "completed", "cancelled", "available"]}}}))),
                vec![("200", ok("How many.", json!({"type": "object", "required": ["purged"], "properties": {"purged": {"type": "integer", "minimum": 0}}})))], Errs::Body),
        },
        "/metrics": {
            "get": {"operationId": "metrics", "summary": "Prometheus metrics (docs/operations.md lists them)", "security": [],
                "responses": {"200": {"description": "Prometheus text format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "429": {"$ref": "#/components/responses/Problem429"}}},
        },
        "/v1/targets": {
            "get": operation("listTargets", "Push origins and their circuit breakers (this node's view)", vec![], None,
                vec![("200", ok("Origins.", json!({"type": "array", "items": r("Origin")})))], Errs::Read),
        },
        "/v1/schemas": {
            "get": operation("listSchemas", "Every payload schema", vec![], None,
                vec![("200", ok("Schemas.", json!({"type": "array", "items": r("Schema")})))], Errs::Read),
        },
        "/v1/schemas/{kind}": {
            "get": operation("getSchema", "A kind's payload schema", vec![kind_name()], None, vec![("200", ok("The schema.", r("Schema")))], Errs::Read),
            "put": operation("putSchema", "Set a kind's payload schema (JSON Schema 2020-12)", vec![kind_name()],
                Some(json_body(json!({"type": "object", "required": ["schema"], "additionalProperties": false,
                    "properties": {"schema": {"type": ["object", "boolean"]}}}))),
                vec![("201", ok("Created.", r("Schema"))), ("200", ok("Replaced.", r("Schema")))], Errs::Body),
            "delete": operation("deleteSchema", "Stop checking a kind's payloads", vec![kind_name()], None,
                vec![("204", json!({"description": "Deleted."}))], Errs::Command),
        },
        "/v1/schedules": {
            "get": operation("listSchedules", "Every schedule, with its next tick and latest runs", vec![], None,
                vec![("200", ok("Schedules.", json!({"type": "array", "items": r("Schedule")})))], Errs::Read),
        },
        "/v1/schedules/{name}": {
            "get": operation("getSchedule", "A schedule", vec![schedule_name()], None, vec![("200", ok("The schedule.", r("Schedule")))], Errs::Read),
            "put": operation("putSchedule", "Create or replace a schedule (cron in a time zone, or every_ms)", vec![schedule_name()],
                Some(json_body(r("ScheduleRequest"))),
                vec![("201", ok("Created.", r("Schedule"))), ("200", ok("Replaced.", r("Schedule")))], Errs::Body),
            "delete": operation("deleteSchedule", "Delete a schedule (its jobs stay)", vec![schedule_name()], None,
                vec![("204", json!({"description": "Deleted."}))], Errs::Command),
        },
        "/v1/schedules/{name}/pause": {
            "post": operation("pauseSchedule", "Stop firing until resumed", vec![schedule_name()], None,
                vec![("200", ok("The schedule.", r("Schedule")))], Errs::Command),
        },
        "/v1/schedules/{name}/resume": {
            "post": operation("resumeSchedule", "Fire again from the next tick (ticks missed while paused do not run)", vec![schedule_name()], None,
                vec![("200", ok("The schedule.", r("Schedule")))], Errs::Command),
        },
        "/v1/tokens": {
            "post": operation("createToken", "Create an API token (its secret is shown only here)", vec![],
                Some(json_body(json!({"type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                    "name": name_schema(), "role": r("Role"),
                    "queues": {"type": "array", "minItems": 1, "maxItems": 64, "items": {"type": "string", "pattern": "^[A-Za-z0-9._:*-]{1,128}$"}}}}))),
                vec![("201", ok("The token and its secret.", json!({"allOf": [r("Token"), {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}]})))], Errs::Body),
            "get": operation("listTokens", "Every token, without secrets", vec![], None,
                vec![("200", ok("Tokens.", json!({"type": "array", "items": r("Token")})))], Errs::Read),
        },
        "/v1/tokens/{id}": {
            "delete": operation("deleteToken", "Revoke a token at once", vec![path_param("id", json!({"type": "string"}))], None,
                vec![("204", json!({"description": "Revoked."}))], Errs::Command),
        },
        "/v1/audit": {
            "get": operation("audit", "Admin changes, newest first", vec![
                query_param("limit", json!({"type": "integer", "minimum": 1, "maximum": 500})),
                query_param("cursor", json!({"type": "string"})),
            ], None, vec![("200", ok("A page of entries.", r("AuditPage")))], Errs::Query),
        },
        "/healthz": {
            "get": {"operationId": "healthz", "summary": "The process answers", "security": [],
                "responses": {"200": ok("Alive.", json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})),
                    "429": {"$ref": "#/components/responses/Problem429"}}},
        },
        "/readyz": {
            "get": {"operationId": "readyz", "summary": "Storage takes writes", "security": [],
                "responses": {"200": ok("Ready.", json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}})),
                    "429": {"$ref": "#/components/responses/Problem429"},
                    "503": {"$ref": "#/components/responses/Problem503"}}},
        },
        "/v1/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": ok("OpenAPI 3.1.", json!({"type": "object"})),
                    "429": {"$ref": "#/components/responses/Problem429"}}},
        },
    });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "keel",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A durable background-job server. Errors are RFC 9457 problems whose type is urn:keel:problem:<slug>."
        },
        "paths": paths,
        "components": components(),
    })
}

fn components() -> Value {
    let time = json!({"type": "string", "format": "date-time"});
    let mut responses = Map::new();
    for (status, what) in [
        ("400", "Malformed JSON."),
        ("401", "No token, or an unknown or revoked one."),
        ("403", "The token's role or queues do not allow this."),
        (
            "404",
            "No such job, queue, schema, schedule, token or route.",
        ),
        ("408", "The request body did not arrive in time."),
        (
            "409",
            "Lease lost, invalid state, idempotency key reused, or the last admin token.",
        ),
        ("413", "The body is too large."),
        ("415", "The body is not JSON."),
        ("422", "Validation failed; errors point at each problem."),
        ("429", "Overloaded or rate limited; see Retry-After."),
        ("500", "An unexpected error; it was logged."),
        ("503", "Storage unavailable; see Retry-After."),
        ("507", "The disk is full; nothing was written."),
    ] {
        responses.insert(
            format!("Problem{status}"),
            json!({"description": what, "content": {"application/problem+json": {"schema": r("Problem")}}}),
        );
    }
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": responses,
        "schemas": {
            "Time": time,
            "State": {"enum": ["scheduled", "available", "running", "completed", "dead", "cancelled"]},
            "Role": {"enum": ["admin", "producer", "worker", "viewer"]},
            "Backoff": {"type": "object", "required": ["initial_ms", "max_ms"], "additionalProperties": false,
                "description": "max_ms must be at least initial_ms.", "properties": {
                "initial_ms": {"type": "integer", "minimum": 1, "maximum": 31_536_000_000i64},
                "max_ms": {"type": "integer", "minimum": 1, "maximum": 31_536_000_000i64},
                "jitter": {"type": "number", "minimum": 0, "maximum": 1}}},
            "Retention": {"type": "object", "required": ["completed_ms", "dead_ms"], "additionalProperties": false, "properties": {
                "completed_ms": {"type": "integer", "minimum": 0}, "dead_ms": {"type": "integer", "minimum": 0}}},
            "JobError": {"type": "object", "required": ["message", "attempt", "at"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}, "attempt": {"type": "integer"}, "at": r("Time")}},
            "Job": {"type": "object", "required": ["id", "queue", "kind", "payload", "state", "priority", "attempt", "max_attempts",
                    "timeout_ms", "backoff", "run_at", "created_at", "updated_at", "finished_at", "idempotency_key", "tags", "last_error", "result"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"}, "queue": {"type": "string"}, "kind": {"type": "string"},
                    "payload": {}, "state": r("State"), "priority": {"type": "integer"}, "attempt": {"type": "integer", "minimum": 0},
                    "max_attempts": {"type": "integer", "minimum": 1}, "timeout_ms": {"type": "integer"}, "backoff": r("Backoff"),
                    "run_at": r("Time"), "created_at": r("Time"), "updated_at": r("Time"), "finished_at": nullable(r("Time")),
                    "idempotency_key": nullable(json!({"type": "string"})), "tags": {"type": "array", "items": {"type": "string"}},
                    "last_error": nullable(r("JobError")), "result": {},
                    "traceparent": {"type": "string", "description": "The W3C trace context the job was enqueued with; absent when none."}}},
            "LeasedJob": {"allOf": [r("Job"), {"type": "object", "required": ["lease"], "properties": {"lease": {
                "type": "object", "required": ["token", "expires_at"], "properties": {"token": {"type": "string"}, "expires_at": r("Time")}}}}]},
            "JobList": {"type": "object", "required": ["jobs"], "properties": {"jobs": {"type": "array", "items": r("Job")}}},
            "JobPage": {"type": "object", "required": ["jobs", "next_cursor"], "properties": {
                "jobs": {"type": "array", "items": r("Job")}, "next_cursor": nullable(json!({"type": "string"}))}},
            "EnqueueRequest": {"type": "object", "required": ["queue", "kind", "payload"], "additionalProperties": false,
                "not": {"required": ["run_at", "delay_ms"]}, "properties": {
                "queue": name_schema(), "kind": name_schema(), "payload": {},
                "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "run_at": time.clone(), "delay_ms": ms(31_536_000_000),
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                "backoff": r("Backoff"),
                "idempotency_key": idempotency_key(),
                "tags": {"type": "array", "maxItems": 32, "items": name_schema()}}},
            "ScheduleJob": {"type": "object", "required": ["queue", "kind", "payload"], "additionalProperties": false,
                "description": "An enqueue request without run_at, delay_ms and idempotency_key: each tick's job runs at the tick and is keyed schedule:<name>:<tick>.",
                "properties": {
                "queue": name_schema(), "kind": name_schema(), "payload": {},
                "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 1000},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                "backoff": r("Backoff"),
                "tags": {"type": "array", "maxItems": 32, "items": name_schema()}}},
            "ScheduleRequest": {"type": "object", "required": ["job"], "additionalProperties": false,
                "oneOf": [{"required": ["cron"], "not": {"required": ["every_ms"]}}, {"required": ["every_ms"], "not": {"anyOf": [{"required": ["cron"]}, {"required": ["timezone"]}]}}],
                "properties": {
                "cron": {"type": "string", "maxLength": 256, "description": "5 fields (or 6 with seconds first), or @hourly/@daily/@weekly/@monthly/@yearly."},
                "timezone": {"type": "string", "description": "IANA zone name; default UTC."},
                "every_ms": {"type": "integer", "minimum": 1_000, "maximum": 31_622_400_000i64},
                "catch_up": r("CatchUp"),
                "paused": {"type": "boolean"},
                "job": r("ScheduleJob")}},
            "CatchUp": {"enum": ["none", "one", "all"]},
            "Schedule": {"type": "object", "required": ["name", "catch_up", "paused", "job", "next_run_at", "last_tick_at", "created_at", "updated_at", "runs"],
                "properties": {
                "name": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string"}, "every_ms": {"type": "integer"},
                "catch_up": r("CatchUp"), "paused": {"type": "boolean"}, "job": r("ScheduleJob"),
                "next_run_at": nullable(r("Time")), "last_tick_at": nullable(r("Time")),
                "created_at": r("Time"), "updated_at": r("Time"),
                "runs": {"type": "array", "items": {"type": "object", "required": ["tick_at", "fired_at", "outcome", "job_id"], "properties": {
                    "tick_at": r("Time"), "fired_at": r("Time"), "outcome": {"enum": ["enqueued", "duplicate", "skipped"]},
                    "job_id": nullable(json!({"type": "string", "format": "uuid"})), "skipped_until": r("Time")}}}}},
            "ErrorReport": {"type": "object", "required": ["message"], "additionalProperties": false, "properties": {
                "message": {"type": "string", "maxLength": 8192}, "type": {"type": "string", "maxLength": 128}, "retryable": {"type": "boolean"}}},
            "AckItem": {"oneOf": [
                {"type": "object", "required": ["id", "lease_token", "outcome"], "additionalProperties": false, "properties": {
                    "id": {"type": "string", "format": "uuid"}, "lease_token": {"type": "string"}, "outcome": {"const": "completed"},
                    "result": {}}},
                {"type": "object", "required": ["id", "lease_token", "outcome", "error"], "additionalProperties": false, "properties": {
                    "id": {"type": "string", "format": "uuid"}, "lease_token": {"type": "string"}, "outcome": {"const": "failed"},
                    "error": r("ErrorReport"), "retry_in_ms": ms(31_536_000_000)}}]},
            "AckResult": {"type": "object", "required": ["id", "status", "job"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "status": {"type": "integer"}, "job": nullable(r("Job")),
                "error": {"type": "object", "properties": {"type": {"type": "string"}, "detail": {"type": "string"}}}}},
            "Event": {"type": "object", "required": ["type", "seq", "at"], "properties": {
                "type": {"type": "string"}, "seq": {"type": "integer"}, "at": r("Time"), "data": {"type": "object"}}},
            "QueueConfig": {"type": "object", "required": ["concurrency", "max_attempts", "timeout_ms", "backoff", "retention"], "properties": {
                "concurrency": nullable(json!({"type": "integer", "minimum": 1})), "max_attempts": {"type": "integer"},
                "timeout_ms": {"type": "integer"}, "backoff": r("Backoff"), "retention": r("Retention"),
                "target": nullable(r("Target")),
                "rate_limit": nullable(json!({"type": "object", "required": ["per_second", "burst"], "properties": {
                    "per_second": {"type": "number"}, "burst": {"type": "integer"}}}))}},
            "Queue": {"type": "object", "required": ["name", "paused", "config", "counts", "oldest_available_age_ms"], "properties": {
                "name": {"type": "string"}, "paused": {"type": "boolean"}, "config": r("QueueConfig"),
                "counts": {"type": "object", "required": ["scheduled", "available", "running", "completed", "dead", "cancelled"],
                    "additionalProperties": {"type": "integer", "minimum": 0}},
                "oldest_available_age_ms": nullable(json!({"type": "integer", "minimum": 0}))}},
            "QueuePatch": {"type": "object", "additionalProperties": false, "properties": {
                "concurrency": nullable(json!({"type": "integer", "minimum": 1, "maximum": 100_000})),
                "max_attempts": nullable(json!({"type": "integer", "minimum": 1, "maximum": 1000})),
                "timeout_ms": nullable(json!({"type": "integer", "minimum": 1, "maximum": 86_400_000})),
                "backoff": nullable(r("Backoff")), "retention": nullable(r("Retention")),
                "target": nullable(r("TargetRequest")),
                "rate_limit": nullable(json!({"type": "object", "required": ["per_second"], "additionalProperties": false, "properties": {
                    "per_second": {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000},
                    "burst": {"type": "integer", "minimum": 1, "maximum": 1_000_000}}}))}},
            "TargetRequest": {"type": "object", "required": ["url"], "additionalProperties": false,
                "description": "Push mode: keel POSTs each job's payload to url. Loopback and private addresses need --allow-private-targets; link-local never.",
                "properties": {
                "url": {"type": "string", "format": "uri", "maxLength": 2048},
                "headers": {"type": "object", "maxProperties": 32, "additionalProperties": {"type": "string", "maxLength": 4096}},
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 300_000},
                "signing_secret": {"type": "string", "description": "whsec_ + base64 (Standard Webhooks); \"***\" keeps the current one."},
                "breaker": {"type": "object", "additionalProperties": false, "properties": {
                    "failure_threshold": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "open_ms": {"type": "integer", "minimum": 100, "maximum": 600_000}}}}},
            "Target": {"type": "object", "required": ["url", "timeout_ms", "breaker"], "properties": {
                "url": {"type": "string"}, "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "timeout_ms": {"type": "integer"}, "signing_secret": {"const": "***"},
                "breaker": {"type": "object", "required": ["failure_threshold", "open_ms"], "properties": {
                    "failure_threshold": {"type": "integer"}, "open_ms": {"type": "integer"}}}}},
            "Origin": {"type": "object", "required": ["origin", "queues", "state", "consecutive_failures", "opened_at", "next_probe_at", "history"], "properties": {
                "origin": {"type": "string"}, "queues": {"type": "array", "items": {"type": "string"}},
                "state": {"enum": ["closed", "open", "half_open"]}, "consecutive_failures": {"type": "integer", "minimum": 0},
                "opened_at": nullable(r("Time")), "next_probe_at": nullable(r("Time")),
                "history": {"type": "array", "items": {"type": "object", "required": ["at", "change"], "properties": {
                    "at": r("Time"), "change": {"enum": ["opened", "closed"]}, "open_ms": {"type": "integer"}}}}}},
            "Schema": {"type": "object", "required": ["kind", "schema", "version", "updated_at"], "properties": {
                "kind": {"type": "string"}, "schema": {}, "version": {"type": "integer", "minimum": 1}, "updated_at": r("Time")}},
            "Token": {"type": "object", "required": ["id", "name", "role", "queues", "created_at"], "properties": {
                "id": {"type": "string", "format": "uuid"}, "name": {"type": "string"}, "role": r("Role"),
                "queues": nullable(json!({"type": "array", "items": {"type": "string"}})), "created_at": r("Time")}},
            "AuditPage": {"type": "object", "required": ["entries", "next_cursor"], "properties": {
                "entries": {"type": "array", "items": {"type": "object", "required": ["seq", "at", "actor", "action", "target", "data"], "properties": {
                    "seq": {"type": "integer"}, "at": r("Time"), "action": {"type": "string"}, "target": {"type": "string"}, "data": {},
                    "actor": {"type": "object", "required": ["token_id", "name"], "properties": {
                        "token_id": nullable(json!({"type": "string", "format": "uuid"})), "name": {"type": "string"}}}}}},
                "next_cursor": nullable(json!({"type": "string"}))}},
            "Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": {"type": "string", "pattern": "^urn:keel:problem:[a-z-]+$"}, "title": {"type": "string"},
                "status": {"type": "integer"}, "detail": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "required": ["pointer", "message"], "properties": {
                    "pointer": {"type": "string"}, "message": {"type": "string"}}}}}},
        }
    })
}
