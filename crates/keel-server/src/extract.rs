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
