//! Jobs larger than one Lambda invocation, against moto and the emulator: an upload read in
//! pieces (a hand-off every N rows, or at the invocation's deadline) makes exactly the chunks one
//! pass makes, redelivered events and continuations duplicate nothing, an ingest whose invocation
//! died is carried on by the reconciler; the manifest is written off the webhook's request, in
//! parts once it outgrows one, and a writer that died is replaced.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use integration_tests::datasets::{awkward_csv, job_id_of};
use integration_tests::stack::{Stack, StackOptions};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::Value;
use shared::domain::{ChunkPayload, JobId, JobStatus, ObjectRef};
use shared::layout::{chunk_payload_ref, sidecar_of};
use shared::pipeline::Pipeline;
use shared::ports::{ChunkLedger, ObjectStore};

const TEMPLATE_DIR: &str = "uploads/tmpl_blog_card/";

/// Uploads the dataset with a sidecar that makes `title` required (so some rows are rejected).
async fn upload_with_sidecar(stack: &Stack, name: &str, data: Vec<u8>) -> anyhow::Result<String> {
    let key = format!("{TEMPLATE_DIR}{name}");
    let sidecar = sidecar_of(&ObjectRef {
        bucket: stack.bucket.clone(),
        key: key.clone(),
    });
    stack
        .upload(&sidecar.key, br#"{"required": ["title"]}"#.to_vec())
        .await?;
    stack.upload(&key, data).await?;
    Ok(key)
}

/// The stack's pipeline with other ingest settings (as another deployment's environment).
fn with_ingest(stack: &Stack, handoff_rows: Option<u64>, stall: Duration) -> Pipeline {
    let mut pipeline = stack.pipeline.clone();
    pipeline.settings.ingest_handoff_rows = handoff_rows;
    pipeline.settings.step_stall = stall;
    pipeline
}

async fn ingest_event(
    stack: &Stack,
    pipeline: &Pipeline,
    key: &str,
    context: Context,
) -> anyhow::Result<Value> {
    ingest::function_handler(pipeline, LambdaEvent::new(stack.s3_event(key)?, context))
        .await
        .map_err(|e| anyhow::anyhow!("ingest: {e}"))
}

/// Feeds the step queue to the ingest handler until it is empty; returns the answers.
async fn drain_steps(
    stack: &Stack,
    pipeline: &Pipeline,
    context: &Context,
) -> anyhow::Result<Vec<Value>> {
    let mut answers = Vec::new();
    while let Some(answer) = stack.drain_steps_once(pipeline, context.clone()).await? {
        answers.push(answer);
        anyhow::ensure!(answers.len() < 1_000, "the ingest never ends");
    }
    Ok(answers)
}

/// One field of every line of a JSON Lines manifest, in order.
fn column(jsonl: &str, key: &str) -> anyhow::Result<Vec<Value>> {
    jsonl
        .lines()
        .map(|line| Ok(serde_json::from_str::<Value>(line)?[key].take()))
        .collect()
}

/// The rows 0..n as a manifest column.
fn row_numbers(n: u64) -> Vec<Value> {
    (0..n).map(Value::from).collect()
}

/// Empties the step queue: the worker that took its messages died, and SQS gave up on them.
async fn lose_steps(stack: &Stack) -> anyhow::Result<()> {
    stack
        .sqs
        .purge_queue()
        .queue_url(&stack.step_queue_url)
        .send()
        .await?;
    Ok(())
}

/// Drives the work queue alone until the job is `finishing`: its manifest then waits on the
/// step queue, which this leaves alone.
async fn until_finishing(stack: &Stack, job: &JobId) -> anyhow::Result<()> {
    until_finishing_within(stack, job, Duration::from_secs(120)).await
}

async fn until_finishing_within(stack: &Stack, job: &JobId, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let current = stack.job(job).await?;
        if current.status == JobStatus::Finishing {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not finishing: {current:?}"
        );
        if stack.drain_work_once().await? == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn handed_off(answer: &Value) -> bool {
    answer["outcomes"][0].get("handedOff").is_some()
}

/// Every chunk of a job as stored for the submitter: (label, rows, variable sets).
async fn stored_chunks(
    stack: &Stack,
    job: &JobId,
) -> anyhow::Result<Vec<(String, Vec<u64>, Value)>> {
    let objects = shared::aws::s3::S3ObjectStore::new(stack.s3.clone());
    let mut chunks = Vec::new();
    for chunk in stack.store.chunks_of_job(job).await? {
        let label = chunk.key.label();
        let at = chunk_payload_ref(&stack.bucket, job, &label, &stack.pipeline.settings);
        let bytes = objects
            .get_bytes(&at)
            .await?
            .with_context(|| format!("payload of {label}"))?;
        let payload: ChunkPayload = serde_json::from_slice(&bytes)?;
        chunks.push((
            label,
            payload.rows,
            serde_json::to_value(payload.variable_sets)?,
        ));
    }
    Ok(chunks)
}

/// A Lambda context whose deadline has passed: every piece hands on at its first safe point.
fn expired_context() -> Context {
    let mut context = Context::default();
    context.deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    context
}

#[tokio::test]
async fn an_upload_read_in_twelve_pieces_makes_the_chunks_of_one_pass() -> anyhow::Result<()> {
    // `scripts/scale` runs 50,000.
    let rows: u64 = std::env::var("LARGE_JOB_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let stack = Stack::start(StackOptions::default()).await?;
    let data = awkward_csv(rows as usize);
    let whole_key = upload_with_sidecar(&stack, "whole.csv", data.clone()).await?;
    let pieces_key = upload_with_sidecar(&stack, "pieces.csv", data).await?;

    let whole = job_id_of(&stack.ingest(&whole_key).await?)?;
    let pieced = with_ingest(&stack, Some(rows / 12), Duration::from_secs(960));
    let first = ingest_event(&stack, &pieced, &pieces_key, Context::default()).await?;
    anyhow::ensure!(handed_off(&first), "the first piece hands on: {first}");
    let job = job_id_of(&first)?;
    // S3 redelivers the upload event while the continuation waits: it carries on from the
    // checkpoint too, and both continuations then find the work done or further on.
    let redelivered = ingest_event(&stack, &pieced, &pieces_key, Context::default()).await?;
    anyhow::ensure!(handed_off(&redelivered), "{redelivered}");
    let answers = drain_steps(&stack, &pieced, &Context::default()).await?;
    // Every answer but the late continuation's did a piece of the work.
    let worked = |a: &&Value| handed_off(a) || a["outcomes"][0].get("counters").is_some();
    let pieces = 2 + answers.iter().filter(worked).count();
    assert!(
        pieces >= 12,
        "{rows} rows in pieces of {}: {pieces} pieces",
        rows / 12
    );
    assert!(
        answers
            .iter()
            .any(|a| a["outcomes"][0].get("duplicate").is_some()),
        "one continuation came after the end"
    );

    let (a, b) = (stack.job(&whole).await?, stack.job(&job).await?);
    assert_eq!(
        (a.status, b.status),
        (JobStatus::Running, JobStatus::Running)
    );
    assert_eq!(
        (b.counters.rows, b.counters.rejected, b.counters.chunks),
        (rows, rows / 10, (rows - rows / 10).div_ceil(100))
    );
    assert_eq!(a.counters, b.counters);
    assert_eq!(a.rejected_sample, b.rejected_sample);
    assert_eq!(
        stored_chunks(&stack, &whole).await?,
        stored_chunks(&stack, &job).await?
    );
    assert_eq!(b.checkpoint.map(|c| c.pieces), Some(pieces as u32));
    eprintln!(
        "{rows} rows: one pass and {pieces} pieces made the same {} chunks",
        b.counters.chunks
    );
    Ok(())
}

#[tokio::test]
async fn an_ingest_at_its_deadline_hands_on_and_the_job_completes() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let key = upload_with_sidecar(&stack, "late.csv", awkward_csv(1_500)).await?;
    let first = ingest_event(&stack, &stack.pipeline, &key, expired_context()).await?;
    anyhow::ensure!(
        handed_off(&first),
        "past its deadline, ingest hands on: {first}"
    );
    let answers = drain_steps(&stack, &stack.pipeline, &expired_context()).await?;
    assert!(answers.len() >= 10, "{} continuations", answers.len());

    let job = stack
        .run_until_done(&job_id_of(&first)?, Duration::from_secs(120))
        .await?;
    let c = job.counters;
    assert_eq!(
        (
            job.status,
            c.rows,
            c.rendered,
            c.rejected,
            c.failed,
            c.in_flight()
        ),
        (JobStatus::Partial, 1_500, 1_350, 150, 0, 0)
    );
    let manifest = stack
        .get_text(&job.manifest.context("manifest")?.jsonl.key)
        .await?;
    let rows = column(&manifest, "row")?;
    assert_eq!(
        rows,
        row_numbers(1_500),
        "one manifest line per row, in order"
    );
    Ok(())
}

#[tokio::test]
async fn the_reconciler_carries_on_an_ingest_whose_invocation_died() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let key = upload_with_sidecar(&stack, "dies.csv", awkward_csv(2_500)).await?;
    let pieced = with_ingest(&stack, Some(1_000), Duration::from_secs(960));
    let first = ingest_event(&stack, &pieced, &key, Context::default()).await?;
    let job = job_id_of(&first)?;
    // The invocation that took the continuation died, and SQS gave up on it.
    lose_steps(&stack).await?;
    let report = pieced.reconcile(Duration::from_secs(3600)).await?;
    assert_eq!(
        report.ingests_resumed, 0,
        "a fresh checkpoint is not a stall"
    );
    let impatient = with_ingest(&stack, Some(1_000), Duration::ZERO);
    assert_eq!(
        impatient
            .reconcile(Duration::from_secs(3600))
            .await?
            .ingests_resumed,
        1
    );
    drain_steps(&stack, &pieced, &Context::default()).await?;

    let stored = stack.job(&job).await?;
    assert_eq!(
        (
            stored.status,
            stored.counters.rows,
            stored.counters.rejected,
            stored.counters.chunks
        ),
        (JobStatus::Running, 2_500, 250, 23)
    );
    Ok(())
}

/// A CSV whose rows carry `bytes` of text each (an `excerpt` column the template ignores).
fn wide_csv(rows: usize, bytes: usize) -> Vec<u8> {
    let mut s = String::from("title,author,publishDate,excerpt\n");
    let filler = "x".repeat(bytes);
    for i in 0..rows {
        s.push_str(&format!(
            "Post {i},Author {i},2026-01-{:02},{filler}\n",
            i % 28 + 1
        ));
    }
    s.into_bytes()
}

#[tokio::test]
async fn a_manifest_larger_than_one_part_is_written_off_the_webhook_in_parts() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions::default()).await?;
    let key = format!("{TEMPLATE_DIR}wide.csv");
    // ~10 MB in each manifest file: two parts of a multipart upload (moto refuses a part
    // under 5 MiB but the last, as S3 does).
    stack.upload(&key, wide_csv(2_000, 5_000)).await?;
    let job = job_id_of(&stack.ingest(&key).await?)?;
    // The batches' webhooks only queue the manifest: the job waits in `finishing` until the
    // step queue's worker writes it.
    until_finishing(&stack, &job).await?;
    assert!(
        stack.job(&job).await?.manifest.is_none(),
        "no manifest on the request path"
    );
    let done = stack.run_until_done(&job, Duration::from_secs(120)).await?;
    assert_eq!(
        (done.status, done.counters.rendered),
        (JobStatus::Completed, 2_000)
    );
    let location = done.manifest.context("manifest")?;
    let jsonl = stack.get_text(&location.jsonl.key).await?;
    assert!(
        jsonl.len() > 9 * 1024 * 1024,
        "{} bytes: more than one part",
        jsonl.len()
    );
    let rows = column(&jsonl, "row")?;
    assert_eq!(rows, row_numbers(2_000));
    let csv = stack.get_text(&location.csv.key).await?;
    assert_eq!(csv.lines().count(), 2_001, "header + one line per row");
    assert_eq!(stack.alerts_of_kind("job_finished"), 1);
    Ok(())
}

#[tokio::test]
async fn a_manifest_writer_that_died_is_replaced_and_the_job_notifies_once() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let key = format!("{TEMPLATE_DIR}orphaned.csv");
    stack.upload(&key, awkward_csv(300)).await?;
    let job = job_id_of(&stack.ingest(&key).await?)?;
    until_finishing(&stack, &job).await?;
    // The worker that took the manifest step died: the message is gone, nothing was written.
    lose_steps(&stack).await?;
    let report = stack.pipeline.reconcile(Duration::from_secs(3600)).await?;
    assert_eq!(
        report.finished, 0,
        "a writer that just started is left alone"
    );
    let impatient = with_ingest(&stack, None, Duration::ZERO);
    assert_eq!(
        impatient
            .reconcile(Duration::from_secs(3600))
            .await?
            .finished,
        1
    );
    // Two writers at once (the replaced one was only slow): one notification.
    impatient.reconcile(Duration::from_secs(3600)).await?;
    let done = stack.run_until_done(&job, Duration::from_secs(60)).await?;
    assert!(done.status.is_terminal() && done.manifest.is_some());
    assert_eq!(stack.alerts_of_kind("job_finished"), 1);
    Ok(())
}

/// The smallest part S3 (and moto) takes but for the last: the manifest sends parts this big.
const MIN_PART: usize = 5 * 1024 * 1024;

#[tokio::test]
async fn a_manifest_writer_killed_mid_way_is_carried_on_and_writes_what_one_pass_writes()
-> anyhow::Result<()> {
    // `scripts/scale` runs 50,000 rows.
    let rows: usize = std::env::var("LARGE_MANIFEST_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_500);
    // No `render.completed`: a row's render record is not what this test is about, and moto
    // slows down with every one of them it holds (rows end rendered, their URL not recorded).
    let stack = Stack::start(StackOptions {
        events: vec!["render.failed", "batch.completed"],
        ..StackOptions::default()
    })
    .await?;
    let key = format!("{TEMPLATE_DIR}killed.csv");
    // Each manifest file comes to ~2.5 parts at least, whatever the row count.
    let filler = (MIN_PART * 5 / 2 / rows).max(200);
    stack.upload(&key, wide_csv(rows, filler)).await?;
    let started = std::time::Instant::now();
    let job = job_id_of(&stack.ingest(&key).await?)?;
    until_finishing_within(&stack, &job, Duration::from_secs(1_800)).await?;
    let rendered_in = started.elapsed();
    // The queued step is taken by a writer this test controls.
    lose_steps(&stack).await?;
    let mut writer = stack.pipeline.clone();
    writer.settings.manifest_part_bytes = MIN_PART;
    let killed = tokio::spawn({
        let (writer, job) = (writer.clone(), job.clone());
        async move { writer.write_manifest_step(&job).await }
    });
    // The Lambda dies (the future is dropped mid-request) once its first parts are safe.
    let checkpoint = loop {
        if let Some(checkpoint) = stack.job(&job).await?.manifest_checkpoint {
            break checkpoint;
        }
        anyhow::ensure!(
            !killed.is_finished(),
            "the writer finished before it was killed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    killed.abort();
    let stopped = stack.job(&job).await?;
    assert_eq!(stopped.status, JobStatus::Finishing);
    assert!(
        checkpoint.position.rows > 0 && (checkpoint.position.rows as usize) < rows,
        "killed part-way: {:?}",
        checkpoint.position
    );

    // The reconciler sees the writer silent and has the step run again: it carries on.
    let mut impatient = with_ingest(&stack, None, Duration::ZERO);
    impatient.settings.manifest_part_bytes = MIN_PART;
    assert_eq!(
        impatient
            .reconcile(Duration::from_secs(3600))
            .await?
            .finished,
        1
    );
    let resumed_at = std::time::Instant::now();
    while stack
        .drain_steps_once(&impatient, Context::default())
        .await?
        .is_some()
    {}
    let done = stack.job(&job).await?;
    let resumed_in = resumed_at.elapsed();
    assert_eq!(
        (
            done.status,
            done.counters.rendered,
            done.manifest_checkpoint.clone()
        ),
        (JobStatus::Completed, rows as u64, None)
    );
    let location = done.manifest.clone().context("manifest")?;
    let carried_on = (
        stack.get_text(&location.csv.key).await?,
        stack.get_text(&location.jsonl.key).await?,
    );
    assert_eq!(column(&carried_on.1, "row")?, row_numbers(rows as u64));
    assert_eq!(
        carried_on.0.lines().count(),
        rows + 1,
        "header + one line per row"
    );

    // The same job's manifest written again in one pass: byte for byte the same files.
    stack.pipeline.write_manifest(&done).await?;
    let one_pass = (
        stack.get_text(&location.csv.key).await?,
        stack.get_text(&location.jsonl.key).await?,
    );
    assert!(
        carried_on == one_pass,
        "the carried-on manifest differs from one pass"
    );
    assert_eq!(stack.alerts_of_kind("job_finished"), 1);
    eprintln!(
        "{rows} rows, {} MB per manifest file: rendered in {:.1}s; writer killed at row {} \
         ({} parts of each file safe), carried on in {:.1}s; same bytes as one pass",
        carried_on.1.len() / 1_000_000,
        rendered_in.as_secs_f64(),
        checkpoint.position.rows,
        checkpoint.csv.parts.len(),
        resumed_in.as_secs_f64()
    );
    Ok(())
}

/// The largest row ingest accepts (256 KiB, every field at its 64 KiB limit, every byte a
/// control character that JSON escapes to 6): Pictify's `render.completed` echoes it as ~1.5 MB
/// of JSON, and the webhook takes it — the row gets its URL.
#[tokio::test]
async fn the_largest_allowed_row_renders_and_its_render_completed_is_accepted() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions::default()).await?;
    let key = format!("{TEMPLATE_DIR}largest.csv");
    let field = "\u{1}".repeat(65_000);
    let mut data = String::from("title,author,publishDate,excerpt,notes\n");
    data.push_str(&format!("{field},{field},2026-01-01,{field},{field}\n"));
    data.push_str("Small one,Author,2026-01-02,x,y\n");
    let row_bytes = data.lines().nth(1).map_or(0, str::len);
    assert!(
        row_bytes > 256 * 1024 - 2_500 && row_bytes <= 256 * 1024,
        "{row_bytes}"
    );
    stack.upload(&key, data.into_bytes()).await?;
    let job = job_id_of(&stack.ingest(&key).await?)?;
    let done = stack.run_until_done(&job, Duration::from_secs(60)).await?;
    assert_eq!(
        (done.status, done.counters.rendered),
        (JobStatus::Completed, 2)
    );
    let manifest = stack
        .get_text(&done.manifest.context("manifest")?.jsonl.key)
        .await?;
    assert_eq!(
        column(&manifest, "status")?,
        vec!["rendered", "rendered"],
        "both rows have their URL"
    );
    Ok(())
}
