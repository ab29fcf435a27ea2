//! Job completion: once every row is terminal, write the manifest, set the final status and
//! notify. Whoever moves the job from `running` to `finishing` starts it (ingest for an empty
//! file, the batch that completed last). The manifest of a big job takes minutes, so where there
//! is a step queue it is written there (`JobStep::WriteManifest`, by the ingest function), never
//! on a webhook's request; a local run writes it in place. The reconciler starts a new writer
//! when one has shown no progress for `STEP_STALL_SECONDS`.

use tracing::info;

use super::alerting::job_finished_alert;
use super::{Pipeline, ReopenOutcome, Selection, StepError};
use crate::domain::{Job, JobId, JobStatus, JobStep};
use crate::ports::AlertKind;
use crate::settings::MissingUrlPolicy;

impl Pipeline {
    /// When every row is terminal: write the manifest, set the final status, notify. Idempotent:
    /// only the caller that moves the job from `running` to `finishing` does the work.
    pub async fn finish_job_if_done(&self, job_id: &JobId) -> Result<(), StepError> {
        let Some(job) = self.store.job(job_id).await? else {
            return Ok(());
        };
        let c = job.counters;
        if job.status != JobStatus::Running || c.in_flight() > 0 || c.chunks_done < c.chunks {
            return Ok(());
        }
        if !self
            .store
            .transition_job(job_id, JobStatus::Running, JobStatus::Finishing)
            .await?
        {
            return Ok(());
        }
        let now = self.clock.now();
        self.store
            .mark_progress(job_id, JobStatus::Finishing, now)
            .await?;
        if self.queue.takes_steps() {
            info!(job_id = %job_id, "every row is terminal; manifest queued");
            return Ok(self
                .queue
                .queue_step(&JobStep::WriteManifest(job_id.clone()))
                .await?);
        }
        self.finish_job(job).await
    }

    /// The step queue's `WriteManifest`: finishes a job still in `finishing` (a late duplicate
    /// of the step finds it finished and does nothing). `false` when there was nothing to do.
    pub async fn write_manifest_step(&self, job_id: &JobId) -> Result<bool, StepError> {
        let job = self.stored_job(job_id).await?;
        if job.status != JobStatus::Finishing {
            info!(job_id = %job_id, status = job.status.as_str(), "manifest step for a job not finishing");
            return Ok(false);
        }
        let now = self.clock.now();
        self.store
            .mark_progress(job_id, JobStatus::Finishing, now)
            .await?;
        self.finish_job(job).await?;
        Ok(true)
    }

    /// Writes the manifest and the final status of a job in `finishing` (also used to resume one).
    pub async fn finish_job(&self, mut job: Job) -> Result<(), StepError> {
        // The manifest lists each row's delivered key: every chunk is delivered first.
        self.deliver_missing(&job).await?;
        let mut summary = self.write_manifest(&job).await?;
        // Its files are complete (the store's checkpoint is gone): a second write starts afresh.
        job.manifest_checkpoint = None;
        if summary.url_missing > 0
            && self.settings.missing_url_policy == MissingUrlPolicy::Rerender
            && job.reopened == 0
        {
            match self.rerender_missing_urls(&job).await? {
                // Still waiting for late webhooks (the reconciler comes back), or re-rendering.
                Some(ReopenOutcome::NotFinished { .. } | ReopenOutcome::Reopened { .. }) | None => {
                    return Ok(());
                }
                // The URLs arrived meanwhile (or, cancelled, the job renders nothing more): the
                // manifest must say what came.
                Some(ReopenOutcome::NothingToDo | ReopenOutcome::Cancelled) => {
                    summary = self.write_manifest(&job).await?
                }
            }
        }
        let c = job.counters;
        let status = match (&job.error, c.rendered) {
            (Some(_), 0) => JobStatus::Failed,
            (Some(_), _) => JobStatus::Partial,
            (None, _) => c.final_status(),
        };
        let now = self.clock.now();
        self.store
            .finish_job(&job.id, status, &summary.location, now)
            .await?;
        info!(
            job_id = %job.id, status = status.as_str(), rows = c.rows, rendered = c.rendered, failed = c.failed,
            rejected = c.rejected, manifest = %summary.location.csv, "job finished"
        );
        // Once per finish (a reopened job finishes again): two writers racing on one job, or a
        // writer started again after a crash, notify once.
        let kind = format!("{}#{}", AlertKind::JobFinished.as_str(), job.reopened);
        if self.store.claim_alert(&job.id, &kind, now).await? {
            let manifest = summary.location.csv.to_string();
            self.alert(job_finished_alert(
                &job,
                status,
                &manifest,
                summary.top_errors,
            ))
            .await;
        }
        Ok(())
    }

    /// Under the re-render policy: `None` while the job's last submit is more recent than
    /// `stuck_after` (late `render.completed` may still come; the job stays `finishing` and the
    /// reconciler calls `finish_job` again), else the rows still without a URL are reopened.
    async fn rerender_missing_urls(&self, job: &Job) -> Result<Option<ReopenOutcome>, StepError> {
        let chunks = self.store.chunks_of_job(&job.id).await?;
        let last_submit = chunks.iter().filter_map(|c| c.submitted_at).max();
        let quiet_for = self.clock.now() - last_submit.unwrap_or(job.created_at);
        if quiet_for < i64::try_from(self.settings.stuck_after.as_secs()).unwrap_or(i64::MAX) {
            info!(job_id = %job.id, quiet_for, "rows without a URL; waiting for late render.completed before re-rendering them");
            return Ok(None);
        }
        Ok(Some(self.reopen(&job.id, Selection::MissingUrls).await?))
    }
}
