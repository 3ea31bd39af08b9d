//! Request extraction: JSON bodies and path ids, with every failure mapped to a precise problem.
//!
//! A body must be `application/json`, within the size limit, nested at most `max_json_depth`
//! deep, and match its type exactly (unknown fields are errors). Type errors carry a JSON
//! pointer to the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::AppState;
use crate::problem::ApiError;

/// A JSON body, strictly parsed.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Body<T>, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.config.limits.max_body_bytes;
        // A slow (or deliberately stalled) body is cut off; the handler never sees it.
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(state.config.conn.body_read_timeout, read)
            .await
            .map_err(|_| ApiError::RequestTimeout)?
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(format!("the request body exceeds {limit} bytes"))
                } else {
                    ApiError::MalformedJson(format!("could not read the request body: {e}"))
                }
            })?;
        parse(&bytes, state.config.limits.max_json_depth).map(Body)
    }
}

/// Parses JSON text into `T`, mapping serde's errors to problems with pointers.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let depth = keel_core::validate::json_depth(bytes);
    if depth > max_depth {
        return Err(ApiError::field(
            "",
            format!("JSON is nested {depth} levels deep; the limit is {max_depth}"),
        ));
    }
    // Nearly every body parses; tracking the path costs an owned string per field (~40% of
    // the HTTP threads' instructions under batch load), so it is paid only to explain a failure.
    // Deserialisation is deterministic, so the second pass fails exactly where the first did.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => explain::<T>(bytes),
    }
}

/// Parses `bytes` again with the path tracked, for the problem that names where it failed. An
/// `Ok` here would mean the two passes disagree; it is returned, but cannot happen.
fn explain<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let pointer = pointer_of(e.path());
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            ApiError::MalformedJson(format!(
                "invalid JSON at line {} column {}: {inner}",
                inner.line(),
                inner.column()
            ))
        } else {
            field_error(pointer, &inner.to_string())
        }
    })?;
    de.end().map_err(|e| {
        ApiError::MalformedJson(format!("trailing characters after the JSON value: {e}"))
    })?;
    Ok(value)
}

/// serde reports a missing field at its parent's path; point at the field itself.
fn field_error(mut pointer: String, message: &str) -> ApiError {
    let message = strip_position(message);
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        pointer.push('/');
        pointer.push_str(name);
        return ApiError::field(pointer, "is required");
    }
    if message.starts_with("unknown field `") {
        // The path already ends at the unknown field.
        let known = message.split_once(", expected ").map_or("", |(_, k)| k);
        return ApiError::field(pointer, format!("is not a known field; expected {known}"));
    }
    ApiError::field(pointer, message)
}

fn strip_position(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    // serde names our Rust types ("expected struct EnqueueBody"); clients know JSON objects.
    match message.find("struct ") {
        Some(i) => {
            let rest = &message[i + 7..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .unwrap_or(rest.len());
            format!("{}a JSON object{}", &message[..i], &rest[end..])
        }
        None => message.to_owned(),
    }
}

fn pointer_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push_str(&format!("/{}", keel_core::validate::pointer_token(key)))
            }
            Segment::Enum { variant } => {
                out.push_str(&format!("/{}", keel_core::validate::pointer_token(variant)))
            }
            Segment::Unknown => out.push_str("/?"),
        }
    }
    out
}

/// A job id from the path; anything that is not a UUID names no job.
pub fn job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("{text:?} is not a job id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::BatchBody;

    fn problem(r: Result<BatchBody, ApiError>) -> String {
        match r {
            Ok(b) => format!("ok: {} jobs", b.jobs.len()),
            Err(e) => format!("{e:?}"),
        }
    }

    /// The fast pass gives way to the tracked one on every failure, so a failure names the
    /// same place it did before the fast pass existed.
    #[test]
    fn a_failed_parse_is_explained_by_the_tracked_pass() {
        let cases: [(&str, &str); 7] = [
            (
                r#"{"jobs":[{"queue":"q","kind":"k","payload":{}},{"queue":"q","kind":"k","payload":{},"priority":"high"}]}"#,
                "/jobs/1/priority",
            ),
            (
                r#"{"jobs":[{"queue":"q","kind":"k","payload":{},"colour":1}]}"#,
                "/jobs/0/colour",
            ),
            (r#"{"jobs":[{"queue":"q","payload":{}}]}"#, "/jobs/0/kind"),
            (
                r#"{"jobs":[{"queue":"q","kind":"k","payload":{},"backoff":{"initial_ms":"x"}}]}"#,
                "/jobs/0/backoff/initial_ms",
            ),
            (
                r#"{"jobs":[{"queue":"q","kind":"k","payload":{}}]"#,
                "invalid JSON at line 1",
            ),
            (r#"{"jobs":[]} x"#, "trailing characters"),
            (r#""x""#, "a JSON object"),
        ];
        for (body, expect) in cases {
            let fast = problem(parse(body.as_bytes(), 64));
            assert!(
                fast.contains(expect),
                "{body}: {fast} does not name {expect}"
            );
            assert_eq!(fast, problem(explain(body.as_bytes())), "{body}");
        }
    }

    #[test]
    fn a_good_body_parses_on_the_fast_pass() {
        let body = r#"{"jobs":[{"queue":"q","kind":"k","payload":{"a":[1,2]}},{"queue":"r","kind":"k","payload":{}}]}"#;
        let parsed: BatchBody = parse(body.as_bytes(), 64).expect("parses");
        assert_eq!(parsed.jobs.len(), 2);
        assert_eq!(parsed.jobs[1].queue, "r");
        assert_eq!(
            problem(parse(body.as_bytes(), 64)),
            problem(explain(body.as_bytes()))
        );
        // Depth is still checked before either pass.
        let deep = format!(
            r#"{{"jobs":[{{"queue":"q","kind":"k","payload":{}1{}}}]}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        assert!(problem(parse(deep.as_bytes(), 64)).contains("levels deep"));
    }
}
