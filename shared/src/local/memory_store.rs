//! `MemoryJobStore`: the in-memory `JobStore`, the reference semantics every other store matches.
//!
//! One mutex guards the whole state, so every method is atomic exactly like the conditional /
//! transactional writes of the DynamoDB adapter. The rules, per method:
//! - `create_job`: put-if-absent; the stored job wins.
//! - `finish_ingest`: applies only while the job is `ingesting` (a later call is a no-op; a missing
//!   job is an error). It sets status, samples, `rows` and `rejected` (and `error` /
//!   `ingested_at` when given), and *adds* the batch-owned counters (rendered, failed, retried,
//!   chunks, chunks_done), because early chunks may complete, and count their retry chunks, before
//!   ingest finishes.
//! - `put_chunks`: put-if-absent per chunk.
//! - `begin_submit`: queued → submitting (attempt + 1); submitting younger than `grace` →
//!   `InProgress`; older → taken over (attempt + 1, same idempotency key); submitted →
//!   `AlreadySubmitted`; completed → `Completed`; missing → `Unknown`.
//! - `record_submitted`: writes the batch index, then queued/submitting → submitted with the batch
//!   id; a submitted or completed chunk is left as is (a different batch id is logged, the first
//!   one stays); a missing chunk is an error.
//! - `release_submit`: submitting → queued; any other state is left as is.
//! - `complete_chunk`: applies once, only to a submitting/submitted chunk (otherwise `false`):
//!   outcome, counter deltas, batch render time, the retry chunk (put-if-absent) and the alert
//!   mark, all together; a missing job is an error.
//! - `transition_job`: compare-and-set on status; missing job → `false`.
//! - `pause_submissions`: set-if-absent; `true` only for the call that set it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{Chunk, ChunkKey, ChunkState, Job, JobId, JobStatus, ManifestLocation};
use crate::ports::{
    BeginSubmit, ChunkCompletion, FailureRecord, JobStore, PortError, PortResult, RenderRecord,
    Reopen,
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
impl JobStore for MemoryJobStore {
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
        if stored.status != JobStatus::Ingesting {
            tracing::debug!(job_id = %job.id, status = stored.status.as_str(), "ingest already finished");
            return Ok(());
        }
        stored.apply_ingest(job);
        Ok(())
    }

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

    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit> {
        let mut state = self.lock();
        let Some(chunk) = state.chunks.get_mut(&(job.clone(), key)) else {
            return Ok(BeginSubmit::Unknown);
        };
        match chunk.state {
            ChunkState::Completed => return Ok(BeginSubmit::Completed),
            ChunkState::Submitted => {
                return Ok(BeginSubmit::AlreadySubmitted {
                    batch_id: chunk.batch_id.clone().unwrap_or_default(),
                });
            }
            ChunkState::Submitting => {
                let since = chunk.submitting_since.unwrap_or(i64::MIN);
                let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
                if now.saturating_sub(since) < grace_secs {
                    return Ok(BeginSubmit::InProgress { since });
                }
            }
            ChunkState::Queued => {}
        }
        chunk.state = ChunkState::Submitting;
        chunk.submitting_since = Some(now);
        chunk.submit_attempts += 1;
        Ok(BeginSubmit::Proceed {
            attempt: chunk.submit_attempts,
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
        match chunk.state {
            ChunkState::Queued | ChunkState::Submitting => {
                chunk.state = ChunkState::Submitted;
                chunk.batch_id = Some(batch_id.to_owned());
                chunk.submitted_at = Some(now);
            }
            // A late duplicate: the chunk moved on and must not regress; the first batch id stays.
            ChunkState::Submitted | ChunkState::Completed => {
                if chunk
                    .batch_id
                    .as_deref()
                    .is_some_and(|stored| stored != batch_id)
                {
                    tracing::warn!(job_id = %job, chunk = %key.label(), batch_id, stored_batch_id = ?chunk.batch_id,
                        "chunk already submitted under another batch id; keeping the first");
                }
            }
        }
        Ok(())
    }

    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()> {
        let mut state = self.lock();
        if let Some(chunk) = state.chunks.get_mut(&(job.clone(), key))
            && chunk.state == ChunkState::Submitting
        {
            chunk.state = ChunkState::Queued;
            chunk.submitting_since = None;
        }
        Ok(())
    }

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        Ok(self.lock().batches.get(batch_id).cloned())
    }

    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool> {
        let mut state = self.lock();
        let id = (completion.job.clone(), completion.key);
        // Only a chunk handed to Pictify can complete; anything else (already completed, still
        // queued, unknown) is "not applied by this call", exactly like DynamoDB's condition.
        match state.chunks.get(&id).map(|chunk| chunk.state) {
            Some(ChunkState::Submitting | ChunkState::Submitted) => {}
            Some(ChunkState::Completed) => return Ok(false),
            other => {
                let state = other.map_or("missing", ChunkState::as_str);
                tracing::warn!(job_id = %completion.job, chunk = %completion.key.label(), state,
                    "completion for a chunk that was never submitted; ignored");
                return Ok(false);
            }
        }
        if !state.jobs.contains_key(&completion.job) {
            return Err(PortError::permanent(
                "complete chunk",
                StoreError::NoJob(completion.job.clone()),
            ));
        }
        // Checks are done: from here on every write lands, as in one transaction.
        if let Some(chunk) = state.chunks.get_mut(&id) {
            chunk.state = ChunkState::Completed;
            chunk.outcome = Some(completion.outcome.clone());
        }
        if let Some(job) = state.jobs.get_mut(&completion.job) {
            job.counters.add(&completion.delta);
            job.render_ms_total += completion.outcome.duration_ms.unwrap_or(0);
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

    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool> {
        let mut state = self.lock();
        match state.jobs.get_mut(id) {
            Some(job) if job.status == from => {
                job.status = to;
                Ok(true)
            }
            _ => Ok(false),
        }
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
        job.status = status;
        job.manifest = Some(manifest.clone());
        job.completed_at = Some(now);
        Ok(())
    }

    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool> {
        let mut state = self.lock();
        if state.jobs.get(&reopen.job).map(|j| j.status) != Some(reopen.from) {
            return Ok(false);
        }
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
        if let Some(job) = state.jobs.get_mut(&reopen.job) {
            reopen.apply_to(job);
        }
        Ok(true)
    }

    async fn claim_alert(&self, job: &JobId, kind: &str, _now: i64) -> PortResult<bool> {
        Ok(self
            .lock()
            .job_alerts
            .insert((job.clone(), kind.to_owned())))
    }

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

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        Ok(self
            .lock()
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .map(|j| j.id.clone())
            .collect())
    }

    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool> {
        Ok(self
            .lock()
            .orphans
            .iter()
            .any(|o| o.kind == "batch.completed" && o.id == batch_id))
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
        check_job_store(|| async { Arc::new(MemoryJobStore::new()) as Arc<dyn JobStore> }).await;
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
