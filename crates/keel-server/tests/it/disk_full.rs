//! A full disk: writes answer `507 insufficient-storage` and change nothing, readiness turns 503,
//! nothing acknowledged is lost or corrupted, and keel recovers by itself when space returns.
//! Runs on a real size-capped filesystem (a 3 MiB tmpfs), which needs root to mount; elsewhere it
//! says plainly that it was skipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use keel_server::ServerConfig;
use serde_json::json;

use crate::helpers::TestServer;

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            path: dir.path().to_owned(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the filesystem holding `path` until a write fails; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[tokio::test]
async fn a_full_disk_answers_507_loses_nothing_and_recovers() {
    let Some(fs) = Tmpfs::mount("3m") else {
        eprintln!(
            "SKIPPED a_full_disk_answers_507_loses_nothing_and_recovers: mounting a tmpfs needs root"
        );
        return;
    };
    let data = fs.path.join("keel");
    let s = TestServer::start_in(ServerConfig::default(), data.clone(), ()).await;
    let payload = json!({"blob": "x".repeat(20_000)});
    let job = |i: usize| json!({"queue": "q", "kind": "k", "payload": payload, "idempotency_key": format!("k{i}")});

    let mut acked = vec![];
    for i in 0..5 {
        acked.push(s.enqueue(job(i)).await["id"].as_str().unwrap().to_owned());
    }
    let filler = fill(&fs.path);

    // Writes now fail with 507 (the first few may still fit in free pages); nothing half-written.
    let mut refused = 0;
    for i in 5..200 {
        let (status, body, _) = s
            .call_as(s.admin_token.as_deref(), "POST", "/v1/jobs", Some(job(i)))
            .await;
        match status {
            201 => acked.push(body["id"].as_str().unwrap().to_owned()),
            507 => {
                assert_eq!(
                    body["type"], "urn:keel:problem:insufficient-storage",
                    "{body}"
                );
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("a full disk answered {other}: {body}"),
        }
    }
    assert!(refused >= 3, "the disk never filled");
    let (ready, body, _) = s.call_as(None, "GET", "/readyz", None).await;
    assert_eq!(ready, 503, "{body}");
    // Reads still work, and every acknowledged job is there.
    for id in &acked {
        assert_eq!(s.job(id).await["queue"], "q");
    }

    // Space returns: keel recovers without a restart.
    std::fs::remove_file(&filler).unwrap();
    let again = s
        .eventually(10, "writes succeed again", || async {
            let (status, body, _) = s
                .call_as(
                    s.admin_token.as_deref(),
                    "POST",
                    "/v1/jobs",
                    Some(job(1_000)),
                )
                .await;
            (status == 201).then_some(body)
        })
        .await;
    acked.push(again["id"].as_str().unwrap().to_owned());
    s.get("/readyz", 200).await;
    assert_eq!(
        s.get("/v1/queues/q", 200).await["counts"]["available"],
        acked.len()
    );

    // No corruption: the rows equal the fold of the events, and SQLite's own check passes.
    let report = s.store.verify().await.unwrap();
    assert!(report.mismatched.is_empty(), "{:?}", report.mismatched);
    s.shutdown().await;
    let conn = rusqlite::Connection::open(data.join("keel.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    drop(fs);
}

/// Readiness needs free space, not only a last write that succeeded: on SQLite a one-row write
/// can succeed in reused WAL space on a disk with no room for anything larger, so a store with
/// under 1 MiB free on its filesystem reports 503 though no write has failed.
#[tokio::test]
async fn readiness_needs_free_space_not_only_a_successful_last_write() {
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!(
            "SKIPPED readiness_needs_free_space_not_only_a_successful_last_write: mounting a tmpfs needs root"
        );
        return;
    };
    let s = TestServer::start_in(ServerConfig::default(), fs.path.join("keel"), ()).await;
    s.enqueue(json!({"queue": "q", "kind": "k", "payload": {"n": 1}}))
        .await;
    let (ready, body, _) = s.call_as(None, "GET", "/readyz", None).await;
    assert_eq!(ready, 200, "{body}");

    // Fill the disk, then give back 512 KiB: room for small writes, less than readiness asks.
    let filler = fill(&fs.path);
    let full = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(full - 512 * 1024)
        .unwrap();
    let (ready, body, _) = s.call_as(None, "GET", "/readyz", None).await;
    assert_eq!(ready, 503, "{body}");
    assert!(
        body.to_string().contains("free"),
        "the answer says why: {body}"
    );

    std::fs::remove_file(&filler).unwrap();
    let (ready, body, _) = s.call_as(None, "GET", "/readyz", None).await;
    assert_eq!(ready, 200, "{body}");
}
