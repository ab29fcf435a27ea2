//! The DynamoDB `JobStore` against moto through the real SDK: the shared `JobStore` contract
//! (`shared::store_contract`, one fresh table per check) plus what only this adapter does: the
//! grace-period boundary of its condition, batched reads past 100 keys and the transaction size
//! limit of a reopen.

use std::sync::Arc;

use integration_tests::{aws_config, dynamodb, unique_name};
use shared::aws::dynamo::{DynamoJobStore, create_table};
use shared::domain::{Chunk, ChunkKey, JobStatus};
use shared::ports::{
    BeginSubmit, ChunkLedger, FailureRecord, JobLedger, JobStore, MAX_REOPEN_CHUNKS, RenderLog,
    RenderRecord, Reopen,
};
use shared::store_contract::{self, GRACE, check_job_store, with_chunk};

async fn fresh_store() -> anyhow::Result<DynamoJobStore> {
    let client = dynamodb(&aws_config().await);
    let table = unique_name("jobstore");
    create_table(&client, &table).await?;
    Ok(DynamoJobStore::new(client, table))
}

#[tokio::test]
async fn the_dynamo_store_keeps_the_job_store_contract() {
    check_job_store(|| async {
        Arc::new(fresh_store().await.expect("fresh table")) as Arc<dyn JobStore>
    })
    .await;
}

#[tokio::test]
async fn a_late_record_submitted_keeps_the_first_batch_id() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    store_contract::check_a_late_record_submitted_keeps_the_first_batch_id(&store).await;
    Ok(())
}

#[tokio::test]
async fn only_a_submitted_chunk_can_complete() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    store_contract::check_only_a_submitted_chunk_can_complete(&store).await;
    Ok(())
}

#[tokio::test]
async fn a_submit_is_still_in_progress_exactly_when_the_grace_period_ends() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, key) = with_chunk(&store).await;

    store.begin_submit(&job, key, 100, GRACE).await?;
    let at_the_end = store.begin_submit(&job, key, 160, GRACE).await?;
    let after = store.begin_submit(&job, key, 161, GRACE).await?;

    assert_eq!(at_the_end, BeginSubmit::InProgress { since: 100 });
    assert_eq!(after, BeginSubmit::Proceed { attempt: 2 });
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
async fn a_reopen_larger_than_one_transaction_is_refused() -> anyhow::Result<()> {
    let store = fresh_store().await?;
    let (job, _) = with_chunk(&store).await;
    let chunks = (1..=u32::try_from(MAX_REOPEN_CHUNKS)? + 1)
        .map(|seq| Chunk::new(job.clone(), ChunkKey::initial(seq), vec![0]))
        .collect();
    let reopen = Reopen {
        job: job.clone(),
        from: JobStatus::Ingesting,
        chunks,
        planned: u32::try_from(MAX_REOPEN_CHUNKS)? + 1,
        unfailed: 0,
        unrendered: 0,
    };

    let error = store
        .reopen_job(&reopen)
        .await
        .expect_err("too many chunks");

    assert!(!error.retryable, "{error}");
    assert_eq!(store.chunks_of_job(&job).await?.len(), 1);
    Ok(())
}

/// Render and failure records expire with Pictify's image retention: 7 days unless configured.
#[tokio::test]
async fn render_records_expire_with_the_image_retention() -> anyhow::Result<()> {
    let client = dynamodb(&aws_config().await);
    let table = unique_name("ttl");
    create_table(&client, &table).await?;
    let default = DynamoJobStore::new(client.clone(), table.clone());
    let three_days = DynamoJobStore::new(client.clone(), table.clone())
        .with_record_ttl(std::time::Duration::from_secs(3 * 86_400));
    let render = |url: &str| RenderRecord {
        url: url.into(),
        image_id: None,
        rendered_at: None,
        recorded_at: 1_000,
    };
    default
        .record_render("fp_default", &render("https://cdn/a.png"))
        .await?;
    three_days
        .record_render("fp_short", &render("https://cdn/b.png"))
        .await?;
    let failure = FailureRecord {
        code: "RENDER_TIMEOUT".into(),
        message: "slow".into(),
        recorded_at: 1_000,
    };
    three_days.record_failure("fp_short", &failure).await?;
    let out = client.scan().table_name(&table).send().await?;
    let mut expiries: Vec<(String, String, String)> = out
        .items
        .unwrap_or_default()
        .iter()
        .map(|item| {
            let text = |name: &str| {
                item.get(name)
                    .map(|v| v.as_s().or(v.as_n()).cloned().unwrap_or_default())
                    .unwrap_or_default()
            };
            (text("pk"), text("sk"), text("ttl"))
        })
        .collect();
    expiries.sort();
    assert_eq!(
        expiries,
        vec![
            (
                "FP#fp_default".into(),
                "#RENDER".into(),
                (1_000 + 7 * 86_400).to_string()
            ),
            (
                "FP#fp_short".into(),
                "#FAILURE".into(),
                (1_000 + 3 * 86_400).to_string()
            ),
            (
                "FP#fp_short".into(),
                "#RENDER".into(),
                (1_000 + 3 * 86_400).to_string()
            ),
        ]
    );
    Ok(())
}
