//! The stack as AWS runs it: each function under its own IAM policy, read from template.yaml.
//!
//! `scripts/test` starts a second moto that enforces IAM (`MOTO_IAM_ENDPOINT`) and creates the
//! harness's admin user. [`create_users`] has `scripts/lib/iam_harness.py` transform template.yaml
//! with aws-sam-translator, resolve each function role's statements and environment against this
//! test's resources, and create one moto user per function (and one for `OperatorPolicy`) with
//! exactly those statements. Each function is then wired through `shared::wiring::pipeline_from`,
//! the production wiring, from its template environment and its own credentials.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use serde::Deserialize;
use serde_json::Value;

use crate::aws::is_local_endpoint;

const RUN_SCRIPT_HINT: &str = "IAM-enforced tests need the second moto `scripts/test` starts \
     (MOTO_IAM_ENDPOINT, MOTO_IAM_ADMIN_KEY_ID, MOTO_IAM_ADMIN_SECRET, IAM_HARNESS_PYTHON, IAM_MOTO_LOG): run them through scripts/test";

/// moto's account: every ARN the harness resolves is in it.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!("{name} is not set; {RUN_SCRIPT_HINT}"),
    }
}

/// The IAM-enforcing moto's endpoint (asserted local).
pub fn endpoint() -> String {
    let endpoint = required("MOTO_IAM_ENDPOINT");
    assert!(
        is_local_endpoint(&endpoint),
        "MOTO_IAM_ENDPOINT={endpoint} is not local"
    );
    endpoint
}

/// An SDK config for the IAM-enforcing moto, signing as the given user.
pub async fn config_as(access_key_id: &str, secret_access_key: &str) -> SdkConfig {
    let credentials = aws_sdk_sqs::config::Credentials::new(
        access_key_id,
        secret_access_key,
        None,
        None,
        "iam-harness",
    );
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(credentials)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

/// The harness admin: builds the test's resources and reads results, as the uploading user would.
pub async fn admin_config() -> SdkConfig {
    config_as(
        &required("MOTO_IAM_ADMIN_KEY_ID"),
        &required("MOTO_IAM_ADMIN_SECRET"),
    )
    .await
}

/// An SQS event source mapping of a function, as template.yaml declares it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    pub queue_arn: String,
    pub batch_size: u32,
    pub reports_batch_item_failures: bool,
}

/// One principal of the stack: a function's role, or the operator policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Principal {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The function's environment from template.yaml, resolved (empty for the operator).
    pub environment: BTreeMap<String, String>,
    pub event_sources: Vec<EventSource>,
    /// The statements as the template grants them (before moto's adjustments).
    pub statements: Vec<Value>,
}

impl Principal {
    pub async fn config(&self) -> SdkConfig {
        config_as(&self.access_key_id, &self.secret_access_key).await
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Principals {
    pub ingest: Principal,
    pub submitter: Principal,
    pub webhook: Principal,
    pub reconciler: Principal,
    pub operator: Principal,
}

/// Creates the users for a stack whose physical resources `stack` describes (see
/// `scripts/lib/iam_harness.py`).
pub fn create_users(stack: &Value) -> anyhow::Result<Principals> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("stack.json");
    std::fs::write(&file, serde_json::to_vec(stack)?)?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/iam_harness.py");
    let output = std::process::Command::new(required("IAM_HARNESS_PYTHON"))
        .arg(&script)
        .args(["users", "--endpoint", &endpoint(), "--stack"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "iam_harness.py users failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading iam_harness.py's answer")
}

/// Every refusal the IAM-enforcing moto logged for the users of stack `stack_name`: a denied call
/// whose error a function only logs (an alert it could not publish) still shows here.
pub fn denials(stack_name: &str) -> Vec<String> {
    let log = required("IAM_MOTO_LOG");
    let user = format!(":user/{stack_name}-");
    std::fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("reading {log}: {e}"))
        .lines()
        .filter(|line| line.starts_with("IAM DENIED") && line.contains(&user))
        .map(str::to_owned)
        .collect()
}
