//! Pacing to the customer's Pictify plan (`settings::Pacing`), for every submitter and every job
//! at once, through the store (`ports::SubmitWindow`; rules in `domain::window`):
//!
//! - **The window.** A chunk holds one of the plan's `max_concurrent_batches` slots from its
//!   submit until its batch completes. Slots are leases (`slot_lease`): a holder that died
//!   cannot keep one.
//! - **Parking, not bouncing.** A chunk that finds the window full, or submissions paused, is
//!   parked in the store and its message acknowledged: waiting burns no SQS receive counts and
//!   nothing reaches the dead-letter queue because of pacing or a pause.
//! - **Hand-over.** A completed batch frees its slot and hands free slots to parked chunks, in
//!   turn (jobs take turns, so two jobs running together both progress): the slot is taken for
//!   the parked chunk before its message is sent, so the next submit is not raced for it. The
//!   reconciler repeats the hand-over as the backstop for a hand-over that died half-way.
//! - **Requests.** Every call to Pictify first takes a token of one bucket for the stack
//!   (`domain::window::RequestBudget`: never more than the minute's requests in any 60 s), so
//!   the steady state meets no 429.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::{info, warn};

use super::{Pipeline, StepError};
use crate::domain::{ChunkKey, JobId};
use crate::ports::RequestBudget;

/// Chunks handed over in one call at most (an unlimited window resuming a long pause hands
/// the rest over on the next call: the reconciler's pass, or the next completion).
const HAND_OVER_MAX: usize = 500;
/// How long a Pictify call waits for the request budget before going ahead anyway (a 429 is
/// then handled as any other).
const BUDGET_WAIT_MAX: Duration = Duration::from_secs(30);
const BUDGET_POLL_MAX: Duration = Duration::from_secs(1);

impl Pipeline {
    /// Takes a window slot for the chunk, or renews the one it holds; always `true` without a
    /// window.
    pub(crate) async fn take_slot(&self, job: &JobId, key: ChunkKey) -> Result<bool, StepError> {
        let Some(size) = self.settings.pacing.max_concurrent_batches else {
            return Ok(true);
        };
        let now = self.clock.now();
        let lease = i64::try_from(self.settings.pacing.slot_lease.as_secs()).unwrap_or(i64::MAX);
        Ok(self
            .store
            .acquire_slot(job, key, size, now, now.saturating_add(lease))
            .await?)
    }

    /// Gives the chunk's slot back (its batch completed, or it will never be sent) and hands
    /// the freed slot to the next parked chunk.
    pub(crate) async fn free_slot(&self, job: &JobId, key: ChunkKey) -> Result<(), StepError> {
        if self.settings.pacing.max_concurrent_batches.is_none() {
            return Ok(());
        }
        if self.store.release_slot(job, key).await? {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Parks a chunk that cannot go now, then hands over any slot that freed meanwhile (a
    /// completion between our failed take and the park found nothing to hand over).
    pub(crate) async fn park_chunk(&self, job: &JobId, key: ChunkKey) -> Result<(), StepError> {
        self.store.park(job, key, self.clock.now()).await?;
        self.hand_over().await?;
        Ok(())
    }

    /// Hands free slots to parked chunks, in turn, and sends their messages; returns how many.
    /// Nothing moves while submissions are paused; a job that is paused, cancelled (its cancel
    /// pass ends its chunks) or at its in-flight limit is passed over.
    pub async fn hand_over(&self) -> Result<usize, StepError> {
        if self.store.submissions_paused().await?.is_some() {
            return Ok(0);
        }
        // Every parked submit asks; a full window (the usual answer) costs one read.
        let mut held_by_job: HashMap<JobId, u32> = HashMap::new();
        if let Some(size) = self.settings.pacing.max_concurrent_batches {
            let live = self.store.live_slots(self.clock.now()).await?;
            if live.len() >= size as usize {
                return Ok(0);
            }
            for slot in live {
                *held_by_job.entry(slot.job).or_default() += 1;
            }
        }
        let mut skip: BTreeSet<JobId> = BTreeSet::new();
        let mut limits: HashMap<JobId, Option<u32>> = HashMap::new();
        let mut sent = 0;
        while sent < HAND_OVER_MAX {
            let Some((job, key)) = self.store.next_parked(&skip).await? else {
                break;
            };
            let limit = match limits.get(&job) {
                Some(limit) => *limit,
                None => {
                    let record = self.store.job(&job).await?;
                    let held_back = record.as_ref().is_some_and(|j| {
                        j.control.paused.is_some() || j.control.cancelled.is_some()
                    });
                    if held_back {
                        skip.insert(job);
                        continue;
                    }
                    let limit = record.as_ref().and_then(|j| j.max_in_flight());
                    limits.insert(job.clone(), limit);
                    limit
                }
            };
            let held = held_by_job.get(&job).copied().unwrap_or(0);
            if limit.is_some_and(|limit| held >= limit)
                && self.settings.pacing.max_concurrent_batches.is_some()
            {
                skip.insert(job);
                continue;
            }
            if !self.take_slot(&job, key).await? {
                break;
            }
            *held_by_job.entry(job.clone()).or_default() += 1;
            if !self.store.unpark(&job, key).await? {
                // A racing hand-over took it first. Slots belong to chunks, so the slot we took
                // is the one it renewed (or took) for the message it sends: keep it.
                continue;
            }
            if let Err(e) = self.resend_chunks(&job, &[key]).await {
                // Back where it was, so the next hand-over (or the reconciler) tries again.
                self.store.park(&job, key, self.clock.now()).await?;
                self.store.release_slot(&job, key).await?;
                return Err(e);
            }
            sent += 1;
        }
        if sent > 0 {
            info!(chunks = sent, "parked chunks handed a window slot");
        }
        Ok(sent)
    }

    /// Waits for a token of the stack's request bucket (none without a budget).
    pub(crate) async fn spend_request(&self) -> Result<(), StepError> {
        let Some(per_minute) = self.settings.pacing.requests_per_minute else {
            return Ok(());
        };
        let budget = RequestBudget::per_minute(per_minute);
        let started = std::time::Instant::now();
        loop {
            let Some(wait) = self.store.take_request(budget, self.clock.now_ms()).await? else {
                return Ok(());
            };
            if started.elapsed() >= BUDGET_WAIT_MAX {
                warn!(
                    per_minute,
                    waited_s = started.elapsed().as_secs(),
                    "request budget still spent; calling Pictify anyway"
                );
                return Ok(());
            }
            // Others take tokens too: come back when one should be there, not later.
            tokio::time::sleep(wait.min(BUDGET_POLL_MAX)).await;
        }
    }
}
