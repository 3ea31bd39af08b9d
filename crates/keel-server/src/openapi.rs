//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`, derived from the code.
//!
//! Nothing in it is written out by hand: schemas come from `#[derive(ToSchema)]` on the types the
//! handlers deserialize and serialize (the wire types here, the domain types in keel-core and
//! keel-store behind their `openapi` feature), operations from `#[utoipa::path]` on the handlers,
//! and the paths from the route table itself (`routes::router` registers handlers through
//! utoipa-axum, so a route cannot exist without its operation, nor an operation without its route).
//! What this module adds is what no handler states: the problems a request can meet on its way
//! ([`problems`]), derived from each operation's shape.
//!
//! Invariant: every operation documents every status it can answer, including each problem
//! (`application/problem+json`) a request can meet before the handler (401, 408, 413, 415, 429).
//! `it::openapi` calls every operation and fails on a status it does not list; in CI
//! `openapi-spec-validator` checks the document against the 3.1 specification and schemathesis
//! checks that real responses match it (`.ci/fuzz-api`).

use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::problem::Problem;

/// A queue, kind, tag, schedule or token name: 1–128 of `A-Z a-z 0-9 . _ : -`
/// (`keel_core::validate::check_name`).
pub(crate) struct Name;

impl PartialSchema for Name {
    fn schema() -> RefOr<Schema> {
        string(r"^[A-Za-z0-9._:-]{1,128}$")
    }
}
impl ToSchema for Name {}

/// An idempotency key: 1–255 visible ASCII characters (`wire::check_idempotency_key`).
pub(crate) struct IdempotencyKey;

impl PartialSchema for IdempotencyKey {
    fn schema() -> RefOr<Schema> {
        string(r"^[!-~]{1,255}$")
    }
}
impl ToSchema for IdempotencyKey {}

/// A queue name or pattern a token is scoped to; `*` matches any run of characters.
pub(crate) struct QueuePattern;

impl PartialSchema for QueuePattern {
    fn schema() -> RefOr<Schema> {
        string(r"^[A-Za-z0-9._:*-]{1,128}$")
    }
}
impl ToSchema for QueuePattern {}

fn string(pattern: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .into()
}

/// What every document has whatever the routes: title, version, the bearer scheme and the
/// problem schema.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "keel",
        description = "A durable background-job server. Errors are RFC 9457 problems whose type is urn:keel:problem:<slug>."
    ),
    components(schemas(Problem)),
    modifiers(&Bearer)
)]
pub(crate) struct Base;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The problem responses, one component each, that operations refer to.
const PROBLEMS: [(&str, &str); 13] = [
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
];

/// The problems an operation can meet besides those its handler documents, from its shape:
/// every request can be shed (429); a request with a token can be refused it (401, 403), find
/// nothing (404), meet a storage outage (503) or a bug (500); a body can be malformed, slow, too
/// large, not JSON, invalid or in conflict (400, 408, 413, 415, 422, 409) and can fill the disk
/// (507); query parameters can be invalid (422); a command without a body can conflict with the
/// job's state or fill the disk (409, 507).
pub(crate) fn problems(method: &str, op: &Value) -> Vec<&'static str> {
    let mut out = vec!["429"];
    let authenticated = op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
    if !authenticated {
        return out;
    }
    out.extend(["401", "403", "404", "500", "503"]);
    let has_query = op["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
    if op.get("requestBody").is_some() {
        out.extend(["400", "408", "409", "413", "415", "422", "507"]);
    } else if has_query {
        out.push("422");
    } else if method != "get" {
        out.extend(["409", "507"]);
    }
    out
}

/// The served document: the routes' operations and schemas on top of [`Base`], each operation
/// given its problem responses.
pub(crate) fn document(routes: utoipa::openapi::OpenApi) -> Value {
    let mut api = Base::openapi();
    api.merge(routes);
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut doc = serde_json::to_value(&api).unwrap_or_else(|_| json!({}));
    for (status, what) in PROBLEMS {
        doc["components"]["responses"][format!("Problem{status}")] = json!({
            "description": what,
            "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
        });
    }
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                let wanted = problems(method, op);
                let responses = &mut op["responses"];
                for status in wanted {
                    if responses.get(status).is_none() {
                        responses[status] = json!({
                            "$ref": format!("#/components/responses/Problem{status}")
                        });
                    }
                }
            }
        }
    }
    doc
}
