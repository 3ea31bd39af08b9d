//! RFC 9457 problem details: every error the API returns, each mapped to exactly one slug and
//! status here and nowhere else. Handlers return `ApiError`; they never build error responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_core::{FieldError, TransitionError};
use keel_store::StoreError;
use serde::Serialize;

#[derive(Debug)]
pub enum ApiError {
    /// A field or parameter is wrong; `errors` says where and why.
    Validation(Vec<FieldError>),
    MalformedJson(String),
    /// No token, a malformed header, or an unknown or revoked token.
    Unauthorized(String),
    /// A known token outside its role or queues.
    Forbidden(String),
    /// The in-flight budget is full.
    Overloaded,
    /// Over the token's rate limit; retry after this many milliseconds.
    RateLimited(u64),
    /// The client took too long to send its request body.
    RequestTimeout,
    UnsupportedMediaType,
    PayloadTooLarge(String),
    NotFound(String),
    MethodNotAllowed,
    LeaseLost,
    InvalidState(String),
    IdempotencyKeyReused(String, Option<String>),
    /// The listener refused: non-loopback without auth, and the like.
    StorageUnavailable(String),
    InsufficientStorage,
    Internal(String),
}

/// An RFC 9457 problem (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// `urn:keel:problem:<slug>`; API.md lists the slugs.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:keel:problem:[a-z-]+$")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    /// With `validation-failed`: each violation, pointing into the request.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl ApiError {
    pub fn field(pointer: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Validation(vec![FieldError::new(pointer, message)])
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Validation failed",
            ),
            ApiError::MalformedJson(_) => {
                (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON")
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded", "Overloaded"),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                "Request timeout",
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::LeaseLost => (StatusCode::CONFLICT, "lease-lost", "Lease lost"),
            ApiError::InvalidState(_) => (StatusCode::CONFLICT, "invalid-state", "Invalid state"),
            ApiError::IdempotencyKeyReused(..) => (
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            ApiError::StorageUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "storage-unavailable",
                "Storage unavailable",
            ),
            ApiError::InsufficientStorage => (
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient-storage",
                "Insufficient storage",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Validation(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.pointer, one.message),
                many => format!("{} fields are invalid", many.len()),
            },
            ApiError::UnsupportedMediaType => {
                "the body must be JSON with Content-Type: application/json".into()
            }
            ApiError::MethodNotAllowed => "this route does not accept that method".into(),
            ApiError::Overloaded => {
                "the server is at its in-flight request limit; retry after Retry-After seconds"
                    .into()
            }
            ApiError::RateLimited(ms) => {
                format!("this token is over its rate limit; the next request passes in {ms} ms")
            }
            ApiError::RequestTimeout => "the request body did not arrive in time".into(),
            ApiError::LeaseLost => TransitionError::LeaseLost.to_string(),
            ApiError::InsufficientStorage => "the disk is full; nothing was written".into(),
            ApiError::IdempotencyKeyReused(d, _) => d.clone(),
            ApiError::MalformedJson(d)
            | ApiError::PayloadTooLarge(d)
            | ApiError::Unauthorized(d)
            | ApiError::Forbidden(d)
            | ApiError::NotFound(d)
            | ApiError::InvalidState(d)
            | ApiError::StorageUnavailable(d) => d.clone(),
            // Internal details go to the log, not to the client.
            ApiError::Internal(_) => "an unexpected error occurred; it has been logged".into(),
        }
    }

    /// The status, for batch answers that embed a problem per item.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// `{"type", "detail"}` of this problem, for batch answers that embed one per item.
    pub fn slug_and_detail(&self) -> serde_json::Value {
        serde_json::json!({ "type": format!("urn:keel:problem:{}", self.parts().1), "detail": self.detail() })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound => ApiError::NotFound("no such job".into()),
            StoreError::Transition(TransitionError::LeaseLost) => ApiError::LeaseLost,
            StoreError::Transition(t @ TransitionError::InvalidState { .. }) => {
                ApiError::InvalidState(t.to_string())
            }
            StoreError::IdempotencyConflict { index, queue, key } => {
                ApiError::IdempotencyKeyReused(
                    format!(
                        "idempotency key {key:?} was already used in queue {queue:?} with a different request"
                    ),
                    Some(format!("/jobs/{index}/idempotency_key")),
                )
            }
            StoreError::Conflict(m) => ApiError::InvalidState(m),
            StoreError::Unavailable(m) => ApiError::StorageUnavailable(m),
            StoreError::Full => ApiError::InsufficientStorage,
            StoreError::Internal(m) => ApiError::Internal(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if let ApiError::Internal(m) = &self {
            tracing::error!(message = "Internal error.", error = %m);
        }
        let mut errors: Vec<FieldError> = match &self {
            ApiError::Validation(errors) => errors.clone(),
            _ => vec![],
        };
        if let ApiError::IdempotencyKeyReused(d, Some(p)) = &self {
            errors.push(FieldError::new(p.clone(), d.clone()));
        }
        let body = Problem {
            kind: format!("urn:keel:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
            errors: &errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = (status, bytes).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::StorageUnavailable(_) | ApiError::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(ms) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(ms.div_ceil(1_000).max(1)),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keel\""),
                );
            }
            _ => {}
        }
        res
    }
}
