//! The client's error: a problem the server answered (RFC 9457, with its slug as a `ProblemKind`),
//! or a failure to reach it or to read its answer.

use serde::Deserialize;
use thiserror::Error;

/// The problem types of API.md, by slug.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProblemKind {
    ValidationFailed,
    MalformedJson,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    LeaseLost,
    InvalidState,
    IdempotencyKeyReused,
    Unauthorized,
    Forbidden,
    RateLimited,
    Overloaded,
    RequestTimeout,
    StorageUnavailable,
    InsufficientStorage,
    Internal,
    /// A slug this client does not know (a newer server).
    Other,
}

impl ProblemKind {
    pub fn from_type(type_uri: &str) -> ProblemKind {
        match type_uri
            .strip_prefix("urn:keel:problem:")
            .unwrap_or(type_uri)
        {
            "validation-failed" => ProblemKind::ValidationFailed,
            "malformed-json" => ProblemKind::MalformedJson,
            "unsupported-media-type" => ProblemKind::UnsupportedMediaType,
            "payload-too-large" => ProblemKind::PayloadTooLarge,
            "not-found" => ProblemKind::NotFound,
            "method-not-allowed" => ProblemKind::MethodNotAllowed,
            "lease-lost" => ProblemKind::LeaseLost,
            "invalid-state" => ProblemKind::InvalidState,
            "idempotency-key-reused" => ProblemKind::IdempotencyKeyReused,
            "unauthorized" => ProblemKind::Unauthorized,
            "forbidden" => ProblemKind::Forbidden,
            "rate-limited" => ProblemKind::RateLimited,
            "overloaded" => ProblemKind::Overloaded,
            "request-timeout" => ProblemKind::RequestTimeout,
            "storage-unavailable" => ProblemKind::StorageUnavailable,
            "insufficient-storage" => ProblemKind::InsufficientStorage,
            "internal" => ProblemKind::Internal,
            _ => ProblemKind::Other,
        }
    }
}

/// One `errors` item of a problem.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct FieldProblem {
    pub pointer: String,
    pub message: String,
}

/// A problem+json answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub errors: Vec<FieldProblem>,
}

impl Problem {
    pub fn kind(&self) -> ProblemKind {
        ProblemKind::from_type(&self.type_uri)
    }
}

#[derive(Debug, Error)]
pub enum Error {
    /// The server answered with a problem.
    #[error("{} ({}): {}{}", .0.title, .0.status, .0.detail, fields(&.0.errors))]
    Problem(Box<Problem>),
    /// The server could not be reached, or the connection failed, after any retries.
    #[error("cannot reach {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server ({status}): {message}")]
    Decode { status: u16, message: String },
    /// The request could not be built (for example a payload that does not serialise).
    #[error("invalid request: {0}")]
    Invalid(String),
}

fn fields(errors: &[FieldProblem]) -> String {
    if errors.len() < 2 {
        return String::new();
    }
    let list: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.pointer, e.message))
        .collect();
    format!(" [{}]", list.join("; "))
}

impl Error {
    /// The problem kind, when the server answered with one.
    pub fn problem_kind(&self) -> Option<ProblemKind> {
        match self {
            Error::Problem(p) => Some(p.kind()),
            _ => None,
        }
    }

    pub fn is(&self, kind: ProblemKind) -> bool {
        self.problem_kind() == Some(kind)
    }
}
