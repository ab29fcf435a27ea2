//! Hostile datasets through the real ingest step: every case of `tests/data/hostile/expected.json`
//! (a committed file, or one generated here) must reach its named outcome without a panic, and a
//! large generated CSV must ingest with flat memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Map, Value};

use shared::domain::{
    Chunk, ChunkKey, ChunkMessage, ChunkPayload, IngestCheckpoint, Job, JobId, JobStatus, JobStep,
    ManifestCheckpoint, ManifestLocation, ObjectRef,
};
use shared::layout::sidecar_of;
use shared::local::{FsObjectStore, MemoryAlerts, MemoryJobStore, MemoryQueue};
use shared::pictify::PictifyError;
use shared::pictify::wire::{BatchAccepted, BatchRenderRequest, BatchResults, BatchStatus};
use shared::pipeline::{IngestOutcome, Pipeline};
use shared::ports::{
    BeginSubmit, ChunkCompletion, ChunkLedger, FailureRecord, JobLedger, JobStore, ObjectBody,
    ObjectStore, PictifyApi, PortResult, RenderLog, RenderRecord, Reopen, RequestBudget, Slot,
    SubmitSwitch, SubmitWindow, SystemClock, WorkQueue,
};
use shared::secret::Secret;
use shared::settings::Settings;

const BUCKET: &str = "b";
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// The corpus and its manifest
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    file: String,
    outcome: Expected,
    #[serde(default)]
    reason_contains: Option<String>,
    #[serde(default)]
    rows: Option<u64>,
    #[serde(default)]
    rejected: Vec<(u64, String)>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    first_variables: Option<Map<String, Value>>,
    #[serde(default)]
    generator: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Expected {
    JobFailed,
    Ingested,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/hostile")
}

fn manifest() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.json")).unwrap();
    serde_json::from_str::<Manifest>(&text).unwrap().cases
}

/// The bytes of a case: built by its generator, or read from the corpus.
fn contents(case: &Case) -> Vec<u8> {
    match case.generator.as_deref() {
        Some(name) => generate(name),
        None => std::fs::read(corpus_dir().join(&case.file))
            .unwrap_or_else(|e| panic!("{}: corpus file unreadable: {e}", case.file)),
    }
}

/// Files too large (or too repetitive) to commit.
fn generate(name: &str) -> Vec<u8> {
    const HEADER: &str = "title,author,publishDate\n";
    let x = |n: usize| "x".repeat(n);
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let text = match name {
        "field_10k" => format!("{HEADER}A,{},2026-01-01\nB,Bob,2026-01-02\n", x(10 * 1024)),
        "field_over_64k" => format!(
            "{HEADER}A,Ann,2026-01-01\nB,{},2026-01-02\nC,Cid,2026-01-03\n",
            x(70_000)
        ),
        "field_over_64k_jsonl" => format!(
            "{{\"title\":\"A\"}}\n{{\"title\":\"B\",\"author\":\"{}\"}}\n{{\"title\":\"C\"}}\n",
            x(70_000)
        ),
        "row_too_large" => format!(
            "{HEADER}A,Ann,2026-01-01\nB,{},2026-01-02\nC,Cid,2026-01-03\n",
            x(300_000)
        ),
        "huge_header" => format!("{}\nA\n", x(300_000)),
        "deep_array" => format!(
            "[{{\"title\":\"A\"}},{},{{\"title\":\"C\"}},{{\"title\":\"D\",\"deep\":{}}}]",
            deep(100_000),
            deep(100_000)
        ),
        "deep_line" => format!(
            "{{\"title\":\"A\"}}\n{}\n{{\"title\":\"C\"}}\n",
            "[".repeat(100_000)
        ),
        "deep_unbalanced" => format!(
            "[{{\"title\":\"A\"}},{},{{\"title\":\"C\"}}]",
            "[".repeat(100_000)
        ),
        "many_rejections" => (0..50).fold(HEADER.to_owned(), |mut s, r| {
            let tail = if r % 2 == 1 { "" } else { ",2026-01-01" };
            s.push_str(&format!("R{r},x{tail}\n"));
            s
        }),
        other => panic!("expected.json names an unknown generator `{other}`"),
    };
    text.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// A compact harness: the real Pipeline over in-memory adapters and a Pictify that accepts all
// ---------------------------------------------------------------------------------------------

/// Ingest never calls Pictify; if anything did, it would be accepted.
struct AcceptAll;

#[async_trait]
impl PictifyApi for AcceptAll {
    async fn list_subscriptions(
        &self,
    ) -> Result<Vec<shared::pictify::wire::Subscription>, PictifyError> {
        Ok(Vec::new())
    }

    async fn render_batch(
        &self,
        _template: &str,
        _request: &BatchRenderRequest,
        key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        Ok(BatchAccepted {
            batch_id: format!("batch_{key}"),
            status: Some(BatchStatus::Pending),
            total_items: None,
            message: None,
        })
    }

    async fn get_batch_results(&self, _batch_id: &str) -> Result<BatchResults, PictifyError> {
        Err(PictifyError::NotFound {
            message: "the stub keeps no batches".into(),
        })
    }
}

struct Harness {
    pipeline: Pipeline,
    store: Arc<MemoryJobStore>,
    queue: Arc<MemoryQueue>,
    objects: Arc<FsObjectStore>,
    _dir: tempfile::TempDir,
}

fn pipeline(
    store: Arc<dyn JobStore>,
    objects: Arc<dyn ObjectStore>,
    queue: Arc<dyn WorkQueue>,
) -> Pipeline {
    Pipeline {
        store,
        objects,
        queue,
        pictify: Arc::new(AcceptAll),
        alerts: Arc::new(MemoryAlerts::new()),
        clock: Arc::new(SystemClock),
        settings: Settings::default(),
        webhook_secrets: vec![Secret::new("whsec_hostile")],
        outputs: Default::default(),
    }
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryJobStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let objects = Arc::new(FsObjectStore::new(dir.path().to_path_buf()));
    Harness {
        pipeline: pipeline(store.clone(), objects.clone(), queue.clone()),
        store,
        queue,
        objects,
        _dir: dir,
    }
}

fn upload_of(file: &str) -> ObjectRef {
    ObjectRef {
        bucket: BUCKET.into(),
        key: format!("uploads/tmpl_blog_card/{file}"),
    }
}

impl Harness {
    /// Uploads the case's file, and its sidecar when the corpus has one.
    async fn put_case(&self, case: &Case) -> ObjectRef {
        let upload = upload_of(&case.file);
        let sidecar = corpus_dir().join(format!("{}.job.json", case.file));
        if let Ok(bytes) = std::fs::read(&sidecar) {
            let at = sidecar_of(&upload);
            self.objects
                .put_bytes(&at, bytes, "application/json")
                .await
                .unwrap();
        }
        self.objects
            .put_bytes(&upload, contents(case), "application/octet-stream")
            .await
            .unwrap();
        upload
    }

    async fn job(&self, id: &JobId) -> Job {
        self.store.job(id).await.unwrap().expect("the job exists")
    }

    /// Every queued chunk's (row numbers, variable sets), reading by-reference payloads back.
    async fn queued(&self) -> Vec<(u64, Map<String, Value>)> {
        let mut rows = Vec::new();
        for message in self.queue.drain() {
            let payload = match (message.payload, message.payload_ref) {
                (Some(payload), _) => payload.decode().unwrap(),
                (None, Some(at)) => {
                    let bytes = self.objects.get_bytes(&at).await.unwrap().unwrap();
                    serde_json::from_slice::<ChunkPayload>(&bytes).unwrap()
                }
                (None, None) => panic!("a chunk message with neither payload nor reference"),
            };
            rows.extend(payload.rows.into_iter().zip(payload.variable_sets));
        }
        rows
    }
}

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// Runs one case and returns its problems (empty when it reached its named outcome), plus a
/// one-line summary of what actually happened.
async fn run_case(case: &Case) -> (Vec<String>, String) {
    let h = harness();
    let upload = h.put_case(case).await;
    let outcome = match h.pipeline.ingest(&upload, None).await {
        Ok(outcome) => outcome,
        Err(e) => return (vec![format!("ingest errored: {e}")], format!("error: {e}")),
    };
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let summary;
    match (case.outcome, outcome) {
        (Expected::JobFailed, IngestOutcome::Failed { job, reason }) => {
            let wanted = case.reason_contains.as_deref().unwrap_or_default();
            check(
                reason.contains(wanted),
                format!("reason {reason:?} lacks {wanted:?}"),
            );
            let status = h.job(&job).await.status;
            check(
                status == JobStatus::Failed,
                format!("job status {status:?}, not failed"),
            );
            check(h.queue.is_empty(), "a failed job queued chunks".into());
            summary = format!("job_failed: {reason}");
        }
        (Expected::Ingested, IngestOutcome::Ingested { job, counters }) => {
            let job = h.job(&job).await;
            let rows = case.rows.unwrap_or_default();
            check(
                counters.rows == rows,
                format!("{} rows, expected {rows}", counters.rows),
            );
            check(
                counters.rejected == case.rejected.len() as u64,
                format!(
                    "{} rejected, expected {}",
                    counters.rejected,
                    case.rejected.len()
                ),
            );
            check_sample(&job.rejected_sample, &case.rejected, &mut check);
            check_error(
                job.error.as_deref(),
                case.reason_contains.as_deref(),
                &mut check,
            );
            if let Some(status) = &case.status {
                check(
                    job.status.as_str() == status,
                    format!("job status {}, expected {status}", job.status.as_str()),
                );
            }
            let queued = h.queued().await;
            let rejected: BTreeSet<u64> = case.rejected.iter().map(|(row, _)| *row).collect();
            let valid: Vec<u64> = (0..rows).filter(|r| !rejected.contains(r)).collect();
            let numbers: Vec<u64> = queued.iter().map(|(row, _)| *row).collect();
            check(
                numbers == valid,
                format!("queued rows {numbers:?}, expected {valid:?}"),
            );
            if let Some(expected) = &case.first_variables {
                let first = queued.first().map(|(_, vars)| vars);
                check(
                    first == Some(expected),
                    format!("first queued variables {first:?}, expected {expected:?}"),
                );
            }
            summary = format!(
                "ingested: {} rows, {} rejected, {} queued, status {}, error {:?}",
                counters.rows,
                counters.rejected,
                queued.len(),
                job.status.as_str(),
                job.error
            );
        }
        (_, other) => {
            summary = format!("{other:?}");
            check(
                false,
                format!("outcome {other:?}, expected {:?}", case.outcome),
            );
        }
    }
    (problems, summary)
}

/// The job keeps the first 20 rejections, in file order.
fn check_sample(
    sample: &[(u64, String)],
    expected: &[(u64, String)],
    check: &mut impl FnMut(bool, String),
) {
    let kept = &expected[..expected.len().min(20)];
    check(
        sample.len() == kept.len(),
        format!("rejected_sample {sample:?}, expected {kept:?}"),
    );
    for ((row, reason), (want_row, want_reason)) in sample.iter().zip(kept) {
        check(
            row == want_row && reason.contains(want_reason.as_str()),
            format!("rejected ({row}, {reason:?}), expected ({want_row}, …{want_reason:?}…)"),
        );
    }
}

fn check_error(error: Option<&str>, expected: Option<&str>, check: &mut impl FnMut(bool, String)) {
    match (error, expected) {
        (None, None) => {}
        (Some(error), Some(wanted)) => check(
            error.contains(wanted),
            format!("dataset error {error:?} lacks {wanted:?}"),
        ),
        (error, wanted) => check(
            false,
            format!("dataset error {error:?}, expected {wanted:?}"),
        ),
    }
}

/// Runs the selected cases, prints what each did, and fails naming every case that missed.
async fn run_table(select: impl Fn(&Case) -> bool) {
    let cases: Vec<Case> = manifest().into_iter().filter(|c| select(c)).collect();
    assert!(!cases.is_empty(), "no cases selected");
    let mut failures = Vec::new();
    for case in &cases {
        let (problems, summary) = run_case(case).await;
        let mark = if problems.is_empty() { "ok  " } else { "FAIL" };
        eprintln!("{mark} {:<34} {summary}", case.file);
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.file, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile cases missed their outcome:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_hostile_dataset_reaches_its_named_outcome() {
    run_table(|_| true).await;
}

#[test]
fn the_corpus_has_a_case_for_every_committed_file() {
    let named: BTreeSet<String> = manifest().into_iter().map(|c| c.file).collect();
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let dataset = name.strip_suffix(".job.json").unwrap_or(&name);
        if name != "expected.json" {
            assert!(
                named.contains(dataset),
                "{name} has no case in expected.json"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A large file with flat memory
// ---------------------------------------------------------------------------------------------

/// Valid CSV rows produced on demand, never held as a whole.
struct GeneratedCsv {
    target_bytes: u64,
    produced: u64,
    rows: u64,
    line: Vec<u8>,
    position: usize,
}

impl GeneratedCsv {
    fn new(target_bytes: u64) -> Self {
        Self {
            target_bytes,
            produced: 0,
            rows: 0,
            line: b"title,author,publishDate\n".to_vec(),
            position: 0,
        }
    }
}

impl Read for GeneratedCsv {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.position == self.line.len() {
            if self.produced >= self.target_bytes {
                return Ok(0);
            }
            let n = self.rows;
            self.line.clear();
            writeln!(
                self.line,
                "Post {n},Author {},2026-01-{:02}",
                n % 997,
                n % 28 + 1
            )?;
            self.rows += 1;
            self.position = 0;
        }
        let n = buf.len().min(self.line.len() - self.position);
        buf[..n].copy_from_slice(&self.line[self.position..self.position + n]);
        self.position += n;
        self.produced += n as u64;
        Ok(n)
    }
}

/// Counts what is queued and checks the row numbers run 0, 1, 2, … without keeping them.
#[derive(Default)]
struct CountingQueue {
    next_row: AtomicU64,
    messages: AtomicU64,
    gaps: Mutex<Vec<String>>,
}

#[async_trait]
impl WorkQueue for CountingQueue {
    fn max_message_bytes(&self) -> usize {
        256 * 1024
    }

    async fn send(&self, messages: &[ChunkMessage]) -> PortResult<()> {
        for message in messages {
            self.messages.fetch_add(1, Ordering::Relaxed);
            let rows = message.payload.as_ref().map(|p| p.decode().unwrap().rows);
            for row in rows.unwrap_or_default() {
                let expected = self.next_row.fetch_add(1, Ordering::Relaxed);
                if row != expected {
                    self.gaps
                        .lock()
                        .unwrap()
                        .push(format!("row {row} where {expected} was due"));
                }
            }
            if message.payload.is_none() {
                self.gaps
                    .lock()
                    .unwrap()
                    .push(format!("chunk {:?} went by reference", message.key));
            }
        }
        Ok(())
    }

    fn takes_steps(&self) -> bool {
        false
    }

    async fn queue_step(&self, step: &JobStep) -> PortResult<()> {
        panic!("this test does every step in place; {step:?} was queued");
    }
}

/// The files live on disk, but chunk payload copies are counted, not kept (writing ~100k
/// fsynced files would measure the disk, not the pipeline).
struct DiscardPayloads {
    files: FsObjectStore,
    payload_bytes: AtomicU64,
}

#[async_trait]
impl ObjectStore for DiscardPayloads {
    async fn version(&self, object: &ObjectRef) -> PortResult<Option<String>> {
        self.files.version(object).await
    }
    async fn open(&self, object: &ObjectRef, version: Option<&str>) -> PortResult<ObjectBody> {
        self.files.open(object, version).await
    }
    async fn get_bytes(&self, object: &ObjectRef) -> PortResult<Option<Vec<u8>>> {
        self.files.get_bytes(object).await
    }
    async fn put_bytes(&self, object: &ObjectRef, bytes: Vec<u8>, kind: &str) -> PortResult<()> {
        if object.key.starts_with("work/") {
            self.payload_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.files.put_bytes(object, bytes, kind).await
    }
    async fn put_file(&self, object: &ObjectRef, path: &Path, kind: &str) -> PortResult<()> {
        self.files.put_file(object, path, kind).await
    }
}

/// The in-memory store, except that chunk records are counted, not kept (they grow with the file
/// by design; a real table holds them).
struct SlimStore {
    inner: MemoryJobStore,
    chunks: AtomicU64,
}

#[async_trait]
impl JobLedger for SlimStore {
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)> {
        self.inner.create_job(job).await
    }

    async fn job(&self, id: &JobId) -> PortResult<Option<Job>> {
        self.inner.job(id).await
    }

    async fn finish_ingest(&self, job: &Job) -> PortResult<()> {
        self.inner.finish_ingest(job).await
    }

    async fn mark_progress(&self, job: &JobId, status: JobStatus, now: i64) -> PortResult<bool> {
        self.inner.mark_progress(job, status, now).await
    }

    async fn save_manifest_checkpoint(
        &self,
        job: &JobId,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> PortResult<bool> {
        self.inner
            .save_manifest_checkpoint(job, checkpoint, now)
            .await
    }

    async fn save_checkpoint(
        &self,
        job: &JobId,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> PortResult<bool> {
        self.inner
            .save_checkpoint(job, checkpoint, rejected_sample)
            .await
    }

    async fn control_job(
        &self,
        id: &JobId,
        change: &shared::domain::ControlChange,
    ) -> PortResult<Option<shared::domain::Controlled>> {
        self.inner.control_job(id, change).await
    }

    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool> {
        self.inner.transition_job(id, from, to).await
    }

    async fn finish_job(
        &self,
        id: &JobId,
        status: JobStatus,
        manifest: &ManifestLocation,
        now: i64,
    ) -> PortResult<()> {
        self.inner.finish_job(id, status, manifest, now).await
    }

    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool> {
        self.inner.reopen_job(reopen).await
    }

    async fn claim_alert(&self, job: &JobId, kind: &str, now: i64) -> PortResult<bool> {
        self.inner.claim_alert(job, kind, now).await
    }

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        self.inner.active_jobs().await
    }
}

#[async_trait]
impl ChunkLedger for SlimStore {
    async fn put_chunks(&self, chunks: &[Chunk]) -> PortResult<()> {
        self.chunks
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn chunk(&self, job: &JobId, key: ChunkKey) -> PortResult<Option<Chunk>> {
        self.inner.chunk(job, key).await
    }

    async fn chunks_of_job(&self, job: &JobId) -> PortResult<Vec<Chunk>> {
        self.inner.chunks_of_job(job).await
    }

    async fn chunks_by_key(&self, job: &JobId, keys: &[ChunkKey]) -> PortResult<Vec<Chunk>> {
        self.inner.chunks_by_key(job, keys).await
    }

    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit> {
        self.inner.begin_submit(job, key, now, grace).await
    }

    async fn record_submitted(
        &self,
        job: &JobId,
        key: ChunkKey,
        batch_id: &str,
        now: i64,
    ) -> PortResult<()> {
        self.inner.record_submitted(job, key, batch_id, now).await
    }

    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()> {
        self.inner.release_submit(job, key).await
    }

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        self.inner.chunk_by_batch(batch_id).await
    }

    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool> {
        self.inner.complete_chunk(completion).await
    }
}

#[async_trait]
impl RenderLog for SlimStore {
    async fn record_render(&self, fingerprint: &str, record: &RenderRecord) -> PortResult<()> {
        self.inner.record_render(fingerprint, record).await
    }

    async fn record_failure(&self, fingerprint: &str, record: &FailureRecord) -> PortResult<()> {
        self.inner.record_failure(fingerprint, record).await
    }

    async fn renders(&self, fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>> {
        self.inner.renders(fingerprints).await
    }

    async fn failures(
        &self,
        fingerprints: &[String],
    ) -> PortResult<HashMap<String, FailureRecord>> {
        self.inner.failures(fingerprints).await
    }

    async fn record_orphan(&self, kind: &str, id: &str, body: &str, now: i64) -> PortResult<()> {
        self.inner.record_orphan(kind, id, body, now).await
    }

    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool> {
        self.inner.batch_completed_early(batch_id).await
    }
}

#[async_trait]
impl SubmitSwitch for SlimStore {
    async fn pause_submissions(&self, reason: &str, now: i64) -> PortResult<bool> {
        self.inner.pause_submissions(reason, now).await
    }

    async fn submissions_paused(&self) -> PortResult<Option<String>> {
        self.inner.submissions_paused().await
    }

    async fn resume_submissions(&self) -> PortResult<()> {
        self.inner.resume_submissions().await
    }
}

#[async_trait]
impl SubmitWindow for SlimStore {
    async fn acquire_slot(
        &self,
        job: &JobId,
        key: ChunkKey,
        size: u32,
        now: i64,
        expires_at: i64,
    ) -> PortResult<bool> {
        self.inner
            .acquire_slot(job, key, size, now, expires_at)
            .await
    }

    async fn release_slot(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        self.inner.release_slot(job, key).await
    }

    async fn live_slots(&self, now: i64) -> PortResult<Vec<Slot>> {
        self.inner.live_slots(now).await
    }

    async fn park(&self, job: &JobId, key: ChunkKey, now: i64) -> PortResult<()> {
        self.inner.park(job, key, now).await
    }

    async fn next_parked(
        &self,
        skip: &std::collections::BTreeSet<JobId>,
    ) -> PortResult<Option<(JobId, ChunkKey)>> {
        self.inner.next_parked(skip).await
    }

    async fn unpark(&self, job: &JobId, key: ChunkKey) -> PortResult<bool> {
        self.inner.unpark(job, key).await
    }

    async fn parked(&self) -> PortResult<Vec<(JobId, ChunkKey)>> {
        self.inner.parked().await
    }

    async fn take_request(
        &self,
        budget: RequestBudget,
        now_ms: i64,
    ) -> PortResult<Option<Duration>> {
        self.inner.take_request(budget, now_ms).await
    }
}

/// Peak resident set size in MiB (Linux).
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// 50 MB by default; `HOSTILE_BIG=1` runs the full 200 MB.
fn big_file_bytes() -> u64 {
    match std::env::var("HOSTILE_BIG").as_deref() {
        Ok("1") => 200 * MIB,
        _ => 50 * MIB,
    }
}

#[tokio::test]
async fn a_large_csv_ingests_every_row_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let files = FsObjectStore::new(dir.path().to_path_buf());
    let upload = upload_of("big.csv");
    let path = files.path_of(&upload).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();

    let started = Instant::now();
    let mut source = GeneratedCsv::new(big_file_bytes());
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let written = std::io::copy(&mut source, &mut file).unwrap();
    file.flush().unwrap();
    drop(file);
    let generated_in = started.elapsed();

    let store = Arc::new(SlimStore {
        inner: MemoryJobStore::new(),
        chunks: AtomicU64::new(0),
    });
    let queue = Arc::new(CountingQueue::default());
    let objects = Arc::new(DiscardPayloads {
        files,
        payload_bytes: AtomicU64::new(0),
    });
    let pipeline = pipeline(store.clone(), objects.clone(), queue.clone());

    let before = peak_rss_mib();
    let started = Instant::now();
    let outcome = pipeline.ingest(&upload, None).await.unwrap();
    let ingested_in = started.elapsed();
    let after = peak_rss_mib();

    let rows = source.rows;
    let IngestOutcome::Ingested { counters, .. } = outcome else {
        panic!("big.csv: expected Ingested, got {outcome:?}");
    };
    assert_eq!((counters.rows, counters.rejected), (rows, 0), "big.csv");
    assert_eq!(counters.chunks, rows.div_ceil(100), "big.csv chunks");
    assert_eq!(
        queue.next_row.load(Ordering::Relaxed),
        rows,
        "big.csv queued rows"
    );
    assert_eq!(
        queue.gaps.lock().unwrap().as_slice(),
        &[] as &[String],
        "big.csv"
    );
    assert_eq!(
        store.chunks.load(Ordering::Relaxed),
        counters.chunks,
        "big.csv chunk records"
    );

    eprintln!(
        "big.csv: {} MiB, {rows} rows, {} chunks ({} MiB of payloads): generated in {:.1?}, \
         ingested in {:.1?}; peak RSS {before:?} MiB before, {after:?} MiB after",
        written / MIB,
        counters.chunks,
        objects.payload_bytes.load(Ordering::Relaxed) / MIB,
        generated_in,
        ingested_in,
    );
    if let (Some(before), Some(after)) = (before, after) {
        let growth = after.saturating_sub(before);
        assert!(
            growth < 64,
            "big.csv: peak RSS grew by {growth} MiB during ingest"
        );
    }
}
