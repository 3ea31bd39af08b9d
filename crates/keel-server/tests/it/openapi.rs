//! The OpenAPI document: served without a token, valid JSON, every reference in it resolves, and
//! every operation it lists is routed and documents what it answers (the document is derived from
//! the route table, so an unlisted route cannot exist; the schemathesis run in `.ci/fuzz-api`
//! checks that responses match it).

use serde_json::Value;

use crate::helpers::TestServer;

#[tokio::test]
async fn every_documented_operation_is_routed_and_documents_its_problems() {
    let s = TestServer::start().await;
    let (status, doc, headers) = s.call_as(None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let concrete = path
                .replace("{id}", "01a20000-0000-7000-8000-000000000000")
                .replace("{name}", "q")
                .replace("{kind}", "k");
            let body = (method != "get" && method != "delete").then(|| serde_json::json!({}));
            let (status, answer, _) = s
                .call_as(
                    s.admin_token.as_deref(),
                    &method.to_uppercase(),
                    &concrete,
                    body,
                )
                .await;
            let unrouted = status == 405 || (status == 404 && answer["detail"] == "no such route");
            assert!(
                !unrouted,
                "{method} {path} is documented but not routed: {status} {answer}"
            );
            // Every status the server answered is one the document lists.
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.contains_key(&status.to_string()),
                "{method} {path} answered {status}, which it does not document: {answer}"
            );
            // `[{}]` (no requirement) marks the public operations.
            if let Some(security) = op.get("security").and_then(Value::as_array)
                && security.iter().any(|r| r.get("bearer").is_some())
            {
                assert!(
                    responses.contains_key("401") && responses.contains_key("403"),
                    "{method} {path}"
                );
            }
        }
    }
    assert!(operations >= 38, "{operations} operations documented");
}

/// Every `$ref` points at a component the document defines, and every problem response names
/// the problem schema.
#[tokio::test]
async fn every_reference_resolves() {
    let s = TestServer::start().await;
    let (_, doc, _) = s.call_as(None, "GET", "/v1/openapi.json", None).await;
    let mut refs = vec![];
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 100, "only {} references", refs.len());
    for r in refs {
        let Some(rest) = r.strip_prefix("#/") else {
            panic!("{r} is not a local reference");
        };
        let target = rest.split('/').fold(&doc, |v, part| &v[part]);
        assert!(!target.is_null(), "{r} does not resolve");
    }
    let problem =
        &doc["components"]["responses"]["Problem422"]["content"]["application/problem+json"];
    assert_eq!(problem["schema"]["$ref"], "#/components/schemas/Problem");
    assert_eq!(
        doc["components"]["schemas"]["Problem"]["properties"]["type"]["pattern"],
        "^urn:keel:problem:[a-z-]+$"
    );
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}
