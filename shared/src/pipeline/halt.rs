//! Control of a running job (`JobControl`): pause, resume, a new in-flight limit, cancel, and
//! the abort rule (`AbortRule`) that pauses or cancels a job whose failures pass its limit.
//!
//! - **Pause.** The submitter parks the job's chunks, and the hand-over passes the job over, so
//!   nothing of it is sent; batches already at Pictify finish. Resume hands its chunks over.
//! - **In-flight limit.** A chunk whose job holds its limit of window slots is parked; the
//!   job's next completed batch hands it over. Counted on the window's slots, so it needs a
//!   window (every plan but an unlimited one).
//! - **Cancel.** A chunk Pictify never got ends with its rows `cancelled` (taken the way a submit
//!   takes it, so a racing submit either sends it first or finds it ended); a batch at Pictify
//!   is cancelled there, and its `batch.completed` ends its unrendered rows `cancelled`. The
//!   reconciler repeats the pass until the job is finished: a submit in flight during the first
//!   pass is caught by the next. A cancel is never undone.

use tracing::{info, warn};

use super::alerting::job_aborted_alert;
use super::{Pipeline, StepError};
use crate::domain::{
    AbortAction, Chunk, ChunkKey, ChunkOutcome, ChunkState, ControlChange, Controlled, Counters,
    JobId,
};
use crate::pictify::PictifyError;
use crate::ports::{AlertKind, BeginSubmit, ChunkCompletion};

/// What one cancel pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelPass {
    /// Chunks Pictify never got, ended with their rows `cancelled`.
    pub chunks_cancelled: u64,
    /// Batches at Pictify asked to cancel (their `batch.completed` ends them).
    pub batches_cancelled: u64,
    /// Chunks whose submit is in flight, or batches that could not be cancelled now: the next
    /// pass (the reconciler's) takes them.
    pub pending: u64,
}

impl Pipeline {
    /// Applies a pause, resume, in-flight limit or cancel to a job, and acts on it at once: a
    /// resume or a new limit hands parked chunks over, a cancel runs a cancel pass. `None` when
    /// there is no such job.
    pub async fn control_job(
        &self,
        job: &JobId,
        change: &ControlChange,
    ) -> Result<Option<Controlled>, StepError> {
        let Some(answer) = self.store.control_job(job, change).await? else {
            return Ok(None);
        };
        info!(job_id = %job, change = ?change, answer = ?answer, "job control");
        match change {
            ControlChange::Cancel { .. } => {
                // A repeated cancel runs the pass again: that is how an operator finishes one.
                if matches!(answer, Controlled::Applied | Controlled::Unchanged) {
                    self.cancel_pass(job).await?;
                }
            }
            ControlChange::Resume | ControlChange::MaxInFlight(_) => {
                if answer == Controlled::Applied {
                    self.hand_over().await?;
                }
            }
            ControlChange::Pause { .. } => {}
        }
        Ok(Some(answer))
    }

    /// One pass over a cancelled job's chunks: those Pictify never got end `cancelled`, the
    /// batches at Pictify are cancelled there; then the job finishes if nothing is left.
    pub async fn cancel_pass(&self, job_id: &JobId) -> Result<CancelPass, StepError> {
        let mut pass = CancelPass::default();
        let parked: Vec<ChunkKey> = self
            .store
            .parked()
            .await?
            .into_iter()
            .filter(|(job, _)| job == job_id)
            .map(|(_, key)| key)
            .collect();
        for key in parked {
            self.store.unpark(job_id, key).await?;
        }
        let chunks = self.store.chunks_of_job(job_id).await?;
        let (cancelled, pending) = self.cancel_batches(job_id, &chunks).await;
        pass.batches_cancelled += cancelled;
        pass.pending += pending;
        let unsent = chunks
            .iter()
            .filter(|c| !matches!(c.state, ChunkState::Completed | ChunkState::Submitted));
        for chunk in unsent {
            if self.cancel_unsent_chunk(job_id, chunk.key).await? {
                pass.chunks_cancelled += 1;
            } else {
                pass.pending += 1;
            }
        }
        info!(job_id = %job_id, chunks_cancelled = pass.chunks_cancelled,
            batches_cancelled = pass.batches_cancelled, pending = pass.pending, "cancel pass");
        self.finish_job_if_done(job_id).await?;
        Ok(pass)
    }

    /// Asks Pictify to cancel the batches of `chunks` it holds: (cancelled, not cancelled now).
    async fn cancel_batches(&self, job: &JobId, chunks: &[Chunk]) -> (u64, u64) {
        let (mut cancelled, mut pending) = (0, 0);
        for chunk in chunks.iter().filter(|c| c.state == ChunkState::Submitted) {
            let Some(batch_id) = chunk.batch_id.as_deref() else {
                continue;
            };
            if self.cancel_batch(job, chunk.key, batch_id).await {
                cancelled += 1;
            } else {
                pending += 1;
            }
        }
        (cancelled, pending)
    }

    /// Asks Pictify to cancel a batch; `true` when it did. A batch that has just finished answers
    /// 409: its `batch.completed` (or the reconciler's poll) applies it.
    async fn cancel_batch(&self, job: &JobId, key: ChunkKey, batch_id: &str) -> bool {
        if let Err(e) = self.spend_request().await {
            warn!(job_id = %job, batch_id, error = %e, "request budget unreadable; cancelling anyway");
        }
        match self.pictify.cancel_batch(batch_id).await {
            Ok(_) => {
                info!(job_id = %job, chunk = %key.label(), batch_id, "batch cancelled at Pictify");
                true
            }
            Err(PictifyError::InvalidRequest {
                status: Some(409), ..
            }) => {
                info!(job_id = %job, chunk = %key.label(), batch_id, "batch already finished at Pictify");
                false
            }
            Err(e) => {
                warn!(job_id = %job, chunk = %key.label(), batch_id, error = %e, "cancelling the batch failed; the next pass tries again");
                false
            }
        }
    }

    /// Ends a chunk of a cancelled job that Pictify never got: every row `cancelled`, counted
    /// once. The chunk is taken as a submit takes it (`begin_submit`), so a submit racing this
    /// either sent it first (its batch is cancelled at Pictify by the next pass) or finds it
    /// completed. `false` when it was not ours to end (a submit in flight, or already ended).
    pub(crate) async fn cancel_unsent_chunk(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<bool, StepError> {
        let now = self.clock.now();
        let begun = self
            .store
            .begin_submit(job, key, now, self.settings.submit_grace)
            .await?;
        if !matches!(begun, BeginSubmit::Proceed { .. }) {
            return Ok(false);
        }
        let Some(chunk) = self.store.chunk(job, key).await? else {
            return Ok(false);
        };
        let rows = chunk.rows.len() as u32;
        let completion = ChunkCompletion {
            job: job.clone(),
            key,
            outcome: ChunkOutcome {
                cancelled: (0..rows).collect(),
                completed_at: Some(self.clock.now()),
                ..ChunkOutcome::default()
            },
            delta: Counters {
                cancelled: u64::from(rows),
                chunks_done: 1,
                ..Counters::default()
            },
            retry: None,
            alert: false,
        };
        let applied = self.store.complete_chunk(&completion).await?;
        self.free_slot(job, key).await?;
        Ok(applied)
    }

    /// After a batch's rows are counted: pauses or cancels the job when its abort rule is passed,
    /// with one `job_aborted` alert. The rule fires once per job, so an operator who resumes an
    /// aborted job is not overruled by the next failed row.
    pub(crate) async fn enforce_abort_rule(&self, job_id: &JobId) -> Result<(), StepError> {
        let Some(job) = self.store.job(job_id).await? else {
            return Ok(());
        };
        let Some(rule) = &job.spec.abort else {
            return Ok(());
        };
        let Some(why) = rule.tripped_by(&job.counters) else {
            return Ok(());
        };
        if job.control.cancelled.is_some() {
            return Ok(());
        }
        let now = self.clock.now();
        if !self
            .store
            .claim_alert(job_id, AlertKind::JobAborted.as_str(), now)
            .await?
        {
            return Ok(());
        }
        let reason = format!("aborted: {why}");
        let change = match rule.action {
            AbortAction::Pause => ControlChange::Pause {
                reason: reason.clone(),
            },
            AbortAction::Cancel => ControlChange::Cancel {
                reason: reason.clone(),
            },
        };
        let answer = self.store.control_job(job_id, &change).await?;
        warn!(job_id = %job_id, action = rule.action.as_str(), reason = %why, answer = ?answer, "abort rule passed");
        self.alert(job_aborted_alert(&job, rule.action, &why)).await;
        if rule.action == AbortAction::Cancel {
            // What Pictify is rendering stops now (a few batches: the window's). The chunks it
            // never got are ended as they come up, and by the reconciler's pass: thousands of
            // writes, too many for a webhook's request.
            let chunks = self.store.chunks_of_job(job_id).await?;
            self.cancel_batches(job_id, &chunks).await;
        }
        Ok(())
    }
}
