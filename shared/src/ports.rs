//! Narrow ports the pipeline steps depend on. AWS adapters (`crate::aws`) and in-memory /
//! local adapters implement them; steps never see an SDK type.

use std::collections::{BTreeSet, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    Chunk, ChunkKey, ChunkMessage, ChunkOutcome, ControlChange, Controlled, Counters,
    IngestCheckpoint, Job, JobId, JobStatus, JobStep, ManifestCheckpoint, ManifestLocation,
    ObjectRef,
};
use crate::pictify::PictifyError;
use crate::pictify::variables::VariableDef;
use crate::pictify::wire::{
    BatchAccepted, BatchRenderRequest, BatchResults, CancelResult, Subscription,
};

/// An error from an adapter: what failed, and whether trying again later can help.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {source}")]
pub struct PortError {
    pub operation: String,
    pub retryable: bool,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl PortError {
    pub fn new(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PortError {
            operation: operation.into(),
            retryable: true,
            source: source.into(),
        }
    }

    pub fn permanent(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        PortError {
            operation: operation.into(),
            retryable: false,
            source: source.into(),
        }
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// A readable object and the version it was read at.
pub struct ObjectBody {
    pub reader: Box<dyn std::io::Read + Send>,
    /// ETag (or version id) of what is being read.
    pub version: String,
    /// Bytes the reader will give (from the offset asked for), when the store says.
    pub size: Option<u64>,
}

/// Object storage (S3, or a directory).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The current version (ETag / version id) of an object; `None` when it does not exist.
    async fn version(&self, object: &ObjectRef) -> PortResult<Option<String>>;
    /// A blocking streaming reader over the object, pinned to `version` when given (a changed object
    /// is an error, never silently different rows). Read it from a blocking thread.
    async fn open(&self, object: &ObjectRef, version: Option<&str>) -> PortResult<ObjectBody>;
    /// [`ObjectStore::open`] from byte `offset` on (a resumed read). The default reads and
    /// discards the bytes before it; stores that can seek or ask for a range do that instead.
    async fn open_at(
        &self,
        object: &ObjectRef,
        version: Option<&str>,
        offset: u64,
    ) -> PortResult<ObjectBody> {
        let mut body = self.open(object, version).await?;
        let operation = format!("skip to byte {offset} of {object}");
        let reader = tokio::task::spawn_blocking(move || {
            let skipped =
                std::io::copy(&mut (&mut body.reader).take(offset), &mut std::io::sink())?;
            if skipped < offset {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the object ends at byte {skipped}"),
                ));
            }
            Ok(ObjectBody {
                size: body.size.map(|size| size.saturating_sub(offset)),
                ..body
            })
        })
        .await
        .map_err(|e| PortError::permanent(operation.clone(), e))?;
        reader.map_err(|e| PortError::permanent(operation, e))
    }
    async fn get_bytes(&self, object: &ObjectRef) -> PortResult<Option<Vec<u8>>>;
    async fn put_bytes(
        &self,
        object: &ObjectRef,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> PortResult<()>;
    async fn put_file(&self, object: &ObjectRef, path: &Path, content_type: &str)
    -> PortResult<()>;

    /// Starts an object written in parts (S3 multipart upload); returns the upload's id. Nothing
    /// is visible at the key until [`ObjectStore::finish_upload`]. Stores that cannot refuse.
    async fn start_upload(&self, object: &ObjectRef, content_type: &str) -> PortResult<String> {
        let _ = content_type;
        Err(PortError::permanent(
            format!("start an upload in parts to {object}"),
            NoPartUploads,
        ))
    }

    /// Uploads part `number` (from 1); every part but the last must be at least
    /// [`MIN_PART_BYTES`]. Returns the part's ETag.
    async fn upload_part(
        &self,
        object: &ObjectRef,
        upload: &str,
        number: u32,
        bytes: Vec<u8>,
    ) -> PortResult<String> {
        let _ = (upload, number, bytes);
        Err(PortError::permanent(
            format!("upload a part to {object}"),
            NoPartUploads,
        ))
    }

    /// Puts the parts together as the object.
    async fn finish_upload(
        &self,
        object: &ObjectRef,
        upload: &str,
        parts: &[UploadedPart],
    ) -> PortResult<()> {
        let _ = (upload, parts);
        Err(PortError::permanent(
            format!("finish an upload to {object}"),
            NoPartUploads,
        ))
    }
}

/// S3's smallest part but the last (5 MiB); moto enforces it too.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

pub use crate::domain::UploadedPart;

/// An object store that cannot write an object in parts.
#[derive(Debug, thiserror::Error)]
#[error("this object store cannot write objects in parts")]
pub struct NoPartUploads;

/// The queues work travels on: chunks to the submitter, and the rest of an ingest to a fresh
/// ingest invocation.
#[async_trait]
pub trait WorkQueue: Send + Sync {
    /// Largest message body the queue accepts; bigger payloads go by reference.
    fn max_message_bytes(&self) -> usize;
    /// Send every message (batched as the queue allows); an entry the queue refuses is retried and
    /// then reported as an error, never dropped.
    async fn send(&self, messages: &[ChunkMessage]) -> PortResult<()>;
    /// Whether long steps can go to a worker of their own (the step queue). When not (a local
    /// run, an operator's CLI), the caller does the step itself: ingest reads on, the manifest
    /// is written in place.
    fn takes_steps(&self) -> bool;
    /// Sends a long step to the step queue's worker.
    async fn queue_step(&self, step: &JobStep) -> PortResult<()>;
}

/// What `begin_submit` found: a domain answer (`crate::domain::rules`), re-exported here.
pub use crate::domain::{BeginSubmit, Reopen};

/// Chunks one `reopen_job` may create: DynamoDB transactions hold 100 items, two are the job's.
pub const MAX_REOPEN_CHUNKS: usize = 98;

/// Applying one batch's outcome: the chunk, the job's counters and any retry chunk, atomically.
#[derive(Debug, Clone)]
pub struct ChunkCompletion {
    pub job: JobId,
    pub key: ChunkKey,
    pub outcome: ChunkOutcome,
    /// Counter deltas for the job (rendered, failed, retried, chunks, chunks_done).
    pub delta: Counters,
    pub retry: Option<Chunk>,
    /// Record that this batch's alert fired (so it fires once).
    pub alert: bool,
}

/// A `render.completed` remembered by fingerprint: one write, no reads, on the webhook hot path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderRecord {
    pub url: String,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub rendered_at: Option<String>,
    pub recorded_at: i64,
}

/// A `render.failed` remembered by fingerprint (its code classifies poll failures that carry none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    pub code: String,
    pub message: String,
    pub recorded_at: i64,
}

/// Jobs: created by ingest, moved to `finishing` by whoever completes the last chunk, finished,
/// reopened by the operator; the reconciler lists the active ones.
#[async_trait]
pub trait JobLedger: Send + Sync {
    /// Creates the job unless it exists; returns the stored job either way and whether it was new.
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)>;

    async fn job(&self, id: &JobId) -> PortResult<Option<Job>>;

    /// Jobs that may still need work (for the reconciler). May include jobs that have just
    /// finished; callers check each job's status.
    async fn active_jobs(&self) -> PortResult<Vec<JobId>>;

    /// Ingest finished: status `running` (or terminal), counters and samples set.
    async fn finish_ingest(&self, job: &Job) -> PortResult<()>;
    /// The step working on a job in `status` is alive at `now` ([`Job::progress_at`]); `false`
    /// when the job is no longer in that status.
    async fn mark_progress(&self, job: &JobId, status: JobStatus, now: i64) -> PortResult<bool>;
    /// Where the manifest writer of a `finishing` job got ([`Job::save_manifest_checkpoint`]);
    /// `None` once its files are complete. Also marks progress.
    async fn save_manifest_checkpoint(
        &self,
        job: &JobId,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> PortResult<bool>;
    /// Records how far an ingest has got ([`Job::save_checkpoint`]'s rule); `false` when the
    /// job is no longer ingesting or another invocation got further.
    async fn save_checkpoint(
        &self,
        job: &JobId,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> PortResult<bool>;

    /// Applies a `Reopen` exactly once; `false` when the job was no longer in `reopen.from`.
    /// At most `MAX_REOPEN_CHUNKS` chunks at a time (one DynamoDB transaction).
    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool>;

    /// Records that a job-level alert of this kind fired; `true` only for the first call, so the
    /// alert goes out once (deadline alerts are checked on every reconciler pass).
    async fn claim_alert(&self, job: &JobId, kind: &str, now: i64) -> PortResult<bool>;

    /// Pauses, resumes, cancels or re-paces a job ([`Job::control`]'s rule); `None` when there
    /// is no such job.
    async fn control_job(
        &self,
        id: &JobId,
        change: &ControlChange,
    ) -> PortResult<Option<Controlled>>;

    /// Moves a job from `from` to `to`; `false` if it was not in `from` (someone else got there).
    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool>;

    async fn finish_job(
        &self,
        id: &JobId,
        status: JobStatus,
        manifest: &ManifestLocation,
        now: i64,
    ) -> PortResult<()>;
}

/// Chunks and their submit state machine (`domain::rules`): ingest creates them, the submitter
/// moves them, batch completion ends them.
#[async_trait]
pub trait ChunkLedger: Send + Sync {
    /// Creates chunks that do not exist yet (re-ingest after a crash is harmless).
    async fn put_chunks(&self, chunks: &[Chunk]) -> PortResult<()>;

    async fn chunk(&self, job: &JobId, key: ChunkKey) -> PortResult<Option<Chunk>>;

    async fn chunks_of_job(&self, job: &JobId) -> PortResult<Vec<Chunk>>;
    /// The chunks of `keys` that exist, in key order (a page of a job's chunks, by key, so a
    /// reader of a huge job never holds them all).
    async fn chunks_by_key(&self, job: &JobId, keys: &[ChunkKey]) -> PortResult<Vec<Chunk>>;

    /// Conditional intent write before calling Pictify (see `BeginSubmit`). A chunk stuck in
    /// `submitting` for longer than `grace` may be attempted again (with the same idempotency key).
    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit>;

    /// Records the batch id (and the batch → chunk index) after Pictify accepted the chunk.
    async fn record_submitted(
        &self,
        job: &JobId,
        key: ChunkKey,
        batch_id: &str,
        now: i64,
    ) -> PortResult<()>;

    /// Pictify definitely did not create a batch (429, 5xx answer): back to `queued`.
    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()>;

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>>;

    /// Applies a chunk's outcome exactly once; `false` when it was already applied.
    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool>;
}

/// What webhooks tell about single renders, by fingerprint (the webhook's hot path is one
/// `record_render`), and the webhooks that matched nothing we know.
#[async_trait]
pub trait RenderLog: Send + Sync {
    async fn record_render(&self, fingerprint: &str, record: &RenderRecord) -> PortResult<()>;

    async fn record_failure(&self, fingerprint: &str, record: &FailureRecord) -> PortResult<()>;

    async fn renders(&self, fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>>;

    async fn failures(&self, fingerprints: &[String])
    -> PortResult<HashMap<String, FailureRecord>>;

    /// A webhook that matched nothing we know (kept for the operator).
    async fn record_orphan(&self, kind: &str, id: &str, body: &str, now: i64) -> PortResult<()>;

    /// Whether a `batch.completed` for this batch arrived before its id was recorded (so it was
    /// kept as an orphan): the submitter then applies the batch itself.
    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool>;
}

/// The account-wide switch that stops all submissions (401/402) until an operator resumes.
#[async_trait]
pub trait SubmitSwitch: Send + Sync {
    /// Stops all submissions (401/402); `true` for the call that set it, so the alert fires once.
    async fn pause_submissions(&self, reason: &str, now: i64) -> PortResult<bool>;

    async fn submissions_paused(&self) -> PortResult<Option<String>>;

    async fn resume_submissions(&self) -> PortResult<()>;
}

/// Window slots and turns: domain rules (`crate::domain::window`), re-exported here.
pub use crate::domain::window::{RequestBucket, RequestBudget, Slot, SlotChoice};

/// The plan's pace, shared by every submitter and every job (`pipeline::window`): the in-flight
/// window of batch slots, the parking lot of chunks waiting for a slot (or for submissions to
/// resume), and the per-second request budget.
#[async_trait]
pub trait SubmitWindow: Send + Sync {
    /// Takes one of `size` slots for the chunk until `expires_at`, or renews the slot it holds
    /// already. `false` when `size` unexpired slots are held by other chunks.
    async fn acquire_slot(
        &self,
        job: &JobId,
        key: ChunkKey,
        size: u32,
        now: i64,
        expires_at: i64,
    ) -> PortResult<bool>;

    /// Gives the chunk's slot back; `false` when it held none.
    async fn release_slot(&self, job: &JobId, key: ChunkKey) -> PortResult<bool>;

    /// The slots held and unexpired at `now`.
    async fn live_slots(&self, now: i64) -> PortResult<Vec<Slot>>;

    /// Parks a chunk until a slot frees (or submissions resume); parking it again changes nothing.
    async fn park(&self, job: &JobId, key: ChunkKey, now: i64) -> PortResult<()>;

    /// The parked chunk whose turn is next: jobs take turns (the job after the one served last,
    /// in id order, wrapping around), and a job's chunks go in key order. Jobs in `skip` are
    /// passed over (paused, cancelled, or at their in-flight limit).
    async fn next_parked(&self, skip: &BTreeSet<JobId>) -> PortResult<Option<(JobId, ChunkKey)>>;

    /// Takes the chunk out of the parking lot and makes its job the one served last; `false`
    /// when it was not parked (someone else took it).
    async fn unpark(&self, job: &JobId, key: ChunkKey) -> PortResult<bool>;

    /// Every parked chunk, in turn order within each job.
    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>>;

    /// Takes one token of the stack's request bucket at `now_ms` (`RequestBudget::take`,
    /// atomically): `None` when taken, else how long until a token is there.
    async fn take_request(
        &self,
        budget: RequestBudget,
        now_ms: i64,
    ) -> PortResult<Option<Duration>>;
}

/// Job, chunk and render state in one store (DynamoDB, or embedded / in-memory), by concern:
/// a caller that needs one concern can ask for just that trait.
pub trait JobStore: JobLedger + ChunkLedger + RenderLog + SubmitSwitch + SubmitWindow {}

impl<T: JobLedger + ChunkLedger + RenderLog + SubmitSwitch + SubmitWindow + ?Sized> JobStore for T {}

/// The slice of Pictify the pipeline uses.
#[async_trait]
pub trait PictifyApi: Send + Sync {
    async fn render_batch(
        &self,
        template_id: &str,
        request: &BatchRenderRequest,
        idempotency_key: &str,
    ) -> Result<BatchAccepted, PictifyError>;
    async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError>;
    /// Cancels a batch: its items not started are skipped; it then completes as `cancelled`. A
    /// stand-in whose batches finish at once answers as Pictify does for a finished batch (409).
    async fn cancel_batch(&self, batch_id: &str) -> Result<CancelResult, PictifyError> {
        Err(PictifyError::InvalidRequest {
            status: Some(409),
            message: format!("Batch {batch_id} is already completed and cannot be cancelled"),
            field_errors: Vec::new(),
        })
    }
    /// The account's webhook subscriptions, with their status and failure counts.
    async fn list_subscriptions(&self) -> Result<Vec<Subscription>, PictifyError>;
    /// A template's variable definitions. A stand-in that knows no template need not answer.
    async fn template_variables(
        &self,
        template_id: &str,
    ) -> Result<Vec<VariableDef>, PictifyError> {
        Err(PictifyError::NotFound {
            message: format!("no definitions of {template_id} here"),
        })
    }
}

/// One finished row, published as its batch completes (the README shows the shape). `eventId`
/// is `<job>/<row>/<attempt>`: the same row and attempt always give the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RowEvent {
    pub event_id: String,
    /// Always `row.finished`.
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: String,
    pub row: u64,
    /// 0 for the first render attempt, 1 for its retry, …
    pub attempt: u32,
    /// `rendered`, `reused`, `failed` or `cancelled`.
    pub status: String,
    pub template_id: String,
    pub source: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Where the image was copied, when the job delivers to your bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::domain::RowError>,
    /// The row's fields as the template got them (after the job's column mapping).
    pub input: serde_json::Map<String, serde_json::Value>,
}

/// Where finished rows are announced (SNS; nowhere in a local run).
#[async_trait]
pub trait RowEvents: Send + Sync {
    /// Whether events go anywhere (`false`: the deliver step need not run for them).
    fn enabled(&self) -> bool;
    async fn publish(&self, events: &[RowEvent]) -> PortResult<()>;
}

/// No row events (a local run, or a stack without the topic).
pub struct NoRowEvents;

#[async_trait]
impl RowEvents for NoRowEvents {
    fn enabled(&self) -> bool {
        false
    }

    async fn publish(&self, _events: &[RowEvent]) -> PortResult<()> {
        Ok(())
    }
}

/// An image downloaded from its URL, to be copied to the user's bucket.
pub struct FetchedImage {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

/// Reads rendered images by URL (Pictify's CDN, or the emulator): no API key needed.
#[async_trait]
pub trait ImageSource: Send + Sync {
    async fn fetch(&self, url: &str) -> PortResult<FetchedImage>;
}

/// What an alert is about; its wire name is the snake_case form (`batch_high_failure_rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// One batch failed more items than the threshold allows (once per batch).
    BatchHighFailureRate,
    /// Pictify refused a submission for the account (401/402/quota): everything waits.
    SubmissionsPaused,
    /// Pictify refused one chunk (400/404/422): its rows failed.
    SubmitRejected,
    /// A chunk could never be submitted (its payload is gone or unreadable): its rows failed.
    ChunkUnsubmittable,
    /// A job is still unfinished past its deadline (once per job).
    JobDeadlineExceeded,
    /// A job reached its final status; its manifest is written.
    JobFinished,
    /// A Pictify subscription the stack needs is failed, paused or missing: its events are lost
    /// while it is (once per subscription and state).
    WebhookSubscriptionUnhealthy,
    /// A job passed its abort rule (`maxFailureRate` / `maxFailedRows`): paused or cancelled
    /// (once per job).
    JobAborted,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BatchHighFailureRate => "batch_high_failure_rate",
            AlertKind::SubmissionsPaused => "submissions_paused",
            AlertKind::SubmitRejected => "submit_rejected",
            AlertKind::ChunkUnsubmittable => "chunk_unsubmittable",
            AlertKind::JobDeadlineExceeded => "job_deadline_exceeded",
            AlertKind::JobFinished => "job_finished",
            AlertKind::WebhookSubscriptionUnhealthy => "webhook_subscription_unhealthy",
            AlertKind::JobAborted => "job_aborted",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for AlertKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An operator-facing alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub kind: AlertKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Top error codes with counts, most frequent first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_errors: Vec<(String, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
}

#[async_trait]
pub trait Alerts: Send + Sync {
    async fn send(&self, alert: &Alert) -> PortResult<()>;
}

/// Wall-clock seconds, injectable for tests.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;

    /// Milliseconds, for the request budget (a test clock's seconds are enough).
    fn now_ms(&self) -> i64 {
        self.now().saturating_mul(1000)
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp()
    }

    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// The real client is the production adapter of the Pictify port.
#[async_trait]
impl PictifyApi for crate::pictify::PictifyClient {
    async fn render_batch(
        &self,
        template_id: &str,
        request: &BatchRenderRequest,
        idempotency_key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        crate::pictify::PictifyClient::render_batch(self, template_id, request, idempotency_key)
            .await
    }

    async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError> {
        crate::pictify::PictifyClient::get_batch_results(self, batch_id).await
    }

    async fn cancel_batch(&self, batch_id: &str) -> Result<CancelResult, PictifyError> {
        crate::pictify::PictifyClient::cancel_batch(self, batch_id).await
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>, PictifyError> {
        crate::pictify::PictifyClient::list_subscriptions(self).await
    }

    async fn template_variables(
        &self,
        template_id: &str,
    ) -> Result<Vec<VariableDef>, PictifyError> {
        crate::pictify::PictifyClient::template_variables(self, template_id).await
    }
}
