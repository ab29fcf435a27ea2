//! Owning the output, end to end through moto and the emulator: an incremental re-run of a
//! re-uploaded dataset renders only the rows that changed.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::datasets::job_id_of;
use integration_tests::stack::{Stack, StackOptions};
use serde_json::Value;
use shared::domain::{Job, JobStatus};

const KEY: &str = "uploads/tmpl_blog_card/blog-posts.csv";
const MANIFEST: &str = "results/tmpl_blog_card/blog-posts.csv.results.jsonl";

fn blog_posts() -> anyhow::Result<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/blog-posts.csv");
    Ok(std::fs::read_to_string(path)?)
}

/// The data rows (numbered from 0, as the manifest numbers them) whose title is changed.
fn changed(row: u64) -> bool {
    row % 20 == 5
}

/// examples/blog-posts.csv with the titles of data rows 5, 25, 45, … (ten rows) changed.
fn with_ten_titles_changed(csv: &str) -> String {
    let mut out = String::new();
    for (line_no, line) in csv.lines().enumerate() {
        let row = line_no as u64; // line 0 is the header
        if line_no > 0 && changed(row - 1) {
            out.push_str(&format!(
                "Rewritten post {row},{}",
                line.split_once(',').map_or("", |(_, rest)| rest)
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

async fn run(stack: &Stack, csv: String) -> anyhow::Result<Job> {
    stack.upload(KEY, csv.into_bytes()).await?;
    let answer = stack.ingest(KEY).await?;
    stack
        .run_until_done(&job_id_of(&answer)?, Duration::from_secs(120))
        .await
}

async fn manifest(stack: &Stack) -> anyhow::Result<Vec<Value>> {
    let text = stack.get_text(MANIFEST).await?;
    Ok(text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn items_sent(stack: &Stack) -> u64 {
    stack
        .emulator
        .ledger()
        .batches_accepted
        .iter()
        .map(|b| u64::from(b.total_items))
        .sum()
}

#[tokio::test]
async fn a_re_upload_with_ten_rows_changed_renders_ten_and_reuses_190() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let original = blog_posts()?;
    let first = run(&stack, original.clone()).await?;
    assert_eq!(first.status, JobStatus::Completed);
    assert_eq!((first.counters.rendered, first.counters.reused), (200, 0));
    assert!(!first.spec.incremental, "a first upload renders everything");
    let first_urls: BTreeMap<u64, String> = manifest(&stack)
        .await?
        .iter()
        .map(|l| {
            (
                l["row"].as_u64().unwrap_or(0),
                l["url"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let sent_before = items_sent(&stack);
    assert_eq!(sent_before, 200);

    let second = run(&stack, with_ten_titles_changed(&original)).await?;
    assert!(second.spec.incremental);
    assert_eq!(second.status, JobStatus::Completed);
    let c = second.counters;
    assert_eq!(
        (c.rows, c.rendered, c.reused, c.failed, c.in_flight()),
        (200, 10, 190, 0, 0)
    );
    assert_eq!(
        items_sent(&stack) - sent_before,
        10,
        "only the changed rows reach Pictify"
    );

    let lines = manifest(&stack).await?;
    assert_eq!(lines.len(), 200, "the manifest still lists every row");
    for line in &lines {
        let row = line["row"].as_u64().unwrap_or(0);
        let url = line["url"].as_str().unwrap_or_default();
        if changed(row) {
            assert_eq!(line["status"], "rendered", "{line}");
            assert_eq!(line["attempts"], 1, "{line}");
            assert_ne!(url, first_urls[&row], "row {row} has a new image");
            assert!(
                line["fields"]["title"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Rewritten")
            );
        } else {
            assert_eq!(line["status"], "reused", "{line}");
            assert_eq!(line["attempts"], 0, "{line}");
            assert_eq!(url, first_urls[&row], "row {row} carries its existing URL");
        }
    }
    let csv = stack
        .get_text("results/tmpl_blog_card/blog-posts.csv.results.csv")
        .await?;
    assert_eq!(csv.lines().filter(|l| l.contains(",reused,")).count(), 190);
    Ok(())
}

#[tokio::test]
async fn render_all_in_the_sidecar_renders_every_row_of_a_re_upload() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let original = blog_posts()?;
    run(&stack, original.clone()).await?;
    stack
        .upload(
            &format!("{KEY}.job.json"),
            br#"{"renderAll": true}"#.to_vec(),
        )
        .await?;
    let second = run(&stack, with_ten_titles_changed(&original)).await?;
    assert!(!second.spec.incremental);
    assert_eq!((second.counters.rendered, second.counters.reused), (200, 0));
    assert_eq!(items_sent(&stack), 400);
    Ok(())
}
