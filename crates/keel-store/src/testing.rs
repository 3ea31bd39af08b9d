//! The conformance suite: every backend runs these cases through `conformance_tests!`, so any
//! behaviour difference between backends is a failing test, not a comment.
//!
//! Each case gets a fresh [`Harness`] whose `open` can be called again after `close` to reopen
//! the same data (restart tests). Times are explicit; nothing here sleeps.

use std::sync::Arc;

use async_trait::async_trait;
use keel_core::{
    Backoff, Cadence, CatchUp, JobTemplate, Json, NewJob, QueueOverrides, Role, ScheduleSpec,
    Scope, State, Time, When,
};

use crate::{
    Actor, JobFilter, LeaseRequest, Outcome, OutcomeKind, ReplayFilter, RunOutcome, SqliteConfig,
    SqliteStore, Store, TokenRecord,
};

/// 2026-11-23T06:00:00.000Z: the suite's "now".
pub const T0: Time = Time::from_millis_const(1_795_413_600_000);

#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens the store; after `close`, opening again sees the same data.
    async fn open(&self) -> Arc<dyn Store>;
}

/// A SQLite store in a fresh temporary directory.
pub struct SqliteHarness {
    pub dir: tempfile::TempDir,
}

impl SqliteHarness {
    #[allow(clippy::unwrap_used)]
    pub async fn new() -> SqliteHarness {
        SqliteHarness {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    #[allow(clippy::unwrap_used)]
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(SqliteConfig::new(self.dir.path()), T0).unwrap())
    }
}

/// The variable naming the PostgreSQL server the PostgreSQL tests use.
pub const TEST_DATABASE_ENV: &str = "KEEL_TEST_DATABASE_URL";

/// A PostgreSQL store in a fresh schema of the database named by `KEEL_TEST_DATABASE_URL`,
/// dropped when the harness is. `None` (the test says it skipped) when the variable is unset;
/// when it is set, an unreachable server fails the test.
pub struct PgHarness {
    pub url: String,
    pub schema: String,
}

impl PgHarness {
    pub async fn new() -> Option<PgHarness> {
        let Ok(url) = std::env::var(TEST_DATABASE_ENV) else {
            eprintln!(
                "skipped: {TEST_DATABASE_ENV} is not set, so this PostgreSQL test did not run"
            );
            return None;
        };
        Some(PgHarness {
            url,
            schema: format!("keel_t_{}", uuid::Uuid::new_v4().simple()),
        })
    }

    pub fn config(&self) -> crate::PgConfig {
        let mut config = crate::PgConfig::new(self.url.clone());
        config.schema = self.schema.clone();
        config.pool_size = 4;
        config
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop is not async: a short-lived runtime on its own thread removes the schema.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let driver = tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                    drop(client);
                    let _ = driver.await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[async_trait]
impl Harness for PgHarness {
    #[allow(clippy::unwrap_used)]
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(crate::PgStore::open(self.config(), T0).await.unwrap())
    }
}

/// Expands to one `#[tokio::test]` per case, each with a fresh harness from `$make`
/// (`optional`: `$make` gives an `Option`, and `None` skips the case).
#[macro_export]
macro_rules! conformance_tests {
    (@list $mode:ident $make:expr) => {
        $crate::conformance_tests!(@cases $mode $make;
            enqueue_is_durable_and_readable_with_defaults,
            a_large_batch_reads_back_exactly_as_answered,
            ids_increase_in_commit_order,
            delayed_job_waits_for_run_at,
            lease_hands_out_priority_then_run_at_then_id,
            lease_tries_queues_in_order_up_to_max_jobs,
            idempotent_enqueue_replays_identical_and_refuses_different,
            batch_with_a_conflict_writes_nothing,
            stale_lease_cannot_complete_job,
            failure_retries_with_backoff_then_dies,
            non_retryable_failure_is_dead_at_once,
            expired_lease_counts_as_a_failed_attempt,
            heartbeat_extends_the_lease,
            concurrency_limit_caps_running_jobs,
            paused_queue_hands_out_nothing,
            cancel_revokes_a_running_lease,
            retry_and_replay_give_a_fresh_budget,
            counts_follow_every_state_and_replay_takes_the_earliest_finished,
            purge_removes_jobs_and_records_it,
            retention_removes_old_finished_jobs_and_their_events,
            list_is_newest_first_paginated_and_filtered,
            batch_outcomes_succeed_or_fail_per_item,
            reopen_keeps_every_job_and_rebuilds_dispatch,
            jobs_table_equals_the_fold_of_events,
            subscribers_wake_when_work_arrives,
            long_poll_is_leased_the_job_that_arrives_during_its_wait,
            abandoned_long_poll_is_leased_nothing,
            long_poll_ends_empty_when_its_wait_runs_out,
            waiting_long_polls_each_get_their_own_jobs,
            long_poll_waits_out_a_pause_and_is_leased_on_resume,
            tokens_store_only_hashes_and_delete_at_once,
            schemas_are_versioned_and_audited,
            admin_changes_are_audited_with_their_actor,
            scoped_commands_and_lists_never_reach_other_queues,
            schedule_fires_each_tick_once_due_at_the_tick,
            schedule_never_fires_a_tick_twice_across_restarts_clock_jumps_and_rivals,
            schedule_catch_up_after_downtime_follows_its_mode,
            schedule_pause_update_delete_are_audited_and_keep_the_clock,
            rate_limit_paces_hand_outs_and_wakes_waiters_when_a_token_is_due,
            import_takes_jobs_and_events_as_they_were,
            events_are_written_once_each_in_the_order_they_happened,
            a_worked_queues_new_jobs_are_leased_as_they_were_stored
        );
    };
    (@cases required $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $make.await;
                $crate::testing::cases::$case(&harness).await;
            }
        )*
    };
    (@cases optional $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(harness) = $make.await else { return };
                $crate::testing::cases::$case(&harness).await;
            }
        )*
    };
    (optional $make:expr) => {
        $crate::conformance_tests!(@list optional $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@list required $make);
    };
}

/// The actor the suite's admin changes are made by.
pub fn op() -> Actor {
    Actor {
        token_id: Some(uuid::Uuid::from_u128(7)),
        name: "operator".into(),
    }
}

/// A schedule of `queue` every minute (or on `cron` in Europe/Berlin) with `catch_up`.
pub fn schedule_spec(queue: &str, cron: Option<&str>, catch_up: CatchUp) -> ScheduleSpec {
    ScheduleSpec {
        cadence: match cron {
            Some(expr) => Cadence::Cron {
                expr: expr.to_owned(),
                timezone: "Europe/Berlin".to_owned(),
            },
            None => Cadence::Every { every_ms: 60_000 },
        },
        catch_up,
        job: JobTemplate::from_new_job(job(queue)),
    }
}

/// A job for `queue` with a small JSON payload.
pub fn job(queue: &str) -> NewJob {
    NewJob {
        queue: queue.to_owned(),
        kind: "test.kind".to_owned(),
        payload: Json::from_value(&serde_json::json!({"n": 1})),
        priority: 0,
        when: When::Now,
        max_attempts: None,
        timeout_ms: None,
        backoff: None,
        idempotency_key: None,
        tags: vec![],
        // Every job the suite makes carries a trace context, so a backend that drops it fails
        // the cases that compare a stored row with its events' fold.
        traceparent: Some(TRACEPARENT.to_owned()),
    }
}

/// The trace context of `job`'s jobs.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

pub fn lease_req(queues: &[&str], max_jobs: usize) -> LeaseRequest {
    LeaseRequest {
        queues: queues.iter().map(|q| q.to_string()).collect(),
        max_jobs,
        lease_ms: Some(10_000),
        worker: Some("w1".into()),
    }
}

pub fn complete(id: uuid::Uuid, token: &str) -> Outcome {
    Outcome {
        id,
        token: token.to_owned(),
        kind: OutcomeKind::Completed { result: None },
        delivery: None,
    }
}

pub fn fail(id: uuid::Uuid, token: &str, retryable: bool, retry_in_ms: Option<i64>) -> Outcome {
    Outcome {
        id,
        token: token.to_owned(),
        kind: OutcomeKind::Failed {
            message: "boom".into(),
            kind: Some("Err".into()),
            retryable,
            retry_in_ms,
        },
        delivery: None,
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod cases {
    use super::*;
    use crate::StoreError;
    use keel_core::TransitionError;

    /// Enqueues `jobs` at `now`; their ids, in order.
    async fn enqueued_ids(store: &dyn Store, jobs: Vec<NewJob>, now: Time) -> Vec<uuid::Uuid> {
        let done = store.enqueue(jobs, now).await.unwrap();
        done.iter().map(|e| e.job.id).collect()
    }

    async fn one(
        store: &dyn Store,
        outcome: Outcome,
        now: Time,
    ) -> Result<keel_core::Job, StoreError> {
        store
            .record_outcomes(vec![outcome], Scope::All, now)
            .await
            .unwrap()
            .pop()
            .unwrap()
    }

    pub async fn enqueue_is_durable_and_readable_with_defaults(h: &dyn Harness) {
        let store = h.open().await;
        let out = store.enqueue(vec![job("emails")], T0).await.unwrap();
        let job = &out[0].job;
        assert!(!out[0].replayed);
        assert_eq!(
            (job.state, job.attempt, job.max_attempts, job.timeout_ms),
            (State::Available, 0, 20, 30_000)
        );
        assert_eq!(job.backoff, Backoff::default());
        assert_eq!((job.run_at, job.created_at), (T0, T0));
        assert_eq!(store.get_job(job.id).await.unwrap().as_ref(), Some(job));
        let events = store.job_events(job.id).await.unwrap().unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| e.data.type_name())
                .collect::<Vec<_>>(),
            ["enqueued"]
        );
        let q = store
            .queue("emails", T0)
            .await
            .unwrap()
            .expect("queue created on first use");
        assert_eq!(q.counts.available, 1);
        assert!(store.get_job(uuid::Uuid::now_v7()).await.unwrap().is_none());
    }

    pub async fn ids_increase_in_commit_order(h: &dyn Harness) {
        let store = h.open().await;
        // 5,000 jobs in one millisecond overflow the 12-bit counter; order must still hold.
        let first: Vec<_> = store
            .enqueue((0..5_000).map(|_| job("q")).collect(), T0)
            .await
            .unwrap();
        // A clock that went back must not produce smaller ids.
        let earlier = store
            .enqueue(vec![job("q")], T0.plus_ms(-60_000))
            .await
            .unwrap();
        store.close().await.unwrap();
        let store = h.open().await;
        let after_restart = store.enqueue(vec![job("q")], T0).await.unwrap();
        let ids: Vec<_> = first
            .iter()
            .chain(&earlier)
            .chain(&after_restart)
            .map(|e| e.job.id)
            .collect();
        if let Some(i) = ids.windows(2).position(|w| w[0] >= w[1]) {
            panic!(
                "ids are not strictly increasing at {i}: {} then {}",
                ids[i],
                ids[i + 1]
            );
        }
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
    }

    pub async fn delayed_job_waits_for_run_at(h: &dyn Harness) {
        let store = h.open().await;
        let mut j = job("q");
        j.when = When::Delay(5_000);
        let id = store.enqueue(vec![j], T0).await.unwrap()[0].job.id;
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            State::Scheduled
        );
        assert!(
            store
                .lease(lease_req(&["q"], 10), T0.plus_ms(4_999))
                .await
                .unwrap()
                .is_empty()
        );
        let tick = store.tick(T0.plus_ms(1_000)).await.unwrap();
        assert!(
            tick.next_due.unwrap() <= T0.plus_ms(5_000),
            "the timer knows when the job is due"
        );
        store.tick(T0.plus_ms(5_000)).await.unwrap();
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            State::Available
        );
        let leased = store
            .lease(lease_req(&["q"], 10), T0.plus_ms(5_000))
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
        // And a lease promotes due jobs itself, however late the timer is.
        let mut j = job("q");
        j.when = When::At(T0.plus_ms(6_000));
        store.enqueue(vec![j], T0).await.unwrap();
        assert_eq!(
            store
                .lease(lease_req(&["q"], 10), T0.plus_ms(6_000))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    pub async fn lease_hands_out_priority_then_run_at_then_id(h: &dyn Harness) {
        let store = h.open().await;
        let mk = |p: i32, at: i64| {
            let mut j = job("q");
            j.priority = p;
            j.when = When::At(T0.plus_ms(at));
            j
        };
        let jobs = store
            .enqueue(
                vec![mk(0, 0), mk(0, -10), mk(5, 0), mk(0, -10), mk(-3, -100)],
                T0,
            )
            .await
            .unwrap();
        let ids: Vec<_> = jobs.iter().map(|e| e.job.id).collect();
        let leased = store.lease(lease_req(&["q"], 10), T0).await.unwrap();
        let got: Vec<_> = leased.iter().map(|l| l.job.id).collect();
        assert_eq!(got, vec![ids[2], ids[1], ids[3], ids[0], ids[4]]);
        assert!(
            leased
                .iter()
                .all(|l| l.job.state == State::Running && l.job.attempt == 1)
        );
    }

    pub async fn lease_tries_queues_in_order_up_to_max_jobs(h: &dyn Harness) {
        let store = h.open().await;
        store
            .enqueue(vec![job("a"), job("b"), job("b"), job("c")], T0)
            .await
            .unwrap();
        let leased = store
            .lease(lease_req(&["b", "a", "missing"], 3), T0)
            .await
            .unwrap();
        let queues: Vec<_> = leased.iter().map(|l| l.job.queue.as_str()).collect();
        assert_eq!(queues, ["b", "b", "a"]);
        assert!(
            store
                .lease(lease_req(&["b", "a"], 3), T0)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.lease(lease_req(&["c"], 3), T0).await.unwrap().len(),
            1
        );
    }

    pub async fn idempotent_enqueue_replays_identical_and_refuses_different(h: &dyn Harness) {
        let store = h.open().await;
        let mut j = job("q");
        j.idempotency_key = Some("signup-42".into());
        let first = store.enqueue(vec![j.clone()], T0).await.unwrap().remove(0);
        let again = store
            .enqueue(vec![j.clone()], T0.plus_ms(1_000))
            .await
            .unwrap()
            .remove(0);
        assert!(again.replayed);
        assert_eq!(again.job.id, first.job.id);
        let mut other = j.clone();
        other.payload = Json::from_value(&serde_json::json!({"n": 2}));
        let err = store.enqueue(vec![other], T0).await.unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { index: 0, .. }),
            "{err:?}"
        );
        // Keys are per queue.
        let mut elsewhere = j.clone();
        elsewhere.queue = "other".into();
        assert!(!store.enqueue(vec![elsewhere], T0).await.unwrap()[0].replayed);
        // After the key's life (24 h) the key is free again.
        store.tick(T0.plus_ms(24 * 3_600_000 + 1)).await.unwrap();
        let later = store
            .enqueue(vec![j], T0.plus_ms(24 * 3_600_000 + 2))
            .await
            .unwrap()
            .remove(0);
        assert!(!later.replayed);
        assert_ne!(later.job.id, first.job.id);
        // Within one batch, the same key twice is one job.
        let mut k = job("q");
        k.idempotency_key = Some("batch-key".into());
        let out = store.enqueue(vec![k.clone(), k], T0).await.unwrap();
        assert_eq!(out[0].job.id, out[1].job.id);
        assert!(!out[0].replayed && out[1].replayed);
    }

    pub async fn batch_with_a_conflict_writes_nothing(h: &dyn Harness) {
        let store = h.open().await;
        let mut keyed = job("q");
        keyed.idempotency_key = Some("k".into());
        store.enqueue(vec![keyed.clone()], T0).await.unwrap();
        keyed.priority = 9;
        let err = store
            .enqueue(vec![job("q"), job("q"), keyed], T0)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::IdempotencyConflict { index: 2, .. }),
            "{err:?}"
        );
        let page = store
            .list_jobs(JobFilter {
                queue: Some("q".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page.jobs.len(),
            1,
            "only the first, separate enqueue exists"
        );
    }

    pub async fn stale_lease_cannot_complete_job(h: &dyn Harness) {
        let store = h.open().await;
        let id = store.enqueue(vec![job("q")], T0).await.unwrap()[0].job.id;
        let mut req = lease_req(&["q"], 1);
        req.lease_ms = Some(1_000);
        let first = store.lease(req.clone(), T0).await.unwrap().remove(0);
        store.tick(T0.plus_ms(1_000)).await.unwrap();
        // The expired attempt is retried after backoff (1 s ± jitter); lease it again then.
        store.tick(T0.plus_ms(3_000)).await.unwrap();
        let second = store.lease(req, T0.plus_ms(3_000)).await.unwrap().remove(0);
        assert_eq!((second.job.id, second.job.attempt), (id, 2));
        for outcome in [
            complete(id, &first.token),
            fail(id, &first.token, true, None),
        ] {
            let err = one(&*store, outcome, T0.plus_ms(3_001)).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Transition(TransitionError::LeaseLost)),
                "{err:?}"
            );
        }
        let err = store
            .heartbeat(
                id,
                first.token.clone(),
                1_000,
                Scope::All,
                T0.plus_ms(3_001),
            )
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Transition(TransitionError::LeaseLost)
        ));
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            State::Running,
            "stale calls changed nothing"
        );
        let done = one(&*store, complete(id, &second.token), T0.plus_ms(3_002))
            .await
            .unwrap();
        assert_eq!(done.state, State::Completed);
        let err = one(&*store, complete(id, &second.token), T0.plus_ms(3_003))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Transition(TransitionError::LeaseLost)),
            "a finished job takes no outcome"
        );
    }

    pub async fn failure_retries_with_backoff_then_dies(h: &dyn Harness) {
        let store = h.open().await;
        let mut j = job("q");
        j.max_attempts = Some(3);
        j.backoff = Some(Backoff {
            initial_ms: 1_000,
            max_ms: 3_000,
            jitter: 0.5,
        });
        let id = store.enqueue(vec![j], T0).await.unwrap()[0].job.id;
        let mut now = T0;
        for attempt in 1..=3u32 {
            let leased = store
                .lease(lease_req(&["q"], 1), now)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(leased.job.attempt, attempt);
            let after = one(&*store, fail(id, &leased.token, true, None), now)
                .await
                .unwrap();
            if attempt < 3 {
                let ceiling = (1_000i64 << (attempt - 1)).min(3_000);
                let delay = after.run_at.millis_since(now);
                assert!(
                    after.state == State::Scheduled && delay <= ceiling && delay >= ceiling / 2,
                    "{delay} vs {ceiling}"
                );
                now = after.run_at;
            } else {
                assert_eq!(after.state, State::Dead);
                assert!(after.finished_at.is_some());
                assert_eq!(after.last_error.as_ref().unwrap().message, "boom");
            }
        }
        let types: Vec<_> = store
            .job_events(id)
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.data.type_name())
            .collect();
        assert_eq!(
            types,
            [
                "enqueued",
                "leased",
                "failed",
                "scheduled",
                "available",
                "leased",
                "failed",
                "scheduled",
                "available",
                "leased",
                "failed",
                "dead"
            ]
        );
        // retry_in_ms overrides the backoff.
        let id = store.enqueue(vec![job("q")], now).await.unwrap()[0].job.id;
        let leased = store
            .lease(lease_req(&["q"], 1), now)
            .await
            .unwrap()
            .remove(0);
        let after = one(&*store, fail(id, &leased.token, true, Some(42_000)), now)
            .await
            .unwrap();
        assert_eq!(after.run_at, now.plus_ms(42_000));
    }

    pub async fn non_retryable_failure_is_dead_at_once(h: &dyn Harness) {
        let store = h.open().await;
        let id = store.enqueue(vec![job("q")], T0).await.unwrap()[0].job.id;
        let leased = store
            .lease(lease_req(&["q"], 1), T0)
            .await
            .unwrap()
            .remove(0);
        let after = one(&*store, fail(id, &leased.token, false, None), T0)
            .await
            .unwrap();
        assert_eq!((after.state, after.attempt), (State::Dead, 1));
    }

    pub async fn expired_lease_counts_as_a_failed_attempt(h: &dyn Harness) {
        let store = h.open().await;
        let mut j = job("q");
        j.max_attempts = Some(1);
        let id = store.enqueue(vec![j, job("q")], T0).await.unwrap()[0]
            .job
            .id;
        let mut req = lease_req(&["q"], 2);
        req.lease_ms = Some(500);
        store.lease(req, T0).await.unwrap();
        store.tick(T0.plus_ms(499)).await.unwrap();
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            State::Running
        );
        store.tick(T0.plus_ms(500)).await.unwrap();
        let dead = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(dead.state, State::Dead, "its only attempt expired");
        assert_eq!(
            dead.last_error.unwrap().kind.as_deref(),
            Some("lease_expired")
        );
        let page = store
            .list_jobs(JobFilter {
                state: Some(State::Scheduled),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.len(), 1, "the other job waits for its retry");
    }

    pub async fn heartbeat_extends_the_lease(h: &dyn Harness) {
        let store = h.open().await;
        let id = store.enqueue(vec![job("q")], T0).await.unwrap()[0].job.id;
        let mut req = lease_req(&["q"], 1);
        req.lease_ms = Some(1_000);
        let leased = store.lease(req, T0).await.unwrap().remove(0);
        let expires = store
            .heartbeat(id, leased.token.clone(), 5_000, Scope::All, T0.plus_ms(900))
            .await
            .unwrap();
        assert_eq!(expires, T0.plus_ms(5_900));
        store.tick(T0.plus_ms(2_000)).await.unwrap();
        assert_eq!(
            store.get_job(id).await.unwrap().unwrap().state,
            State::Running,
            "still leased"
        );
        assert!(
            one(&*store, complete(id, &leased.token), T0.plus_ms(2_001))
                .await
                .is_ok()
        );
        assert!(matches!(
            store
                .heartbeat(uuid::Uuid::now_v7(), "x".into(), 1, Scope::All, T0)
                .await,
            Err(StoreError::NotFound)
        ));
    }

    pub async fn concurrency_limit_caps_running_jobs(h: &dyn Harness) {
        let store = h.open().await;
        store
            .configure_queue(
                "q",
                QueueOverrides {
                    concurrency: Some(2),
                    ..Default::default()
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        store
            .enqueue((0..5).map(|_| job("q")).collect(), T0)
            .await
            .unwrap();
        let a = store.lease(lease_req(&["q"], 10), T0).await.unwrap();
        assert_eq!(a.len(), 2);
        assert!(
            store
                .lease(lease_req(&["q"], 10), T0)
                .await
                .unwrap()
                .is_empty(),
            "at the limit"
        );
        one(&*store, complete(a[0].job.id, &a[0].token), T0)
            .await
            .unwrap();
        assert_eq!(
            store.lease(lease_req(&["q"], 10), T0).await.unwrap().len(),
            1,
            "a freed slot is reused"
        );
        store
            .configure_queue("q", QueueOverrides::default(), &op(), T0)
            .await
            .unwrap();
        assert_eq!(
            store.lease(lease_req(&["q"], 10), T0).await.unwrap().len(),
            2,
            "limit removed"
        );
    }

    pub async fn paused_queue_hands_out_nothing(h: &dyn Harness) {
        let store = h.open().await;
        store.enqueue(vec![job("q")], T0).await.unwrap();
        assert!(store.set_paused("q", true, &op(), T0).await.unwrap().paused);
        assert!(
            store
                .lease(lease_req(&["q"], 1), T0)
                .await
                .unwrap()
                .is_empty()
        );
        store.set_paused("q", false, &op(), T0).await.unwrap();
        assert_eq!(
            store.lease(lease_req(&["q"], 1), T0).await.unwrap().len(),
            1
        );
        assert!(matches!(
            store.set_paused("nope", true, &op(), T0).await,
            Err(StoreError::NotFound)
        ));
    }

    pub async fn cancel_revokes_a_running_lease(h: &dyn Harness) {
        let store = h.open().await;
        let id = store.enqueue(vec![job("q")], T0).await.unwrap()[0].job.id;
        let leased = store
            .lease(lease_req(&["q"], 1), T0)
            .await
            .unwrap()
            .remove(0);
        let cancelled = store.cancel(id, Scope::All, T0).await.unwrap();
        assert_eq!(cancelled.state, State::Cancelled);
        assert!(matches!(
            one(&*store, complete(id, &leased.token), T0).await,
            Err(StoreError::Transition(TransitionError::LeaseLost))
        ));
        assert!(matches!(
            store.cancel(id, Scope::All, T0).await,
            Err(StoreError::Transition(TransitionError::InvalidState { .. }))
        ));
        assert!(matches!(
            store.cancel(uuid::Uuid::now_v7(), Scope::All, T0).await,
            Err(StoreError::NotFound)
        ));
    }

    pub async fn retry_and_replay_give_a_fresh_budget(h: &dyn Harness) {
        let store = h.open().await;
        let mut j = job("q");
        j.max_attempts = Some(1);
        let ids: Vec<_> = enqueued_ids(&*store, vec![j.clone(), j.clone(), j], T0).await;
        for l in store.lease(lease_req(&["q"], 3), T0).await.unwrap() {
            one(&*store, fail(l.job.id, &l.token, true, None), T0)
                .await
                .unwrap();
        }
        assert!(
            matches!(store.retry(ids[0], Scope::All, T0).await, Ok(ref j) if j.state == State::Available && j.attempt == 0)
        );
        assert!(matches!(
            store.retry(ids[0], Scope::All, T0).await,
            Err(StoreError::Transition(TransitionError::InvalidState { .. }))
        ));
        let n = store
            .replay(
                "q",
                ReplayFilter {
                    state: State::Dead,
                    kind: None,
                    limit: 1_000,
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            store.lease(lease_req(&["q"], 10), T0).await.unwrap().len(),
            3
        );
        assert!(matches!(
            store
                .replay(
                    "nope",
                    ReplayFilter {
                        state: State::Dead,
                        kind: None,
                        limit: 1
                    },
                    &op(),
                    T0
                )
                .await,
            Err(StoreError::NotFound)
        ));
    }

    /// A queue's counts by state, after jobs reach each state, and which jobs a replay with a
    /// limit takes: those finished earliest, whatever their ids.
    pub async fn counts_follow_every_state_and_replay_takes_the_earliest_finished(h: &dyn Harness) {
        let store = h.open().await;
        let mut later = job("q");
        later.when = When::Delay(3_600_000);
        let ids: Vec<_> = enqueued_ids(
            &*store,
            vec![job("q"), job("q"), job("q"), job("q"), later],
            T0,
        )
        .await;
        let leased = store.lease(lease_req(&["q"], 2), T0).await.unwrap();
        assert_eq!(
            leased.iter().map(|l| l.job.id).collect::<Vec<_>>(),
            ids[..2]
        );
        one(&*store, complete(ids[0], &leased[0].token), T0.plus_ms(1))
            .await
            .unwrap();
        let q = store.queue("q", T0.plus_ms(10)).await.unwrap().unwrap();
        assert_eq!(
            (q.counts.available, q.oldest_available_age_ms),
            (2, Some(10)),
            "two jobs due at T0 wait"
        );
        store
            .cancel(ids[3], Scope::All, T0.plus_ms(2))
            .await
            .unwrap();
        store
            .cancel(ids[2], Scope::All, T0.plus_ms(3))
            .await
            .unwrap();
        let q = store.queue("q", T0.plus_ms(10)).await.unwrap().unwrap();
        assert_eq!(q.oldest_available_age_ms, None, "none waits");
        let counts = |store: std::sync::Arc<dyn Store>| async move {
            store.queue("q", T0).await.unwrap().unwrap().counts
        };
        assert_eq!(
            counts(store.clone()).await,
            crate::Counts {
                scheduled: 1,
                available: 0,
                running: 1,
                completed: 1,
                dead: 0,
                cancelled: 2,
            }
        );
        let replayed = store
            .replay(
                "q",
                ReplayFilter {
                    state: State::Cancelled,
                    kind: None,
                    limit: 1,
                },
                &op(),
                T0.plus_ms(4),
            )
            .await
            .unwrap();
        assert_eq!(replayed, 1);
        let state = |id| {
            let store = store.clone();
            async move { store.get_job(id).await.unwrap().unwrap().state }
        };
        assert_eq!(
            (state(ids[3]).await, state(ids[2]).await),
            (State::Available, State::Cancelled),
            "the job cancelled first is replayed first, though its id is higher"
        );
        let c = counts(store.clone()).await;
        assert_eq!((c.available, c.cancelled), (1, 1));
    }

    pub async fn purge_removes_jobs_and_records_it(h: &dyn Harness) {
        let store = h.open().await;
        let ids: Vec<_> = enqueued_ids(&*store, vec![job("q"), job("q"), job("q")], T0).await;
        store.cancel(ids[0], Scope::All, T0).await.unwrap();
        assert_eq!(
            store.purge("q", State::Available, &op(), T0).await.unwrap(),
            2
        );
        assert!(store.get_job(ids[1]).await.unwrap().is_none());
        let types: Vec<_> = store
            .job_events(ids[1])
            .await
            .unwrap()
            .unwrap()
            .iter()
            .map(|e| e.data.type_name())
            .collect();
        assert_eq!(types, ["enqueued", "purged"], "history survives the purge");
        assert!(
            store.get_job(ids[0]).await.unwrap().is_some(),
            "other states untouched"
        );
        assert!(
            store
                .lease(lease_req(&["q"], 10), T0)
                .await
                .unwrap()
                .is_empty(),
            "purged jobs are not handed out"
        );
    }

    pub async fn retention_removes_old_finished_jobs_and_their_events(h: &dyn Harness) {
        let store = h.open().await;
        let retention = keel_core::Retention {
            completed_ms: 60_000,
            dead_ms: 120_000,
        };
        store
            .configure_queue(
                "q",
                QueueOverrides {
                    retention: Some(retention),
                    ..Default::default()
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        let ids: Vec<_> = enqueued_ids(&*store, vec![job("q"), job("q"), job("q")], T0).await;
        let leased = store.lease(lease_req(&["q"], 2), T0).await.unwrap();
        one(&*store, complete(leased[0].job.id, &leased[0].token), T0)
            .await
            .unwrap();
        one(
            &*store,
            fail(leased[1].job.id, &leased[1].token, false, None),
            T0,
        )
        .await
        .unwrap();
        store.tick(T0.plus_ms(60_001)).await.unwrap();
        assert!(
            store.get_job(ids[0]).await.unwrap().is_none(),
            "completed job past retention is gone"
        );
        assert!(
            store.job_events(ids[0]).await.unwrap().is_none(),
            "with its events"
        );
        assert!(
            store.get_job(ids[1]).await.unwrap().is_some(),
            "dead retention is longer"
        );
        store.tick(T0.plus_ms(120_001)).await.unwrap();
        assert!(store.get_job(ids[1]).await.unwrap().is_none());
        assert!(
            store.get_job(ids[2]).await.unwrap().is_some(),
            "unfinished jobs are never removed"
        );
    }

    pub async fn list_is_newest_first_paginated_and_filtered(h: &dyn Harness) {
        let store = h.open().await;
        let mut tagged = job("a");
        tagged.tags = vec!["tenant:7".into()];
        let mut kinded = job("b");
        kinded.kind = "other".into();
        let mut all = vec![];
        for (i, j) in [job("a"), tagged, kinded, job("b"), job("a")]
            .into_iter()
            .enumerate()
        {
            all.push(
                store.enqueue(vec![j], T0.plus_ms(i as i64)).await.unwrap()[0]
                    .job
                    .id,
            );
        }
        let mut seen = vec![];
        let mut before = None;
        loop {
            let page = store
                .list_jobs(JobFilter {
                    limit: 2,
                    before,
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.jobs.iter().map(|j| j.id));
            // A job created mid-pagination must not disturb the pages still to come.
            if before.is_none() {
                store.enqueue(vec![job("a")], T0.plus_ms(10)).await.unwrap();
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        all.reverse();
        assert_eq!(seen, all, "newest first, no duplicates, no gaps");
        let f = |queue: Option<&str>, kind: Option<&str>, tag: Option<&str>| JobFilter {
            queue: queue.map(Into::into),
            kind: kind.map(Into::into),
            tag: tag.map(Into::into),
            limit: 50,
            ..Default::default()
        };
        assert_eq!(
            store
                .list_jobs(f(Some("a"), None, None))
                .await
                .unwrap()
                .jobs
                .len(),
            4
        );
        assert_eq!(
            store
                .list_jobs(f(None, Some("other"), None))
                .await
                .unwrap()
                .jobs
                .len(),
            1
        );
        assert_eq!(
            store
                .list_jobs(f(None, None, Some("tenant:7")))
                .await
                .unwrap()
                .jobs[0]
                .id,
            all[3]
        );
        let running = JobFilter {
            state: Some(State::Running),
            limit: 50,
            ..Default::default()
        };
        assert!(store.list_jobs(running).await.unwrap().jobs.is_empty());
    }

    pub async fn batch_outcomes_succeed_or_fail_per_item(h: &dyn Harness) {
        let store = h.open().await;
        store.enqueue(vec![job("q"), job("q")], T0).await.unwrap();
        let l = store.lease(lease_req(&["q"], 2), T0).await.unwrap();
        let results = store
            .record_outcomes(
                vec![
                    complete(l[0].job.id, &l[0].token),
                    complete(l[1].job.id, "wrong"),
                    fail(l[1].job.id, &l[1].token, true, Some(0)),
                ],
                Scope::All,
                T0,
            )
            .await
            .unwrap();
        assert_eq!(results[0].as_ref().unwrap().state, State::Completed);
        assert!(matches!(
            results[1],
            Err(StoreError::Transition(TransitionError::LeaseLost))
        ));
        assert_eq!(
            results[2].as_ref().unwrap().state,
            State::Available,
            "retry_in_ms 0 is available at once"
        );
    }

    pub async fn reopen_keeps_every_job_and_rebuilds_dispatch(h: &dyn Harness) {
        let store = h.open().await;
        store
            .configure_queue(
                "q",
                QueueOverrides {
                    concurrency: Some(3),
                    ..Default::default()
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        let mut delayed = job("q");
        delayed.when = When::Delay(1_000);
        let mut high = job("q");
        high.priority = 10;
        let ids: Vec<_> = enqueued_ids(&*store, vec![job("q"), job("q"), delayed, high], T0).await;
        let mut req = lease_req(&["q"], 1);
        req.lease_ms = Some(5_000);
        let leased = store.lease(req, T0).await.unwrap().remove(0);
        assert_eq!(leased.job.id, ids[3]);
        store.set_paused("q", true, &op(), T0).await.unwrap();
        store.close().await.unwrap();
        assert!(
            matches!(
                store.enqueue(vec![job("q")], T0).await,
                Err(StoreError::Unavailable(_))
            ),
            "closed store refuses"
        );

        let store = h.open().await;
        assert_eq!(
            store.get_job(ids[3]).await.unwrap().unwrap().state,
            State::Running
        );
        assert!(
            store
                .lease(lease_req(&["q"], 10), T0)
                .await
                .unwrap()
                .is_empty(),
            "pause survived"
        );
        store.set_paused("q", false, &op(), T0).await.unwrap();
        // Lease expiry is recovered from disk.
        store.tick(T0.plus_ms(5_000)).await.unwrap();
        let after = store.get_job(ids[3]).await.unwrap().unwrap();
        assert_eq!(
            after.state,
            State::Scheduled,
            "expired lease became a retry"
        );
        // Concurrency (3) survived; the delayed job became available and the order is intact.
        let got: Vec<_> = store
            .lease(lease_req(&["q"], 10), T0.plus_ms(5_000))
            .await
            .unwrap()
            .iter()
            .map(|l| l.job.id)
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[..2], [ids[0], ids[1]]);
    }

    pub async fn jobs_table_equals_the_fold_of_events(h: &dyn Harness) {
        let store = h.open().await;
        let mut now = T0;
        let mut j = job("q");
        j.max_attempts = Some(2);
        store
            .enqueue((0..20).map(|_| j.clone()).collect(), now)
            .await
            .unwrap();
        for round in 0..4 {
            let leased = store.lease(lease_req(&["q"], 8), now).await.unwrap();
            let outcomes = leased
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if (i + round) % 3 == 0 {
                        complete(l.job.id, &l.token)
                    } else {
                        fail(l.job.id, &l.token, i % 4 != 1, None)
                    }
                })
                .collect();
            store
                .record_outcomes(outcomes, Scope::All, now)
                .await
                .unwrap();
            now = now.plus_ms(10_000);
            store.tick(now).await.unwrap();
        }
        let some = store
            .list_jobs(JobFilter {
                limit: 3,
                ..Default::default()
            })
            .await
            .unwrap()
            .jobs;
        let _ = store.cancel(some[0].id, Scope::All, now).await;
        store
            .purge("q", State::Completed, &op(), now)
            .await
            .unwrap();
        let report = store.verify().await.unwrap();
        assert!(report.jobs > 0 && report.events > report.jobs);
        assert!(
            report.mismatched.is_empty(),
            "rows differ from their events: {:?}",
            report.mismatched
        );
    }

    /// A queue being worked (a worker leased from it before the jobs arrive) is fed by single
    /// enqueues and by a batch large enough to be written at once. Each lease must be exactly
    /// the next step of its job as stored and answered, and the rows must still equal their
    /// events. (The SQLite writer leases a worked queue's new jobs from copies it kept when it
    /// wrote them, `sqlite/held.rs`; a copy that differs from its row shows here.)
    pub async fn a_worked_queues_new_jobs_are_leased_as_they_were_stored(h: &dyn Harness) {
        let store = h.open().await;
        store.enqueue(vec![job("w")], T0).await.unwrap();
        let first = store.lease(lease_req(&["w"], 10), T0).await.unwrap();
        assert_eq!(first.len(), 1);
        let mut answered = Vec::new();
        for i in 0..3 {
            let mut j = job("w");
            j.kind = format!("single.{i}");
            j.tags = vec![format!("t{i}")];
            answered.extend(store.enqueue(vec![j], T0).await.unwrap());
        }
        let batch = (0..70).map(|i| {
            let mut j = job("w");
            j.kind = format!("batch.{i}");
            j.payload = Json::from_value(&serde_json::json!({"i": i}));
            j.max_attempts = Some(2 + i);
            j
        });
        answered.extend(store.enqueue(batch.collect(), T0).await.unwrap());
        let now = T0.plus_ms(1);
        let leased = store.lease(lease_req(&["w"], 100), now).await.unwrap();
        assert_eq!(leased.len(), 73);
        for l in &leased {
            let stored = &answered
                .iter()
                .find(|e| e.job.id == l.job.id)
                .expect("a job that was enqueued")
                .job;
            let lease = l.job.lease.as_ref().expect("a lease");
            let cmd = keel_core::Command::Lease {
                token_hash: lease.token_hash.clone(),
                lease_ms: 10_000,
                worker: Some("w1".into()),
            };
            let (next, _) = keel_core::step(stored, &cmd, now).unwrap();
            assert_eq!(next.as_ref(), Some(&l.job), "{} leased", stored.kind);
            assert_eq!(
                store.get_job(l.job.id).await.unwrap().as_ref(),
                Some(&l.job)
            );
        }
        let outcomes = leased.iter().map(|l| complete(l.job.id, &l.token));
        for done in store
            .record_outcomes(outcomes.collect(), Scope::All, now)
            .await
            .unwrap()
        {
            assert_eq!(done.unwrap().state, State::Completed);
        }
        let report = store.verify().await.unwrap();
        assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
    }

    /// 149 jobs (64 + 64 + 16 + 4 + 1: every statement size a backend may write rows in), each
    /// different in every column a caller sets; each row must read back as its answer said.
    pub async fn a_large_batch_reads_back_exactly_as_answered(h: &dyn Harness) {
        let store = h.open().await;
        let jobs: Vec<NewJob> = (0..149)
            .map(|i| {
                let mut j = job(if i % 3 == 0 { "big.a" } else { "big.b" });
                j.kind = format!("kind.{i}");
                j.payload = Json::from_value(&serde_json::json!({"i": i, "text": "x".repeat(i)}));
                j.priority = (i % 5) as i32 - 2;
                j.max_attempts = Some(1 + i as u32);
                j.timeout_ms = Some(1_000 + i as i64);
                j.tags = (0..i % 4).map(|t| format!("t{t}")).collect();
                j.idempotency_key = (i % 7 == 0).then(|| format!("key-{i}"));
                // Runs of equal backoffs and changes between them.
                j.backoff = (i % 13 < 4).then(|| Backoff {
                    initial_ms: 100 + (i / 13) as i64,
                    max_ms: 60_000,
                    jitter: 0.5,
                });
                if i % 11 == 0 {
                    j.when = When::At(T0.plus_ms(60_000 + i as i64));
                }
                if i % 2 == 0 {
                    j.traceparent = None;
                }
                j
            })
            .collect();
        let out = store.enqueue(jobs, T0).await.unwrap();
        assert_eq!(out.len(), 149);
        for (i, e) in out.iter().enumerate() {
            assert!(!e.replayed);
            assert_eq!(e.job.kind, format!("kind.{i}"));
            let stored = store.get_job(e.job.id).await.unwrap();
            assert_eq!(
                stored.as_ref(),
                Some(&e.job),
                "job {i} reads back differently"
            );
        }
        let report = store.verify().await.unwrap();
        assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
        // The dispatch index has every available one, after a restart too.
        store.close().await.unwrap();
        let store = h.open().await;
        let leased = store
            .lease(lease_req(&["big.a", "big.b"], 500), T0.plus_ms(1))
            .await
            .unwrap();
        let scheduled = (0..149).filter(|i| i % 11 == 0).count();
        assert_eq!(leased.len(), 149 - scheduled);
    }

    pub async fn subscribers_wake_when_work_arrives(h: &dyn Harness) {
        let store = h.open().await;
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        store.enqueue(vec![job("q")], T0).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .expect("woken")
            .unwrap();
    }

    /// The clock of the long-poll cases: a little after `T0`.
    fn poll_now() -> Time {
        T0.plus_ms(5)
    }

    /// Polls `wait` for a while and asserts it is still waiting (so it has reached the store and
    /// waits there, parked or subscribed).
    async fn still_waiting<F: std::future::Future + Unpin>(wait: &mut F) {
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), wait).await;
        assert!(early.is_err(), "a long poll returned with nothing to lease");
    }

    pub async fn long_poll_is_leased_the_job_that_arrives_during_its_wait(h: &dyn Harness) {
        let store = h.open().await;
        let mut wait = Box::pin(store.wait_and_lease(
            lease_req(&["lp"], 10),
            &poll_now,
            std::time::Duration::from_secs(30),
        ));
        still_waiting(&mut wait).await;
        let id = store
            .enqueue(vec![job("lp")], T0.plus_ms(10))
            .await
            .unwrap()[0]
            .job
            .id;
        let leased = tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("leased long before the wait ran out")
            .unwrap();
        assert_eq!(leased.len(), 1);
        let job = &leased[0].job;
        assert_eq!((job.id, job.state, job.attempt), (id, State::Running, 1));
        // A real lease: on disk, and its token completes the job.
        let stored = store.get_job(id).await.unwrap().unwrap();
        assert_eq!(stored.state, State::Running);
        let lease = stored.lease.as_ref().expect("a lease");
        assert!(lease.expires_at >= poll_now().plus_ms(10_000), "{lease:?}");
        let done = one(&*store, complete(id, &leased[0].token), T0.plus_ms(20)).await;
        assert_eq!(done.unwrap().state, State::Completed);
    }

    pub async fn abandoned_long_poll_is_leased_nothing(h: &dyn Harness) {
        let store = h.open().await;
        let mut wait = Box::pin(store.wait_and_lease(
            lease_req(&["gone"], 10),
            &poll_now,
            std::time::Duration::from_secs(30),
        ));
        still_waiting(&mut wait).await;
        // The caller gives up (its HTTP request ended); then work arrives.
        drop(wait);
        let id = store
            .enqueue(vec![job("gone")], T0.plus_ms(10))
            .await
            .unwrap()[0]
            .job
            .id;
        let leased = store
            .lease(lease_req(&["gone"], 10), T0.plus_ms(20))
            .await
            .unwrap();
        assert_eq!(
            leased.iter().map(|l| l.job.id).collect::<Vec<_>>(),
            vec![id],
            "the job went to a long poll that had given up"
        );
    }

    pub async fn long_poll_ends_empty_when_its_wait_runs_out(h: &dyn Harness) {
        let store = h.open().await;
        let started = std::time::Instant::now();
        let leased = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.wait_and_lease(
                lease_req(&["quiet"], 10),
                &poll_now,
                std::time::Duration::from_millis(300),
            ),
        )
        .await
        .expect("the wait ends when it runs out")
        .unwrap();
        assert!(leased.is_empty());
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(300),
            "returned after {:?}, before the wait ran out",
            started.elapsed()
        );
        // Nothing is leased for the ended wait later.
        store
            .enqueue(vec![job("quiet")], T0.plus_ms(10))
            .await
            .unwrap();
        let leased = store
            .lease(lease_req(&["quiet"], 10), T0.plus_ms(20))
            .await
            .unwrap();
        assert_eq!(leased.len(), 1);
    }

    pub async fn waiting_long_polls_each_get_their_own_jobs(h: &dyn Harness) {
        let store = h.open().await;
        let wait_for = |store: Arc<dyn Store>| async move {
            store
                .wait_and_lease(
                    lease_req(&["shared"], 2),
                    &poll_now,
                    std::time::Duration::from_secs(30),
                )
                .await
        };
        let mut a = Box::pin(wait_for(store.clone()));
        let mut b = Box::pin(wait_for(store.clone()));
        still_waiting(&mut a).await;
        still_waiting(&mut b).await;
        let mut ids: Vec<_> = store
            .enqueue((0..3).map(|_| job("shared")).collect(), T0.plus_ms(10))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.job.id)
            .collect();
        let ten = std::time::Duration::from_secs(10);
        let (a, b) = tokio::join!(tokio::time::timeout(ten, a), tokio::time::timeout(ten, b));
        let (a, b) = (a.expect("a leased").unwrap(), b.expect("b leased").unwrap());
        let mut sizes = [a.len(), b.len()];
        sizes.sort();
        assert_eq!(
            sizes,
            [1, 2],
            "three jobs for two polls of at most two each"
        );
        let mut got: Vec<_> = a.iter().chain(&b).map(|l| l.job.id).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids, "each job leased once");
    }

    pub async fn long_poll_waits_out_a_pause_and_is_leased_on_resume(h: &dyn Harness) {
        let store = h.open().await;
        store.enqueue(vec![job("held")], T0).await.unwrap();
        store.set_paused("held", true, &op(), T0).await.unwrap();
        let mut wait = Box::pin(store.wait_and_lease(
            lease_req(&["held"], 10),
            &poll_now,
            std::time::Duration::from_secs(30),
        ));
        still_waiting(&mut wait).await;
        store
            .enqueue(vec![job("held")], T0.plus_ms(10))
            .await
            .unwrap();
        still_waiting(&mut wait).await;
        store
            .set_paused("held", false, &op(), T0.plus_ms(20))
            .await
            .unwrap();
        let leased = tokio::time::timeout(std::time::Duration::from_secs(10), wait)
            .await
            .expect("leased once the queue resumed")
            .unwrap();
        assert_eq!(leased.len(), 2);
    }

    pub async fn tokens_store_only_hashes_and_delete_at_once(h: &dyn Harness) {
        let store = h.open().await;
        let token = TokenRecord {
            id: uuid::Uuid::now_v7(),
            name: "billing-api".into(),
            role: Role::Producer,
            queues: Some(vec!["billing.*".into()]),
            hash: keel_core::access::api_token_hash("keel_secret"),
            created_at: T0,
        };
        store.create_token(token.clone(), &op(), T0).await.unwrap();
        let admin = TokenRecord {
            id: uuid::Uuid::now_v7(),
            name: "root".into(),
            role: Role::Admin,
            queues: None,
            hash: keel_core::access::api_token_hash("keel_other"),
            created_at: T0.plus_ms(1),
        };
        store.create_token(admin.clone(), &op(), T0).await.unwrap();
        store.close().await.unwrap();
        let store = h.open().await;
        assert_eq!(
            store.tokens().await.unwrap(),
            vec![token.clone(), admin.clone()]
        );
        // The same secret twice would make two tokens indistinguishable: refused.
        let dup = TokenRecord {
            id: uuid::Uuid::now_v7(),
            ..token.clone()
        };
        assert!(store.create_token(dup, &op(), T0).await.is_err());
        assert_eq!(
            store.delete_token(token.id, &op(), T0).await.unwrap(),
            token
        );
        assert_eq!(store.tokens().await.unwrap(), vec![admin.clone()]);
        assert!(matches!(
            store.delete_token(admin.id, &op(), T0).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.tokens().await.unwrap(), vec![admin]);
        assert!(matches!(
            store.delete_token(token.id, &op(), T0).await,
            Err(StoreError::NotFound)
        ));
    }

    pub async fn schemas_are_versioned_and_audited(h: &dyn Harness) {
        let store = h.open().await;
        let v1 = Json::from_value(&serde_json::json!({"type": "object"}));
        let v2 = Json::from_value(&serde_json::json!({"type": "object", "required": ["email"]}));
        assert_eq!(
            store
                .put_schema("email.send", v1, &op(), T0)
                .await
                .unwrap()
                .version,
            1
        );
        let second = store
            .put_schema("email.send", v2.clone(), &op(), T0.plus_ms(5))
            .await
            .unwrap();
        assert_eq!((second.version, second.updated_at), (2, T0.plus_ms(5)));
        let all = store.schemas().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].schema, v2);
        store.delete_schema("email.send", &op(), T0).await.unwrap();
        assert!(store.schemas().await.unwrap().is_empty());
        assert!(matches!(
            store.delete_schema("email.send", &op(), T0).await,
            Err(StoreError::NotFound)
        ));
        let actions: Vec<String> = store
            .audit_log(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["schema.deleted", "schema.put", "schema.put"]);
    }

    pub async fn admin_changes_are_audited_with_their_actor(h: &dyn Harness) {
        let store = h.open().await;
        store.enqueue(vec![job("q")], T0).await.unwrap();
        store
            .configure_queue(
                "q",
                QueueOverrides {
                    concurrency: Some(3),
                    ..Default::default()
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        store.set_paused("q", true, &op(), T0).await.unwrap();
        store
            .set_paused("q", false, &Actor::system("cli"), T0)
            .await
            .unwrap();
        store
            .purge("q", State::Available, &op(), T0.plus_ms(1))
            .await
            .unwrap();
        // A refused change records nothing.
        assert!(store.set_paused("nope", true, &op(), T0).await.is_err());
        let log = store.audit_log(None, 100).await.unwrap();
        let got: Vec<(&str, &str, Option<uuid::Uuid>)> = log
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str(), e.actor.token_id))
            .collect();
        let me = op().token_id;
        assert_eq!(
            got,
            [
                ("queue.purged", "q", me),
                ("queue.resumed", "q", None),
                ("queue.paused", "q", me),
                ("queue.configured", "q", me),
            ]
        );
        assert_eq!(log[0].data["purged"], 1);
        assert_eq!(log[0].at, T0.plus_ms(1));
        assert_eq!(log[3].data["concurrency"], 3);
        // Pages continue below the last seq seen.
        let page = store.audit_log(Some(log[1].seq), 100).await.unwrap();
        assert_eq!(page, log[2..].to_vec());
    }

    pub async fn scoped_commands_and_lists_never_reach_other_queues(h: &dyn Harness) {
        let store = h.open().await;
        let mine = store
            .enqueue(vec![job("billing.invoices")], T0)
            .await
            .unwrap()[0]
            .job
            .id;
        let theirs = store.enqueue(vec![job("hr.payroll")], T0).await.unwrap()[0]
            .job
            .id;
        let scope = Scope::from_patterns(Some(vec!["billing.*".into()]));
        let page = store
            .list_jobs(JobFilter {
                limit: 10,
                scope: scope.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [mine]);
        // Two patterns: either may match.
        let both = Scope::from_patterns(Some(vec!["nothing".into(), "hr.*".into()]));
        let page = store
            .list_jobs(JobFilter {
                limit: 10,
                scope: both,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [theirs]);
        // Commands on a job outside the scope behave as if it did not exist, and change nothing.
        assert!(matches!(
            store.cancel(theirs, scope.clone(), T0).await,
            Err(StoreError::NotFound)
        ));
        let leased = store
            .lease(lease_req(&["hr.payroll"], 1), T0)
            .await
            .unwrap()
            .remove(0);
        assert!(matches!(
            store
                .heartbeat(theirs, leased.token.clone(), 1_000, scope.clone(), T0)
                .await,
            Err(StoreError::NotFound)
        ));
        let results = store
            .record_outcomes(vec![complete(theirs, &leased.token)], scope.clone(), T0)
            .await
            .unwrap();
        assert!(matches!(results[0], Err(StoreError::NotFound)));
        assert_eq!(
            store.get_job(theirs).await.unwrap().unwrap().state,
            State::Running
        );
        store.cancel(mine, scope, T0).await.unwrap();
        assert_eq!(
            store.get_job(mine).await.unwrap().unwrap().state,
            State::Cancelled
        );
    }

    /// The jobs of `queue`, oldest first.
    async fn jobs_of(store: &dyn Store, queue: &str) -> Vec<keel_core::Job> {
        let page = store
            .list_jobs(JobFilter {
                queue: Some(queue.to_owned()),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut jobs = page.jobs;
        jobs.reverse();
        jobs
    }

    const MIN: i64 = 60_000;

    pub async fn schedule_fires_each_tick_once_due_at_the_tick(h: &dyn Harness) {
        let store = h.open().await;
        // T0 is 07:00 in Berlin; created an hour before, the first tick is T0.
        let before = T0.plus_ms(-60 * MIN);
        let s = store
            .put_schedule(
                "daily",
                schedule_spec("reports", Some("0 7 * * *"), CatchUp::One),
                None,
                &op(),
                before,
            )
            .await
            .unwrap();
        assert_eq!(
            (s.next_run_at, s.last_tick_at, s.paused),
            (Some(T0), None, false)
        );
        assert!(s.runs.is_empty());
        // The store reports the tick as due, so a timer loop wakes for it.
        let tick = store.tick(before).await.unwrap();
        assert!(tick.next_due.is_some_and(|t| t <= T0), "{tick:?}");
        assert!(jobs_of(&*store, "reports").await.is_empty());
        store.tick(T0.plus_ms(-1)).await.unwrap();
        assert!(jobs_of(&*store, "reports").await.is_empty(), "fired early");

        store.tick(T0.plus_ms(3)).await.unwrap();
        store.tick(T0.plus_ms(4)).await.unwrap();
        let jobs = jobs_of(&*store, "reports").await;
        assert_eq!(jobs.len(), 1, "one tick, one job");
        assert_eq!((jobs[0].run_at, jobs[0].state), (T0, State::Available));
        assert_eq!(
            jobs[0].idempotency_key.as_deref(),
            Some("schedule:daily:2026-11-23T06:00:00.000Z")
        );
        assert_eq!(jobs[0].kind, "test.kind");
        let s = store.schedule("daily").await.unwrap().unwrap();
        let next_day = T0.plus_ms(24 * 60 * MIN);
        assert_eq!((s.next_run_at, s.last_tick_at), (Some(next_day), Some(T0)));
        assert_eq!(s.runs.len(), 1);
        assert_eq!(
            (
                s.runs[0].tick_at,
                s.runs[0].fired_at,
                s.runs[0].outcome,
                s.runs[0].job_id
            ),
            (T0, T0.plus_ms(3), RunOutcome::Enqueued, Some(jobs[0].id))
        );
        store.tick(next_day).await.unwrap();
        assert_eq!(jobs_of(&*store, "reports").await.len(), 2);
        let s = store.schedule("daily").await.unwrap().unwrap();
        assert_eq!(s.runs[0].tick_at, next_day, "newest run first");
        assert_eq!(store.schedules().await.unwrap().len(), 1);
        assert!(store.schedule("other").await.unwrap().is_none());
    }

    pub async fn schedule_never_fires_a_tick_twice_across_restarts_clock_jumps_and_rivals(
        h: &dyn Harness,
    ) {
        let store = h.open().await;
        store
            .put_schedule(
                "minutely",
                schedule_spec("q", None, CatchUp::All),
                None,
                &op(),
                T0.plus_ms(-30_000),
            )
            .await
            .unwrap();
        // Fired at the tick instant, then the process stops and restarts at the same instant.
        store.tick(T0).await.unwrap();
        assert_eq!(jobs_of(&*store, "q").await.len(), 1);
        store.close().await.unwrap();
        let store = h.open().await;
        store.tick(T0).await.unwrap();
        assert_eq!(
            jobs_of(&*store, "q").await.len(),
            1,
            "restart re-fired the tick"
        );

        // The clock jumps ahead two minutes, then back one: only new ticks fire.
        store.tick(T0.plus_ms(2 * MIN)).await.unwrap();
        assert_eq!(jobs_of(&*store, "q").await.len(), 3);
        store.tick(T0.plus_ms(MIN)).await.unwrap();
        store.tick(T0.plus_ms(2 * MIN + 1)).await.unwrap();
        let jobs = jobs_of(&*store, "q").await;
        let run_ats: Vec<Time> = jobs.iter().map(|j| j.run_at).collect();
        assert_eq!(run_ats, [T0, T0.plus_ms(MIN), T0.plus_ms(2 * MIN)]);

        // Another node (or an earlier life) already enqueued the next tick under its key: the
        // firing finds the key taken and enqueues nothing more.
        let tick = T0.plus_ms(3 * MIN);
        let rival = schedule_spec("q", None, CatchUp::All)
            .job
            .job_at("minutely", tick);
        let rival_id = store.enqueue(vec![rival], tick.plus_ms(-5)).await.unwrap()[0]
            .job
            .id;
        store.tick(tick.plus_ms(1)).await.unwrap();
        assert_eq!(jobs_of(&*store, "q").await.len(), 4);
        let s = store.schedule("minutely").await.unwrap().unwrap();
        assert_eq!(
            (s.runs[0].tick_at, s.runs[0].outcome, s.runs[0].job_id),
            (tick, RunOutcome::Duplicate, Some(rival_id))
        );
        assert_eq!(s.last_tick_at, Some(tick));
        assert!(store.verify().await.unwrap().mismatched.is_empty());
    }

    pub async fn schedule_catch_up_after_downtime_follows_its_mode(h: &dyn Harness) {
        let store = h.open().await;
        // `none` ticks every 5 minutes, so a missed tick is later than its 60 s grace.
        for (name, cron, mode) in [
            ("none", Some("*/5 * * * *"), CatchUp::None),
            ("one", None, CatchUp::One),
            ("all", None, CatchUp::All),
        ] {
            store
                .put_schedule(
                    name,
                    schedule_spec(name, cron, mode),
                    None,
                    &op(),
                    T0.plus_ms(-1),
                )
                .await
                .unwrap();
        }
        store.tick(T0).await.unwrap();
        store.close().await.unwrap();
        // Down for twelve and a half minutes.
        let back = T0.plus_ms(12 * MIN + 30_000);
        let store = h.open().await;
        store.tick(back).await.unwrap();
        let run_ats = |jobs: Vec<keel_core::Job>| -> Vec<i64> {
            jobs.iter()
                .map(|j| j.run_at.millis_since(T0) / MIN)
                .collect()
        };
        assert_eq!(
            run_ats(jobs_of(&*store, "none").await),
            [0],
            "none runs no missed tick"
        );
        assert_eq!(
            run_ats(jobs_of(&*store, "one").await),
            [0, 12],
            "one runs the latest"
        );
        assert_eq!(
            run_ats(jobs_of(&*store, "all").await),
            (0..=12).collect::<Vec<_>>(),
            "all runs every missed tick in order"
        );
        let none = store.schedule("none").await.unwrap().unwrap();
        assert_eq!(
            (
                none.runs[0].outcome,
                none.runs[0].tick_at,
                none.runs[0].skipped_until
            ),
            (
                RunOutcome::Skipped,
                T0.plus_ms(5 * MIN),
                Some(T0.plus_ms(10 * MIN))
            )
        );
        assert_eq!(none.next_run_at, Some(T0.plus_ms(15 * MIN)));
        let one = store.schedule("one").await.unwrap().unwrap();
        assert_eq!(
            one.runs
                .iter()
                .map(|r| (r.outcome, r.tick_at))
                .collect::<Vec<_>>(),
            [
                (RunOutcome::Enqueued, T0.plus_ms(12 * MIN)),
                (RunOutcome::Skipped, T0.plus_ms(MIN)),
                (RunOutcome::Enqueued, T0),
            ]
        );
        assert_eq!(one.runs[1].skipped_until, Some(T0.plus_ms(11 * MIN)));
        for name in ["one", "all"] {
            let s = store.schedule(name).await.unwrap().unwrap();
            assert_eq!(s.next_run_at, Some(T0.plus_ms(13 * MIN)), "{name}");
        }
        // `none` still runs a tick fired only a little late (20 s: a restart, a busy machine).
        store.tick(T0.plus_ms(15 * MIN + 20_000)).await.unwrap();
        assert_eq!(run_ats(jobs_of(&*store, "none").await), [0, 15]);
        // The audit log holds the puts only: firing is not an admin change.
        assert_eq!(store.audit_log(None, 100).await.unwrap().len(), 3);
    }

    pub async fn schedule_pause_update_delete_are_audited_and_keep_the_clock(h: &dyn Harness) {
        let store = h.open().await;
        let spec = schedule_spec("q", None, CatchUp::All);
        store
            .put_schedule("s", spec.clone(), None, &op(), T0.plus_ms(-1))
            .await
            .unwrap();
        store.tick(T0).await.unwrap();
        let paused = store
            .set_schedule_paused("s", true, &op(), T0.plus_ms(1))
            .await
            .unwrap();
        assert!(paused.paused);
        assert_eq!(paused.next_run_at, None);
        // Paused through five ticks: nothing fires, and resuming does not catch them up.
        store.tick(T0.plus_ms(5 * MIN + 10)).await.unwrap();
        assert_eq!(jobs_of(&*store, "q").await.len(), 1);
        let resumed = store
            .set_schedule_paused("s", false, &op(), T0.plus_ms(5 * MIN + 20))
            .await
            .unwrap();
        assert_eq!(resumed.next_run_at, Some(T0.plus_ms(6 * MIN)));
        store.tick(T0.plus_ms(6 * MIN)).await.unwrap();
        assert_eq!(jobs_of(&*store, "q").await.len(), 2);

        // An update that lands while a tick is due but not yet fired keeps that tick; the
        // replaced template applies to it.
        let mut changed = spec.clone();
        changed.job.priority = 7;
        let updated = store
            .put_schedule("s", changed, None, &op(), T0.plus_ms(7 * MIN + 2))
            .await
            .unwrap();
        assert_eq!(updated.next_run_at, Some(T0.plus_ms(7 * MIN)));
        assert_eq!(updated.created_at, T0.plus_ms(-1));
        store.tick(T0.plus_ms(7 * MIN + 3)).await.unwrap();
        let jobs = jobs_of(&*store, "q").await;
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[2].priority, 7);

        store
            .delete_schedule("s", &op(), T0.plus_ms(8 * MIN))
            .await
            .unwrap();
        assert!(matches!(
            store.delete_schedule("s", &op(), T0.plus_ms(8 * MIN)).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            store.set_schedule_paused("s", true, &op(), T0).await,
            Err(StoreError::NotFound)
        ));
        store.tick(T0.plus_ms(20 * MIN)).await.unwrap();
        assert_eq!(
            jobs_of(&*store, "q").await.len(),
            3,
            "deleted schedules stop; jobs stay"
        );
        assert!(store.schedules().await.unwrap().is_empty());
        let actions: Vec<String> = store
            .audit_log(None, 100)
            .await
            .unwrap()
            .into_iter()
            .rev()
            .map(|e| format!("{} {}", e.action, e.target))
            .collect();
        assert_eq!(
            actions,
            [
                "schedule.created s",
                "schedule.paused s",
                "schedule.resumed s",
                "schedule.updated s",
                "schedule.deleted s"
            ]
        );
    }

    pub async fn rate_limit_paces_hand_outs_and_wakes_waiters_when_a_token_is_due(h: &dyn Harness) {
        let store = h.open().await;
        let limit = keel_core::RateLimit {
            per_second: 2.0,
            burst: 2,
        };
        store
            .configure_queue(
                "paced",
                QueueOverrides {
                    rate_limit: Some(limit),
                    ..Default::default()
                },
                &op(),
                T0,
            )
            .await
            .unwrap();
        store
            .enqueue((0..6).map(|_| job("paced")).collect(), T0)
            .await
            .unwrap();
        assert_eq!(
            store
                .lease(lease_req(&["paced"], 10), T0)
                .await
                .unwrap()
                .len(),
            2,
            "the burst"
        );
        assert!(
            store
                .lease(lease_req(&["paced"], 10), T0)
                .await
                .unwrap()
                .is_empty()
        );
        // The store knows when the next token is due, and wakes waiters then.
        let due = store.tick(T0).await.unwrap().next_due.unwrap();
        assert!(due <= T0.plus_ms(500), "{due:?}");
        let mut wake = store.subscribe();
        wake.borrow_and_update();
        assert!(
            store
                .lease(lease_req(&["paced"], 10), T0.plus_ms(499))
                .await
                .unwrap()
                .is_empty()
        );
        store.tick(T0.plus_ms(500)).await.unwrap();
        // (The writer signals right after answering, so wait for it rather than peek.)
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), wake.changed()).await;
        assert!(
            matches!(woken, Ok(Ok(()))),
            "a token came due and nobody was woken"
        );
        assert_eq!(
            store
                .lease(lease_req(&["paced"], 10), T0.plus_ms(500))
                .await
                .unwrap()
                .len(),
            1
        );
        // A long idle refills up to the burst only.
        assert_eq!(
            store
                .lease(lease_req(&["paced"], 10), T0.plus_ms(60_000))
                .await
                .unwrap()
                .len(),
            2
        );
        // Other queues are not limited.
        store
            .enqueue((0..5).map(|_| job("free")).collect(), T0)
            .await
            .unwrap();
        assert_eq!(
            store
                .lease(lease_req(&["free"], 10), T0)
                .await
                .unwrap()
                .len(),
            5
        );
    }

    /// Every change's events reach the log once, in order, with their own job and type, however
    /// many a request writes (SQLite inserts them in multi-row statements of 64, 16, 4 and 1;
    /// these batch sizes cross each of those boundaries).
    pub async fn events_are_written_once_each_in_the_order_they_happened(h: &dyn Harness) {
        let store = h.open().await;
        let mut enqueued = vec![];
        for size in [1, 3, 4, 5, 17, 63, 64, 65, 150] {
            let out = store
                .enqueue((0..size).map(|_| job("q")).collect(), T0)
                .await
                .unwrap();
            enqueued.extend(out.into_iter().map(|e| e.job.id));
        }
        let leased: Vec<_> = store
            .lease(lease_req(&["q"], 1_000), T0)
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.job.id, l.token))
            .collect();
        assert_eq!(leased.len(), enqueued.len());
        let completed: Vec<_> = leased.iter().rev().take(77).cloned().collect();
        let answers = store
            .record_outcomes(
                completed.iter().map(|(id, t)| complete(*id, t)).collect(),
                Scope::All,
                T0,
            )
            .await
            .unwrap();
        assert!(answers.iter().all(|a| a.is_ok()));

        let events = store.export_events(0, 10_000).await.unwrap();
        let of_type = |t: &str| -> Vec<uuid::Uuid> {
            events
                .iter()
                .filter(|e| e.data.type_name() == t)
                .map(|e| e.job_id)
                .collect()
        };
        assert_eq!(of_type("enqueued"), enqueued, "enqueued events, in order");
        let leased_ids: Vec<_> = leased.iter().map(|(id, _)| *id).collect();
        assert_eq!(of_type("leased"), leased_ids, "leased events, in order");
        let completed_ids: Vec<_> = completed.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            of_type("completed"),
            completed_ids,
            "completed events, in order"
        );
        assert_eq!(events.len(), enqueued.len() * 2 + completed.len());
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
        let report = store.verify().await.unwrap();
        assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
    }

    pub async fn import_takes_jobs_and_events_as_they_were(h: &dyn Harness) {
        let store = h.open().await;
        let config = keel_core::QueueConfig::default();
        let earlier = T0.plus_ms(-60_000);
        // As another store would export them: an available job, and a running one with its lease.
        let waiting = job("moved").into_job(uuid::Uuid::now_v7(), &config, earlier);
        let running = job("moved").into_job(uuid::Uuid::now_v7(), &config, earlier);
        let enqueued = |j: &keel_core::Job| keel_core::Event {
            seq: 0,
            job_id: j.id,
            at: earlier,
            data: keel_core::EventData::Enqueued {
                job: Box::new(j.clone()),
            },
        };
        let lease = keel_core::Command::Lease {
            token_hash: keel_core::lease::token_hash("the-token"),
            lease_ms: 120_000,
            worker: Some("w".into()),
        };
        let (leased, lease_events) = keel_core::step(&running, &lease, earlier).unwrap();
        let leased = leased.unwrap();
        let mut events = vec![enqueued(&waiting), enqueued(&running)];
        events.extend(lease_events.into_iter().map(|data| keel_core::Event {
            seq: 0,
            job_id: running.id,
            at: earlier,
            data,
        }));
        store
            .import(vec![waiting.clone(), leased.clone()], events, T0)
            .await
            .unwrap();

        assert_eq!(store.get_job(waiting.id).await.unwrap().unwrap(), waiting);
        assert_eq!(store.get_job(leased.id).await.unwrap().unwrap(), leased);
        let history = store.job_events(leased.id).await.unwrap().unwrap();
        assert_eq!(
            history
                .iter()
                .map(|e| (e.data.type_name(), e.at))
                .collect::<Vec<_>>(),
            [("enqueued", earlier), ("leased", earlier)]
        );
        assert!(store.verify().await.unwrap().mismatched.is_empty());
        // The imported lease is live: its token completes the job and its expiry is a timer.
        assert_eq!(
            store
                .queue("moved", T0)
                .await
                .unwrap()
                .unwrap()
                .counts
                .running,
            1
        );
        let tick = store.tick(T0).await.unwrap();
        assert!(tick.next_due.unwrap() <= earlier.plus_ms(120_000));
        // The waiting job is leasable; the running one is not handed out twice.
        let got = store.lease(lease_req(&["moved"], 10), T0).await.unwrap();
        assert_eq!(
            got.iter().map(|l| l.job.id).collect::<Vec<_>>(),
            [waiting.id]
        );
        one(&*store, complete(leased.id, "the-token"), T0)
            .await
            .unwrap();
        // Ids made after an import sort after the imported ones.
        let next = store.enqueue(vec![job("moved")], earlier).await.unwrap();
        assert!(next[0].job.id > leased.id);
        // Importing a job that exists writes nothing.
        let again = store
            .import(
                vec![
                    waiting.clone(),
                    job("x").into_job(uuid::Uuid::now_v7(), &config, T0),
                ],
                vec![],
                T0,
            )
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        assert!(
            store
                .queue("x", T0)
                .await
                .unwrap()
                .is_none_or(|q| q.counts == crate::Counts::default())
        );
        // Nor does importing a job whose finish time disagrees with its state: the stores find
        // finished jobs by it.
        for (state, finished_at) in [(State::Completed, None), (State::Available, Some(T0))] {
            let mut odd = job("y").into_job(uuid::Uuid::now_v7(), &config, T0);
            (odd.state, odd.finished_at) = (state, finished_at);
            let refused = store.import(vec![odd.clone()], vec![], T0).await;
            assert!(
                matches!(refused, Err(StoreError::Conflict(_))),
                "{refused:?}"
            );
            assert!(store.get_job(odd.id).await.unwrap().is_none());
        }
    }
}
