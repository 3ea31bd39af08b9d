//! The job state machine: which commands each state accepts and the events they produce.
//!
//! ```text
//! scheduled --(run_at reached)--> available --(lease)--> running --(complete)--> completed
//!     ^                                ^                    |
//!     +---------(fail / lease expiry, attempts left)--------+--(no attempts left / fatal)--> dead
//! any non-final --(cancel)--> cancelled;  dead | cancelled --(retry / replay)--> available
//! ```
//! Invariants: a command either yields events whose application gives a legal job, or a typed
//! error and no events; an outcome is accepted only with the current lease's token (fencing).

use thiserror::Error;

use crate::event::{DeadReason, EventData, apply};
use crate::job::{Job, JobError, Json, State};
use crate::lease::token_matches;
use crate::time::Time;

#[derive(Clone, Debug)]
pub enum Command {
    /// A scheduled job whose `run_at` has come.
    Promote,
    Lease {
        token_hash: String,
        lease_ms: i64,
        worker: Option<String>,
    },
    Heartbeat {
        token: String,
        lease_ms: i64,
    },
    Complete {
        token: String,
        result: Option<Json>,
    },
    Fail(Failure),
    /// Records a push attempt's answer under the attempt's lease; the outcome follows.
    Delivered {
        token: String,
        status: Option<u16>,
        duration_ms: i64,
        error: Option<String>,
    },
    /// Gives an unfinished attempt back without counting it (the server is stopping).
    Release {
        token: String,
    },
    /// The lease ran out without an outcome. Only the store's timer issues this.
    ExpireLease {
        jitter: f64,
    },
    Cancel,
    /// Manual retry or replay of a dead or cancelled job.
    Retry,
    Purge,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub token: String,
    pub message: String,
    pub kind: Option<String>,
    pub retryable: bool,
    /// Overrides the backoff delay.
    pub retry_in_ms: Option<i64>,
    /// Uniform in `[0, 1)`, for the backoff's jitter.
    pub jitter: f64,
}

#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum TransitionError {
    /// The token is not the job's current lease: it expired and was handed out again, the job
    /// was cancelled or finished, or the token is wrong.
    #[error("the lease token is not this job's current lease")]
    LeaseLost,
    #[error("cannot {action} a job in state {state}")]
    InvalidState { action: &'static str, state: State },
}

impl Command {
    fn action(&self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Lease { .. } => "lease",
            Command::Heartbeat { .. } => "heartbeat",
            Command::Complete { .. } => "complete",
            Command::Fail(_) => "fail",
            Command::Delivered { .. } => "record a delivery of",
            Command::Release { .. } => "release",
            Command::ExpireLease { .. } => "expire the lease of",
            Command::Cancel => "cancel",
            Command::Retry => "retry",
            Command::Purge => "purge",
        }
    }
}

/// Decides what `cmd` does to `job` at `now`: the events to record, in order.
pub fn transition(job: &Job, cmd: &Command, now: Time) -> Result<Vec<EventData>, TransitionError> {
    let invalid = || TransitionError::InvalidState {
        action: cmd.action(),
        state: job.state,
    };
    let current_lease = |token: &str| match (&job.state, &job.lease) {
        (State::Running, Some(lease)) if token_matches(&lease.token_hash, token) => Ok(()),
        _ => Err(TransitionError::LeaseLost),
    };
    Ok(match cmd {
        Command::Promote => match job.state {
            State::Scheduled if job.run_at <= now => vec![EventData::Available {}],
            _ => return Err(invalid()),
        },
        Command::Lease {
            token_hash,
            lease_ms,
            worker,
        } => match job.state {
            State::Available => vec![EventData::Leased {
                attempt: job.attempt.saturating_add(1),
                expires_at: now.plus_ms(*lease_ms),
                worker: worker.clone(),
                token_hash: token_hash.clone(),
            }],
            _ => return Err(invalid()),
        },
        Command::Heartbeat { token, lease_ms } => {
            current_lease(token)?;
            vec![EventData::Heartbeat {
                expires_at: now.plus_ms(*lease_ms),
            }]
        }
        Command::Complete { token, result } => {
            current_lease(token)?;
            vec![EventData::Completed {
                result: result.clone(),
            }]
        }
        Command::Delivered {
            token,
            status,
            duration_ms,
            error,
        } => {
            current_lease(token)?;
            vec![EventData::Delivery {
                attempt: job.attempt,
                status: *status,
                duration_ms: *duration_ms,
                error: error.clone(),
            }]
        }
        Command::Release { token } => {
            current_lease(token)?;
            vec![EventData::Released {
                attempt: job.attempt,
            }]
        }
        Command::Fail(f) => {
            current_lease(&f.token)?;
            let error = JobError {
                message: f.message.clone(),
                kind: f.kind.clone(),
                attempt: job.attempt,
                at: now,
            };
            let mut events = vec![EventData::Failed {
                error,
                retryable: f.retryable,
            }];
            events.push(if f.retryable {
                after_failed_attempt(job, f.retry_in_ms, f.jitter, now)
            } else {
                EventData::Dead {
                    reason: DeadReason::NonRetryable,
                }
            });
            events
        }
        Command::ExpireLease { jitter } => match (&job.state, &job.lease) {
            (State::Running, Some(lease)) if lease.expires_at <= now => vec![
                EventData::LeaseExpired {
                    attempt: job.attempt,
                },
                after_failed_attempt(job, None, *jitter, now),
            ],
            _ => return Err(invalid()),
        },
        Command::Cancel if !job.state.is_final() => vec![EventData::Cancelled { from: job.state }],
        Command::Retry if matches!(job.state, State::Dead | State::Cancelled) => {
            vec![EventData::Retried { from: job.state }]
        }
        Command::Purge if job.state != State::Running => {
            vec![EventData::Purged { from: job.state }]
        }
        Command::Cancel | Command::Retry | Command::Purge => return Err(invalid()),
    })
}

/// Retry with backoff while attempts remain, otherwise dead.
fn after_failed_attempt(job: &Job, retry_in_ms: Option<i64>, jitter: f64, now: Time) -> EventData {
    if job.attempt >= job.max_attempts {
        return EventData::Dead {
            reason: DeadReason::MaxAttempts,
        };
    }
    let delay_ms = retry_in_ms
        .unwrap_or_else(|| job.backoff.delay_ms(job.attempt, jitter))
        .max(0);
    EventData::Scheduled {
        run_at: now.plus_ms(delay_ms),
        delay_ms,
    }
}

/// `transition` then `apply`: the new job (`None` if purged) and the events that produced it.
pub fn step(
    job: &Job,
    cmd: &Command,
    now: Time,
) -> Result<(Option<Job>, Vec<EventData>), TransitionError> {
    let events = transition(job, cmd, now)?;
    // A purge (None) ends the job; no event can follow it within one step.
    let next = events
        .iter()
        .try_fold(job.clone(), |j, ev| apply(Some(j), ev, now));
    Ok((next, events))
}
