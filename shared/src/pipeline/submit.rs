//! submit: one chunk → one `renderBatch`, never twice. Intent is recorded (conditionally) before
//! the call and the batch id after it; the chunk id is the `Idempotency-Key`.
//!
//! Unknown outcomes (timeout, connection lost, crash between the call and the write): the chunk
//! stays `submitting` and is not resent before `SUBMIT_GRACE_SECONDS`; then it is resent with the
//! SAME idempotency key, so Pictify replays its first answer instead of rendering again.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{error, info, warn};

use super::{Pipeline, StepError};
use crate::domain::{
    ChunkKey, ChunkMessage, ChunkOutcome, ChunkPayload, Counters, InlinePayload, JobId, RowError,
    own_codes,
};
use crate::metrics::{self, Unit};
use crate::pictify::PictifyError;
use crate::pictify::wire::BatchRenderRequest;
use crate::ports::{Alert, BeginSubmit, ChunkCompletion};

/// What the queue handler should do with the message.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Accepted by Pictify: acknowledge.
    Submitted { batch_id: String },
    /// Nothing to do (redelivery after success, or an unknown chunk): acknowledge.
    AlreadyDone,
    /// Put the message back, visible again after this delay.
    RetryLater(Duration),
    /// Submissions are paused (401/402): keep the message, retry after this delay.
    Paused { reason: String, delay: Duration },
    /// Pictify refused the chunk (400/404/422): its rows are failed; acknowledge.
    Rejected { message: String },
}

impl Pipeline {
    pub async fn submit(&self, message: &ChunkMessage) -> Result<SubmitOutcome, StepError> {
        let (job, key) = (&message.job, message.key);
        if let Some(reason) = self.store.submissions_paused().await? {
            return Ok(SubmitOutcome::Paused {
                reason,
                delay: self.settings.paused_delay,
            });
        }
        let now = self.clock.now();
        let attempt = match self
            .store
            .begin_submit(job, key, now, self.settings.submit_grace)
            .await?
        {
            BeginSubmit::Proceed { attempt } => attempt,
            BeginSubmit::AlreadySubmitted { batch_id } => {
                info!(job_id = %job, chunk = %key.label(), batch_id = %batch_id, "redelivered chunk already submitted");
                return Ok(SubmitOutcome::AlreadyDone);
            }
            BeginSubmit::Completed => return Ok(SubmitOutcome::AlreadyDone),
            BeginSubmit::InProgress { since } => {
                let waited = u64::try_from(now - since).unwrap_or(0);
                let left = self
                    .settings
                    .submit_grace
                    .as_secs()
                    .saturating_sub(waited)
                    .max(1);
                info!(job_id = %job, chunk = %key.label(), left_s = left, "submit outcome unknown; waiting out the grace period");
                return Ok(SubmitOutcome::RetryLater(Duration::from_secs(left)));
            }
            BeginSubmit::Unknown => {
                error!(job_id = %job, chunk = %key.label(), "message for a chunk we have no record of; dropping it");
                return Ok(SubmitOutcome::AlreadyDone);
            }
        };
        let payload = self.load_payload(message).await?;
        let request = BatchRenderRequest {
            variable_sets: payload.variable_sets.clone(),
            format: Some(payload.format),
            quality: payload.quality,
            concurrency: payload.concurrency,
            layout: None,
            layouts: None,
        };
        let idempotency_key = key.idempotency_key(job);
        let started = std::time::Instant::now();
        let result = self
            .pictify
            .render_batch(&payload.template_id, &request, &idempotency_key)
            .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(accepted) => {
                self.store
                    .record_submitted(job, key, &accepted.batch_id, self.clock.now())
                    .await?;
                info!(job_id = %job, chunk = %key.label(), batch_id = %accepted.batch_id, attempt, latency_ms,
                    rows = payload.rows.len(), "chunk submitted");
                // Pictify may finish a batch before we learn its id (a fast batch, or a timed-out call
                // resolved by its idempotency key); its batch.completed was then kept as an orphan.
                if self.store.batch_completed_early(&accepted.batch_id).await? {
                    info!(job_id = %job, batch_id = %accepted.batch_id, "batch.completed came before its id was recorded; applying it now");
                    self.complete_batch(&accepted.batch_id, None).await?;
                }
                metrics::emit(
                    &[
                        ("RowsSubmitted", payload.rows.len() as f64, Unit::Count),
                        ("SubmitLatency", latency_ms as f64, Unit::Milliseconds),
                    ],
                    &[("jobId", job.as_str()), ("batchId", &accepted.batch_id)],
                );
                Ok(SubmitOutcome::Submitted {
                    batch_id: accepted.batch_id,
                })
            }
            Err(e) => self.submit_failed(job, key, &payload, e).await,
        }
    }

    async fn submit_failed(
        &self,
        job: &JobId,
        key: ChunkKey,
        payload: &ChunkPayload,
        e: PictifyError,
    ) -> Result<SubmitOutcome, StepError> {
        let chunk = key.label();
        match e {
            PictifyError::RateLimited { retry_after, .. } => {
                self.store.release_submit(job, key).await?;
                let delay = retry_after.unwrap_or(self.settings.retry_delay);
                warn!(job_id = %job, chunk = %chunk, delay_s = delay.as_secs(), "rate limited; retrying later");
                Ok(SubmitOutcome::RetryLater(delay))
            }
            PictifyError::Server { status, .. } => {
                // The client already retried with backoff; a 5xx answer means no batch was created.
                self.store.release_submit(job, key).await?;
                warn!(job_id = %job, chunk = %chunk, status, "pictify server error; retrying later");
                Ok(SubmitOutcome::RetryLater(self.settings.retry_delay))
            }
            PictifyError::Timeout { .. }
            | PictifyError::Network { .. }
            | PictifyError::Decode { .. } => {
                // Pictify may have accepted it: leave the intent in place, resend only after the grace period.
                warn!(job_id = %job, chunk = %chunk, error = %e, "submit outcome unknown");
                Ok(SubmitOutcome::RetryLater(self.settings.submit_grace))
            }
            PictifyError::Unauthorized { ref message }
            | PictifyError::Quota { ref message, .. } => {
                let reason = format!("{e}");
                self.store.release_submit(job, key).await?;
                if self
                    .store
                    .pause_submissions(&reason, self.clock.now())
                    .await?
                {
                    error!(job_id = %job, chunk = %chunk, reason = %message, "submissions paused");
                    self.alert(Alert {
                        kind: "submissions_paused".into(),
                        message: format!("Pictify refused a submission ({reason}); all submissions are paused until an operator resumes them"),
                        job: Some(job.to_string()),
                        batch_id: None,
                        failure_rate: None,
                        top_errors: Vec::new(),
                        counters: None,
                    })
                    .await;
                }
                Ok(SubmitOutcome::Paused {
                    reason,
                    delay: self.settings.paused_delay,
                })
            }
            PictifyError::NotFound { ref message }
            | PictifyError::InvalidRequest { ref message, .. } => {
                let message = message.clone();
                warn!(job_id = %job, chunk = %chunk, error = %e, "pictify rejected the chunk; failing its rows");
                let failed: BTreeMap<u32, RowError> = (0..payload.rows.len() as u32)
                    .map(|i| {
                        (
                            i,
                            RowError {
                                code: own_codes::SUBMIT_REJECTED.into(),
                                message: e.to_string(),
                            },
                        )
                    })
                    .collect();
                let n = failed.len() as u64;
                let completion = ChunkCompletion {
                    job: job.clone(),
                    key,
                    outcome: ChunkOutcome {
                        rendered: 0,
                        failed,
                        retried: Vec::new(),
                        duration_ms: None,
                    },
                    delta: Counters {
                        failed: n,
                        chunks_done: 1,
                        ..Default::default()
                    },
                    retry: None,
                    alert: true,
                };
                if self.store.complete_chunk(&completion).await? {
                    self.alert(Alert {
                        kind: "submit_rejected".into(),
                        message: format!("Pictify rejected chunk {chunk} ({n} rows failed): {e}"),
                        job: Some(job.to_string()),
                        batch_id: None,
                        failure_rate: Some(1.0),
                        top_errors: vec![(own_codes::SUBMIT_REJECTED.into(), n)],
                        counters: None,
                    })
                    .await;
                }
                self.finish_job_if_done(job).await?;
                Ok(SubmitOutcome::Rejected { message })
            }
        }
    }

    pub(crate) async fn load_payload(
        &self,
        message: &ChunkMessage,
    ) -> Result<ChunkPayload, StepError> {
        if let Some(payload) = &message.payload {
            return payload.decode().map_err(|e| {
                StepError::Other(format!(
                    "the inline payload of chunk {} is unreadable: {e}",
                    message.key.label()
                ))
            });
        }
        let at = message.payload_ref.as_ref().ok_or_else(|| {
            StepError::Other(format!(
                "message for chunk {} carries no payload",
                message.key.label()
            ))
        })?;
        self.read_payload(at).await
    }

    /// A chunk's stored payload (the variable sets it was cut with).
    pub async fn chunk_payload(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkPayload, StepError> {
        self.read_payload(&self.payload_ref(job, key).await?).await
    }

    /// Where a chunk's payload is stored (it lives in the job's bucket).
    async fn payload_ref(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<crate::domain::ObjectRef, StepError> {
        let stored = self
            .store
            .job(job)
            .await?
            .ok_or_else(|| StepError::Other(format!("job {job} is missing")))?;
        Ok(crate::layout::chunk_payload_ref(
            &stored.source.bucket,
            job,
            &key.label(),
            &self.settings,
        ))
    }

    /// Rebuilds a chunk's queue message from its stored payload (resume, re-queue, tests). Sending
    /// it again is always safe: the submitter ignores chunks already submitted.
    pub async fn chunk_message(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkMessage, StepError> {
        let at = self.payload_ref(job, key).await?;
        let bytes = self
            .objects
            .get_bytes(&at)
            .await?
            .ok_or_else(|| StepError::Other(format!("chunk payload {at} is missing")))?;
        let inline = if self.fits_inline(bytes.len()) {
            String::from_utf8(bytes)
                .ok()
                .and_then(|json| InlinePayload::from_json(json).ok())
        } else {
            None
        };
        Ok(ChunkMessage {
            job: job.clone(),
            key,
            payload_ref: inline.is_none().then_some(at),
            payload: inline,
        })
    }

    pub(crate) async fn read_payload(
        &self,
        at: &crate::domain::ObjectRef,
    ) -> Result<ChunkPayload, StepError> {
        let bytes = self
            .objects
            .get_bytes(at)
            .await?
            .ok_or_else(|| StepError::Other(format!("chunk payload {at} is missing")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StepError::Other(format!("chunk payload {at} is unreadable: {e}")))
    }

    /// Alerts are best effort: a failed alert is logged, never allowed to undo the work it reports.
    pub(crate) async fn alert(&self, alert: Alert) {
        if let Err(e) = self.alerts.send(&alert).await {
            error!(kind = %alert.kind, error = %e, "alert could not be sent");
        }
    }
}
