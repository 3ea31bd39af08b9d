//! Two PostgreSQL stores on one schema are two keel nodes: what one does, the other sees.
//! Needs `KEEL_TEST_DATABASE_URL`; without it each test says it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use keel_core::{QueueOverrides, Scope};
use keel_store::testing::{PgHarness, T0, complete, job, lease_req, op};
use keel_store::{PgStore, Store};

async fn two_nodes() -> Option<(PgHarness, Arc<PgStore>, Arc<PgStore>)> {
    let pg = PgHarness::new().await?;
    let a = Arc::new(PgStore::open(pg.config(), T0).await.unwrap());
    let b = Arc::new(PgStore::open(pg.config(), T0).await.unwrap());
    Some((pg, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_on_one_node_wakes_long_polls_on_the_other() {
    let Some((_pg, a, b)) = two_nodes().await else {
        return;
    };
    let mut wake = b.subscribe();
    // The listener connects in the background; give it its first notification's worth of time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    wake.borrow_and_update();
    a.enqueue(vec![job("cross")], T0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wake.changed())
        .await
        .expect("node B was not woken by node A's enqueue")
        .unwrap();
    assert_eq!(
        b.lease(lease_req(&["cross"], 10), T0).await.unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_node_stops_hand_outs_on_the_other() {
    let Some((_pg, a, b)) = two_nodes().await else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.enqueue((0..50).map(|_| job("p")).collect(), T0)
        .await
        .unwrap();
    // B reads (and caches) the queue's settings while it runs.
    assert_eq!(b.lease(lease_req(&["p"], 1), T0).await.unwrap().len(), 1);
    a.set_paused("p", true, &op(), T0).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if b.lease(lease_req(&["p"], 1), T0).await.unwrap().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node B kept handing out a paused queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it stays stopped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(b.lease(lease_req(&["p"], 10), T0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_nodes() {
    let Some((_pg, a, b)) = two_nodes().await else {
        return;
    };
    let limit = QueueOverrides {
        concurrency: Some(3),
        ..Default::default()
    };
    a.configure_queue("limited", limit, &op(), T0)
        .await
        .unwrap();
    a.enqueue((0..40).map(|_| job("limited")).collect(), T0)
        .await
        .unwrap();
    let running = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = vec![];
    for node in [a.clone(), b.clone(), a.clone(), b.clone()] {
        let (running, peak) = (running.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            for _ in 0..400 {
                let got = node.lease(lease_req(&["limited"], 3), T0).await.unwrap();
                if got.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                let now = running.fetch_add(got.len() as i64, std::sync::atomic::Ordering::SeqCst)
                    + got.len() as i64;
                peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                // Count down before the completion commits: a lease can follow it at once.
                running.fetch_sub(got.len() as i64, std::sync::atomic::Ordering::SeqCst);
                let outcomes = got.iter().map(|l| complete(l.job.id, &l.token)).collect();
                node.record_outcomes(outcomes, Scope::All, T0)
                    .await
                    .unwrap();
                done += got.len();
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 40, "every job ran");
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak <= 3, "{peak} jobs ran at once on a queue limited to 3");
}
