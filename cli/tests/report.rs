//! `pictify-batch report <job>` on a deployed stack (moto + the emulator): the gallery of a job
//! finished by the real handlers, built from its manifest in S3 with each image's Pictify URL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::stack::{Stack, StackOptions};
use pictify_emulator::Faults;
use serde_json::Value;

#[tokio::test]
async fn a_deployed_jobs_gallery_holds_every_row_with_its_pictify_url_or_error() {
    let faults = Faults {
        item_failures: BTreeMap::from([("INVALID_VARIABLE".to_owned(), 0.2)]),
        ..Faults::default()
    };
    let stack = Stack::start(StackOptions {
        faults,
        seed: 15,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let job = stack.start_blog_job("gallery", 40).await.unwrap();
    let done = stack
        .run_until_done(&job, Duration::from_secs(120))
        .await
        .unwrap();
    let c = done.counters;
    assert_eq!((c.rows, c.rendered + c.failed), (40, 40));
    assert!(c.failed > 0, "the faults failed no row: {c:?}");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let command = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
        command
            .args(["report", job.as_str(), "--out"])
            .arg(&out)
            .env("TABLE_NAME", &stack.table)
            .stdin(Stdio::null());
        command
    };
    let output = tokio::task::spawn_blocking(move || {
        let mut command = command;
        command.output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("40 rows · {} rendered", c.rendered)),
        "{stdout}"
    );

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let start = html.find(r#"id="gallery-data">"#).unwrap() + r#"id="gallery-data">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let cards: Vec<Value> = serde_json::from_str(&html[start..end].replace(r"<\/", "</")).unwrap();
    assert_eq!(cards.len(), 40);
    let base = stack.emulator.base_url();
    for card in &cards {
        match card["status"].as_str().unwrap() {
            "rendered" => assert!(card["image"].as_str().unwrap().starts_with(&base), "{card}"),
            "failed" => {
                assert!(card["image"].is_null(), "{card}");
                assert!(
                    card["error"].as_str().unwrap().contains("INVALID_VARIABLE"),
                    "{card}"
                );
            }
            other => panic!("unexpected status {other}: {card}"),
        }
    }
    let failed = cards.iter().filter(|c| c["status"] == "failed").count();
    assert_eq!(failed as u64, c.failed);
}
