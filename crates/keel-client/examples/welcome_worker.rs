//! The worker half of the sign-up example: sends welcome emails into a local fake mail sink
//! (a directory of `.eml` files, like Django's file-based email backend).
//!
//! - `email.welcome` fails transiently about a third of the time ("421 try again later", as a
//!   busy SMTP server would); keel retries it with backoff until it goes through.
//! - `email.verify` fails permanently for addresses at `invalid`; those jobs go to `dead`, where
//!   `keel dead ls` shows them and `keel dead replay emails` would retry them.
//!
//! Run (with `keel serve` running): `cargo run -p keel-client --example welcome_worker`
//! Stop with ctrl-c or SIGTERM: running jobs finish (or are handed back), then it exits.

use std::path::PathBuf;
use std::time::Duration;

use keel_client::worker::{HandlerError, JobContext, Worker};
use keel_client::{Client, QueuePatch};
use serde::Deserialize;

#[derive(Deserialize)]
struct Welcome {
    user_id: u32,
    to: String,
    name: String,
}

#[tokio::main]
async fn main() -> Result<(), keel_client::Error> {
    let sink = PathBuf::from(std::env::var("MAIL_SINK").unwrap_or_else(|_| "mail-sink".into()));
    std::fs::create_dir_all(&sink)
        .map_err(|e| keel_client::Error::Invalid(format!("mail sink: {e}")))?;
    // KEEL_URL and KEEL_TOKEN, or the local server's admin token in KEEL_DATA_DIR.
    let client = Client::from_env()?;
    // Short backoff so the demo retries within seconds (the default starts at 1 s, up to 1 h).
    let patch = QueuePatch {
        backoff: Some(Some(keel_client::Backoff {
            initial_ms: 200,
            max_ms: 2_000,
            jitter: 0.25,
        })),
        ..Default::default()
    };
    client.configure_queue("emails", &patch).await?;

    let welcome_sink = sink.clone();
    let report = Worker::new(client, &["emails"])
        .concurrency(4)
        .handle("email.welcome", move |ctx: JobContext<Welcome>| {
            let sink = welcome_sink.clone();
            async move {
                if rand_percent() < 33 {
                    return Err(HandlerError::retryable("421 mail server busy, try again later").kind("SmtpTransient"));
                }
                let w = ctx.payload;
                let body = format!(
                    "To: {}\r\nSubject: Welcome, {}!\r\nX-Keel-Job: {}\r\n\r\nThanks for signing up (user {}).\r\n",
                    w.to, w.name, ctx.job.id, w.user_id
                );
                // One file per job id: a retried delivery overwrites, never duplicates.
                tokio::fs::write(sink.join(format!("{}.eml", ctx.job.id)), body).await?;
                println!("sent welcome email to {} (attempt {})", w.to, ctx.job.attempt);
                Ok(serde_json::json!({ "delivered_to": w.to }))
            }
        })
        .handle("email.verify", |ctx: JobContext<Welcome>| async move {
            if ctx.payload.to.ends_with("@invalid") {
                return Err(HandlerError::fatal(format!("550 no such domain for {}", ctx.payload.to)).kind("SmtpPermanent"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .run_until_signal()
        .await?;
    println!(
        "done: {} completed, {} failed, {} handed back",
        report.completed, report.failed, report.released
    );
    Ok(())
}

/// A number in 0..100 without a random-number crate.
fn rand_percent() -> u32 {
    (uuid::Uuid::new_v4().as_u128() % 100) as u32
}
