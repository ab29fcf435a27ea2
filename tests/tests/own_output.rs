//! Owning the output, end to end through moto and the emulator: images delivered to your own
//! bucket by a key pattern, one SNS event per finished row, and an incremental re-run of a
//! re-uploaded dataset that renders only the rows that changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::aws;
use integration_tests::datasets::job_id_of;
use integration_tests::stack::{Stack, StackOptions};
use serde_json::{Value, json};
use shared::aws::sns::SnsRowEvents;
use shared::domain::{Job, JobStatus};
use shared::ports::ChunkLedger;

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

/// A blog CSV whose row 3 has a title with nothing to make a file name of.
fn blog_with_an_unnameable_row(rows: usize) -> Vec<u8> {
    let mut s = String::from("title,author,publishDate\n");
    for i in 0..rows {
        let title = if i == 3 {
            "!!!".to_owned()
        } else {
            format!("Post {i}: Ünïcode & more")
        };
        s.push_str(&format!(
            "\"{title}\",Author {i},2026-01-{:02}\n",
            i % 28 + 1
        ));
    }
    s.into_bytes()
}

async fn listed(stack: &Stack, bucket: &str) -> anyhow::Result<Vec<String>> {
    let out = stack.s3.list_objects_v2().bucket(bucket).send().await?;
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    Ok(keys)
}

async fn all_events(stack: &Stack, queue: &str) -> anyhow::Result<Vec<Value>> {
    let mut events = Vec::new();
    loop {
        let got = aws::receive(&stack.sqs, queue, 10, 1).await?;
        if got.is_empty() {
            return Ok(events);
        }
        for message in got {
            events.push(serde_json::from_str(message.body().unwrap_or("null"))?);
            stack
                .sqs
                .delete_message()
                .queue_url(queue)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await?;
        }
    }
}

#[tokio::test]
async fn images_are_delivered_to_your_bucket_by_pattern_and_each_row_publishes_one_event()
-> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    let cfg = aws::aws_config().await;
    let sns = aws::sns(&cfg);
    let topic = aws::fresh_topic(&sns, "row-events").await?;
    let subscriber = aws::fresh_queue(&stack.sqs, "row-subscriber").await?;
    aws::subscribe_queue(&sns, &stack.sqs, &topic, &subscriber).await?;
    // The stack-wide setting (ROW_EVENTS_TOPIC_ARN) of the function that runs the steps.
    stack.functions.ingest.pipeline.outputs.row_events =
        Arc::new(SnsRowEvents::new(sns.clone(), topic.clone()));
    let delivered = aws::fresh_bucket(&stack.s3, "delivered").await?;

    let key = "uploads/tmpl_blog_card/cards.csv";
    let sidecar = json!({"delivery": {
        "bucket": delivered,
        "prefix": "cards/",
        "keyPattern": "{templateId}/{slug(title)}-{row}.{ext}"
    }});
    stack
        .upload(&format!("{key}.job.json"), serde_json::to_vec(&sidecar)?)
        .await?;
    stack.upload(key, blog_with_an_unnameable_row(150)).await?;
    let answer = stack.ingest(key).await?;
    let job = stack
        .run_until_done(&job_id_of(&answer)?, Duration::from_secs(120))
        .await?;
    assert_eq!(job.status, JobStatus::Completed);

    // 149 copies, named by the pattern, with the image's content type.
    let keys = listed(&stack, &delivered).await?;
    assert_eq!(keys.len(), 149, "{keys:?}");
    assert!(
        keys.contains(&"cards/tmpl_blog_card/post-7-unicode-more-7.png".to_owned()),
        "{keys:?}"
    );
    let head = stack
        .s3
        .head_object()
        .bucket(&delivered)
        .key("cards/tmpl_blog_card/post-7-unicode-more-7.png")
        .send()
        .await?;
    assert_eq!(head.content_type(), Some("image/png"));

    // The manifest says where each image went, or why it did not.
    let lines: Vec<Value> = stack
        .get_text("results/tmpl_blog_card/cards.csv.results.jsonl")
        .await?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 150);
    for line in &lines {
        let row = line["row"].as_u64().unwrap_or(0);
        if row == 3 {
            assert_eq!(line["deliveredKey"], Value::Null, "{line}");
            assert!(
                line["deliveryError"]
                    .as_str()
                    .unwrap_or("")
                    .contains("title"),
                "{line}"
            );
        } else {
            let key = line["deliveredKey"].as_str().unwrap_or("");
            assert!(keys.iter().any(|k| k == key), "{line}");
            assert!(key.ends_with(&format!("-{row}.png")), "{line}");
        }
    }
    let csv = stack
        .get_text("results/tmpl_blog_card/cards.csv.results.csv")
        .await?;
    assert!(csv.starts_with(
        "row,status,url,error_code,error_message,attempts,delivered_key,delivery_error,"
    ));

    // One event per row, with its input, status, URL and delivered key.
    let events = all_events(&stack, &subscriber).await?;
    assert_eq!(events.len(), 150);
    let ids: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["eventId"].as_str())
        .collect();
    assert_eq!(ids.len(), 150, "no duplicates");
    let seventh = events
        .iter()
        .find(|e| e["row"] == 7)
        .ok_or_else(|| anyhow::anyhow!("no event for row 7"))?;
    assert_eq!(seventh["type"], "row.finished");
    assert_eq!(seventh["status"], "rendered");
    assert_eq!(seventh["input"]["title"], "Post 7: Ünïcode & more");
    assert_eq!(seventh["delivered"]["bucket"], delivered.as_str());
    assert_eq!(
        seventh["delivered"]["key"],
        "cards/tmpl_blog_card/post-7-unicode-more-7.png"
    );
    assert!(
        seventh["imageUrl"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1"))
    );

    // Duplicated batch.completed and redelivered steps: nothing copied or published again.
    let copies_before = listed(&stack, &delivered).await?;
    for chunk in stack.store.chunks_of_job(&job.id).await? {
        if let Some(batch) = &chunk.batch_id {
            stack.pipeline.complete_batch(batch, None).await?;
        }
        let again = stack
            .functions
            .ingest
            .pipeline
            .deliver_chunk(&job.id, chunk.key)
            .await?;
        assert!(again.events > 0);
    }
    stack.drain_once().await?;
    assert!(all_events(&stack, &subscriber).await?.is_empty());
    assert_eq!(listed(&stack, &delivered).await?, copies_before);
    Ok(())
}
