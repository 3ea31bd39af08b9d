//! The `store-*` scenarios: the loads of `enqueue`, `batch` and `drain`, given straight to a
//! SQLite store that the bench opens in its own process, with no HTTP in between.
//!
//! Each measures what the storage alone sustains on this machine: the writer thread, its group
//! commits and the `fdatasync` before every answer, exactly as `keel serve` runs them (the same
//! `SqliteStore`, opened with the same defaults), but none of the HTTP work (parsing, routing,
//! authentication, logging, JSON answers). The HTTP figure of the same load shares the cores
//! with that HTTP work, so it cannot exceed its store figure: a `store-*` row is the ceiling of
//! the row it mirrors, and its `×FLOOR` says whether that row's DESIGN.md target is within reach
//! of this storage at all. The gap between a row and its ceiling is what the HTTP path costs.
//!
//! The scenarios of one run share one store, as the HTTP scenarios share the server's (each uses
//! its own queue), so a store-* row meets a store as warm as its HTTP twin does when the lists
//! are in the same order. The store lives in a fresh directory under the `fsync` scenario's
//! (`--fsync-dir`, else the spawned server's data directory with `--spawn`, else the system's
//! temporary directory), so it syncs to the same disk as the server; the run removes it at its
//! end, also when a scenario failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_core::{Json, NewJob, Scope, When};
use keel_server::{Clock, SystemClock};
use keel_store::{LeaseRequest, Outcome, OutcomeKind, SqliteConfig, SqliteStore, Store};

use super::{BenchArgs, Report, Scenario, closed_loop, drained, payload, report};

/// The run's store: opened by the first store-* scenario, closed and removed by [`finish`].
///
/// [`finish`]: Scratch::finish
pub(super) struct Scratch {
    dir: PathBuf,
    store: Option<Arc<SqliteStore>>,
}

impl Scratch {
    pub(super) fn new(under: &Path, run_id: &str) -> Scratch {
        Scratch {
            dir: under.join(format!("keel-bench-store-{run_id}")),
            store: None,
        }
    }

    /// The store, opened on first use.
    pub(super) fn store(&mut self) -> anyhow::Result<Arc<SqliteStore>> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        let store = SqliteStore::open(SqliteConfig::new(&self.dir), SystemClock.now())
            .map_err(|e| anyhow::anyhow!("opening a store in {}: {e}", self.dir.display()))?;
        Ok(self.store.insert(Arc::new(store)).clone())
    }

    /// Closes the store, if one was opened (its writer flushes), and removes its directory.
    pub(super) async fn finish(self) {
        if let Some(store) = self.store {
            if let Err(e) = store.close().await {
                eprintln!("keel: bench: closing the store of the store-* scenarios: {e}");
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The job every `store-*` scenario enqueues: what the HTTP scenarios' bodies carry, parsed.
fn new_job(queue: &str, payload_bytes: usize) -> NewJob {
    NewJob {
        queue: queue.to_owned(),
        kind: "bench".to_owned(),
        payload: Json::from_value(&payload(payload_bytes)),
        priority: 0,
        when: When::Now,
        max_attempts: None,
        timeout_ms: None,
        backoff: None,
        idempotency_key: None,
        tags: Vec::new(),
        traceparent: None,
    }
}

/// `store-enqueue` (one job per call, `-c` callers) and `store-batch` (`--batch-size` jobs per
/// call, up to 16 callers), as `enqueue` and `batch` send them.
pub(super) async fn enqueue(
    scenario: Scenario,
    args: &BenchArgs,
    queue: &str,
    store: Arc<SqliteStore>,
) -> Report {
    let (step, callers) = match scenario {
        Scenario::StoreBatch => args.batches(),
        _ => (1, args.concurrency),
    };
    let job = new_job(queue, args.payload_bytes);
    let (req, done, errs, elapsed, h) = closed_loop(args, args.jobs, step, callers, move |_| {
        let (store, jobs) = (store.clone(), vec![job.clone(); step as usize]);
        async move {
            store
                .enqueue(jobs, SystemClock.now())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    report(scenario, req, done, elapsed, &h, errs)
}

/// `store-drain`: a backlog of `--jobs` queued first (untimed), then up to 32 workers that each
/// lease `--lease-size` jobs and complete all of them in one call, as `drain` does over HTTP.
pub(super) async fn drain(
    args: &BenchArgs,
    queue: &str,
    store: Arc<SqliteStore>,
) -> anyhow::Result<Report> {
    let job = new_job(queue, args.payload_bytes);
    let mut left = args.jobs;
    while left > 0 {
        let n = left.min(1_000);
        store
            .enqueue(vec![job.clone(); n as usize], SystemClock.now())
            .await
            .map_err(|e| anyhow::anyhow!("filling the queue: {e}"))?;
        left -= n;
    }
    let (lease, workers) = args.workers();
    let queue_name = queue.to_owned();
    let (req, done, errs, elapsed, h) = closed_loop(args, args.jobs, lease, workers, move |_| {
        let (store, queue) = (store.clone(), queue_name.clone());
        async move {
            lease_and_complete(&*store, queue, lease as usize)
                .await
                .and_then(drained)
        }
    })
    .await;
    Ok(report(
        Scenario::StoreDrain,
        req * 2,
        done,
        elapsed,
        &h,
        errs,
    ))
}

/// One lease of up to `max_jobs` and one call completing all of them; how many were completed.
/// An item the store refuses is an error.
async fn lease_and_complete(
    store: &dyn Store,
    queue: String,
    max_jobs: usize,
) -> Result<u64, String> {
    let leased = store
        .lease(
            LeaseRequest {
                queues: vec![queue],
                max_jobs,
                lease_ms: Some(60_000),
                worker: None,
            },
            SystemClock.now(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if leased.is_empty() {
        return Ok(0);
    }
    let outcomes = leased
        .into_iter()
        .map(|l| Outcome {
            id: l.job.id,
            token: l.token,
            kind: OutcomeKind::Completed { result: None },
            delivery: None,
        })
        .collect();
    let results = store
        .record_outcomes(outcomes, Scope::All, SystemClock.now())
        .await
        .map_err(|e| e.to_string())?;
    match results.iter().find_map(|r| r.as_ref().err()) {
        Some(e) => Err(format!("a completion was refused: {e}")),
        None => Ok(results.len() as u64),
    }
}
