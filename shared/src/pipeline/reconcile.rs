//! The reconciler: finishes what lost webhooks and crashes left behind. Pictify's webhooks are
//! at-least-once and may be lost; Lambdas die between two writes. Run on a schedule (and from the
//! CLI); every action it takes is one the normal path could have taken, so running it twice, or
//! alongside the webhooks, changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::alerting::deadline_alert;
use super::{BatchApplied, Pipeline, StepError};
use crate::domain::{ChunkKey, ChunkState, Job, JobId, JobStatus, JobStep};
use crate::ports::AlertKind;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    pub jobs: u64,
    /// Stuck batches polled, and how many of them were finished that way.
    pub polled: u64,
    pub applied: u64,
    /// Chunks whose submit outcome stayed unknown past the grace period, re-queued.
    pub resent: u64,
    /// Jobs whose manifest had to be (re)written, or a new writer queued.
    pub finished: u64,
    /// Jobs past their deadline, alerted now (each job is alerted once).
    pub overdue: u64,
    /// Active jobs past their deadline now, alerted or not (the `JobsPastDeadline` metric).
    pub past_deadline: u64,
    /// Webhook subscriptions the stack needs that are failed, paused or missing now (the
    /// `WebhookSubscriptionsUnhealthy` metric; each is alerted once).
    pub unhealthy_subscriptions: u64,
    /// Window slots still held for chunks that are done (a crash after the completion).
    pub released: u64,
    /// Parked chunks handed a free slot.
    pub handed_over: u64,
    /// Ingests whose checkpoint stopped moving (the invocation died), handed to a fresh one.
    pub ingests_resumed: u64,
    /// Of cancelled jobs: chunks ended unsent, and batches cancelled at Pictify.
    pub cancelled: u64,
    /// Template definitions fetched into the cache ingest checks rows with.
    pub templates_refreshed: u64,
    pub errors: u64,
}

/// What the window looks like at the start of a pass: chunks waiting on purpose are not
/// re-sent (a parked chunk waits for a slot; a chunk holding a slot has its message out).
#[derive(Default)]
struct Waiting {
    parked: HashSet<(JobId, ChunkKey)>,
    slotted: HashSet<(JobId, ChunkKey)>,
    /// Submissions are paused, or the window could not be read: nothing is re-sent this pass.
    hold_all: bool,
}

impl Waiting {
    /// Parked, or everything waits: its turn will come without a re-send.
    fn held_back(&self, job: &JobId, key: ChunkKey) -> bool {
        self.hold_all || self.parked.contains(&(job.clone(), key))
    }

    /// Queued on purpose: held back, or holding a slot with its message out (a hand-over, or a
    /// 429 / 5xx waiting out its delay).
    fn queued_on_purpose(&self, job: &JobId, key: ChunkKey) -> bool {
        self.held_back(job, key) || self.slotted.contains(&(job.clone(), key))
    }
}

impl Pipeline {
    /// One pass over every active job. `stuck_after`: how long a submitted batch may go without
    /// its `batch.completed` before it is polled.
    pub async fn reconcile(&self, stuck_after: Duration) -> Result<ReconcileReport, StepError> {
        let mut report = ReconcileReport::default();
        let waiting = match self.reconcile_window(stuck_after, &mut report).await {
            Ok(waiting) => waiting,
            Err(e) => {
                report.errors += 1;
                warn!(error = %e, "reconciling the window failed; nothing is re-sent this pass");
                Waiting {
                    hold_all: true,
                    ..Waiting::default()
                }
            }
        };
        let mut templates = std::collections::BTreeSet::new();
        for id in self.store.active_jobs().await? {
            report.jobs += 1;
            let Some(job) = self.store.job(&id).await? else {
                continue;
            };
            if !job.status.is_terminal() {
                templates.insert((job.source.bucket.clone(), job.spec.template_id.clone()));
            }
            if let Err(e) = self
                .reconcile_job(job, stuck_after, &waiting, &mut report)
                .await
            {
                report.errors += 1;
                warn!(job_id = %id, error = %e, "reconciling the job failed; the next pass retries");
            }
        }
        // The next upload of a template in use is checked against its definitions at ingest.
        // Not while submissions are paused: Pictify refused the key or the quota.
        let templates = if waiting.hold_all {
            Default::default()
        } else {
            templates
        };
        for (bucket, template_id) in &templates {
            // Best effort, so not an error of the pass: without a copy, rows go to Pictify unchecked.
            match self.refresh_template_variables(bucket, template_id).await {
                Ok(refreshed) => report.templates_refreshed += u64::from(refreshed),
                Err(e) => {
                    warn!(template_id = %template_id, error = %e, "caching the template's definitions failed; the next pass retries");
                }
            }
        }
        if let Some(url) = &self.settings.webhook_url {
            match self.check_subscriptions(url).await {
                Ok(unhealthy) => report.unhealthy_subscriptions = unhealthy,
                Err(e) => {
                    report.errors += 1;
                    warn!(error = %e, "checking the webhook subscriptions failed; the next pass retries");
                }
            }
        }
        info!(
            jobs = report.jobs,
            polled = report.polled,
            applied = report.applied,
            resent = report.resent,
            finished = report.finished,
            overdue = report.overdue,
            past_deadline = report.past_deadline,
            unhealthy_subscriptions = report.unhealthy_subscriptions,
            released = report.released,
            handed_over = report.handed_over,
            ingests_resumed = report.ingests_resumed,
            cancelled = report.cancelled,
            templates_refreshed = report.templates_refreshed,
            errors = report.errors,
            "reconcile pass done"
        );
        Ok(report)
    }

    /// One pass over one job (the local run reconciles only its own job).
    pub async fn reconcile_one(
        &self,
        id: &JobId,
        stuck_after: Duration,
    ) -> Result<ReconcileReport, StepError> {
        let mut report = ReconcileReport {
            jobs: 1,
            ..ReconcileReport::default()
        };
        let waiting = self.reconcile_window(stuck_after, &mut report).await?;
        if let Some(job) = self.store.job(id).await? {
            self.reconcile_job(job, stuck_after, &waiting, &mut report)
                .await?;
        }
        Ok(report)
    }

    /// The window's backstop: frees slots of chunks that are done, renews the leases of
    /// batches still at Pictify, re-sends a handed-over chunk whose message was lost, and hands
    /// free slots to parked chunks.
    async fn reconcile_window(
        &self,
        stuck_after: Duration,
        report: &mut ReconcileReport,
    ) -> Result<Waiting, StepError> {
        let now = self.clock.now();
        let stuck_before = now - i64::try_from(stuck_after.as_secs()).unwrap_or(i64::MAX);
        let mut waiting = Waiting {
            parked: self.store.parked().await?.into_iter().collect(),
            hold_all: self.store.submissions_paused().await?.is_some(),
            ..Waiting::default()
        };
        for slot in self.store.live_slots(now).await? {
            let (job, key) = (&slot.job, slot.key);
            let state = self.store.chunk(job, key).await?.map(|c| c.state);
            match state {
                None | Some(ChunkState::Completed) => {
                    if self.store.release_slot(job, key).await? {
                        report.released += 1;
                        info!(job_id = %job, chunk = %key.label(), "slot of a finished chunk released");
                    }
                    continue;
                }
                Some(ChunkState::Submitting | ChunkState::Submitted) => {
                    self.take_slot(job, key).await?;
                }
                Some(ChunkState::Queued) => {
                    let lost = slot.taken_at <= stuck_before
                        && !waiting.hold_all
                        && !waiting.parked.contains(&(job.clone(), key));
                    if lost {
                        info!(job_id = %job, chunk = %key.label(), "handed-over chunk never submitted; message sent again");
                        self.take_slot(job, key).await?;
                        self.resend_chunks(job, &[key]).await?;
                        report.resent += 1;
                    }
                }
            }
            waiting.slotted.insert((job.clone(), key));
        }
        report.handed_over += self.hand_over().await? as u64;
        Ok(waiting)
    }

    async fn reconcile_job(
        &self,
        job: Job,
        stuck_after: Duration,
        waiting: &Waiting,
        report: &mut ReconcileReport,
    ) -> Result<(), StepError> {
        if job.status.is_terminal() {
            return Ok(());
        }
        let now = self.clock.now();
        self.alert_if_overdue(&job, now, report).await?;
        match job.status {
            // A finisher died mid-manifest (writing it again gives the same files), or the job
            // waits for URLs under the re-render policy.
            JobStatus::Finishing => return self.refinish_if_stalled(job, now, report).await,
            JobStatus::Running => {}
            JobStatus::Ingesting => return self.resume_if_stalled(&job, now, report).await,
            _ => return Ok(()),
        }
        if job.control.cancelled.is_some() {
            // Catches what the cancel's own pass could not: a submit that was in flight then.
            let pass = self.cancel_pass(&job.id).await?;
            report.cancelled += pass.chunks_cancelled + pass.batches_cancelled;
        }
        let stuck_before = now - i64::try_from(stuck_after.as_secs()).unwrap_or(i64::MAX);
        let grace_before =
            now - i64::try_from(self.settings.submit_grace.as_secs()).unwrap_or(i64::MAX);
        let chunks = self.store.chunks_of_job(&job.id).await?;
        // A reopen that died between two pages left planned chunks unwritten.
        let existing: HashSet<ChunkKey> = chunks.iter().map(|c| c.key).collect();
        report.resent += self.restore_planned_chunks(&job, &existing).await?;
        let mut resend = Vec::new();
        for chunk in chunks {
            match (chunk.state, &chunk.batch_id) {
                (ChunkState::Submitted, Some(batch_id))
                    if chunk.submitted_at.is_some_and(|t| t <= stuck_before) =>
                {
                    report.polled += 1;
                    // Not finished yet at Pictify is an error here: it is simply polled again next pass.
                    match self.complete_batch(batch_id, None).await {
                        Ok(BatchApplied::Applied) => {
                            report.applied += 1;
                            info!(job_id = %job.id, chunk = %chunk.key.label(), batch_id = %batch_id, "stuck batch finished by polling");
                        }
                        Ok(_) => {}
                        Err(e) => {
                            info!(job_id = %job.id, batch_id = %batch_id, reason = %e, "stuck batch not finished yet")
                        }
                    }
                }
                (ChunkState::Submitting, _)
                    if chunk.submitting_since.is_some_and(|t| t <= grace_before)
                        && !waiting.held_back(&job.id, chunk.key) =>
                {
                    // The submitter resends it with the same idempotency key: a replay, never a second batch.
                    resend.push(chunk.key);
                    info!(job_id = %job.id, chunk = %chunk.key.label(), "unknown submit outcome re-queued");
                }
                (ChunkState::Queued, _)
                    if chunk.queued_at.is_some_and(|t| t <= stuck_before)
                        && !waiting.queued_on_purpose(&job.id, chunk.key) =>
                {
                    // Neither parked nor holding a slot: its message may have died with a Lambda.
                    resend.push(chunk.key);
                    info!(job_id = %job.id, chunk = %chunk.key.label(), "chunk still queued; message sent again");
                }
                _ => {}
            }
        }
        self.resend_chunks(&job.id, &resend).await?;
        report.resent += resend.len() as u64;
        self.finish_job_if_done(&job.id).await
    }

    /// A job in `finishing` whose manifest writer has shown no progress for `step_stall`: a new
    /// writer on the step queue. With no step queue (an operator's CLI, a local run), the pass
    /// writes it itself, every pass (the re-render policy may be waiting for URLs).
    async fn refinish_if_stalled(
        &self,
        job: Job,
        now: i64,
        report: &mut ReconcileReport,
    ) -> Result<(), StepError> {
        if !self.queue.takes_steps() {
            report.finished += 1;
            return self.finish_job(job).await;
        }
        let stall = i64::try_from(self.settings.step_stall.as_secs()).unwrap_or(i64::MAX);
        let idle = now.saturating_sub(job.progress_at.unwrap_or(i64::MIN));
        if idle < stall {
            return Ok(());
        }
        warn!(job_id = %job.id, idle_seconds = idle, "manifest writer silent; queueing another");
        // The new writer has `step_stall` to show progress before the next one is queued.
        self.store
            .mark_progress(&job.id, JobStatus::Finishing, now)
            .await?;
        self.queue
            .queue_step(&JobStep::WriteManifest(job.id.clone()))
            .await?;
        report.finished += 1;
        Ok(())
    }

    /// An ingest whose checkpoint has not moved for `step_stall` died with its invocation (a
    /// timeout, a crash, a lost hand-off): a fresh invocation carries it on from the checkpoint.
    async fn resume_if_stalled(
        &self,
        job: &Job,
        now: i64,
        report: &mut ReconcileReport,
    ) -> Result<(), StepError> {
        let last_progress = job.checkpoint.map_or(job.created_at, |c| c.saved_at);
        let stall = i64::try_from(self.settings.step_stall.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(last_progress) < stall {
            return Ok(());
        }
        let rows = job.checkpoint.map_or(0, |c| c.position.rows);
        warn!(job_id = %job.id, idle_seconds = now - last_progress, rows, "ingest stalled; handing it to a fresh invocation");
        self.queue
            .queue_step(&JobStep::ContinueIngest(job.id.clone()))
            .await?;
        report.ingests_resumed += 1;
        Ok(())
    }

    /// One `job_deadline_exceeded` alert for a job still unfinished past the deadline.
    async fn alert_if_overdue(
        &self,
        job: &Job,
        now: i64,
        report: &mut ReconcileReport,
    ) -> Result<(), StepError> {
        let deadline = i64::try_from(self.settings.job_deadline.as_secs()).unwrap_or(i64::MAX);
        let age = now.saturating_sub(job.created_at);
        let kind = AlertKind::JobDeadlineExceeded;
        if age <= deadline {
            return Ok(());
        }
        report.past_deadline += 1;
        if !self.store.claim_alert(&job.id, kind.as_str(), now).await? {
            return Ok(());
        }
        report.overdue += 1;
        warn!(job_id = %job.id, age_seconds = age, in_flight = job.counters.in_flight(), "job past its deadline");
        self.alert(deadline_alert(job, age, deadline)).await;
        Ok(())
    }
}
