//! The one error type of the storage layer. Each variant maps to exactly one HTTP problem.

use keel_core::TransitionError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("no such job")]
    NotFound,
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// The idempotency key of item `index` was used in its queue for a different request.
    #[error("idempotency key {key:?} was already used in queue {queue:?} with a different request")]
    IdempotencyConflict {
        index: usize,
        queue: String,
        key: String,
    },
    /// The change would break a rule of the stored data (deleting the last admin token).
    #[error("{0}")]
    Conflict(String),
    /// Storage cannot be reached or has stopped; the caller may retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk is full; nothing was written.
    #[error("storage is full")]
    Full,
    #[error("storage error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The operating system gave no randomness for a lease token.
    pub(crate) fn no_token(e: impl std::fmt::Display) -> StoreError {
        StoreError::Internal(format!("no randomness for a lease token: {e}"))
    }

    pub(crate) fn sqlite(e: rusqlite::Error) -> StoreError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full,
            Some(
                rusqlite::ErrorCode::DatabaseBusy
                | rusqlite::ErrorCode::DatabaseLocked
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::SystemIoFailure,
            ) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }

    /// A copy for fanning one batch failure out to every caller in the batch.
    pub(crate) fn duplicate(&self) -> StoreError {
        match self {
            StoreError::NotFound => StoreError::NotFound,
            StoreError::Transition(t) => StoreError::Transition(t.clone()),
            StoreError::IdempotencyConflict { index, queue, key } => {
                StoreError::IdempotencyConflict {
                    index: *index,
                    queue: queue.clone(),
                    key: key.clone(),
                }
            }
            StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
            StoreError::Full => StoreError::Full,
            StoreError::Internal(m) => StoreError::Internal(m.clone()),
        }
    }
}
