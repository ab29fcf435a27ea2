//! The DynamoDB `JobStore` against moto through the real SDK: idempotent writes, the submit
//! state machine, exactly-once completion and the batched reads. One fresh table per test.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::{aws_config, dynamodb, unique_name};
use shared::aws::dynamo::{DynamoJobStore, create_table};
use shared::domain::{
    Chunk, ChunkKey, ChunkOutcome, ChunkState, Counters, Job, JobId, JobSpec, JobStatus,
    ManifestLocation, ObjectRef, RowError,
};
use shared::ports::{BeginSubmit, ChunkCompletion, FailureRecord, JobStore, RenderRecord};

const GRACE: Duration = Duration::from_secs(60);

async fn fresh_store() -> anyhow::Result<DynamoJobStore> {
    let client = dynamodb(&aws_config().await);
    let table = unique_name("jobstore");
    create_table(&client, &table).await?;
    Ok(DynamoJobStore::new(client, table))
}

fn job(key: &str) -> Job {
    let source = ObjectRef {
        bucket: "uploads".into(),
        key: key.into(),
    };
    Job {
        id: JobId::for_upload(&source.bucket, &source.key, "etag-1"),
        source,
        source_version: "etag-1".into(),
        spec: JobSpec {
            template_id: "tmpl_1".into(),
            format: Default::default(),
            quality: None,
            concurrency: Some(4),
            mapping: BTreeMap::from([("Title".into(), "title".into())]),
            required: vec!["title".into()],
        },
        status: JobStatus::Ingesting,
        counters: Counters::default(),
        error: None,
        rejected_sample: vec![],
        created_at: 1_000,
        ingested_at: None,
        completed_at: None,
        render_ms_total: 0,
        manifest: None,
        reopened: 0,
    }
}

/// A job with chunk `c00000` (rows 0..3) stored and queued.
async fn job_with_chunk(store: &DynamoJobStore) -> anyhow::Result<(JobId, ChunkKey)> {
    let job = job("in/data.csv");
    store.create_job(&job).await?;
    let key = ChunkKey::initial(0);
    store
        .put_chunks(&[Chunk::new(job.id.clone(), key, vec![0, 1, 2])])
        .await?;
    Ok((job.id, key))
}

/// 1 rendered, 1 failed for good, 1 handed to a retry chunk.
fn completion(job: &JobId, key: ChunkKey) -> ChunkCompletion {
    let error = RowError {
        code: "INVALID_VARIABLE".into(),
        message: "bad title".into(),
    };
    ChunkCompletion {
        job: job.clone(),
        key,
        outcome: ChunkOutcome {
            rendered: 1,
            failed: BTreeMap::from([(1, error)]),
            retried: vec![2],
            duration_ms: Some(750),
        },
        delta: Counters {
            rendered: 1,
            failed: 1,
            retried: 1,
            chunks: 1,
            chunks_done: 1,
            ..Default::default()
        },
        retry: Some(Chunk::new(job.clone(), key.retry(), vec![2])),
        alert: true,
    }
}

#[tokio::test]
async fn creating_a_job_twice_returns_the_first_and_false() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let first = job("in/data.csv");
    let again = Job {
        created_at: 2_000,
        ..first.clone()
    };

    assert_eq!(store.create_job(&first).await?, (first.clone(), true));
    assert_eq!(store.create_job(&again).await?, (first.clone(), false));
    assert_eq!(store.job(&first.id).await?, Some(first));
    Ok(())
}

#[tokio::test]
async fn begin_submit_proceeds_once_then_reports_in_progress_then_proceeds_again_after_the_grace_period()
-> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;

    let first = store.begin_submit(&job, key, 100, GRACE).await?;
    let during = store.begin_submit(&job, key, 160, GRACE).await?;
    let after = store.begin_submit(&job, key, 161, GRACE).await?;

    assert_eq!(first, BeginSubmit::Proceed { attempt: 1 });
    assert_eq!(during, BeginSubmit::InProgress { since: 100 });
    assert_eq!(after, BeginSubmit::Proceed { attempt: 2 });
    Ok(())
}

#[tokio::test]
async fn redelivery_after_record_submitted_reports_already_submitted_with_the_batch_id()
-> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;

    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_abc", 101).await?;
    store.record_submitted(&job, key, "batch_abc", 102).await?;

    let chunk = store.chunk(&job, key).await?.expect("chunk stored");
    assert_eq!(
        (chunk.state, chunk.submitted_at),
        (ChunkState::Submitted, Some(101))
    );
    assert_eq!(
        store.begin_submit(&job, key, 500, GRACE).await?,
        BeginSubmit::AlreadySubmitted {
            batch_id: "batch_abc".into()
        }
    );
    Ok(())
}

#[tokio::test]
async fn release_submit_allows_a_new_attempt() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;

    store.begin_submit(&job, key, 100, GRACE).await?;
    store.release_submit(&job, key).await?;

    assert_eq!(
        store.begin_submit(&job, key, 101, GRACE).await?,
        BeginSubmit::Proceed { attempt: 2 }
    );
    Ok(())
}

#[tokio::test]
async fn begin_submit_reports_unknown_and_completed_chunks() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;

    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_1", 101).await?;
    store.complete_chunk(&completion(&job, key)).await?;

    assert_eq!(
        store.begin_submit(&job, key, 200, GRACE).await?,
        BeginSubmit::Completed
    );
    assert_eq!(
        store
            .begin_submit(&job, ChunkKey::initial(9), 200, GRACE)
            .await?,
        BeginSubmit::Unknown
    );
    Ok(())
}

#[tokio::test]
async fn chunk_by_batch_finds_the_chunk() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;

    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_xyz", 101).await?;

    assert_eq!(store.chunk_by_batch("batch_xyz").await?, Some((job, key)));
    assert_eq!(store.chunk_by_batch("batch_unknown").await?, None);
    Ok(())
}

#[tokio::test]
async fn complete_chunk_applies_counters_exactly_once_and_creates_the_retry_chunk()
-> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;
    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_1", 101).await?;
    let done = completion(&job, key);

    assert!(store.complete_chunk(&done).await?);
    assert!(!store.complete_chunk(&done).await?);

    let stored = store.job(&job).await?.expect("job stored");
    let expected = Counters {
        rendered: 1,
        failed: 1,
        retried: 1,
        chunks: 1,
        chunks_done: 1,
        ..Default::default()
    };
    assert_eq!((stored.counters, stored.render_ms_total), (expected, 750));
    let chunk = store.chunk(&job, key).await?.expect("chunk stored");
    assert_eq!(
        (chunk.state, chunk.outcome),
        (ChunkState::Completed, Some(done.outcome))
    );
    let retry = store
        .chunk(&job, key.retry())
        .await?
        .expect("retry chunk created");
    assert_eq!((retry.state, retry.rows), (ChunkState::Queued, vec![2]));
    Ok(())
}

#[tokio::test]
async fn complete_chunk_still_applies_when_the_retry_chunk_exists_already() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;
    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_1", 101).await?;
    store
        .put_chunks(&[Chunk::new(job.clone(), key.retry(), vec![2])])
        .await?;

    assert!(store.complete_chunk(&completion(&job, key)).await?);

    let stored = store.job(&job).await?.expect("job stored");
    assert_eq!(
        (stored.counters.chunks_done, stored.render_ms_total),
        (1, 750)
    );
    Ok(())
}

#[tokio::test]
async fn put_chunks_does_not_reset_an_existing_chunk() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;
    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_1", 101).await?;

    let reingested = [
        Chunk::new(job.clone(), key, vec![0, 1, 2]),
        Chunk::new(job.clone(), ChunkKey::initial(1), vec![3]),
    ];
    store.put_chunks(&reingested).await?;

    let chunk = store.chunk(&job, key).await?.expect("chunk stored");
    assert_eq!(
        (chunk.state, chunk.batch_id.as_deref()),
        (ChunkState::Submitted, Some("batch_1"))
    );
    assert!(store.chunk(&job, ChunkKey::initial(1)).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn renders_and_failures_are_batch_read_over_150_fingerprints() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let fingerprints: Vec<String> = (0..150).map(|i| format!("fp{i:03}")).collect();
    for (i, fp) in fingerprints.iter().enumerate() {
        if i % 3 == 0 {
            let failure = FailureRecord {
                code: "RENDER_TIMEOUT".into(),
                message: "slow".into(),
                recorded_at: 5,
            };
            store.record_failure(fp, &failure).await?;
        } else {
            let render = RenderRecord {
                url: format!("https://cdn/{fp}.png"),
                image_id: None,
                rendered_at: None,
                recorded_at: 5,
            };
            store.record_render(fp, &render).await?;
        }
    }
    let mut asked = fingerprints.clone();
    asked.extend(fingerprints.iter().take(20).cloned());
    asked.push("fp_never_seen".into());

    let renders = store.renders(&asked).await?;
    let failures = store.failures(&asked).await?;

    assert_eq!((renders.len(), failures.len()), (100, 50));
    assert_eq!(renders["fp001"].url, "https://cdn/fp001.png");
    assert_eq!(failures["fp147"].code, "RENDER_TIMEOUT");
    Ok(())
}

#[tokio::test]
async fn pause_is_reported_once_until_resumed() -> anyhow::Result<()> {
    let store = fresh_store().await?;

    assert!(store.pause_submissions("402 quota exceeded", 10).await?);
    assert!(!store.pause_submissions("402 quota exceeded", 11).await?);
    assert_eq!(
        store.submissions_paused().await?.as_deref(),
        Some("402 quota exceeded")
    );

    store.resume_submissions().await?;
    assert_eq!(store.submissions_paused().await?, None);
    assert!(store.pause_submissions("401 unauthorized", 12).await?);
    Ok(())
}

#[tokio::test]
async fn chunks_of_job_returns_chunks_in_label_order() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let job = job("in/data.csv");
    store.create_job(&job).await?;
    let keys = [
        ChunkKey::initial(2),
        ChunkKey::initial(0).retry(),
        ChunkKey::initial(1),
        ChunkKey::initial(0),
    ];
    let chunks: Vec<Chunk> = keys
        .iter()
        .map(|&k| Chunk::new(job.id.clone(), k, vec![u64::from(k.seq)]))
        .collect();
    store.put_chunks(&chunks).await?;

    let labels: Vec<String> = store
        .chunks_of_job(&job.id)
        .await?
        .iter()
        .map(|c| c.key.label())
        .collect();

    assert_eq!(labels, ["c00000", "c00000-r1", "c00001", "c00002"]);
    Ok(())
}

#[tokio::test]
async fn finish_ingest_keeps_counters_of_a_batch_that_completed_first() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job_id, key) = job_with_chunk(&store).await?;
    store.begin_submit(&job_id, key, 100, GRACE).await?;
    store.record_submitted(&job_id, key, "batch_1", 101).await?;
    store.complete_chunk(&completion(&job_id, key)).await?;
    let mut ingested = job("in/data.csv");
    ingested.status = JobStatus::Running;
    ingested.counters = Counters {
        rows: 5,
        rejected: 2,
        chunks: 1,
        ..Default::default()
    };
    ingested.rejected_sample = vec![(4, "missing title".into())];
    ingested.ingested_at = Some(120);

    store.finish_ingest(&ingested).await?;
    store.finish_ingest(&ingested).await?;

    let stored = store.job(&job_id).await?.expect("job stored");
    let expected = Counters {
        rows: 5,
        rejected: 2,
        rendered: 1,
        failed: 1,
        retried: 1,
        chunks: 2,
        chunks_done: 1,
    };
    assert_eq!(
        (stored.status, stored.counters),
        (JobStatus::Running, expected)
    );
    assert_eq!(stored.rejected_sample, ingested.rejected_sample);
    Ok(())
}

#[tokio::test]
async fn transition_and_finish_job_move_the_status_once() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let job = job("in/data.csv");
    store.create_job(&job).await?;
    let manifest = ManifestLocation {
        csv: ObjectRef {
            bucket: "results".into(),
            key: "m.csv".into(),
        },
        jsonl: ObjectRef {
            bucket: "results".into(),
            key: "m.jsonl".into(),
        },
    };

    assert!(
        store
            .transition_job(&job.id, JobStatus::Ingesting, JobStatus::Finishing)
            .await?
    );
    assert!(
        !store
            .transition_job(&job.id, JobStatus::Ingesting, JobStatus::Finishing)
            .await?
    );
    store
        .finish_job(&job.id, JobStatus::Completed, &manifest, 900)
        .await?;

    let stored = store.job(&job.id).await?.expect("job stored");
    assert_eq!(
        (stored.status, stored.completed_at, stored.manifest),
        (JobStatus::Completed, Some(900), Some(manifest))
    );
    Ok(())
}

#[tokio::test]
async fn an_orphan_webhook_is_kept() -> anyhow::Result<()> {
    let store = fresh_store().await?;

    store
        .record_orphan("batch.completed", "batch_zzz", &"x".repeat(100_000), 50)
        .await?;
    Ok(())
}

#[tokio::test]
async fn reopening_a_finished_job_moves_its_counts_adds_its_chunks_and_makes_it_active_again_once()
-> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = job_with_chunk(&store).await?;
    store.begin_submit(&job, key, 100, GRACE).await?;
    store.record_submitted(&job, key, "batch_1", 101).await?;
    store.complete_chunk(&completion(&job, key)).await?;
    let manifest = ManifestLocation {
        csv: ObjectRef {
            bucket: "b".into(),
            key: "r.csv".into(),
        },
        jsonl: ObjectRef {
            bucket: "b".into(),
            key: "r.jsonl".into(),
        },
    };
    store
        .finish_job(&job, JobStatus::Partial, &manifest, 200)
        .await?;
    assert!(!store.active_jobs().await?.contains(&job));

    let fresh = Chunk::new(job.clone(), ChunkKey::initial(1), vec![1]).queued_at(300);
    let reopen = shared::ports::Reopen {
        job: job.clone(),
        from: JobStatus::Partial,
        chunks: vec![fresh.clone()],
        unfailed: 1,
        unrendered: 0,
    };
    assert!(store.reopen_job(&reopen).await?);
    assert!(
        !store.reopen_job(&reopen).await?,
        "only the first reopen applies"
    );

    let stored = store.job(&job).await?.expect("job");
    assert_eq!(
        (
            stored.status,
            stored.counters.failed,
            stored.counters.chunks,
            stored.reopened
        ),
        (JobStatus::Running, 0, 2, 1)
    );
    assert_eq!(stored.completed_at, None);
    assert!(store.active_jobs().await?.contains(&job));
    assert_eq!(store.chunk(&job, fresh.key).await?, Some(fresh));
    Ok(())
}

#[tokio::test]
async fn a_job_alert_is_claimed_once() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, _) = job_with_chunk(&store).await?;
    assert!(store.claim_alert(&job, "job_deadline_exceeded", 10).await?);
    assert!(!store.claim_alert(&job, "job_deadline_exceeded", 20).await?);
    assert!(store.claim_alert(&job, "another_kind", 20).await?);
    // The alert marker lives beside the chunks without being mistaken for one.
    assert_eq!(store.chunks_of_job(&job).await?.len(), 1);
    Ok(())
}
