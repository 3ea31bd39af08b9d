//! The client and the worker runtime against a real `keel serve` process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keel_client::worker::{HandlerError, JobContext, Worker};
use keel_client::{Backoff, Client, EnqueueRequest, JobFilter, ProblemKind, State};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

mod common;
use common::Keel;

#[derive(Serialize, Deserialize)]
struct Email {
    to: String,
}

fn email(queue: &str, kind: &str, to: &str) -> EnqueueRequest {
    EnqueueRequest::with_payload(queue, kind, &Email { to: to.into() })
        .unwrap()
        .backoff(Backoff {
            initial_ms: 10,
            max_ms: 20,
            jitter: 0.0,
        })
}

/// Polls until the job reaches one of `states`.
async fn wait_for(client: &Client, id: uuid::Uuid, states: &[State]) -> keel_client::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let job = client.get_job(id).await.unwrap();
        if states.contains(&job.state) {
            return job;
        }
        if tokio::time::Instant::now() >= deadline {
            let events: Vec<String> = client
                .job_events(id)
                .await
                .unwrap()
                .iter()
                .map(|e| format!("{} {}", e.kind, e.data))
                .collect();
            panic!(
                "job {id} ({}) stuck in {}; last error {:?}; events {events:#?}",
                job.kind, job.state, job.last_error
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_handlers_and_reports_every_kind_of_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let client = keel.client();
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let flaky = flaky_calls.clone();
    let worker = Worker::new(client.clone(), &["mail"])
        .concurrency(4)
        .poll_wait(Duration::from_millis(500))
        .handle("ok", |ctx: JobContext<Email>| async move {
            Ok(json!({"sent_to": ctx.payload.to}))
        })
        .handle("fatal", |_: JobContext<Email>| async {
            Err::<(), _>(HandlerError::fatal("mailbox does not exist"))
        })
        .handle("panics", |_: JobContext<Email>| async {
            if true { panic!("boom") } else { Ok(()) }
        })
        .handle("io", |_: JobContext<Email>| async {
            // Any std error converts with `?` as a retryable failure.
            std::fs::read("/definitely/not/here")?;
            Ok(())
        })
        .handle("flaky", move |_: JobContext<Email>| {
            let n = flaky.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(HandlerError::retryable("try again").retry_in(Duration::from_millis(50)))
                } else {
                    Ok(())
                }
            }
        })
        .handle("typed", |ctx: JobContext<Email>| async move {
            Ok(ctx.payload.to.len())
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));

    let ok = client
        .enqueue(email("mail", "ok", "ada@example.com"))
        .await
        .unwrap()
        .job
        .id;
    let fatal = client
        .enqueue(email("mail", "fatal", "nobody@invalid"))
        .await
        .unwrap()
        .job
        .id;
    let panics = client
        .enqueue(email("mail", "panics", "p@example.com").max_attempts(1))
        .await
        .unwrap()
        .job
        .id;
    let io = client
        .enqueue(email("mail", "io", "i@example.com").max_attempts(2))
        .await
        .unwrap()
        .job
        .id;
    let flaky = client
        .enqueue(email("mail", "flaky", "f@example.com"))
        .await
        .unwrap()
        .job
        .id;
    let unknown = client
        .enqueue(email("mail", "nobody-handles-this", "u@example.com").max_attempts(1))
        .await
        .unwrap()
        .job
        .id;
    let bad_payload = client
        .enqueue(EnqueueRequest::new("mail", "typed", json!({"wrong": 1})))
        .await
        .unwrap()
        .job
        .id;

    let job = wait_for(&client, ok, &[State::Completed]).await;
    assert_eq!(
        job.result.unwrap().get(),
        r#"{"sent_to":"ada@example.com"}"#
    );
    let job = wait_for(&client, fatal, &[State::Dead]).await;
    assert_eq!(
        (job.attempt, job.last_error.unwrap().message.as_str()),
        (1, "mailbox does not exist")
    );
    let job = wait_for(&client, panics, &[State::Dead]).await;
    let err = job.last_error.unwrap();
    assert_eq!(
        (err.message.as_str(), err.kind.as_deref()),
        ("handler panicked: boom", Some("Panic"))
    );
    let job = wait_for(&client, io, &[State::Dead]).await;
    assert_eq!(job.attempt, 2, "an io::Error is retryable");
    let job = wait_for(&client, flaky, &[State::Completed]).await;
    assert_eq!(job.attempt, 2);
    let job = wait_for(&client, unknown, &[State::Dead]).await;
    assert_eq!(job.last_error.unwrap().kind.as_deref(), Some("NoHandler"));
    let job = wait_for(&client, bad_payload, &[State::Dead]).await;
    assert_eq!(
        (job.attempt, job.last_error.unwrap().kind.as_deref()),
        (1, Some("PayloadMismatch"))
    );

    stop.send(()).unwrap();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.completed, 2);
    assert_eq!(report.released, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_alive_and_a_stuck_one_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let client = keel.client();
    // A 1 s lease is heartbeaten after 667 ms: the long job (3 s) needs several beats, and the
    // stuck job's 400 ms time-out is reported 600 ms before its lease could expire, so a loaded
    // machine does not turn the worker's `Timeout` into a `lease_expired`.
    let worker = Worker::new(client.clone(), &["slow"])
        .lease(Duration::from_millis(1_000))
        .poll_wait(Duration::from_millis(500))
        .handle("long", |_: JobContext<Email>| async {
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            Ok(())
        })
        .handle("stuck", |_: JobContext<Email>| async {
            std::future::pending::<()>().await;
            Ok(())
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let long = client
        .enqueue(email("slow", "long", "a@example.com"))
        .await
        .unwrap()
        .job
        .id;
    let stuck = client
        .enqueue(
            email("slow", "stuck", "b@example.com")
                .timeout(Duration::from_millis(400))
                .max_attempts(1),
        )
        .await
        .unwrap()
        .job
        .id;
    let job = wait_for(&client, long, &[State::Completed]).await;
    assert_eq!(
        job.attempt, 1,
        "heartbeats kept the 1 s lease alive for 3 s"
    );
    let beats = client
        .job_events(long)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "heartbeat")
        .count();
    assert!(beats >= 3, "heartbeated {beats} times");
    let job = wait_for(&client, stuck, &[State::Dead]).await;
    assert_eq!(job.last_error.unwrap().kind.as_deref(), Some("Timeout"));
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_fails_unfinished_jobs_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let client = keel.client();
    let (started_tx, started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let worker = Worker::new(client.clone(), &["q"])
        .grace(Duration::from_millis(300))
        .poll_wait(Duration::from_millis(500))
        .lease(Duration::from_secs(60))
        .handle("quick", |_: JobContext<Email>| async { Ok(()) })
        .handle("endless", move |_: JobContext<Email>| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(())
            }
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let endless = client
        .enqueue(email("q", "endless", "e@example.com"))
        .await
        .unwrap()
        .job
        .id;
    let mut started_rx = started_rx;
    tokio::time::timeout(Duration::from_secs(20), started_rx.recv())
        .await
        .expect("the job started")
        .unwrap();
    stop.send(()).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.released, 1);
    // Released at once (the lease was 60 s): a new attempt can start right away.
    let job = client.get_job(endless).await.unwrap();
    assert_eq!(job.state, State::Available, "{job:?}");
    assert_eq!(
        job.last_error.unwrap().kind.as_deref(),
        Some("WorkerShutdown")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_retries_through_a_crash_and_restart_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let addr = keel.addr.clone();
    let client = keel.client();
    let mut tasks = vec![];
    for t in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = vec![];
            for i in 0..40 {
                let req = EnqueueRequest::new("crash", "k", json!({"t": t, "i": i}));
                ids.push(
                    client
                        .enqueue(req)
                        .await
                        .expect("the client rides through the restart")
                        .job
                        .id,
                );
            }
            ids
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    keel.kill_9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keel = Keel::start_on(dir.path(), &addr);
    let mut ids = vec![];
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 320, "every call got its own job");
    let mut listed = 0;
    let mut pager = client.jobs(JobFilter {
        queue: Some("crash".into()),
        limit: Some(100),
        ..Default::default()
    });
    while let Some(job) = pager.next().await {
        assert!(
            unique.contains(&job.unwrap().id),
            "a job nobody was told about: a duplicate"
        );
        listed += 1;
    }
    assert_eq!(listed, 320, "no duplicates, nothing lost");
    drop(keel);
}

#[tokio::test]
async fn problems_come_back_as_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path());
    let client = keel.client();
    let err = client.get_job(uuid::Uuid::now_v7()).await.unwrap_err();
    assert!(err.is(ProblemKind::NotFound), "{err}");
    let err = client
        .enqueue(EnqueueRequest::new("bad queue", "k", json!(1)))
        .await
        .unwrap_err();
    assert!(err.is(ProblemKind::ValidationFailed));
    let keel_client::Error::Problem(p) = err else {
        panic!()
    };
    assert_eq!(p.errors[0].pointer, "/queue");
    let unreachable = Client::builder("http://127.0.0.1:9")
        .retry(keel_client::RetryPolicy::none())
        .build()
        .unwrap();
    assert!(matches!(
        unreachable.queues().await,
        Err(keel_client::Error::Transport { .. })
    ));
    assert!(
        Client::new("localhost:8470").is_err(),
        "a URL without scheme is refused"
    );
}
