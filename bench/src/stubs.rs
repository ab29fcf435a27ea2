//! Null and counting adapters for the pipeline's ports: writes are discarded (so memory stays
//! flat and only our own code is timed) and every port call is counted by operation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use shared::domain::{
    Chunk, ChunkKey, ChunkMessage, ChunkState, Counters, IngestCheckpoint, Job, JobId, JobStatus,
    JobStep, ManifestCheckpoint, ManifestLocation, ObjectRef,
};
use shared::local::FsObjectStore;
use shared::pictify::PictifyError;
use shared::pictify::wire::{
    BatchAccepted, BatchItemStatus, BatchRenderRequest, BatchResults, BatchStatus,
};
use shared::ports::{
    BeginSubmit, ChunkCompletion, ChunkLedger, FailureRecord, JobLedger, ObjectBody, ObjectStore,
    PictifyApi, PortResult, RenderLog, RenderRecord, Reopen, RequestBudget, Slot, SubmitSwitch,
    SubmitWindow, WorkQueue,
};

/// Port calls by operation name, e.g. `store.record_render`.
#[derive(Debug, Default)]
pub struct Calls(Mutex<BTreeMap<&'static str, u64>>);

impl Calls {
    fn hit(&self, operation: &'static str) {
        // A poisoned lock only means another bench thread panicked; the counts are still usable.
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(operation).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Store operations that read (the rest write), for the per-event read/write split.
pub const STORE_READS: &[&str] = &[
    "store.job",
    "store.active_jobs",
    "store.chunk",
    "store.chunks_of_job",
    "store.chunk_by_batch",
    "store.renders",
    "store.failures",
    "store.submissions_paused",
    "store.batch_completed_early",
];

/// A job store that keeps nothing. With a `fixture`, it answers as if that job and its one
/// submitted chunk existed (what `batch.completed` needs); without, every lookup finds nothing.
#[derive(Default)]
pub struct NullStore {
    pub calls: Calls,
    pub fixture: Option<(Job, Chunk)>,
}

#[async_trait]
impl JobLedger for NullStore {
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)> {
        self.calls.hit("store.create_job");
        Ok((job.clone(), true))
    }

    async fn job(&self, _id: &JobId) -> PortResult<Option<Job>> {
        self.calls.hit("store.job");
        Ok(self.fixture.as_ref().map(|(job, _)| job.clone()))
    }

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        self.calls.hit("store.active_jobs");
        Ok(Vec::new())
    }

    async fn finish_ingest(&self, _job: &Job) -> PortResult<()> {
        self.calls.hit("store.finish_ingest");
        Ok(())
    }

    async fn mark_progress(&self, _job: &JobId, _status: JobStatus, _now: i64) -> PortResult<bool> {
        self.calls.hit("store.mark_progress");
        Ok(true)
    }

    async fn save_manifest_checkpoint(
        &self,
        _job: &JobId,
        _checkpoint: Option<&ManifestCheckpoint>,
        _now: i64,
    ) -> PortResult<bool> {
        self.calls.hit("store.save_manifest_checkpoint");
        Ok(true)
    }

    async fn save_checkpoint(
        &self,
        _job: &JobId,
        _checkpoint: &IngestCheckpoint,
        _rejected_sample: &[(u64, String)],
    ) -> PortResult<bool> {
        self.calls.hit("store.save_checkpoint");
        Ok(true)
    }

    async fn reopen_job(&self, _reopen: &Reopen) -> PortResult<bool> {
        self.calls.hit("store.reopen_job");
        Ok(false)
    }

    async fn claim_alert(&self, _job: &JobId, _kind: &str, _now: i64) -> PortResult<bool> {
        self.calls.hit("store.claim_alert");
        Ok(false)
    }

    async fn control_job(
        &self,
        _id: &JobId,
        _change: &shared::domain::ControlChange,
    ) -> PortResult<Option<shared::domain::Controlled>> {
        self.calls.hit("store.control_job");
        Ok(None)
    }

    async fn transition_job(
        &self,
        _id: &JobId,
        _from: JobStatus,
        _to: JobStatus,
    ) -> PortResult<bool> {
        self.calls.hit("store.transition_job");
        Ok(false)
    }

    async fn finish_job(
        &self,
        _id: &JobId,
        _status: JobStatus,
        _manifest: &ManifestLocation,
        _now: i64,
    ) -> PortResult<()> {
        self.calls.hit("store.finish_job");
        Ok(())
    }
}

#[async_trait]
impl ChunkLedger for NullStore {
    async fn put_chunks(&self, _chunks: &[Chunk]) -> PortResult<()> {
        self.calls.hit("store.put_chunks");
        Ok(())
    }

    async fn chunk(&self, _job: &JobId, _key: ChunkKey) -> PortResult<Option<Chunk>> {
        self.calls.hit("store.chunk");
        Ok(self.fixture.as_ref().map(|(_, chunk)| chunk.clone()))
    }

    async fn chunks_of_job(&self, _job: &JobId) -> PortResult<Vec<Chunk>> {
        self.calls.hit("store.chunks_of_job");
        Ok(Vec::new())
    }

    async fn chunks_by_key(&self, _job: &JobId, _keys: &[ChunkKey]) -> PortResult<Vec<Chunk>> {
        self.calls.hit("store.chunks_by_key");
        Ok(Vec::new())
    }

    async fn begin_submit(
        &self,
        _job: &JobId,
        _key: ChunkKey,
        _now: i64,
        _grace: Duration,
    ) -> PortResult<BeginSubmit> {
        self.calls.hit("store.begin_submit");
        Ok(BeginSubmit::Unknown)
    }

    async fn record_submitted(
        &self,
        _job: &JobId,
        _key: ChunkKey,
        _batch_id: &str,
        _now: i64,
    ) -> PortResult<()> {
        self.calls.hit("store.record_submitted");
        Ok(())
    }

    async fn release_submit(&self, _job: &JobId, _key: ChunkKey) -> PortResult<()> {
        self.calls.hit("store.release_submit");
        Ok(())
    }

    async fn chunk_by_batch(&self, _batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        self.calls.hit("store.chunk_by_batch");
        Ok(self
            .fixture
            .as_ref()
            .map(|(job, chunk)| (job.id.clone(), chunk.key)))
    }

    async fn complete_chunk(&self, _completion: &ChunkCompletion) -> PortResult<bool> {
        self.calls.hit("store.complete_chunk");
        Ok(true)
    }
}

#[async_trait]
impl RenderLog for NullStore {
    async fn record_render(&self, _fingerprint: &str, _record: &RenderRecord) -> PortResult<()> {
        self.calls.hit("store.record_render");
        Ok(())
    }

    async fn record_failure(&self, _fingerprint: &str, _record: &FailureRecord) -> PortResult<()> {
        self.calls.hit("store.record_failure");
        Ok(())
    }

    async fn renders(&self, _fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>> {
        self.calls.hit("store.renders");
        Ok(HashMap::new())
    }

    async fn failures(
        &self,
        _fingerprints: &[String],
    ) -> PortResult<HashMap<String, FailureRecord>> {
        self.calls.hit("store.failures");
        Ok(HashMap::new())
    }

    async fn record_orphan(
        &self,
        _kind: &str,
        _id: &str,
        _body: &str,
        _now: i64,
    ) -> PortResult<()> {
        self.calls.hit("store.record_orphan");
        Ok(())
    }

    async fn batch_completed_early(&self, _batch_id: &str) -> PortResult<bool> {
        self.calls.hit("store.batch_completed_early");
        Ok(false)
    }
}

#[async_trait]
impl SubmitSwitch for NullStore {
    async fn pause_submissions(&self, _reason: &str, _now: i64) -> PortResult<bool> {
        self.calls.hit("store.pause_submissions");
        Ok(false)
    }

    async fn submissions_paused(&self) -> PortResult<Option<String>> {
        self.calls.hit("store.submissions_paused");
        Ok(None)
    }

    async fn resume_submissions(&self) -> PortResult<()> {
        self.calls.hit("store.resume_submissions");
        Ok(())
    }
}

/// Nothing is ever paced: every slot and request is granted, nothing is parked.
#[async_trait]
impl SubmitWindow for NullStore {
    async fn acquire_slot(
        &self,
        _job: &JobId,
        _key: ChunkKey,
        _size: u32,
        _now: i64,
        _expires_at: i64,
    ) -> PortResult<bool> {
        self.calls.hit("store.acquire_slot");
        Ok(true)
    }

    async fn release_slot(&self, _job: &JobId, _key: ChunkKey) -> PortResult<bool> {
        self.calls.hit("store.release_slot");
        Ok(false)
    }

    async fn live_slots(&self, _now: i64) -> PortResult<Vec<Slot>> {
        self.calls.hit("store.live_slots");
        Ok(Vec::new())
    }

    async fn park(&self, _job: &JobId, _key: ChunkKey, _now: i64) -> PortResult<()> {
        self.calls.hit("store.park");
        Ok(())
    }

    async fn next_parked(
        &self,
        _skip: &std::collections::BTreeSet<JobId>,
    ) -> PortResult<Option<(JobId, ChunkKey)>> {
        self.calls.hit("store.next_parked");
        Ok(None)
    }

    async fn unpark(&self, _job: &JobId, _key: ChunkKey) -> PortResult<bool> {
        self.calls.hit("store.unpark");
        Ok(false)
    }

    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>> {
        self.calls.hit("store.parked");
        Ok(Vec::new())
    }

    async fn take_request(
        &self,
        _budget: RequestBudget,
        _now_ms: i64,
    ) -> PortResult<Option<Duration>> {
        self.calls.hit("store.take_request");
        Ok(None)
    }
}

/// A running job with one submitted chunk of `rows` rows, for `batch.completed`.
pub fn batch_fixture(rows: usize) -> anyhow::Result<(Job, Chunk)> {
    let source = ObjectRef {
        bucket: "bench".into(),
        key: "uploads/tmpl_blog_card/fixture.csv".into(),
    };
    let id = JobId::for_upload(&source.bucket, &source.key, "v1");
    // Built from JSON so fields added later with serde defaults need no change here. Ten chunks,
    // none done: the job stays open after this batch, as it usually does.
    let job: Job = serde_json::from_value(serde_json::json!({
        "id": id,
        "source": source,
        "sourceVersion": "v1",
        "spec": { "templateId": "tmpl_blog_card" },
        "status": "running",
        "counters": Counters { rows: 10 * rows as u64, chunks: 10, ..Default::default() },
        "createdAt": 0,
        "ingestedAt": 0,
    }))
    .map_err(|e| anyhow::anyhow!("the bench's job fixture no longer matches `Job`: {e}"))?;
    let mut chunk = Chunk::new(
        job.id.clone(),
        ChunkKey::initial(1),
        (0..rows as u64).collect(),
    );
    chunk.state = ChunkState::Submitted;
    chunk.batch_id = Some("batch_bench".into());
    Ok((job, chunk))
}

/// Reads uploads from a directory; every write is counted and dropped.
pub struct ReadOnlyObjects {
    pub fs: FsObjectStore,
    pub calls: Calls,
    pub bytes_written: AtomicU64,
}

impl ReadOnlyObjects {
    pub fn new(root: &Path) -> Self {
        ReadOnlyObjects {
            fs: FsObjectStore::new(root.to_path_buf()),
            calls: Calls::default(),
            bytes_written: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl ObjectStore for ReadOnlyObjects {
    async fn version(&self, object: &ObjectRef) -> PortResult<Option<String>> {
        self.calls.hit("objects.version");
        self.fs.version(object).await
    }
    async fn open(&self, object: &ObjectRef, version: Option<&str>) -> PortResult<ObjectBody> {
        self.calls.hit("objects.open");
        self.fs.open(object, version).await
    }
    async fn get_bytes(&self, object: &ObjectRef) -> PortResult<Option<Vec<u8>>> {
        self.calls.hit("objects.get_bytes");
        self.fs.get_bytes(object).await
    }
    async fn put_bytes(&self, _object: &ObjectRef, bytes: Vec<u8>, _ct: &str) -> PortResult<()> {
        self.calls.hit("objects.put_bytes");
        self.bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }
    async fn put_file(&self, _object: &ObjectRef, _path: &Path, _ct: &str) -> PortResult<()> {
        self.calls.hit("objects.put_file");
        Ok(())
    }
}

/// SQS's limit: payloads above it travel by reference, as in production.
const SQS_MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Encodes each message as the SQS adapter would (that cost is part of ingest), then drops it.
#[derive(Default)]
pub struct NullQueue {
    pub calls: Calls,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

#[async_trait]
impl WorkQueue for NullQueue {
    fn max_message_bytes(&self) -> usize {
        SQS_MAX_MESSAGE_BYTES
    }
    async fn send(&self, messages: &[ChunkMessage]) -> PortResult<()> {
        self.calls.hit("queue.send");
        for message in messages {
            let body = serde_json::to_string(message)
                .map_err(|e| shared::ports::PortError::permanent("encode chunk message", e))?;
            self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        }
        self.messages
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn takes_steps(&self) -> bool {
        false
    }

    async fn queue_step(&self, _step: &JobStep) -> PortResult<()> {
        self.calls.hit("queue.queue_step");
        Ok(())
    }
}

/// Pictify answering every results poll with `items` successes.
pub struct StubPictify {
    pub items: u32,
    pub calls: Calls,
}

#[async_trait]
impl PictifyApi for StubPictify {
    async fn list_subscriptions(
        &self,
    ) -> Result<Vec<shared::pictify::wire::Subscription>, PictifyError> {
        Ok(Vec::new())
    }

    async fn render_batch(
        &self,
        _template_id: &str,
        request: &BatchRenderRequest,
        _idempotency_key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        self.calls.hit("pictify.render_batch");
        Ok(BatchAccepted {
            batch_id: "batch_bench".into(),
            status: Some(BatchStatus::Pending),
            total_items: Some(request.variable_sets.len() as u32),
            message: None,
        })
    }
    async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError> {
        self.calls.hit("pictify.get_batch_results");
        let results = (0..self.items)
            .map(|index| BatchItemStatus {
                index,
                success: true,
                variables: vec!["title".into(), "author".into(), "publishDate".into()],
                error: None,
            })
            .collect();
        Ok(BatchResults {
            batch_id: batch_id.to_owned(),
            status: BatchStatus::Completed,
            progress: 100.0,
            total_items: self.items,
            completed_items: self.items,
            failed_items: 0,
            results,
            errors: Vec::new(),
            created_at: None,
            started_at: None,
            completed_at: None,
        })
    }
}
