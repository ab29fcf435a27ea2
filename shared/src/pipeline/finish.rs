//! Job completion: once every row is terminal, write the manifest, set the final status and
//! notify. Whoever moves the job from `running` to `finishing` does it (ingest for an empty
//! file, the batch that completed last, the reconciler for a finisher that died).

use tracing::info;

use super::alerting::job_finished_alert;
use super::{Pipeline, ReopenOutcome, Selection, StepError};
use crate::domain::{Job, JobId, JobStatus};
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
        self.finish_job(job).await
    }

    /// Writes the manifest and the final status of a job in `finishing` (also used to resume one).
    pub async fn finish_job(&self, job: Job) -> Result<(), StepError> {
        let mut summary = self.write_manifest(&job).await?;
        if summary.url_missing > 0
            && self.settings.missing_url_policy == MissingUrlPolicy::Rerender
            && job.reopened == 0
        {
            match self.rerender_missing_urls(&job).await? {
                // Still waiting for late webhooks (the reconciler comes back), or re-rendering.
                Some(ReopenOutcome::NotFinished { .. } | ReopenOutcome::Reopened { .. }) | None => {
                    return Ok(());
                }
                // The URLs arrived meanwhile: the manifest must say so.
                Some(ReopenOutcome::NothingToDo) => summary = self.write_manifest(&job).await?,
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
        let manifest = summary.location.csv.to_string();
        self.alert(job_finished_alert(
            &job,
            status,
            &manifest,
            summary.top_errors,
        ))
        .await;
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
