//! Submits whose outcome is unknown are never blindly resent: the chunk stays `submitting`, waits
//! out the grace period, and is resent with the SAME idempotency key, so Pictify replays its first
//! answer. The emulator's ledger proves each chunk became exactly one batch.

use std::time::Duration;

use integration_tests::stack::{Stack, StackOptions, TEST_API_KEY};
use pictify_emulator::Faults;
use shared::domain::{ChunkState, JobId, JobStatus};
use shared::pictify::wire::BatchRenderRequest;
use shared::pictify::{PictifyClient, PictifyConfig};
use shared::pipeline::SubmitOutcome;
use shared::ports::{BeginSubmit, ChunkLedger};
use shared::secret::Secret;

fn csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("title,author,publishDate\n");
    for i in 0..rows {
        s.push_str(&format!("Post {i},Author {i},2026-02-01\n"));
    }
    s.into_bytes()
}

async fn ingest_one_chunk(stack: &Stack, key: &str) -> anyhow::Result<JobId> {
    stack.upload(key, csv(5)).await?;
    let answer = stack.ingest(key).await?;
    JobId::parse(answer["outcomes"][0]["job"].as_str().unwrap_or_default())
        .map_err(anyhow::Error::msg)
}

#[tokio::test]
async fn a_submit_accepted_but_answered_too_late_becomes_one_batch() -> anyhow::Result<()> {
    let faults = Faults {
        submit_late_answer_rate: 1.0,
        late_answer_delay_ms: 3_000,
        ..Faults::default()
    };
    let options = StackOptions {
        faults,
        client_timeout: Duration::from_millis(1_000),
        ..StackOptions::default()
    };
    let stack = Stack::start(options).await?;
    let job = ingest_one_chunk(&stack, "uploads/tmpl_blog_card/late.csv").await?;

    // The first answer comes too late: the client times out and retries with the SAME key, which
    // Pictify answers from its idempotency store instead of creating a second batch.
    let done = stack.run_until_done(&job, Duration::from_secs(60)).await?;
    assert_eq!(done.status, JobStatus::Completed);
    let chunk = stack.store.chunks_of_job(&job).await?.remove(0);
    assert_eq!(chunk.state, ChunkState::Completed);
    let ledger = stack.emulator.ledger();
    assert_eq!(ledger.batches_accepted.len(), 1);
    assert_eq!(ledger.accepted_with_key(&chunk.idempotency_key()), 1);
    assert!(
        ledger.submit_requests >= 2 && ledger.replays >= 1,
        "{ledger:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_crash_between_the_call_and_the_write_is_resolved_by_the_idempotency_key()
-> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let job = ingest_one_chunk(&stack, "uploads/tmpl_blog_card/crash.csv").await?;
    let chunk = stack.store.chunks_of_job(&job).await?.remove(0);

    // A submitter records its intent, calls Pictify, then dies before recording the batch id.
    let now = chrono::Utc::now().timestamp();
    let grace = stack.pipeline.settings.submit_grace;
    assert!(matches!(
        stack
            .store
            .begin_submit(&job, chunk.key, now, grace)
            .await?,
        BeginSubmit::Proceed { .. }
    ));
    let payload = stack.pipeline.chunk_payload(&job, chunk.key).await?;
    let client = PictifyClient::new(
        PictifyConfig::new(Secret::new(TEST_API_KEY)).with_base_url(stack.emulator.base_url()),
    )?;
    let request = BatchRenderRequest {
        variable_sets: payload.variable_sets.clone(),
        format: Some(payload.format),
        quality: None,
        concurrency: None,
        layout: None,
        layouts: None,
    };
    let first = client
        .render_batch(&payload.template_id, &request, &chunk.idempotency_key())
        .await?;

    // The message is redelivered at once: inside the grace period nothing is sent.
    let message = stack.pipeline.chunk_message(&job, chunk.key).await?;
    assert!(matches!(
        stack.pipeline.submit(&message).await?,
        SubmitOutcome::RetryLater(_)
    ));
    assert_eq!(stack.emulator.ledger().submit_requests, 1);

    // After the grace period the resend replays the first answer: the same batch, billed once.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    assert_eq!(
        stack.pipeline.submit(&message).await?,
        SubmitOutcome::Submitted {
            batch_id: first.batch_id.clone()
        }
    );
    let done = stack.run_until_done(&job, Duration::from_secs(60)).await?;
    assert_eq!(done.counters.rendered, 5);
    assert_eq!(stack.emulator.ledger().batches_accepted.len(), 1);
    Ok(())
}
