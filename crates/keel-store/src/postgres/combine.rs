//! Group writes for enqueues without idempotency keys: concurrent calls on one node are
//! combined into one statement (and so one commit and one WAL flush), as the SQLite writer's
//! group commit does. A few combiner tasks share one queue of calls; each takes every call
//! waiting (up to a bound), writes them together, and answers each caller after the commit.
//! Nothing waits on purpose: under light load a call is written alone, at once.
//!
//! A group succeeds or fails as a whole (one statement); a failure is every caller's answer, and
//! none of the group's jobs exists.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use keel_core::{NewJob, Time};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::rows::Writes;
use super::{PgError, Shared, jobs, pool_error};
use crate::StoreError;
use crate::types::Enqueued;

/// Combiner tasks per node: a few groups can be in flight at once.
const COMBINERS: usize = 4;
/// Jobs in one group at most.
const MAX_GROUP_JOBS: usize = 5_000;

pub(super) type Reply = oneshot::Sender<Result<Vec<Enqueued>, StoreError>>;
pub(super) type Call = (Vec<NewJob>, Time, Reply);

/// Starts the combiner tasks; enqueues without keys are sent to the returned queue.
pub(super) fn start(
    pool: Pool,
    shared: Arc<Shared>,
    call_timeout: Duration,
) -> (
    mpsc::UnboundedSender<Call>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel::<Call>();
    let rx = Arc::new(Mutex::new(rx));
    let tasks = (0..COMBINERS)
        .map(|_| {
            let (rx, pool, shared) = (rx.clone(), pool.clone(), shared.clone());
            tokio::spawn(async move {
                loop {
                    let group = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        let mut jobs = first.0.len();
                        let mut group = vec![first];
                        while jobs < MAX_GROUP_JOBS {
                            match rx.try_recv() {
                                Ok(call) => {
                                    jobs += call.0.len();
                                    group.push(call);
                                }
                                Err(_) => break,
                            }
                        }
                        group
                    };
                    write_group(&pool, &shared, call_timeout, group).await;
                }
            })
        })
        .collect();
    (tx, tasks)
}

async fn write_group(pool: &Pool, shared: &Shared, call_timeout: Duration, group: Vec<Call>) {
    let calls: Vec<(&[NewJob], Time)> = group.iter().map(|(j, t, _)| (j.as_slice(), *t)).collect();
    let written = tokio::time::timeout(call_timeout, async {
        let c = pool.get().await.map_err(pool_error)?;
        let mut w = Writes::default();
        w.calls = calls.len();
        let mut answers = Vec::with_capacity(calls.len());
        for (jobs, now) in &calls {
            answers.push(
                jobs::enqueue(&c, shared, &mut w, jobs, *now)
                    .await
                    .map_err(PgError::into_store)?,
            );
        }
        w.commit_alone(&c, shared)
            .await
            .map_err(PgError::into_store)?;
        Ok::<_, StoreError>(answers)
    })
    .await
    .unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "PostgreSQL did not answer in time".into(),
        ))
    });
    match written {
        Ok(answers) => {
            for ((_, _, reply), answer) in group.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            for (_, _, reply) in group {
                let _ = reply.send(Err(e.duplicate()));
            }
        }
    }
}
