//! The `JobStore` contract as one executable suite: every adapter's tests call
//! `check_job_store` with a factory of fresh, empty stores, so the in-memory reference, SQLite
//! and DynamoDB are held to the same behaviour by the same code. Test code, compiled only for
//! this crate's tests or with the `contract` feature (adapter crates enable it in
//! dev-dependencies).
//!
//! Two checks hold every store to the domain's rules (`crate::domain`, the one written statement
//! of the state machines): every chunk state × request and every job status × expected status
//! is run against the store and against the pure rule, and the answers and stored states must
//! be equal. For DynamoDB that checks its condition expressions against the rules.
//!
//! Behaviours where the adapters differ today (for example an unknown chunk's completion: an
//! error in SQLite, `Ok(false)` elsewhere) are not part of `check_job_store`; the `check_*`
//! functions below it cover the ones two adapters share, the rest stay in each adapter's tests.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};

use crate::dataset::ReadPosition;
use crate::domain::{
    Chunk, ChunkKey, ChunkOutcome, ChunkState, ControlChange, Counters, IngestCheckpoint, Job,
    JobId, JobSpec, JobStatus, ManifestLocation, ObjectRef, RecordSubmitted, RowError,
};
use crate::ports::{BeginSubmit, ChunkCompletion, FailureRecord, JobStore, RenderRecord, Reopen};

/// The submit grace period every check uses.
pub const GRACE: Duration = Duration::from_secs(60);

type Store = Arc<dyn JobStore>;
type Check = fn(Store) -> BoxFuture<'static, ()>;

/// `[(name, check)]` for each named check function.
macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        [$((
            stringify!($name),
            (|store: Store| -> BoxFuture<'static, ()> { Box::pin($name(store)) }) as Check,
        )),*]
    };
}

/// Runs every contract check, each on a store fresh from `fresh`, and panics listing the checks
/// that failed (all of them run, so one failure does not hide another).
pub async fn check_job_store<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn JobStore>>,
{
    let all = checks![
        creating_a_job_twice_keeps_the_first,
        putting_chunks_again_does_not_reset_them,
        begin_submit_proceeds_once_then_waits_out_the_grace_period,
        a_redelivered_message_finds_the_batch_id,
        recording_a_batch_for_an_unknown_chunk_is_an_error,
        releasing_a_submit_requeues_only_a_submitting_chunk,
        begin_submit_reports_unknown_and_completed_chunks,
        a_chunk_completes_exactly_once,
        racing_completions_apply_exactly_once,
        a_queued_chunk_does_not_complete,
        the_retry_chunk_is_created_once_and_queued,
        a_completion_applies_when_its_retry_chunk_exists_already,
        completing_a_chunk_of_a_missing_job_changes_nothing,
        finish_ingest_applies_once_and_keeps_batch_counters,
        an_ingest_checkpoint_moves_only_forward_and_only_while_ingesting,
        finishing_needs_the_job,
        a_job_transitions_only_from_the_expected_status,
        finishing_a_job_records_status_manifest_and_time_and_deactivates_it,
        pausing_reports_true_only_to_the_first_caller_until_resumed,
        renders_and_failures_are_looked_up_by_fingerprint,
        orphans_are_kept_and_reveal_an_early_batch_completion,
        chunks_of_job_lists_one_jobs_chunks_in_key_order,
        reopening_applies_once_only_from_the_expected_status,
        reopening_refuses_an_existing_chunk_and_changes_nothing,
        a_job_alert_is_claimed_once_per_job_and_kind,
        every_chunk_state_answers_every_request_as_the_domain_rules_say,
        every_job_status_moves_only_as_the_domain_rules_say,
        every_control_change_applies_as_the_domain_rule_says,
        a_cancelled_chunk_counts_its_rows_cancelled,
        the_window_holds_at_most_size_slots_and_a_holder_renews,
        an_expired_slot_is_free_and_release_frees_only_the_holders,
        racing_acquirers_never_overfill_the_window,
        parked_chunks_are_served_one_job_after_another,
        a_parked_chunk_is_unparked_once,
        jobs_held_back_are_passed_over_in_turn,
        the_request_budget_is_one_bucket_for_every_caller,
    ];
    let mut failed = Vec::new();
    for (name, check) in all {
        let store = fresh().await;
        if let Err(panic) = AssertUnwindSafe(check(store)).catch_unwind().await {
            failed.push(format!("{name}: {}", panic_message(&*panic)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} JobStore contract checks failed:\n{}",
        failed.len(),
        all.len(),
        failed.join("\n")
    );
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(non-text panic)".to_owned())
}

/// Unwrapping for checks: the panic names the step that failed.
pub trait Must<T> {
    fn must(self, step: &str) -> T;
}

impl<T, E: std::fmt::Display> Must<T> for Result<T, E> {
    fn must(self, step: &str) -> T {
        self.unwrap_or_else(|e| panic!("{step}: {e}"))
    }
}

impl<T> Must<T> for Option<T> {
    fn must(self, step: &str) -> T {
        self.unwrap_or_else(|| panic!("{step}: nothing stored"))
    }
}

// ---- fixtures (public: adapter-specific tests use them too) ------------------------------------

/// A job still ingesting, for the upload `uploads/<key>`.
pub fn job_for(key: &str) -> Job {
    let source = ObjectRef {
        bucket: "uploads".into(),
        key: key.into(),
    };
    Job {
        id: JobId::for_upload(&source.bucket, &source.key, "etag-1"),
        source,
        source_version: "etag-1".into(),
        spec: JobSpec {
            template_id: "tmpl_1".into(),
            format: Default::default(),
            quality: None,
            concurrency: Some(4),
            mapping: BTreeMap::from([("Title".into(), "title".into())]),
            required: vec!["title".into()],
            max_in_flight: Some(3),
            abort: Some(crate::domain::AbortRule {
                max_failure_rate: Some(0.2),
                max_failed_rows: None,
                after_rows: 40,
                action: crate::domain::AbortAction::Cancel,
            }),
            template_variables: None,
            incremental: false,
            delivery: None,
        },
        status: JobStatus::Ingesting,
        counters: Counters::default(),
        error: None,
        rejected_sample: vec![],
        created_at: 1_000,
        ingested_at: None,
        completed_at: None,
        render_ms_total: 0,
        manifest: None,
        reopened: 0,
        checkpoint: None,
        progress_at: None,
        reopen_plan: None,
        manifest_checkpoint: None,
        control: Default::default(),
    }
}

/// The job most checks use.
pub fn job() -> Job {
    job_for("in/data.csv")
}

/// Stores `job()` and its chunk 0 (rows 0..4), queued.
pub async fn with_chunk(store: &dyn JobStore) -> (JobId, ChunkKey) {
    let job = job();
    store.create_job(&job).await.must("create job");
    let key = ChunkKey::initial(0);
    let chunk = Chunk::new(job.id.clone(), key, vec![0, 1, 2, 3]);
    store.put_chunks(&[chunk]).await.must("put chunk");
    (job.id, key)
}

/// `with_chunk`, with the chunk submitted as batch `b1` (intent at 100, recorded at 101).
pub async fn with_submitted_chunk(store: &dyn JobStore) -> (JobId, ChunkKey) {
    let (job, key) = with_chunk(store).await;
    store
        .begin_submit(&job, key, 100, GRACE)
        .await
        .must("begin submit");
    store
        .record_submitted(&job, key, "b1", 101)
        .await
        .must("record submitted");
    (job, key)
}

/// A batch's outcome: `rendered` rows, one failed for good, one reused (row 2) and, with `retry`,
/// one row (row 1) handed to a retry chunk; 250 ms of render time; asks for the alert.
pub fn completion(job: &JobId, key: ChunkKey, rendered: u64, retry: bool) -> ChunkCompletion {
    let outcome = ChunkOutcome {
        rendered: u32::try_from(rendered).unwrap_or(u32::MAX),
        failed: BTreeMap::from([(
            0,
            RowError {
                code: "INVALID_VARIABLE".into(),
                message: "bad".into(),
            },
        )]),
        retried: if retry { vec![1] } else { vec![] },
        cancelled: vec![],
        reused: BTreeMap::from([(2, "https://img.example/2.png".to_owned())]),
        duration_ms: Some(250),
        completed_at: Some(1_700_000_000),
    };
    let delta = Counters {
        rendered,
        failed: 1,
        reused: 1,
        retried: u64::from(retry),
        chunks: u64::from(retry),
        chunks_done: 1,
        ..Default::default()
    };
    ChunkCompletion {
        job: job.clone(),
        key,
        outcome,
        delta,
        retry: retry.then(|| Chunk::new(job.clone(), key.retry(), vec![1])),
        alert: true,
    }
}

pub fn manifest() -> ManifestLocation {
    let at = |key: &str| ObjectRef {
        bucket: "out".into(),
        key: key.into(),
    };
    ManifestLocation {
        csv: at("m.csv"),
        jsonl: at("m.jsonl"),
    }
}

async fn stored_job(store: &dyn JobStore, id: &JobId) -> Job {
    store.job(id).await.must("read job").must("job")
}

async fn stored_chunk(store: &dyn JobStore, job: &JobId, key: ChunkKey) -> Chunk {
    store
        .chunk(job, key)
        .await
        .must("read chunk")
        .must(&format!("chunk {}", key.label()))
}

async fn is_active(store: &dyn JobStore, id: &JobId) -> bool {
    store.active_jobs().await.must("active jobs").contains(id)
}

// ---- the contract ------------------------------------------------------------------------------

async fn creating_a_job_twice_keeps_the_first(store: Store) {
    let first = job();
    let again = Job {
        created_at: 2_000,
        ..first.clone()
    };
    let created = store.create_job(&first).await.must("create");
    assert_eq!(created, (first.clone(), true), "the first create is new");
    let repeated = store.create_job(&again).await.must("create again");
    assert_eq!(
        repeated,
        (first.clone(), false),
        "a repeat returns the stored job"
    );
    assert_eq!(store.job(&first.id).await.must("read"), Some(first.clone()));
    assert!(is_active(&*store, &first.id).await, "a new job is active");
    let other = job_for("in/other.csv").id;
    assert_eq!(store.job(&other).await.must("read unknown"), None);
}

async fn putting_chunks_again_does_not_reset_them(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    let again = |rows| vec![Chunk::new(job.clone(), key, rows)];
    store.begin_submit(&job, key, 10, GRACE).await.must("begin");
    store.put_chunks(&again(vec![0])).await.must("put again");
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.rows.len(), chunk.submitting_since),
        (ChunkState::Submitting, 4, Some(10)),
        "a submitting chunk is left as it was"
    );
    store
        .record_submitted(&job, key, "b1", 11)
        .await
        .must("record");
    let new = Chunk::new(job.clone(), ChunkKey::initial(1), vec![4]);
    let mut reingested = again(vec![0, 1, 2, 3]);
    reingested.push(new.clone());
    store.put_chunks(&reingested).await.must("re-ingest");
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.batch_id.as_deref()),
        (ChunkState::Submitted, Some("b1")),
        "a submitted chunk is left as it was"
    );
    assert_eq!(
        stored_chunk(&*store, &job, new.key).await,
        new,
        "a new chunk is created"
    );
}

async fn begin_submit_proceeds_once_then_waits_out_the_grace_period(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    let begin = |now| store.begin_submit(&job, key, now, GRACE);
    assert_eq!(
        begin(100).await.must("begin"),
        BeginSubmit::Proceed { attempt: 1 }
    );
    assert_eq!(
        begin(159).await.must("begin"),
        BeginSubmit::InProgress { since: 100 },
        "within the grace period"
    );
    // Exactly at the end of the grace period the adapters differ (see their own tests).
    assert_eq!(
        begin(161).await.must("begin"),
        BeginSubmit::Proceed { attempt: 2 },
        "after the grace period the attempt is taken over"
    );
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.submitting_since, chunk.submit_attempts),
        (ChunkState::Submitting, Some(161), 2)
    );
}

async fn a_redelivered_message_finds_the_batch_id(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    store
        .record_submitted(&job, key, "b1", 102)
        .await
        .must("record the same batch again");
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.batch_id.as_deref(), chunk.submitted_at),
        (ChunkState::Submitted, Some("b1"), Some(101)),
        "a repeated record_submitted changes nothing"
    );
    assert_eq!(
        store
            .begin_submit(&job, key, 500, GRACE)
            .await
            .must("begin"),
        BeginSubmit::AlreadySubmitted {
            batch_id: "b1".into()
        }
    );
    let found = store.chunk_by_batch("b1").await.must("chunk by batch");
    assert_eq!(found, Some((job, key)));
    let unknown = store
        .chunk_by_batch("b_unknown")
        .await
        .must("unknown batch");
    assert_eq!(unknown, None);
}

async fn recording_a_batch_for_an_unknown_chunk_is_an_error(store: Store) {
    let (job, _) = with_chunk(&*store).await;
    let result = store
        .record_submitted(&job, ChunkKey::initial(7), "b7", 101)
        .await;
    let error = result.err().must("an error");
    assert!(
        !error.retryable,
        "a missing chunk does not come back: {error}"
    );
}

async fn releasing_a_submit_requeues_only_a_submitting_chunk(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    store.release_submit(&job, key).await.must("release queued");
    let unknown = ChunkKey::initial(7);
    store
        .release_submit(&job, unknown)
        .await
        .must("release unknown");
    store
        .begin_submit(&job, key, 100, GRACE)
        .await
        .must("begin");
    store.release_submit(&job, key).await.must("release");
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.submitting_since),
        (ChunkState::Queued, None)
    );
    assert_eq!(
        store
            .begin_submit(&job, key, 101, GRACE)
            .await
            .must("begin"),
        BeginSubmit::Proceed { attempt: 2 },
        "a released chunk may be submitted at once"
    );
    store
        .record_submitted(&job, key, "b1", 102)
        .await
        .must("record");
    store
        .release_submit(&job, key)
        .await
        .must("release submitted");
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        chunk.state,
        ChunkState::Submitted,
        "a submitted chunk stays"
    );
}

async fn begin_submit_reports_unknown_and_completed_chunks(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    let other = ChunkKey::initial(7);
    assert_eq!(store.chunk(&job, other).await.must("read"), None);
    assert_eq!(
        store
            .begin_submit(&job, other, 1, GRACE)
            .await
            .must("begin"),
        BeginSubmit::Unknown
    );
    let done = completion(&job, key, 3, false);
    assert!(store.complete_chunk(&done).await.must("complete"));
    assert_eq!(
        store
            .begin_submit(&job, key, 200, GRACE)
            .await
            .must("begin"),
        BeginSubmit::Completed
    );
}

/// Two deliveries of one `batch.completed` complete the chunk at the same moment: exactly one
/// applies, and its write stays. (Plain moto breaks this about once in 50-100 races on a table
/// of 1,000 items, too rarely for this size to catch; the tests' moto is serialised for it:
/// docs/table-design.md.)
async fn racing_completions_apply_exactly_once(store: Store) {
    const CHUNKS: u32 = 50;
    let job = job();
    store.create_job(&job).await.must("create job");
    let keys: Vec<ChunkKey> = (0..CHUNKS).map(ChunkKey::initial).collect();
    let chunks: Vec<Chunk> = keys
        .iter()
        .map(|key| Chunk::new(job.id.clone(), *key, vec![0, 1, 2, 3]))
        .collect();
    store.put_chunks(&chunks).await.must("put chunks");
    // A table of realistic size: a store that copies or scans it per write widens the race.
    let render = RenderRecord {
        url: "https://img.example/x.png".into(),
        image_id: None,
        rendered_at: None,
        recorded_at: 100,
    };
    futures::stream::iter(0..200)
        .for_each_concurrent(16, |i| {
            let (store, render) = (&store, &render);
            async move {
                store
                    .record_render(&format!("filler{i}"), render)
                    .await
                    .must("record a render");
            }
        })
        .await;
    for key in &keys {
        store
            .begin_submit(&job.id, *key, 100, GRACE)
            .await
            .must("begin submit");
        store
            .record_submitted(&job.id, *key, &format!("b{}", key.seq), 101)
            .await
            .must("record submitted");
    }
    for key in &keys {
        let done = completion(&job.id, *key, 2, false);
        let (a, b) = futures::join!(store.complete_chunk(&done), store.complete_chunk(&done));
        let mut applied = [a, b].iter().filter(|r| matches!(r, Ok(true))).count();
        if applied == 0 {
            // DynamoDB may cancel both racers (TransactionConflict): the next delivery applies it.
            applied = usize::from(
                store
                    .complete_chunk(&done)
                    .await
                    .must("complete after a conflict"),
            );
        }
        assert_eq!(applied, 1, "chunk {}: completions applied", key.label());
        let chunk = stored_chunk(&*store, &job.id, *key).await;
        assert_eq!(chunk.state, ChunkState::Completed, "chunk {}", key.label());
    }
    let counters = stored_job(&*store, &job.id).await.counters;
    let n = u64::from(CHUNKS);
    assert_eq!(
        (counters.rendered, counters.failed, counters.chunks_done),
        (2 * n, n, n),
        "every applied completion counted once"
    );
}

async fn a_queued_chunk_does_not_complete(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    let queued = store.complete_chunk(&completion(&job, key, 3, false)).await;
    assert!(
        !queued.must("complete queued"),
        "a queued chunk does not complete"
    );
    assert_eq!(stored_job(&*store, &job).await.counters.rendered, 0);
}

async fn a_chunk_completes_exactly_once(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    let done = completion(&job, key, 2, true);
    assert!(
        store.complete_chunk(&done).await.must("complete"),
        "applied"
    );
    let again = store.complete_chunk(&done).await.must("complete again");
    assert!(!again, "a second completion is not applied");
    let stored = stored_job(&*store, &job).await;
    let expected = Counters {
        rendered: 2,
        failed: 1,
        retried: 1,
        reused: 1,
        chunks: 1,
        chunks_done: 1,
        ..Default::default()
    };
    assert_eq!((stored.counters, stored.render_ms_total), (expected, 250));
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.outcome),
        (ChunkState::Completed, Some(done.outcome))
    );
}

async fn the_retry_chunk_is_created_once_and_queued(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    let done = completion(&job, key, 2, true);
    store.complete_chunk(&done).await.must("complete");
    store.complete_chunk(&done).await.must("complete again");
    let chunks = store.chunks_of_job(&job).await.must("chunks of job");
    let states: Vec<_> = chunks.iter().map(|c| (c.key, c.state)).collect();
    assert_eq!(
        states,
        vec![
            (key, ChunkState::Completed),
            (key.retry(), ChunkState::Queued)
        ]
    );
    assert_eq!(
        chunks[1].rows,
        vec![1],
        "the retry chunk holds the retried rows"
    );
}

async fn a_completion_applies_when_its_retry_chunk_exists_already(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    let existing = Chunk::new(job.clone(), key.retry(), vec![1, 2]);
    store
        .put_chunks(std::slice::from_ref(&existing))
        .await
        .must("put retry");
    let done = completion(&job, key, 2, true);
    assert!(store.complete_chunk(&done).await.must("complete"));
    let stored = stored_job(&*store, &job).await;
    let counters = (stored.counters.chunks_done, stored.render_ms_total);
    assert_eq!(counters, (1, 250));
    let retry = stored_chunk(&*store, &job, key.retry()).await;
    assert_eq!(retry, existing, "the existing retry chunk is left as it is");
}

async fn completing_a_chunk_of_a_missing_job_changes_nothing(store: Store) {
    let orphan = job_for("in/never-created.csv").id;
    let key = ChunkKey::initial(0);
    let chunk = Chunk::new(orphan.clone(), key, vec![0, 1]);
    store.put_chunks(&[chunk]).await.must("put chunk");
    store
        .begin_submit(&orphan, key, 100, GRACE)
        .await
        .must("begin");
    store
        .record_submitted(&orphan, key, "b1", 101)
        .await
        .must("record");
    let result = store
        .complete_chunk(&completion(&orphan, key, 1, true))
        .await;
    let error = result.err().must("an error");
    assert!(!error.retryable, "the job will not appear: {error}");
    let chunk = stored_chunk(&*store, &orphan, key).await;
    assert_eq!(chunk.state, ChunkState::Submitted, "the chunk is unchanged");
    let retry = store.chunk(&orphan, key.retry()).await.must("read retry");
    assert_eq!(retry, None, "no retry chunk");
}

async fn finish_ingest_applies_once_and_keeps_batch_counters(store: Store) {
    let (id, key) = with_submitted_chunk(&*store).await;
    let done = completion(&id, key, 2, true);
    store.complete_chunk(&done).await.must("complete");
    let mut ingested = job();
    ingested.status = JobStatus::Running;
    ingested.counters = Counters {
        rows: 10,
        rejected: 1,
        chunks: 3,
        ..Default::default()
    };
    ingested.rejected_sample = vec![(4, "missing title".into())];
    ingested.ingested_at = Some(120);
    store.finish_ingest(&ingested).await.must("finish ingest");
    store
        .finish_ingest(&ingested)
        .await
        .must("finish ingest again");
    let stored = stored_job(&*store, &id).await;
    let expected = Counters {
        rows: 10,
        rejected: 1,
        rendered: 2,
        failed: 1,
        retried: 1,
        chunks: 4,
        chunks_done: 1,
        cancelled: 0,
        reused: 1,
    };
    assert_eq!(
        (stored.status, stored.counters, stored.ingested_at),
        (JobStatus::Running, expected, Some(120))
    );
    assert_eq!(stored.rejected_sample, ingested.rejected_sample);
}

async fn an_ingest_checkpoint_moves_only_forward_and_only_while_ingesting(store: Store) {
    let job = job();
    store.create_job(&job).await.must("create");
    let at = |offset: u64, rows: u64| IngestCheckpoint {
        position: ReadPosition {
            offset,
            rows,
            closed: false,
        },
        rejected: 1,
        chunks: rows / 100,
        pieces: 2,
        saved_at: 500 + offset as i64,
    };
    let sample = vec![(3, "missing title".to_owned())];
    assert!(
        store
            .save_checkpoint(&job.id, &at(1_000, 200), &sample)
            .await
            .must("save")
    );
    // A piece touching the same point (a fresh `saved_at`) is not behind.
    assert!(
        store
            .save_checkpoint(&job.id, &at(1_000, 200), &sample)
            .await
            .must("touch")
    );
    assert!(
        !store
            .save_checkpoint(&job.id, &at(400, 100), &[])
            .await
            .must("behind"),
        "a checkpoint behind the stored one is refused"
    );
    let stored = stored_job(&*store, &job.id).await;
    assert_eq!(
        (stored.checkpoint, stored.rejected_sample),
        (Some(at(1_000, 200)), sample)
    );
    assert!(
        store
            .save_checkpoint(&job.id, &at(9_000, 900), &[])
            .await
            .must("forward")
    );
    let mut ingested = job.clone();
    ingested.status = JobStatus::Running;
    store.finish_ingest(&ingested).await.must("finish ingest");
    assert!(
        !store
            .save_checkpoint(&job.id, &at(10_000, 1_000), &[])
            .await
            .must("after ingest"),
        "no checkpoint once the job is past ingest"
    );
    assert!(
        !store
            .save_checkpoint(&JobId::parse("job_nope").must("id"), &at(1, 1), &[])
            .await
            .must("missing"),
        "no checkpoint for a missing job"
    );
}

async fn finishing_needs_the_job(store: Store) {
    let missing = job();
    let error = store.finish_ingest(&missing).await.err().must("ingest");
    assert!(!error.retryable, "finish_ingest: {error}");
    let result = store
        .finish_job(&missing.id, JobStatus::Completed, &manifest(), 9)
        .await;
    let error = result.err().must("finish_job of a missing job fails");
    assert!(!error.retryable, "finish_job: {error}");
    assert_eq!(store.job(&missing.id).await.must("read"), None);
}

async fn a_job_transitions_only_from_the_expected_status(store: Store) {
    let (id, _) = with_chunk(&*store).await;
    let moved = store
        .transition_job(&id, JobStatus::Ingesting, JobStatus::Running)
        .await
        .must("transition");
    assert!(moved);
    let stale = store
        .transition_job(&id, JobStatus::Ingesting, JobStatus::Finishing)
        .await
        .must("stale transition");
    assert!(!stale, "the job is no longer ingesting");
    assert_eq!(stored_job(&*store, &id).await.status, JobStatus::Running);
    let missing = JobId::parse("job_abc").must("job id");
    let moved = store
        .transition_job(&missing, JobStatus::Running, JobStatus::Finishing)
        .await
        .must("transition missing");
    assert!(!moved, "a missing job does not transition");
}

async fn finishing_a_job_records_status_manifest_and_time_and_deactivates_it(store: Store) {
    let (id, _) = with_chunk(&*store).await;
    assert!(is_active(&*store, &id).await, "active before");
    store
        .finish_job(&id, JobStatus::Partial, &manifest(), 77)
        .await
        .must("finish job");
    let stored = stored_job(&*store, &id).await;
    assert_eq!(
        (stored.status, stored.manifest, stored.completed_at),
        (JobStatus::Partial, Some(manifest()), Some(77))
    );
    assert!(
        !is_active(&*store, &id).await,
        "a finished job is not active"
    );
}

// ---- the in-flight window (`domain::window`) ---------------------------------------------------

fn jk(job: u8, seq: u32) -> (JobId, ChunkKey) {
    (
        JobId::parse(&format!("job_{job:02}")).must("job id"),
        ChunkKey::initial(seq),
    )
}

async fn the_window_holds_at_most_size_slots_and_a_holder_renews(store: Store) {
    let (a, b, c) = (jk(1, 1), jk(1, 2), jk(2, 1));
    assert!(store.acquire_slot(&a.0, a.1, 2, 10, 100).await.must("a"));
    assert!(store.acquire_slot(&b.0, b.1, 2, 10, 100).await.must("b"));
    assert!(
        !store
            .acquire_slot(&c.0, c.1, 2, 10, 100)
            .await
            .must("c: full")
    );
    // The holder renews its own slot (a redelivered message), never taking a second one.
    assert!(
        store
            .acquire_slot(&a.0, a.1, 2, 20, 200)
            .await
            .must("a renews")
    );
    let live = store.live_slots(30).await.must("live");
    assert_eq!(live.len(), 2, "{live:?}");
    let renewed = live
        .iter()
        .find(|s| s.is_held_by(&a.0, a.1))
        .must("a's slot");
    assert_eq!((renewed.taken_at, renewed.expires_at), (20, 200));
}

async fn an_expired_slot_is_free_and_release_frees_only_the_holders(store: Store) {
    let (a, b, c) = (jk(1, 1), jk(1, 2), jk(2, 1));
    assert!(store.acquire_slot(&a.0, a.1, 1, 10, 50).await.must("a"));
    assert!(
        !store
            .acquire_slot(&b.0, b.1, 1, 49, 100)
            .await
            .must("b before expiry")
    );
    assert!(
        store
            .acquire_slot(&b.0, b.1, 1, 50, 100)
            .await
            .must("b at expiry")
    );
    assert_eq!(store.live_slots(60).await.must("live").len(), 1);
    assert!(!store.release_slot(&a.0, a.1).await.must("a lost it"));
    assert!(!store.release_slot(&c.0, c.1).await.must("c never held one"));
    assert!(store.release_slot(&b.0, b.1).await.must("b releases"));
    assert!(store.live_slots(60).await.must("live").is_empty());
    assert!(store.acquire_slot(&c.0, c.1, 1, 60, 100).await.must("c"));
}

async fn racing_acquirers_never_overfill_the_window(store: Store) {
    let tries = futures::stream::iter(1..=12u32)
        .map(|seq| {
            let store = store.clone();
            async move {
                let (job, key) = jk((seq % 3) as u8, seq);
                store
                    .acquire_slot(&job, key, 3, 10, 100)
                    .await
                    .must("acquire")
            }
        })
        .buffer_unordered(12)
        .collect::<Vec<bool>>()
        .await;
    assert_eq!(tries.iter().filter(|got| **got).count(), 3, "{tries:?}");
    assert_eq!(store.live_slots(10).await.must("live").len(), 3);
}

async fn parked_chunks_are_served_one_job_after_another(store: Store) {
    for (job, seq) in [(1, 3), (1, 1), (1, 2), (2, 7), (2, 8), (3, 1)] {
        let (j, k) = jk(job, seq);
        store.park(&j, k, 5).await.must("park");
        store.park(&j, k, 6).await.must("park again");
    }
    assert_eq!(store.parked().await.must("parked").len(), 6);
    let mut order = Vec::new();
    while let Some((job, key)) = store.next_parked(&Default::default()).await.must("next") {
        assert!(store.unpark(&job, key).await.must("unpark"));
        order.push(jk_label(&job, key));
    }
    assert_eq!(
        order,
        ["01/1", "02/7", "03/1", "01/2", "02/8", "01/3"],
        "jobs take turns, each job's chunks in key order"
    );
}

fn jk_label(job: &JobId, key: ChunkKey) -> String {
    format!("{}/{}", &job.as_str()[4..], key.seq)
}

async fn jobs_held_back_are_passed_over_in_turn(store: Store) {
    for (job, seq) in [(1, 1), (2, 1), (2, 2), (3, 1)] {
        let (j, k) = jk(job, seq);
        store.park(&j, k, 5).await.must("park");
    }
    let held = BTreeSet::from([jk(2, 1).0]);
    let mut order = Vec::new();
    while let Some((job, key)) = store.next_parked(&held).await.must("next") {
        assert!(store.unpark(&job, key).await.must("unpark"));
        order.push(jk_label(&job, key));
    }
    assert_eq!(order, ["01/1", "03/1"], "job 2 is passed over");
    let (j, k) = jk(2, 1);
    assert_eq!(
        store.next_parked(&BTreeSet::new()).await.must("next"),
        Some((j, k)),
        "and served once no longer held"
    );
}

async fn a_parked_chunk_is_unparked_once(store: Store) {
    let (j, k) = jk(1, 1);
    assert!(!store.unpark(&j, k).await.must("never parked"));
    store.park(&j, k, 5).await.must("park");
    assert!(store.unpark(&j, k).await.must("first"));
    assert!(!store.unpark(&j, k).await.must("second"));
    assert_eq!(
        store.next_parked(&Default::default()).await.must("next"),
        None
    );
}

async fn the_request_budget_is_one_bucket_for_every_caller(store: Store) {
    let budget = crate::ports::RequestBudget::per_minute(60);
    for n in 0..2 {
        let wait = store.take_request(budget, 100_000).await.must("take");
        assert_eq!(wait, None, "request {n}: the burst");
    }
    let wait = store.take_request(budget, 100_000).await.must("third");
    assert!(wait.is_some_and(|w| w > Duration::ZERO), "{wait:?}");
    let wait = store.take_request(budget, 101_100).await.must("refilled");
    assert_eq!(wait, None, "a token refills in ~1.03 s");
}

async fn pausing_reports_true_only_to_the_first_caller_until_resumed(store: Store) {
    assert_eq!(store.submissions_paused().await.must("read"), None);
    assert!(store.pause_submissions("quota", 1).await.must("pause"));
    assert!(!store.pause_submissions("auth", 2).await.must("pause again"));
    let reason = store.submissions_paused().await.must("read");
    assert_eq!(reason.as_deref(), Some("quota"), "the first reason stays");
    store.resume_submissions().await.must("resume");
    assert_eq!(store.submissions_paused().await.must("read"), None);
    assert!(
        store
            .pause_submissions("auth", 3)
            .await
            .must("pause after resume")
    );
}

async fn renders_and_failures_are_looked_up_by_fingerprint(store: Store) {
    let render = RenderRecord {
        url: "https://img/1.png".into(),
        image_id: Some("img_1".into()),
        rendered_at: Some("2024-05-01T10:00:00Z".into()),
        recorded_at: 5,
    };
    store
        .record_render("fp1", &render)
        .await
        .must("record render");
    store
        .record_render("fp1", &render)
        .await
        .must("record again");
    let failure = FailureRecord {
        code: "RENDER_TIMEOUT".into(),
        message: "slow".into(),
        recorded_at: 6,
    };
    store
        .record_failure("fp2", &failure)
        .await
        .must("record failure");
    let wanted = ["fp1", "fp2", "fp3", "fp1"].map(String::from);
    let renders = store.renders(&wanted).await.must("renders");
    assert_eq!(renders, HashMap::from([("fp1".to_owned(), render)]));
    let failures = store.failures(&wanted).await.must("failures");
    assert_eq!(failures, HashMap::from([("fp2".to_owned(), failure)]));
    assert!(store.renders(&[]).await.must("no renders").is_empty());
}

async fn orphans_are_kept_and_reveal_an_early_batch_completion(store: Store) {
    let big = "x".repeat(100_000);
    let recorded = store.record_orphan("batch.completed", "b9", &big, 4).await;
    recorded.must("a large orphan body is kept (truncated if need be)");
    let other_kind = store.record_orphan("render.completed", "b7", "{}", 5).await;
    other_kind.must("record another kind");
    assert!(store.batch_completed_early("b9").await.must("early b9"));
    assert!(!store.batch_completed_early("b8").await.must("early b8"));
    let b7 = store.batch_completed_early("b7").await.must("early b7");
    assert!(!b7, "only a batch.completed orphan counts");
}

async fn chunks_of_job_lists_one_jobs_chunks_in_key_order(store: Store) {
    let job = job();
    store.create_job(&job).await.must("create");
    // Labels stop sorting like keys past seq 99 999 and attempt 9; the order must not.
    let key = |seq, attempt| ChunkKey { seq, attempt };
    let keys = [
        key(2, 0),
        key(100_000, 0),
        key(0, 1),
        key(1, 10),
        key(1, 0),
        key(99_999, 0),
        key(0, 0),
        key(1, 2),
    ];
    let chunks: Vec<Chunk> = keys
        .iter()
        .map(|&k| Chunk::new(job.id.clone(), k, vec![u64::from(k.seq)]))
        .collect();
    store.put_chunks(&chunks).await.must("put chunks");
    let other = job_for("in/other.csv").id;
    let stranger = Chunk::new(other, key(0, 0), vec![0]);
    store
        .put_chunks(&[stranger])
        .await
        .must("put other job's chunk");
    let listed: Vec<ChunkKey> = store
        .chunks_of_job(&job.id)
        .await
        .must("chunks of job")
        .iter()
        .map(|c| c.key)
        .collect();
    let mut expected = keys.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    // A page by key: the existing ones, in key order, each once, none of another job's.
    let mut asked: Vec<ChunkKey> = (0..150).map(|seq| key(seq, 0)).collect();
    asked.extend([key(1, 10), key(1, 10), key(1, 3), key(100_000, 0)]);
    asked.reverse();
    let page: Vec<ChunkKey> = store
        .chunks_by_key(&job.id, &asked)
        .await
        .must("chunks by key")
        .iter()
        .map(|c| c.key)
        .collect();
    let expected = vec![key(0, 0), key(1, 0), key(1, 10), key(2, 0), key(100_000, 0)];
    assert_eq!(page, expected);
}

async fn reopening_applies_once_only_from_the_expected_status(store: Store) {
    let (job, key) = with_submitted_chunk(&*store).await;
    store
        .complete_chunk(&completion(&job, key, 2, false))
        .await
        .must("complete");
    let fresh = Chunk::new(job.clone(), ChunkKey::initial(1), vec![0, 2]).queued_at(300);
    let reopen = Reopen {
        job: job.clone(),
        from: JobStatus::Partial,
        chunks: vec![fresh.clone()],
        planned: 1,
        unfailed: 1,
        unrendered: 1,
    };
    let early = store.reopen_job(&reopen).await.must("reopen ingesting");
    assert!(!early, "the job is still ingesting");
    store
        .finish_job(&job, JobStatus::Partial, &manifest(), 200)
        .await
        .must("finish");
    assert!(!is_active(&*store, &job).await, "finished");
    assert!(store.reopen_job(&reopen).await.must("reopen"), "applied");
    let again = store.reopen_job(&reopen).await.must("reopen again");
    assert!(!again, "only the first reopen applies");
    let stored = stored_job(&*store, &job).await;
    let expected = Counters {
        rendered: 1,
        failed: 0,
        retried: 2,
        reused: 1,
        chunks: 1,
        chunks_done: 1,
        ..Default::default()
    };
    assert_eq!(
        (stored.status, stored.counters, stored.reopened),
        (JobStatus::Running, expected, 1)
    );
    assert_eq!(stored.completed_at, None, "no longer finished");
    assert!(is_active(&*store, &job).await, "active again");
    assert_eq!(stored_chunk(&*store, &job, fresh.key).await, fresh);
}

async fn reopening_refuses_an_existing_chunk_and_changes_nothing(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    store
        .finish_job(&job, JobStatus::Failed, &manifest(), 200)
        .await
        .must("finish");
    let before = stored_job(&*store, &job).await;
    let new = Chunk::new(job.clone(), ChunkKey::initial(1), vec![9]);
    let clash = Chunk::new(job.clone(), key, vec![0]);
    let reopen = Reopen {
        job: job.clone(),
        from: JobStatus::Failed,
        chunks: vec![new.clone(), clash],
        planned: 2,
        unfailed: 2,
        unrendered: 0,
    };
    let result = store.reopen_job(&reopen).await;
    assert!(result.is_err(), "an existing chunk is refused: {result:?}");
    assert_eq!(stored_job(&*store, &job).await, before, "job unchanged");
    assert!(!is_active(&*store, &job).await, "still not active");
    assert_eq!(store.chunk(&job, new.key).await.must("read"), None);
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(chunk.rows.len(), 4, "the existing chunk is unchanged");
}

async fn a_job_alert_is_claimed_once_per_job_and_kind(store: Store) {
    let (job, _) = with_chunk(&*store).await;
    let other = job_for("in/other.csv").id;
    let claims = [
        (&job, "job_deadline_exceeded", true),
        (&job, "job_deadline_exceeded", false),
        (&job, "another_kind", true),
        (&other, "job_deadline_exceeded", true),
    ];
    for (n, (job, kind, first)) in claims.into_iter().enumerate() {
        let now = i64::try_from(n).unwrap_or(0);
        let claimed = store.claim_alert(job, kind, now).await.must(kind);
        assert_eq!(claimed, first, "claim #{n}: {kind}");
    }
    let chunks = store.chunks_of_job(&job).await.must("chunks of job");
    assert_eq!(chunks.len(), 1, "an alert mark is not a chunk");
}

// ---- the store against the domain's rules --------------------------------------------------------

/// The chunk states of the normal path, in order: each is reached from the one before.
const CHUNK_STATES: [ChunkState; 4] = [
    ChunkState::Queued,
    ChunkState::Submitting,
    ChunkState::Submitted,
    ChunkState::Completed,
];

/// A request to a chunk, as the table runs it.
#[derive(Debug, Clone, Copy)]
enum ChunkRequest {
    /// `begin_submit` at this time.
    Begin(i64),
    /// `record_submitted` of batch `b1` at 101: the batch id the chunk has or will have
    /// (another one is an error in SQLite: `check_a_late_record_submitted_keeps_the_first_batch_id`).
    RecordSubmitted,
    ReleaseSubmit,
    /// `complete_chunk` of `completion(…, 3, false)`.
    Complete,
}

/// When the chunk's submit attempt starts (reaching `submitting`).
const BEGIN_AT: i64 = 100;

/// The requests of the table. The `begin_submit`s fall within and well after the grace period of
/// the attempt started at `BEGIN_AT`, away from its end, where the stores differ (DynamoDB
/// takes over strictly after the grace period, the others at its end).
const CHUNK_REQUESTS: [ChunkRequest; 5] = [
    ChunkRequest::Begin(BEGIN_AT + 30),
    ChunkRequest::Begin(BEGIN_AT + GRACE.as_secs() as i64 + 40),
    ChunkRequest::RecordSubmitted,
    ChunkRequest::ReleaseSubmit,
    ChunkRequest::Complete,
];

/// One request's result: the answer (as text, to compare across requests), then the chunk and
/// the job as stored after it.
type Step = (String, Chunk, Job);

/// Runs `request` against the store.
async fn chunk_request_in_store(
    store: &dyn JobStore,
    job: &JobId,
    key: ChunkKey,
    request: ChunkRequest,
) -> Step {
    let answer = match request {
        ChunkRequest::Begin(now) => {
            let answer = store.begin_submit(job, key, now, GRACE).await;
            format!("{:?}", answer.must("begin_submit"))
        }
        ChunkRequest::RecordSubmitted => {
            let recorded = store.record_submitted(job, key, "b1", 101).await;
            format!("{:?}", recorded.must("record_submitted"))
        }
        ChunkRequest::ReleaseSubmit => {
            let released = store.release_submit(job, key).await;
            format!("{:?}", released.must("release_submit"))
        }
        ChunkRequest::Complete => {
            let done = completion(job, key, 3, false);
            let applied = store.complete_chunk(&done).await;
            format!("{:?}", applied.must("complete_chunk"))
        }
    };
    let chunk = stored_chunk(store, job, key).await;
    (answer, chunk, stored_job(store, job).await)
}

/// Runs `request` through the domain's rules, as the port answers it.
fn chunk_request_in_rules(chunk: &Chunk, job: &Job, request: ChunkRequest) -> Step {
    let mut job = job.clone();
    let (answer, chunk) = match request {
        ChunkRequest::Begin(now) => {
            let (answer, chunk) = chunk.begin_submit(now, GRACE).after(chunk);
            (format!("{answer:?}"), chunk)
        }
        ChunkRequest::RecordSubmitted => {
            let (answer, chunk) = chunk.record_submitted("b1", 101).after(chunk);
            assert!(
                !matches!(answer, RecordSubmitted::OtherBatch { .. }),
                "the table offers the chunk's own batch id"
            );
            (format!("{:?}", ()), chunk)
        }
        ChunkRequest::ReleaseSubmit => {
            let (answer, chunk) = chunk.release_submit().after(chunk);
            (format!("{answer:?}"), chunk)
        }
        ChunkRequest::Complete => {
            let done = completion(&job.id, chunk.key, 3, false);
            let (answer, chunk) = chunk.complete(&done.outcome).after(chunk);
            if answer.applied() {
                job.apply_outcome(&done.outcome, &done.delta);
            }
            (format!("{:?}", answer.applied()), chunk)
        }
    };
    (answer, chunk, job)
}

/// The request that moves a chunk from each state of `CHUNK_STATES` to the next.
fn request_reaching(state: ChunkState) -> Option<ChunkRequest> {
    match state {
        ChunkState::Queued => None,
        ChunkState::Submitting => Some(ChunkRequest::Begin(BEGIN_AT)),
        ChunkState::Submitted => Some(ChunkRequest::RecordSubmitted),
        ChunkState::Completed => Some(ChunkRequest::Complete),
    }
}

/// For every chunk state × request, the store answers and stores what the domain's rules say
/// (for DynamoDB: its condition expressions agree with the rules). Each case has its own job;
/// the chunk reaches its state by the store's own requests, checked against the rules too.
async fn every_chunk_state_answers_every_request_as_the_domain_rules_say(store: Store) {
    let mut case = 0;
    for state in CHUNK_STATES {
        for request in CHUNK_REQUESTS {
            case += 1;
            let job = job_for(&format!("in/rules-{case}.csv"));
            store.create_job(&job).await.must("create job");
            let key = ChunkKey::initial(0);
            let chunk = Chunk::new(job.id.clone(), key, vec![0, 1, 2, 3]);
            store
                .put_chunks(std::slice::from_ref(&chunk))
                .await
                .must("put chunk");
            let mut expected: Step = (String::new(), chunk, job.clone());
            let path = CHUNK_STATES.iter().take_while(|s| **s != state);
            for step in path.chain([&state]).filter_map(|s| request_reaching(*s)) {
                let ruled = chunk_request_in_rules(&expected.1, &expected.2, step);
                let stored = chunk_request_in_store(&*store, &job.id, key, step).await;
                assert_eq!(stored, ruled, "{state:?}: reaching it by {step:?}");
                expected = ruled;
            }
            assert_eq!(expected.1.state, state, "the table reaches {state:?}");
            let ruled = chunk_request_in_rules(&expected.1, &expected.2, request);
            let stored = chunk_request_in_store(&*store, &job.id, key, request).await;
            assert_eq!(stored, ruled, "a {state:?} chunk asked {request:?}");
        }
    }
}

const JOB_STATUSES: [JobStatus; 7] = [
    JobStatus::Ingesting,
    JobStatus::Running,
    JobStatus::Finishing,
    JobStatus::Completed,
    JobStatus::Partial,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// A job stored under `key`, brought to `status`; returns it as stored.
async fn job_in_status(store: &Store, key: &str, status: JobStatus) -> Job {
    let mut job = job_for(key);
    store.create_job(&job).await.must("create job");
    if status != JobStatus::Ingesting {
        let reached = store
            .transition_job(&job.id, JobStatus::Ingesting, status)
            .await
            .must("reach the status");
        assert!(reached, "{status:?} is reached from ingesting");
        job.status = status;
    }
    job
}

/// For every job status × expected status, `transition_job` answers and stores what
/// `Job::transition` says (for DynamoDB: its compare-and-set condition agrees with the rule).
async fn every_job_status_moves_only_as_the_domain_rules_say(store: Store) {
    for status in JOB_STATUSES {
        let key = format!("in/status-{}.csv", status.as_str());
        let mut expected = job_in_status(&store, &key, status).await;
        let id = expected.id.clone();
        // Every `from` but the stored status is refused; the stored one moves the job on.
        let others = JOB_STATUSES.iter().filter(|s| **s != status);
        for &from in others.chain([&status]) {
            let to = if from == JobStatus::Running {
                JobStatus::Finishing
            } else {
                JobStatus::Running
            };
            let (answer, next) = expected.transition(from, to).after(&expected);
            let moved = store.transition_job(&id, from, to).await;
            let moved = moved.must("transition job");
            assert_eq!(moved, answer, "a {status:?} job asked {from:?} → {to:?}");
            let stored = stored_job(&*store, &id).await;
            assert_eq!(stored, next, "a {status:?} job after {from:?} → {to:?}");
            expected = next;
        }
    }
}

/// Every job status × a sequence of control changes (repeats, a cancel, changes after it): the
/// store answers and stores what `Job::control` says.
async fn every_control_change_applies_as_the_domain_rule_says(store: Store) {
    let changes = [
        ControlChange::Pause {
            reason: "look".into(),
        },
        ControlChange::Pause {
            reason: "again".into(),
        },
        ControlChange::MaxInFlight(Some(2)),
        ControlChange::MaxInFlight(Some(2)),
        ControlChange::Resume,
        ControlChange::Resume,
        ControlChange::MaxInFlight(None),
        ControlChange::MaxInFlight(None),
        ControlChange::Pause {
            reason: "before the cancel".into(),
        },
        ControlChange::Cancel {
            reason: "stop".into(),
        },
        ControlChange::Cancel {
            reason: "stop again".into(),
        },
        ControlChange::Resume,
        ControlChange::MaxInFlight(Some(5)),
    ];
    for status in JOB_STATUSES {
        let key = format!("in/control-{}.csv", status.as_str());
        let mut expected = job_in_status(&store, &key, status).await;
        let id = expected.id.clone();
        for change in &changes {
            let (answer, next) = expected.control(change).after(&expected);
            let got = store.control_job(&id, change).await.must("control job");
            assert_eq!(got, Some(answer), "a {status:?} job asked {change:?}");
            let stored = stored_job(&*store, &id).await;
            assert_eq!(stored, next, "a {status:?} job after {change:?}");
            expected = next;
        }
    }
    let missing = JobId::parse("job_missing").must("id");
    let none = store.control_job(&missing, &ControlChange::Resume).await;
    assert_eq!(none.must("control a missing job"), None);
}

/// A chunk ended unsent by a cancel: its rows count `cancelled`, and the job's final status is
/// `cancelled`.
async fn a_cancelled_chunk_counts_its_rows_cancelled(store: Store) {
    let (job, key) = with_chunk(&*store).await;
    store
        .begin_submit(&job, key, 100, GRACE)
        .await
        .must("begin submit");
    let completion = ChunkCompletion {
        job: job.clone(),
        key,
        outcome: ChunkOutcome {
            cancelled: vec![0, 1, 2, 3],
            ..ChunkOutcome::default()
        },
        delta: Counters {
            cancelled: 4,
            chunks_done: 1,
            ..Counters::default()
        },
        retry: None,
        alert: false,
    };
    assert!(store.complete_chunk(&completion).await.must("complete"));
    let stored = stored_job(&*store, &job).await;
    assert_eq!(
        (stored.counters.cancelled, stored.counters.chunks_done),
        (4, 1)
    );
    let chunk = stored_chunk(&*store, &job, key).await;
    assert_eq!(chunk.outcome.map(|o| o.cancelled), Some(vec![0, 1, 2, 3]));
}

// ---- behaviours not every adapter shares -------------------------------------------------------

/// Memory and DynamoDB: a `record_submitted` with another batch id for a chunk already submitted
/// is ignored, the first batch id stays (SQLite refuses it with an error instead).
pub async fn check_a_late_record_submitted_keeps_the_first_batch_id(store: &dyn JobStore) {
    let (job, key) = with_submitted_chunk(store).await;
    store
        .record_submitted(&job, key, "b2", 103)
        .await
        .must("late record_submitted");
    let chunk = stored_chunk(store, &job, key).await;
    assert_eq!(
        (chunk.state, chunk.batch_id.as_deref(), chunk.submitted_at),
        (ChunkState::Submitted, Some("b1"), Some(101)),
        "a late record_submitted keeps the first batch id"
    );
}

/// Memory and DynamoDB: a completion applies only to a submitting/submitted chunk; a queued or
/// unknown chunk answers `false` (SQLite errors on an unknown one).
pub async fn check_only_a_submitted_chunk_can_complete(store: &dyn JobStore) {
    let (job, key) = with_chunk(store).await;
    let queued = store.complete_chunk(&completion(&job, key, 3, false)).await;
    assert!(
        !queued.must("complete queued"),
        "a queued chunk does not complete"
    );
    let unknown = completion(&job, ChunkKey::initial(9), 1, false);
    let unknown = store
        .complete_chunk(&unknown)
        .await
        .must("complete unknown");
    assert!(!unknown, "an unknown chunk does not complete");
    store
        .begin_submit(&job, key, 100, GRACE)
        .await
        .must("begin");
    let submitting = store.complete_chunk(&completion(&job, key, 3, false)).await;
    assert!(
        submitting.must("complete submitting"),
        "a submitting chunk completes"
    );
    assert_eq!(stored_job(store, &job).await.counters.rendered, 3);
}
