//! End to end through moto and the emulator: S3 upload → ingest → SQS → submitter → Pictify →
//! signed webhooks over HTTP → DynamoDB → results manifest.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::datasets::{blog_csv, job_id_of};
use integration_tests::stack::{Stack, StackOptions};
use pictify_emulator::Faults;
use shared::domain::JobStatus;
use shared::pipeline::{ReopenOutcome, Selection};
use shared::ports::ChunkLedger;
use shared::settings::Settings;

#[tokio::test]
async fn a_250_row_csv_renders_in_three_batches_each_accepted_once() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let key = "uploads/tmpl_blog_card/blog posts+1.csv";
    stack.upload(key, blog_csv(250)).await?;

    let answer = stack.ingest(key).await?;
    let job = stack
        .run_until_done(&job_id_of(&answer)?, Duration::from_secs(120))
        .await?;

    assert_eq!(job.status, JobStatus::Completed);
    let c = job.counters;
    assert_eq!(
        (c.rows, c.rendered, c.failed, c.rejected, c.in_flight()),
        (250, 250, 0, 0, 0)
    );
    let ledger = stack.emulator.ledger();
    assert_eq!(ledger.batches_accepted.len(), 3);
    for chunk in stack.store.chunks_of_job(&job.id).await? {
        assert_eq!(
            ledger.accepted_with_key(&chunk.idempotency_key()),
            1,
            "chunk {}",
            chunk.key.label()
        );
    }
    let manifest = stack
        .get_text("results/tmpl_blog_card/blog posts+1.csv.results.jsonl")
        .await?;
    let lines: Vec<serde_json::Value> = manifest
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 250);
    assert!(lines.iter().all(|l| {
        l["status"] == "rendered"
            && l["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://127.0.0.1"))
    }));
    assert_eq!(lines[249]["fields"]["title"], "Post 249, a story");
    let csv = stack
        .get_text("results/tmpl_blog_card/blog posts+1.csv.results.csv")
        .await?;
    assert_eq!(csv.lines().count(), 251, "header + one line per row");
    assert!(
        stack
            .alerts
            .alerts()
            .iter()
            .any(|a| a.kind == "job_finished")
    );
    Ok(())
}

#[tokio::test]
async fn with_item_failures_duplicates_and_a_429_every_row_still_ends_once() -> anyhow::Result<()> {
    let faults = Faults {
        item_failures: BTreeMap::from([
            ("IMAGE_FETCH_FAILED".into(), 0.04),
            ("RENDER_TIMEOUT".into(), 0.02),
            ("INVALID_VARIABLE".into(), 0.03),
            ("EXPRESSION_ERROR".into(), 0.01),
        ]),
        webhook_duplicate_rate: 0.3,
        submit_429_rate: 0.3,
        // Rates roll per idempotency key, which changes with every (randomly named) bucket.
        submit_429_first: 1,
        ..Faults::default()
    };
    let stack = Stack::start(StackOptions {
        faults,
        seed: 11,
        ..StackOptions::default()
    })
    .await?;
    let key = "uploads/tmpl_blog_card/faulty.csv";
    stack.upload(key, blog_csv(250)).await?;

    let answer = stack.ingest(key).await?;
    let job = stack
        .run_until_done(&job_id_of(&answer)?, Duration::from_secs(180))
        .await?;

    let c = job.counters;
    assert_eq!(c.in_flight(), 0);
    assert_eq!(
        c.rows,
        c.rejected + c.rendered + c.failed,
        "the invariant holds"
    );
    assert!(c.failed > 0 && c.rendered > 200, "{c:?}");
    let ledger = stack.emulator.ledger();
    assert!(
        ledger.rejected_with(429) >= 1,
        "a 429 was injected and survived"
    );
    assert!(
        ledger.deliveries.duplicated > 0,
        "duplicates were delivered"
    );
    // Each chunk (initial or retry) reached Pictify exactly once.
    let chunks = stack.store.chunks_of_job(&job.id).await?;
    for chunk in &chunks {
        assert_eq!(
            ledger.accepted_with_key(&chunk.idempotency_key()),
            1,
            "chunk {}",
            chunk.key.label()
        );
    }
    assert!(
        chunks.iter().any(|c| c.key.attempt > 0),
        "retryable failures were retried in a new chunk"
    );
    // Permanent failures are never retried.
    for chunk in chunks.iter().filter(|c| c.key.attempt > 0) {
        let parent = chunks
            .iter()
            .find(|p| p.key.seq == chunk.key.seq && p.key.attempt + 1 == chunk.key.attempt)
            .unwrap();
        let outcome = parent.outcome.as_ref().unwrap();
        assert_eq!(outcome.retried.len(), chunk.rows.len());
    }
    // One alert per batch whose failure rate was over 5%, none for the others.
    assert_eq!(
        stack.alerts_of_kind("batch_high_failure_rate"),
        stack.batches_over_threshold()
    );
    // The manifest shows every row's final state once.
    let manifest = stack
        .get_text("results/tmpl_blog_card/faulty.csv.results.jsonl")
        .await?;
    let statuses: Vec<String> = manifest
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(statuses.len(), 250);
    assert_eq!(
        statuses.iter().filter(|s| *s == "failed").count() as u64,
        c.failed
    );
    assert!(
        statuses.iter().all(|s| s == "rendered" || s == "failed"),
        "{statuses:?}"
    );
    Ok(())
}

/// The cost basis: AWS requests for a 1,000-row job, by service and operation. `render.completed`
/// must cost exactly one DynamoDB write and no read.
#[tokio::test]
async fn a_1000_row_job_costs_about_one_dynamodb_request_per_row() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let key = "uploads/tmpl_blog_card/thousand.csv";
    stack.upload(key, blog_csv(1000)).await?;
    stack.requests.reset();

    let answer = stack.ingest(key).await?;
    let job = stack
        .run_until_done(&job_id_of(&answer)?, Duration::from_secs(300))
        .await?;
    assert_eq!(
        (job.status, job.counters.rendered),
        (JobStatus::Completed, 1000)
    );

    let counts = stack.requests.snapshot();
    println!("AWS requests for a 1,000-row job (service, operation, count):");
    for ((service, operation), n) in &counts {
        println!("  {service:10} {operation:28} {n:6}");
    }
    let puts = counts
        .get(&("DynamoDB".to_owned(), "PutItem".to_owned()))
        .copied()
        .unwrap_or(0);
    // 1,000 render records + 10 chunks + 10 batch index items + the job.
    assert!((1000..=1030).contains(&puts), "PutItem {puts}");
    let dynamo = stack.requests.total_for("DynamoDB");
    assert!(dynamo <= 1200, "DynamoDB requests {dynamo} for 1,000 rows");
    Ok(())
}

/// Webhooks lost in transit: the scheduled reconciler polls the batches left `submitted` and the
/// job still completes; rows whose `render.completed` never came are visible as such.
#[tokio::test]
async fn with_lost_webhooks_the_reconciler_still_finishes_the_job() -> anyhow::Result<()> {
    let faults = Faults {
        webhook_drop_rate: 0.3,
        ..Faults::default()
    };
    let stack = Stack::start(StackOptions {
        faults,
        seed: 3,
        ..StackOptions::default()
    })
    .await?;
    let key = "uploads/tmpl_blog_card/lossy.csv";
    stack.upload(key, blog_csv(300)).await?;
    let job = job_id_of(&stack.ingest(key).await?)?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let current = stack.job(&job).await?;
        if current.status.is_terminal() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not done: {current:?}"
        );
        if stack.drain_once().await? == 0 {
            // The scheduled function, with "stuck" meaning anything already submitted.
            let event = lambda_runtime::LambdaEvent::new(
                serde_json::json!({ "source": "aws.events" }),
                lambda_runtime::Context::default(),
            );
            let mut pipeline = stack.pipeline.clone();
            pipeline.settings.stuck_after = Duration::ZERO;
            reconciler::function_handler(&pipeline, event)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let done = stack.job(&job).await?;
    assert_eq!(done.counters.in_flight(), 0);
    assert_eq!(
        done.counters.rows,
        done.counters.rendered + done.counters.failed
    );
    assert!(stack.emulator.ledger().deliveries.dropped > 0);
    let manifest = stack
        .get_text("results/tmpl_blog_card/lossy.csv.results.jsonl")
        .await?;
    assert_eq!(manifest.lines().count(), 300);
    Ok(())
}

/// `retry-failed` on AWS: a finished job's retryable failures go out again as new chunks (one
/// transaction reopens the job), permanent ones stay, and the job finishes again with a manifest
/// that still has one line per row.
#[tokio::test]
async fn retry_failed_reopens_a_finished_job_for_its_retryable_failures_only() -> anyhow::Result<()>
{
    let faults = Faults {
        item_failures: BTreeMap::from([
            ("IMAGE_FETCH_FAILED".into(), 0.10),
            ("INVALID_VARIABLE".into(), 0.05),
        ]),
        ..Faults::default()
    };
    let stack = Stack::start(StackOptions {
        faults,
        seed: 5,
        settings: Settings {
            max_attempts: 1,
            ..StackOptions::default().settings
        },
        ..StackOptions::default()
    })
    .await?;
    let key = "uploads/tmpl_blog_card/retry.csv";
    stack.upload(key, blog_csv(300)).await?;
    let id = job_id_of(&stack.ingest(key).await?)?;
    let first = stack.run_until_done(&id, Duration::from_secs(120)).await?;
    let permanent = stack
        .get_text("results/tmpl_blog_card/retry.csv.results.jsonl")
        .await?
        .lines()
        .filter(|l| l.contains("\"errorCode\":\"INVALID_VARIABLE\""))
        .count() as u64;
    assert!(
        first.counters.failed > permanent && permanent > 0,
        "{:?}",
        first.counters
    );

    // The image host is back.
    stack.emulator.set_faults(Faults::default());
    let outcome = stack
        .pipeline
        .reopen(&id, Selection::RetryableFailures)
        .await?;
    let retried = first.counters.failed - permanent;
    assert!(
        matches!(outcome, ReopenOutcome::Reopened { rows, .. } if rows == retried),
        "{outcome:?}"
    );
    let again = stack.run_until_done(&id, Duration::from_secs(120)).await?;

    let c = again.counters;
    assert_eq!(
        (c.failed, c.rendered, c.in_flight()),
        (permanent, 300 - permanent, 0)
    );
    assert_eq!(again.reopened, 1);
    let manifest = stack
        .get_text("results/tmpl_blog_card/retry.csv.results.jsonl")
        .await?;
    assert_eq!(manifest.lines().count(), 300);
    assert_eq!(
        manifest.matches("\"status\":\"failed\"").count() as u64,
        permanent
    );
    // Every chunk, old and new, reached Pictify once.
    let ledger = stack.emulator.ledger();
    for chunk in stack.store.chunks_of_job(&id).await? {
        assert_eq!(ledger.accepted_with_key(&chunk.idempotency_key()), 1);
    }
    Ok(())
}

/// Pictify stops delivering to a subscription it paused, or failed after repeated failed
/// deliveries; every event it carried is lost while it is. The scheduled reconciler reads the
/// subscriptions to the stack's webhook URL and alerts once per one that is failed, paused or
/// missing for an event the stack needs.
#[tokio::test]
async fn the_reconciler_alerts_once_per_webhook_subscription_that_is_failed_paused_or_missing()
-> anyhow::Result<()> {
    use shared::pictify::wire::CreateSubscription;
    use shared::pictify::{PictifyClient, PictifyConfig};

    let stack = Stack::start(StackOptions {
        // The emulator's retries (1 min … 24 h) run out in about a second.
        webhook_retry_scale: 0.000_01,
        ..StackOptions::default()
    })
    .await?;
    let pictify = PictifyClient::new(PictifyConfig {
        base_url: stack.emulator.base_url(),
        api_key: shared::secret::Secret::new(integration_tests::stack::TEST_API_KEY),
        ..PictifyConfig::default()
    })?;
    // A subscription whose secret the stack never stored: every delivery is refused (401), and
    // Pictify fails it once its retries run out.
    let stray = pictify
        .create_subscription(&CreateSubscription {
            event: "render.completed".into(),
            target_url: stack.webhook_url.clone(),
            platform: None,
            filters: None,
        })
        .await?;
    // The stack's (preset) subscription for `event`.
    let uid_for = |event: &'static str| {
        let pictify = &pictify;
        async move {
            let all = pictify.list_subscriptions().await?;
            anyhow::Ok(
                all.into_iter()
                    .find(|s| s.event == event)
                    .map(|s| s.uid)
                    .unwrap_or_default(),
            )
        }
    };
    // The operator paused render.failed's.
    let render_failed = uid_for("render.failed").await?;
    let paused = reqwest::Client::new()
        .put(format!(
            "{}/webhook-subscriptions/{render_failed}",
            stack.emulator.base_url()
        ))
        .bearer_auth(integration_tests::stack::TEST_API_KEY)
        .json(&serde_json::json!({ "status": "paused" }))
        .send()
        .await?;
    anyhow::ensure!(paused.status().is_success(), "pause: {}", paused.status());

    let key = "uploads/tmpl_blog_card/subs.csv";
    stack.upload(key, blog_csv(20)).await?;
    let job = job_id_of(&stack.ingest(key).await?)?;
    let done = stack.run_until_done(&job, Duration::from_secs(60)).await?;
    assert_eq!(
        done.counters.rendered, 20,
        "the stack's own subscriptions still deliver"
    );
    // Someone deleted batch.completed's: "missing".
    let batch_completed = uid_for("batch.completed").await?;
    pictify.delete_subscription(&batch_completed).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while pictify
        .list_subscriptions()
        .await?
        .iter()
        .all(|s| s.uid != stray.uid || s.status.as_deref() != Some("failed"))
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the stray subscription never failed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut pipeline = stack.pipeline.clone();
    pipeline.settings.webhook_url = Some(stack.webhook_url.clone());
    let pass = || {
        let pipeline = pipeline.clone();
        async move {
            let event = lambda_runtime::LambdaEvent::new(
                serde_json::json!({ "source": "aws.events" }),
                lambda_runtime::Context::default(),
            );
            reconciler::function_handler(&pipeline, event)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    let first = pass().await?;
    assert_eq!(first["unhealthySubscriptions"], 3, "{first}");
    let alerts: Vec<String> = stack
        .alerts
        .alerts()
        .into_iter()
        .filter(|a| a.kind == "webhook_subscription_unhealthy")
        .map(|a| a.message)
        .collect();
    assert_eq!(alerts.len(), 3, "{alerts:#?}");
    assert!(
        alerts
            .iter()
            .any(|m| m.contains("no subscription sending batch.completed"))
    );
    assert!(
        alerts
            .iter()
            .any(|m| m.contains(&stray.uid) && m.contains("is failed"))
    );
    assert!(
        alerts
            .iter()
            .any(|m| m.contains(&render_failed) && m.contains("is paused"))
    );
    // Still unhealthy on the next pass (the gauge says so), but alerted once.
    let second = pass().await?;
    assert_eq!(second["unhealthySubscriptions"], 3);
    assert_eq!(stack.alerts_of_kind("webhook_subscription_unhealthy"), 3);
    Ok(())
}
