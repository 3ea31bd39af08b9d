//! Events: the source of truth. A job's current state is the fold of its events.
//!
//! Invariant: `apply` is the only code that changes a `Job`. Storage writes the event and the
//! row `apply` produced in one transaction, so folding a job's events always reproduces its row
//! (checked by the conformance suite's rebuild test).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{Job, JobError, Json, Lease, State};
use crate::time::Time;

/// Why a job became dead.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    MaxAttempts,
    NonRetryable,
}

/// What happened. Serialised adjacently tagged: `{"type": "leased", "data": {...}}`.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventData {
    /// The job as created.
    Enqueued {
        job: Box<Job>,
    },
    /// A scheduled job reached its `run_at`.
    Available {},
    Leased {
        attempt: u32,
        expires_at: Time,
        worker: Option<String>,
        token_hash: String,
    },
    Heartbeat {
        expires_at: Time,
    },
    Completed {
        #[cfg_attr(feature = "openapi", schema(value_type = serde_json::Value, required))]
        result: Option<Json>,
    },
    Failed {
        error: JobError,
        retryable: bool,
    },
    LeaseExpired {
        attempt: u32,
    },
    /// Waiting for a retry after `delay_ms`.
    Scheduled {
        run_at: Time,
        delay_ms: i64,
    },
    Dead {
        reason: DeadReason,
    },
    Cancelled {
        from: State,
    },
    /// A manual retry or queue replay: back to available with a fresh attempt budget.
    Retried {
        from: State,
    },
    /// Removed by an operator's purge; the job's row is deleted, its events stay.
    Purged {
        from: State,
    },
    /// The attempt was given back unfinished (the server stopped mid-delivery): available
    /// again, and the attempt does not count.
    Released {
        attempt: u32,
    },
    /// One push attempt to the queue's target: what the target answered (no secrets, no body).
    /// Recorded just before the attempt's outcome (`completed` or `failed`).
    Delivery {
        attempt: u32,
        /// The HTTP status; `None` when no response came (time-out, connection error).
        status: Option<u16>,
        duration_ms: i64,
        /// A short description of what went wrong, if anything did.
        error: Option<String>,
    },
}

impl EventData {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventData::Enqueued { .. } => "enqueued",
            EventData::Available {} => "available",
            EventData::Leased { .. } => "leased",
            EventData::Heartbeat { .. } => "heartbeat",
            EventData::Completed { .. } => "completed",
            EventData::Failed { .. } => "failed",
            EventData::LeaseExpired { .. } => "lease_expired",
            EventData::Scheduled { .. } => "scheduled",
            EventData::Dead { .. } => "dead",
            EventData::Cancelled { .. } => "cancelled",
            EventData::Retried { .. } => "retried",
            EventData::Purged { .. } => "purged",
            EventData::Delivery { .. } => "delivery",
            EventData::Released { .. } => "released",
        }
    }
}

/// A stored event of one job.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Position in the store's global event log; increases with every event.
    pub seq: i64,
    pub job_id: Uuid,
    pub at: Time,
    #[serde(flatten)]
    pub data: EventData,
}

/// Applies one event to a job. `None` in means the job does not exist yet; `None` out means it
/// no longer exists (purged). Events that cannot follow the given state are ignored, because
/// only `transition` creates events and it checks every precondition first.
pub fn apply(job: Option<Job>, data: &EventData, at: Time) -> Option<Job> {
    let mut job = match (job, data) {
        (_, EventData::Enqueued { job }) => return Some((**job).clone()),
        (None, _) => return None,
        (Some(_), EventData::Purged { .. }) => return None,
        (Some(job), _) => job,
    };
    job.updated_at = at;
    match data {
        EventData::Enqueued { .. } | EventData::Purged { .. } | EventData::Delivery { .. } => {}
        EventData::Available {} => job.state = State::Available,
        EventData::Leased {
            attempt,
            expires_at,
            worker,
            token_hash,
        } => {
            job.state = State::Running;
            job.attempt = *attempt;
            job.lease = Some(Lease {
                token_hash: token_hash.clone(),
                leased_at: at,
                expires_at: *expires_at,
                worker: worker.clone(),
            });
        }
        EventData::Heartbeat { expires_at } => {
            if let Some(lease) = job.lease.as_mut() {
                lease.expires_at = *expires_at;
            }
        }
        EventData::Completed { result } => {
            job.state = State::Completed;
            job.result = result.clone();
            job.lease = None;
            job.finished_at = Some(at);
        }
        EventData::Failed { error, .. } => {
            job.last_error = Some(error.clone());
            job.lease = None;
        }
        EventData::LeaseExpired { attempt } => {
            job.last_error = Some(JobError {
                message: "lease expired before the worker reported an outcome".to_owned(),
                kind: Some("lease_expired".to_owned()),
                attempt: *attempt,
                at,
            });
            job.lease = None;
        }
        EventData::Scheduled { run_at, .. } => {
            job.run_at = *run_at;
            job.state = State::waiting(*run_at, at);
        }
        EventData::Dead { .. } => {
            job.state = State::Dead;
            job.finished_at = Some(at);
        }
        EventData::Cancelled { .. } => {
            job.state = State::Cancelled;
            job.lease = None;
            job.finished_at = Some(at);
        }
        EventData::Released { attempt } => {
            job.state = State::Available;
            job.attempt = attempt.saturating_sub(1);
            job.lease = None;
        }
        EventData::Retried { .. } => {
            job.state = State::Available;
            job.attempt = 0;
            job.run_at = at;
            job.finished_at = None;
        }
    }
    Some(job)
}

/// Folds a job's events, oldest first, into its current state.
pub fn project<'a>(events: impl IntoIterator<Item = &'a Event>) -> Option<Job> {
    events
        .into_iter()
        .fold(None, |job, ev| apply(job, &ev.data, ev.at))
}
