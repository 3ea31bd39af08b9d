//! Online backups of a SQLite store and rewinding a copy to an earlier moment.
//!
//! Invariants:
//! - A backup is one consistent snapshot: it is copied under a single read transaction held on
//!   the source (WAL mode lets the server keep committing meanwhile), so it holds every write
//!   committed before that transaction began and none after. Every job acknowledged before
//!   `keel backup` started is in it.
//! - A backup is never trusted blindly: its manifest records the SHA-256 of the file, and
//!   `restore` and `verify` check it before anything else.
//! - `rewind` changes only a copy (never a data dir a server has open) and rebuilds the jobs
//!   table from the events at or before the given moment with `keel_core::apply`, the same fold
//!   `verify` checks, so a rewound store passes `verify` by construction. Events are never
//!   deleted by a purge, which is what lets a rewind bring purged jobs back.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use keel_core::{Job, Time, apply};
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::rows::{EVENT_COLUMNS, event_from_row, insert_job};
use crate::StoreError;

/// The manifest format written next to each backup.
pub const MANIFEST_FORMAT: u32 = 1;
/// Pages copied per backup step (256 KiB of 4 KiB pages): a smooth progress bar.
const PAGES_PER_STEP: i32 = 64;
/// How long a backup step waits on a locked store before trying again, and in all.
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
const BUSY_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What `keel backup` records about a backup file, in `<file>.manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The keel version that wrote it.
    pub keel_version: String,
    /// The storage schema version inside the file.
    pub schema_version: i64,
    /// When the snapshot was taken.
    pub taken_at: Time,
    /// The highest event `seq` in the snapshot (its position in the event log).
    pub event_high_water: i64,
    pub jobs: u64,
    pub events: u64,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
}

/// Where the manifest of backup `file` lives.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

fn sqlite(e: rusqlite::Error) -> StoreError {
    StoreError::sqlite(e)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Internal(format!("{what} {}: {e}", path.display()))
}

/// Copies the store at `db` (a server may be using it) to `out` as one consistent snapshot,
/// reporting `(pages done, pages total)`, and returns its manifest (also written beside it).
/// `out` and its manifest appear only when complete (written aside, synced, renamed).
pub fn backup(
    db: &Path,
    out: &Path,
    keel_version: &str,
    now: Time,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, StoreError> {
    if !db.exists() {
        return Err(StoreError::Internal(format!(
            "no store at {} (is --data-dir right?)",
            db.display()
        )));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite)?;
    src.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sqlite)?;
    // The snapshot: one read transaction for the counts and every backup step. Another
    // connection's commits do not restart the copy, because this connection does not see them.
    src.execute_batch("BEGIN").map_err(sqlite)?;
    let (schema_version, event_high_water, jobs, events) = src
        .query_row(
            "SELECT (SELECT coalesce(max(version), 0) FROM schema_migrations), \
             (SELECT coalesce(max(seq), 0) FROM events), (SELECT count(*) FROM jobs), \
             (SELECT count(*) FROM events)",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .map_err(sqlite)?;
    let partial = partial_path(out);
    let _ = std::fs::remove_file(&partial);
    {
        let mut dest = Connection::open(&partial).map_err(sqlite)?;
        let copy = rusqlite::backup::Backup::new(&src, &mut dest).map_err(sqlite)?;
        let mut waited = std::time::Duration::ZERO;
        loop {
            let step = copy.step(PAGES_PER_STEP).map_err(sqlite)?;
            let p = copy.progress();
            let total = p.pagecount.max(0) as u64;
            progress(total.saturating_sub(p.remaining.max(0) as u64), total);
            match step {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => waited = std::time::Duration::ZERO,
                // Busy or locked: another connection holds a lock for a moment; try again
                // shortly, but not forever.
                _ if waited >= BUSY_LIMIT => {
                    return Err(StoreError::Internal(format!(
                        "the store stayed locked for {} s; backup abandoned",
                        BUSY_LIMIT.as_secs()
                    )));
                }
                _ => {
                    std::thread::sleep(BUSY_PAUSE);
                    waited += BUSY_PAUSE;
                }
            }
        }
        drop(copy);
        dest.execute_batch("PRAGMA journal_mode=DELETE")
            .map_err(sqlite)?;
    }
    src.execute_batch("COMMIT").map_err(sqlite)?;
    sync_file(&partial)?;
    let (sha256, bytes) = checksum(&partial, &mut |_, _| {})?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        keel_version: keel_version.to_owned(),
        schema_version,
        taken_at: now,
        event_high_water,
        jobs: jobs.max(0) as u64,
        events: events.max(0) as u64,
        bytes,
        sha256,
    };
    std::fs::rename(&partial, out).map_err(|e| io("renaming into", out, e))?;
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| StoreError::Internal(format!("manifest: {e}")))?;
    let manifest_file = manifest_path(out);
    let manifest_partial = partial_path(&manifest_file);
    std::fs::write(&manifest_partial, text).map_err(|e| io("writing", &manifest_partial, e))?;
    sync_file(&manifest_partial)?;
    std::fs::rename(&manifest_partial, &manifest_file)
        .map_err(|e| io("renaming into", &manifest_file, e))?;
    sync_dir(out)?;
    Ok(manifest)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn sync_file(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing", path, e))
}

/// Syncs the directory holding `path`, so a rename into it survives a crash.
pub fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    sync_file(dir)
}

/// Lower-case hex SHA-256 and length of a file, reporting `(bytes done, bytes total)`.
pub fn checksum(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(String, u64), StoreError> {
    let mut file = File::open(path).map_err(|e| io("opening", path, e))?;
    let total = file.metadata().map_err(|e| io("reading", path, e))?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done, total);
    }
    let digest = hasher.finalize();
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, done))
}

/// Reads and checks the manifest of backup `file` against the file: format, size, checksum.
pub fn check_backup(
    file: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest, StoreError> {
    let path = manifest_path(file);
    let text = std::fs::read(&path).map_err(|e| io("reading the manifest", &path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        StoreError::Internal(format!("the manifest {} is invalid: {e}", path.display()))
    })?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(StoreError::Internal(format!(
            "manifest format {} is not one this keel reads ({MANIFEST_FORMAT})",
            manifest.format
        )));
    }
    let (sha256, bytes) = checksum(file, progress)?;
    if bytes != manifest.bytes || sha256 != manifest.sha256 {
        return Err(StoreError::Internal(format!(
            "{} does not match its manifest (expected {} bytes with SHA-256 {}, found {bytes} \
             bytes with {sha256}): the backup is damaged or not the one the manifest describes",
            file.display(),
            manifest.bytes,
            manifest.sha256
        )));
    }
    Ok(manifest)
}

/// SQLite's own structural check of a database file (read-only).
pub fn integrity_check(db: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sqlite)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(sqlite)?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .map_err(sqlite)?
        .collect::<Result<_, _>>()
        .map_err(sqlite)?;
    if lines == ["ok"] {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "integrity check of {} failed: {}",
            db.display(),
            lines.join("; ")
        )))
    }
}

/// What a rewind did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewindReport {
    /// Events after the moment, removed.
    pub events_dropped: u64,
    /// Jobs in the store as it was at the moment.
    pub jobs: u64,
    /// Admin changes after the moment, removed from the audit log.
    pub audit_dropped: u64,
}

/// Rewinds the store file `db` (a copy no server has open) to how it was at `to`: events after
/// `to` are dropped and the jobs table is rebuilt as the fold of the rest; idempotency keys of
/// jobs that no longer exist are dropped; admin changes after `to` leave the audit log, which
/// gains one `store.restored` entry. Queue settings, tokens, schemas and schedules stay as the
/// file has them (they are not event-sourced). One transaction: all or nothing.
pub fn rewind(
    db: &Path,
    to: Time,
    now: Time,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<RewindReport, StoreError> {
    let mut conn = Connection::open(db).map_err(sqlite)?;
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .map_err(sqlite)?;
    let mut report = RewindReport {
        events_dropped: tx
            .execute("DELETE FROM events WHERE at > ?1", [to.as_millis()])
            .map_err(sqlite)? as u64,
        ..RewindReport::default()
    };
    let total: i64 = tx
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(sqlite)?;
    let mut folded: HashMap<Uuid, Option<Job>> = HashMap::new();
    {
        let mut stmt = tx
            .prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY seq"))
            .map_err(sqlite)?;
        let mut rows = stmt.query([]).map_err(sqlite)?;
        let mut done = 0u64;
        while let Some(row) = rows.next().map_err(sqlite)? {
            let ev = event_from_row(row).map_err(sqlite)?;
            let slot = folded.entry(ev.job_id).or_insert(None);
            *slot = apply(slot.take(), &ev.data, ev.at);
            done += 1;
            if done.is_multiple_of(10_000) {
                progress(done, total.max(0) as u64);
            }
        }
        progress(done, total.max(0) as u64);
    }
    tx.execute("DELETE FROM jobs", []).map_err(sqlite)?;
    for job in folded.values().flatten() {
        insert_job(&tx, job).map_err(sqlite)?;
        report.jobs += 1;
    }
    tx.execute(
        "DELETE FROM idempotency_keys WHERE job_id NOT IN (SELECT id FROM jobs)",
        [],
    )
    .map_err(sqlite)?;
    report.audit_dropped = tx
        .execute("DELETE FROM audit WHERE at > ?1", [to.as_millis()])
        .map_err(sqlite)? as u64;
    let data = serde_json::json!({
        "to_time": to,
        "events_dropped": report.events_dropped,
        "audit_dropped": report.audit_dropped,
        "jobs": report.jobs,
    });
    tx.execute(
        "INSERT INTO audit (at, actor_id, actor_name, action, target, data) \
         VALUES (?1, NULL, 'keel restore', 'store.restored', 'store', ?2)",
        params![now.as_millis(), data.to_string()],
    )
    .map_err(sqlite)?;
    tx.commit().map_err(sqlite)?;
    Ok(report)
}
