//! The S3, SQS and SNS adapters against moto through the real SDK, and the HTTP alert sink
//! against a tiny local receiver.

#![allow(clippy::unwrap_used)] // tests: a poisoned lock or a bad literal should fail loudly

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use axum::Json;
use axum::http::StatusCode;
use integration_tests::{
    aws_config, fresh_bucket, fresh_queue, fresh_topic, receive, s3, sns, subscribe_queue,
};
use serde_json::Value;
use shared::aws::s3::S3ObjectStore;
use shared::aws::sns::SnsAlerts;
use shared::aws::sqs::SqsWorkQueue;
use shared::domain::{ChunkKey, ChunkMessage, ChunkPayload, InlinePayload, JobId, ObjectRef};
use shared::local::HttpAlerts;
use shared::pictify::wire::Format;
use shared::ports::{Alert, Alerts, ObjectBody, ObjectStore, WorkQueue};
use shared::secret::Secret;

// ---------- helpers ----------

async fn s3_store() -> anyhow::Result<(S3ObjectStore, String)> {
    let client = s3(&aws_config().await);
    let bucket = fresh_bucket(&client, "adapters").await?;
    Ok((S3ObjectStore::new(client), bucket))
}

fn at(bucket: &str, key: &str) -> ObjectRef {
    ObjectRef {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
}

/// Reads the body on a blocking thread, as the adapter requires.
async fn read_all(body: ObjectBody) -> anyhow::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut reader = body.reader;
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map(|_| bytes)
    })
    .await?
    .context("read object body")
}

/// Counts `SendMessageBatch` requests on the wire (retries included).
#[derive(Debug, Default, Clone)]
struct BatchCalls(Arc<AtomicUsize>);

impl Intercept for BatchCalls {
    fn name(&self) -> &'static str {
        "BatchCalls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if target.ends_with("SendMessageBatch") {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A queue adapter on a fresh queue, its raw client and its batch-call counter.
async fn sqs_queue() -> anyhow::Result<(SqsWorkQueue, aws_sdk_sqs::Client, String, BatchCalls)> {
    let calls = BatchCalls::default();
    let conf = aws_sdk_sqs::config::Builder::from(&aws_config().await)
        .interceptor(calls.clone())
        .build();
    let client = aws_sdk_sqs::Client::from_conf(conf);
    let url = fresh_queue(&client, "adapters").await?;
    Ok((
        SqsWorkQueue::new(client.clone(), url.clone()),
        client,
        url,
        calls,
    ))
}

fn chunk_message(seq: u32, padding: usize) -> ChunkMessage {
    let job = JobId::parse("job_adapters").unwrap();
    let mut vars = serde_json::Map::new();
    vars.insert("title".into(), "x".repeat(padding).into());
    let payload = ChunkPayload {
        job: job.clone(),
        key: ChunkKey::initial(seq),
        template_id: "tmpl".into(),
        format: Format::Png,
        quality: None,
        concurrency: None,
        rows: vec![u64::from(seq)],
        variable_sets: vec![vars],
    };
    ChunkMessage {
        job,
        key: ChunkKey::initial(seq),
        payload: Some(InlinePayload::encode(&payload).unwrap()),
        payload_ref: None,
    }
}

/// Receives until `want` messages arrived or ten polls came back short.
async fn receive_bodies(
    client: &aws_sdk_sqs::Client,
    url: &str,
    want: usize,
) -> anyhow::Result<Vec<String>> {
    let mut bodies = Vec::new();
    for _ in 0..10 {
        if bodies.len() >= want {
            break;
        }
        bodies.extend(
            receive(client, url, 10, 1)
                .await?
                .into_iter()
                .filter_map(|m| m.body),
        );
    }
    Ok(bodies)
}

fn alert() -> Alert {
    Alert {
        kind: shared::ports::AlertKind::BatchHighFailureRate,
        message: "batch b1: 3 of 20 rows failed".into(),
        job: Some("job_1".into()),
        batch_id: Some("b1".into()),
        failure_rate: Some(0.15),
        top_errors: vec![
            ("IMAGE_FETCH_FAILED".into(), 2),
            ("RENDER_TIMEOUT".into(), 1),
        ],
        counters: None,
    }
}

/// A Slack-like receiver on 127.0.0.1:0 answering `status`; returns its URL and what it got.
async fn alert_receiver(status: StatusCode) -> anyhow::Result<(String, Arc<Mutex<Vec<Value>>>)> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/services/T0/B0/secret",
        axum::routing::post(move |Json(body): Json<Value>| async move {
            sink.lock().unwrap().push(body);
            status
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/services/T0/B0/secret", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, got))
}

// ---------- S3 ----------

#[tokio::test]
async fn s3_put_then_open_streams_the_same_bytes() -> anyhow::Result<()> {
    let (store, bucket) = s3_store().await?;
    let object = at(&bucket, "uploads/t/data set.csv");
    store
        .put_bytes(&object, b"id,title\n1,hello\n".to_vec(), "text/csv")
        .await?;

    let version = store
        .version(&object)
        .await?
        .context("object has a version")?;
    let body = store.open(&object, Some(&version)).await?;

    assert_eq!(body.version, version);
    assert_eq!(read_all(body).await?, b"id,title\n1,hello\n");
    Ok(())
}

#[tokio::test]
async fn s3_open_at_a_stale_version_fails_clearly() -> anyhow::Result<()> {
    let (store, bucket) = s3_store().await?;
    let object = at(&bucket, "uploads/x.csv");
    store
        .put_bytes(&object, b"a\n1\n".to_vec(), "text/csv")
        .await?;
    let old = store.version(&object).await?.context("version")?;
    store
        .put_bytes(&object, b"a\n2\n".to_vec(), "text/csv")
        .await?;

    let error = store
        .open(&object, Some(&old))
        .await
        .err()
        .context("stale open must fail")?;

    assert!(!error.retryable, "{error}");
    assert!(error.to_string().contains("changed"), "{error}");
    Ok(())
}

#[tokio::test]
async fn s3_missing_object_has_no_version_and_no_bytes() -> anyhow::Result<()> {
    let (store, bucket) = s3_store().await?;
    let missing = at(&bucket, "nope.csv");
    assert_eq!(store.version(&missing).await?, None);
    assert_eq!(store.get_bytes(&missing).await?, None);
    Ok(())
}

#[tokio::test]
async fn s3_a_20_mb_object_streams_through_open() -> anyhow::Result<()> {
    let (store, bucket) = s3_store().await?;
    let object = at(&bucket, "big.bin");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &data)?;
    store
        .put_file(&object, file.path(), "application/octet-stream")
        .await?;

    let body = store.open(&object, None).await?;
    let read = read_all(body).await?;

    assert_eq!(read.len(), data.len());
    assert!(read == data, "streamed bytes differ");
    Ok(())
}

// ---------- SQS ----------

#[tokio::test]
async fn sqs_25_messages_take_3_batch_calls_and_all_arrive() -> anyhow::Result<()> {
    let (queue, client, url, calls) = sqs_queue().await?;
    let messages: Vec<ChunkMessage> = (0..25).map(|seq| chunk_message(seq, 20)).collect();

    queue.send(&messages).await?;

    assert_eq!(calls.0.load(Ordering::SeqCst), 3);
    let mut received: Vec<ChunkMessage> = receive_bodies(&client, &url, 25)
        .await?
        .iter()
        .map(|b| serde_json::from_str(b))
        .collect::<Result<_, _>>()?;
    received.sort_by_key(|m| m.key);
    assert_eq!(received, messages);
    Ok(())
}

#[tokio::test]
async fn sqs_an_oversize_message_is_refused_before_sending() -> anyhow::Result<()> {
    let (queue, client, url, calls) = sqs_queue().await?;
    let messages = [chunk_message(0, 10), chunk_message(1, 300 * 1024)];

    let error = queue
        .send(&messages)
        .await
        .err()
        .context("oversize send must fail")?;

    assert!(!error.retryable);
    assert!(error.to_string().contains("job_adapters/c00001"), "{error}");
    assert_eq!(calls.0.load(Ordering::SeqCst), 0);
    assert!(receive(&client, &url, 10, 0).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sqs_return_later_changes_the_visibility() -> anyhow::Result<()> {
    let (queue, client, url, _) = sqs_queue().await?;
    queue.send(&[chunk_message(0, 1)]).await?;
    let first = receive(&client, &url, 1, 1)
        .await?
        .pop()
        .context("first delivery")?;
    assert!(
        receive(&client, &url, 1, 0).await?.is_empty(),
        "hidden while in flight"
    );

    queue
        .return_later(
            first.receipt_handle().context("receipt handle")?,
            Duration::ZERO,
        )
        .await?;

    let again = receive(&client, &url, 1, 1)
        .await?
        .pop()
        .context("visible again at once")?;
    assert_eq!(again.message_id(), first.message_id());
    Ok(())
}

// ---------- SNS ----------

#[tokio::test]
async fn sns_published_alert_arrives_on_a_subscribed_queue() -> anyhow::Result<()> {
    let cfg = aws_config().await;
    let (sns, sqs) = (sns(&cfg), integration_tests::sqs(&cfg));
    let topic = fresh_topic(&sns, "alerts").await?;
    let url = fresh_queue(&sqs, "alerts").await?;
    subscribe_queue(&sns, &sqs, &topic, &url).await?;

    SnsAlerts::new(sns, topic).send(&alert()).await?;

    let message = receive(&sqs, &url, 1, 2)
        .await?
        .pop()
        .context("alert delivered")?;
    let delivered: Alert = serde_json::from_str(message.body().context("body")?)?;
    assert_eq!(delivered, alert());
    let kind = message
        .message_attributes()
        .and_then(|a| a.get("kind"))
        .and_then(|v| v.string_value());
    assert_eq!(kind, Some("batch_high_failure_rate"));
    Ok(())
}

// ---------- HTTP alerts ----------

#[tokio::test]
async fn http_alerts_post_slack_json_with_job_batch_rate_and_errors() -> anyhow::Result<()> {
    let (url, got) = alert_receiver(StatusCode::OK).await?;

    HttpAlerts::try_new(Secret::new(url))?
        .send(&alert())
        .await?;

    let body = got
        .lock()
        .unwrap()
        .pop()
        .context("receiver got the alert")?;
    let text = body["text"].as_str().context("text")?;
    assert!(
        text.contains("batch_high_failure_rate") && !text.contains('\n'),
        "{text}"
    );
    let fields = body["attachments"][0]["fields"]
        .as_array()
        .context("fields")?;
    let titles: Vec<&str> = fields.iter().filter_map(|f| f["title"].as_str()).collect();
    assert_eq!(
        titles,
        ["Kind", "Job", "Batch", "Failure rate", "Top errors"]
    );
    Ok(())
}

#[tokio::test]
async fn http_alerts_report_a_server_error_as_retryable_without_the_url() -> anyhow::Result<()> {
    let (url, _) = alert_receiver(StatusCode::BAD_GATEWAY).await?;

    let error = HttpAlerts::try_new(Secret::new(url))?
        .send(&alert())
        .await
        .err()
        .context("502 must fail")?;

    assert!(error.retryable);
    assert!(
        error.to_string().contains("502") && !error.to_string().contains("secret"),
        "{error}"
    );
    Ok(())
}
