//! The listener: one connection of its own (not pooled) that `LISTEN`s on the schema's channel
//! and turns notifications into wake-ups. It reconnects by itself (with backoff) when the
//! connection drops; after a reconnect it wakes everyone and forgets the cached due time,
//! since notifications sent meanwhile are lost.
//!
//! The notifier (`notify`) sends what this node's commits announced (`Shared::publish`), one
//! `NOTIFY` at a time on a pooled connection, after those commits: announcements made while one
//! is in flight are merged into the next. A node that dies between a commit and its
//! notification leaves other nodes' long polls to find the work at their next lease attempt
//! (at the latest when their wait ends) and their timers at their next database read (≤ 2 s).
//!
//! Payloads: parts separated by commas: `w` (work became leasable),
//! `d<millis>` (something is due at that time), `c` (a queue's settings changed: forget the
//! cached ones). Anything else is ignored.

use std::sync::Arc;
use std::time::Duration;

use keel_core::Time;
use tokio_postgres::{AsyncMessage, NoTls};

use super::Shared;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) async fn run(config: tokio_postgres::Config, shared: Arc<Shared>) {
    let mut backoff = RETRY_MIN;
    loop {
        match listen_once(&config, &shared).await {
            Ok(()) => backoff = RETRY_MIN,
            Err(e) => {
                tracing::warn!(message = "PostgreSQL listener lost; reconnecting.", error = %e, retry_in_ms = backoff.as_millis() as u64);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_MAX);
    }
}

/// Connects, listens and handles notifications until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    shared: &Shared,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(message = "PostgreSQL listener connection ended.", error = %e);
                    break;
                }
                None => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", shared.channel))
        .await?;
    // Anything sent while we were not listening is lost: look again now.
    shared.forget_due();
    while let Some(payload) = rx.recv().await {
        handle(shared, &payload);
    }
    driver.abort();
    Ok(())
}

fn handle(shared: &Shared, payload: &str) {
    for part in payload.split(',') {
        if part == "w" {
            shared.wake();
        } else if part == "c" {
            shared.forget_queues();
            shared.wake();
        } else if let Some(ms) = part.strip_prefix('d').and_then(|m| m.parse::<i64>().ok()) {
            shared.hint_due(Time::from_millis(ms));
        }
    }
}

/// Sends this node's announcements to the others, merged, one `NOTIFY` at a time.
pub(super) async fn notify(pool: deadpool_postgres::Pool, shared: Arc<Shared>) {
    let mut backoff = RETRY_MIN;
    loop {
        shared.announced.notified().await;
        let Some(payload) = shared.take_announcements() else {
            continue;
        };
        let sent = async {
            let c = pool.get().await.map_err(|e| e.to_string())?;
            c.execute("SELECT pg_notify($1, $2)", &[&shared.channel, &payload])
                .await
                .map_err(|e| e.to_string())
        };
        match sent.await {
            Ok(_) => backoff = RETRY_MIN,
            Err(e) => {
                tracing::warn!(message = "Could not notify the other nodes; will retry.", error = %e, retry_in_ms = backoff.as_millis() as u64);
                shared.requeue_announcement(&payload);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The payload announcing a transaction's effects, if it had any.
pub(super) fn payload(wake: bool, due: Option<Time>, queues_changed: bool) -> Option<String> {
    let mut parts = Vec::new();
    if wake {
        parts.push("w".to_owned());
    }
    if let Some(d) = due {
        parts.push(format!("d{}", d.as_millis()));
    }
    if queues_changed {
        parts.push("c".to_owned());
    }
    (!parts.is_empty()).then(|| parts.join(","))
}
