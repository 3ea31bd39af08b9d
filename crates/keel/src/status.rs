//! `keel status`: one screen for a human: storage, every queue (depths, oldest wait, rates) and
//! the push breakers. Rates come from two reads of `/metrics` `interval` apart, so they are this
//! server's rates (on PostgreSQL with several nodes, run it against each, or use Prometheus).

use std::collections::BTreeMap;
use std::time::Duration;

use keel_client::State;
use serde::Serialize;

use crate::commands::{Ctx, Outcome, age};
use crate::render::{self, exit};

/// Per-queue sums of the job counters on a metrics page.
#[derive(Clone, Copy, Default)]
struct Totals {
    enqueued: f64,
    completed: f64,
    failed: f64,
}

/// Reads `keel_jobs_{enqueued,completed,failed}_total` per queue, and `keel_store_up`.
fn parse(text: &str) -> (BTreeMap<String, Totals>, Option<bool>) {
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    let mut store_up = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if name == "keel_store_up" {
            store_up = Some(value >= 1.0);
            continue;
        }
        // Queue names are [A-Za-z0-9._:-]: no escapes to undo.
        let Some(queue) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("queue=\""))
            .map(|q| q.trim_end_matches('}').trim_end_matches('"'))
        else {
            continue;
        };
        let slot = totals.entry(queue.to_owned()).or_default();
        match name {
            "keel_jobs_enqueued_total" => slot.enqueued += value,
            "keel_jobs_completed_total" => slot.completed += value,
            "keel_jobs_failed_total" => slot.failed += value,
            _ => {}
        }
    }
    (totals, store_up)
}

#[derive(Serialize)]
struct Rates {
    enqueued_per_s: f64,
    completed_per_s: f64,
    failed_per_s: f64,
}

#[derive(Serialize)]
struct QueueStatus {
    name: String,
    paused: bool,
    counts: keel_client::Counts,
    oldest_available_age_ms: Option<i64>,
    /// `None` with `--interval-ms 0`.
    rates: Option<Rates>,
}

#[derive(Serialize)]
struct Status {
    url: String,
    store_up: Option<bool>,
    queues: Vec<QueueStatus>,
    targets: Vec<keel_client::TargetInfo>,
}

fn rate(n: f64) -> String {
    if n == 0.0 {
        "0".into()
    } else if n < 10.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.0}")
    }
}

pub async fn status(ctx: &Ctx, interval: Duration) -> Outcome {
    let (before, mut store_up) = parse(&ctx.client.metrics_text().await?);
    let rates = if interval.is_zero() {
        None
    } else {
        tokio::time::sleep(interval).await;
        let (after, up) = parse(&ctx.client.metrics_text().await?);
        store_up = up;
        Some((before, after))
    };
    let queues = ctx.client.queues().await?;
    let targets = ctx.client.targets().await?;
    let secs = interval.as_secs_f64();
    let queues: Vec<QueueStatus> = queues
        .into_iter()
        .map(|q| {
            let rates = rates.as_ref().map(|(before, after)| {
                let b = before.get(&q.name).copied().unwrap_or_default();
                let a = after.get(&q.name).copied().unwrap_or_default();
                Rates {
                    enqueued_per_s: ((a.enqueued - b.enqueued) / secs).max(0.0),
                    completed_per_s: ((a.completed - b.completed) / secs).max(0.0),
                    failed_per_s: ((a.failed - b.failed) / secs).max(0.0),
                }
            });
            QueueStatus {
                name: q.name,
                paused: q.paused,
                counts: q.counts,
                oldest_available_age_ms: q.oldest_available_age_ms,
                rates,
            }
        })
        .collect();
    let status = Status {
        url: ctx.client.base_url().to_owned(),
        store_up,
        queues,
        targets,
    };
    if ctx.json {
        ctx.print_json(&status);
        return Ok(exit::OK);
    }
    print(ctx, &status);
    Ok(exit::OK)
}

fn print(ctx: &Ctx, st: &Status) {
    let s = &ctx.style;
    let storage = match st.store_up {
        Some(true) => "storage ok".to_owned(),
        Some(false) => s.state(State::Dead).replace("dead", "STORAGE UNREACHABLE"),
        None => "storage unknown".to_owned(),
    };
    let open = st.targets.iter().filter(|t| t.state != "closed").count();
    println!(
        "{} {}  {}  {} queues  {} push origins ({} not closed)",
        s.bold("keel"),
        st.url,
        storage,
        st.queues.len(),
        st.targets.len(),
        open
    );
    if st.queues.is_empty() {
        println!("no queues");
    } else {
        println!();
        let rows: Vec<Vec<String>> = st
            .queues
            .iter()
            .map(|q| {
                let c = q.counts;
                let mut row = vec![
                    q.name.clone(),
                    if q.paused {
                        "paused".into()
                    } else {
                        "active".into()
                    },
                    c.available.to_string(),
                    c.scheduled.to_string(),
                    c.running.to_string(),
                    if c.dead > 0 {
                        s.state(State::Dead).replace("dead", &c.dead.to_string())
                    } else {
                        "0".into()
                    },
                    q.oldest_available_age_ms
                        .map(age)
                        .unwrap_or_else(|| "-".into()),
                ];
                if let Some(r) = &q.rates {
                    row.extend([
                        rate(r.enqueued_per_s),
                        rate(r.completed_per_s),
                        rate(r.failed_per_s),
                    ]);
                }
                row
            })
            .collect();
        let mut headers = vec![
            "QUEUE",
            "STATUS",
            "AVAILABLE",
            "SCHEDULED",
            "RUNNING",
            "DEAD",
            "OLDEST",
        ];
        if st.queues.iter().any(|q| q.rates.is_some()) {
            headers.extend(["IN/S", "DONE/S", "FAILED/S"]);
        }
        render::table(s, &headers, &rows);
    }
    if !st.targets.is_empty() {
        println!();
        let now = render::now();
        let rows: Vec<Vec<String>> = st
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.origin.clone(),
                    t.state.replace('_', "-"),
                    t.consecutive_failures.to_string(),
                    t.next_probe_at
                        .map_or("-".to_owned(), |at| render::relative(at, now)),
                ]
            })
            .collect();
        render::table(s, &["ORIGIN", "BREAKER", "FAILURES", "NEXT PROBE"], &rows);
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sums_counters_per_queue_across_kinds_and_reads_store_up() {
        let text = "# TYPE keel_jobs_enqueued_total counter\n\
            keel_jobs_enqueued_total{queue=\"emails\",kind=\"a\"} 3\n\
            keel_jobs_enqueued_total{queue=\"emails\",kind=\"b\"} 4\n\
            keel_jobs_completed_total{queue=\"emails\",kind=\"a\"} 2\n\
            keel_jobs_failed_total{kind=\"a\",queue=\"billing\"} 1\n\
            keel_http_requests_total{route=\"/v1/jobs\",method=\"POST\",status=\"201\"} 9\n\
            keel_store_up 0\n";
        let (totals, up) = parse(text);
        assert_eq!(up, Some(false));
        assert_eq!(totals["emails"].enqueued, 7.0);
        assert_eq!(totals["emails"].completed, 2.0);
        assert_eq!(totals["billing"].failed, 1.0);
        assert_eq!(totals.len(), 2);
    }
}
