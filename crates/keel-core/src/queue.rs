//! Queue configuration: the overrides an operator set, and the effective values a job gets.
//!
//! Invariant: a queue's effective config is always complete; a field the operator did not set
//! falls back to the server's defaults, so changing defaults changes every queue not overriding it.

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub completed_ms: i64,
    pub dead_ms: i64,
}

/// What an operator set on a queue; `None` means "use the server default".
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
}

/// The effective configuration of a queue.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Most jobs of this queue running at once, across all workers; `None` is unlimited.
    pub concurrency: Option<u32>,
    pub max_attempts: u32,
    pub timeout_ms: i64,
    pub backoff: Backoff,
    pub retention: Retention,
}

impl Default for QueueConfig {
    /// The server-wide defaults.
    fn default() -> QueueConfig {
        QueueConfig {
            concurrency: None,
            max_attempts: 20,
            timeout_ms: 30_000,
            backoff: Backoff::default(),
            retention: Retention {
                completed_ms: 24 * 3_600_000,
                dead_ms: 7 * 24 * 3_600_000,
            },
        }
    }
}

impl QueueConfig {
    pub fn with_overrides(defaults: &QueueConfig, o: &QueueOverrides) -> QueueConfig {
        QueueConfig {
            concurrency: o.concurrency.or(defaults.concurrency),
            max_attempts: o.max_attempts.unwrap_or(defaults.max_attempts),
            timeout_ms: o.timeout_ms.unwrap_or(defaults.timeout_ms),
            backoff: o.backoff.unwrap_or(defaults.backoff),
            retention: o.retention.unwrap_or(defaults.retention),
        }
    }
}
