//! The worker runtime: lease jobs from queues, run the handler registered for each job's kind,
//! keep its lease alive, and report the outcome.
//!
//! Invariants: a job is reported at most once by this worker, only with its own lease token;
//! a handler that panics, errs or overruns its job's `timeout_ms` is reported as failed, never
//! left to expire silently; on shutdown, jobs still running after the grace period are failed
//! back as retryable at once, so they never wait for lease expiry.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::Job;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::types::{AckItem, AckOutcome, Failure, LeaseRequest, LeasedJob};
use crate::{Client, Error, ProblemKind};

/// Why a handler did not complete its job.
#[derive(Clone, Debug)]
pub struct HandlerError {
    pub message: String,
    pub kind: Option<String>,
    pub retryable: bool,
    /// Overrides the queue's backoff for the next attempt.
    pub retry_in: Option<Duration>,
}

impl HandlerError {
    /// A failure worth retrying (the default for errors converted with `?`).
    pub fn retryable(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            kind: None,
            retryable: true,
            retry_in: None,
        }
    }

    /// A failure no retry can fix: the job goes straight to `dead`.
    pub fn fatal(message: impl Into<String>) -> HandlerError {
        HandlerError {
            message: message.into(),
            kind: None,
            retryable: false,
            retry_in: None,
        }
    }

    pub fn retry_in(mut self, delay: Duration) -> HandlerError {
        self.retry_in = Some(delay);
        self
    }

    pub fn kind(mut self, kind: impl Into<String>) -> HandlerError {
        self.kind = Some(kind.into());
        self
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(e: E) -> HandlerError {
        HandlerError::retryable(e.to_string()).kind(
            std::any::type_name::<E>()
                .rsplit("::")
                .next()
                .unwrap_or("Error"),
        )
    }
}

/// What a handler receives: the typed payload and the job it came from.
pub struct JobContext<P> {
    pub payload: P,
    pub job: Job,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Outcome = Result<Option<Value>, HandlerError>;

trait Handler: Send + Sync {
    fn call(&self, job: Job) -> BoxFuture<Outcome>;
}

struct TypedHandler<P, F> {
    f: F,
    _payload: std::marker::PhantomData<fn() -> P>,
}

impl<P, R, F, Fut> Handler for TypedHandler<P, F>
where
    P: DeserializeOwned + Send + 'static,
    R: Serialize,
    F: Fn(JobContext<P>) -> Fut + Send + Sync,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
{
    fn call(&self, job: Job) -> BoxFuture<Outcome> {
        let payload: P = match serde_json::from_str(job.payload.get()) {
            Ok(p) => p,
            Err(e) => {
                let err =
                    HandlerError::fatal(format!("payload does not match the handler's type: {e}"))
                        .kind("PayloadMismatch");
                return Box::pin(async move { Err(err) });
            }
        };
        let fut = (self.f)(JobContext { payload, job });
        Box::pin(async move {
            let r = fut.await?;
            serde_json::to_value(r)
                .map(|v| if v.is_null() { None } else { Some(v) })
                .map_err(|e| {
                    HandlerError::fatal(format!("the handler's result does not serialise: {e}"))
                })
        })
    }
}

/// Counts of what a worker did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    pub completed: u64,
    pub failed: u64,
    /// Jobs failed back as retryable at shutdown.
    pub released: u64,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    released: AtomicU64,
}

pub struct Worker {
    client: Client,
    queues: Vec<String>,
    concurrency: usize,
    lease_ms: Option<u64>,
    poll_wait: Duration,
    grace: Duration,
    name: String,
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Worker {
    pub fn new(client: Client, queues: &[&str]) -> Worker {
        Worker {
            client,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            concurrency: 10,
            lease_ms: None,
            poll_wait: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            name: format!("{}/pid-{}", hostname(), std::process::id()),
            handlers: HashMap::new(),
        }
    }

    /// Most jobs run at once by this worker (default 10).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Lease length; the runtime heartbeats every third of it (so one failed heartbeat still
    /// leaves another before the lease ends). Default: the job's `timeout_ms`.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease_ms = Some(lease.as_millis() as u64);
        self
    }

    /// How long one lease request waits for work (default 30 s, at most 60 s).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait.min(Duration::from_secs(60));
        self
    }

    /// How long running jobs may finish after shutdown begins (default 10 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Registers the handler for `kind`. Its payload type `P` is deserialised from the job's
    /// payload; a payload that does not fit fails the job as not retryable.
    pub fn handle<P, R, F, Fut>(mut self, kind: &str, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(JobContext<P>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    {
        self.handlers.insert(
            kind.to_owned(),
            Arc::new(TypedHandler {
                f,
                _payload: std::marker::PhantomData,
            }),
        );
        self
    }

    /// `run` until SIGTERM or ctrl-c.
    pub async fn run_until_signal(self) -> Result<WorkerReport, Error> {
        self.run(async {
            shutdown_signal().await;
            tracing::info!(message = "Stopping: no new jobs; finishing running ones.");
        })
        .await
    }

    /// Runs until `shutdown` resolves, then stops leasing, gives running jobs the grace period,
    /// fails the rest back as retryable, flushes outcomes and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport, Error> {
        let counters = Arc::new(Counters::default());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let (acks, ack_rx) = mpsc::unbounded_channel::<AckItem>();
        let acker = tokio::spawn(run_acker(self.client.clone(), ack_rx, counters.clone()));
        let running: Arc<Mutex<HashMap<Uuid, String>>> = Arc::default();
        let mut tasks = JoinSet::new();
        let handlers = Arc::new(self.handlers);
        tokio::pin!(shutdown);

        loop {
            // Wait for a free slot, then ask for as many jobs as there are free slots.
            let first = tokio::select! {
                _ = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let free = slots.available_permits() as u32 + 1;
            let req = LeaseRequest {
                queues: self.queues.clone(),
                max_jobs: free,
                wait_ms: self.poll_wait.as_millis() as u64,
                lease_ms: self.lease_ms,
                worker: Some(self.name.clone()),
            };
            let leased = tokio::select! {
                _ = &mut shutdown => break,
                r = self.client.lease(&req) => r,
            };
            let leased = match leased {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(message = "Lease failed; retrying shortly.", error = %e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut permit = Some(first);
            for leased in leased {
                let permit = match permit.take() {
                    Some(p) => p,
                    None => match slots.clone().try_acquire_owned() {
                        Ok(p) => p,
                        // The server never hands out more than asked; keep the job anyway.
                        Err(_) => match slots.clone().acquire_owned().await {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    },
                };
                if let Ok(mut r) = running.lock() {
                    r.insert(leased.job.id, leased.lease.token.clone());
                }
                let ctx = JobRun {
                    client: self.client.clone(),
                    handlers: handlers.clone(),
                    acks: acks.clone(),
                    running: running.clone(),
                    lease_ms: self.lease_ms,
                };
                tasks.spawn(async move {
                    ctx.run(leased).await;
                    drop(permit);
                });
            }
        }

        // Shutdown: no more leases. Running jobs get the grace period.
        let deadline = tokio::time::Instant::now() + self.grace;
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let unfinished: Vec<(Uuid, String)> = running
            .lock()
            .map(|mut r| r.drain().collect())
            .unwrap_or_default();
        for (id, token) in unfinished {
            counters.released.fetch_add(1, Ordering::Relaxed);
            let _ = acks.send(AckItem {
                id,
                lease_token: token,
                outcome: AckOutcome::Failed,
                result: None,
                error: Some(Failure {
                    message: "the worker shut down before the job finished".into(),
                    kind: Some(RELEASE_KIND.into()),
                    retryable: true,
                }),
                retry_in_ms: Some(0),
            });
        }
        drop(acks);
        let _ = acker.await;
        Ok(WorkerReport {
            completed: counters.completed.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            released: counters.released.load(Ordering::Relaxed),
        })
    }
}

/// Resolves when the process receives SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Everything one job's task needs.
struct JobRun {
    client: Client,
    handlers: Arc<HashMap<String, Arc<dyn Handler>>>,
    acks: mpsc::UnboundedSender<AckItem>,
    running: Arc<Mutex<HashMap<Uuid, String>>>,
    lease_ms: Option<u64>,
}

/// Aborts the handler's task when the job's task ends early (shutdown, lease lost).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl JobRun {
    async fn run(self, leased: LeasedJob) {
        let LeasedJob { job, lease } = leased;
        let (id, token) = (job.id, lease.token);
        let lease_ms = self.lease_ms.unwrap_or(job.timeout_ms.max(1) as u64);
        let timeout = Duration::from_millis(job.timeout_ms.max(1) as u64);
        let outcome = match self.handlers.get(&job.kind) {
            None => Err(HandlerError::retryable(format!(
                "no handler for kind {:?} on this worker",
                job.kind
            ))
            .kind("NoHandler")),
            Some(handler) => {
                let mut handle = tokio::spawn(handler.call(job));
                let _guard = AbortOnDrop(handle.abort_handle());
                // Heartbeat every third of the lease: the lease is renewed with two thirds of
                // it left, and a heartbeat that fails (a blip, a slow server) still leaves
                // another before the lease ends. After a slow heartbeat the next waits a full
                // period rather than firing at once.
                let period = Duration::from_millis((lease_ms / 3).max(1));
                let mut beat =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let overrun = tokio::time::sleep(timeout);
                tokio::pin!(overrun);
                loop {
                    tokio::select! {
                        joined = &mut handle => break match joined {
                            Ok(outcome) => outcome,
                            Err(e) if e.is_panic() => Err(HandlerError::retryable(format!("handler panicked: {}", panic_message(e.into_panic()))).kind("Panic")),
                            Err(_) => Err(HandlerError::retryable("handler was cancelled")),
                        },
                        _ = beat.tick() => match self.client.heartbeat(id, &token, Some(lease_ms)).await {
                            Ok(_) => {}
                            Err(e) if e.is(ProblemKind::LeaseLost) || e.is(ProblemKind::NotFound) => {
                                // Cancelled, or the lease was lost: the outcome is no longer ours.
                                tracing::warn!(message = "Lease lost; abandoning the job.", job_id = %id);
                                self.forget(id);
                                return;
                            }
                            Err(e) => tracing::warn!(message = "Heartbeat failed.", job_id = %id, error = %e),
                        },
                        _ = &mut overrun => break Err(HandlerError::retryable(format!("timed out after {} ms", timeout.as_millis())).kind("Timeout")),
                    }
                }
            }
        };
        self.forget(id);
        let item = match outcome {
            Ok(result) => AckItem {
                id,
                lease_token: token,
                outcome: AckOutcome::Completed,
                result,
                error: None,
                retry_in_ms: None,
            },
            Err(e) => AckItem {
                id,
                lease_token: token,
                outcome: AckOutcome::Failed,
                result: None,
                retry_in_ms: e.retry_in.map(|d| d.as_millis() as u64),
                error: Some(Failure {
                    message: e.message,
                    kind: e.kind,
                    retryable: e.retryable,
                }),
            },
        };
        let _ = self.acks.send(item);
    }

    fn forget(&self, id: Uuid) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
    }
}

/// Most outcomes per `/v1/ack` request, and how long the first waits for company.
const ACK_BATCH: usize = 100;
const ACK_LINGER: Duration = Duration::from_millis(5);

async fn run_acker(
    client: Client,
    mut rx: mpsc::UnboundedReceiver<AckItem>,
    counters: Arc<Counters>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(ACK_LINGER);
        tokio::pin!(linger);
        while batch.len() < ACK_BATCH {
            tokio::select! {
                item = rx.recv() => match item { Some(i) => batch.push(i), None => break },
                _ = &mut linger => break,
            }
        }
        match client.ack(&batch).await {
            Ok(results) => {
                for (item, r) in batch.iter().zip(results) {
                    match (r.status, item.outcome) {
                        (200, AckOutcome::Completed) => {
                            counters.completed.fetch_add(1, Ordering::Relaxed)
                        }
                        // Fail-backs at shutdown are counted as `released` when sent.
                        (200, AckOutcome::Failed) if is_release(item) => 0,
                        (200, AckOutcome::Failed) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed)
                        }
                        (status, _) => {
                            tracing::warn!(message = "Outcome refused.", job_id = %item.id, status, error = ?r.error);
                            0
                        }
                    };
                }
            }
            // The leases will expire and the jobs will be retried: at least once, never lost.
            Err(e) => {
                tracing::error!(message = "Could not report outcomes.", jobs = batch.len(), error = %e)
            }
        }
    }
}

const RELEASE_KIND: &str = "WorkerShutdown";

fn is_release(item: &AckItem) -> bool {
    item.error.as_ref().and_then(|e| e.kind.as_deref()) == Some(RELEASE_KIND)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned())
}
