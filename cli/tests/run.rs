//! End-to-end tests of `pictify-batch run`: the built binary, the in-process emulator, temp dirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
    command.stdin(Stdio::null());
    command
}

/// A blog-card CSV with `rows` rows, written into `dir`.
fn blog_csv(dir: &Path, rows: usize) -> PathBuf {
    let mut text = String::from("title,author,publishDate\n");
    for i in 0..rows {
        text.push_str(&format!(
            "Post number {i},Author {i},2026-01-{:02}\n",
            i % 28 + 1
        ));
    }
    let path = dir.join("posts.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(dataset: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .arg("run")
        .arg(dataset)
        .args(["--template", "tmpl_blog_card", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ledger(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join(".state/ledger.json")).unwrap()).unwrap()
}

/// Idempotency keys of the batches the emulator accepted, one entry per accepted batch.
fn accepted_keys(ledger: &Value) -> Vec<String> {
    ledger["batchesAccepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["idempotencyKey"].as_str().unwrap().to_owned())
        .collect()
}

fn results_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("results.csv"))
        .unwrap()
        .lines()
        .count()
        - 1
}

#[test]
fn twelve_rows_become_twelve_images_of_the_template_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = run(&blog_csv(dir.path(), 12), &out, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let images: Vec<_> = std::fs::read_dir(out.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(images.len(), 12);
    for image in &images {
        let decoded = image::open(image).unwrap();
        assert_eq!(
            (decoded.width(), decoded.height()),
            (1200, 630),
            "{}",
            image.display()
        );
    }
    assert!(out.join("images/00003-post-number-3.png").exists());
    assert_eq!(results_lines(&out), 12);
    assert!(stderr(&output).contains("rendered 12"));
}

#[test]
fn each_chunk_is_accepted_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = run(
        &blog_csv(dir.path(), 250),
        &out,
        &["--no-render", "--concurrency", "3"],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let mut keys = accepted_keys(&ledger(&out));
    let total = keys.len();
    keys.dedup();
    assert_eq!((total, keys.len()), (3, 3));
    assert_eq!(results_lines(&out), 250);
}

/// Completed chunks' idempotency keys, read from the run's SQLite state.
fn completed_chunk_keys(out: &Path) -> Vec<String> {
    let Ok(db) = rusqlite::Connection::open(out.join(".state/jobs.db")) else {
        return Vec::new();
    };
    let Ok(mut stmt) = db.prepare("SELECT body FROM chunks") else {
        return Vec::new();
    };
    let bodies: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    bodies
        .iter()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .filter(|c| c["state"] == "completed")
        .map(|c| {
            let (seq, attempt) = (
                c["key"]["seq"].as_u64().unwrap(),
                c["key"]["attempt"].as_u64().unwrap(),
            );
            let label = if attempt == 0 {
                format!("c{seq:05}")
            } else {
                format!("c{seq:05}-r{attempt}")
            };
            format!("{}-{label}", c["job"].as_str().unwrap())
        })
        .collect()
}

#[test]
fn a_killed_run_resumes_without_rendering_finished_chunks_again() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dataset = blog_csv(dir.path(), 250); // chunks of 100, 100 and 50 rows
    let slow = [
        "--no-render",
        "--concurrency",
        "1",
        "--emulator-faults",
        r#"{"renderLatencyMs":100}"#,
    ];
    let mut child = bin()
        .arg("run")
        .arg(&dataset)
        .args(["--template", "tmpl_blog_card", "--out"])
        .arg(&out)
        .args(slow)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished_before = loop {
        let done = completed_chunk_keys(&out);
        if !done.is_empty() {
            break done;
        }
        assert!(Instant::now() < deadline, "no chunk completed in time");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        finished_before.len() < 3,
        "the run finished before it could be killed"
    );

    let output = run(&dataset, &out, &["--no-render", "--resume"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let keys = accepted_keys(&ledger(&out));
    for key in &keys {
        assert_eq!(
            keys.iter().filter(|k| *k == key).count(),
            1,
            "{key} accepted twice"
        );
        assert!(!finished_before.contains(key), "{key} was rendered again");
    }
    assert_eq!(results_lines(&out), 250);
    assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 250);
}

fn assert_usage_error(output: &Output, needle: &str, out: &Path) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line expected: {text}");
    assert!(text.contains(needle), "{text}");
    assert!(
        !out.join("images").exists(),
        "nothing may render on bad input"
    );
}

#[test]
fn a_missing_dataset_is_named_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    assert_usage_error(
        &run(&dir.path().join("nope.csv"), &out, &[]),
        "dataset not found",
        &out,
    );
}

#[test]
fn an_unknown_format_is_named_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let path = dir.path().join("posts.txt");
    std::fs::write(&path, "title\nx\n").unwrap();
    assert_usage_error(
        &run(&path, &out, &[]),
        "unknown dataset format (.txt)",
        &out,
    );
}

#[test]
fn an_unknown_template_is_named_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = bin()
        .arg("run")
        .arg(blog_csv(dir.path(), 2))
        .args(["--template", "tmpl_nope", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_usage_error(&output, "unknown template `tmpl_nope`", &out);
}

#[test]
fn mapping_a_missing_column_is_named_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = run(&blog_csv(dir.path(), 2), &out, &["--map", "Headline=title"]);
    assert_usage_error(&output, "--map names column \"Headline\"", &out);
}

#[test]
fn a_rejected_row_exits_2_and_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let path = dir.path().join("posts.csv");
    std::fs::write(
        &path,
        "title,author,publishDate\nOne,Ann,2026-01-01\n,Bob,2026-01-02\n",
    )
    .unwrap();
    let output = run(&path, &out, &["--no-render", "--require", "title"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("row 1: rejected"),
        "{}",
        stderr(&output)
    );
    assert_eq!(results_lines(&out), 2);
}

/// `--api-key` mode end to end, with a separately started emulator standing in for Pictify:
/// webhook subscriptions are created through the API and deliveries verified with their secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_mode_subscribes_its_webhooks_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let config = pictify_emulator::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("emulator"),
        webhook_retry_scale: 0.01,
        // Real images: the run's image QA holds a stand-in's placeholders to be blank.
        ..pictify_emulator::Config::default()
    };
    let emulator = pictify_emulator::start(config).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dataset, out) = (blog_csv(dir.path(), 5), dir.path().join("out"));
    let mut command = bin();
    command
        .arg("run")
        .arg(&dataset)
        .args(["--template", "tmpl_blog_card", "--out"])
        .arg(&out);
    command.args([
        "--api-key",
        "pk_test_emulator",
        "--base-url",
        &emulator.base_url(),
    ]);
    command.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--public-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(results_lines(&out), 5);
    assert_eq!(emulator.ledger().deliveries.failed, 0);
    emulator.shutdown().await;
}

/// A product whose image is missing fails (IMAGE_FETCH_FAILED, retryable); once the file is
/// there, `retry-failed` reopens the job and `run --resume` renders just that row.
#[test]
fn retry_failed_then_resume_renders_a_row_whose_image_came_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/images/product-00.png");
    std::fs::copy(&sample, images.join("here.png")).unwrap();
    let dataset = dir.path().join("products.csv");
    std::fs::write(
        &dataset,
        "productName,price,imageUrl\nLamp,10.00,images/here.png\nChair,20.00,images/late.png\n",
    )
    .unwrap();
    let run_products = |extra: &[&str]| {
        bin()
            .arg("run")
            .arg(&dataset)
            .args([
                "--template",
                "tmpl_product_card",
                "--file-column",
                "imageUrl",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run_products(&[]);
    assert_eq!(first.status.code(), Some(2), "{}", stderr(&first));
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(results.contains("IMAGE_FETCH_FAILED"), "{results}");

    std::fs::copy(&sample, images.join("late.png")).unwrap();
    let retry = bin()
        .arg("retry-failed")
        .arg("--state")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    let said = String::from_utf8_lossy(&retry.stdout);
    assert!(said.contains("1 rows re-queued in 1 new chunks"), "{said}");

    let resumed = run_products(&["--resume"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(
        results.lines().filter(|l| l.contains(",rendered,")).count(),
        2,
        "{results}"
    );
    // The resumed run submitted only the reopened chunk.
    assert_eq!(accepted_keys(&ledger(&out)).len(), 1);

    // Nothing is left to retry.
    let again = bin()
        .arg("retry-failed")
        .arg("--state")
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing re-queued"));
}

#[test]
fn retry_failed_on_a_missing_state_dir_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = bin()
        .arg("retry-failed")
        .arg("--state")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(stderr(&output).contains("holds no local run state"));
}
