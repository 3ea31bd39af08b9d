//! The producer half of the sign-up example: a web app would call this when a user signs up.
//! Each sign-up enqueues a welcome email and an address check, keyed by the sign-up id so a
//! double click or a retried request never sends two emails.
//!
//! Run (with `keel serve` running): `cargo run -p keel-client --example signup_producer -- 20`

use keel_client::{Client, EnqueueRequest};
use serde::Serialize;

#[derive(Serialize)]
struct Welcome {
    user_id: u32,
    to: String,
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), keel_client::Error> {
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    // KEEL_URL and KEEL_TOKEN, or the local server's admin token in KEEL_DATA_DIR.
    let client = Client::from_env()?;
    for user_id in 1..=count {
        // Every fifth address is undeliverable: its check will fail permanently and go dead.
        let domain = if user_id % 5 == 0 {
            "invalid"
        } else {
            "example.com"
        };
        let to = format!("user{user_id}@{domain}");
        let welcome = Welcome {
            user_id,
            to: to.clone(),
            name: format!("User {user_id}"),
        };
        let job = client
            .enqueue(
                EnqueueRequest::with_payload("emails", "email.welcome", &welcome)?
                    .idempotency_key(format!("signup-{user_id}-welcome"))
                    .max_attempts(5),
            )
            .await?;
        client
            .enqueue(
                EnqueueRequest::with_payload("emails", "email.verify", &welcome)?
                    .idempotency_key(format!("signup-{user_id}-verify")),
            )
            .await?;
        println!("signed up {to}: welcome email is job {}", job.job.id);
    }
    Ok(())
}
