//! Each Lambda handler driven by the sample events in `events/`, against moto and the emulator.

use std::time::Duration;

use integration_tests::stack::{Stack, StackOptions, load_event};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use shared::domain::{
    Chunk, ChunkKey, ChunkMessage, Counters, InlinePayload, Job, JobId, JobSpec, JobStatus,
    ObjectRef,
};
use shared::ports::{ChunkLedger, JobLedger, RenderLog};
use shared::signing::signature_header;

/// The documented test secret the webhook events in `events/` are signed with.
const EVENTS_SECRET: &str = "whsec_test_pictify_batch";

/// A webhook event file as a lambda_http request, re-signed now (stored signatures are stale by design).
fn webhook_request(file: &str, secret: &str, tamper: bool) -> anyhow::Result<lambda_http::Request> {
    let event = load_event(file)?;
    let mut body = event["body"].as_str().unwrap_or_default().to_owned();
    let signature = signature_header(secret, chrono::Utc::now().timestamp(), body.as_bytes());
    if tamper {
        body = body.replace("Alice", "Mallory");
    }
    let mut request = http::Request::builder().method("POST").uri("/");
    for (name, value) in event["headers"].as_object().into_iter().flatten() {
        if name != "x-pictify-signature" {
            request = request.header(name, value.as_str().unwrap_or_default());
        }
    }
    Ok(request
        .header("x-pictify-signature", signature)
        .body(lambda_http::Body::Text(body))?)
}

async fn stack_with_events_secret() -> anyhow::Result<Stack> {
    let mut stack = Stack::start(StackOptions::default()).await?;
    stack
        .pipeline
        .webhook_secrets
        .push(shared::secret::Secret::new(EVENTS_SECRET));
    Ok(stack)
}

async fn status_of(stack: &Stack, file: &str, tamper: bool) -> anyhow::Result<u16> {
    let response = webhook::function_handler(
        &stack.pipeline,
        webhook_request(file, EVENTS_SECRET, tamper)?,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn ingest_handles_the_sample_put_event_with_an_encoded_key() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    // The sample's key decodes to a space and a plus sign.
    let key = "uploads/tmpl_blog_card/blog posts + drafts.csv";
    stack
        .upload(
            key,
            b"title,author,publishDate\nHello,Ann,2026-01-01\n".to_vec(),
        )
        .await?;
    let mut event = load_event("s3-put.json")?;
    event["Records"][0]["s3"]["bucket"]["name"] = json!(stack.bucket);
    event["Records"][0]["s3"]["object"]["eTag"] = json!("");
    let answer =
        ingest::function_handler(&stack.pipeline, LambdaEvent::new(event, Context::default()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(answer["outcomes"][0]["counters"]["rows"], 1, "{answer}");
    Ok(())
}

#[tokio::test]
async fn ingest_skips_the_s3_test_event() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let answer = ingest::function_handler(
        &stack.pipeline,
        LambdaEvent::new(load_event("s3-test-event.json")?, Context::default()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(answer["skipped"], 1);
    Ok(())
}

#[tokio::test]
async fn submitter_submits_the_sample_chunk_once_even_when_redelivered() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let event_json = load_event("sqs-chunk.json")?;
    let message: ChunkMessage = serde_json::from_str(
        event_json["Records"][0]["body"]
            .as_str()
            .unwrap_or_default(),
    )?;
    seed_job(&stack, &message.job, message.key).await?;

    for _ in 0..2 {
        let event = serde_json::from_value(event_json.clone())?;
        let response = submitter::function_handler(
            &stack.pipeline,
            &stack.queue,
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(response.batch_item_failures.is_empty());
    }
    assert_eq!(
        stack
            .emulator
            .ledger()
            .accepted_with_key(&message.key.idempotency_key(&message.job)),
        1
    );
    Ok(())
}

#[tokio::test]
async fn submitter_near_its_deadline_leaves_the_rest_of_its_batch_on_the_queue()
-> anyhow::Result<()> {
    // Every submit's answer takes 1.5 s; the function stops starting messages 2 s before its
    // deadline, which is 3.2 s away: the first message is submitted, the other two go back.
    // (A fourth message is kept for the end.)
    let stack = Stack::start(StackOptions {
        faults: pictify_emulator::Faults {
            submit_late_answer_rate: 1.0,
            late_answer_delay_ms: 1_500,
            ..Default::default()
        },
        ..StackOptions::default()
    })
    .await?;
    let mut pipeline = stack.pipeline.clone();
    pipeline.settings.submit_margin = Duration::from_secs(2);
    let sample = load_event("sqs-chunk.json")?;
    let first: ChunkMessage =
        serde_json::from_str(sample["Records"][0]["body"].as_str().unwrap_or_default())?;
    seed_job(&stack, &first.job, first.key).await?;
    let mut records = Vec::new();
    let mut keys = Vec::new();
    for seq in 1..=4 {
        let mut message = first.clone();
        message.key = ChunkKey::initial(seq);
        if let Some(payload) = &message.payload {
            let mut payload = payload.decode()?;
            payload.key = message.key;
            message.payload = Some(InlinePayload::encode(&payload)?);
        }
        stack
            .store
            .put_chunks(&[Chunk::new(first.job.clone(), message.key, vec![0, 1])])
            .await?;
        let mut record = sample["Records"][0].clone();
        record["messageId"] = json!(format!("message-{seq}"));
        record["body"] = json!(serde_json::to_string(&message)?);
        records.push(record);
        keys.push(message.key.idempotency_key(&first.job));
    }
    let late = records
        .pop()
        .ok_or_else(|| anyhow::anyhow!("a fourth message"))?;
    let event = serde_json::from_value(json!({ "Records": records }))?;
    let mut context = Context::default();
    context.deadline = u64::try_from(chrono::Utc::now().timestamp_millis())? + 3_200;

    let response =
        submitter::function_handler(&pipeline, &stack.queue, LambdaEvent::new(event, context))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let returned: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(returned, ["message-2", "message-3"]);
    let ledger = stack.emulator.ledger();
    let accepted: Vec<_> = keys.iter().map(|k| ledger.accepted_with_key(k)).collect();
    assert_eq!(accepted, [1, 0, 0, 0], "only the first message was started");

    // Whatever the time left, the first message of a batch runs: a function timeout set below
    // the margin still makes progress instead of bouncing every message into the DLQ.
    let mut past = Context::default();
    past.deadline = u64::try_from(chrono::Utc::now().timestamp_millis())? - 1_000;
    let event = serde_json::from_value(json!({ "Records": [late] }))?;
    let response =
        submitter::function_handler(&pipeline, &stack.queue, LambdaEvent::new(event, past))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(stack.emulator.ledger().accepted_with_key(&keys[3]), 1);
    Ok(())
}

#[tokio::test]
async fn submitter_reports_an_unreadable_message_as_a_failure_for_the_dlq() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let mut event_json = load_event("sqs-chunk.json")?;
    event_json["Records"][0]["body"] = json!("{not json");
    let response = submitter::function_handler(
        &stack.pipeline,
        &stack.queue,
        LambdaEvent::new(serde_json::from_value(event_json)?, Context::default()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(response.batch_item_failures.len(), 1);
    Ok(())
}

#[tokio::test]
async fn webhook_accepts_the_signed_sample_events() -> anyhow::Result<()> {
    let stack = stack_with_events_secret().await?;
    assert_eq!(
        status_of(&stack, "webhook-render-completed.json", false).await?,
        200
    );
    assert_eq!(
        status_of(&stack, "webhook-render-failed.json", false).await?,
        200
    );
    // batch_0001 is no batch of ours: acknowledged and kept as an orphan.
    assert_eq!(
        status_of(&stack, "webhook-batch-completed.json", false).await?,
        200
    );

    let data: Value = serde_json::from_str(
        load_event("webhook-render-completed.json")?["body"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let fp = shared::dataset::fingerprint(
        "tmpl_blog_card",
        data["data"]["variables"].as_object().unwrap(),
    );
    let renders = stack.store.renders(std::slice::from_ref(&fp)).await?;
    assert_eq!(
        renders[&fp].url,
        "http://127.0.0.1:4010/images/img_0001.png"
    );
    Ok(())
}

#[tokio::test]
async fn webhook_refuses_a_tampered_body_and_changes_nothing() -> anyhow::Result<()> {
    let stack = stack_with_events_secret().await?;
    assert_eq!(
        status_of(&stack, "webhook-render-completed.json", true).await?,
        401
    );
    let data: Value = serde_json::from_str(
        load_event("webhook-render-completed.json")?["body"]
            .as_str()
            .unwrap_or_default(),
    )?;
    let fp = shared::dataset::fingerprint(
        "tmpl_blog_card",
        data["data"]["variables"].as_object().unwrap(),
    );
    assert!(stack.store.renders(&[fp]).await?.is_empty());
    Ok(())
}

/// A job the reconciler cannot repair fails the invocation, so `ReconcilerErrorsAlarm` sees it;
/// the pass still goes through every other job.
#[tokio::test]
async fn reconciler_fails_its_invocation_when_a_job_cannot_be_repaired() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let job = JobId::parse("job_0000000000000000000000000000feed").map_err(anyhow::Error::msg)?;
    seed_job(&stack, &job, ChunkKey::initial(1)).await?;
    // A finisher died and the upload is gone since: the manifest cannot be written.
    assert!(
        stack
            .store
            .transition_job(&job, JobStatus::Running, JobStatus::Finishing)
            .await?
    );
    // Run as the operator's CLI does, with no step queue: the pass writes the manifest itself.
    let mut pipeline = stack.pipeline.clone();
    pipeline.queue = std::sync::Arc::new(shared::aws::sqs::SqsWorkQueue::new(
        stack.sqs.clone(),
        stack.queue_url.clone(),
    ));
    let event = LambdaEvent::new(json!({ "source": "aws.events" }), Context::default());
    let error = reconciler::function_handler(&pipeline, event)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("the pass reports the job it could not finish"))?;
    let diagnostic = lambda_runtime::Diagnostic::from(error);
    assert_eq!(diagnostic.error_type, "ReconcileErrors");
    assert!(
        diagnostic.error_message.contains("1 job(s)"),
        "{}",
        diagnostic.error_message
    );
    assert_eq!(stack.job(&job).await?.status, JobStatus::Finishing);
    Ok(())
}

/// Records the job and chunk the sample SQS event refers to, with its payload stored.
async fn seed_job(stack: &Stack, job: &JobId, key: ChunkKey) -> anyhow::Result<()> {
    let job_item = Job {
        id: job.clone(),
        source: ObjectRef {
            bucket: stack.bucket.clone(),
            key: "uploads/tmpl_blog_card/sample.csv".into(),
        },
        source_version: "v1".into(),
        spec: JobSpec {
            template_id: "tmpl_blog_card".into(),
            format: Default::default(),
            quality: None,
            concurrency: None,
            mapping: Default::default(),
            required: vec![],
            max_in_flight: None,
            abort: None,
            template_variables: None,
            incremental: false,
            delivery: None,
        },
        status: JobStatus::Running,
        counters: Counters {
            rows: 2,
            chunks: 1,
            ..Default::default()
        },
        error: None,
        rejected_sample: vec![],
        created_at: 0,
        ingested_at: Some(0),
        completed_at: None,
        render_ms_total: 0,
        manifest: None,
        reopened: 0,
        checkpoint: None,
        progress_at: None,
        reopen_plan: None,
        manifest_checkpoint: None,
        control: Default::default(),
    };
    stack.store.create_job(&job_item).await?;
    stack
        .store
        .put_chunks(&[Chunk::new(job.clone(), key, vec![0, 1])])
        .await?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
