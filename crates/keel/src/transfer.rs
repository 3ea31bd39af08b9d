//! `keel export` and `keel import`: a whole store as JSON lines, to move between SQLite and
//! PostgreSQL (and back). They open the store directly, not through a server: stop the
//! servers first (SQLite refuses a data dir in use; on PostgreSQL an export taken while nodes
//! serve is not one consistent moment).
//!
//! The file: a `header` line, then `queue`, `token`, `schema` and `schedule` lines, then every
//! `job` (with its lease, so a running job stays running and its worker's token still works),
//! then every `event` in log order. Idempotency keys and the audit log are not carried: the
//! target starts its own audit log (the import's changes are recorded by actor `import`).

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, bail};
use keel_core::{EventData, Job, Json, Lease, QueueOverrides, Role, ScheduleSpec, Time};
use keel_server::{Clock, SystemClock};
use keel_store::{Actor, Store, TokenRecord};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::serve::StorageArgs;

/// The file format's version, in the header line.
const FORMAT: u32 = 1;
const JOB_BATCH: usize = 1_000;
const EVENT_BATCH: usize = 5_000;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Header {
        keel_export: u32,
        exported_at: Time,
        jobs: u64,
    },
    Queue {
        name: String,
        paused: bool,
        overrides: QueueOverrides,
    },
    Token {
        id: Uuid,
        name: String,
        role: Role,
        queues: Option<Vec<String>>,
        hash: String,
        created_at: Time,
    },
    Schema {
        kind: String,
        schema: Json,
    },
    Schedule {
        name: String,
        spec: ScheduleSpec,
        paused: bool,
    },
    Job {
        job: Box<Job>,
        lease: Option<Lease>,
    },
    Event {
        job_id: Uuid,
        at: Time,
        data: EventData,
    },
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel export --data-dir /var/lib/keel --out keel.jsonl\n  KEEL_DATABASE_URL=postgres://keel@db/keel keel export --out keel.jsonl\n\nStop the servers first. The file holds token hashes and push-target secrets: it is written with mode 0600."
)]
pub struct ExportArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Where to write the JSON lines (`-`: standard output).
    #[arg(long, default_value = "-")]
    out: String,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  KEEL_DATABASE_URL=postgres://keel@db/keel keel import --from keel.jsonl\n  keel import --data-dir /var/lib/keel-new --from keel.jsonl\n\nThe target must hold no jobs. Afterwards every job is checked against its events."
)]
pub struct ImportArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// The file `keel export` wrote (`-`: standard input).
    #[arg(long)]
    from: String,
}

fn line(out: &mut impl Write, record: &Record) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn open_out(path: &str) -> anyhow::Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(std::io::BufWriter::new(std::io::stdout().lock())));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {path}"))?;
    Ok(Box::new(std::io::BufWriter::new(file)))
}

pub async fn export(args: ExportArgs, data_dir: &Path) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let store = args.storage.open(data_dir, now).await?;
    let result = export_from(&*store, &args.out, now).await;
    store.close().await.context("closing the store")?;
    result
}

async fn export_from(store: &dyn Store, out_path: &str, now: Time) -> anyhow::Result<()> {
    let mut out = open_out(out_path)?;
    let queues = store.queues(now).await?;
    let total: u64 = queues
        .iter()
        .map(|q| {
            let c = q.counts;
            c.scheduled + c.available + c.running + c.completed + c.dead + c.cancelled
        })
        .sum();
    line(
        &mut out,
        &Record::Header {
            keel_export: FORMAT,
            exported_at: now,
            jobs: total,
        },
    )?;
    for q in queues {
        line(
            &mut out,
            &Record::Queue {
                name: q.name,
                paused: q.paused,
                overrides: q.overrides,
            },
        )?;
    }
    for t in store.tokens().await? {
        line(
            &mut out,
            &Record::Token {
                id: t.id,
                name: t.name,
                role: t.role,
                queues: t.queues,
                hash: t.hash,
                created_at: t.created_at,
            },
        )?;
    }
    for s in store.schemas().await? {
        line(
            &mut out,
            &Record::Schema {
                kind: s.kind,
                schema: s.schema,
            },
        )?;
    }
    for s in store.schedules().await? {
        line(
            &mut out,
            &Record::Schedule {
                name: s.name,
                spec: s.spec,
                paused: s.paused,
            },
        )?;
    }
    let bar = crate::render::progress_bar(Some(total), "jobs");
    let mut after = None;
    loop {
        let jobs = store.export_jobs(after, JOB_BATCH).await?;
        let Some(last) = jobs.last() else { break };
        after = Some(last.id);
        bar.inc(jobs.len() as u64);
        for mut job in jobs {
            let lease = job.lease.take();
            line(
                &mut out,
                &Record::Job {
                    job: Box::new(job),
                    lease,
                },
            )?;
        }
    }
    bar.finish_and_clear();
    let bar = crate::render::progress_bar(None, "events");
    let mut after_seq = 0;
    loop {
        let events = store.export_events(after_seq, EVENT_BATCH).await?;
        let Some(last) = events.last() else { break };
        after_seq = last.seq;
        bar.inc(events.len() as u64);
        for e in events {
            line(
                &mut out,
                &Record::Event {
                    job_id: e.job_id,
                    at: e.at,
                    data: e.data,
                },
            )?;
        }
    }
    bar.finish_and_clear();
    out.flush()?;
    eprintln!("keel: exported {total} jobs and their events.");
    Ok(())
}

pub async fn import(args: ImportArgs, data_dir: &Path) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let store = args.storage.open(data_dir, now).await?;
    let result = import_into(&*store, &args.from, now).await;
    store.close().await.context("closing the store")?;
    result
}

async fn import_into(store: &dyn Store, from: &str, now: Time) -> anyhow::Result<()> {
    if !store.export_jobs(None, 1).await?.is_empty() {
        bail!("the target store already holds jobs; import into an empty store");
    }
    let (reader, size): (Box<dyn BufRead>, Option<u64>) = if from == "-" {
        (
            Box::new(std::io::BufReader::new(std::io::stdin().lock())),
            None,
        )
    } else {
        let file = std::fs::File::open(from).with_context(|| format!("opening {from}"))?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::new(file)), size)
    };
    let actor = Actor::system("import");
    let existing_tokens: std::collections::HashSet<Uuid> =
        store.tokens().await?.into_iter().map(|t| t.id).collect();
    let bar = crate::render::progress_bar(size, "bytes");
    let (mut jobs, mut events) = (Vec::new(), Vec::new());
    let (mut job_count, mut event_count) = (0u64, 0u64);
    let mut header = false;
    for (n, text) in reader.lines().enumerate() {
        let text = text.with_context(|| format!("reading {from}"))?;
        bar.inc(text.len() as u64 + 1);
        if text.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&text)
            .with_context(|| format!("{from}, line {}: not a keel export record", n + 1))?;
        match record {
            Record::Header { keel_export, .. } if keel_export == FORMAT => header = true,
            Record::Header { keel_export, .. } => {
                bail!("{from}: export format {keel_export}, this keel reads {FORMAT}")
            }
            _ if !header => bail!("{from}: no keel export header on its first line"),
            Record::Queue {
                name,
                paused,
                overrides,
            } => {
                store.configure_queue(&name, overrides, &actor, now).await?;
                if paused {
                    store.set_paused(&name, true, &actor, now).await?;
                }
            }
            Record::Token {
                id,
                name,
                role,
                queues,
                hash,
                created_at,
            } => {
                if !existing_tokens.contains(&id) {
                    let token = TokenRecord {
                        id,
                        name,
                        role,
                        queues,
                        hash,
                        created_at,
                    };
                    store.create_token(token, &actor, now).await?;
                }
            }
            Record::Schema { kind, schema } => {
                store.put_schema(&kind, schema, &actor, now).await?;
            }
            Record::Schedule { name, spec, paused } => {
                store
                    .put_schedule(&name, spec, Some(paused), &actor, now)
                    .await?;
            }
            Record::Job { mut job, lease } => {
                job.lease = lease;
                jobs.push(*job);
                if jobs.len() >= JOB_BATCH {
                    job_count += jobs.len() as u64;
                    store.import(std::mem::take(&mut jobs), vec![], now).await?;
                }
            }
            Record::Event { job_id, at, data } => {
                if !jobs.is_empty() {
                    job_count += jobs.len() as u64;
                    store.import(std::mem::take(&mut jobs), vec![], now).await?;
                }
                events.push(keel_core::Event {
                    seq: 0,
                    job_id,
                    at,
                    data,
                });
                if events.len() >= EVENT_BATCH {
                    event_count += events.len() as u64;
                    store
                        .import(vec![], std::mem::take(&mut events), now)
                        .await?;
                }
            }
        }
    }
    if !header {
        bail!("{from}: empty, or not a keel export");
    }
    job_count += jobs.len() as u64;
    event_count += events.len() as u64;
    store.import(jobs, events, now).await?;
    bar.finish_and_clear();
    crate::backup::folds_agree(store, &format!("after importing {job_count} jobs")).await?;
    eprintln!(
        "keel: imported {job_count} jobs and {event_count} events; every job equals the fold of its events."
    );
    Ok(())
}
