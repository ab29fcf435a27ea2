//! `PictifyClient` against the real emulator over HTTP: every status path the pipeline branches on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use pictify_emulator::{Config, Ledger, RunningEmulator};
use serde_json::{Value, json};
use shared::pictify::wire::{BatchRenderRequest, BatchResults, BatchStatus, CreateSubscription};
use shared::pictify::{PictifyClient, PictifyConfig, PictifyError};
use shared::secret::Secret;
use tempfile::TempDir;

const KEY: &str = "pk_test_emulator";
const TEMPLATE: &str = "tmpl_blog_card";
const MAX_RETRIES: u32 = 2;

struct Harness {
    emulator: RunningEmulator,
    client: PictifyClient,
    http: reqwest::Client,
    _data: TempDir,
}

async fn start() -> Harness {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        seed: 7,
        ..Config::default()
    };
    // Placeholder images: these tests are about the protocol, not pixels.
    config.render.rasterize = false;
    tweak(&mut config);
    let emulator = pictify_emulator::start(config).await.unwrap();
    let client = client_with(&emulator, KEY, Duration::from_secs(5));
    Harness {
        emulator,
        client,
        http: reqwest::Client::new(),
        _data: data,
    }
}

fn client_with(emulator: &RunningEmulator, key: &str, timeout: Duration) -> PictifyClient {
    let mut config = PictifyConfig::new(Secret::new(key)).with_base_url(emulator.base_url());
    config.timeout = timeout;
    config.max_retries = MAX_RETRIES;
    config.backoff_base = Duration::from_millis(10);
    PictifyClient::new(config).unwrap()
}

fn blog_cards(n: usize) -> BatchRenderRequest {
    let sets = (0..n)
        .map(|i| {
            let set =
                json!({"title": format!("Post {i}"), "author": "Ada", "publishDate": "2026-01-29"});
            set.as_object().cloned().unwrap()
        })
        .collect();
    BatchRenderRequest {
        variable_sets: sets,
        format: None,
        quality: None,
        concurrency: None,
        layout: None,
        layouts: None,
    }
}

impl Harness {
    async fn ledger(&self) -> Ledger {
        let url = format!("{}/_emulator/ledger", self.emulator.base_url());
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn set_faults(&self, faults: Value) {
        let url = format!("{}/_emulator/faults", self.emulator.base_url());
        let response = self.http.put(url).json(&faults).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "faults refused: {}",
            response.text().await.unwrap()
        );
    }

    async fn submit(&self, sets: usize, key: &str) -> Result<String, PictifyError> {
        let accepted = self
            .client
            .render_batch(TEMPLATE, &blog_cards(sets), key)
            .await?;
        Ok(accepted.batch_id)
    }

    async fn wait_until_terminal(&self, batch_id: &str) -> BatchResults {
        for _ in 0..600 {
            let results = self.client.get_batch_results(batch_id).await.unwrap();
            if results.status.is_terminal() {
                return results;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("batch {batch_id} did not finish within 30 s");
    }
}

#[tokio::test]
async fn submit_is_accepted_with_a_batch_id() {
    let h = start().await;
    let accepted = h
        .client
        .render_batch(TEMPLATE, &blog_cards(2), "chunk-1")
        .await
        .unwrap();
    assert!(
        accepted.batch_id.starts_with("batch_"),
        "{}",
        accepted.batch_id
    );
    assert_eq!(accepted.status, Some(BatchStatus::Pending));
    assert_eq!(accepted.total_items, Some(2));
    assert_eq!(h.ledger().await.accepted_with_key("chunk-1"), 1);
}

#[tokio::test]
async fn results_poll_reaches_completed() {
    let h = start().await;
    let batch_id = h.submit(3, "chunk-poll").await.unwrap();
    let results = h.wait_until_terminal(&batch_id).await;
    assert_eq!(
        (
            results.status,
            results.completed_items,
            results.failed_items
        ),
        (BatchStatus::Completed, 3, 0)
    );
    assert_eq!(
        results.results[0].variables.len(),
        3,
        "variable names, not values"
    );
}

#[tokio::test]
async fn running_batch_can_be_cancelled_once() {
    let h = start().await;
    h.set_faults(json!({"renderLatencyMs": 2000})).await;
    let batch_id = h.submit(5, "chunk-cancel").await.unwrap();
    let cancelled = h.client.cancel_batch(&batch_id).await.unwrap();
    assert_eq!(
        (cancelled.batch_id.as_str(), cancelled.status),
        (batch_id.as_str(), BatchStatus::Cancelled)
    );
    let again = h.client.cancel_batch(&batch_id).await.unwrap_err();
    assert!(
        matches!(
            again,
            PictifyError::InvalidRequest {
                status: Some(409),
                ..
            }
        ),
        "{again:?}"
    );
}

#[tokio::test]
async fn unknown_api_key_is_unauthorized_and_not_retried() {
    let h = start().await;
    let client = client_with(&h.emulator, "pk_test_wrong", Duration::from_secs(5));
    let error = client
        .render_batch(TEMPLATE, &blog_cards(1), "chunk-auth")
        .await
        .unwrap_err();
    assert!(
        matches!(error, PictifyError::Unauthorized { .. }),
        "{error:?}"
    );
    let ledger = h.ledger().await;
    assert_eq!((ledger.submit_requests, ledger.rejected_with(401)), (1, 1));
}

#[tokio::test]
async fn unknown_template_and_unknown_batch_are_not_found() {
    let h = start().await;
    let template = h
        .client
        .render_batch("tmpl_missing", &blog_cards(1), "chunk-404")
        .await
        .unwrap_err();
    assert!(
        matches!(template, PictifyError::NotFound { ref message } if message.contains("Template")),
        "{template:?}"
    );
    let poll = h
        .client
        .get_batch_results("batch_missing")
        .await
        .unwrap_err();
    assert!(matches!(poll, PictifyError::NotFound { .. }), "{poll:?}");
    let cancel = h.client.cancel_batch("batch_missing").await.unwrap_err();
    assert!(
        matches!(cancel, PictifyError::NotFound { .. }),
        "{cancel:?}"
    );
}

#[tokio::test]
async fn server_side_limit_comes_back_with_field_errors() {
    let h = start_with(|c| c.max_items_per_batch = 2).await;
    let error = h.submit(3, "chunk-too-big").await.unwrap_err();
    assert!(
        matches!(
            error,
            PictifyError::InvalidRequest {
                status: Some(400),
                ..
            }
        ),
        "{error:?}"
    );
    let field = &error.field_errors()[0];
    assert_eq!(
        (field.field.as_str(), field.code.as_deref()),
        ("variableSets", Some("too_long"))
    );
    assert!(error.to_string().contains("at most 2"), "{error}");
}

#[tokio::test]
async fn out_of_range_quality_is_refused_by_client_before_the_server_sees_it() {
    let h = start().await;
    let request = BatchRenderRequest {
        quality: Some(5.0),
        ..blog_cards(1)
    };
    let error = h
        .client
        .render_batch(TEMPLATE, &request, "chunk-q")
        .await
        .unwrap_err();
    assert!(
        matches!(error, PictifyError::InvalidRequest { status: None, .. }),
        "{error:?}"
    );
    assert_eq!(h.ledger().await.submit_requests, 0);

    // The same body sent raw is refused by the emulator with the same field.
    let url = format!(
        "{}/templates/{TEMPLATE}/batch-render",
        h.emulator.base_url()
    );
    let raw = h
        .http
        .post(url)
        .bearer_auth(KEY)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "quality");
}

#[tokio::test]
async fn rate_limit_is_surfaced_with_retry_after_and_not_retried() {
    let h = start().await;
    h.set_faults(json!({"submit429Rate": 1.0})).await;
    let error = h.submit(1, "chunk-429").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::RateLimited { .. }),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(1)));
    let ledger = h.ledger().await;
    assert_eq!(
        (ledger.submit_requests, ledger.batches_accepted.len()),
        (1, 0)
    );
}

#[tokio::test]
async fn exhausted_quota_is_402() {
    let h = start_with(|c| c.quota = Some(0)).await;
    let error = h.submit(1, "chunk-quota").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::Quota { status: 402, .. }),
        "{error:?}"
    );
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn quota_as_429_is_still_a_quota_error() {
    let h = start_with(|c| {
        c.quota = Some(0);
        c.quota_as_429 = true;
    })
    .await;
    let error = h.submit(1, "chunk-quota-429").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::Quota { status: 429, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_surfaced_without_a_batch() {
    let h = start().await;
    h.set_faults(json!({"submit5xxRate": 1.0})).await;
    let error = h.submit(1, "chunk-5xx").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::Server { status: 503, .. }),
        "{error:?}"
    );
    let ledger = h.ledger().await;
    assert_eq!(ledger.submit_requests, u64::from(MAX_RETRIES) + 1);
    assert!(ledger.batches_accepted.is_empty());
}

#[tokio::test]
async fn same_key_twice_replays_the_same_batch() {
    let h = start().await;
    let first = h.submit(2, "chunk-replay").await.unwrap();
    let second = h.submit(2, "chunk-replay").await.unwrap();
    assert_eq!(first, second);
    let ledger = h.ledger().await;
    assert_eq!((ledger.batches_accepted.len(), ledger.replays), (1, 1));
}

#[tokio::test]
async fn same_key_with_a_different_body_conflicts() {
    let h = start().await;
    h.submit(1, "chunk-reused").await.unwrap();
    let error = h.submit(2, "chunk-reused").await.unwrap_err();
    assert!(
        matches!(
            error,
            PictifyError::InvalidRequest {
                status: Some(409),
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn timed_out_submit_is_retried_with_its_key_and_bills_one_batch() {
    let h = start().await;
    h.set_faults(json!({"submitLateAnswerRate": 1.0, "lateAnswerDelayMs": 3000}))
        .await;
    let client = client_with(&h.emulator, KEY, Duration::from_millis(500));
    let accepted = client
        .render_batch(TEMPLATE, &blog_cards(2), "chunk-late")
        .await
        .unwrap();
    let ledger = h.ledger().await;
    assert_eq!(
        ledger.submit_requests, 2,
        "the timed-out attempt and its replay"
    );
    assert_eq!((ledger.batches_accepted.len(), ledger.replays), (1, 1));
    assert_eq!(ledger.batches_accepted[0].batch_id, accepted.batch_id);
}

#[tokio::test]
async fn subscriptions_can_be_created_listed_and_deleted() {
    let h = start().await;
    let request = CreateSubscription {
        event: "render.completed".into(),
        target_url: "http://127.0.0.1:9/hook".into(),
        platform: None,
        filters: None,
    };
    let created = h.client.create_subscription(&request).await.unwrap();
    assert!(
        created
            .secret
            .as_deref()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    let listed = h.client.list_subscriptions().await.unwrap();
    assert_eq!(
        listed.iter().map(|s| s.uid.as_str()).collect::<Vec<_>>(),
        [created.uid.as_str()]
    );
    assert!(listed[0].secret.is_none(), "the secret is shown only once");
    h.client.delete_subscription(&created.uid).await.unwrap();
    assert!(h.client.list_subscriptions().await.unwrap().is_empty());
    let gone = h
        .client
        .delete_subscription(&created.uid)
        .await
        .unwrap_err();
    assert!(matches!(gone, PictifyError::NotFound { .. }), "{gone:?}");
}
