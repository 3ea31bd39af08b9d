//! The admin UI in a real browser: runs `ui-tests/ui.test.mjs` (node's test runner, Playwright
//! driving Debian's chromium) against this build's `keel` binary. It needs Node.js, the
//! `chromium` package and `npm ci` in `ui-tests/`; `KEEL_BROWSER_TESTS` names that directory
//! (`.ci/run` prepares all three and sets it). Without it the test says it skipped.

use std::process::Command;

#[test]
fn admin_ui_in_a_real_browser() {
    let Some(dir) = std::env::var("KEEL_BROWSER_TESTS")
        .ok()
        .filter(|d| !d.is_empty())
    else {
        eprintln!(
            "SKIPPED admin_ui_in_a_real_browser: set KEEL_BROWSER_TESTS to the ui-tests directory \
             after `npm ci` there, with Debian's chromium installed (.ci/run does both)"
        );
        return;
    };
    let status = Command::new("node")
        .args(["--test", "--test-concurrency=1", "ui.test.mjs"])
        .current_dir(&dir)
        .env("KEEL_BIN", env!("CARGO_BIN_EXE_keel"))
        .status();
    match status {
        Ok(s) => assert!(
            s.success(),
            "the browser tests failed (their output is above)"
        ),
        Err(e) => panic!("could not run node in {dir}: {e}"),
    }
}
