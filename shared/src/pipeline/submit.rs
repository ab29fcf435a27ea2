//! submit: one chunk → one `renderBatch`, never twice. Intent is recorded (conditionally) before
//! the call and the batch id after it; the chunk id is the `Idempotency-Key`.
//!
//! Unknown outcomes (timeout, connection lost, crash between the call and the write): the chunk
//! stays `submitting` and is not resent before `SUBMIT_GRACE_SECONDS`; then it is resent with the
//! SAME idempotency key, so Pictify replays its first answer instead of rendering again.
//!
//! Pacing (`window`): a chunk first takes a slot of the plan's in-flight window; with the window
//! full, or submissions paused, it is parked and its message acknowledged. It keeps its slot
//! while its batch is at Pictify, and while it waits out a 429, a 5xx or an unknown outcome (so
//! a window that disagrees with Pictify's count shrinks instead of bouncing other chunks).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{error, info, warn};

use super::alerting::{chunk_failed_alert, submissions_paused_alert};
use super::payload::retry_payload;
use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::domain::{
    ChunkKey, ChunkMessage, ChunkOutcome, ChunkPayload, Counters, Job, JobId, RowError, own_codes,
};
use crate::metrics::{self, Unit};
use crate::pictify::PictifyError;
use crate::pictify::wire::BatchRenderRequest;
use crate::ports::{AlertKind, BeginSubmit, ChunkCompletion};

/// How long a reused image must still have at Pictify (which keeps images `IMAGE_RETENTION`
/// after their render): a day, for the manifest's reader to fetch or deliver it.
pub const REUSE_MARGIN: Duration = Duration::from_secs(86_400);

/// What the queue handler should do with the message.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Accepted by Pictify: acknowledge.
    Submitted { batch_id: String },
    /// Nothing to do (redelivery after success, or an unknown chunk): acknowledge.
    AlreadyDone,
    /// Put the message back, visible again after this delay.
    RetryLater(Duration),
    /// Parked in the store until a window slot frees or submissions resume: acknowledge.
    Parked(ParkReason),
    /// Pictify refused the chunk (400/404/422): its rows are failed; acknowledge.
    Rejected { message: String },
    /// Its job is cancelled: its rows ended `cancelled` unsent; acknowledge.
    Cancelled,
    /// An incremental re-run: `reused` rows took an earlier render of the same variables and
    /// the `changed` ones (if any) went on as the next chunk; nothing was sent; acknowledge.
    Reused { reused: u32, changed: u32 },
}

/// What a queue consumer does with a chunk message after `Pipeline::handle_chunk_message`: one
/// rule for the SQS submitter and the local run.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageFate {
    /// Done with it (submitted, already done, or its rows failed for good): acknowledge.
    Acknowledge,
    /// Keep it: visible again after `after` (`None`: the queue's own redelivery, e.g. the SQS
    /// visibility timeout).
    Keep {
        after: Option<Duration>,
        why: KeepReason,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum KeepReason {
    /// Rate limited, a 5xx, or an unknown outcome waiting out its grace period.
    Later,
    /// A step error that trying again can fix (a store or network hiccup).
    Error { error: String },
}

/// Why a chunk was parked.
#[derive(Debug, Clone, PartialEq)]
pub enum ParkReason {
    /// Every slot of the plan's window is held.
    WindowFull,
    /// Submissions are paused for the account (401/402/quota) until an operator resumes them.
    Paused { reason: String },
    /// Its job is paused (`pictify-batch pause`, or its abort rule) until resumed.
    JobPaused { reason: String },
    /// Its job holds as many batches at Pictify as its in-flight limit allows.
    JobAtLimit { limit: u32 },
}

/// A chunk that can never render, and how to say so.
struct ChunkFailure {
    alert: AlertKind,
    code: &'static str,
    message: String,
}

impl Pipeline {
    /// Submits the chunk a queue message carries and decides the message's fate. Errors are
    /// sorted once, by `StepError::is_retryable`: a retryable one keeps the message for the
    /// queue to redeliver; a permanent one (its payload is gone or unreadable, its job unknown)
    /// fails the chunk's rows, recorded and alerted, and acknowledges, so nothing bounces into
    /// the dead-letter queue that an operator could not fix by redelivering.
    pub async fn handle_chunk_message(&self, message: &ChunkMessage) -> MessageFate {
        let (job, chunk) = (&message.job, message.key.label());
        let error = match self.submit(message).await {
            Ok(
                SubmitOutcome::Submitted { .. }
                | SubmitOutcome::AlreadyDone
                | SubmitOutcome::Parked(_)
                | SubmitOutcome::Rejected { .. }
                | SubmitOutcome::Cancelled
                | SubmitOutcome::Reused { .. },
            ) => return MessageFate::Acknowledge,
            Ok(SubmitOutcome::RetryLater(delay)) => {
                return MessageFate::Keep {
                    after: Some(delay),
                    why: KeepReason::Later,
                };
            }
            Err(e) => e,
        };
        if error.is_retryable() {
            error!(job_id = %job, chunk = %chunk, error = %error, "submit failed; the message will be redelivered");
            return MessageFate::Keep {
                after: None,
                why: KeepReason::Error {
                    error: error.to_string(),
                },
            };
        }
        error!(job_id = %job, chunk = %chunk, error = %error, "the chunk can never be submitted; failing its rows");
        match self.fail_unsubmittable(message, &error).await {
            Ok(()) => MessageFate::Acknowledge,
            Err(e) => {
                error!(job_id = %job, chunk = %chunk, error = %e, "could not record the failed chunk; the message will be redelivered");
                MessageFate::Keep {
                    after: None,
                    why: KeepReason::Error {
                        error: e.to_string(),
                    },
                }
            }
        }
    }

    /// Fails the rows of a chunk whose submit failed permanently. A message for a chunk (or job)
    /// we have no record of has no rows to fail: it is acknowledged, as `submit` does.
    async fn fail_unsubmittable(
        &self,
        message: &ChunkMessage,
        error: &StepError,
    ) -> Result<(), StepError> {
        let Some(chunk) = self.store.chunk(&message.job, message.key).await? else {
            return Ok(());
        };
        let failure = ChunkFailure {
            alert: AlertKind::ChunkUnsubmittable,
            code: own_codes::CHUNK_UNSUBMITTABLE,
            message: error.to_string(),
        };
        self.fail_chunk(&message.job, message.key, chunk.rows.len(), failure)
            .await
    }

    pub async fn submit(&self, message: &ChunkMessage) -> Result<SubmitOutcome, StepError> {
        let (job, key) = (&message.job, message.key);
        if let Some(reason) = self.store.submissions_paused().await? {
            self.park_chunk(job, key).await?;
            info!(job_id = %job, chunk = %key.label(), reason = %reason, "submissions paused; chunk parked");
            return Ok(SubmitOutcome::Parked(ParkReason::Paused { reason }));
        }
        let Some(record) = self.store.job(job).await? else {
            error!(job_id = %job, chunk = %key.label(), "message for a job we have no record of; dropping it");
            self.free_slot(job, key).await?;
            return Ok(SubmitOutcome::AlreadyDone);
        };
        if record.control.cancelled.is_some() {
            if self.cancel_unsent_chunk(job, key).await? {
                info!(job_id = %job, chunk = %key.label(), "job cancelled; chunk ended unsent");
                self.finish_job_if_done(job).await?;
            }
            return Ok(SubmitOutcome::Cancelled);
        }
        if !self.take_slot(job, key).await? {
            self.park_chunk(job, key).await?;
            info!(job_id = %job, chunk = %key.label(), "window full; chunk parked");
            return Ok(SubmitOutcome::Parked(ParkReason::WindowFull));
        }
        let now = self.clock.now();
        let attempt = match self
            .store
            .begin_submit(job, key, now, self.settings.submit_grace)
            .await?
        {
            BeginSubmit::Proceed { attempt } => attempt,
            BeginSubmit::AlreadySubmitted { batch_id } => {
                // Its batch is at Pictify: the slot we hold (renewed, or taken) is that batch's.
                info!(job_id = %job, chunk = %key.label(), batch_id = %batch_id, "redelivered chunk already submitted");
                return Ok(SubmitOutcome::AlreadyDone);
            }
            BeginSubmit::Completed => {
                self.free_slot(job, key).await?;
                return Ok(SubmitOutcome::AlreadyDone);
            }
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
                self.free_slot(job, key).await?;
                return Ok(SubmitOutcome::AlreadyDone);
            }
        };
        // Checked once the chunk is ours: a redelivered message of a chunk at Pictify keeps its slot.
        let held = match (&record.control.paused, record.max_in_flight()) {
            (Some(reason), _) => Some(ParkReason::JobPaused {
                reason: reason.clone(),
            }),
            (None, Some(limit)) if self.over_job_limit(job, limit).await? => {
                Some(ParkReason::JobAtLimit { limit })
            }
            _ => None,
        };
        if let Some(why) = held {
            self.store.release_submit(job, key).await?;
            self.hold_back(job, key).await?;
            info!(job_id = %job, chunk = %key.label(), why = ?why, "job holds the chunk back; parked");
            return Ok(SubmitOutcome::Parked(why));
        }
        let payload = self.load_payload(message).await?;
        if record.spec.incremental
            && key.attempt == 0
            && let Some(reused) = self.reuse_earlier_renders(&record, key, &payload).await?
        {
            return Ok(reused);
        }
        let request = BatchRenderRequest {
            variable_sets: payload.variable_sets.clone(),
            format: Some(payload.format),
            quality: payload.quality,
            concurrency: payload.concurrency,
            layout: None,
            layouts: None,
        };
        let idempotency_key = key.idempotency_key(job);
        self.spend_request().await?;
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
                    // The chunk is submitted whatever happens here: a failure is not the submit's
                    // (failing its rows would be wrong); the reconciler polls the batch later.
                    if let Err(e) = self.complete_batch(&accepted.batch_id, None).await {
                        warn!(job_id = %job, batch_id = %accepted.batch_id, error = %e, "applying the early batch failed; the reconciler will poll it");
                    }
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

    /// An incremental re-run's first look at a chunk: rows whose (template, variables) has an
    /// image on record that is still at Pictify end `reused` with its URL; the rest go on as the
    /// chunk's next attempt, sent as usual. One `complete_chunk`, so a redelivered message
    /// changes nothing. `None` when no row can be reused (the chunk is sent whole).
    ///
    /// Only renders recorded before the job was created count, and only while their image has
    /// [`REUSE_MARGIN`] of Pictify's retention left: the answer is the same on every redelivery.
    async fn reuse_earlier_renders(
        &self,
        job: &Job,
        key: ChunkKey,
        payload: &ChunkPayload,
    ) -> Result<Option<SubmitOutcome>, StepError> {
        let fingerprints: Vec<String> = payload
            .variable_sets
            .iter()
            .map(|variables| fingerprint(&payload.template_id, variables))
            .collect();
        let records = self.store.renders(&fingerprints).await?;
        let usable_for = self.settings.image_retention.saturating_sub(REUSE_MARGIN);
        let oldest = job.created_at - i64::try_from(usable_for.as_secs()).unwrap_or(i64::MAX);
        let mut reused = BTreeMap::new();
        let mut changed = Vec::new();
        for (index, fp) in fingerprints.iter().enumerate() {
            let index = index as u32;
            match records
                .get(fp)
                .filter(|r| (oldest..=job.created_at).contains(&r.recorded_at))
            {
                Some(record) => {
                    reused.insert(index, record.url.clone());
                }
                None => changed.push(index),
            }
        }
        if reused.is_empty() {
            return Ok(None);
        }
        let counts = (reused.len() as u32, changed.len() as u32);
        let sent_on = if changed.is_empty() {
            None
        } else {
            let rest = retry_payload(payload, &changed);
            Some(self.store_payload(&job.source.bucket, rest).await?)
        };
        let completion = ChunkCompletion {
            job: job.id.clone(),
            key,
            delta: Counters {
                reused: u64::from(counts.0),
                chunks: u64::from(sent_on.is_some()),
                chunks_done: 1,
                ..Default::default()
            },
            outcome: ChunkOutcome {
                reused,
                retried: changed,
                completed_at: Some(self.clock.now()),
                ..ChunkOutcome::default()
            },
            retry: sent_on.as_ref().map(|(chunk, _)| chunk.clone()),
            alert: false,
        };
        if self.store.complete_chunk(&completion).await? {
            if let Some((_, message)) = sent_on {
                // If this send is lost, the reconciler re-sends chunks left `queued` past
                // `stuck_after`.
                self.queue.send(std::slice::from_ref(&message)).await?;
            }
            info!(job_id = %job.id, chunk = %key.label(), reused = counts.0, changed = counts.1, "incremental re-run: earlier renders reused");
            metrics::emit(
                &[("RowsReused", f64::from(counts.0), Unit::Count)],
                &[("jobId", job.id.as_str())],
            );
            self.deliver_or_warn(job, key).await;
        }
        self.free_slot(&job.id, key).await?;
        self.finish_job_if_done(&job.id).await?;
        Ok(Some(SubmitOutcome::Reused {
            reused: counts.0,
            changed: counts.1,
        }))
    }

    /// Parks a chunk its job holds back, giving back any slot it holds (a hand-over's).
    async fn hold_back(&self, job: &JobId, key: ChunkKey) -> Result<(), StepError> {
        self.store.release_slot(job, key).await?;
        self.park_chunk(job, key).await
    }

    /// Whether the job holds more window slots than its limit (counting the one just taken: two
    /// chunks taking the last one at once both see the other and both wait, never both go).
    async fn over_job_limit(&self, job: &JobId, limit: u32) -> Result<bool, StepError> {
        if self.settings.pacing.max_concurrent_batches.is_none() {
            return Ok(false);
        }
        let held = self
            .store
            .live_slots(self.clock.now())
            .await?
            .iter()
            .filter(|slot| &slot.job == job)
            .count();
        Ok(held > limit as usize)
    }

    /// Ends a chunk that can never render: every row `failed` with the failure's code, counted
    /// once (a repeated call applies nothing), one alert, and the job finished if that was all.
    async fn fail_chunk(
        &self,
        job: &JobId,
        key: ChunkKey,
        rows: usize,
        failure: ChunkFailure,
    ) -> Result<(), StepError> {
        let failed: BTreeMap<u32, RowError> = (0..rows as u32)
            .map(|i| {
                let error = RowError {
                    code: failure.code.into(),
                    message: failure.message.clone(),
                };
                (i, error)
            })
            .collect();
        let n = failed.len() as u64;
        let completion = ChunkCompletion {
            job: job.clone(),
            key,
            outcome: ChunkOutcome {
                rendered: 0,
                failed,
                completed_at: Some(self.clock.now()),
                ..ChunkOutcome::default()
            },
            delta: Counters {
                failed: n,
                chunks_done: 1,
                ..Default::default()
            },
            retry: None,
            alert: true,
        };
        let applied = self.store.complete_chunk(&completion).await?;
        self.free_slot(job, key).await?;
        if applied {
            if let Some(record) = self.store.job(job).await? {
                self.deliver_or_warn(&record, key).await;
            }
            self.enforce_abort_rule(job).await?;
            let alert = chunk_failed_alert(
                failure.alert,
                job,
                &key.label(),
                n,
                failure.code,
                &failure.message,
            );
            self.alert(alert).await;
        }
        self.finish_job_if_done(job).await
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
                // Nothing is sent until an operator resumes (`resume-submissions`), which hands
                // the parked chunks over again: one alert, no retry loop.
                let reason = format!("{e}");
                self.store.release_submit(job, key).await?;
                if self
                    .store
                    .pause_submissions(&reason, self.clock.now())
                    .await?
                {
                    error!(job_id = %job, chunk = %chunk, reason = %message, "submissions paused");
                    self.alert(submissions_paused_alert(job, &reason)).await;
                }
                self.store.release_slot(job, key).await?;
                self.park_chunk(job, key).await?;
                Ok(SubmitOutcome::Parked(ParkReason::Paused { reason }))
            }
            PictifyError::NotFound { ref message }
            | PictifyError::InvalidRequest { ref message, .. } => {
                let message = message.clone();
                warn!(job_id = %job, chunk = %chunk, error = %e, "pictify rejected the chunk; failing its rows");
                let failure = ChunkFailure {
                    alert: AlertKind::SubmitRejected,
                    code: own_codes::SUBMIT_REJECTED,
                    message: e.to_string(),
                };
                self.fail_chunk(job, key, payload.rows.len(), failure)
                    .await?;
                Ok(SubmitOutcome::Rejected { message })
            }
        }
    }
}
