//! AWS test plumbing: SDK config and clients aimed at the local moto server that `scripts/test` starts, plus fresh-resource helpers.

use std::error::Error;
use std::fmt::Display;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

const RUN_SCRIPT_HINT: &str = "integration tests need the local AWS stand-in: run them through `scripts/test` \
     (e.g. `scripts/test -p integration-tests`), which starts moto and sets AWS_ENDPOINT_URL";

/// SDK config for moto, read from the environment `scripts/test` prepares.
///
/// Panics unless every endpoint variable points at 127.0.0.1/localhost and
/// instance-metadata lookups are disabled: tests must never reach real AWS
/// or 169.254.169.254.
pub async fn aws_config() -> SdkConfig {
    assert_local_aws_env();
    let cfg = aws_config::defaults(BehaviorVersion::latest())
        // A wedged call should fail the test, not hang the suite.
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await;
    match cfg.endpoint_url() {
        Some(url) if is_local_endpoint(url) => cfg,
        other => panic!("SDK endpoint resolved to {other:?}, not a local one; {RUN_SCRIPT_HINT}"),
    }
}

fn assert_local_aws_env() {
    let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") else {
        panic!("AWS_ENDPOINT_URL is not set; {RUN_SCRIPT_HINT}");
    };
    assert!(
        is_local_endpoint(&endpoint),
        "AWS_ENDPOINT_URL={endpoint} is not 127.0.0.1/localhost; {RUN_SCRIPT_HINT}"
    );
    // Per-service overrides beat the global one inside the SDK.
    for (name, value) in std::env::vars() {
        if name.starts_with("AWS_ENDPOINT_URL_") {
            assert!(
                is_local_endpoint(&value),
                "{name}={value} is not local; {RUN_SCRIPT_HINT}"
            );
        }
    }
    let env_is_true = |name: &str| {
        std::env::var(name).is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"))
    };
    assert!(
        env_is_true("AWS_EC2_METADATA_DISABLED"),
        "AWS_EC2_METADATA_DISABLED must be `true` so the SDK never calls the instance-metadata address; {RUN_SCRIPT_HINT}"
    );
    assert!(
        !env_is_true("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"),
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS would send calls to real AWS; {RUN_SCRIPT_HINT}"
    );
}

/// True when `url` is http(s) to 127.0.0.1, localhost or [::1].
pub fn is_local_endpoint(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Userinfo would let `http://127.0.0.1@evil.example` pass a naive check.
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    matches!(
        host.to_ascii_lowercase().as_str(),
        "127.0.0.1" | "localhost" | "::1"
    )
}

/// S3 client; path-style because moto cannot serve `bucket.localhost` hosts.
pub fn s3(cfg: &SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(cfg)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn sqs(cfg: &SdkConfig) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(cfg)
}

pub fn dynamodb(cfg: &SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(cfg)
}

pub fn sns(cfg: &SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(cfg)
}

const SUFFIX_LEN: usize = 12;
const MAX_NAME_LEN: usize = 63;

/// `prefix` plus a random suffix, e.g. `ingest-k3v9q0x2m1ab`.
///
/// Valid as an S3 bucket, SQS queue, SNS topic and DynamoDB table name:
/// lowercase `[a-z0-9-]`, starts and ends alphanumeric, 3–63 chars. Other
/// characters in `prefix` become `-`; a long prefix is cut.
pub fn unique_name(prefix: &str) -> String {
    let mut head: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(MAX_NAME_LEN - SUFFIX_LEN - 1)
        .collect();
    head = head.trim_matches('-').to_owned();
    if head.is_empty() {
        head.push('t');
    }
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = StdRng::from_os_rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("{head}-{suffix}")
}

/// Turns an SDK error into an `anyhow` error that keeps the whole cause chain
/// (an SDK error's own `Display` is just "service error").
pub trait SdkResultExt<T> {
    fn sdk_context(self, what: impl Display) -> anyhow::Result<T>;
}

impl<T, E: Error> SdkResultExt<T> for Result<T, E> {
    fn sdk_context(self, what: impl Display) -> anyhow::Result<T> {
        self.map_err(|e| anyhow!("{what}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
    }
}

/// Creates an empty bucket named `unique_name(prefix)` and returns its name.
pub async fn fresh_bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> anyhow::Result<String> {
    let bucket = unique_name(prefix);
    create_bucket(s3, &bucket).await?;
    Ok(bucket)
}

/// Creates the bucket `name`.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, name: &str) -> anyhow::Result<()> {
    s3.create_bucket()
        .bucket(name)
        .send()
        .await
        .sdk_context(format!("create bucket {name}"))?;
    Ok(())
}

/// Creates a standard queue named `unique_name(prefix)` and returns its URL.
pub async fn fresh_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    let created = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .sdk_context(format!("create queue {name}"))?;
    created
        .queue_url
        .with_context(|| format!("create queue {name}: no queue URL in the answer"))
}

/// Creates a topic named `unique_name(prefix)` and returns its ARN.
pub async fn fresh_topic(sns: &aws_sdk_sns::Client, prefix: &str) -> anyhow::Result<String> {
    let name = unique_name(prefix);
    let created = sns
        .create_topic()
        .name(&name)
        .send()
        .await
        .sdk_context(format!("create topic {name}"))?;
    created
        .topic_arn
        .with_context(|| format!("create topic {name}: no topic ARN in the answer"))
}

/// The ARN of the queue at `queue_url`.
pub async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> anyhow::Result<String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .sdk_context(format!("get attributes of {queue_url}"))?;
    attrs
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .with_context(|| format!("queue {queue_url} has no QueueArn attribute"))
}

/// Subscribes the queue to the topic with raw delivery, so each SQS body is
/// exactly the published message (no SNS JSON envelope).
pub async fn subscribe_queue(
    sns: &aws_sdk_sns::Client,
    sqs: &aws_sdk_sqs::Client,
    topic_arn: &str,
    queue_url: &str,
) -> anyhow::Result<()> {
    let endpoint = queue_arn(sqs, queue_url).await?;
    sns.subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(&endpoint)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .sdk_context(format!("subscribe {endpoint} to {topic_arn}"))?;
    Ok(())
}

/// Receives up to `max` messages, long-polling up to `wait_secs` (≤ 20).
pub async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    max: i32,
    wait_secs: i32,
) -> anyhow::Result<Vec<aws_sdk_sqs::types::Message>> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(max)
        .wait_time_seconds(wait_secs)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .sdk_context(format!("receive from {queue_url}"))?;
    Ok(out.messages.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints_are_recognised() {
        for url in [
            "http://127.0.0.1:5000",
            "http://localhost:5000/",
            "https://LOCALHOST",
            "http://[::1]:4566/x",
        ] {
            assert!(is_local_endpoint(url), "{url}");
        }
    }

    #[test]
    fn remote_or_tricky_endpoints_are_rejected() {
        for url in [
            "https://s3.amazonaws.com",
            "http://169.254.169.254",
            "http://127.0.0.1@evil.example",
            "http://localhost.evil.example",
            "127.0.0.1:5000",
            "",
        ] {
            assert!(!is_local_endpoint(url), "{url}");
        }
    }

    #[test]
    fn unique_names_are_valid_bucket_names() {
        for prefix in ["", "Ingest_Bucket", "-x-", &"a".repeat(200)] {
            let name = unique_name(prefix);
            assert!((3..=63).contains(&name.len()), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
    }

    #[test]
    fn unique_names_differ_between_calls() {
        assert_ne!(unique_name("q"), unique_name("q"));
    }
}
