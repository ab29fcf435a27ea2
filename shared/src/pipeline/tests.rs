//! Unit tests of the pipeline's logic with in-memory adapters and a scripted Pictify.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::domain::{ChunkKey, ChunkMessage, JobStatus, ObjectRef};
use crate::local::{FsObjectStore, MemoryAlerts, MemoryJobStore, MemoryQueue};
use crate::pictify::PictifyError;
use crate::pictify::wire::{
    BatchAccepted, BatchItemStatus, BatchRenderRequest, BatchResults, BatchStatus,
};
use crate::ports::{
    ChunkLedger, Clock, JobLedger, ObjectStore, RenderLog, SubmitSwitch, SubmitWindow,
};
use crate::secret::Secret;
use crate::signing::signature_header;

const SECRET: &str = "whsec_unit";
const NOW: i64 = 1_800_000_000;

/// Starts at `NOW`; tests move it forward to pass grace periods and deadlines.
struct TestClock(std::sync::atomic::AtomicI64);
impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Pictify as a script: accepts batches, fails the items whose title is in `fail`, and can be told
/// to answer the next submit with an error.
#[derive(Default)]
struct ScriptedPictify {
    batches: Mutex<Vec<(String, String, BatchRenderRequest)>>, // (batch id, idempotency key, request)
    fail: Mutex<HashMap<String, &'static str>>,                // title → error code
    next_error: Mutex<Option<PictifyError>>,
    /// Batches cancelled: their items (not started, in this script) are skipped.
    cancelled: Mutex<Vec<String>>,
}

#[async_trait]
impl crate::ports::PictifyApi for ScriptedPictify {
    async fn list_subscriptions(
        &self,
    ) -> Result<Vec<crate::pictify::wire::Subscription>, PictifyError> {
        Ok(Vec::new())
    }

    async fn render_batch(
        &self,
        _t: &str,
        request: &BatchRenderRequest,
        key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        if let Some(e) = self.next_error.lock().unwrap().take() {
            return Err(e);
        }
        let mut batches = self.batches.lock().unwrap();
        if let Some((id, _, _)) = batches.iter().find(|(_, k, _)| k == key) {
            return Ok(BatchAccepted {
                batch_id: id.clone(),
                status: None,
                total_items: None,
                message: None,
            });
        }
        let id = format!("batch_{}", batches.len() + 1);
        batches.push((id.clone(), key.to_owned(), request.clone()));
        Ok(BatchAccepted {
            batch_id: id,
            status: Some(BatchStatus::Pending),
            total_items: None,
            message: None,
        })
    }

    /// The blog card's: title, author and publishDate required.
    async fn template_variables(
        &self,
        _template_id: &str,
    ) -> Result<Vec<crate::pictify::variables::VariableDef>, PictifyError> {
        Ok(["title", "author", "publishDate"]
            .iter()
            .map(|name| crate::pictify::variables::VariableDef {
                name: (*name).into(),
                required: true,
                default: None,
                kind: None,
                min_length: None,
                max_length: None,
            })
            .collect())
    }

    async fn cancel_batch(
        &self,
        batch_id: &str,
    ) -> Result<crate::pictify::wire::CancelResult, PictifyError> {
        self.cancelled.lock().unwrap().push(batch_id.to_owned());
        Ok(crate::pictify::wire::CancelResult {
            batch_id: batch_id.to_owned(),
            status: BatchStatus::Cancelled,
            message: None,
        })
    }

    async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError> {
        let batches = self.batches.lock().unwrap();
        let (_, _, request) =
            batches
                .iter()
                .find(|(id, _, _)| id == batch_id)
                .ok_or(PictifyError::NotFound {
                    message: "Batch not found".into(),
                })?;
        let fail = self.fail.lock().unwrap();
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        let cancelled = self.cancelled.lock().unwrap().iter().any(|b| b == batch_id);
        let sets = if cancelled {
            &[][..]
        } else {
            &request.variable_sets[..]
        };
        for (i, vars) in sets.iter().enumerate() {
            let title = vars
                .get("title")
                .and_then(|v| v.as_str())
                .unwrap_or_default();
            match fail.get(title) {
                Some(code) => errors.push(BatchItemStatus {
                    index: i as u32,
                    success: false,
                    variables: vec![],
                    error: Some(format!("{code}: scripted")),
                }),
                None => results.push(BatchItemStatus {
                    index: i as u32,
                    success: true,
                    variables: vec![],
                    error: None,
                }),
            }
        }
        Ok(BatchResults {
            batch_id: batch_id.into(),
            status: if cancelled {
                BatchStatus::Cancelled
            } else {
                BatchStatus::Completed
            },
            progress: 100.0,
            total_items: request.variable_sets.len() as u32,
            completed_items: results.len() as u32,
            failed_items: errors.len() as u32,
            results,
            errors,
            created_at: None,
            started_at: None,
            completed_at: None,
        })
    }
}

struct Harness {
    pipeline: Pipeline,
    store: Arc<MemoryJobStore>,
    queue: Arc<MemoryQueue>,
    alerts: Arc<MemoryAlerts>,
    pictify: Arc<ScriptedPictify>,
    objects: Arc<FsObjectStore>,
    clock: Arc<TestClock>,
    _dir: tempfile::TempDir,
}

fn harness() -> Harness {
    harness_with(crate::settings::Settings::default())
}

fn harness_with(settings: crate::settings::Settings) -> Harness {
    harness_on(settings, MemoryQueue::new())
}

/// A harness whose queue takes long steps (as the step queue does in AWS): the test runs them.
fn harness_with_steps(settings: crate::settings::Settings) -> Harness {
    harness_on(settings, MemoryQueue::with_steps())
}

fn harness_on(settings: crate::settings::Settings, queue: MemoryQueue) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryJobStore::new());
    let queue = Arc::new(queue);
    let alerts = Arc::new(MemoryAlerts::new());
    let pictify = Arc::new(ScriptedPictify::default());
    let objects = Arc::new(FsObjectStore::new(dir.path().to_path_buf()));
    let clock = Arc::new(TestClock(NOW.into()));
    let pipeline = Pipeline {
        store: store.clone(),
        objects: objects.clone(),
        queue: queue.clone(),
        pictify: pictify.clone(),
        alerts: alerts.clone(),
        clock: clock.clone(),
        settings,
        webhook_secrets: vec![Secret::new(SECRET)],
        outputs: Default::default(),
    };
    Harness {
        pipeline,
        store,
        queue,
        alerts,
        pictify,
        objects,
        clock,
        _dir: dir,
    }
}

fn upload() -> ObjectRef {
    ObjectRef {
        bucket: "bucket".into(),
        key: "uploads/tmpl_blog_card/posts.csv".into(),
    }
}

fn csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("title,author,publishDate\n");
    for i in 0..rows {
        s.push_str(&format!("Post {i},Author {i},2026-01-{:02}\n", i % 28 + 1));
    }
    s.into_bytes()
}

impl Harness {
    async fn put_upload(&self, bytes: Vec<u8>) {
        self.objects
            .put_bytes(&upload(), bytes, "text/csv")
            .await
            .unwrap();
    }

    async fn ingest(&self) -> IngestOutcome {
        self.pipeline.ingest(&upload(), None).await.unwrap()
    }

    /// Drains the queue into the submitter until it is empty.
    async fn submit_all(&self) -> Vec<SubmitOutcome> {
        let mut outcomes = Vec::new();
        while let Some(message) = self.queue.pop() {
            outcomes.push(self.pipeline.submit(&message).await.unwrap());
        }
        outcomes
    }

    async fn deliver(&self, event: &str, data: serde_json::Value) -> WebhookReply {
        let body = serde_json::json!({ "event": event, "timestamp": "2026-11-28T12:00:00Z", "data": data }).to_string();
        let signature = signature_header(SECRET, self.clock.now(), body.as_bytes());
        self.pipeline
            .handle_webhook(WebhookRequest {
                signature: Some(&signature),
                delivery_id: Some("del_1"),
                body: body.as_bytes(),
            })
            .await
    }

    /// Plays Pictify's webhooks for every batch accepted so far (render events, then batch.completed).
    async fn play_webhooks(&self, from_batch: usize) {
        let batches = self.pictify.batches.lock().unwrap().clone();
        let fail = self.pictify.fail.lock().unwrap().clone();
        for (id, _, request) in batches.iter().skip(from_batch) {
            for vars in &request.variable_sets {
                let title = vars["title"].as_str().unwrap();
                if !fail.contains_key(title) {
                    let data = serde_json::json!({ "url": format!("https://cdn/{title}.png"), "templateId": "tmpl_blog_card", "variables": vars });
                    assert_eq!(self.deliver("render.completed", data).await.status, 200);
                }
            }
            let data = serde_json::json!({ "batchId": id, "status": "completed", "totalCount": request.variable_sets.len(), "completedCount": 0, "failedCount": 0, "duration": 1000 });
            assert_eq!(self.deliver("batch.completed", data).await.status, 200);
        }
    }

    /// Ingests `rows` rows, with the named titles failing with their codes, and plays the first
    /// round of submits and webhooks.
    async fn run_failing(&self, rows: usize, failing: &[(&str, &'static str)]) {
        self.put_upload(csv(rows)).await;
        self.pictify.fail.lock().unwrap().extend(
            failing
                .iter()
                .map(|(title, code)| (title.to_string(), *code)),
        );
        self.ingest().await;
        self.submit_all().await;
        self.play_webhooks(0).await;
    }

    /// Alerts of one kind raised so far.
    fn alerts_of_kind(&self, kind: &str) -> usize {
        self.alerts
            .alerts()
            .iter()
            .filter(|a| a.kind == kind)
            .count()
    }

    fn advance(&self, by: std::time::Duration) {
        self.clock
            .0
            .fetch_add(by.as_secs() as i64, std::sync::atomic::Ordering::SeqCst);
    }

    async fn job(&self) -> crate::domain::Job {
        let id = crate::domain::JobId::for_upload(
            "bucket",
            &upload().key,
            &self.objects.version(&upload()).await.unwrap().unwrap(),
        );
        self.store.job(&id).await.unwrap().unwrap()
    }

    async fn manifest_lines(&self) -> Vec<serde_json::Value> {
        let job = self.job().await;
        let at = job.manifest.expect("manifest written").jsonl;
        let bytes = self.objects.get_bytes(&at).await.unwrap().unwrap();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_250_row_upload_becomes_three_chunks_and_completes_with_a_full_manifest() {
    let h = harness();
    h.put_upload(csv(250)).await;
    let outcome = h.ingest().await;
    assert!(
        matches!(outcome, IngestOutcome::Ingested { counters, .. } if counters.rows == 250 && counters.chunks == 3)
    );
    assert_eq!(h.queue.len(), 3);

    let submitted = h.submit_all().await;
    assert!(
        submitted
            .iter()
            .all(|o| matches!(o, SubmitOutcome::Submitted { .. }))
    );
    h.play_webhooks(0).await;

    let job = h.job().await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(
        (
            job.counters.rendered,
            job.counters.failed,
            job.counters.in_flight()
        ),
        (250, 0, 0)
    );
    let lines = h.manifest_lines().await;
    assert_eq!(lines.len(), 250);
    assert_eq!(lines[7]["row"], 7);
    assert_eq!(lines[7]["url"], "https://cdn/Post 7.png");
    assert!(h.alerts.alerts().iter().any(|a| a.kind == "job_finished"));
}

#[tokio::test]
async fn a_redelivered_chunk_message_is_not_submitted_again() {
    let h = harness();
    h.put_upload(csv(5)).await;
    h.ingest().await;
    let message: ChunkMessage = h.queue.pop().unwrap();
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::Submitted { .. }
    ));
    assert_eq!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::AlreadyDone
    );
    assert_eq!(h.pictify.batches.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_redelivered_upload_event_creates_no_second_job() {
    let h = harness();
    h.put_upload(csv(5)).await;
    h.ingest().await;
    assert!(matches!(h.ingest().await, IngestOutcome::Duplicate { .. }));
    assert_eq!(h.queue.len(), 1);
}

#[tokio::test]
async fn retryable_failures_are_retried_in_a_new_chunk_and_permanent_ones_fail() {
    let h = harness();
    h.run_failing(
        20,
        &[
            ("Post 3", "IMAGE_FETCH_FAILED"),
            ("Post 4", "INVALID_VARIABLE"),
        ],
    )
    .await;
    // The retry chunk carries only the retryable row; let it succeed.
    h.pictify.fail.lock().unwrap().remove("Post 3");
    let retried = h.submit_all().await;
    assert_eq!(retried.len(), 1);
    assert_eq!(
        h.pictify.batches.lock().unwrap()[1].2.variable_sets.len(),
        1
    );
    h.play_webhooks(1).await;

    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.rendered, job.counters.failed),
        (JobStatus::Partial, 19, 1)
    );
    let lines = h.manifest_lines().await;
    assert_eq!(
        (lines[3]["status"].as_str(), lines[3]["attempts"].as_u64()),
        (Some("rendered"), Some(2))
    );
    assert_eq!(
        (lines[4]["status"].as_str(), lines[4]["errorCode"].as_str()),
        (Some("failed"), Some("INVALID_VARIABLE"))
    );
    // 2 of 20 failed in the first batch: 10% > 5%, so one alert for that batch only.
    assert_eq!(h.alerts_of_kind("batch_high_failure_rate"), 1);
}

#[tokio::test]
async fn a_duplicate_batch_completed_changes_nothing() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    h.submit_all().await;
    h.play_webhooks(0).await;
    let before = h.job().await.counters;
    let reply = h.deliver("batch.completed", serde_json::json!({ "batchId": "batch_1", "status": "completed", "totalCount": 3, "completedCount": 3, "failedCount": 0 })).await;
    assert_eq!(reply.status, 200);
    assert_eq!(h.job().await.counters, before);
}

#[tokio::test]
async fn rate_limits_put_the_chunk_back_with_the_servers_delay() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    *h.pictify.next_error.lock().unwrap() = Some(PictifyError::RateLimited {
        retry_after: Some(std::time::Duration::from_secs(7)),
        message: "slow down".into(),
    });
    assert_eq!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::RetryLater(std::time::Duration::from_secs(7))
    );
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::Submitted { .. }
    ));
}

#[tokio::test]
async fn an_auth_failure_pauses_submissions_and_alerts_once() {
    let h = harness();
    h.put_upload(csv(150)).await;
    h.ingest().await;
    let (first, second) = (h.queue.pop().unwrap(), h.queue.pop().unwrap());
    *h.pictify.next_error.lock().unwrap() = Some(PictifyError::Unauthorized {
        message: "Invalid Request".into(),
    });
    assert!(matches!(
        h.pipeline.submit(&first).await.unwrap(),
        SubmitOutcome::Parked(ParkReason::Paused { .. })
    ));
    assert!(matches!(
        h.pipeline.submit(&second).await.unwrap(),
        SubmitOutcome::Parked(ParkReason::Paused { .. })
    ));
    assert_eq!(h.alerts_of_kind("submissions_paused"), 1);
    // Both wait in the store, not in the queue: no receive count is spent while paused.
    assert!(h.queue.is_empty());
    assert_eq!(h.store.parked().await.unwrap().len(), 2);
    assert_eq!(
        h.pipeline.hand_over().await.unwrap(),
        0,
        "paused: nothing moves"
    );
    h.store.resume_submissions().await.unwrap();
    assert_eq!(h.pipeline.hand_over().await.unwrap(), 2);
    for _ in 0..2 {
        let message = h.queue.pop().unwrap();
        assert!(matches!(
            h.pipeline.submit(&message).await.unwrap(),
            SubmitOutcome::Submitted { .. }
        ));
    }
}

#[tokio::test]
async fn a_chunk_pictify_refuses_fails_its_rows_with_the_message() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    *h.pictify.next_error.lock().unwrap() = Some(PictifyError::NotFound {
        message: "Template not found".into(),
    });
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::Rejected { .. }
    ));
    let job = h.job().await;
    assert_eq!((job.status, job.counters.failed), (JobStatus::Failed, 3));
    assert!(
        h.manifest_lines().await[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Template not found")
    );
}

#[tokio::test]
async fn a_timed_out_submit_waits_out_the_grace_period_instead_of_resending() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    *h.pictify.next_error.lock().unwrap() = Some(PictifyError::Timeout {
        after: std::time::Duration::from_secs(30),
    });
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::RetryLater(_)
    ));
    // Redelivered at once: still inside the grace period, so nothing is sent.
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::RetryLater(_)
    ));
    assert!(h.pictify.batches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_webhook_with_a_bad_signature_changes_nothing() {
    let h = harness();
    let body =
        br#"{"event":"render.completed","data":{"url":"u","templateId":"t","variables":{}}}"#;
    let forged = signature_header("whsec_wrong", NOW, body);
    let deliver = |pipeline: Pipeline, signature: Option<String>| async move {
        pipeline
            .handle_webhook(WebhookRequest {
                signature: signature.as_deref(),
                delivery_id: None,
                body,
            })
            .await
    };
    let reply = deliver(h.pipeline.clone(), Some(forged.clone())).await;
    assert_eq!(reply.status, 401);
    let missing = deliver(h.pipeline.clone(), None).await;
    assert_eq!(missing.status, 401);
    // Strangers learn nothing from the refusal, whatever its reason, not even whether the
    // stack has a secret at all.
    let mut unconfigured = h.pipeline.clone();
    unconfigured.webhook_secrets.clear();
    let no_secret = deliver(unconfigured, Some(forged)).await;
    assert_eq!(no_secret.status, 401);
    for refused in [&reply, &missing, &no_secret] {
        assert_eq!(refused.body, r#"{"error":"unauthorized","ok":false}"#);
    }
    assert!(
        h.store
            .renders(&[crate::dataset::fingerprint("t", &Default::default())])
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn rejected_rows_are_counted_and_listed_and_valid_rows_still_render() {
    let h = harness();
    h.put_upload(b"title,author,publishDate\nA,x,1\nB,y\nC,z,3\n".to_vec())
        .await;
    h.ingest().await;
    h.submit_all().await;
    h.play_webhooks(0).await;
    let job = h.job().await;
    assert_eq!(
        (
            job.counters.rows,
            job.counters.rejected,
            job.counters.rendered
        ),
        (3, 1, 2)
    );
    let lines = h.manifest_lines().await;
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["status"], "rejected");
    assert_eq!(job.status, JobStatus::Partial);
}

#[tokio::test]
async fn an_unreadable_dataset_fails_the_job_with_its_reason() {
    let h = harness();
    h.put_upload(b"title,title\nA,B\n".to_vec()).await;
    assert!(
        matches!(h.ingest().await, IngestOutcome::Failed { reason, .. } if reason.contains("title"))
    );
    let job = h.job().await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(h.queue.is_empty());
}

#[tokio::test]
async fn a_chunk_too_large_for_one_message_travels_by_reference() {
    let h = harness();
    let long = "x".repeat(4_000);
    let mut s = String::from("title,author,publishDate\n");
    for i in 0..100 {
        s.push_str(&format!("Post {i},{long},2026-01-01\n"));
    }
    h.put_upload(s.into_bytes()).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    assert!(message.payload.is_none());
    let at = message
        .payload_ref
        .clone()
        .expect("a reference to the stored payload");
    assert!(h.objects.get_bytes(&at).await.unwrap().is_some());
    assert!(matches!(
        h.pipeline.submit(&message).await.unwrap(),
        SubmitOutcome::Submitted { .. }
    ));
    assert_eq!(
        h.pictify.batches.lock().unwrap()[0].2.variable_sets.len(),
        100
    );
}

#[tokio::test]
async fn a_lost_batch_completed_is_repaired_by_the_reconciler() {
    let h = harness();
    h.put_upload(csv(30)).await;
    h.ingest().await;
    h.submit_all().await;
    // Every render event arrives, but batch.completed is lost.
    let batches = h.pictify.batches.lock().unwrap().clone();
    for vars in &batches[0].2.variable_sets {
        let data = serde_json::json!({ "url": "https://cdn/x.png", "templateId": "tmpl_blog_card", "variables": vars });
        h.deliver("render.completed", data).await;
    }
    assert_eq!(h.job().await.status, JobStatus::Running);

    let report = h
        .pipeline
        .reconcile(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((report.polled, report.applied), (1, 1));
    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.rendered),
        (JobStatus::Completed, 30)
    );
    // A second pass finds nothing to do.
    let again = h
        .pipeline
        .reconcile(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((again.jobs, again.polled), (0, 0));
}

#[tokio::test]
async fn a_submit_left_unknown_is_requeued_after_the_grace_period() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    // A submitter recorded its intent and died; the message is gone.
    let job = h.job().await;
    let grace = std::time::Duration::ZERO;
    h.store
        .begin_submit(&job.id, message.key, NOW - 1, grace)
        .await
        .unwrap();
    let mut pipeline = h.pipeline.clone();
    pipeline.settings.submit_grace = grace;
    let report = pipeline
        .reconcile(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.resent, 1);
    assert_eq!(h.queue.pop().map(|m| m.key), Some(message.key));
}

#[tokio::test]
async fn retry_failed_renders_the_retryable_failures_again_and_the_counts_still_add_up() {
    let h = harness_with(crate::settings::Settings {
        max_attempts: 1,
        ..Default::default()
    });
    h.run_failing(
        20,
        &[
            ("Post 3", "IMAGE_FETCH_FAILED"),
            ("Post 4", "INVALID_VARIABLE"),
        ],
    )
    .await;
    let job = h.job().await;
    assert_eq!((job.status, job.counters.failed), (JobStatus::Partial, 2));

    // The image host is back: only the retryable row goes out again.
    h.pictify.fail.lock().unwrap().remove("Post 3");
    let outcome = h
        .pipeline
        .reopen(&job.id, Selection::RetryableFailures)
        .await
        .unwrap();
    assert_eq!(outcome, ReopenOutcome::Reopened { rows: 1, chunks: 1 });
    let reopened = h.job().await;
    assert_eq!(
        (
            reopened.status,
            reopened.counters.failed,
            reopened.counters.in_flight()
        ),
        (JobStatus::Running, 1, 1)
    );
    assert!(matches!(
        h.pipeline
            .reopen(&job.id, Selection::RetryableFailures)
            .await
            .unwrap(),
        ReopenOutcome::NotFinished {
            status: JobStatus::Running
        }
    ));
    h.submit_all().await;
    h.play_webhooks(1).await;

    let done = h.job().await;
    assert_eq!(
        (
            done.status,
            done.counters.rendered,
            done.counters.failed,
            done.reopened
        ),
        (JobStatus::Partial, 19, 1, 1)
    );
    let lines = h.manifest_lines().await;
    assert_eq!(lines.len(), 20);
    assert_eq!(
        (lines[3]["status"].as_str(), lines[3]["attempts"].as_u64()),
        (Some("rendered"), Some(2))
    );
    assert_eq!(lines[4]["errorCode"].as_str(), Some("INVALID_VARIABLE"));
    // What is left cannot be helped by retrying.
    assert_eq!(
        h.pipeline
            .reopen(&job.id, Selection::RetryableFailures)
            .await
            .unwrap(),
        ReopenOutcome::NothingToDo
    );
}

#[tokio::test]
async fn a_job_past_its_deadline_raises_one_alert() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    h.advance(h.pipeline.settings.job_deadline + std::time::Duration::from_secs(1));
    for _ in 0..2 {
        h.pipeline
            .reconcile(std::time::Duration::from_secs(3600))
            .await
            .unwrap();
    }
    let overdue: Vec<_> = h
        .alerts
        .alerts()
        .into_iter()
        .filter(|a| a.kind == "job_deadline_exceeded")
        .collect();
    assert_eq!(overdue.len(), 1);
    assert!(overdue[0].message.contains("3 of 3 rows in flight"));
}

#[tokio::test]
async fn a_queued_chunk_whose_message_was_lost_is_sent_again() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let lost = h.queue.pop().unwrap();
    let stuck_after = std::time::Duration::from_secs(900);
    assert_eq!(h.pipeline.reconcile(stuck_after).await.unwrap().resent, 0);
    h.advance(stuck_after);
    h.store.pause_submissions("quota", NOW).await.unwrap();
    assert_eq!(
        h.pipeline.reconcile(stuck_after).await.unwrap().resent,
        0,
        "paused: the messages wait on purpose"
    );
    h.store.resume_submissions().await.unwrap();
    assert_eq!(h.pipeline.reconcile(stuck_after).await.unwrap().resent, 1);
    assert_eq!(h.queue.pop().map(|m| m.key), Some(lost.key));
}

#[tokio::test]
async fn rows_whose_url_never_came_are_rendered_again_under_the_rerender_policy() {
    let h = harness_with(crate::settings::Settings {
        missing_url_policy: crate::settings::MissingUrlPolicy::Rerender,
        ..Default::default()
    });
    h.put_upload(csv(5)).await;
    h.ingest().await;
    h.submit_all().await;
    // Every render.completed but Post 2's arrives, then batch.completed.
    let batch = h.pictify.batches.lock().unwrap()[0].clone();
    for vars in batch
        .2
        .variable_sets
        .iter()
        .filter(|v| v["title"] != "Post 2")
    {
        let data = serde_json::json!({ "url": "https://cdn/x.png", "templateId": "tmpl_blog_card", "variables": vars });
        h.deliver("render.completed", data).await;
    }
    let data = serde_json::json!({ "batchId": batch.0, "status": "completed", "totalCount": 5, "completedCount": 5, "failedCount": 0 });
    h.deliver("batch.completed", data).await;
    // Late webhooks may still come: the job waits.
    assert_eq!(h.job().await.status, JobStatus::Finishing);

    h.advance(h.pipeline.settings.stuck_after);
    h.pipeline
        .reconcile(h.pipeline.settings.stuck_after)
        .await
        .unwrap();
    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.in_flight()),
        (JobStatus::Running, 1)
    );
    h.submit_all().await;
    h.play_webhooks(1).await;

    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.rendered, job.reopened),
        (JobStatus::Completed, 5, 1)
    );
    let lines = h.manifest_lines().await;
    assert_eq!(lines[2]["status"].as_str(), Some("rendered"));
    assert_eq!(
        h.pictify.batches.lock().unwrap()[1].2.variable_sets.len(),
        1
    );
}

#[tokio::test]
async fn a_chunk_whose_payload_is_gone_fails_its_rows_once_and_its_message_is_acknowledged() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let mut message = h.queue.pop().unwrap();
    message.payload = None;
    message.payload_ref = Some(ObjectRef {
        bucket: "bucket".into(),
        key: "work/gone.json".into(),
    });

    assert_eq!(
        h.pipeline.handle_chunk_message(&message).await,
        MessageFate::Acknowledge
    );
    // A redelivery changes nothing: the chunk is completed already.
    assert_eq!(
        h.pipeline.handle_chunk_message(&message).await,
        MessageFate::Acknowledge
    );

    let job = h.job().await;
    assert_eq!((job.status, job.counters.failed), (JobStatus::Failed, 3));
    assert_eq!(
        h.manifest_lines().await[0]["errorCode"],
        "CHUNK_UNSUBMITTABLE"
    );
    assert_eq!(h.alerts_of_kind("chunk_unsubmittable"), 1);
}

#[tokio::test]
async fn a_rate_limited_chunk_message_is_kept_for_the_servers_delay() {
    let h = harness();
    h.put_upload(csv(3)).await;
    h.ingest().await;
    let message = h.queue.pop().unwrap();
    *h.pictify.next_error.lock().unwrap() = Some(PictifyError::RateLimited {
        retry_after: Some(std::time::Duration::from_secs(7)),
        message: "slow down".into(),
    });
    assert_eq!(
        h.pipeline.handle_chunk_message(&message).await,
        MessageFate::Keep {
            after: Some(std::time::Duration::from_secs(7)),
            why: KeepReason::Later
        }
    );
}

// ---- pacing: the window, parking and hand-over (`window`) ---------------------------------------

fn paced(batches: u32, chunk_rows: usize) -> Harness {
    harness_with(crate::settings::Settings {
        pacing: crate::settings::Pacing {
            chunk_rows,
            max_concurrent_batches: Some(batches),
            ..crate::settings::Pacing::unlimited()
        },
        ..crate::settings::Settings::default()
    })
}

#[tokio::test]
async fn chunks_are_cut_to_the_plans_batch_size() {
    let h = paced(1, 10);
    h.put_upload(csv(25)).await;
    h.ingest().await;
    let job = h.job().await;
    let chunks = h.store.chunks_of_job(&job.id).await.unwrap();
    let sizes: Vec<usize> = chunks.iter().map(|c| c.rows.len()).collect();
    assert_eq!(sizes, [10, 10, 5]);
}

#[tokio::test]
async fn a_full_window_parks_chunks_and_each_completion_hands_one_over() {
    let h = paced(2, 10);
    h.put_upload(csv(50)).await;
    h.ingest().await;
    let outcomes = h.submit_all().await;
    let submitted = outcomes
        .iter()
        .filter(|o| matches!(o, SubmitOutcome::Submitted { .. }))
        .count();
    let parked = outcomes
        .iter()
        .filter(|o| matches!(o, SubmitOutcome::Parked(ParkReason::WindowFull)))
        .count();
    assert_eq!((submitted, parked), (2, 3), "{outcomes:?}");
    assert_eq!(h.store.live_slots(NOW).await.unwrap().len(), 2);

    // Each batch.completed frees one slot and hands it to the next parked chunk.
    let mut played = 0;
    for round in 0..2 {
        let accepted = h.pictify.batches.lock().unwrap().len();
        h.play_webhooks(played).await;
        played = accepted;
        let handed: Vec<ChunkMessage> = h.queue.drain();
        assert!(!handed.is_empty(), "round {round}: nothing handed over");
        for message in handed {
            assert!(matches!(
                h.pipeline.submit(&message).await.unwrap(),
                SubmitOutcome::Submitted { .. }
            ));
        }
        assert!(h.store.live_slots(NOW).await.unwrap().len() <= 2);
    }
    h.play_webhooks(played).await;
    let job = h.job().await;
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.counters.rendered, 50);
    assert!(
        h.store.live_slots(NOW).await.unwrap().is_empty(),
        "every slot released"
    );
    assert!(h.store.parked().await.unwrap().is_empty());
    assert_eq!(
        h.pictify.batches.lock().unwrap().len(),
        5,
        "each chunk once"
    );
}

#[tokio::test]
async fn the_reconciler_frees_a_leaked_slot_and_hands_it_over() {
    let h = paced(1, 10);
    h.put_upload(csv(20)).await;
    h.ingest().await;
    h.submit_all().await;
    assert_eq!(h.store.parked().await.unwrap().len(), 1);
    // The first batch completes, but the process dies before its slot is released: simulate by
    // completing the chunk with the window's release skipped (take the slot back afterwards).
    let first = h.store.live_slots(NOW).await.unwrap().remove(0);
    h.play_webhooks(0).await;
    h.queue.drain();
    h.store
        .park(&first.job, ChunkKey::initial(2), NOW)
        .await
        .unwrap();
    for slot in h.store.live_slots(NOW).await.unwrap() {
        h.store.release_slot(&slot.job, slot.key).await.unwrap();
    }
    h.store
        .acquire_slot(&first.job, first.key, 1, NOW, NOW + 3_600)
        .await
        .unwrap();
    let report = h
        .pipeline
        .reconcile(std::time::Duration::from_secs(900))
        .await
        .unwrap();
    assert_eq!((report.released, report.handed_over), (1, 1), "{report:?}");
    let message = h.queue.pop().expect("the parked chunk was sent");
    assert_eq!(message.key, ChunkKey::initial(2));
}

// ---------- ingest in pieces ----------

/// A CSV with what breaks naive splitting: a BOM, CRLF and LF endings, quoted newlines and
/// commas, blank lines, and rejected rows (an empty required title, a ragged row).
fn awkward_csv(rows: usize) -> Vec<u8> {
    let mut data = b"\xEF\xBB\xBFtitle,author,publishDate\r\n".to_vec();
    for i in 0..rows {
        let line = match i % 7 {
            0 => format!("\"Post {i}\r\nsecond line\",\"Doe, \"\"J\"\"\",2026-01-01\r\n"),
            1 => format!(",Nobody {i},2026-01-02\r\n"),
            2 => format!("Post {i},ragged\n"),
            3 => format!("\r\nPost {i},\"multi\nline\",2026-01-03\n"),
            _ => format!("Post {i},Author {i},2026-01-04\r\n"),
        };
        data.extend_from_slice(line.as_bytes());
    }
    data
}

/// The chunks a run queued, as (key, rows, variable sets), in queue order.
fn queued_chunks(queue: &MemoryQueue) -> Vec<(ChunkKey, Vec<u64>, Vec<serde_json::Value>)> {
    queue
        .drain()
        .into_iter()
        .map(|m| {
            let payload = m.payload.unwrap().decode().unwrap();
            let sets = payload
                .variable_sets
                .into_iter()
                .map(serde_json::Value::Object)
                .collect();
            (m.key, payload.rows, sets)
        })
        .collect()
}

fn sidecar_requiring_title() -> ObjectRef {
    crate::layout::sidecar_of(&upload())
}

/// Runs ingest to the end, following every hand-off; returns the outcomes in order.
async fn ingest_in_pieces(h: &Harness) -> Vec<IngestOutcome> {
    let mut outcomes = vec![h.ingest().await];
    while let Some(job) = h.pop_continuation() {
        outcomes.push(h.pipeline.continue_ingest(&job, None).await.unwrap());
    }
    outcomes
}

impl Harness {
    /// The next ingest hand-off on the step queue.
    fn pop_continuation(&self) -> Option<crate::domain::JobId> {
        match self.queue.pop_step()? {
            crate::domain::JobStep::ContinueIngest(job) => Some(job),
            other => panic!("expected an ingest continuation, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_ingest_in_pieces_makes_exactly_the_chunks_of_one_pass() {
    let data = awkward_csv(7_000);
    let sidecar = br#"{"required": ["title"]}"#.to_vec();
    let whole = harness();
    let pieces = harness_with_steps(crate::settings::Settings {
        ingest_handoff_rows: Some(700),
        ..Default::default()
    });
    for h in [&whole, &pieces] {
        h.objects
            .put_bytes(
                &sidecar_requiring_title(),
                sidecar.clone(),
                "application/json",
            )
            .await
            .unwrap();
        h.put_upload(data.clone()).await;
    }
    let one = ingest_in_pieces(&whole).await;
    let many = ingest_in_pieces(&pieces).await;
    assert_eq!(one.len(), 1);
    let handed_off = many
        .iter()
        .filter(|o| matches!(o, IngestOutcome::HandedOff { .. }))
        .count();
    assert!(
        handed_off >= 9,
        "7,000 rows in pieces of ≥700: {handed_off} hand-offs"
    );
    let (
        IngestOutcome::Ingested {
            counters: a,
            job: job_a,
        },
        Some(IngestOutcome::Ingested {
            counters: b,
            job: job_b,
        }),
    ) = (&one[0], many.last())
    else {
        panic!("both runs finish ingest: {one:?} / {:?}", many.last());
    };
    assert_eq!(a, b);
    assert_eq!((a.rows, a.rejected), (7_000, 2_000));
    assert_eq!(queued_chunks(&whole.queue), queued_chunks(&pieces.queue));
    let (ja, jb) = (
        whole.store.job(job_a).await.unwrap().unwrap(),
        pieces.store.job(job_b).await.unwrap().unwrap(),
    );
    assert_eq!(ja.rejected_sample, jb.rejected_sample);
    assert_eq!(jb.checkpoint.map(|c| c.pieces), Some(handed_off as u32 + 1));
}

#[tokio::test]
async fn a_piece_run_twice_or_a_late_continuation_duplicates_nothing() {
    let h = harness_with_steps(crate::settings::Settings {
        ingest_handoff_rows: Some(1_000),
        ..Default::default()
    });
    h.put_upload(csv(3_500)).await;
    let IngestOutcome::HandedOff { job, checkpoint } = h.ingest().await else {
        panic!("the first piece hands off");
    };
    assert_eq!(checkpoint.position.rows, 1_000);
    // The S3 event is redelivered while the continuation waits: it carries on from the
    // checkpoint, not from row 0.
    // Both invocations work on the same piece at once, as when a continuation is delivered
    // twice.
    let source = upload();
    let (again, twice) = tokio::join!(
        h.pipeline.ingest(&source, None),
        h.pipeline.continue_ingest(&job, None)
    );
    for outcome in [again.unwrap(), twice.unwrap()] {
        assert!(
            matches!(outcome, IngestOutcome::HandedOff { checkpoint, .. } if checkpoint.position.rows == 2_000),
            "{outcome:?}"
        );
    }
    while let Some(next) = h.pop_continuation() {
        h.pipeline.continue_ingest(&next, None).await.unwrap();
    }
    // A continuation delivered again after the end changes nothing.
    assert!(matches!(
        h.pipeline.continue_ingest(&job, None).await.unwrap(),
        IngestOutcome::Duplicate { .. }
    ));
    let stored = h.store.job(&job).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.counters.rows, stored.counters.chunks),
        (JobStatus::Running, 3_500, 35)
    );
    let chunks = h.store.chunks_of_job(&job).await.unwrap();
    assert_eq!(chunks.len(), 35);
    let messages = h.queue.drain();
    let distinct: std::collections::BTreeSet<u32> = messages.iter().map(|m| m.key.seq).collect();
    assert_eq!(
        distinct,
        (1..=35).collect(),
        "every chunk queued, none missing"
    );
    // The piece done twice sent its chunks twice: the submitter submits each once.
    messages.into_iter().for_each(|m| h.queue.push(m));
    h.submit_all().await;
    assert_eq!(
        h.pictify.batches.lock().unwrap().len(),
        35,
        "one batch per chunk"
    );
}

#[tokio::test]
async fn the_reconciler_carries_on_an_ingest_whose_invocation_died() {
    let h = harness_with_steps(crate::settings::Settings {
        ingest_handoff_rows: Some(1_000),
        ..Default::default()
    });
    h.put_upload(csv(2_500)).await;
    let IngestOutcome::HandedOff { job, .. } = h.ingest().await else {
        panic!("the first piece hands off");
    };
    // The continuation is lost with its invocation.
    assert_eq!(h.pop_continuation(), Some(job.clone()));
    let stuck = std::time::Duration::from_secs(3600);
    assert_eq!(
        h.pipeline.reconcile(stuck).await.unwrap().ingests_resumed,
        0,
        "not stalled yet"
    );
    h.clock
        .0
        .fetch_add(961, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        h.pipeline.reconcile(stuck).await.unwrap().ingests_resumed,
        1
    );
    while let Some(next) = h.pop_continuation() {
        h.pipeline.continue_ingest(&next, None).await.unwrap();
    }
    let stored = h.store.job(&job).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.counters.rows, stored.counters.chunks),
        (JobStatus::Running, 2_500, 25)
    );
}

/// A render record from an earlier job (identical row, image since expired at Pictify) does not
/// stand in for this job's lost `render.completed`.
#[tokio::test]
async fn a_render_record_older_than_the_rows_chunk_gives_no_url() {
    let h = harness();
    h.put_upload(csv(3)).await;
    let variables = |i: usize| serde_json::json!({ "title": format!("Post {i}"), "author": format!("Author {i}"), "publishDate": format!("2026-01-{:02}", i % 28 + 1) });
    let old = crate::ports::RenderRecord {
        url: "https://cdn/expired.png".into(),
        image_id: None,
        rendered_at: None,
        recorded_at: NOW - 86_400,
    };
    for i in [0, 1] {
        let fp = crate::dataset::fingerprint("tmpl_blog_card", variables(i).as_object().unwrap());
        h.store.record_render(&fp, &old).await.unwrap();
    }
    h.ingest().await;
    h.submit_all().await;
    // Row 1's render.completed arrives; row 0's and row 2's are lost.
    let data = serde_json::json!({ "url": "https://cdn/fresh-1.png", "templateId": "tmpl_blog_card", "variables": variables(1) });
    assert_eq!(h.deliver("render.completed", data).await.status, 200);
    let data = serde_json::json!({ "batchId": "batch_1", "status": "completed", "totalCount": 3, "completedCount": 3, "failedCount": 0 });
    assert_eq!(h.deliver("batch.completed", data).await.status, 200);
    let lines = h.manifest_lines().await;
    let seen: Vec<(&str, Option<&str>)> = lines
        .iter()
        .map(|l| (l["status"].as_str().unwrap(), l["url"].as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("rendered_url_missing", None),
            ("rendered", Some("https://cdn/fresh-1.png")),
            ("rendered_url_missing", None)
        ]
    );
}

/// The job-level limits fail the job with a reason naming the limit; nothing is queued.
#[tokio::test]
async fn an_upload_or_sidecar_over_its_limit_fails_the_job_by_name() {
    let h = harness_with(crate::settings::Settings {
        max_upload_bytes: 1_000,
        ..Default::default()
    });
    h.put_upload(csv(100)).await;
    let outcome = h.ingest().await;
    assert!(
        matches!(&outcome, IngestOutcome::Failed { reason, .. } if reason.contains("over the 1000-byte limit (MAX_UPLOAD_BYTES)")),
        "{outcome:?}"
    );
    assert!(h.queue.is_empty());
    assert_eq!(h.job().await.status, JobStatus::Failed);

    let h = harness();
    let sidecar = format!(
        r#"{{"required": ["title"], "mapping": {{"{}": "x"}}}}"#,
        "a".repeat(70_000)
    );
    h.objects
        .put_bytes(
            &crate::layout::sidecar_of(&upload()),
            sidecar.into_bytes(),
            "application/json",
        )
        .await
        .unwrap();
    h.put_upload(csv(10)).await;
    let outcome = h.ingest().await;
    assert!(
        matches!(&outcome, IngestOutcome::Failed { reason, .. } if reason.contains("job sidecar is 70045 bytes, over the 65536-byte limit")),
        "{outcome:?}"
    );
}

// ---------- retry-failed of any size ----------

/// 1,200 failed rows in chunks of 10: 120 chunks, more than one transaction's 98. One call
/// takes them all, in pages; two calls at once reopen the job once.
#[tokio::test]
async fn retry_failed_takes_any_number_of_rows_in_pages_and_reopens_once() {
    let h = harness_with(crate::settings::Settings {
        max_attempts: 1,
        pacing: crate::settings::Pacing {
            chunk_rows: 10,
            ..crate::settings::Pacing::unlimited()
        },
        ..Default::default()
    });
    let titles: Vec<String> = (0..1_200).map(|i| format!("Post {i}")).collect();
    let failing: Vec<(&str, &'static str)> = titles
        .iter()
        .map(|t| (t.as_str(), "RENDER_TIMEOUT"))
        .collect();
    h.run_failing(1_200, &failing).await;
    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.failed),
        (JobStatus::Failed, 1_200)
    );

    h.pictify.fail.lock().unwrap().clear();
    let (a, b) = tokio::join!(
        h.pipeline.reopen(&job.id, Selection::RetryableFailures),
        h.pipeline.reopen(&job.id, Selection::RetryableFailures)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let won = outcomes
        .iter()
        .filter(|o| {
            **o == ReopenOutcome::Reopened {
                rows: 1_200,
                chunks: 120,
            }
        })
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
    let reopened = h.job().await;
    assert_eq!(
        (
            reopened.counters.failed,
            reopened.counters.in_flight(),
            reopened.counters.chunks
        ),
        (0, 1_200, 240)
    );
    let batches = h.pictify.batches.lock().unwrap().len();
    h.submit_all().await;
    assert_eq!(
        h.pictify.batches.lock().unwrap().len() - batches,
        120,
        "each new chunk once"
    );
    h.play_webhooks(batches).await;
    let done = h.job().await;
    assert_eq!(
        (done.status, done.counters.rendered, done.counters.failed),
        (JobStatus::Completed, 1_200, 0)
    );
}

/// A reopen whose caller died after the first page: the job waits for the planned chunks, and
/// the reconciler makes the missing ones from their stored payloads.
#[tokio::test]
async fn the_reconciler_makes_the_chunks_a_dead_reopen_left_unwritten() {
    let h = harness_with(crate::settings::Settings {
        max_attempts: 1,
        ..Default::default()
    });
    h.run_failing(
        3,
        &[("Post 0", "RENDER_TIMEOUT"), ("Post 2", "RENDER_TIMEOUT")],
    )
    .await;
    let job = h.job().await;
    assert_eq!(job.status, JobStatus::Partial);
    h.pictify.fail.lock().unwrap().clear();
    // What the dead caller did: both payloads stored, the reopen with the first page, that
    // page queued; then it died.
    let payload = |seq: u32, row: u64| {
        crate::domain::ChunkPayload {
        job: job.id.clone(),
        key: ChunkKey::initial(seq),
        template_id: "tmpl_blog_card".into(),
        format: Default::default(),
        quality: None,
        concurrency: None,
        rows: vec![row],
        variable_sets: vec![serde_json::json!({ "title": format!("Post {row}"), "author": format!("Author {row}"), "publishDate": format!("2026-01-{:02}", row + 1) }).as_object().unwrap().clone()],
    }
    };
    let (first, message) = h
        .pipeline
        .store_payload("bucket", payload(2, 0))
        .await
        .unwrap();
    h.pipeline
        .store_payload("bucket", payload(3, 2))
        .await
        .unwrap();
    let reopen = crate::domain::Reopen {
        job: job.id.clone(),
        from: JobStatus::Partial,
        chunks: vec![first],
        planned: 2,
        unfailed: 2,
        unrendered: 0,
    };
    assert!(h.store.reopen_job(&reopen).await.unwrap());
    h.queue.send(&[message]).await.unwrap();
    let report = h
        .pipeline
        .reconcile(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.resent, 1, "the missing chunk made again and queued");
    let batches = h.pictify.batches.lock().unwrap().len();
    h.submit_all().await;
    h.play_webhooks(batches).await;
    let done = h.job().await;
    assert_eq!(
        (
            done.status,
            done.counters.rendered,
            done.counters.in_flight()
        ),
        (JobStatus::Completed, 3, 0)
    );
}

// ---------- a manifest writer that dies part-way ----------

/// The harness's files, except that one `upload_part` call fails while armed (the writer's
/// Lambda dying there).
struct DyingParts {
    inner: Arc<FsObjectStore>,
    fail_part: std::sync::atomic::AtomicU32,
    /// Parts sent so far.
    sent: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl ObjectStore for DyingParts {
    async fn version(&self, object: &ObjectRef) -> crate::ports::PortResult<Option<String>> {
        self.inner.version(object).await
    }
    async fn open(
        &self,
        object: &ObjectRef,
        version: Option<&str>,
    ) -> crate::ports::PortResult<crate::ports::ObjectBody> {
        self.inner.open(object, version).await
    }
    async fn get_bytes(&self, object: &ObjectRef) -> crate::ports::PortResult<Option<Vec<u8>>> {
        self.inner.get_bytes(object).await
    }
    async fn put_bytes(
        &self,
        object: &ObjectRef,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> crate::ports::PortResult<()> {
        self.inner.put_bytes(object, bytes, content_type).await
    }
    async fn put_file(
        &self,
        object: &ObjectRef,
        path: &std::path::Path,
        content_type: &str,
    ) -> crate::ports::PortResult<()> {
        self.inner.put_file(object, path, content_type).await
    }
    async fn start_upload(
        &self,
        object: &ObjectRef,
        content_type: &str,
    ) -> crate::ports::PortResult<String> {
        self.inner.start_upload(object, content_type).await
    }
    async fn upload_part(
        &self,
        object: &ObjectRef,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> crate::ports::PortResult<String> {
        use std::sync::atomic::Ordering;
        if self.fail_part.load(Ordering::SeqCst) == number {
            self.fail_part.store(0, Ordering::SeqCst);
            return Err(crate::ports::PortError::new(
                "upload part",
                "the writer died",
            ));
        }
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.inner.upload_part(object, upload, number, bytes).await
    }
    async fn finish_upload(
        &self,
        object: &ObjectRef,
        upload: &str,
        parts: &[crate::ports::UploadedPart],
    ) -> crate::ports::PortResult<()> {
        self.inner.finish_upload(object, upload, parts).await
    }
}

#[tokio::test]
async fn a_manifest_writer_that_died_part_way_is_carried_on_from_its_checkpoint() {
    let settings = crate::settings::Settings {
        manifest_part_bytes: 4 * 1024,
        ..Default::default()
    };
    // The same job twice: one writer that dies at its third part, one that never dies.
    let with_parts_counted = |mut h: Harness| {
        let objects = Arc::new(DyingParts {
            inner: h.objects.clone(),
            fail_part: 0.into(),
            sent: 0.into(),
        });
        h.pipeline.objects = objects.clone();
        (h, objects)
    };
    let (h, dying) = with_parts_counted(harness_with_steps(settings.clone()));
    let (reference, counted) = with_parts_counted(harness_with_steps(settings));
    for h in [&h, &reference] {
        h.put_upload(csv(400)).await;
        h.ingest().await;
        h.submit_all().await;
        h.play_webhooks(0).await;
        assert_eq!(h.job().await.status, JobStatus::Finishing);
        assert!(matches!(
            h.queue.pop_step(),
            Some(crate::domain::JobStep::WriteManifest(_))
        ));
    }
    let job = h.job().await.id;
    dying
        .fail_part
        .store(3, std::sync::atomic::Ordering::SeqCst);
    assert!(
        h.pipeline.write_manifest_step(&job).await.is_err(),
        "the writer dies"
    );
    let stopped = h.job().await;
    let checkpoint = stopped
        .manifest_checkpoint
        .expect("a checkpoint after two parts");
    assert_eq!(
        (
            stopped.status,
            checkpoint.csv.parts.len(),
            checkpoint.position.rows
        ),
        (JobStatus::Finishing, 2, 200)
    );

    use std::sync::atomic::Ordering;
    let before = dying.sent.load(Ordering::SeqCst);
    assert!(
        h.pipeline.write_manifest_step(&job).await.unwrap(),
        "the next writer carries on"
    );
    assert!(
        reference
            .pipeline
            .write_manifest_step(&reference.job().await.id)
            .await
            .unwrap()
    );
    // It sent only the parts after the checkpoint's two of each file.
    let all = counted.sent.load(Ordering::SeqCst);
    assert_eq!(dying.sent.load(Ordering::SeqCst) - before, all - 2 * 2);
    let (done, clean) = (h.job().await, reference.job().await);
    assert_eq!(
        (done.status, done.manifest_checkpoint.clone()),
        (JobStatus::Completed, None)
    );
    let files = |h: &Harness, job: &crate::domain::Job| {
        let at = job.manifest.clone().unwrap();
        let read = |o: &ObjectRef| std::fs::read(h.objects.path_of(o).unwrap()).unwrap();
        (read(&at.csv), read(&at.jsonl))
    };
    let (csv_a, jsonl_a) = files(&h, &done);
    let (csv_b, jsonl_b) = files(&reference, &clean);
    assert_eq!(String::from_utf8_lossy(&jsonl_a).lines().count(), 400);
    // The carried-on manifest is the one a single writer makes.
    assert_eq!(
        String::from_utf8_lossy(&csv_a),
        String::from_utf8_lossy(&csv_b)
    );
    assert_eq!(
        String::from_utf8_lossy(&jsonl_a),
        String::from_utf8_lossy(&jsonl_b)
    );
}

// ---- job control: cancel, pause, in-flight limit, abort rule -------------------------------

impl Harness {
    async fn control(&self, change: crate::domain::ControlChange) -> crate::domain::Controlled {
        let job = self.job().await.id;
        self.pipeline
            .control_job(&job, &change)
            .await
            .unwrap()
            .expect("the job exists")
    }

    /// Submits what the queue holds, plays the webhooks of batches accepted since `played`, and
    /// repeats until nothing moves; returns the batches played.
    async fn drive(&self, mut played: usize) -> usize {
        loop {
            self.submit_all().await;
            let accepted = self.pictify.batches.lock().unwrap().len();
            if accepted == played && self.queue.is_empty() {
                return played;
            }
            self.play_webhooks(played).await;
            played = accepted;
        }
    }

    /// Batches Pictify accepted whose webhooks were not played yet: at Pictify now.
    fn at_pictify(&self, played: usize) -> usize {
        self.pictify.batches.lock().unwrap().len() - played
    }
}

fn cancel() -> crate::domain::ControlChange {
    crate::domain::ControlChange::Cancel {
        reason: "wrong template".into(),
    }
}

#[tokio::test]
async fn a_cancelled_job_ends_its_unsent_chunks_cancels_its_batches_and_the_counts_add_up() {
    use crate::domain::Controlled;
    let h = paced(2, 10);
    h.put_upload(csv(50)).await;
    h.ingest().await;
    h.submit_all().await; // 2 batches at Pictify, 3 chunks parked
    h.play_webhooks(0).await; // the first two finish: 20 rendered, 2 more handed over
    let handed = h.queue.drain();
    assert_eq!(handed.len(), 2);
    h.pipeline.submit(&handed[0]).await.unwrap(); // one at Pictify; one message still queued

    assert_eq!(h.control(cancel()).await, Controlled::Applied);
    assert_eq!(
        h.pictify.cancelled.lock().unwrap().as_slice(),
        ["batch_3"],
        "the batch at Pictify is cancelled there"
    );
    // The chunk whose message was still out, and the parked one, ended unsent.
    assert_eq!(h.job().await.counters.cancelled, 20);
    assert!(h.store.parked().await.unwrap().is_empty());
    assert_eq!(
        h.pipeline.submit(&handed[1]).await.unwrap(),
        SubmitOutcome::Cancelled
    );
    h.play_webhooks(2).await; // the cancelled batch completes: its 10 rows were skipped

    let job = h.job().await;
    let c = job.counters;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        (c.rendered, c.cancelled, c.failed, c.in_flight()),
        (20, 30, 0, 0)
    );
    assert!(c.invariant_holds() && c.terminal() == c.rows);
    assert_eq!(
        h.pictify.batches.lock().unwrap().len(),
        3,
        "nothing sent after the cancel"
    );
    assert!(h.store.live_slots(NOW).await.unwrap().is_empty());
    let lines = h.manifest_lines().await;
    let cancelled: Vec<_> = lines
        .iter()
        .filter(|l| l["status"] == "cancelled")
        .collect();
    assert_eq!((lines.len(), cancelled.len()), (50, 30));
    assert_eq!(cancelled[0]["errorCode"], "CANCELLED");
    // Idempotent: a repeated cancel finds the job finished and changes nothing.
    assert_eq!(
        h.control(cancel()).await,
        Controlled::Finished(JobStatus::Cancelled)
    );
    assert_eq!(h.job().await.counters, c);
    assert_eq!(h.alerts_of_kind("job_finished"), 1);
}

#[tokio::test]
async fn a_paused_job_sends_nothing_until_it_is_resumed() {
    use crate::domain::{ControlChange, Controlled};
    let h = paced(2, 10);
    h.put_upload(csv(50)).await;
    h.ingest().await;
    let pause = ControlChange::Pause {
        reason: "checking the first images".into(),
    };
    assert_eq!(h.control(pause.clone()).await, Controlled::Applied);
    assert_eq!(h.control(pause).await, Controlled::Unchanged);
    let outcomes = h.submit_all().await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, SubmitOutcome::Parked(_))),
        "{outcomes:?}"
    );
    assert!(h.pictify.batches.lock().unwrap().is_empty());
    assert_eq!(h.store.parked().await.unwrap().len(), 5);
    assert!(
        h.store.live_slots(NOW).await.unwrap().is_empty(),
        "a paused job holds no slot"
    );
    assert_eq!(h.pipeline.hand_over().await.unwrap(), 0, "passed over");
    // A reconciler pass re-sends nothing of it either.
    h.pipeline
        .reconcile(std::time::Duration::ZERO)
        .await
        .unwrap();
    assert!(h.queue.is_empty());

    assert_eq!(h.control(ControlChange::Resume).await, Controlled::Applied);
    h.drive(0).await;
    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.rendered),
        (JobStatus::Completed, 50)
    );
    assert_eq!(
        h.pictify.batches.lock().unwrap().len(),
        5,
        "each chunk once"
    );
}

#[tokio::test]
async fn a_jobs_in_flight_limit_holds_and_can_be_changed_mid_run() {
    use crate::domain::{ControlChange, Controlled};
    let h = paced(4, 10);
    h.put_upload(csv(80)).await;
    h.ingest().await;
    assert_eq!(
        h.control(ControlChange::MaxInFlight(Some(1))).await,
        Controlled::Applied
    );
    h.submit_all().await;
    assert_eq!(h.at_pictify(0), 1, "the job's limit, not the window's 4");
    let mut played = 0;
    for _ in 0..2 {
        h.play_webhooks(played).await;
        played = h.pictify.batches.lock().unwrap().len();
        h.submit_all().await;
        assert_eq!(h.at_pictify(played), 1);
    }
    // Raised mid-run: the parked chunks are handed over at once, up to the new limit.
    h.control(ControlChange::MaxInFlight(Some(3))).await;
    h.submit_all().await;
    assert_eq!(h.at_pictify(played), 3);
    h.drive(played).await;
    let job = h.job().await;
    assert_eq!(
        (job.status, job.counters.rendered),
        (JobStatus::Completed, 80)
    );
    assert_eq!(
        h.pictify.batches.lock().unwrap().len(),
        8,
        "each chunk once"
    );
}

/// 50 rows in chunks of 10 submitted one at a time; the first chunk's rows all fail for good.
async fn aborting(action: &str) -> Harness {
    let h = paced(1, 10);
    let sidecar =
        format!(r#"{{"maxFailureRate": 0.05, "abortAfterRows": 10, "onAbort": "{action}"}}"#);
    h.objects
        .put_bytes(
            &crate::layout::sidecar_of(&upload()),
            sidecar.into_bytes(),
            "application/json",
        )
        .await
        .unwrap();
    let failing: Vec<(String, &'static str)> = (0..10)
        .map(|i| (format!("Post {i}"), "INVALID_VARIABLE"))
        .collect();
    h.pictify.fail.lock().unwrap().extend(failing);
    h.put_upload(csv(50)).await;
    h.ingest().await;
    h.submit_all().await;
    h.play_webhooks(0).await;
    h
}

#[tokio::test]
async fn the_abort_rule_pauses_a_failing_job_once_with_one_alert() {
    use crate::domain::{ControlChange, Controlled};
    let h = aborting("pause").await;
    let job = h.job().await;
    assert!(
        job.control
            .paused
            .as_deref()
            .is_some_and(|r| r.contains("maxFailureRate")),
        "{:?}",
        job.control
    );
    assert_eq!(h.alerts_of_kind("job_aborted"), 1);
    // The batch that tripped it handed its slot to nobody: the job is passed over.
    h.submit_all().await;
    assert_eq!(h.pictify.batches.lock().unwrap().len(), 1);

    // Resumed by the operator, it is not paused again by the same rule.
    assert_eq!(h.control(ControlChange::Resume).await, Controlled::Applied);
    h.drive(1).await;
    let job = h.job().await;
    let c = job.counters;
    assert_eq!(
        (job.status, c.rendered, c.failed),
        (JobStatus::Partial, 40, 10)
    );
    assert_eq!(h.alerts_of_kind("job_aborted"), 1);
    assert_eq!(
        h.alerts_of_kind("batch_high_failure_rate"),
        1,
        "the 5%-per-batch alert stays"
    );
}

#[tokio::test]
async fn the_abort_rule_can_cancel_the_rest_of_the_job() {
    let h = aborting("cancel").await;
    // The reconciler's pass ends what the webhook could not (the parked chunks).
    h.pipeline
        .reconcile(std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    h.drive(1).await;
    let job = h.job().await;
    let c = job.counters;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(
        (c.rendered, c.failed, c.cancelled, c.in_flight()),
        (0, 10, 40, 0)
    );
    assert_eq!(h.pictify.batches.lock().unwrap().len(), 1);
    assert_eq!(h.alerts_of_kind("job_aborted"), 1);
}

// ---- template definitions cached for ingest -------------------------------------------------

#[tokio::test]
async fn rows_the_cached_template_definitions_refuse_are_rejected_at_ingest_not_billed() {
    let h = harness();
    let pipeline = &h.pipeline;
    assert!(
        pipeline
            .refresh_template_variables("bucket", "tmpl_blog_card")
            .await
            .unwrap()
    );
    assert!(
        !pipeline
            .refresh_template_variables("bucket", "tmpl_blog_card")
            .await
            .unwrap(),
        "a fresh copy is not fetched again"
    );
    h.advance(std::time::Duration::from_secs(6 * 60));
    assert!(
        pipeline
            .refresh_template_variables("bucket", "tmpl_blog_card")
            .await
            .unwrap()
    );

    // Two rows lack an author the template requires (the job's own rules do not).
    let data = "title,author,publishDate\nA,Ann,2026-01-01\nB,,2026-01-02\nC,Cy,2026-01-03\nD,,2026-01-04\n";
    h.put_upload(data.as_bytes().to_vec()).await;
    h.ingest().await;
    let job = h.job().await;
    assert_eq!((job.counters.rows, job.counters.rejected), (4, 2));
    assert!(
        job.rejected_sample[0].1.contains("INVALID_VARIABLE")
            && job.rejected_sample[0].1.contains("'author'"),
        "{:?}",
        job.rejected_sample
    );
    h.submit_all().await;
    let sent: usize = h
        .pictify
        .batches
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, r)| r.variable_sets.len())
        .sum();
    assert_eq!(sent, 2, "only the rows the template takes are sent");
    h.play_webhooks(0).await;
    let lines = h.manifest_lines().await;
    let rejected: Vec<_> = lines.iter().filter(|l| l["status"] == "rejected").collect();
    assert_eq!(rejected.len(), 2, "the manifest judges rows as ingest did");
    assert!(
        rejected[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("INVALID_VARIABLE")
    );

    // A copy no reconciler refreshed for over an hour is not trusted: rows go to Pictify.
    h.advance(std::time::Duration::from_secs(2 * 3600));
    let changed = format!("{data}E,,2026-01-05\n");
    h.put_upload(changed.into_bytes()).await;
    h.ingest().await;
    let job = h.job().await;
    assert_eq!((job.counters.rows, job.counters.rejected), (5, 0));
    assert_eq!(job.spec.template_variables, None);
}

/// Images by URL for the deliver step: `Post 1`'s fails twice (a 5xx) and then comes, `Post 2`'s
/// is gone (a 404); the rest come at once.
#[derive(Default)]
struct FlakyImages {
    fetches: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl crate::ports::ImageSource for FlakyImages {
    async fn fetch(&self, url: &str) -> crate::ports::PortResult<crate::ports::FetchedImage> {
        let tries = {
            let mut fetches = self.fetches.lock().unwrap();
            let tries = fetches.entry(url.to_owned()).or_default();
            *tries += 1;
            *tries
        };
        if url.contains("Post 1.") && tries <= 2 {
            return Err(crate::ports::PortError::new("fetch", "HTTP 503"));
        }
        if url.contains("Post 2.") {
            return Err(crate::ports::PortError::permanent("fetch", "HTTP 404"));
        }
        Ok(crate::ports::FetchedImage {
            bytes: b"\x89PNG".to_vec(),
            content_type: Some("image/png".into()),
        })
    }
}

#[tokio::test]
async fn delivery_retries_a_failing_copy_and_records_one_that_cannot_succeed() {
    let mut h = harness();
    let images = Arc::new(FlakyImages::default());
    h.pipeline.outputs.images = images.clone();
    let sidecar = ObjectRef {
        bucket: "bucket".into(),
        key: format!("{}.job.json", upload().key),
    };
    let spec = br#"{"delivery": {"bucket": "mine", "prefix": "cards/", "keyPattern": "{slug(title)}.{ext}"}}"#;
    h.objects
        .put_bytes(&sidecar, spec.to_vec(), "application/json")
        .await
        .unwrap();
    h.put_upload(csv(5)).await;
    h.ingest().await;
    h.submit_all().await;
    h.play_webhooks(0).await;

    let job = h.job().await;
    assert_eq!(
        job.status,
        JobStatus::Completed,
        "delivery leaves statuses alone"
    );
    let at = |key: &str| ObjectRef {
        bucket: "mine".into(),
        key: key.into(),
    };
    for row in [0, 1, 3, 4] {
        let copy = h
            .objects
            .get_bytes(&at(&format!("cards/post-{row}.png")))
            .await
            .unwrap();
        assert_eq!(copy.as_deref(), Some(&b"\x89PNG"[..]), "row {row}");
    }
    assert_eq!(
        images.fetches.lock().unwrap()["https://cdn/Post 1.png"],
        3,
        "tried three times"
    );
    assert_eq!(
        images.fetches.lock().unwrap()["https://cdn/Post 2.png"],
        1,
        "a 404 is not retried"
    );
    let lines = h.manifest_lines().await;
    assert_eq!(lines[1]["deliveredKey"], "cards/post-1.png");
    assert_eq!(lines[2]["deliveredKey"], serde_json::Value::Null);
    let error = lines[2]["deliveryError"].as_str().unwrap();
    assert!(
        error.contains("after 1 tries") && error.contains("404"),
        "{error}"
    );

    // Delivering the chunk again (a redelivered step) fetches nothing more.
    let fetched: u32 = images.fetches.lock().unwrap().values().sum();
    h.pipeline
        .deliver_chunk(&job.id, ChunkKey::initial(1))
        .await
        .unwrap();
    assert_eq!(
        images.fetches.lock().unwrap().values().sum::<u32>(),
        fetched
    );
}
