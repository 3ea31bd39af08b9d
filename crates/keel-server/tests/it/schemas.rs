//! Payload schemas: bad schemas are refused, payloads are checked at enqueue with pointers, and
//! a schema change never touches stored jobs.

use serde_json::{Value, json};

use crate::helpers::{TestServer, pointers};

fn signup(payload: Value) -> Value {
    json!({"queue": "emails", "kind": "email.welcome", "payload": payload})
}

fn welcome_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["to", "user_id"],
        "properties": {
            "to": {"type": "string", "format": "email", "maxLength": 254},
            "user_id": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "additionalProperties": false
    })
}

#[tokio::test]
async fn payloads_are_checked_against_their_kind_with_a_pointer_per_violation() {
    let s = TestServer::start().await;
    let put = s
        .call(
            "PUT",
            "/v1/schemas/email.welcome",
            Some(json!({"schema": welcome_schema()})),
            201,
        )
        .await;
    assert_eq!(put["version"], 1);
    assert_eq!(put["schema"], welcome_schema());

    s.enqueue(signup(json!({"to": "ada@example.com", "user_id": 1})))
        .await;
    // Other kinds are not checked.
    s.enqueue(json!({"queue": "emails", "kind": "email.other", "payload": 5}))
        .await;

    let bad = s
        .post(
            "/v1/jobs",
            signup(json!({"user_id": "one", "tags": ["ok", 7], "extra": true})),
            422,
        )
        .await;
    let mut got = pointers(&bad);
    got.sort();
    assert_eq!(
        got,
        [
            "/payload",
            "/payload",
            "/payload/tags/1",
            "/payload/user_id"
        ],
        "{bad}"
    );
    let messages: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        messages.contains(&"\"to\" is a required property"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("'extra' was unexpected")),
        "{messages:?}"
    );

    // In a batch, pointers name the job; one bad job writes nothing.
    let batch = json!({"jobs": [
        signup(json!({"to": "b@example.com", "user_id": 2})),
        signup(json!({"to": "c@example.com", "user_id": 0})),
    ]});
    let bad = s.post("/v1/jobs/batch", batch, 422).await;
    assert_eq!(pointers(&bad), ["/jobs/1/payload/user_id"]);
    assert_eq!(s.job_count().await, 2);
}

#[tokio::test]
async fn a_bad_schema_is_422_and_is_not_stored() {
    let s = TestServer::start().await;
    let cases = [
        (json!({"type": "nope"}), "/schema/type"),
        (
            json!({"type": "object", "properties": {"a": {"minLength": -1}}}),
            "/schema/properties/a/minLength",
        ),
        (json!(["not", "a", "schema"]), "/schema"),
        // Remote references are never fetched (no SSRF): the schema is refused instead.
        (
            json!({"$ref": "http://169.254.169.254/latest/meta-data"}),
            "/schema",
        ),
        // Lookaround needs a backtracking engine; patterns run on a linear-time one.
        (json!({"type": "string", "pattern": "(?=a)a"}), "/schema"),
    ];
    for (schema, pointer) in cases {
        let res = s
            .call("PUT", "/v1/schemas/k", Some(json!({"schema": schema})), 422)
            .await;
        let got = pointers(&res);
        assert!(
            got.iter().any(|p| p.starts_with(pointer)),
            "{schema}: {res}"
        );
    }
    s.call(
        "PUT",
        "/v1/schemas/k",
        Some(json!({"schema": {}, "extra": 1})),
        422,
    )
    .await;
    s.call(
        "PUT",
        "/v1/schemas/bad%20kind",
        Some(json!({"schema": {}})),
        422,
    )
    .await;
    assert_eq!(s.get("/v1/schemas", 200).await, json!([]));
    s.get("/v1/schemas/k", 404).await;
    // Nothing was audited either (the one entry is the bootstrap admin token).
    let audit = s.get("/v1/audit", 200).await;
    assert_eq!(audit["entries"].as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit["entries"][0]["action"], "token.created");
}

#[tokio::test]
async fn a_schema_change_never_touches_stored_jobs() {
    let s = TestServer::start().await;
    s.call(
        "PUT",
        "/v1/schemas/email.welcome",
        Some(json!({"schema": {"type": "object"}})),
        201,
    )
    .await;
    let job = s.enqueue(signup(json!({"to": "ada@example.com"}))).await;
    let id = job["id"].as_str().unwrap();

    let v2 = s
        .call(
            "PUT",
            "/v1/schemas/email.welcome",
            Some(json!({"schema": welcome_schema()})),
            200,
        )
        .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(
        s.get("/v1/schemas/email.welcome", 200).await["schema"],
        welcome_schema()
    );
    // The stored job is untouched and runs to completion.
    assert_eq!(s.job(id).await, job);
    let leased = s.lease("emails", 1, 30_000).await;
    assert_eq!(leased[0]["id"], id);
    let token = leased[0]["lease"]["token"].as_str().unwrap();
    s.post(
        &format!("/v1/jobs/{id}/complete"),
        json!({"lease_token": token}),
        200,
    )
    .await;
    // New enqueues of the same payload meet the new schema.
    s.post("/v1/jobs", signup(json!({"to": "ada@example.com"})), 422)
        .await;

    // Deleting the schema lifts the check; deleting again is 404.
    s.call("DELETE", "/v1/schemas/email.welcome", None, 204)
        .await;
    s.enqueue(signup(json!({"to": "ada@example.com"}))).await;
    s.call("DELETE", "/v1/schemas/email.welcome", None, 404)
        .await;
    let actions: Vec<String> = s.get("/v1/audit", 200).await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions[..3], ["schema.deleted", "schema.put", "schema.put"]);
}

#[tokio::test]
async fn a_hostile_pattern_cannot_stall_an_enqueue() {
    let s = TestServer::start().await;
    // Catastrophic for a backtracking engine on "aaaa…!"; linear for the one keel uses.
    let schema =
        json!({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}});
    s.call("PUT", "/v1/schemas/k", Some(json!({"schema": schema})), 201)
        .await;
    let evil = format!("{}!", "a".repeat(50_000));
    let res = s
        .post(
            "/v1/jobs",
            json!({"queue": "q", "kind": "k", "payload": {"s": evil}}),
            422,
        )
        .await;
    assert_eq!(pointers(&res), ["/payload/s"]);
    let msg = res["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.chars().count() <= 301,
        "messages quoting the payload are cut: {}",
        msg.len()
    );
}
