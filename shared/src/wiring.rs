//! Composition for the Lambda functions: read the configuration once, build the AWS clients and
//! adapters once, hand back a `Pipeline`. Endpoints come from the SDK's standard
//! `AWS_ENDPOINT_URL*` variables, never from code branches.

use std::sync::Arc;

use anyhow::Context;

use crate::aws::dynamo::DynamoJobStore;
use crate::aws::s3::S3ObjectStore;
use crate::aws::sns::SnsAlerts;
use crate::aws::sqs::SqsWorkQueue;
use crate::local::{FanoutAlerts, HttpAlerts, LogAlerts};
use crate::pictify::{PictifyClient, PictifyConfig};
use crate::pipeline::Pipeline;
use crate::ports::{Alerts, SystemClock};
use crate::secret::Secret;
use crate::settings::{Settings, required_env};

/// The AWS pieces a handler may need beyond the pipeline (the submitter changes visibility).
pub struct Wired {
    pub pipeline: Pipeline,
    pub queue: Arc<SqsWorkQueue>,
}

/// Builds the pipeline from the environment. Fails at start-up, naming the missing variable.
pub async fn pipeline_from_env() -> anyhow::Result<Wired> {
    let settings = Settings::from_env()?;
    let table = required_env("TABLE_NAME")?;
    let queue_url = required_env("QUEUE_URL")?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let sqs = aws_sdk_sqs::Client::new(&config);

    let mut sinks: Vec<Arc<dyn Alerts>> = vec![Arc::new(LogAlerts)];
    if let Some(topic) = optional_env("ALERT_TOPIC_ARN") {
        sinks.push(Arc::new(SnsAlerts::new(
            aws_sdk_sns::Client::new(&config),
            topic,
        )));
    }
    if let Some(url) = optional_env("ALERT_WEBHOOK_URL") {
        sinks.push(Arc::new(HttpAlerts::new(url)));
    }

    let secrets = match optional_env("SECRET_ARN") {
        Some(arn) => {
            StackSecrets::fetch(&aws_sdk_secretsmanager::Client::new(&config), &arn).await?
        }
        None => StackSecrets::from_env(),
    };
    let pictify = PictifyClient::new(PictifyConfig {
        base_url: optional_env("PICTIFY_BASE_URL")
            .unwrap_or_else(|| "https://api.pictify.io".into()),
        // Only the submitter and the webhook call Pictify; ingest runs without a key.
        api_key: secrets.pictify_api_key.unwrap_or_else(|| Secret::new("")),
        ..PictifyConfig::default()
    })
    .context("building the Pictify client")?;
    let webhook_secrets = secrets.webhook_secrets;

    let mut queue = SqsWorkQueue::new(sqs, queue_url);
    if let Some(url) = optional_env("STEP_QUEUE_URL") {
        queue = queue.with_step_queue(url);
    }
    let queue = Arc::new(queue);
    let pipeline = Pipeline {
        store: Arc::new(
            DynamoJobStore::new(dynamo, table).with_record_ttl(settings.image_retention),
        ),
        objects: Arc::new(S3ObjectStore::new(s3)),
        queue: queue.clone(),
        pictify: Arc::new(pictify),
        alerts: Arc::new(FanoutAlerts::new(sinks)),
        clock: Arc::new(SystemClock),
        settings,
        webhook_secrets,
    };
    Ok(Wired { pipeline, queue })
}

/// The stack's secret (Secrets Manager, JSON): `{"pictifyApiKey": "pk_live_…", "webhookSecrets":
/// ["whsec_new", "whsec_old"]}`. Several webhook secrets are accepted at once during a rotation.
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StackSecrets {
    #[serde(default)]
    pub pictify_api_key: Option<Secret>,
    #[serde(default)]
    pub webhook_secrets: Vec<Secret>,
}

impl StackSecrets {
    /// Read once at cold start; the values are never logged.
    pub async fn fetch(client: &aws_sdk_secretsmanager::Client, arn: &str) -> anyhow::Result<Self> {
        let out = client
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .with_context(|| format!("reading secret {arn}"))?;
        let text = out
            .secret_string()
            .with_context(|| format!("secret {arn} has no string value"))?;
        serde_json::from_str(text).with_context(|| {
            format!("secret {arn} is not JSON of the form {{\"pictifyApiKey\": \"…\", \"webhookSecrets\": [\"whsec_…\"]}}")
        })
    }

    /// Local runs: `PICTIFY_API_KEY` and comma-separated `WEBHOOK_SECRETS`.
    pub fn from_env() -> Self {
        StackSecrets {
            pictify_api_key: optional_env("PICTIFY_API_KEY").map(Secret::new),
            webhook_secrets: optional_env("WEBHOOK_SECRETS")
                .map(|all| {
                    all.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(Secret::new)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn optional_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
