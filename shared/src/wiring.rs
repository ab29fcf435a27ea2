//! Composition for the Lambda functions: read the configuration once, build the AWS clients and
//! adapters once, hand back a `Pipeline`. Endpoints come from the SDK's standard
//! `AWS_ENDPOINT_URL*` variables, never from code branches.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_trait::async_trait;

use crate::aws::dynamo::DynamoJobStore;
use crate::aws::s3::S3ObjectStore;
use crate::aws::sns::{SnsAlerts, SnsRowEvents};
use crate::aws::sqs::SqsWorkQueue;
use crate::local::{FanoutAlerts, HttpAlerts, LogAlerts};
use crate::pictify::wire::{BatchAccepted, BatchRenderRequest, BatchResults};
use crate::pictify::{PictifyClient, PictifyConfig, PictifyError};
use crate::pipeline::{Outputs, Pipeline};
use crate::ports::{Alerts, NoRowEvents, PictifyApi, SystemClock};
use crate::secret::Secret;
use crate::settings::Settings;

/// The AWS pieces a handler may need beyond the pipeline (the submitter changes visibility).
pub struct Wired {
    pub pipeline: Pipeline,
    pub queue: Arc<SqsWorkQueue>,
}

/// What a function needs from the stack's secret. A need that is missing or blank fails the
/// start-up, naming the setting: no function runs with an empty key or without a webhook secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// It calls Pictify (submits, polls batch results).
    pub pictify_api_key: bool,
    /// It verifies webhook signatures.
    pub webhook_secrets: bool,
}

impl Needs {
    /// Ingest, and operator commands that only read or queue.
    pub const NOTHING: Needs = Needs {
        pictify_api_key: false,
        webhook_secrets: false,
    };
    /// The submitter, the reconciler.
    pub const PICTIFY: Needs = Needs {
        pictify_api_key: true,
        webhook_secrets: false,
    };
    /// The webhook: signatures, and a batch's results polled on `batch.completed`.
    pub const WEBHOOK: Needs = Needs {
        pictify_api_key: true,
        webhook_secrets: true,
    };
}

/// Builds the pipeline from the process environment and the SDK's default credentials. Fails at
/// start-up, naming the missing variable or secret field.
pub async fn pipeline_from_env(needs: Needs) -> anyhow::Result<Wired> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    pipeline_from(needs, &|name| std::env::var(name).ok(), &config).await
}

/// [`pipeline_from_env`] with the variables read through `env` and AWS reached with `config`: the
/// IAM-enforced tests wire each function exactly so, from template.yaml's environment and the
/// function's own credentials.
pub async fn pipeline_from(
    needs: Needs,
    env: &dyn Fn(&str) -> Option<String>,
    config: &aws_config::SdkConfig,
) -> anyhow::Result<Wired> {
    let optional = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let required = |name: &'static str| {
        optional(name).ok_or(crate::settings::SettingError {
            name,
            problem: "is not set".into(),
        })
    };
    let settings = Settings::from_lookup(env)?;
    let table = required("TABLE_NAME")?;
    let queue_url = required("QUEUE_URL")?;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build(),
    );
    let dynamo = aws_sdk_dynamodb::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let secrets_client = || aws_sdk_secretsmanager::Client::new(config);

    let mut sinks: Vec<Arc<dyn Alerts>> = vec![Arc::new(LogAlerts)];
    if let Some(topic) = optional("ALERT_TOPIC_ARN") {
        sinks.push(Arc::new(SnsAlerts::new(
            aws_sdk_sns::Client::new(config),
            topic,
        )));
    }
    // The Slack URL is a credential (anyone holding it can post): it lives in a secret of its
    // own, which every function may read, apart from the Pictify key, which only the functions
    // that call Pictify may.
    let alert_url = match optional("ALERT_SECRET_ARN") {
        Some(arn) => {
            AlertSecret::fetch(&secrets_client(), &arn)
                .await?
                .alert_webhook_url
        }
        None => optional("ALERT_WEBHOOK_URL").map(Secret::new),
    };
    if let Some(url) = alert_url.filter(|url| !url.expose().trim().is_empty()) {
        sinks.push(Arc::new(HttpAlerts::new(url.expose())));
    }
    let secrets = match optional("SECRET_ARN") {
        // A function that needs nothing from it never reads it (and has no right to).
        Some(_) if needs == Needs::NOTHING => StackSecrets::default(),
        Some(arn) => StackSecrets::fetch(&secrets_client(), &arn)
            .await?
            .checked(needs, &SecretSource::Stack(arn))?,
        None => StackSecrets::from_lookup(&optional).checked(needs, &SecretSource::Env)?,
    };
    let pictify: Arc<dyn PictifyApi> = match secrets.pictify_api_key {
        Some(api_key) => Arc::new(
            PictifyClient::new(PictifyConfig {
                base_url: optional("PICTIFY_BASE_URL")
                    .unwrap_or_else(|| "https://api.pictify.io".into()),
                api_key,
                ..PictifyConfig::default()
            })
            .context("building the Pictify client")?,
        ),
        None => Arc::new(NoApiKey),
    };
    let webhook_secrets = secrets.webhook_secrets;

    let mut queue = SqsWorkQueue::new(sqs, queue_url);
    if let Some(url) = optional("STEP_QUEUE_URL") {
        queue = queue.with_step_queue(url);
    }
    let queue = Arc::new(queue);
    let pipeline = Pipeline {
        store: Arc::new(
            DynamoJobStore::new(dynamo, table).with_record_ttl(settings.image_retention),
        ),
        objects: Arc::new(S3ObjectStore::new(s3)),
        queue: queue.clone(),
        pictify,
        alerts: Arc::new(FanoutAlerts::new(sinks)),
        clock: Arc::new(SystemClock),
        settings,
        webhook_secrets,
        outputs: Outputs {
            row_events: match optional("ROW_EVENTS_TOPIC_ARN").filter(|t| !t.trim().is_empty()) {
                Some(topic) => Arc::new(SnsRowEvents::new(aws_sdk_sns::Client::new(config), topic)),
                None => Arc::new(NoRowEvents),
            },
            ..Outputs::default()
        },
    };
    Ok(Wired { pipeline, queue })
}

/// When an invocation whose deadline is `deadline_ms` (Lambda's context: milliseconds since the
/// epoch) should stop starting work: `margin` before it. `None` when the runtime gave no deadline
/// (a local invoke, a test's default context).
pub fn deadline_less(deadline_ms: u64, margin: Duration) -> Option<Instant> {
    if deadline_ms == 0 {
        return None;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_millis();
    let left = u64::try_from(u128::from(deadline_ms).saturating_sub(now_ms)).ok()?;
    Some(Instant::now() + Duration::from_millis(left).saturating_sub(margin))
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
        let text = secret_string(client, arn).await?;
        serde_json::from_str(&text).with_context(|| {
            format!("secret {arn} is not JSON of the form {{\"pictifyApiKey\": \"…\", \"webhookSecrets\": [\"whsec_…\"]}}")
        })
    }

    /// Keeps the secrets a function may use, refusing (naming the setting) a need that is missing
    /// or blank, and a blank webhook secret in any function: a blank value is never used.
    pub fn checked(mut self, needs: Needs, source: &SecretSource) -> anyhow::Result<Self> {
        self.pictify_api_key = self
            .pictify_api_key
            .filter(|key| !key.expose().trim().is_empty());
        if needs.pictify_api_key && self.pictify_api_key.is_none() {
            bail!(
                "{} is missing or blank in {source}: this function calls Pictify",
                source.api_key_name()
            );
        }
        let blank = self
            .webhook_secrets
            .iter()
            .position(|secret| secret.expose().trim().is_empty());
        if let Some(index) = blank {
            bail!(
                "{}[{index}] is blank in {source}",
                source.webhook_secrets_name()
            );
        }
        if needs.webhook_secrets && self.webhook_secrets.is_empty() {
            bail!(
                "{} is empty in {source}: this function verifies webhook signatures",
                source.webhook_secrets_name()
            );
        }
        Ok(self)
    }

    /// Local runs: `PICTIFY_API_KEY`, comma-separated `WEBHOOK_SECRETS`.
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Self {
        StackSecrets {
            pictify_api_key: get("PICTIFY_API_KEY").map(Secret::new),
            webhook_secrets: get("WEBHOOK_SECRETS")
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

/// The alert secret (`ALERT_SECRET_ARN`): `{"alertWebhookUrl": "https://hooks.slack.com/…"}`, or
/// `{}` for no Slack-compatible alerts (the SNS topic gets every alert either way).
#[derive(Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertSecret {
    #[serde(default)]
    pub alert_webhook_url: Option<Secret>,
}

impl AlertSecret {
    /// Read once at cold start; the URL is never logged.
    pub async fn fetch(client: &aws_sdk_secretsmanager::Client, arn: &str) -> anyhow::Result<Self> {
        let text = secret_string(client, arn).await?;
        serde_json::from_str(&text).with_context(|| {
            format!("secret {arn} is not JSON of the form {{\"alertWebhookUrl\": \"https://…\"}}")
        })
    }
}

async fn secret_string(
    client: &aws_sdk_secretsmanager::Client,
    arn: &str,
) -> anyhow::Result<String> {
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .with_context(|| format!("reading secret {arn}"))?;
    out.secret_string()
        .map(str::to_owned)
        .with_context(|| format!("secret {arn} has no string value"))
}

/// Where the secrets were read, to name the setting in an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The stack's Secrets Manager secret (`SECRET_ARN`).
    Stack(String),
    /// `PICTIFY_API_KEY` and `WEBHOOK_SECRETS` (no `SECRET_ARN`).
    Env,
}

impl SecretSource {
    fn api_key_name(&self) -> &'static str {
        match self {
            SecretSource::Stack(_) => "pictifyApiKey",
            SecretSource::Env => "PICTIFY_API_KEY",
        }
    }

    fn webhook_secrets_name(&self) -> &'static str {
        match self {
            SecretSource::Stack(_) => "webhookSecrets",
            SecretSource::Env => "WEBHOOK_SECRETS",
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Stack(arn) => write!(f, "the stack secret {arn}"),
            SecretSource::Env => write!(f, "the environment"),
        }
    }
}

/// The Pictify port of a function that has no API key (ingest, an operator command that only
/// reads): it never calls Pictify, and were it ever to, the call fails here instead of going out
/// with an empty key.
struct NoApiKey;

#[async_trait]
impl PictifyApi for NoApiKey {
    async fn list_subscriptions(
        &self,
    ) -> Result<Vec<crate::pictify::wire::Subscription>, PictifyError> {
        Err(no_api_key())
    }

    async fn render_batch(
        &self,
        _template_id: &str,
        _request: &BatchRenderRequest,
        _idempotency_key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        Err(no_api_key())
    }

    async fn get_batch_results(&self, _batch_id: &str) -> Result<BatchResults, PictifyError> {
        Err(no_api_key())
    }

    async fn cancel_batch(
        &self,
        _batch_id: &str,
    ) -> Result<crate::pictify::wire::CancelResult, PictifyError> {
        Err(no_api_key())
    }

    async fn template_variables(
        &self,
        _template_id: &str,
    ) -> Result<Vec<crate::pictify::variables::VariableDef>, PictifyError> {
        Err(no_api_key())
    }
}

fn no_api_key() -> PictifyError {
    PictifyError::Unauthorized {
        message: "this function was started without a Pictify API key".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(key: &str, webhook: &[&str]) -> StackSecrets {
        StackSecrets {
            pictify_api_key: Some(Secret::new(key)),
            webhook_secrets: webhook.iter().map(|s| Secret::new(*s)).collect(),
        }
    }

    fn refusal(secrets: StackSecrets, needs: Needs, source: &SecretSource) -> String {
        match secrets.checked(needs, source) {
            Ok(_) => "accepted".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_blank_key_or_secret_is_refused_at_start_up_naming_the_setting() {
        let stack = SecretSource::Stack("arn:aws:secretsmanager:us-east-1:1:secret:s".into());
        // The template's placeholder secret: ingest starts, the Pictify callers refuse.
        assert_eq!(
            refusal(secrets("", &[]), Needs::NOTHING, &stack),
            "accepted"
        );
        assert_eq!(
            refusal(secrets(" \t", &[]), Needs::PICTIFY, &stack),
            "pictifyApiKey is missing or blank in the stack secret \
             arn:aws:secretsmanager:us-east-1:1:secret:s: this function calls Pictify"
        );
        assert_eq!(
            refusal(
                secrets("pk_live_1", &[]),
                Needs::WEBHOOK,
                &SecretSource::Env
            ),
            "WEBHOOK_SECRETS is empty in the environment: this function verifies webhook signatures"
        );
        // A blank secret in the list is refused wherever it is read.
        assert_eq!(
            refusal(
                secrets("pk_live_1", &["whsec_a", " "]),
                Needs::NOTHING,
                &stack
            ),
            "webhookSecrets[1] is blank in the stack secret arn:aws:secretsmanager:us-east-1:1:secret:s"
        );
        let kept = secrets("pk_live_1", &["whsec_a"])
            .checked(Needs::WEBHOOK, &stack)
            .map(|s| (s.pictify_api_key.is_some(), s.webhook_secrets.len()));
        assert_eq!(kept.ok(), Some((true, 1)));
        // Not needed and blank: dropped, never kept as an empty key.
        let dropped = secrets("", &[]).checked(Needs::NOTHING, &stack).ok();
        assert!(dropped.is_some_and(|s| s.pictify_api_key.is_none()));
    }

    #[tokio::test]
    async fn without_a_key_no_call_goes_out() {
        let refused = NoApiKey.get_batch_results("b_1").await;
        assert!(matches!(refused, Err(PictifyError::Unauthorized { .. })));
    }
}
