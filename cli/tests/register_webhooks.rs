//! `pictify-batch register-webhooks` end to end: the built binary, the in-process Pictify
//! emulator and the moto server `scripts/test` starts (Secrets Manager).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output, Stdio};

use rand::{RngCore as _, SeedableRng as _};
use serde_json::{Value, json};
use shared::pictify::wire::Subscription;
use shared::pictify::{PictifyClient, PictifyConfig};
use shared::secret::Secret;

const EMULATOR_KEY: &str = "pk_test_emulator";
const HOOK: &str = "https://hooks.example.test/webhook";
const RUN_SCRIPT_HINT: &str = "these tests need moto: run them through `scripts/test -p pictify-batch --test register_webhooks`";

/// A fresh emulator and a fresh stack secret holding the emulator's key and one old secret.
struct Stack {
    emulator: pictify_emulator::RunningEmulator,
    secrets: aws_sdk_secretsmanager::Client,
    secret_id: String,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Self {
        let secrets = secrets_manager().await;
        let dir = tempfile::tempdir().unwrap();
        let emulator = pictify_emulator::start(pictify_emulator::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("emulator"),
            ..pictify_emulator::Config::default()
        })
        .await
        .unwrap();
        let secret_id = format!(
            "pictify-batch-test-{:016x}",
            rand::rngs::StdRng::from_os_rng().next_u64()
        );
        let initial = json!({"pictifyApiKey": EMULATOR_KEY, "webhookSecrets": ["whsec_old"]});
        secrets
            .create_secret()
            .name(&secret_id)
            .secret_string(initial.to_string())
            .send()
            .await
            .unwrap();
        Stack {
            emulator,
            secrets,
            secret_id,
            _dir: dir,
        }
    }

    /// Runs the command against this stack (key from the secret unless `extra` gives one).
    async fn register(&self, extra: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
        command
            .args(["register-webhooks", "--url", HOOK, "--secret-id"])
            .arg(&self.secret_id)
            .args(["--base-url", &self.emulator.base_url()])
            .args(extra)
            .env_remove("PICTIFY_API_KEY")
            .env_remove("PICTIFY_BASE_URL")
            .env_remove("SECRET_ARN")
            .stdin(Stdio::null());
        // The emulator shares this runtime: wait for the child off its threads.
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    async fn webhook_secrets(&self) -> Vec<String> {
        let answer = self
            .secrets
            .get_secret_value()
            .secret_id(&self.secret_id)
            .send()
            .await
            .unwrap();
        let document: Value = serde_json::from_str(answer.secret_string().unwrap()).unwrap();
        assert_eq!(
            document["pictifyApiKey"], EMULATOR_KEY,
            "the key must be kept"
        );
        serde_json::from_value(document["webhookSecrets"].clone()).unwrap()
    }

    async fn subscriptions(&self) -> Vec<Subscription> {
        let client = PictifyClient::new(
            PictifyConfig::new(Secret::new(EMULATOR_KEY)).with_base_url(self.emulator.base_url()),
        )
        .unwrap();
        client.list_subscriptions().await.unwrap()
    }

    async fn events_subscribed(&self) -> Vec<String> {
        let mut events: Vec<String> = self
            .subscriptions()
            .await
            .into_iter()
            .filter(|s| s.target_url == HOOK)
            .map(|s| s.event)
            .collect();
        events.sort();
        events
    }
}

/// Secrets Manager on the local moto, refusing anything that could reach real AWS.
async fn secrets_manager() -> aws_sdk_secretsmanager::Client {
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .unwrap_or_else(|_| panic!("AWS_ENDPOINT_URL is not set; {RUN_SCRIPT_HINT}"));
    assert!(
        endpoint.starts_with("http://127.0.0.1") || endpoint.starts_with("http://localhost"),
        "AWS_ENDPOINT_URL={endpoint} is not local; {RUN_SCRIPT_HINT}"
    );
    assert_eq!(
        std::env::var("AWS_EC2_METADATA_DISABLED").as_deref(),
        Ok("true"),
        "{RUN_SCRIPT_HINT}"
    );
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_secretsmanager::Client::new(&config)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_one_line_usage_error(output: &Output, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line expected: {text}");
    assert!(text.contains(needle), "{text}");
}

const ALL_EVENTS: [&str; 3] = ["batch.completed", "render.completed", "render.failed"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_subscriptions_are_created_and_their_secrets_go_before_the_old_one() {
    let stack = Stack::start().await;
    let output = stack.register(&[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    assert_eq!(stack.events_subscribed().await, ALL_EVENTS);
    let secrets = stack.webhook_secrets().await;
    assert_eq!(secrets.len(), 4, "{secrets:?}");
    assert_eq!(secrets[3], "whsec_old");
    for new in &secrets[..3] {
        assert!(new.starts_with("whsec_") && new != "whsec_old");
        assert!(
            !stdout(&output).contains(new.as_str()),
            "a secret was printed"
        );
        assert!(
            !stderr(&output).contains(new.as_str()),
            "a secret was printed"
        );
    }
    assert_eq!(stdout(&output).matches(" created ").count(), 3);
    stack.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_creates_nothing_and_leaves_the_secret_unchanged() {
    let stack = Stack::start().await;
    assert_eq!(stack.register(&[]).await.status.code(), Some(0));
    let before = stack.webhook_secrets().await;

    let again = stack.register(&[]).await;
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("nothing to create"),
        "{}",
        stdout(&again)
    );
    assert_eq!(stack.subscriptions().await.len(), 3);
    assert_eq!(stack.webhook_secrets().await, before);
    stack.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_adds_a_subscription_per_event_and_keeps_every_older_secret() {
    let stack = Stack::start().await;
    assert_eq!(stack.register(&[]).await.status.code(), Some(0));
    let before = stack.webhook_secrets().await;

    let rotated = stack.register(&["--rotate"]).await;
    assert_eq!(rotated.status.code(), Some(0), "{}", stderr(&rotated));
    assert_eq!(stack.subscriptions().await.len(), 6);
    let after = stack.webhook_secrets().await;
    assert_eq!(after.len(), 7);
    assert_eq!(
        after[3..],
        before[..],
        "older secrets stay, after the new ones"
    );
    assert!(stdout(&rotated).contains("delete the old subscription"));
    stack.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing() {
    let stack = Stack::start().await;
    let output = stack.register(&["--dry-run"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output).matches("would be created").count(), 3);
    assert!(stack.subscriptions().await.is_empty());
    assert_eq!(stack.webhook_secrets().await, ["whsec_old"]);
    stack.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_api_key_exits_3_and_changes_nothing() {
    let stack = Stack::start().await;
    let output = stack.register(&["--api-key", "pk_wrong"]).await;
    assert_one_line_usage_error(&output, "refused the API key (401)");
    assert!(stack.subscriptions().await.is_empty());
    assert_eq!(stack.webhook_secrets().await, ["whsec_old"]);
    stack.emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_secret_exits_3_before_anything_is_created() {
    let stack = Stack::start().await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
    command
        .args([
            "register-webhooks",
            "--url",
            HOOK,
            "--secret-id",
            "no-such-secret",
        ])
        .args([
            "--base-url",
            &stack.emulator.base_url(),
            "--api-key",
            EMULATOR_KEY,
        ]);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_one_line_usage_error(&output, "secret `no-such-secret` not found");
    assert!(stack.subscriptions().await.is_empty());
    stack.emulator.shutdown().await;
}

#[test]
fn a_plain_http_url_exits_3() {
    let output = Command::new(env!("CARGO_BIN_EXE_pictify-batch"))
        .args([
            "register-webhooks",
            "--url",
            "http://hooks.example.test/webhook",
        ])
        .args(["--secret-id", "unused"])
        .output()
        .unwrap();
    assert_one_line_usage_error(&output, "plain http");
}
