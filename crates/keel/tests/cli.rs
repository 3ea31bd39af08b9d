//! The command line against a real server: output, `--json`, and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::Keel;

/// Where a CLI call goes: a bare URL (no data dir, so no token), or a running server, whose
/// admin token the CLI finds in its data dir as it would on the server's machine.
trait Target {
    fn url(&self) -> &str;
    fn data_dir(&self) -> Option<&std::path::Path>;
}

impl Target for str {
    fn url(&self) -> &str {
        self
    }
    fn data_dir(&self) -> Option<&std::path::Path> {
        None
    }
}

impl Target for Keel {
    fn url(&self) -> &str {
        &self.base
    }
    fn data_dir(&self) -> Option<&std::path::Path> {
        Some(&self.data_dir)
    }
}

fn keel(to: &(impl Target + ?Sized), args: &[&str]) -> Output {
    keel_stdin(to, args, "")
}

fn keel_stdin(to: &(impl Target + ?Sized), args: &[&str], stdin: &str) -> Output {
    let empty = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_URL", to.url())
        .env("KEEL_DATA_DIR", to.data_dir().unwrap_or(empty.path()))
        .env_remove("KEEL_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap()
}

#[test]
fn enqueue_inspect_and_act_on_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let url = &server;

    let out = keel(
        url,
        &[
            "enqueue",
            "emails",
            "email.welcome",
            r#"{"to":"ada@example.com"}"#,
            "--idempotency-key",
            "s-1",
            "--tag",
            "tenant:7",
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["tags"], serde_json::json!(["tenant:7"]));

    let out = keel(
        url,
        &[
            "enqueue",
            "emails",
            "email.welcome",
            r#"{"to":"ada@example.com"}"#,
            "--idempotency-key",
            "s-1",
            "--tag",
            "tenant:7",
        ],
    );
    assert!(
        text(&out).0.contains("already enqueued"),
        "{:?}",
        text(&out)
    );

    let (stdout, _) = text(&keel(url, &["jobs", "ls", "--queue", "emails"]));
    let header = stdout.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE") && header.contains("LAST ERROR"),
        "{stdout}"
    );
    assert!(stdout.contains(&id) && stdout.contains("available"));
    // Columns are aligned: STATE starts at the same offset in the header and the row.
    let row = stdout.lines().nth(1).unwrap();
    assert_eq!(header.find("STATE"), row.find("available"));

    let (stdout, _) = text(&keel(url, &["jobs", "show", &id]));
    assert!(
        stdout.contains("email.welcome") && stdout.contains("\"to\": \"ada@example.com\""),
        "{stdout}"
    );
    let (stdout, _) = text(&keel(url, &["jobs", "events", &id]));
    assert!(stdout.contains("enqueued"), "{stdout}");

    let out = keel(url, &["jobs", "cancel", &id]);
    assert_eq!(
        (code(&out), text(&out).0.trim().to_owned()),
        (0, format!("cancelled {id} (cancelled)"))
    );
    let out = keel(url, &["jobs", "cancel", &id]);
    assert_eq!(code(&out), 1, "a refused request exits 1");
    assert!(
        text(&out)
            .1
            .starts_with("keel: Invalid state (409): cannot cancel"),
        "{:?}",
        text(&out)
    );
    let out = keel(url, &["jobs", "retry", &id]);
    assert_eq!(code(&out), 0);

    let out = keel(url, &["queues", "ls", "--json"]);
    let queues: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(queues[0]["counts"]["available"], 1);
}

#[test]
fn stdin_enqueue_uses_the_batch_api_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let url = &server;
    let lines: String = (0..2_500)
        .map(|i| format!("{{\"payload\":{{\"n\":{i}}}}}\n"))
        .collect();
    let out = keel_stdin(url, &["enqueue", "--stdin", "bulk", "bulk.item"], &lines);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert_eq!(text(&out).0.trim(), "enqueued 2500 jobs");
    let out = keel(url, &["queues", "show", "bulk", "--json"]);
    let q: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["counts"]["available"], 2500);

    let out = keel_stdin(
        url,
        &["enqueue", "--stdin", "bulk", "bulk.item"],
        "{\"payload\":1}\n{\"payload\":2,\"priority\":5000}\n",
    );
    assert_eq!(code(&out), 1);
    assert!(
        text(&out).1.contains("line 2: /priority"),
        "{:?}",
        text(&out)
    );
    let out = keel_stdin(url, &["enqueue", "--stdin"], "not json\n");
    assert_eq!(code(&out), 2);
    assert!(text(&out).1.contains("line 1"), "{:?}", text(&out));
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let url = &server;

    let out = keel("http://127.0.0.1:1", &["queues", "ls"]);
    assert_eq!(code(&out), 3, "unreachable server");
    assert!(
        text(&out).1.contains("cannot reach http://127.0.0.1:1")
            && text(&out).1.contains("refused"),
        "{:?}",
        text(&out)
    );

    let out = keel(url, &["jobs", "show", &uuid::Uuid::now_v7().to_string()]);
    assert_eq!(code(&out), 4, "not found");
    let out = keel(url, &["queues", "show", "nope"]);
    assert_eq!(code(&out), 4);

    let out = keel(url, &["enqueue", "bad queue", "k"]);
    assert_eq!(code(&out), 1);
    assert_eq!(
        text(&out).1.trim(),
        "keel: Validation failed (422): /queue: contains ' '; allowed are A-Z a-z 0-9 . _ : -"
    );

    let out = keel(url, &["jobs", "show", "not-an-id"]);
    assert_eq!(code(&out), 2, "usage error");
    let out = keel("localhost:8470", &["queues", "ls"]);
    assert_eq!(code(&out), 2, "a URL without a scheme is a usage error");

    keel(url, &["enqueue", "q", "k"]);
    let out = keel(url, &["queues", "purge", "q", "--state", "available"]);
    assert_eq!(code(&out), 2, "purge without a terminal needs --yes");
    assert!(
        text(&out).1.contains("deletes 1 available jobs"),
        "{:?}",
        text(&out)
    );
    let out = keel(
        url,
        &["queues", "purge", "q", "--state", "available", "--yes"],
    );
    assert_eq!(
        (code(&out), text(&out).0.trim()),
        (0, "purged 1 available jobs of q")
    );
}

#[test]
fn every_subcommand_has_help_with_an_example_and_completions_exist() {
    for args in [
        vec!["serve"],
        vec!["enqueue"],
        vec!["jobs", "ls"],
        vec!["jobs", "show"],
        vec!["jobs", "events"],
        vec!["jobs", "cancel"],
        vec!["jobs", "retry"],
        vec!["queues", "ls"],
        vec!["queues", "show"],
        vec!["queues", "set"],
        vec!["queues", "pause"],
        vec!["queues", "resume"],
        vec!["queues", "replay"],
        vec!["queues", "purge"],
        vec!["dead", "ls"],
        vec!["dead", "replay"],
        vec!["completions"],
        vec!["tokens", "create"],
        vec!["tokens", "ls"],
        vec!["tokens", "rm"],
        vec!["audit"],
        vec!["schemas", "set"],
        vec!["schemas", "show"],
        vec!["schemas", "ls"],
        vec!["schemas", "rm"],
        vec!["schedules", "set"],
        vec!["schedules", "ls"],
        vec!["schedules", "show"],
        vec!["schedules", "pause"],
        vec!["schedules", "resume"],
        vec!["schedules", "rm"],
        vec!["targets"],
        vec!["bench"],
        vec!["status"],
        vec!["backup"],
        vec!["restore"],
        vec!["verify"],
        vec!["migrate"],
        vec!["export"],
        vec!["import"],
    ] {
        let mut full = args.clone();
        full.push("--help");
        let out = keel("http://127.0.0.1:1", &full);
        let (stdout, _) = text(&out);
        assert_eq!(code(&out), 0, "{full:?}");
        assert!(
            stdout.contains("Example"),
            "{full:?} has no example:\n{stdout}"
        );
    }
    let out = keel("http://127.0.0.1:1", &["--help"]);
    assert!(text(&out).0.contains("Exit codes"));
    for shell in ["bash", "zsh", "fish"] {
        let out = keel("http://127.0.0.1:1", &["completions", shell]);
        assert_eq!(code(&out), 0);
        assert!(
            text(&out).0.contains("queues"),
            "{shell} completion mentions subcommands"
        );
    }
}

#[test]
fn tokens_are_created_listed_scoped_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let url = server.base.as_str();

    // Without a token (a bare URL, so no data dir to find one in): 401, exit 1, with a hint.
    let out = keel(url, &["queues", "ls"]);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out).1.contains("Unauthorized (401)") && text(&out).1.contains("admin.token"),
        "{:?}",
        text(&out)
    );

    // The admin (found through the data dir) creates a scoped producer token.
    let out = keel(
        &server,
        &[
            "tokens",
            "create",
            "billing-api",
            "--role",
            "producer",
            "--queue",
            "billing.*",
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let secret = text(&out).0.trim().to_owned();
    assert!(secret.starts_with("keel_"), "{secret}");
    let listed = keel(&server, &["tokens", "ls"]);
    let (table, _) = text(&listed);
    assert!(
        table.contains("billing-api") && table.contains("producer") && table.contains("billing.*"),
        "{table}"
    );
    assert!(!table.contains(&secret));

    // The token enqueues in its queues and is refused elsewhere.
    let ok = keel(
        url,
        &[
            "--token",
            &secret,
            "enqueue",
            "billing.invoices",
            "invoice.send",
        ],
    );
    assert_eq!(code(&ok), 0, "{:?}", text(&ok));
    let refused = keel(url, &["--token", &secret, "enqueue", "hr.payroll", "pay"]);
    assert_eq!(code(&refused), 1);
    assert!(
        text(&refused).1.contains("Forbidden (403)"),
        "{:?}",
        text(&refused)
    );

    // Revoked: refused at once.
    let tokens: Value =
        serde_json::from_slice(&keel(&server, &["tokens", "ls", "--json"]).stdout).unwrap();
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "billing-api")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(code(&keel(&server, &["tokens", "rm", &id])), 0);
    let out = keel(
        url,
        &[
            "--token",
            &secret,
            "enqueue",
            "billing.invoices",
            "invoice.send",
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("Unauthorized (401)"));

    // The audit log shows both changes, newest first.
    let (audit, _) = text(&keel(&server, &["audit"]));
    let created = audit.find("token.created").unwrap();
    let deleted = audit.find("token.deleted").unwrap();
    assert!(deleted < created, "{audit}");
}

#[test]
fn schemas_are_set_shown_enforced_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let schema =
        r#"{"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}}"#;
    let out = keel_stdin(&server, &["schemas", "set", "email.welcome", "-"], schema);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(text(&out).0.contains("version 1"));
    let (ls, _) = text(&keel(&server, &["schemas", "ls"]));
    assert!(ls.contains("email.welcome"), "{ls}");
    let shown: Value =
        serde_json::from_slice(&keel(&server, &["schemas", "show", "email.welcome"]).stdout)
            .unwrap();
    assert_eq!(shown["required"][0], "to");

    let out = keel(
        &server,
        &["enqueue", "emails", "email.welcome", r#"{"to": 5}"#],
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("/payload/to"), "{:?}", text(&out));

    let out = keel_stdin(
        &server,
        &["schemas", "set", "k", "-"],
        r#"{"type": "nope"}"#,
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("/schema/type"), "{:?}", text(&out));

    assert_eq!(code(&keel(&server, &["schemas", "rm", "email.welcome"])), 0);
    assert_eq!(code(&keel(&server, &["schemas", "rm", "email.welcome"])), 4);
    assert_eq!(
        code(&keel(
            &server,
            &["enqueue", "emails", "email.welcome", r#"{"to": 5}"#]
        )),
        0
    );
}

#[test]
fn schedules_are_set_listed_fired_paused_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start(dir.path());
    let out = keel(
        &server,
        &[
            "schedules",
            "set",
            "daily-report",
            "--cron",
            "0 7 * * MON-FRI",
            "--timezone",
            "Europe/Berlin",
            "--queue",
            "reports",
            "--kind",
            "report.daily",
            "--payload",
            r#"{"team": "sales"}"#,
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    assert!(
        text(&out)
            .0
            .contains("set schedule daily-report (next tick 20"),
        "{:?}",
        text(&out)
    );

    let out = keel(
        &server,
        &[
            "schedules",
            "set",
            "bad",
            "--cron",
            "0 25 * * *",
            "--queue",
            "q",
            "--kind",
            "k",
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out).1.contains("/cron"), "{:?}", text(&out));
    // --cron and --every-ms exclude each other; one is required (usage error).
    let out = keel(
        &server,
        &["schedules", "set", "x", "--queue", "q", "--kind", "k"],
    );
    assert_eq!(code(&out), 2, "{:?}", text(&out));

    let out = keel(
        &server,
        &[
            "schedules",
            "set",
            "fast",
            "--every-ms",
            "1000",
            "--queue",
            "fast",
            "--kind",
            "tick",
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let fired = loop {
        let shown: Value =
            serde_json::from_slice(&keel(&server, &["--json", "schedules", "show", "fast"]).stdout)
                .unwrap();
        if shown["runs"].as_array().is_some_and(|r| !r.is_empty()) {
            break shown;
        }
        assert!(std::time::Instant::now() < deadline, "never fired: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(fired["runs"][0]["outcome"], "enqueued");
    let (shown, _) = text(&keel(&server, &["schedules", "show", "fast"]));
    assert!(
        shown.contains("every 1000 ms") && shown.contains("enqueued"),
        "{shown}"
    );

    let (ls, _) = text(&keel(&server, &["schedules", "ls"]));
    assert!(
        ls.contains("daily-report") && ls.contains("0 7 * * MON-FRI (Europe/Berlin)"),
        "{ls}"
    );
    assert!(ls.contains("fast") && ls.contains("fast/tick"), "{ls}");

    let (out, _) = text(&keel(&server, &["schedules", "pause", "fast"]));
    assert!(out.contains("paused schedule fast"), "{out}");
    let (out, _) = text(&keel(&server, &["schedules", "resume", "fast"]));
    assert!(out.contains("resumed schedule fast; next tick"), "{out}");
    assert_eq!(code(&keel(&server, &["schedules", "rm", "fast"])), 0);
    assert_eq!(code(&keel(&server, &["schedules", "rm", "fast"])), 4);
    let (audit, _) = text(&keel(&server, &["audit"]));
    assert!(
        audit.contains("schedule.deleted") && audit.contains("schedule.created"),
        "{audit}"
    );
}

#[test]
fn rate_limits_and_push_targets_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Keel::start_with(dir.path(), "127.0.0.1:0", &["--allow-private-targets"]);
    // Port 1 on loopback refuses connections: every delivery fails, the breaker counts them.
    let target = r#"{"url": "http://127.0.0.1:1/hook", "timeout_ms": 1000}"#;
    // The CLI has no flags for a whole target (headers, secret); the API sets it.
    let http = server.http(std::time::Duration::from_secs(10));
    let url = format!("{}/v1/queues/partner", server.base);
    let body = format!(r#"{{"target": {target}}}"#);
    let status = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            http.put(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    assert_eq!(status, 200);
    let out = keel(
        &server,
        &["queues", "set", "partner", "--rate-limit", "5:2"],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let (shown, _) = text(&keel(&server, &["queues", "show", "partner"]));
    assert!(shown.contains("rate limit    5 jobs/s, burst 2"), "{shown}");
    assert!(
        shown.contains("push target   http://127.0.0.1:1/hook (timeout 1000 ms)"),
        "{shown}"
    );
    let out = keel(
        &server,
        &["queues", "set", "partner", "--rate-limit", "fast"],
    );
    assert_eq!(code(&out), 2, "{:?}", text(&out));
    let out = keel(&server, &["enqueue", "partner", "partner.sync", "{}"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (targets, _) = text(&keel(&server, &["targets"]));
        let listed: Value =
            serde_json::from_slice(&keel(&server, &["--json", "targets"]).stdout).unwrap();
        if listed[0]["consecutive_failures"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(listed[0]["origin"], "http://127.0.0.1:1");
            assert_eq!(listed[0]["queues"], serde_json::json!(["partner"]));
            assert!(
                targets.contains("http://127.0.0.1:1") && targets.contains("partner"),
                "{targets}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed delivery shown: {targets}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = keel(
        &server,
        &["queues", "set", "partner", "--rate-limit", "default"],
    );
    assert_eq!(code(&out), 0);
    let (shown, _) = text(&keel(&server, &["queues", "show", "partner"]));
    assert!(!shown.contains("rate limit"), "{shown}");
}

#[test]
fn the_cli_talks_https_to_a_server_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert_pem = dir.path().join("cert.pem");
    let key_pem = dir.path().join("key.pem");
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let server = Keel::start_with(
        &data,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    let url = format!("https://{}", server.addr);
    let ca = cert_pem.to_str().unwrap();
    let with_ca = |args: &[&str]| {
        let mut full = vec!["--ca-cert", ca, "--data-dir", data.to_str().unwrap()];
        full.extend_from_slice(args);
        keel(url.as_str(), &full)
    };
    let out = with_ca(&["enqueue", "secure", "k", "{}"]);
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let (ls, _) = text(&with_ca(&["queues", "ls"]));
    assert!(ls.contains("secure"), "{ls}");
    // Without trusting the certificate the client refuses the server: unreachable (3).
    let out = keel(
        url.as_str(),
        &["--data-dir", data.to_str().unwrap(), "queues", "ls"],
    );
    assert_eq!(code(&out), 3, "{:?}", text(&out));
    // Plain HTTP to the TLS port gets nowhere either.
    let out = keel(
        server.base.as_str(),
        &["--data-dir", data.to_str().unwrap(), "queues", "ls"],
    );
    assert_ne!(code(&out), 0);
}

#[test]
fn bench_spawns_a_server_and_reports_every_scenario_against_the_baseline() {
    // The fsync and store-* scenarios write here; the bench must leave nothing behind.
    let scratch = tempfile::tempdir().unwrap();
    let out = keel(
        "http://127.0.0.1:1",
        &[
            "bench",
            "--spawn",
            "--jobs",
            "300",
            "-c",
            "8",
            "--batch-size",
            "100",
            "--lease-size",
            "50",
            "--rate",
            "200",
            "--max-secs",
            "10",
            "--scenarios",
            "floor,baseline,enqueue,batch,drain,steady,store-enqueue,store-batch,store-drain,fsync,latency,push,scale",
            "--scale-jobs",
            "2000",
            "--fsync-dir",
            scratch.path().to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by: std::collections::HashMap<&str, &Value> = reports
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["scenario"].as_str().unwrap(), r))
        .collect();
    let floor_rate = by["floor"]["jobs_per_sec"].as_f64().unwrap();
    for name in [
        "floor",
        "baseline",
        "enqueue",
        "batch",
        "drain",
        "steady",
        "store-enqueue",
        "store-batch",
        "store-drain",
        "latency",
        "push",
    ] {
        let r = by[name];
        assert_eq!(r["jobs"], 300, "{name}: {r}");
        assert_eq!(r["errors"], 0, "{name}: {r}");
        assert!(r["jobs_per_sec"].as_f64().unwrap() > 0.0, "{name}: {r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{name}: {r}"
        );
        let throughput = name != "latency";
        // The floor runs first, so it has no baseline to be stated against.
        assert_eq!(
            r["ratio_to_baseline"].as_f64().is_some(),
            throughput && name != "floor",
            "{name}: {r}"
        );
        match r["ratio_to_floor"].as_f64() {
            Some(ratio) => {
                assert!(throughput, "{name}: {r}");
                let expected = r["jobs_per_sec"].as_f64().unwrap() / floor_rate;
                assert!((ratio - expected).abs() < 1e-9, "{name}: {r}");
            }
            None => assert!(!throughput, "{name}: {r}"),
        }
    }
    assert_eq!(by["baseline"]["ratio_to_baseline"], 1.0);
    assert_eq!(by["floor"]["ratio_to_floor"], 1.0);
    assert_eq!(by["floor"]["requests"], 300);
    // fsync: 300 syncs back to back, then 300 paced; no HTTP, so no ratio of its own, but the
    // latency scenario after it is stated against its p50.
    let fsync = by["fsync"];
    assert_eq!(fsync["jobs"], 300, "{fsync}");
    assert_eq!(fsync["requests"], 600, "{fsync}");
    assert!(fsync["ratio_to_baseline"].is_null(), "{fsync}");
    assert!(fsync["ratio_to_floor"].is_null(), "{fsync}");
    let fsync_p50 = fsync["p50_ms"].as_f64().unwrap();
    assert!(fsync_p50 > 0.0, "{fsync}");
    let latency_p50 = by["latency"]["p50_ms"].as_f64().unwrap();
    let ratio = by["latency"]["ratio_to_fsync"].as_f64().unwrap();
    assert!((ratio - latency_p50 / fsync_p50).abs() < 1e-9, "{ratio}");
    assert!(by["enqueue"]["ratio_to_fsync"].is_null());
    assert_eq!(by["batch"]["requests"], 3);
    // The store-* scenarios make the calls their HTTP twins make requests: 300 single enqueues,
    // 3 batches of 100, and 6 leases of 50 each followed by one completing call.
    assert_eq!(by["store-enqueue"]["requests"], 300);
    assert_eq!(by["store-batch"]["requests"], 3);
    assert_eq!(by["store-drain"]["requests"], 12);
    assert_eq!(by["drain"]["requests"], 12);
    let left: Vec<_> = std::fs::read_dir(scratch.path()).unwrap().collect();
    assert!(left.is_empty(), "the bench left {left:?}");
    // Push: keel delivered every job to the bench's own target, each with one request.
    assert_eq!(by["push"]["requests"], 300, "{}", by["push"]);
    assert!(by["push"]["skipped"].is_null());
    // Scale: the jobs were queued, the server restarted, and it came back holding all of them.
    let scale = &by["scale"]["scale"];
    assert_eq!(scale["queued"], 2000, "{}", by["scale"]);
    assert!(scale["rss_mib"].as_f64().unwrap() > 1.0, "{scale}");
    assert!(scale["peak_rss_mib"].as_f64().unwrap() >= scale["rss_mib"].as_f64().unwrap());
    assert!(scale["restart_secs"].as_f64().unwrap() > 0.0, "{scale}");
}

/// The `floor` scenario's server answers plain HTTP and ends when the bench that started it
/// closes its stdin (or dies), so it never outlives the bench.
#[test]
fn the_floor_server_answers_and_ends_with_its_stdin() {
    use std::io::{BufRead, BufReader, Read};
    use std::time::Duration;
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--serve-floor"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("floor listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(b"GET /anything HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");

    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the floor server outlived its stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_shows_queues_with_depths_and_rates_on_one_screen() {
    let dir = tempfile::tempdir().unwrap();
    let k = Keel::start(dir.path());
    for n in 0..3 {
        let out = keel(
            &k,
            &["enqueue", "status-q", "k", &format!("{{\"n\": {n}}}")],
        );
        assert_eq!(code(&out), 0, "{:?}", text(&out));
    }
    // Jobs arrive while status measures: its rate must see them.
    let status = std::thread::spawn({
        let (url, data_dir) = (k.base.clone(), k.data_dir.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_keel"))
                .args(["status", "--json", "--interval-ms", "1500"])
                .env("KEEL_URL", url)
                .env("KEEL_DATA_DIR", data_dir)
                .env_remove("KEEL_TOKEN")
                .output()
                .unwrap()
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    for n in 0..6 {
        let out = keel(
            &k,
            &["enqueue", "status-q", "k", &format!("{{\"m\": {n}}}")],
        );
        assert_eq!(code(&out), 0);
    }
    let out = status.join().unwrap();
    assert_eq!(code(&out), 0, "{:?}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["store_up"], true);
    let q = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "status-q")
        .unwrap();
    assert_eq!(q["counts"]["available"], 9);
    let rate = q["rates"]["enqueued_per_s"].as_f64().unwrap();
    assert!((1.0..=6.0 / 1.5 + 0.01).contains(&rate), "rate {rate}");

    // The human form: one table with the queue, its depth and the rate columns.
    let out = keel(&k, &["status", "--interval-ms", "0"]);
    let (stdout, _) = text(&out);
    assert_eq!(code(&out), 0);
    assert!(stdout.contains("storage ok"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("status-q")).unwrap();
    assert!(row.split_whitespace().nth(2) == Some("9"), "{row}");
    assert!(!stdout.contains("IN/S"), "no rates asked for: {stdout}");
}
