//! Controlling a local run from another process, as a user would: `cancel`, `pause` through the
//! abort rule, `resume`, `status`, with the built binary and the in-process emulator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
    command.stdin(Stdio::null());
    command
}

/// A blog-card CSV with `rows` rows, written into `dir`.
fn blog_csv(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("posts.csv");
    std::fs::write(&path, integration_tests::datasets::blog_csv(rows)).unwrap();
    path
}

fn run_args(dataset: &Path, out: &Path) -> Command {
    let mut command = bin();
    command
        .arg("run")
        .arg(dataset)
        .args(["--template", "tmpl_blog_card", "--no-render", "--out"])
        .arg(out);
    command
}

fn cli(args: &[&str], out: &Path) -> Output {
    bin().args(args).arg("--state").arg(out).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The results' rows by status.
fn statuses(out: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        *counts
            .entry(row["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// Batches the emulator accepted (the run writes its ledger at the end).
fn accepted(out: &Path) -> usize {
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(".state/ledger.json")).unwrap()).unwrap();
    ledger["batchesAccepted"].as_array().unwrap().len()
}

/// Waits until the run's store shows `rendered` rows at least.
fn wait_rendered(out: &Path, rows: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let db = out.join(".state/jobs.db");
        let rendered = rusqlite::Connection::open(&db).ok().and_then(|db| {
            db.query_row("SELECT body FROM jobs", [], |r| r.get::<_, String>(0))
                .ok()
        });
        let rendered = rendered
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|job| job["counters"]["rendered"].as_u64())
            .unwrap_or(0);
        if rendered >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} rows not rendered in time"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_local_run_cancelled_from_another_process_accounts_for_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = blog_csv(dir.path(), 400);
    // 8 chunks of 50, one batch at a time, 10 ms an item: about 4 s of rendering.
    let child = run_args(&dataset, &out)
        .args(["--max-batch-items", "50", "--concurrency", "1"])
        .args(["--emulator-faults", r#"{"renderLatencyMs":10}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_rendered(&out, 50);

    let cancel = cli(&["cancel", "--reason", "wrong template"], &out);
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel));
    assert!(text(&cancel).contains("cancelled"), "{}", text(&cancel));

    let run = child.wait_with_output().unwrap();
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(
        text(&run).contains("cancelled: wrong template"),
        "{}",
        text(&run)
    );
    let counts = statuses(&out);
    let (rendered, cancelled) = (counts["rendered"], counts["cancelled"]);
    assert_eq!(rendered + cancelled, 400, "{counts:?}");
    assert!(rendered >= 50 && cancelled >= 100, "{counts:?}");
    assert!(
        accepted(&out) < 8,
        "chunks after the cancel were never sent"
    );

    let status = cli(&["status"], &out);
    assert!(
        text(&status).contains("CANCELLED: wrong template"),
        "{}",
        text(&status)
    );
    // Idempotent: a second cancel changes nothing and says so.
    let again = cli(&["cancel"], &out);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("already cancelled"),
        "{}",
        text(&again)
    );
    assert_eq!(statuses(&out), counts);
}

#[test]
fn the_abort_rule_pauses_a_local_run_and_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = blog_csv(dir.path(), 200);
    let faults = r#"{"itemFailures":{"INVALID_VARIABLE":0.5}}"#;
    let flags = [
        "--max-batch-items",
        "20",
        "--concurrency",
        "1",
        "--max-failure-rate",
        "0.1",
        "--abort-after-rows",
        "20",
        "--emulator-faults",
        faults,
    ];
    let paused = run_args(&dataset, &out).args(flags).output().unwrap();
    assert_eq!(paused.status.code(), Some(4), "{}", text(&paused));
    assert!(
        text(&paused).contains("maxFailureRate"),
        "{}",
        text(&paused)
    );
    let status = cli(&["status"], &out);
    assert!(
        text(&status).contains("PAUSED: aborted:"),
        "{}",
        text(&status)
    );

    // Only a paused job can be resumed; a second resume says nothing changed.
    let resume = cli(&["resume"], &out);
    assert_eq!(resume.status.code(), Some(0), "{}", text(&resume));
    let again = cli(&["resume"], &out);
    assert!(text(&again).contains("nothing changed"), "{}", text(&again));

    // The rule fired once: the resumed run goes to the end despite the same failure rate.
    let resumed = run_args(&dataset, &out)
        .args(flags)
        .arg("--resume")
        .output()
        .unwrap();
    assert_eq!(resumed.status.code(), Some(2), "{}", text(&resumed));
    let counts = statuses(&out);
    assert_eq!(counts["rendered"] + counts["failed"], 200, "{counts:?}");
    assert!(counts["failed"] > 20, "{counts:?}");
}

#[test]
fn controlling_a_finished_job_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = blog_csv(dir.path(), 5);
    let done = run_args(&dataset, &out).output().unwrap();
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let pause = cli(&["pause"], &out);
    assert_eq!(pause.status.code(), Some(3), "{}", text(&pause));
    assert!(text(&pause).contains("is completed"), "{}", text(&pause));
    let limit = cli(&["concurrency", "--batches", "0"], &out);
    assert_eq!(limit.status.code(), Some(3), "{}", text(&limit));
    assert!(text(&limit).contains("--batches `0`"), "{}", text(&limit));
    let limit = cli(&["concurrency", "--batches", "2"], &out);
    assert_eq!(limit.status.code(), Some(3), "{}", text(&limit));
    let cancel = cli(&["cancel"], &out);
    assert_eq!(cancel.status.code(), Some(0), "{}", text(&cancel));
    assert!(
        text(&cancel).contains("nothing left to cancel"),
        "{}",
        text(&cancel)
    );
}
