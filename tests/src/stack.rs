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
    SdkResultExt, aws_config, create_bucket, fresh_bucket, fresh_queue, fresh_topic, queue_arn,
    unique_name,
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
    /// Run each function under its own template.yaml policy on the IAM-enforcing moto
    /// ([`crate::iam`]), wired by the production wiring from its template environment (where
    /// `settings` give way to the template's values, apart from the retry delay and submit grace).
    pub iam: bool,
    /// The emulator's webhook retry schedule (1 min … 24 h) times this.
    pub webhook_retry_scale: f64,
    /// Under `iam`: template.yaml parameters other than their defaults (e.g. `MaxAttempts`).
    pub template_parameters: Vec<(&'static str, String)>,
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
            iam: false,
            webhook_retry_scale: 0.001,
            template_parameters: Vec::new(),
        }
    }
}

impl StackOptions {
    /// A stack whose emulator enforces `plan` (render time × `time_scale`) and whose pipeline
    /// paces itself by the same plan. Without `render.completed` deliveries (one per item through
    /// moto would measure moto): rows count as rendered from the batch poll.
    pub fn on_plan(
        plan: pictify_emulator::Plan,
        limits: pictify_emulator::PlanLimits,
        time_scale: f64,
    ) -> StackOptions {
        let defaults = StackOptions::default();
        StackOptions {
            plan: Some(plan),
            limits,
            time_scale,
            events: vec!["render.failed", "batch.completed"],
            settings: Settings {
                pacing: shared::settings::Pacing::for_plan(plan),
                ..defaults.settings.clone()
            },
            ..defaults
        }
    }
}

/// SQS's redrive: a message received this often without being deleted goes to the DLQ
/// (template.yaml's `maxReceiveCount`).
pub const MAX_RECEIVE_COUNT: u32 = 10;

/// One function as Lambda runs it: its pipeline, and the SQS client its event source mapping
/// receives and deletes with (the function's role, in AWS).
#[derive(Clone)]
pub struct Function {
    pub pipeline: Pipeline,
    pub queue: Arc<SqsWorkQueue>,
    pub sqs: aws_sdk_sqs::Client,
}

/// The four functions. Without `iam` they share the stack's pipeline.
#[derive(Clone)]
pub struct Functions {
    pub ingest: Function,
    pub submitter: Function,
    pub webhook: Function,
    pub reconciler: Function,
}

pub struct Stack {
    /// The pipeline with every right (the tests' own view; under `iam`, the harness admin's).
    pub pipeline: Pipeline,
    pub functions: Functions,
    /// Under `iam`: each principal's credentials and template environment.
    pub principals: Option<crate::iam::Principals>,
    /// template.yaml's `AWS::StackName` (it names the bucket and, under `iam`, the users).
    pub stack_name: String,
    pub queue: Arc<SqsWorkQueue>,
    pub queue_url: String,
    /// Long steps: ingest continuations and manifests (template.yaml's `StepQueue`).
    pub step_queue_url: String,
    /// The work queue's dead-letter queue (redrive after `MAX_RECEIVE_COUNT` receives).
    pub dlq_url: String,
    /// The alert topic (the functions publish to it; `MemoryAlerts` sees the same alerts).
    pub topic: String,
    /// template.yaml's `RowEventsTopic`: an IAM-enforced stack with `RowEvents=Enabled`
    /// publishes each finished row to it.
    pub row_events_topic: String,
    pub bucket: String,
    pub table: String,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamo: aws_sdk_dynamodb::Client,
    pub store: Arc<DynamoJobStore>,
    pub alerts: Arc<MemoryAlerts>,
    pub emulator: RunningEmulator,
    pub webhook_secret: String,
    /// Where the emulator delivers webhooks: the stack's "function URL".
    pub webhook_url: String,
    /// Every AWS request the pipeline's clients sent.
    pub requests: RequestCounter,
    _data: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let cfg = if options.iam {
            crate::iam::admin_config().await
        } else {
            aws_config().await
        };
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
        // template.yaml names the bucket after the stack: its policies name it so.
        let stack_name = unique_name("iam");
        let bucket = match (&options.bucket, options.iam) {
            (_, true) => {
                let name = format!(
                    "{stack_name}-{}-{}-uploads",
                    crate::iam::ACCOUNT,
                    crate::iam::REGION
                );
                create_bucket(&s3c, &name).await?;
                // As template.yaml's bucket: versioned.
                s3c.put_bucket_versioning()
                    .bucket(&name)
                    .versioning_configuration(
                        aws_sdk_s3::types::VersioningConfiguration::builder()
                            .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send()
                    .await
                    .sdk_context("enable versioning")?;
                name
            }
            (Some(name), false) => {
                create_bucket(&s3c, name).await?;
                name.clone()
            }
            (None, false) => fresh_bucket(&s3c, "uploads").await?,
        };
        let dlq_url = fresh_queue(&sqsc, "dlq").await?;
        let queue_url = fresh_queue(&sqsc, "work").await?;
        redrive(&sqsc, &queue_url, &dlq_url).await?;
        let step_queue_url = fresh_queue(&sqsc, "steps").await?;
        let topic = fresh_topic(&snsc, "alerts").await?;
        // template.yaml's RowEventsTopic (made whether or not a test publishes to it).
        let row_events_topic = fresh_topic(&snsc, "row-events").await?;
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
            webhook_retry_scale: options.webhook_retry_scale,
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
        let sinks: Vec<Arc<dyn Alerts>> = vec![
            memory_alerts.clone(),
            Arc::new(SnsAlerts::new(snsc, topic.clone())),
        ];
        let queue = Arc::new(
            SqsWorkQueue::new(sqsc.clone(), queue_url.clone())
                .with_step_queue(step_queue_url.clone()),
        );
        let store = Arc::new(DynamoJobStore::new(dyn_c.clone(), table.clone()));
        let pipeline = Pipeline {
            store: store.clone(),
            objects: Arc::new(S3ObjectStore::new(s3c.clone())),
            queue: queue.clone(),
            pictify: Arc::new(pictify),
            alerts: Arc::new(FanoutAlerts::new(sinks)),
            clock: Arc::new(SystemClock),
            settings: options.settings,
            webhook_secrets: vec![Secret::new(webhook_secret.clone())],
            outputs: Default::default(),
        };
        let (functions, principals) = if options.iam {
            let resources = IamResources {
                stack_name: &stack_name,
                bucket: &bucket,
                table: &table,
                queue_url: &queue_url,
                step_queue_url: &step_queue_url,
                dlq_url: &dlq_url,
                topic: &topic,
                row_events_topic: &row_events_topic,
                api_key: TEST_API_KEY,
                webhook_secret: &webhook_secret,
                pictify_url: &emulator.base_url(),
                webhook_url: &target_url,
                parameters: &options.template_parameters,
            };
            let (functions, principals) =
                wire_under_iam(&cfg, &resources, memory_alerts.clone()).await?;
            (functions, Some(principals))
        } else {
            let shared = Function {
                pipeline: pipeline.clone(),
                queue: queue.clone(),
                sqs: sqsc.clone(),
            };
            let functions = Functions {
                ingest: shared.clone(),
                submitter: shared.clone(),
                webhook: shared.clone(),
                reconciler: shared,
            };
            (functions, None)
        };
        serve_webhooks(receiver, functions.webhook.pipeline.clone());
        Ok(Stack {
            pipeline,
            functions,
            principals,
            stack_name,
            queue,
            queue_url,
            step_queue_url,
            dlq_url,
            topic,
            row_events_topic,
            bucket,
            table,
            s3: s3c,
            sqs: sqsc,
            dynamo: dyn_c,
            store,
            alerts: memory_alerts,
            emulator,
            webhook_secret,
            webhook_url: target_url,
            requests,
            _data: data,
        })
    }

    /// Uploads `rows` blog-card rows as `uploads/tmpl_blog_card/<name>.csv` and ingests them.
    pub async fn start_blog_job(&self, name: &str, rows: usize) -> anyhow::Result<JobId> {
        let key = format!("uploads/tmpl_blog_card/{name}.csv");
        self.upload(&key, crate::datasets::blog_csv(rows)).await?;
        crate::datasets::job_id_of(&self.ingest(&key).await?)
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
        ingest::function_handler(&self.functions.ingest.pipeline, event)
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
        let sqs = &self.functions.ingest.sqs;
        let out = sqs
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
            sqs.delete_message()
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
            .drain_steps_once(&self.functions.ingest.pipeline, Context::default())
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
        let submitter = &self.functions.submitter;
        let out = submitter
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
            &submitter.pipeline,
            &submitter.queue,
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
                submitter
                    .sqs
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

    /// One scheduled reconciler invocation, with "stuck" meaning anything submitted longer ago
    /// than `stuck_after`. Fails as the invocation would (a job left unrepaired).
    pub async fn reconcile(&self, stuck_after: Duration) -> anyhow::Result<Value> {
        let event = LambdaEvent::new(json!({ "source": "aws.events" }), Context::default());
        let mut pipeline = self.functions.reconciler.pipeline.clone();
        pipeline.settings.stuck_after = stuck_after;
        reconciler::function_handler(&pipeline, event)
            .await
            .map_err(|e| anyhow::anyhow!("reconciler: {e}"))
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
        let client = &self.dynamo;
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

/// The physical resources of an IAM-enforced stack, and what its secrets hold.
struct IamResources<'a> {
    stack_name: &'a str,
    bucket: &'a str,
    table: &'a str,
    queue_url: &'a str,
    step_queue_url: &'a str,
    dlq_url: &'a str,
    topic: &'a str,
    row_events_topic: &'a str,
    api_key: &'a str,
    webhook_secret: &'a str,
    pictify_url: &'a str,
    webhook_url: &'a str,
    parameters: &'a [(&'static str, String)],
}

/// Creates the stack's secrets, has the harness create one user per function from
/// template.yaml, and wires each function as Lambda would start it: `pipeline_from` over its
/// template environment, signing as its own user. Alerts also reach `memory` (the tests' view).
async fn wire_under_iam(
    admin: &aws_config::SdkConfig,
    r: &IamResources<'_>,
    memory: Arc<MemoryAlerts>,
) -> anyhow::Result<(Functions, crate::iam::Principals)> {
    use shared::wiring::{Needs, pipeline_from};

    let secrets = aws_sdk_secretsmanager::Client::new(admin);
    let stack_secret = json!({ "pictifyApiKey": r.api_key, "webhookSecrets": [r.webhook_secret] });
    let stack_secret_arn =
        create_secret(&secrets, &format!("{}-stack", r.stack_name), &stack_secret).await?;
    let alert_secret_arn =
        create_secret(&secrets, &format!("{}-alerts", r.stack_name), &json!({})).await?;

    let sqs = aws_sdk_sqs::Client::new(admin);
    let queue_name = |url: &str| url.rsplit('/').next().unwrap_or_default().to_owned();
    let (account, region) = (crate::iam::ACCOUNT, crate::iam::REGION);
    let key_id = "00000000-0000-0000-0000-000000000001";
    let mut parameters = serde_json::Map::new();
    parameters.insert("PictifyBaseUrl".into(), json!(r.pictify_url));
    for (name, value) in r.parameters {
        parameters.insert((*name).into(), json!(value));
    }
    let description = json!({
        "stackName": r.stack_name, "account": account, "region": region,
        "refs": {
            "UploadBucket": r.bucket, "JobsTable": r.table, "WorkQueue": r.queue_url,
            "StepQueue": r.step_queue_url, "WorkDeadLetterQueue": r.dlq_url, "AlertTopic": r.topic,
            "StackSecret": stack_secret_arn, "AlertSecret": alert_secret_arn, "AlertTopicKey": key_id,
            "RowEventsTopic": r.row_events_topic,
        },
        "attributes": {
            "UploadBucket.Arn": format!("arn:aws:s3:::{}", r.bucket),
            "JobsTable.Arn": format!("arn:aws:dynamodb:{region}:{account}:table/{}", r.table),
            "WorkQueue.Arn": queue_arn(&sqs, r.queue_url).await?,
            "WorkQueue.QueueName": queue_name(r.queue_url),
            "StepQueue.Arn": queue_arn(&sqs, r.step_queue_url).await?,
            "StepQueue.QueueName": queue_name(r.step_queue_url),
            "WorkDeadLetterQueue.Arn": queue_arn(&sqs, r.dlq_url).await?,
            "WorkDeadLetterQueue.QueueName": queue_name(r.dlq_url),
            "AlertTopic.TopicName": r.topic.rsplit(':').next().unwrap_or_default(),
            "AlertTopicKey.Arn": format!("arn:aws:kms:{region}:{account}:key/{key_id}"),
            "WebhookFunctionUrl.FunctionUrl": r.webhook_url,
        },
        "parameters": parameters,
    });
    let principals = crate::iam::create_users(&description)?;

    let wire = |principal: crate::iam::Principal, needs: Needs| {
        let memory = memory.clone();
        async move {
            let config = principal.config().await;
            let mut environment = principal.environment.clone();
            // The tests' pace: retries after 1 s, not the deployed default.
            environment.insert("RETRY_DELAY_SECONDS".into(), "1".into());
            environment.insert("SUBMIT_GRACE_SECONDS".into(), "2".into());
            let wired = pipeline_from(needs, &|name| environment.get(name).cloned(), &config)
                .await
                .with_context(|| format!("wiring with {:?}", principal.access_key_id))?;
            let mut pipeline = wired.pipeline;
            pipeline.alerts = Arc::new(FanoutAlerts::new(vec![memory, pipeline.alerts.clone()]));
            anyhow::Ok(Function {
                pipeline,
                queue: wired.queue,
                sqs: aws_sdk_sqs::Client::new(&config),
            })
        }
    };
    let functions = Functions {
        ingest: wire(principals.ingest.clone(), Needs::NOTHING).await?,
        submitter: wire(principals.submitter.clone(), Needs::PICTIFY).await?,
        webhook: wire(principals.webhook.clone(), Needs::WEBHOOK).await?,
        reconciler: wire(principals.reconciler.clone(), Needs::PICTIFY).await?,
    };
    Ok((functions, principals))
}

async fn create_secret(
    client: &aws_sdk_secretsmanager::Client,
    name: &str,
    value: &Value,
) -> anyhow::Result<String> {
    let out = client
        .create_secret()
        .name(name)
        .secret_string(value.to_string())
        .send()
        .await
        .sdk_context(format!("create secret {name}"))?;
    out.arn.with_context(|| format!("secret {name} has no ARN"))
}
