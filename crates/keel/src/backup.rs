//! `keel backup`, `keel restore` and `keel verify`: the operator's undo button.
//!
//! The mechanics live in `keel_store::sqlite::backup`; this module adds the command line,
//! progress bars and the order of safety checks: a restore checks the backup's checksum before
//! using it, never overwrites an existing store, builds the new store aside and renames it into
//! place only once it is complete and passes `verify`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use keel_core::Time;
use keel_server::{Clock, SystemClock};
use keel_store::sqlite::backup::{self as snapshot, Manifest};
use keel_store::{SqliteConfig, SqliteStore, Store};

use crate::render::progress_bar;
use crate::serve::StorageArgs;

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel backup --data-dir /var/lib/keel --out /backups/keel-$(date +%F).db\n\nSafe while the server runs: the copy is one consistent snapshot. Writes FILE and FILE.manifest.json (version, time, event high-water mark, SHA-256). The file holds token hashes and push-target secrets: keep it private. On PostgreSQL use the database's own tools (pg_basebackup with WAL archiving for point-in-time recovery, or pg_dump); see docs/runbooks/restore-after-operator-error.md."
)]
pub struct BackupArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// The backup file to write (its manifest goes to FILE.manifest.json).
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel restore --from /backups/keel-2026-11-23.db --data-dir /var/lib/keel-restored\n  keel restore --from /backups/keel-2026-11-23.db --to-time 2026-11-23T14:05:00Z --data-dir /var/lib/keel-restored\n\n--data-dir must not hold a store: restore into a new directory, check it, then swap directories while the server is stopped. --to-time rebuilds every job as it was at that moment from the events (a purge or replay after it is undone); queue settings, tokens, schemas and schedules are as in the backup."
)]
pub struct RestoreArgs {
    /// A backup written by `keel backup`.
    #[arg(long)]
    from: PathBuf,
    /// Rewind to this moment (RFC 3339, e.g. 2026-11-23T14:05:00Z); at or before the backup.
    #[arg(long, value_parser = parse_time)]
    to_time: Option<Time>,
}

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel verify --data-dir /var/lib/keel\n  keel verify --backup /backups/keel-2026-11-23.db\n  KEEL_DATABASE_URL=postgres://keel@db/keel keel verify\n\nChecks: the backup's checksum (with --backup), SQLite's integrity check, and that every job's row equals the fold of its events. Exit 0 when all hold. Verify a store while no server writes to it, or verify a backup of it: the check reads the events and then the rows, and a job changed in between would be reported."
)]
pub struct VerifyArgs {
    #[command(flatten)]
    storage: StorageArgs,
    /// Verify a backup file instead of a live store.
    #[arg(long)]
    backup: Option<PathBuf>,
}

fn parse_time(text: &str) -> Result<Time, String> {
    Time::parse_rfc3339(text)
}

/// Runs `f` with a progress callback drawing a bar of `unit`, cleared afterwards.
fn with_bar<T>(
    unit: &str,
    f: impl FnOnce(&mut dyn FnMut(u64, u64)) -> Result<T, keel_store::StoreError>,
) -> anyhow::Result<T> {
    let bar = progress_bar(Some(0), unit);
    let result = f(&mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    Ok(result?)
}

pub fn backup(args: BackupArgs, data_dir: &Path) -> anyhow::Result<()> {
    if args.storage.database.is_some() {
        bail!(
            "keel backup copies the embedded SQLite store; for PostgreSQL use pg_basebackup with \
             WAL archiving (point-in-time recovery) or pg_dump (see \
             docs/runbooks/restore-after-operator-error.md)"
        );
    }
    let db = SqliteConfig::new(data_dir).db_path();
    let manifest: Manifest = with_bar("pages", |p| {
        snapshot::backup(
            &db,
            &args.out,
            env!("CARGO_PKG_VERSION"),
            SystemClock.now(),
            p,
        )
    })
    .with_context(|| format!("backing up {}", db.display()))?;
    println!(
        "backup {} taken at {}: {} jobs, {} events (up to event {}), {} bytes, sha256 {}",
        args.out.display(),
        manifest.taken_at,
        manifest.jobs,
        manifest.events,
        manifest.event_high_water,
        manifest.bytes,
        manifest.sha256
    );
    println!("manifest: {}", snapshot::manifest_path(&args.out).display());
    Ok(())
}

pub async fn restore(args: RestoreArgs, data_dir: &Path) -> anyhow::Result<()> {
    let config = SqliteConfig::new(data_dir);
    let target = config.db_path();
    if target.exists() {
        bail!(
            "{} already holds a store; restore into an empty --data-dir, check it, then swap \
             directories while the server is stopped (a restore never overwrites a store)",
            data_dir.display()
        );
    }
    let manifest = with_bar("bytes", |p| snapshot::check_backup(&args.from, p))?;
    if let Some(t) = args.to_time
        && t > manifest.taken_at
    {
        bail!(
            "--to-time {t} is after the backup was taken ({}); the backup holds nothing later. \
             Take a new backup (keel backup) and restore from it",
            manifest.taken_at
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // Built aside and renamed into place once complete, so a crash leaves no half store.
    let aside = data_dir.join("keel.db.restoring");
    let _ = std::fs::remove_file(&aside);
    std::fs::copy(&args.from, &aside)
        .with_context(|| format!("copying {} to {}", args.from.display(), aside.display()))?;
    snapshot::integrity_check(&aside)?;
    let now = SystemClock.now();
    if let Some(to) = args.to_time {
        let report = with_bar("events", |p| snapshot::rewind(&aside, to, now, p))
            .context("rewinding the copy")?;
        println!(
            "rewound to {to}: {} later events and {} later admin changes dropped; {} jobs as they were",
            report.events_dropped, report.audit_dropped, report.jobs
        );
    }
    std::fs::File::open(&aside)
        .and_then(|f| f.sync_all())
        .context("syncing the restored store")?;
    std::fs::rename(&aside, &target).context("moving the restored store into place")?;
    snapshot::sync_dir(&target)?;
    let store = SqliteStore::open(config, now).context("opening the restored store")?;
    let report = folds_agree(&store, "the restored store").await;
    store.close().await.context("closing the restored store")?;
    let report = report?;
    println!(
        "restored {} (taken {}) into {}: {} jobs, {} events, verified",
        args.from.display(),
        manifest.taken_at,
        data_dir.display(),
        report.jobs,
        report.events
    );
    Ok(())
}

pub async fn verify(args: VerifyArgs, data_dir: &Path) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let (store, what, _scratch): (Arc<dyn Store>, String, Option<tempfile::TempDir>) =
        match &args.backup {
            Some(file) => {
                let manifest = with_bar("bytes", |p| snapshot::check_backup(file, p))?;
                println!(
                    "checksum ok: {} bytes, sha256 {}",
                    manifest.bytes, manifest.sha256
                );
                snapshot::integrity_check(file)?;
                println!("integrity check ok");
                // The fold check opens a store, which writes (WAL, migrations): on a scratch copy,
                // so the backup and its checksum stay as they are.
                let scratch = tempfile::tempdir().context("creating a scratch directory")?;
                let config = SqliteConfig::new(scratch.path());
                std::fs::copy(file, config.db_path()).context("copying the backup")?;
                let store = SqliteStore::open(config, now).context("opening the backup")?;
                (
                    Arc::new(store),
                    format!("backup {}", file.display()),
                    Some(scratch),
                )
            }
            None => {
                if args.storage.database.is_none() {
                    let db = SqliteConfig::new(data_dir).db_path();
                    if !db.exists() {
                        bail!("no store at {}", db.display());
                    }
                    snapshot::integrity_check(&db)?;
                    println!("integrity check ok");
                }
                let store = args.storage.open(data_dir, now).await?;
                (store, "store".to_owned(), None)
            }
        };
    let report = folds_agree(&*store, &what).await;
    store.close().await.context("closing the store")?;
    let report = report?;
    println!(
        "{what}: {} jobs equal the fold of their {} events",
        report.jobs, report.events
    );
    Ok(())
}

/// Runs `Store::verify` and fails, naming the first offenders, unless every job's row equals
/// the fold of its events. Shared by `restore`, `verify` and `import`.
pub(crate) async fn folds_agree(
    store: &dyn Store,
    what: &str,
) -> anyhow::Result<keel_store::VerifyReport> {
    let report = store.verify().await?;
    if !report.mismatched.is_empty() {
        bail!(
            "{what}: {} of {} jobs differ from the fold of their events: {:?}",
            report.mismatched.len(),
            report.jobs,
            report.mismatched.iter().take(20).collect::<Vec<_>>()
        );
    }
    Ok(report)
}
