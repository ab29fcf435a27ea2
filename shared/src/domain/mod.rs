//! The domain: jobs, chunks and their states, identities, and the accounting invariant.
//!
//! Rows are not stored one item per row: a row's final state is derived from the chunk that last
//! carried it (see `ChunkOutcome`) and its image URL from the render record of its fingerprint.
//! That keeps the write path to one DynamoDB write per `render.completed` and a few per batch.
//!
//! How chunks and jobs change state is written once, in `rules` (its module docs state the state
//! machines); every store applies those rules.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::ReadPosition;
use crate::pictify::variables::VariableDef;
use crate::pictify::wire::{Format, VariableSet, error_codes};

mod rules;
pub mod window;

pub use rules::{
    BeginSubmit, Complete, Controlled, RecordSubmitted, Reopen, ReopenPlan, Transition,
};

/// Identity of a job: derived from the upload (bucket, key, version or ETag) so a redelivered S3
/// event maps to the same job and a new version of the file to a new one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn for_upload(bucket: &str, key: &str, version: &str) -> Self {
        let mut hasher = Sha256::new();
        for part in [bucket, key, version] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        JobId(format!("job_{}", &hex::encode(hasher.finalize())[..20]))
    }

    /// Accepts an id given by an operator or read back from storage.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = raw.starts_with("job_")
            && raw.len() <= 64
            && raw[4..].bytes().all(|b| b.is_ascii_alphanumeric());
        if ok {
            Ok(JobId(raw.to_owned()))
        } else {
            Err(format!("`{raw}` is not a job id (expected job_<hex>)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identity of a chunk: (job, sequence, attempt). It is the `Idempotency-Key` of its submission.
/// Attempt 0 is the chunk cut at ingest; attempt n>0 re-renders the retryable failures of attempt n-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkKey {
    pub seq: u32,
    pub attempt: u32,
}

impl ChunkKey {
    pub fn initial(seq: u32) -> Self {
        ChunkKey { seq, attempt: 0 }
    }

    pub fn retry(self) -> Self {
        ChunkKey {
            seq: self.seq,
            attempt: self.attempt + 1,
        }
    }

    /// `c00012` or `c00012-r1`: sorts in submission order inside a job.
    pub fn label(self) -> String {
        if self.attempt == 0 {
            format!("c{:05}", self.seq)
        } else {
            format!("c{:05}-r{}", self.seq, self.attempt)
        }
    }

    pub fn parse_label(label: &str) -> Option<Self> {
        let rest = label.strip_prefix('c')?;
        let (seq, attempt) = match rest.split_once("-r") {
            Some((seq, attempt)) => (seq, attempt.parse().ok()?),
            None => (rest, 0),
        };
        Some(ChunkKey {
            seq: seq.parse().ok()?,
            attempt,
        })
    }

    /// The idempotency key sent to Pictify: globally unique and stable across redeliveries.
    pub fn idempotency_key(self, job: &JobId) -> String {
        format!("{job}-{}", self.label())
    }
}

/// What the user asked for, per upload (key prefix + optional sidecar + defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub template_id: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// column → variable renames; unmapped columns pass through under their own name.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    /// Columns that must be present and non-empty.
    #[serde(default)]
    pub required: Vec<String>,
    /// At most this many of the job's batches at Pictify at once (within the plan's window);
    /// `pictify-batch concurrency` changes it while the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// When to stop the job because too many of its rows fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortRule>,
    /// The template's variable definitions as cached when the job was created (ingest has no
    /// Pictify key; the reconciler keeps the cache): rows they refuse are rejected, not billed.
    /// Kept with the job so every ingest piece and the manifest judge rows alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<Vec<VariableDef>>,
    /// An incremental re-run: the upload replaces one whose job finished, so a row whose
    /// (template, variables) already has a live image on record is `reused`, not rendered again
    /// (`pipeline::reuse`). Off with the sidecar's `renderAll`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incremental: bool,
    /// Copy every image to the user's own bucket as its batch completes (`pipeline::deliver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// Where a job's images are kept: `s3://{bucket}/{prefix}{keyPattern rendered for the row}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    /// A `crate::naming::KeyPattern`, checked when the job is created.
    pub key_pattern: String,
}

/// When a job's failures are too many to go on spending: over the whole job (the 5%-per-batch
/// alert is separate), once at least `after_rows` rows reached Pictify and ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortRule {
    /// Failed rows over rendered + failed rows, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failure_rate: Option<f64>,
    /// Failed rows in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_rows: Option<u64>,
    /// The smallest sample the rate is judged on.
    #[serde(default = "AbortRule::default_after_rows")]
    pub after_rows: u64,
    #[serde(default)]
    pub action: AbortAction,
}

/// What passing the abort rule does to the rest of the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AbortAction {
    /// Nothing more is submitted until `pictify-batch resume` (or `cancel`).
    #[default]
    Pause,
    /// The rest of the job is cancelled.
    Cancel,
}

impl AbortAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AbortAction::Pause => "pause",
            AbortAction::Cancel => "cancel",
        }
    }
}

impl AbortRule {
    pub const DEFAULT_AFTER_ROWS: u64 = 50;

    fn default_after_rows() -> u64 {
        Self::DEFAULT_AFTER_ROWS
    }

    /// Why the job must stop at these counters, if it must.
    pub fn tripped_by(&self, c: &Counters) -> Option<String> {
        if let Some(max) = self.max_failed_rows
            && c.failed > max
        {
            return Some(format!(
                "{} rows failed, over the job's limit of {max} (maxFailedRows)",
                c.failed
            ));
        }
        let sample = c.rendered + c.failed;
        if let Some(max) = self.max_failure_rate
            && sample >= self.after_rows.max(1)
            && c.failure_rate() > max
        {
            return Some(format!(
                "{:.1}% of {sample} rows failed, over the job's limit of {:.1}% (maxFailureRate)",
                c.failure_rate() * 100.0,
                max * 100.0
            ));
        }
        None
    }
}

/// An operator's (or the abort rule's) say over a running job, beside its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobControl {
    /// Paused, and why: its chunks wait in the parking lot until it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Cancelled, and why: nothing more is submitted, its batches at Pictify are cancelled and
    /// rows not rendered end `cancelled`. Never undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<String>,
    /// Overrides the spec's `max_in_flight` (`pictify-batch concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl JobControl {
    pub fn is_default(&self) -> bool {
        *self == JobControl::default()
    }
}

/// A change to a job's control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlChange {
    Pause {
        reason: String,
    },
    Resume,
    Cancel {
        reason: String,
    },
    /// `None`: back to the spec's limit (or none).
    MaxInFlight(Option<u32>),
}

/// Where the upload lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Ingesting,
    Running,
    /// Every row is terminal and the manifest is being written.
    Finishing,
    Completed,
    Partial,
    Failed,
    /// Cancelled before every row rendered (`pictify-batch cancel`, or the abort rule).
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Ingesting => "ingesting",
            JobStatus::Running => "running",
            JobStatus::Finishing => "finishing",
            JobStatus::Completed => "completed",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Partial | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Per-job counters. Updated once per ingest and once per batch, never per render event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Data rows read from the file.
    pub rows: u64,
    pub rejected: u64,
    pub rendered: u64,
    pub failed: u64,
    /// Rows never rendered because the job was cancelled.
    #[serde(default)]
    pub cancelled: u64,
    /// Rows an incremental re-run took from an earlier render instead of rendering again.
    #[serde(default)]
    pub reused: u64,
    /// Rows re-queued for another attempt (informational: they are still in flight).
    pub retried: u64,
    /// Chunks created (initial + retries) and chunks whose outcome is applied.
    pub chunks: u64,
    pub chunks_done: u64,
}

impl Counters {
    /// rows = rejected + rendered + reused + failed + cancelled + in flight.
    pub fn in_flight(&self) -> u64 {
        self.rows.saturating_sub(self.terminal())
    }

    /// Rows in a terminal state.
    pub fn terminal(&self) -> u64 {
        self.rejected + self.rendered + self.reused + self.failed + self.cancelled
    }

    /// Adds a delta (a batch's outcome) to these counters.
    pub fn add(&mut self, delta: &Counters) {
        self.rows += delta.rows;
        self.rejected += delta.rejected;
        self.rendered += delta.rendered;
        self.failed += delta.failed;
        self.cancelled += delta.cancelled;
        self.reused += delta.reused;
        self.retried += delta.retried;
        self.chunks += delta.chunks;
        self.chunks_done += delta.chunks_done;
    }

    pub fn invariant_holds(&self) -> bool {
        self.terminal() <= self.rows
    }

    /// Rows that reached Pictify and failed, over rows that reached a terminal render state.
    pub fn failure_rate(&self) -> f64 {
        let done = self.rendered + self.failed;
        if done == 0 {
            0.0
        } else {
            self.failed as f64 / done as f64
        }
    }

    /// The job's final status once nothing is in flight.
    pub fn final_status(&self) -> JobStatus {
        if self.cancelled > 0 {
            JobStatus::Cancelled
        } else if self.rendered + self.reused == self.rows {
            JobStatus::Completed
        } else if self.rendered + self.reused == 0 {
            JobStatus::Failed
        } else {
            JobStatus::Partial
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: JobId,
    pub source: ObjectRef,
    /// ETag or version id of the upload this job read (the manifest re-reads exactly this).
    pub source_version: String,
    pub spec: JobSpec,
    pub status: JobStatus,
    pub counters: Counters,
    /// Dataset-level failure reason (unreadable file, missing header, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// First rejected rows, for `status` (the manifest lists them all).
    #[serde(default)]
    pub rejected_sample: Vec<(u64, String)>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// Sum of batch durations reported by Pictify (ms), for the average render time.
    #[serde(default)]
    pub render_ms_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<ManifestLocation>,
    /// Times the finished job was reopened for more attempts (`retry-failed`, the re-render
    /// policy for rows whose URL never arrived).
    #[serde(default)]
    pub reopened: u32,
    /// While `ingesting`: how far the upload has been read and queued (none before the first
    /// checkpoint). The next ingest invocation carries on from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<IngestCheckpoint>,
    /// While `finishing`: when the manifest writer last showed progress (it started, or sent a
    /// part). A writer silent for `STEP_STALL_SECONDS` has died; the reconciler starts another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<i64>,
    /// The chunks of the last reopen (`retry-failed`, the re-render policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopen_plan: Option<ReopenPlan>,
    /// While `finishing`: how far the manifest writer got (none before its first part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_checkpoint: Option<ManifestCheckpoint>,
    #[serde(default, skip_serializing_if = "JobControl::is_default")]
    pub control: JobControl,
}

/// A part of a multipart upload sent so far: its number and ETag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    pub number: u32,
    pub etag: String,
}

/// One manifest file's multipart upload so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartsSent {
    pub upload: String,
    pub parts: Vec<UploadedPart>,
}

/// How far a manifest writer got: every line before `position` is in the parts sent of both
/// files. A writer that takes over carries on from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestCheckpoint {
    /// The finish this manifest belongs to (`Job::reopened`): a later finish starts afresh.
    pub generation: u32,
    /// Written beside the upload's usual manifest, under the job's id: a newer upload of the same
    /// key owns the usual name (`layout::manifest_location`). Kept so a writer that takes over
    /// finishes the same objects.
    #[serde(default)]
    pub superseded: bool,
    pub position: ReadPosition,
    /// The page of the job's first chunks that holds the next rows starts at this sequence.
    pub page_seq: u32,
    pub csv: PartsSent,
    pub jsonl: PartsSent,
    /// The counts of the lines sent, per status, and the failure codes.
    pub lines: u64,
    pub rendered: u64,
    pub url_missing: u64,
    pub failed: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub reused: u64,
    pub rejected: u64,
    pub in_flight: u64,
    pub codes: BTreeMap<String, u64>,
}

/// How far ingest has read an upload. Everything before `position` is queued: its chunks are
/// stored and sent, its rejections counted. Ingest saves one every few thousand rows and when it
/// hands the rest to a fresh invocation; a resumed ingest makes from here exactly the chunks an
/// uninterrupted one would have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestCheckpoint {
    /// Where the next row starts; `position.rows` rows were read before it.
    pub position: ReadPosition,
    /// Of those rows, how many were rejected.
    pub rejected: u64,
    /// Chunks made from them (the next chunk is `c{chunks + 1}`).
    pub chunks: u64,
    /// Invocations that have worked on this ingest so far (1 for the first).
    pub pieces: u32,
    /// When it was saved: an ingest whose checkpoint stops moving has died (the reconciler
    /// resumes it).
    pub saved_at: i64,
}

impl Job {
    /// Batches of this job at Pictify at once, at most (none: the plan's window alone).
    pub fn max_in_flight(&self) -> Option<u32> {
        self.control.max_in_flight.or(self.spec.max_in_flight)
    }

    /// Applies ingest's result to the stored job (stores that keep the job as one document use
    /// it). Rows and rejections are ingest's alone; the other counters are added to, because a
    /// batch may complete before ingest finishes and has moved them already.
    pub fn apply_ingest(&mut self, ingested: &Job) {
        self.status = ingested.status;
        self.rejected_sample = ingested.rejected_sample.clone();
        if ingested.error.is_some() {
            self.error = ingested.error.clone();
        }
        if ingested.ingested_at.is_some() {
            self.ingested_at = ingested.ingested_at;
        }
        self.counters.rows = ingested.counters.rows;
        self.counters.rejected = ingested.counters.rejected;
        self.counters.add(&Counters {
            rows: 0,
            rejected: 0,
            ..ingested.counters
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestLocation {
    pub csv: ObjectRef,
    pub jsonl: ObjectRef,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkState {
    Queued,
    /// Intent recorded before calling Pictify; the outcome of that call may be unknown.
    Submitting,
    Submitted,
    Completed,
}

impl ChunkState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkState::Queued => "queued",
            ChunkState::Submitting => "submitting",
            ChunkState::Submitted => "submitted",
            ChunkState::Completed => "completed",
        }
    }
}

/// A chunk as stored. Its payload (the variable sets) lives in the object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Chunk {
    pub job: JobId,
    pub key: ChunkKey,
    /// Data row numbers, in payload order: `rows[i]` is batch index `i`.
    pub rows: Vec<u64>,
    pub state: ChunkState,
    /// When the chunk was created and its message sent: a chunk still `queued` long after is
    /// re-sent by the reconciler (the send may have been lost with a crashed Lambda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// When the current submit attempt started (for the unknown-outcome grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitting_since: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<i64>,
    #[serde(default)]
    pub submit_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ChunkOutcome>,
}

impl Chunk {
    pub fn new(job: JobId, key: ChunkKey, rows: Vec<u64>) -> Self {
        Chunk {
            job,
            key,
            rows,
            state: ChunkState::Queued,
            queued_at: None,
            batch_id: None,
            submitting_since: None,
            submitted_at: None,
            submit_attempts: 0,
            outcome: None,
        }
    }

    pub fn queued_at(self, now: i64) -> Self {
        Chunk {
            queued_at: Some(now),
            ..self
        }
    }

    pub fn idempotency_key(&self) -> String {
        self.key.idempotency_key(&self.job)
    }
}

/// The applied result of a chunk. Successes are implied: every index not in `failed` or `retried`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkOutcome {
    pub rendered: u32,
    /// Final failures: batch index → error.
    #[serde(default)]
    pub failed: BTreeMap<u32, RowError>,
    /// Retryable failures handed to the next attempt (the chunk `key.retry()`).
    #[serde(default)]
    pub retried: Vec<u32>,
    /// Never rendered: the job was cancelled (batch indexes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancelled: Vec<u32>,
    /// Not sent: an earlier render of the same (template, variables) is reused (batch index →
    /// its image URL, frozen here so the manifest says what the submitter decided). The rows of
    /// `retried` beside them are the ones that changed, sent as the next chunk.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reused: BTreeMap<u32, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When the outcome was applied (the deliver step's lost-message check waits from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
}

impl ChunkOutcome {
    /// Where the row at batch `index` of chunk `key` ended by this outcome (a rendered row's URL
    /// is not known here: it is in the render records).
    pub fn state_of(&self, key: ChunkKey, index: u32) -> RowState {
        if let Some(e) = self.failed.get(&index) {
            RowState::Failed {
                code: e.code.clone(),
                message: e.message.clone(),
            }
        } else if self.cancelled.contains(&index) {
            RowState::Cancelled
        } else if self.retried.contains(&index) {
            RowState::InFlight {
                chunk: key.retry().label(),
            }
        } else if let Some(url) = self.reused.get(&index) {
            RowState::Reused { url: url.clone() }
        } else {
            RowState::Rendered { url: None }
        }
    }
}

/// Why a row failed: a Pictify item code (or our own) and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    pub code: String,
    pub message: String,
}

/// Our own codes, beside Pictify's item codes.
pub mod own_codes {
    /// Pictify refused the whole submission (400/404/422).
    pub const SUBMIT_REJECTED: &str = "SUBMIT_REJECTED";
    /// The chunk could never be submitted: its stored payload is gone or unreadable.
    pub const CHUNK_UNSUBMITTABLE: &str = "CHUNK_UNSUBMITTABLE";
    /// The item failed with no code we could recognise.
    pub const UNKNOWN: &str = "UNKNOWN";
    /// The row never rendered: its job was cancelled (the manifest's code for `cancelled`).
    pub const CANCELLED: &str = "CANCELLED";
}

/// Permanent vs retryable, per the batch guide's failure table.
pub fn is_retryable(code: &str) -> bool {
    !matches!(
        code,
        error_codes::INVALID_VARIABLE
            | error_codes::EXPRESSION_ERROR
            | error_codes::TEMPLATE_NOT_FOUND
            | own_codes::SUBMIT_REJECTED
            | own_codes::CHUNK_UNSUBMITTABLE
    )
}

/// Pictify's results poll gives a message and no code; a code is recognised when the message starts
/// with one (`"IMAGE_FETCH_FAILED: …"`) or mentions one as a word.
pub fn code_from_message(message: &str) -> Option<&'static str> {
    const KNOWN: [&str; 5] = [
        error_codes::INVALID_VARIABLE,
        error_codes::EXPRESSION_ERROR,
        error_codes::IMAGE_FETCH_FAILED,
        error_codes::RENDER_TIMEOUT,
        error_codes::TEMPLATE_NOT_FOUND,
    ];
    message
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .find_map(|word| KNOWN.iter().copied().find(|code| *code == word))
}

/// What the submitter sends to Pictify for one chunk, and what the queue message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkPayload {
    pub job: JobId,
    pub key: ChunkKey,
    pub template_id: String,
    pub format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    pub rows: Vec<u64>,
    pub variable_sets: Vec<VariableSet>,
}

/// A long step of a job, for a worker with time (the step queue, read by the ingest function,
/// which may run 15 minutes): `{"continueIngest": "job_…"}` or `{"writeManifest": "job_…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobStep {
    /// Carry on with the job's ingest from its checkpoint.
    ContinueIngest(JobId),
    /// Write the manifest of a job in `finishing`, and finish it.
    WriteManifest(JobId),
    /// Copy a completed chunk's images to the job's bucket and publish its rows' events.
    DeliverChunk { job: JobId, chunk: ChunkKey },
}

impl JobStep {
    pub fn job(&self) -> &JobId {
        match self {
            JobStep::ContinueIngest(job)
            | JobStep::WriteManifest(job)
            | JobStep::DeliverChunk { job, .. } => job,
        }
    }
}

/// A work-queue message: the payload inline when it fits, else a reference to its stored copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkMessage {
    pub job: JobId,
    pub key: ChunkKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<InlinePayload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_ref: Option<ObjectRef>,
}

/// A chunk payload carried as its JSON text: ingest encodes a payload once, for the stored copy
/// and the queue message alike (encoding twice was a third of ingest's time). On the wire it is
/// the payload object itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InlinePayload(Box<serde_json::value::RawValue>);

impl InlinePayload {
    pub fn encode(payload: &ChunkPayload) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(payload).map(InlinePayload)
    }

    /// Wraps JSON already encoded (checked to be JSON, not to be a payload: `decode` does that).
    pub fn from_json(json: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(json).map(InlinePayload)
    }

    /// Wraps JSON this process assembled from serde_json's own output (ingest's chunks) without
    /// parsing it again: the check `from_json` makes was a fifth of ingest's time. serde_json
    /// has no public unchecked constructor, so the text goes through `to_raw_value` as a value
    /// that serializes the way a `RawValue` does (serde_json's raw-value token), which copies it
    /// verbatim. Were serde_json ever to change that token, the text would come out wrapped in an
    /// object, so longer: that is caught here, and by the tests, instead of sending a wrong
    /// payload.
    pub fn from_assembled_json(json: &str) -> Result<Self, serde_json::Error> {
        use serde::ser::{Error, SerializeStruct};

        const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";
        struct Verbatim<'a>(&'a str);
        impl Serialize for Verbatim<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut raw = serializer.serialize_struct(RAW_VALUE_TOKEN, 1)?;
                raw.serialize_field(RAW_VALUE_TOKEN, self.0)?;
                raw.end()
            }
        }
        let raw = serde_json::value::to_raw_value(&Verbatim(json))?;
        if raw.get().len() != json.len() {
            return Err(serde_json::Error::custom(
                "serde_json no longer copies a raw value verbatim",
            ));
        }
        Ok(InlinePayload(raw))
    }

    pub fn decode(&self) -> Result<ChunkPayload, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for InlinePayload {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

/// A row's final state as shown in status and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum RowState {
    Rejected {
        reason: String,
    },
    InFlight {
        chunk: String,
    },
    /// `url` is `None` when Pictify reported success but its `render.completed` never reached us.
    Rendered {
        url: Option<String>,
    },
    Failed {
        code: String,
        message: String,
    },
    /// Never rendered: the job was cancelled (its reason is the job's).
    Cancelled,
    /// Not rendered again: an incremental re-run reused this image of the same variables.
    Reused {
        url: String,
    },
}

impl RowState {
    pub fn label(&self) -> &'static str {
        match self {
            RowState::Rejected { .. } => "rejected",
            RowState::InFlight { .. } => "in_flight",
            RowState::Rendered { url: Some(_) } => "rendered",
            RowState::Rendered { url: None } => "rendered_url_missing",
            RowState::Failed { .. } => "failed",
            RowState::Cancelled => "cancelled",
            RowState::Reused { .. } => "reused",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_stable_for_the_same_upload_and_changes_with_the_version() {
        let a = JobId::for_upload("b", "uploads/t/x.csv", "etag1");
        assert_eq!(a, JobId::for_upload("b", "uploads/t/x.csv", "etag1"));
        assert_ne!(a, JobId::for_upload("b", "uploads/t/x.csv", "etag2"));
        assert_eq!(JobId::parse(a.as_str()), Ok(a));
    }

    #[test]
    fn chunk_labels_round_trip_and_sort_in_submission_order() {
        let first = ChunkKey::initial(3);
        let retry = first.retry();
        assert_eq!(first.label(), "c00003");
        assert_eq!(retry.label(), "c00003-r1");
        assert_eq!(ChunkKey::parse_label("c00003-r1"), Some(retry));
        assert!(first.label() < retry.label());
        assert!(retry.label() < ChunkKey::initial(4).label());
    }

    #[test]
    fn codes_are_found_in_poll_messages() {
        assert_eq!(
            code_from_message("IMAGE_FETCH_FAILED: could not load x"),
            Some("IMAGE_FETCH_FAILED")
        );
        assert_eq!(
            code_from_message("render failed (RENDER_TIMEOUT)"),
            Some("RENDER_TIMEOUT")
        );
        assert_eq!(code_from_message("something odd"), None);
        assert!(is_retryable("IMAGE_FETCH_FAILED") && is_retryable("UNKNOWN"));
        assert!(!is_retryable("INVALID_VARIABLE") && !is_retryable("EXPRESSION_ERROR"));
    }

    #[test]
    fn counters_keep_the_invariant_and_pick_the_final_status() {
        let c = Counters {
            rows: 10,
            rejected: 2,
            rendered: 6,
            failed: 1,
            ..Default::default()
        };
        assert_eq!(c.in_flight(), 1);
        assert!(c.invariant_holds());
        let done = Counters { failed: 2, ..c };
        assert_eq!(done.final_status(), JobStatus::Partial);
    }
}
