//! Batch completion: poll the results, classify every item, apply the counts exactly once, queue
//! retryable failures as a new chunk, alert over the threshold, and finish the job when nothing
//! is left in flight. Reached from `batch.completed`, the reconciler's poll, and the submitter
//! (a batch that finished before its id was recorded).

use std::collections::{BTreeMap, HashMap};

use tracing::{info, warn};

use super::alerting::{batch_failure_alert, failure_rate};
use super::payload::retry_payload;
use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::domain::{
    ChunkKey, ChunkOutcome, ChunkPayload, ChunkState, Counters, Job, RowError, code_from_message,
    is_retryable, own_codes,
};
use crate::layout;
use crate::metrics::{self, Unit};
use crate::pictify::wire::{BatchResults, BatchStatus};
use crate::ports::ChunkCompletion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchApplied {
    Applied,
    AlreadyApplied,
    UnknownBatch,
}

impl Pipeline {
    /// Applies a finished batch. Safe to call any number of times for the same batch.
    pub async fn complete_batch(
        &self,
        batch_id: &str,
        duration_ms: Option<u64>,
    ) -> Result<BatchApplied, StepError> {
        let Some((job_id, key)) = self.store.chunk_by_batch(batch_id).await? else {
            return Ok(BatchApplied::UnknownBatch);
        };
        let chunk = self
            .store
            .chunk(&job_id, key)
            .await?
            .ok_or_else(|| StepError::Missing {
                what: format!("chunk {} (of batch {batch_id})", key.label()),
            })?;
        if chunk.state == ChunkState::Completed {
            // A repeat may follow a crash between the completion and the slot's release.
            self.free_slot(&job_id, key).await?;
            self.finish_job_if_done(&job_id).await?;
            return Ok(BatchApplied::AlreadyApplied);
        }
        self.spend_request().await?;
        let results = self.pictify.get_batch_results(batch_id).await?;
        if !results.status.is_terminal() {
            // batch.completed raced ahead of the poll: fail so the delivery is retried later.
            return Err(StepError::NotYet(format!(
                "batch {batch_id} reported completed but polls as {:?}",
                results.status
            )));
        }
        let job = self.stored_job(&job_id).await?;
        let applied = self
            .apply_results(&job, key, chunk.rows.len(), &results, duration_ms)
            .await?;
        if applied && job.spec.abort.is_some() {
            self.enforce_abort_rule(&job_id).await?;
        }
        // The batch has left Pictify: its slot goes to the next parked chunk.
        self.free_slot(&job_id, key).await?;
        self.finish_job_if_done(&job_id).await?;
        Ok(if applied {
            BatchApplied::Applied
        } else {
            BatchApplied::AlreadyApplied
        })
    }

    async fn apply_results(
        &self,
        job: &Job,
        key: ChunkKey,
        size: usize,
        results: &BatchResults,
        duration_ms: Option<u64>,
    ) -> Result<bool, StepError> {
        let job_id = &job.id;
        let mut succeeded = vec![false; size];
        let mut errors: BTreeMap<u32, String> = BTreeMap::new();
        for item in results.results.iter().chain(&results.errors) {
            let Some(slot) = succeeded.get_mut(item.index as usize) else {
                warn!(job_id = %job_id, chunk = %key.label(), index = item.index, "poll reported an index outside the chunk");
                continue;
            };
            if item.success {
                *slot = true;
            } else {
                errors.insert(item.index, item.error.clone().unwrap_or_default());
            }
        }
        // An index the poll does not mention failed in a way we cannot name: retry it. In a
        // cancelled batch (or job) it is an item the cancel skipped.
        let cancelling =
            results.status == BatchStatus::Cancelled || job.control.cancelled.is_some();
        let mut cancelled = Vec::new();
        for (index, ok) in succeeded.iter().enumerate() {
            let index = index as u32;
            if *ok || errors.contains_key(&index) {
                continue;
            }
            if cancelling {
                cancelled.push(index);
            } else {
                errors.insert(index, "no result reported for this item".into());
            }
        }

        let failed_items = errors.len();
        let payload = if failed_items > 0 {
            let at =
                layout::chunk_payload_ref(&job.source.bucket, job_id, &key.label(), &self.settings);
            Some(self.read_payload(&at).await?)
        } else {
            None
        };
        let classified = self.classify(&errors, payload.as_ref()).await?;

        // A cancelled job's failures stay failures: nothing more is sent for it.
        let may_retry =
            key.attempt + 1 < self.settings.max_attempts && job.control.cancelled.is_none();
        let mut outcome = ChunkOutcome {
            rendered: (size - failed_items - cancelled.len()) as u32,
            cancelled,
            duration_ms,
            completed_at: Some(self.clock.now()),
            ..Default::default()
        };
        let mut code_counts: HashMap<String, u64> = HashMap::new();
        for (index, error) in classified {
            *code_counts.entry(error.code.clone()).or_default() += 1;
            if may_retry && is_retryable(&error.code) {
                outcome.retried.push(index);
            } else {
                outcome.failed.insert(index, error);
            }
        }

        // The retry payload is stored before the chunk that points at it is created.
        let retry_chunk_and_message = match (&payload, outcome.retried.is_empty()) {
            (Some(payload), false) => {
                let retry = retry_payload(payload, &outcome.retried);
                Some(self.store_payload(&job.source.bucket, retry).await?)
            }
            _ => None,
        };
        let rate = failure_rate(failed_items, size);
        let alert = batch_failure_alert(
            job_id,
            &results.batch_id,
            failed_items,
            size,
            self.settings.failure_alert_threshold,
            code_counts,
        );
        let completion = ChunkCompletion {
            job: job_id.clone(),
            key,
            delta: Counters {
                rendered: u64::from(outcome.rendered),
                failed: outcome.failed.len() as u64,
                cancelled: outcome.cancelled.len() as u64,
                retried: outcome.retried.len() as u64,
                chunks: u64::from(retry_chunk_and_message.is_some()),
                chunks_done: 1,
                ..Default::default()
            },
            outcome,
            retry: retry_chunk_and_message
                .as_ref()
                .map(|(chunk, _)| chunk.clone()),
            alert: alert.is_some(),
        };
        if !self.store.complete_chunk(&completion).await? {
            return Ok(false);
        }
        info!(
            job_id = %job_id, chunk = %key.label(), batch_id = %results.batch_id, rendered = completion.delta.rendered,
            failed = completion.delta.failed, retried = completion.delta.retried, "batch applied"
        );
        metrics::emit(
            &[
                (
                    "RowsRendered",
                    completion.delta.rendered as f64,
                    Unit::Count,
                ),
                ("RowsFailed", completion.delta.failed as f64, Unit::Count),
                ("RowsRetried", completion.delta.retried as f64, Unit::Count),
                ("FailureRate", rate * 100.0, Unit::Percent),
            ],
            &[("jobId", job_id.as_str()), ("batchId", &results.batch_id)],
        );
        self.deliver_or_warn(job, key).await;
        if let Some((_, message)) = retry_chunk_and_message {
            // If this send is lost, the reconciler re-sends chunks left `queued` past `stuck_after`.
            self.queue.send(std::slice::from_ref(&message)).await?;
        }
        if let Some(alert) = alert {
            self.alert(alert).await;
        }
        Ok(true)
    }

    /// Gives every failed item a code: from the poll message when it names one, else from the
    /// `render.failed` we recorded for its fingerprint, else UNKNOWN (retryable).
    async fn classify(
        &self,
        errors: &BTreeMap<u32, String>,
        payload: Option<&ChunkPayload>,
    ) -> Result<Vec<(u32, RowError)>, StepError> {
        let unnamed: Vec<(u32, String)> = match payload {
            Some(p) => errors
                .iter()
                .filter(|(_, message)| code_from_message(message).is_none())
                .filter_map(|(i, _)| {
                    p.variable_sets
                        .get(*i as usize)
                        .map(|v| (*i, fingerprint(&p.template_id, v)))
                })
                .collect(),
            None => Vec::new(),
        };
        let recorded = if unnamed.is_empty() {
            HashMap::new()
        } else {
            let fps: Vec<String> = unnamed.iter().map(|(_, fp)| fp.clone()).collect();
            self.store.failures(&fps).await?
        };
        let by_index: HashMap<u32, &String> = unnamed.iter().map(|(i, fp)| (*i, fp)).collect();
        Ok(errors
            .iter()
            .map(|(index, message)| {
                let code = code_from_message(message)
                    .map(str::to_owned)
                    .or_else(|| {
                        by_index
                            .get(index)
                            .and_then(|fp| recorded.get(*fp))
                            .map(|r| r.code.clone())
                    })
                    .unwrap_or_else(|| own_codes::UNKNOWN.to_owned());
                (
                    *index,
                    RowError {
                        code,
                        message: message.clone(),
                    },
                )
            })
            .collect())
    }
}
