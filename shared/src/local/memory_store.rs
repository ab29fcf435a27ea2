//! `MemoryJobStore`: the in-memory `JobStore`, the reference semantics every other store matches.
//!
//! One mutex guards the whole state, so every method is atomic exactly like the conditional /
//! transactional writes of the DynamoDB adapter. How chunks and jobs change state is the domain's
//! (`crate::domain`, the rules module states the state machines): each method loads, calls the
//! rule and stores what it returns. What is left here is the store's own part:
//! - `create_job` and `put_chunks`: put-if-absent; the stored one wins.
//! - A missing chunk: `begin_submit` → `Unknown`, `release_submit` → nothing, `complete_chunk` →
//!   `false`, `record_submitted` → an error. A missing job: `finish_ingest`, `finish_job` and
//!   (for a chunk that would complete) `complete_chunk` → an error; `transition_job` and
//!   `reopen_job` → `false`.
//! - `record_submitted` writes the batch index first, whatever the chunk's answer.
//! - `complete_chunk` writes the chunk, the job's counters, the retry chunk (put-if-absent) and
//!   the alert mark together; `reopen_job` refuses a chunk that exists already, changing nothing.
//! - `pause_submissions`: set-if-absent; `true` only for the call that set it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::window::{choose_slot, next_in_turn};
use crate::domain::{
    Chunk, ChunkKey, Complete, ControlChange, Controlled, IngestCheckpoint, Job, JobId, JobStatus,
    ManifestCheckpoint, ManifestLocation, RecordSubmitted,
};
use crate::ports::{
    BeginSubmit, ChunkCompletion, ChunkLedger, FailureRecord, JobLedger, PortError, PortResult,
    RenderLog, RenderRecord, Reopen, RequestBucket, RequestBudget, Slot, SlotChoice, SubmitSwitch,
    SubmitWindow,
};

/// A webhook that matched nothing (kept for assertions and operators).
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    pub kind: String,
    pub id: String,
    pub body: String,
    pub at: i64,
}

#[derive(Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// Ordered so `chunks_of_job` lists a job's chunks in submission order.
    chunks: BTreeMap<(JobId, ChunkKey), Chunk>,
    batches: HashMap<String, (JobId, ChunkKey)>,
    renders: HashMap<String, RenderRecord>,
    failures: HashMap<String, FailureRecord>,
    alerted: BTreeSet<(JobId, ChunkKey)>,
    job_alerts: BTreeSet<(JobId, String)>,
    paused: Option<(String, i64)>,
    orphans: Vec<Orphan>,
    slots: BTreeMap<u32, Slot>,
    parked: BTreeSet<(JobId, ChunkKey)>,
    last_served: Option<JobId>,
    requests: Option<RequestBucket>,
}

/// The in-memory job store for unit tests and in-process runs.
#[derive(Default)]
pub struct MemoryJobStore {
    state: Mutex<State>,
}

#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("job {0} does not exist")]
    NoJob(JobId),
    #[error("chunk {job}/{label} does not exist", label = key.label())]
    NoChunk { job: JobId, key: ChunkKey },
    #[error("chunk {job}/{label} exists already", label = key.label())]
    ChunkExists { job: JobId, key: ChunkKey },
}

impl MemoryJobStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Chunks whose completion asked for an alert, in key order.
    pub fn alerted_chunks(&self) -> Vec<(JobId, ChunkKey)> {
        self.lock().alerted.iter().cloned().collect()
    }

    pub fn orphans(&self) -> Vec<Orphan> {
        self.lock().orphans.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied write (every method mutates
        // after its checks), so the state is still consistent: keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl JobLedger for MemoryJobStore {
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)> {
        let mut state = self.lock();
        if let Some(existing) = state.jobs.get(&job.id) {
            return Ok((existing.clone(), false));
        }
        state.jobs.insert(job.id.clone(), job.clone());
        Ok((job.clone(), true))
    }

    async fn job(&self, id: &JobId) -> PortResult<Option<Job>> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    async fn finish_ingest(&self, job: &Job) -> PortResult<()> {
        let mut state = self.lock();
        let stored = state.jobs.get_mut(&job.id).ok_or_else(|| {
            PortError::permanent("finish ingest", StoreError::NoJob(job.id.clone()))
        })?;
        if !stored.finish_ingest(job).apply(stored) {
            tracing::debug!(job_id = %job.id, status = stored.status.as_str(), "ingest already finished");
        }
        Ok(())
    }

    async fn mark_progress(&self, job: &JobId, status: JobStatus, now: i64) -> PortResult<bool> {
        let mut state = self.lock();
        Ok(match state.jobs.get_mut(job) {
            Some(stored) => stored.mark_progress(status, now).apply(stored),
            None => false,
        })
    }

    async fn save_manifest_checkpoint(
        &self,
        job: &JobId,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> PortResult<bool> {
        let mut state = self.lock();
        Ok(match state.jobs.get_mut(job) {
            Some(stored) => stored
                .save_manifest_checkpoint(checkpoint, now)
                .apply(stored),
            None => false,
        })
    }

    async fn save_checkpoint(
        &self,
        job: &JobId,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> PortResult<bool> {
        let mut state = self.lock();
        Ok(match state.jobs.get_mut(job) {
            Some(stored) => stored
                .save_checkpoint(checkpoint, rejected_sample)
                .apply(stored),
            None => false,
        })
    }

    async fn control_job(
        &self,
        id: &JobId,
        change: &ControlChange,
    ) -> PortResult<Option<Controlled>> {
        let mut state = self.lock();
        Ok(state
            .jobs
            .get_mut(id)
            .map(|job| job.control(change).apply(job)))
    }

    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool> {
        let mut state = self.lock();
        Ok(match state.jobs.get_mut(id) {
            Some(job) => job.transition(from, to).apply(job),
            None => false,
        })
    }

    async fn finish_job(
        &self,
        id: &JobId,
        status: JobStatus,
        manifest: &ManifestLocation,
        now: i64,
    ) -> PortResult<()> {
        let mut state = self.lock();
        let job = state
            .jobs
            .get_mut(id)
            .ok_or_else(|| PortError::permanent("finish job", StoreError::NoJob(id.clone())))?;
        job.finish(status, manifest, now);
        Ok(())
    }

    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool> {
        let mut state = self.lock();
        let Some(reopened) = state
            .jobs
            .get(&reopen.job)
            .and_then(|j| j.reopen(reopen).next)
        else {
            return Ok(false);
        };
        if let Some(c) = reopen
            .chunks
            .iter()
            .find(|c| state.chunks.contains_key(&(c.job.clone(), c.key)))
        {
            return Err(PortError::permanent(
                "reopen job",
                StoreError::ChunkExists {
                    job: c.job.clone(),
                    key: c.key,
                },
            ));
        }
        for chunk in &reopen.chunks {
            state
                .chunks
                .insert((chunk.job.clone(), chunk.key), chunk.clone());
        }
        state.jobs.insert(reopen.job.clone(), reopened);
        Ok(true)
    }

    async fn claim_alert(&self, job: &JobId, kind: &str, _now: i64) -> PortResult<bool> {
        Ok(self
            .lock()
            .job_alerts
            .insert((job.clone(), kind.to_owned())))
    }

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        Ok(self
            .lock()
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.id.clone())
            .collect())
    }
}

#[async_trait]
impl ChunkLedger for MemoryJobStore {
    async fn put_chunks(&self, chunks: &[Chunk]) -> PortResult<()> {
        let mut state = self.lock();
        for chunk in chunks {
            state
                .chunks
                .entry((chunk.job.clone(), chunk.key))
                .or_insert_with(|| chunk.clone());
        }
        Ok(())
    }

    async fn chunk(&self, job: &JobId, key: ChunkKey) -> PortResult<Option<Chunk>> {
        Ok(self.lock().chunks.get(&(job.clone(), key)).cloned())
    }

    async fn chunks_of_job(&self, job: &JobId) -> PortResult<Vec<Chunk>> {
        let state = self.lock();
        Ok(state
            .chunks
            .iter()
            .filter(|((owner, _), _)| owner == job)
            .map(|(_, chunk)| chunk.clone())
            .collect())
    }

    async fn chunks_by_key(&self, job: &JobId, keys: &[ChunkKey]) -> PortResult<Vec<Chunk>> {
        let state = self.lock();
        let unique: std::collections::BTreeSet<ChunkKey> = keys.iter().copied().collect();
        Ok(unique
            .into_iter()
            .filter_map(|key| state.chunks.get(&(job.clone(), key)).cloned())
            .collect())
    }

    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit> {
        let mut state = self.lock();
        Ok(match state.chunks.get_mut(&(job.clone(), key)) {
            Some(chunk) => chunk.begin_submit(now, grace).apply(chunk),
            None => BeginSubmit::Unknown,
        })
    }

    async fn record_submitted(
        &self,
        job: &JobId,
        key: ChunkKey,
        batch_id: &str,
        now: i64,
    ) -> PortResult<()> {
        let mut state = self.lock();
        let id = (job.clone(), key);
        // The index first, as in DynamoDB: a webhook racing this call must find its chunk.
        state.batches.insert(batch_id.to_owned(), id.clone());
        let chunk = state.chunks.get_mut(&id).ok_or_else(|| {
            PortError::permanent(
                "record submitted",
                StoreError::NoChunk {
                    job: job.clone(),
                    key,
                },
            )
        })?;
        if let RecordSubmitted::OtherBatch { first } =
            chunk.record_submitted(batch_id, now).apply(chunk)
        {
            tracing::warn!(job_id = %job, chunk = %key.label(), batch_id, stored_batch_id = ?first,
                "chunk already submitted under another batch id; keeping the first");
        }
        Ok(())
    }

    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()> {
        let mut state = self.lock();
        if let Some(chunk) = state.chunks.get_mut(&(job.clone(), key)) {
            chunk.release_submit().apply(chunk);
        }
        Ok(())
    }

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        Ok(self.lock().batches.get(batch_id).cloned())
    }

    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool> {
        let mut state = self.lock();
        let id = (completion.job.clone(), completion.key);
        // Anything but `Applied` (already completed, still queued, unknown) is "not applied by
        // this call", exactly like DynamoDB's condition.
        let stored = state.chunks.get(&id);
        let transition = stored.map(|chunk| chunk.complete(&completion.outcome));
        let next = match transition.map(|t| (t.answer, t.next)) {
            Some((Complete::Applied, next)) => next,
            Some((Complete::AlreadyApplied, _)) => return Ok(false),
            Some((Complete::NotSubmitted, _)) | None => {
                let state = stored.map_or("missing", |chunk| chunk.state.as_str());
                tracing::warn!(job_id = %completion.job, chunk = %completion.key.label(), state,
                    "completion for a chunk that was never submitted; ignored");
                return Ok(false);
            }
        };
        let Some(job) = state.jobs.get_mut(&completion.job) else {
            return Err(PortError::permanent(
                "complete chunk",
                StoreError::NoJob(completion.job.clone()),
            ));
        };
        // Checks are done: from here on every write lands, as in one transaction.
        job.apply_outcome(&completion.outcome, &completion.delta);
        if let Some(next) = next {
            state.chunks.insert(id.clone(), next);
        }
        if let Some(retry) = &completion.retry {
            state
                .chunks
                .entry((retry.job.clone(), retry.key))
                .or_insert_with(|| retry.clone());
        }
        if completion.alert {
            state.alerted.insert(id);
        }
        Ok(true)
    }
}

#[async_trait]
impl RenderLog for MemoryJobStore {
    async fn record_render(&self, fingerprint: &str, record: &RenderRecord) -> PortResult<()> {
        self.lock()
            .renders
            .insert(fingerprint.to_owned(), record.clone());
        Ok(())
    }

    async fn record_failure(&self, fingerprint: &str, record: &FailureRecord) -> PortResult<()> {
        self.lock()
            .failures
            .insert(fingerprint.to_owned(), record.clone());
        Ok(())
    }

    async fn renders(&self, fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>> {
        let state = self.lock();
        Ok(fingerprints
            .iter()
            .filter_map(|f| state.renders.get(f).map(|r| (f.clone(), r.clone())))
            .collect())
    }

    async fn failures(
        &self,
        fingerprints: &[String],
    ) -> PortResult<HashMap<String, FailureRecord>> {
        let state = self.lock();
        Ok(fingerprints
            .iter()
            .filter_map(|f| state.failures.get(f).map(|r| (f.clone(), r.clone())))
            .collect())
    }

    async fn record_orphan(&self, kind: &str, id: &str, body: &str, now: i64) -> PortResult<()> {
        let orphan = Orphan {
            kind: kind.to_owned(),
            id: id.to_owned(),
            body: body.to_owned(),
            at: now,
        };
        self.lock().orphans.push(orphan);
        Ok(())
    }

    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool> {
        Ok(self
            .lock()
            .orphans
            .iter()
            .any(|o| o.kind == "batch.completed" && o.id == batch_id))
    }
}

#[async_trait]
impl SubmitSwitch for MemoryJobStore {
    async fn pause_submissions(&self, reason: &str, now: i64) -> PortResult<bool> {
        let mut state = self.lock();
        if state.paused.is_some() {
            return Ok(false);
        }
        state.paused = Some((reason.to_owned(), now));
        Ok(true)
    }

    async fn submissions_paused(&self) -> PortResult<Option<String>> {
        Ok(self
            .lock()
            .paused
            .as_ref()
            .map(|(reason, _)| reason.clone()))
    }

    async fn resume_submissions(&self) -> PortResult<()> {
        self.lock().paused = None;
        Ok(())
    }
}

#[async_trait]
impl SubmitWindow for MemoryJobStore {
    async fn acquire_slot(
        &self,
        job: &JobId,
        key: ChunkKey,
        size: u32,
        now: i64,
        expires_at: i64,
    ) -> PortResult<bool> {
        let mut state = self.lock();
        let slots: Vec<(u32, Slot)> = state.slots.iter().map(|(n, s)| (*n, s.clone())).collect();
        let n = match choose_slot(&slots, job, key, size, now) {
            SlotChoice::Renew(n) | SlotChoice::Take(n) => n,
            SlotChoice::Full => return Ok(false),
        };
        let slot = Slot {
            job: job.clone(),
            key,
            taken_at: now,
            expires_at,
        };
        state.slots.insert(n, slot);
        Ok(true)
    }

    async fn release_slot(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let mut state = self.lock();
        let before = state.slots.len();
        state.slots.retain(|_, s| !s.is_held_by(job, key));
        Ok(state.slots.len() < before)
    }

    async fn live_slots(&self, now: i64) -> PortResult<Vec<Slot>> {
        let state = self.lock();
        Ok(state
            .slots
            .values()
            .filter(|s| s.is_live(now))
            .cloned()
            .collect())
    }

    async fn park(&self, job: &JobId, key: ChunkKey, _now: i64) -> PortResult<()> {
        self.lock().parked.insert((job.clone(), key));
        Ok(())
    }

    async fn next_parked(&self, skip: &BTreeSet<JobId>) -> PortResult<Option<(JobId, ChunkKey)>> {
        let state = self.lock();
        Ok(next_in_turn(
            &state.parked,
            state.last_served.as_ref(),
            skip,
        ))
    }

    async fn unpark(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        let mut state = self.lock();
        if !state.parked.remove(&(job.clone(), key)) {
            return Ok(false);
        }
        state.last_served = Some(job.clone());
        Ok(true)
    }

    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>> {
        Ok(self.lock().parked.iter().cloned().collect())
    }

    async fn take_request(
        &self,
        budget: RequestBudget,
        now_ms: i64,
    ) -> PortResult<Option<Duration>> {
        let mut state = self.lock();
        match budget.take(state.requests, now_ms) {
            Ok(bucket) => {
                state.requests = Some(bucket);
                Ok(None)
            }
            Err(wait) => Ok(Some(wait)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! The shared `JobStore` contract, plus what only the reference store shows or does.

    use std::sync::Arc;

    use super::*;
    use crate::store_contract::{
        self, GRACE, check_job_store, completion, with_chunk, with_submitted_chunk,
    };

    #[tokio::test]
    async fn the_memory_store_keeps_the_job_store_contract() {
        check_job_store(|| async {
            Arc::new(MemoryJobStore::new()) as Arc<dyn crate::ports::JobStore>
        })
        .await;
    }

    #[tokio::test]
    async fn a_late_record_submitted_keeps_the_first_batch_id() {
        store_contract::check_a_late_record_submitted_keeps_the_first_batch_id(
            &MemoryJobStore::new(),
        )
        .await;
    }

    #[tokio::test]
    async fn only_a_submitted_chunk_can_complete() {
        store_contract::check_only_a_submitted_chunk_can_complete(&MemoryJobStore::new()).await;
    }

    #[tokio::test]
    async fn a_submit_is_taken_over_exactly_when_the_grace_period_ends() {
        let store = MemoryJobStore::new();
        let (job, key) = with_chunk(&store).await;
        store.begin_submit(&job, key, 100, GRACE).await.unwrap();
        assert_eq!(
            store.begin_submit(&job, key, 160, GRACE).await.unwrap(),
            BeginSubmit::Proceed { attempt: 2 }
        );
    }

    #[tokio::test]
    async fn a_completion_marks_its_alert() {
        let store = MemoryJobStore::new();
        let (job, key) = with_submitted_chunk(&store).await;
        let done = completion(&job, key, 2, true);
        store.complete_chunk(&done).await.unwrap();
        store.complete_chunk(&done).await.unwrap();
        assert_eq!(store.alerted_chunks(), vec![(job, key)]);
    }

    #[tokio::test]
    async fn orphans_are_kept() {
        let store = MemoryJobStore::new();
        store
            .record_orphan("batch.completed", "b9", "{}", 4)
            .await
            .unwrap();
        let kept: Vec<_> = store
            .orphans()
            .into_iter()
            .map(|o| (o.kind, o.id))
            .collect();
        assert_eq!(kept, vec![("batch.completed".to_owned(), "b9".to_owned())]);
    }
}
