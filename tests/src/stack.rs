//! A whole pipeline for tests: fresh AWS resources on moto (through the real SDK), the Pictify
//! emulator over real HTTP, and a webhook receiver that feeds the real webhook Lambda handler.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{Context, LambdaEvent};
use pictify_emulator::{Config as EmulatorConfig, Faults, PresetSubscription, RunningEmulator};
use serde_json::{Value, json};
use shared::aws::dynamo::{DynamoJobStore, create_table};
use shared::aws::s3::S3ObjectStore;
use shared::aws::sns::SnsAlerts;
use shared::aws::sqs::SqsWorkQueue;
use shared::domain::{Job, JobId};
use shared::local::{FanoutAlerts, MemoryAlerts};
use shared::pictify::{PictifyClient, PictifyConfig};
use shared::pipeline::Pipeline;
use shared::ports::{Alerts, JobLedger, SystemClock};
use shared::secret::Secret;
use shared::settings::Settings;

use crate::aws::{
    SdkResultExt, aws_config, create_bucket, dynamodb, fresh_bucket, fresh_queue, fresh_topic,
    queue_arn, unique_name,
};
use crate::counting::RequestCounter;

pub const TEST_API_KEY: &str = "pk_test_emulator";

/// How to build a stack.
pub struct StackOptions {
    pub faults: Faults,
    pub seed: u64,
    /// Real images are slow in debug builds; the pipeline does not look at pixels.
    pub rasterize: bool,
    pub settings: Settings,
    /// Per-attempt timeout of the Pictify client.
    pub client_timeout: Duration,
    /// A fixed bucket name. The job id derives from the bucket, and the emulator's submit faults
    /// roll per idempotency key (job id + chunk), so a run is only repeatable with a fixed name;
    /// `None`: a fresh unique bucket (tests that share a moto server must not collide).
    pub bucket: Option<String>,
    /// The emulated Pictify account: a plan and explicit limits over it (none: no limits).
    pub plan: Option<pictify_emulator::Plan>,
    pub limits: pictify_emulator::PlanLimits,
    /// Simulated seconds per rendered item (with a plan: 1) and the factor applied to them.
    pub render_seconds: Option<f64>,
    pub time_scale: f64,
    /// The webhook events the emulator delivers to the stack (all three by default). Tests
    /// that measure pacing leave out `render.completed`: one delivery per item through moto
    /// would measure moto, and the batch poll counts the renders anyway.
    pub events: Vec<&'static str>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            faults: Faults::default(),
            seed: 7,
            rasterize: false,
            settings: Settings {
                retry_delay: Duration::from_secs(1),
                submit_grace: Duration::from_secs(2),
                ..Settings::default()
            },
            client_timeout: Duration::from_secs(10),
            bucket: None,
            plan: None,
            limits: pictify_emulator::PlanLimits::default(),
            render_seconds: None,
            time_scale: 1.0,
            events: vec!["render.completed", "render.failed", "batch.completed"],
        }
    }
}

/// SQS's redrive: a message received this often without being deleted goes to the DLQ
/// (template.yaml's `maxReceiveCount`).
pub const MAX_RECEIVE_COUNT: u32 = 10;

pub struct Stack {
    pub pipeline: Pipeline,
    pub queue: Arc<SqsWorkQueue>,
    pub queue_url: String,
    /// Long steps: ingest continuations and manifests (template.yaml's `StepQueue`).
    pub step_queue_url: String,
    /// The work queue's dead-letter queue (redrive after `MAX_RECEIVE_COUNT` receives).
    pub dlq_url: String,
    pub bucket: String,
    pub table: String,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub store: Arc<DynamoJobStore>,
    pub alerts: Arc<MemoryAlerts>,
    pub emulator: RunningEmulator,
    pub webhook_secret: String,
    /// Every AWS request the pipeline's clients sent.
    pub requests: RequestCounter,
    _data: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let cfg = aws_config().await;
        let requests = RequestCounter::default();
        let s3c = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&cfg)
                .force_path_style(true)
                .interceptor(requests.clone())
                .build(),
        );
        let sqsc = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&cfg)
                .interceptor(requests.clone())
                .build(),
        );
        let dyn_c = aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&cfg)
                .interceptor(requests.clone())
                .build(),
        );
        let snsc = aws_sdk_sns::Client::from_conf(
            aws_sdk_sns::config::Builder::from(&cfg)
                .interceptor(requests.clone())
                .build(),
        );
        let bucket = match &options.bucket {
            Some(name) => {
                create_bucket(&s3c, name).await?;
                name.clone()
            }
            None => fresh_bucket(&s3c, "uploads").await?,
        };
        let dlq_url = fresh_queue(&sqsc, "dlq").await?;
        let queue_url = fresh_queue(&sqsc, "work").await?;
        redrive(&sqsc, &queue_url, &dlq_url).await?;
        let step_queue_url = fresh_queue(&sqsc, "steps").await?;
        let topic = fresh_topic(&snsc, "alerts").await?;
        let table = unique_name("jobs");
        create_table(&dyn_c, &table)
            .await
            .context("creating the table")?;

        let webhook_secret = format!("whsec_{}", unique_name("secret").replace('-', ""));
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let target_url = format!("http://{}/webhook", receiver.local_addr()?);
        let data = tempfile::tempdir()?;
        let emulator = pictify_emulator::start(EmulatorConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            data_dir: data.path().join("emulator"),
            seed: options.seed,
            faults: options.faults,
            render: pictify_emulator::render::RenderOptions {
                rasterize: options.rasterize,
                ..Default::default()
            },
            webhook_retry_scale: 0.001,
            plan: options.plan,
            limits: options.limits,
            render_seconds: options.render_seconds,
            time_scale: options.time_scale,
            subscriptions: options
                .events
                .iter()
                .map(|event| PresetSubscription {
                    event: (*event).into(),
                    target_url: target_url.clone(),
                    secret: webhook_secret.clone(),
                })
                .collect(),
            ..EmulatorConfig::default()
        })
        .await?;

        let pictify = PictifyClient::new(PictifyConfig {
            base_url: emulator.base_url(),
            api_key: Secret::new(TEST_API_KEY),
            timeout: options.client_timeout,
            max_retries: 2,
            backoff_base: Duration::from_millis(50),
        })?;
        let memory_alerts = Arc::new(MemoryAlerts::new());
        let sinks: Vec<Arc<dyn Alerts>> =
            vec![memory_alerts.clone(), Arc::new(SnsAlerts::new(snsc, topic))];
        let queue = Arc::new(
            SqsWorkQueue::new(sqsc.clone(), queue_url.clone())
                .with_step_queue(step_queue_url.clone()),
        );
        let store = Arc::new(DynamoJobStore::new(dyn_c, table.clone()));
        let pipeline = Pipeline {
            store: store.clone(),
            objects: Arc::new(S3ObjectStore::new(s3c.clone())),
            queue: queue.clone(),
            pictify: Arc::new(pictify),
            alerts: Arc::new(FanoutAlerts::new(sinks)),
            clock: Arc::new(SystemClock),
            settings: options.settings,
            webhook_secrets: vec![Secret::new(webhook_secret.clone())],
        };
        serve_webhooks(receiver, pipeline.clone());
        Ok(Stack {
            pipeline,
            queue,
            queue_url,
            step_queue_url,
            dlq_url,
            bucket,
            table,
            s3: s3c,
            sqs: sqsc,
            store,
            alerts: memory_alerts,
            emulator,
            webhook_secret,
            requests,
            _data: data,
        })
    }

    pub async fn upload(&self, key: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .sdk_context("put upload")?;
        Ok(())
    }

    /// `events/s3-put.json` pointed at this stack's bucket and `key` (form-encoded as S3 does).
    pub fn s3_event(&self, key: &str) -> anyhow::Result<Value> {
        let mut event = load_event("s3-put.json")?;
        let encoded: String = key
            .split(' ')
            .map(|part| {
                percent_encoding::utf8_percent_encode(part, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("+")
            .replace("%2F", "/")
            .replace("%2E", ".")
            .replace("%5F", "_")
            .replace("%2D", "-");
        let record = &mut event["Records"][0]["s3"];
        record["bucket"]["name"] = json!(self.bucket);
        record["bucket"]["arn"] = json!(format!("arn:aws:s3:::{}", self.bucket));
        record["object"]["key"] = json!(encoded);
        record["object"]["eTag"] = json!("");
        Ok(event)
    }

    /// Invokes the ingest handler with an S3 put event for `key`.
    pub async fn ingest(&self, key: &str) -> anyhow::Result<Value> {
        let event = LambdaEvent::new(self.s3_event(key)?, Context::default());
        ingest::function_handler(&self.pipeline, event)
            .await
            .map_err(|e| anyhow::anyhow!("ingest: {e}"))
    }

    /// One poll of the step queue into the ingest handler (as `pipeline`, with `context`'s
    /// deadline), acting like Lambda's event source mapping with batch size 1. Returns the
    /// handler's answer, or `None` when the queue was empty.
    pub async fn drain_steps_once(
        &self,
        pipeline: &Pipeline,
        context: Context,
    ) -> anyhow::Result<Option<Value>> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.step_queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(0)
            .send()
            .await
            .sdk_context("receive step message")?;
        let Some(message) = out.messages.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let event = json!({ "Records": [{
            "messageId": message.message_id, "receiptHandle": message.receipt_handle,
            "body": message.body, "eventSource": "aws:sqs",
        }]});
        let answer = ingest::function_handler(pipeline, LambdaEvent::new(event, context))
            .await
            .map_err(|e| anyhow::anyhow!("ingest: {e}"))?;
        let failed = answer["batchItemFailures"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !failed && let Some(receipt) = &message.receipt_handle {
            self.sqs
                .delete_message()
                .queue_url(&self.step_queue_url)
                .receipt_handle(receipt)
                .send()
                .await
                .sdk_context("delete step message")?;
        }
        Ok(Some(answer))
    }

    /// One poll of each queue: the step queue into the ingest handler (a manifest to write, an
    /// ingest to carry on), then the work queue into the submitter handler, acting like Lambda's
    /// event source mappings: messages not reported as failures are deleted. Returns how many
    /// were received.
    pub async fn drain_once(&self) -> anyhow::Result<usize> {
        let mut steps = 0;
        while self
            .drain_steps_once(&self.pipeline, Context::default())
            .await?
            .is_some()
        {
            steps += 1;
        }
        Ok(steps + self.drain_work_once().await?)
    }

    /// One poll of the work queue alone into the submitter handler (a test that watches a job
    /// reach `finishing` and leaves the step queue alone).
    pub async fn drain_work_once(&self) -> anyhow::Result<usize> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .sdk_context("receive")?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(0);
        }
        let records: Vec<Value> = messages
            .iter()
            .map(|m| json!({ "messageId": m.message_id, "receiptHandle": m.receipt_handle, "body": m.body, "eventSource": "aws:sqs" }))
            .collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records }))?;
        let response = submitter::function_handler(
            &self.pipeline,
            &self.queue,
            LambdaEvent::new(event, Context::default()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("submitter: {e}"))?;
        for m in &messages {
            let failed = response
                .batch_item_failures
                .iter()
                .any(|f| Some(&f.item_identifier) == m.message_id.as_ref());
            if !failed && let Some(receipt) = &m.receipt_handle {
                self.sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .sdk_context("delete")?;
            }
        }
        Ok(messages.len())
    }

    /// Messages in the dead-letter queue (visible or not).
    pub async fn dlq_depth(&self) -> anyhow::Result<u64> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.dlq_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .sdk_context("dlq attributes")?;
        let attributes = out.attributes.unwrap_or_default();
        let count = |name: A| -> u64 {
            attributes
                .get(&name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(count(A::ApproximateNumberOfMessages) + count(A::ApproximateNumberOfMessagesNotVisible))
    }

    /// Drives the queue until the job is terminal (webhooks arrive on their own).
    pub async fn run_until_done(&self, job: &JobId, limit: Duration) -> anyhow::Result<Job> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let current = self.job(job).await?;
            if current.status.is_terminal() {
                return Ok(current);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "job {job} not done in {limit:?}: {current:#?}"
            );
            if self.drain_once().await? == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Batches the emulator accepted whose failed/total is over the alert threshold.
    pub fn batches_over_threshold(&self) -> usize {
        let threshold = self.pipeline.settings.failure_alert_threshold;
        self.emulator
            .ledger()
            .batches_accepted
            .iter()
            .filter(|b| f64::from(b.failed) / f64::from(b.total_items) > threshold)
            .count()
    }

    /// Alerts of one kind raised so far.
    pub fn alerts_of_kind(&self, kind: &str) -> usize {
        self.alerts
            .alerts()
            .into_iter()
            .filter(|a| a.kind == kind)
            .count()
    }

    pub async fn job(&self, id: &JobId) -> anyhow::Result<Job> {
        self.store
            .job(id)
            .await?
            .with_context(|| format!("job {id} not found"))
    }

    /// Every item in the table, as debug text: a cheap "nothing changed" check.
    pub async fn table_snapshot(&self) -> anyhow::Result<Vec<String>> {
        let client = dynamodb(&aws_config().await);
        let out = client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .send()
            .await
            .sdk_context("scan")?;
        let mut items: Vec<String> = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|i| {
                format!(
                    "{:?}",
                    i.iter().collect::<std::collections::BTreeMap<_, _>>()
                )
            })
            .collect();
        items.sort();
        Ok(items)
    }

    pub async fn get_text(&self, key: &str) -> anyhow::Result<String> {
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .sdk_context("get object")?;
        let bytes = out.body.collect().await?.into_bytes();
        Ok(String::from_utf8(bytes.to_vec())?)
    }
}

/// Points the work queue's redrive at the DLQ, as template.yaml does.
async fn redrive(sqs: &aws_sdk_sqs::Client, queue_url: &str, dlq_url: &str) -> anyhow::Result<()> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let arn = queue_arn(sqs, dlq_url).await?;
    let policy = json!({ "deadLetterTargetArn": arn, "maxReceiveCount": MAX_RECEIVE_COUNT });
    sqs.set_queue_attributes()
        .queue_url(queue_url)
        .attributes(A::RedrivePolicy, policy.to_string())
        .send()
        .await
        .sdk_context("set redrive policy")?;
    Ok(())
}

/// Reads a file from the repository's `events/` directory.
pub fn load_event(name: &str) -> anyhow::Result<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Feeds every request to the webhook Lambda handler, as a Function URL would.
fn serve_webhooks(listener: tokio::net::TcpListener, pipeline: Pipeline) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let pipeline = pipeline.clone();
        async move {
            let mut request = http::Request::builder().method("POST").uri("/");
            for (name, value) in &headers {
                request = request.header(name, value);
            }
            let text = String::from_utf8_lossy(&body).into_owned();
            let Ok(request) = request.body(lambda_http::Body::Text(text)) else {
                return (StatusCode::BAD_REQUEST, String::new());
            };
            match webhook::function_handler(&pipeline, request).await {
                Ok(response) => {
                    let status = StatusCode::from_u16(response.status().as_u16())
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    let body = match response.into_body() {
                        lambda_http::Body::Text(t) => t,
                        _ => String::new(),
                    };
                    (status, body)
                }
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}
