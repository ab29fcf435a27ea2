//! `pictify-batch reconcile` end to end: the built binary, with the Lambdas' environment
//! (TABLE_NAME, QUEUE_URL), against the moto server `scripts/test` starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use rand::{RngCore as _, SeedableRng as _};
use serde_json::Value;
use shared::aws::dynamo::{DynamoJobStore, create_table};
use shared::domain::{Counters, JobStatus};
use shared::ports::JobLedger;

const RUN_SCRIPT_HINT: &str =
    "this test needs moto: run it through `scripts/test -p pictify-batch --test reconcile`";

async fn aws() -> aws_config::SdkConfig {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .unwrap_or_else(|_| panic!("AWS_ENDPOINT_URL is not set; {RUN_SCRIPT_HINT}"));
    assert!(
        endpoint.starts_with("http://127.0.0.1"),
        "AWS_ENDPOINT_URL={endpoint} is not local; {RUN_SCRIPT_HINT}"
    );
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

fn reconcile(table: &str, queue_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("reconcile")
        .env("TABLE_NAME", table)
        .env("QUEUE_URL", queue_url)
        .env("JOB_DEADLINE_SECONDS", "3600")
        // A pass polls Pictify: the operator's key. Its one call here (the template's
        // definitions, best effort) goes to a closed local port, never off the machine.
        .env("PICTIFY_API_KEY", "pk_test_operator")
        .env("PICTIFY_BASE_URL", "http://127.0.0.1:9")
        .env_remove("SECRET_ARN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn report(output: &Output) -> Value {
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn a_pass_alerts_a_job_past_its_deadline_once() {
    let config = aws().await;
    let name = format!(
        "reconcile-{:012x}",
        rand::rngs::StdRng::from_os_rng().next_u64() >> 16
    );
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    create_table(&dynamo, &name).await.unwrap();
    let sqs = aws_sdk_sqs::Client::new(&config);
    let queue_url = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    // A job uploaded two hours ago, still running with 3 rows in flight.
    let store = DynamoJobStore::new(dynamo, name.clone());
    let mut job = shared::store_contract::job();
    job.created_at = chrono::Utc::now().timestamp() - 7_200;
    store.create_job(&job).await.unwrap();
    job.status = JobStatus::Running;
    job.counters = Counters {
        rows: 3,
        ..Counters::default()
    };
    store.finish_ingest(&job).await.unwrap();

    let first = report(&reconcile(&name, &queue_url));
    assert_eq!(
        (first["jobs"].as_u64(), first["overdue"].as_u64()),
        (Some(1), Some(1))
    );
    let second = report(&reconcile(&name, &queue_url));
    assert_eq!(second["overdue"].as_u64(), Some(0), "alerted once");
}

#[test]
fn without_the_stack_environment_it_names_the_missing_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("reconcile")
        .env_remove("TABLE_NAME")
        .env_remove("QUEUE_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("TABLE_NAME"));
}

#[test]
fn without_a_pictify_key_it_refuses_to_start_naming_the_setting() {
    // A pass polls Pictify: with a blank key it would be refused (401) and pause every job.
    let output = Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .arg("reconcile")
        .env("TABLE_NAME", "jobs")
        .env("QUEUE_URL", "http://127.0.0.1:9/queue/none")
        .env("PICTIFY_API_KEY", "  ")
        .env_remove("SECRET_ARN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PICTIFY_API_KEY is missing or blank in the environment"),
        "{stderr}"
    );
}
