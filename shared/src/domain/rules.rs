//! The chunk and job state machines, written once as pure rules.
//!
//! Each rule takes the stored state and a request and answers a [`Transition`]: what the caller is
//! told and, when the rule changes anything, the state to store next. The in-memory and SQLite
//! stores only load, call the rule and store what it returns. DynamoDB states the same rules as
//! condition expressions; the store contract (`store_contract`) runs every chunk state × request
//! and every job status × expected status against each store and compares the stored result
//! with these functions.
//!
//! # Chunk: `queued → submitting → submitted → completed`
//!
//! | stored state             | `begin_submit`                          | `record_submitted(b)`        | `release_submit` | `complete`                 |
//! |--------------------------|-----------------------------------------|------------------------------|------------------|----------------------------|
//! | queued                   | → submitting, attempt + 1: `Proceed`    | → submitted(b): `Recorded`   | stays            | stays: `NotSubmitted`      |
//! | submitting, within grace | stays: `InProgress { since }`           | → submitted(b): `Recorded`   | → queued         | → completed: `Applied`     |
//! | submitting, grace over   | taken over: → submitting, attempt + 1, `Proceed` (same idempotency key) | → submitted(b): `Recorded` | → queued | → completed: `Applied` |
//! | submitted(b0)            | stays: `AlreadySubmitted { b0 }`        | stays: `Repeated` / `OtherBatch { b0 }` | stays  | → completed: `Applied`     |
//! | completed                | stays: `Completed`                      | stays: `Repeated` / `OtherBatch { b0 }` | stays  | stays: `AlreadyApplied`    |
//!
//! - **Grace period.** A `submitting` chunk whose attempt started at `since` is taken over once
//!   `now - since >= grace` (a missing `since` counts as long ago). DynamoDB's condition is
//!   `submittingSince < now - grace`: it takes over one second later, strictly after the grace
//!   period; its adapter tests pin that boundary.
//! - **`record_submitted`** never lets a chunk regress: a late duplicate leaves a submitted or
//!   completed chunk as it is and the first batch id stays. The SQLite store refuses another
//!   batch id with an error (`OtherBatch`); it also records the batch id of a completed chunk
//!   that holds none (one completed straight from `submitting`).
//! - **`complete`** applies a batch outcome once, only to a chunk handed to Pictify
//!   (`submitting` or `submitted`); the job's side is [`Job::apply_outcome`]. A missing chunk is
//!   the store's business: `false` in memory and DynamoDB, an error in SQLite.
//! - **`forget_batch`** (local runs only, their emulator died with the run): submitted → queued,
//!   batch id and times cleared.
//!
//! # Job: `ingesting → running → finishing → completed | partial | failed`, reopen → `running`
//!
//! - **`finish_ingest`** applies ingest's result ([`Job::apply_ingest`]) only while the job is
//!   `ingesting`: status (`running`, or terminal for a file that failed), rows and rejections;
//!   the batch-owned counters are added to.
//! - **`transition(from, to)`** is a compare-and-set on the status (`running → finishing` when
//!   the last chunk completes); another status answers `false`.
//! - **`finish`** records the final status, the manifest and the time, unconditionally.
//! - **`reopen`** applies a `Reopen` ([`Reopen::apply_to`]: counters moved, status `running`,
//!   `completed_at` cleared) only while the job is still in `reopen.from`.
//! - Counters move by [`Counters::add`] only: once per ingest and once per applied chunk.
//! - **`control`** ([`Job::control`]) pauses, resumes, cancels or re-paces a job while it is
//!   `ingesting` or `running`; a cancel is never undone, and a cancelled job takes no other
//!   change.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    Chunk, ChunkKey, ChunkOutcome, ChunkState, ControlChange, Counters, IngestCheckpoint, Job,
    JobControl, JobId, JobStatus, ManifestCheckpoint, ManifestLocation,
};

/// What a rule decided: the answer for the caller and, when the rule changes the state, the
/// state to store next.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a transition changes nothing until its `next` state is stored"]
pub struct Transition<S, A> {
    pub answer: A,
    /// The new state to store; `None` leaves the stored state as it is.
    pub next: Option<S>,
}

impl<S, A> Transition<S, A> {
    fn to(next: S, answer: A) -> Self {
        Transition {
            answer,
            next: Some(next),
        }
    }

    fn stay(answer: A) -> Self {
        Transition { answer, next: None }
    }

    /// Stores the next state in place (stores that hold the state in memory) and answers.
    pub fn apply(self, state: &mut S) -> A {
        if let Some(next) = self.next {
            *state = next;
        }
        self.answer
    }

    /// Stores the next state with `save` (stores that write it back), then answers.
    pub fn save_with<E>(self, save: impl FnOnce(&S) -> Result<(), E>) -> Result<A, E> {
        if let Some(next) = &self.next {
            save(next)?;
        }
        Ok(self.answer)
    }

    /// The answer and the state after the transition, starting from `current`.
    pub fn after(self, current: &S) -> (A, S)
    where
        S: Clone,
    {
        let state = self.next.unwrap_or_else(|| current.clone());
        (self.answer, state)
    }
}

/// What `begin_submit` found.
#[derive(Debug, Clone, PartialEq)]
pub enum BeginSubmit {
    /// Intent recorded: call Pictify now. `attempt` counts submit attempts including this one.
    Proceed { attempt: u32 },
    /// Already submitted (a redelivered message): nothing to do.
    AlreadySubmitted { batch_id: String },
    /// Another attempt started `since` and its outcome is unknown: wait out the grace period.
    InProgress { since: i64 },
    /// The chunk's outcome is already applied.
    Completed,
    /// No such chunk (a message for a job we do not know).
    Unknown,
}

/// What `record_submitted` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordSubmitted {
    /// queued / submitting → submitted under the offered batch id.
    Recorded,
    /// A late duplicate: the chunk is submitted or completed already, under the same batch id
    /// (or none: it completed straight from `submitting`). Nothing changes.
    Repeated,
    /// A late duplicate under another batch id: nothing changes, the first batch id stays.
    OtherBatch { first: String },
}

/// What completing a chunk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Complete {
    /// submitting / submitted → completed, with the outcome: apply it to the job too.
    Applied,
    /// The outcome is applied already (a redelivered completion).
    AlreadyApplied,
    /// The chunk was never handed to Pictify (still queued): ignored.
    NotSubmitted,
}

/// What a control change found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controlled {
    /// Changed as asked.
    Applied,
    /// It was so already (a repeated command): nothing changed.
    Unchanged,
    /// The job is finishing or finished: there is nothing left to control.
    Finished(JobStatus),
    /// The job is cancelled: it takes no other change.
    Cancelled,
}

impl Complete {
    /// The port's answer: whether this call applied the outcome.
    pub fn applied(self) -> bool {
        self == Complete::Applied
    }
}

/// Whether the grace period of a submit attempt started at `since` is over at `now`.
fn grace_over(since: Option<i64>, now: i64, grace: Duration) -> bool {
    let since = since.unwrap_or(i64::MIN);
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    now.saturating_sub(since) >= grace
}

impl Chunk {
    /// The intent to submit, recorded before calling Pictify.
    pub fn begin_submit(&self, now: i64, grace: Duration) -> Transition<Chunk, BeginSubmit> {
        match self.state {
            ChunkState::Completed => Transition::stay(BeginSubmit::Completed),
            ChunkState::Submitted => Transition::stay(BeginSubmit::AlreadySubmitted {
                batch_id: self.batch_id.clone().unwrap_or_default(),
            }),
            ChunkState::Submitting if !grace_over(self.submitting_since, now, grace) => {
                Transition::stay(BeginSubmit::InProgress {
                    since: self.submitting_since.unwrap_or(i64::MIN),
                })
            }
            ChunkState::Queued | ChunkState::Submitting => {
                let attempt = self.submit_attempts + 1;
                let next = Chunk {
                    state: ChunkState::Submitting,
                    submitting_since: Some(now),
                    submit_attempts: attempt,
                    ..self.clone()
                };
                Transition::to(next, BeginSubmit::Proceed { attempt })
            }
        }
    }

    /// Pictify accepted the chunk as `batch_id`.
    pub fn record_submitted(&self, batch_id: &str, now: i64) -> Transition<Chunk, RecordSubmitted> {
        match (self.state, self.batch_id.as_deref()) {
            (ChunkState::Queued | ChunkState::Submitting, _) => {
                let next = Chunk {
                    state: ChunkState::Submitted,
                    batch_id: Some(batch_id.to_owned()),
                    submitted_at: Some(now),
                    ..self.clone()
                };
                Transition::to(next, RecordSubmitted::Recorded)
            }
            (ChunkState::Submitted | ChunkState::Completed, Some(first)) if first != batch_id => {
                Transition::stay(RecordSubmitted::OtherBatch {
                    first: first.to_owned(),
                })
            }
            (ChunkState::Submitted | ChunkState::Completed, _) => {
                Transition::stay(RecordSubmitted::Repeated)
            }
        }
    }

    /// Pictify definitely created no batch: a submitting chunk goes back to `queued`.
    pub fn release_submit(&self) -> Transition<Chunk, ()> {
        match self.state {
            ChunkState::Submitting => Transition::to(
                Chunk {
                    state: ChunkState::Queued,
                    submitting_since: None,
                    ..self.clone()
                },
                (),
            ),
            ChunkState::Queued | ChunkState::Submitted | ChunkState::Completed => {
                Transition::stay(())
            }
        }
    }

    /// A batch's outcome for this chunk (the job's side: [`Job::apply_outcome`]).
    pub fn complete(&self, outcome: &ChunkOutcome) -> Transition<Chunk, Complete> {
        match self.state {
            ChunkState::Submitting | ChunkState::Submitted => Transition::to(
                Chunk {
                    state: ChunkState::Completed,
                    outcome: Some(outcome.clone()),
                    ..self.clone()
                },
                Complete::Applied,
            ),
            ChunkState::Completed => Transition::stay(Complete::AlreadyApplied),
            ChunkState::Queued => Transition::stay(Complete::NotSubmitted),
        }
    }

    /// Local runs only: the batch of a submitted chunk can never complete (its emulator died
    /// with the run), so the chunk goes back to `queued`, same idempotency key; `true` when it
    /// did.
    pub fn forget_batch(&self) -> Transition<Chunk, bool> {
        match self.state {
            ChunkState::Submitted => Transition::to(
                Chunk {
                    state: ChunkState::Queued,
                    batch_id: None,
                    submitting_since: None,
                    submitted_at: None,
                    ..self.clone()
                },
                true,
            ),
            ChunkState::Queued | ChunkState::Submitting | ChunkState::Completed => {
                Transition::stay(false)
            }
        }
    }
}

impl Job {
    /// Ingest finished: its result applies while the job is `ingesting`; `true` when it did.
    pub fn finish_ingest(&self, ingested: &Job) -> Transition<Job, bool> {
        if self.status != JobStatus::Ingesting {
            return Transition::stay(false);
        }
        let mut next = self.clone();
        next.apply_ingest(ingested);
        Transition::to(next, true)
    }

    /// A checkpoint of an ingest still running: applies while the job is `ingesting` and the
    /// checkpoint is not behind the stored one (two invocations may resume the same job; the one
    /// further on wins). `true` when it applied.
    /// `rejected_sample` is the job's sample of rejections up to the checkpoint.
    pub fn save_checkpoint(
        &self,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> Transition<Job, bool> {
        let behind = self
            .checkpoint
            .is_some_and(|stored| stored.position.offset > checkpoint.position.offset);
        if self.status != JobStatus::Ingesting || behind {
            return Transition::stay(false);
        }
        Transition::to(
            Job {
                checkpoint: Some(*checkpoint),
                rejected_sample: rejected_sample.to_vec(),
                ..self.clone()
            },
            true,
        )
    }

    /// The step working on the job shows progress: applies while the job is in `status`.
    pub fn mark_progress(&self, status: JobStatus, now: i64) -> Transition<Job, bool> {
        if self.status != status {
            return Transition::stay(false);
        }
        Transition::to(
            Job {
                progress_at: Some(now),
                ..self.clone()
            },
            true,
        )
    }

    /// The manifest writer got this far (or, `None`, finished its files): applies while the job
    /// is `finishing`, and counts as progress.
    pub fn save_manifest_checkpoint(
        &self,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> Transition<Job, bool> {
        if self.status != JobStatus::Finishing {
            return Transition::stay(false);
        }
        Transition::to(
            Job {
                manifest_checkpoint: checkpoint.cloned(),
                progress_at: Some(now),
                ..self.clone()
            },
            true,
        )
    }

    /// Compare-and-set on the status: `from → to`; `false` when the job is not in `from`.
    pub fn transition(&self, from: JobStatus, to: JobStatus) -> Transition<Job, bool> {
        if self.status != from {
            return Transition::stay(false);
        }
        Transition::to(
            Job {
                status: to,
                ..self.clone()
            },
            true,
        )
    }

    /// A pause, resume, cancel or new in-flight limit, while the job is `ingesting` or `running`.
    pub fn control(&self, change: &ControlChange) -> Transition<Job, Controlled> {
        if !matches!(self.status, JobStatus::Ingesting | JobStatus::Running) {
            return Transition::stay(Controlled::Finished(self.status));
        }
        let current = &self.control;
        let next = match change {
            ControlChange::Cancel { .. } if current.cancelled.is_some() => None,
            ControlChange::Cancel { reason } => Some(JobControl {
                cancelled: Some(reason.clone()),
                paused: None,
                ..current.clone()
            }),
            _ if current.cancelled.is_some() => return Transition::stay(Controlled::Cancelled),
            ControlChange::Pause { .. } if current.paused.is_some() => None,
            ControlChange::Pause { reason } => Some(JobControl {
                paused: Some(reason.clone()),
                ..current.clone()
            }),
            ControlChange::Resume if current.paused.is_none() => None,
            ControlChange::Resume => Some(JobControl {
                paused: None,
                ..current.clone()
            }),
            ControlChange::MaxInFlight(limit) if current.max_in_flight == *limit => None,
            ControlChange::MaxInFlight(limit) => Some(JobControl {
                max_in_flight: *limit,
                ..current.clone()
            }),
        };
        match next {
            Some(control) => Transition::to(
                Job {
                    control,
                    ..self.clone()
                },
                Controlled::Applied,
            ),
            None => Transition::stay(Controlled::Unchanged),
        }
    }

    /// The job is finished: its final status, manifest and time.
    pub fn finish(&mut self, status: JobStatus, manifest: &ManifestLocation, now: i64) {
        self.status = status;
        self.manifest = Some(manifest.clone());
        self.completed_at = Some(now);
    }

    /// The job's side of an applied chunk outcome ([`Chunk::complete`] answered `Applied`): the
    /// counter deltas and the batch's render time.
    pub fn apply_outcome(&mut self, outcome: &ChunkOutcome, delta: &Counters) {
        self.counters.add(delta);
        self.render_ms_total += outcome.duration_ms.unwrap_or(0);
    }

    /// Reopening for another attempt at some rows: applies only while the job is still in
    /// `reopen.from` (someone else may have reopened it meanwhile); `true` when it did.
    pub fn reopen(&self, reopen: &Reopen) -> Transition<Job, bool> {
        if self.status != reopen.from {
            return Transition::stay(false);
        }
        let mut next = self.clone();
        reopen.apply_to(&mut next);
        Transition::to(next, true)
    }
}

/// Reopening a finished job for another attempt at some of its rows: the first page of new
/// chunks, the moves out of the `failed` / `rendered` counters for every row of the plan, the
/// plan itself and the status change to `running`, atomically. The plan's other pages are
/// written after (their payloads are stored before), so however many rows a reopen takes, the
/// job cannot finish before every planned chunk has.
#[derive(Debug, Clone)]
pub struct Reopen {
    pub job: JobId,
    /// The status the job must still be in (someone else may have reopened it meanwhile).
    pub from: JobStatus,
    /// The plan's first page of chunks: its first chunks, in key order.
    pub chunks: Vec<Chunk>,
    /// Chunks in the whole plan, numbered on from the first of `chunks`.
    pub planned: u32,
    /// Rows leaving `failed` (operator retry) and `rendered` (re-render of rows whose URL never
    /// arrived); together they are every row of the plan.
    pub unfailed: u64,
    pub unrendered: u64,
}

impl Reopen {
    /// What reopening does to the stored job (stores that hold the job as one document use it).
    pub fn apply_to(&self, job: &mut Job) {
        let c = &mut job.counters;
        c.failed = c.failed.saturating_sub(self.unfailed);
        c.rendered = c.rendered.saturating_sub(self.unrendered);
        c.retried += self.unfailed + self.unrendered;
        c.chunks += u64::from(self.planned);
        job.status = JobStatus::Running;
        job.completed_at = None;
        job.reopened += 1;
        job.reopen_plan = Some(self.plan());
    }

    /// The chunks the reopen plans, as the job keeps them.
    pub fn plan(&self) -> ReopenPlan {
        ReopenPlan {
            first_seq: self.chunks.first().map_or(0, |c| c.key.seq),
            chunks: self.planned,
        }
    }
}

/// The chunks of the last reopen: `chunks` chunks numbered from `first_seq`. Each chunk's
/// payload is stored before the reopen, so a chunk record missing after a crash is made again
/// from it (the reconciler).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReopenPlan {
    pub first_seq: u32,
    pub chunks: u32,
}

impl ReopenPlan {
    pub fn keys(&self) -> impl Iterator<Item = ChunkKey> {
        (self.first_seq..self.first_seq + self.chunks).map(ChunkKey::initial)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{ChunkKey, JobId, JobSpec, ObjectRef};

    const GRACE: Duration = Duration::from_secs(60);

    fn queued() -> Chunk {
        let job = JobId::parse("job_abc").unwrap_or_else(|e| panic!("{e}"));
        Chunk::new(job, ChunkKey::initial(0), vec![0, 1, 2])
    }

    /// Applies a rule and returns the chunk after it.
    fn then<A>(chunk: &Chunk, rule: impl FnOnce(&Chunk) -> Transition<Chunk, A>) -> Chunk {
        rule(chunk).after(chunk).1
    }

    fn submitting_since(since: i64) -> Chunk {
        then(&queued(), |c| c.begin_submit(since, GRACE))
    }

    fn submitted(batch_id: &str) -> Chunk {
        then(&submitting_since(100), |c| {
            c.record_submitted(batch_id, 101)
        })
    }

    fn outcome() -> ChunkOutcome {
        ChunkOutcome {
            rendered: 3,
            duration_ms: Some(250),
            ..Default::default()
        }
    }

    fn completed(from: Chunk) -> Chunk {
        then(&from, |c| c.complete(&outcome()))
    }

    fn job(status: JobStatus) -> Job {
        Job {
            id: JobId::parse("job_abc").unwrap_or_else(|e| panic!("{e}")),
            source: ObjectRef {
                bucket: "uploads".into(),
                key: "in/data.csv".into(),
            },
            source_version: "etag-1".into(),
            spec: JobSpec {
                template_id: "tmpl_1".into(),
                format: Default::default(),
                quality: None,
                concurrency: None,
                mapping: BTreeMap::new(),
                required: vec![],
                max_in_flight: None,
                abort: None,
                template_variables: None,
                incremental: false,
                delivery: None,
            },
            status,
            counters: Counters::default(),
            error: None,
            rejected_sample: vec![],
            created_at: 1_000,
            ingested_at: None,
            completed_at: None,
            render_ms_total: 0,
            checkpoint: None,
            progress_at: None,
            reopen_plan: None,
            manifest_checkpoint: None,
            manifest: None,
            reopened: 0,
            control: JobControl::default(),
        }
    }

    fn manifest() -> ManifestLocation {
        let at = |key: &str| ObjectRef {
            bucket: "out".into(),
            key: key.into(),
        };
        ManifestLocation {
            csv: at("m.csv"),
            jsonl: at("m.jsonl"),
        }
    }

    // ---- chunks -------------------------------------------------------------------------------

    #[test]
    fn a_queued_chunk_begins_its_first_submit_attempt() {
        let t = queued().begin_submit(100, GRACE);
        assert_eq!(t.answer, BeginSubmit::Proceed { attempt: 1 });
        let next = t.next.unwrap_or_else(|| panic!("a new state"));
        assert_eq!(
            (next.state, next.submitting_since, next.submit_attempts),
            (ChunkState::Submitting, Some(100), 1)
        );
    }

    #[test]
    fn a_submit_in_progress_is_waited_for_within_the_grace_period() {
        let t = submitting_since(100).begin_submit(159, GRACE);
        assert_eq!(t, Transition::stay(BeginSubmit::InProgress { since: 100 }));
    }

    #[test]
    fn a_submit_is_taken_over_when_the_grace_period_ends() {
        for now in [160, 500] {
            let chunk = submitting_since(100);
            let (answer, next) = chunk.begin_submit(now, GRACE).after(&chunk);
            assert_eq!(answer, BeginSubmit::Proceed { attempt: 2 }, "at {now}");
            assert_eq!(
                (next.state, next.submitting_since, next.key),
                (ChunkState::Submitting, Some(now), chunk.key),
                "same chunk, same idempotency key"
            );
        }
    }

    #[test]
    fn a_submitting_chunk_without_a_start_time_is_taken_over() {
        let chunk = Chunk {
            submitting_since: None,
            ..submitting_since(100)
        };
        let t = chunk.begin_submit(0, GRACE);
        assert_eq!(t.answer, BeginSubmit::Proceed { attempt: 2 });
    }

    #[test]
    fn a_submitted_chunk_answers_its_batch_id_to_a_new_submit() {
        let t = submitted("b1").begin_submit(500, GRACE);
        assert_eq!(
            t,
            Transition::stay(BeginSubmit::AlreadySubmitted {
                batch_id: "b1".into()
            })
        );
    }

    #[test]
    fn a_completed_chunk_refuses_a_new_submit() {
        let t = completed(submitted("b1")).begin_submit(500, GRACE);
        assert_eq!(t, Transition::stay(BeginSubmit::Completed));
    }

    #[test]
    fn a_submitting_or_queued_chunk_records_its_batch() {
        for chunk in [submitting_since(100), queued()] {
            let (answer, next) = chunk.record_submitted("b1", 101).after(&chunk);
            assert_eq!(answer, RecordSubmitted::Recorded);
            assert_eq!(
                (next.state, next.batch_id.as_deref(), next.submitted_at),
                (ChunkState::Submitted, Some("b1"), Some(101))
            );
            assert_eq!(next.submitting_since, chunk.submitting_since);
        }
    }

    #[test]
    fn a_repeated_record_submitted_changes_nothing() {
        for chunk in [submitted("b1"), completed(submitted("b1"))] {
            let t = chunk.record_submitted("b1", 300);
            assert_eq!(t, Transition::stay(RecordSubmitted::Repeated));
        }
    }

    #[test]
    fn a_late_record_submitted_under_another_batch_keeps_the_first() {
        for chunk in [submitted("b1"), completed(submitted("b1"))] {
            let t = chunk.record_submitted("b2", 300);
            let first = "b1".to_owned();
            assert_eq!(t, Transition::stay(RecordSubmitted::OtherBatch { first }));
        }
    }

    #[test]
    fn a_chunk_completed_straight_from_submitting_takes_no_late_batch_id() {
        let chunk = completed(submitting_since(100));
        let t = chunk.record_submitted("b1", 300);
        assert_eq!(t, Transition::stay(RecordSubmitted::Repeated));
    }

    #[test]
    fn releasing_a_submit_requeues_only_a_submitting_chunk() {
        let chunk = submitting_since(100);
        let next = then(&chunk, Chunk::release_submit);
        assert_eq!(
            (next.state, next.submitting_since, next.submit_attempts),
            (ChunkState::Queued, None, 1)
        );
        for other in [queued(), submitted("b1"), completed(submitted("b1"))] {
            assert_eq!(other.release_submit(), Transition::stay(()));
        }
    }

    #[test]
    fn a_released_chunk_is_submitted_again_at_once() {
        let released = then(&submitting_since(100), Chunk::release_submit);
        let t = released.begin_submit(101, GRACE);
        assert_eq!(t.answer, BeginSubmit::Proceed { attempt: 2 });
    }

    #[test]
    fn a_chunk_handed_to_pictify_completes_with_its_outcome() {
        for chunk in [submitting_since(100), submitted("b1")] {
            let (answer, next) = chunk.complete(&outcome()).after(&chunk);
            assert!(answer.applied());
            assert_eq!(
                (next.state, next.outcome, next.batch_id),
                (ChunkState::Completed, Some(outcome()), chunk.batch_id)
            );
        }
    }

    #[test]
    fn a_completed_chunk_does_not_complete_again() {
        let t = completed(submitted("b1")).complete(&outcome());
        assert_eq!(t, Transition::stay(Complete::AlreadyApplied));
        assert!(!t.answer.applied());
    }

    #[test]
    fn a_queued_chunk_does_not_complete() {
        let t = queued().complete(&outcome());
        assert_eq!(t, Transition::stay(Complete::NotSubmitted));
        assert!(!t.answer.applied());
    }

    #[test]
    fn a_forgotten_batch_requeues_a_submitted_chunk_only() {
        let next = then(&submitted("b1"), Chunk::forget_batch);
        assert_eq!(
            (
                next.state,
                next.batch_id.as_deref(),
                next.submitting_since,
                next.submitted_at
            ),
            (ChunkState::Queued, None, None, None)
        );
        assert_eq!(
            next.begin_submit(102, GRACE).answer,
            BeginSubmit::Proceed { attempt: 2 }
        );
        let others = [queued(), submitting_since(100), completed(submitted("b1"))];
        for other in others {
            assert_eq!(other.forget_batch(), Transition::stay(false));
        }
    }

    #[test]
    fn a_transition_applies_the_stored_state_in_place_or_through_a_save() {
        let mut chunk = queued();
        let answer = chunk.begin_submit(100, GRACE).apply(&mut chunk);
        assert_eq!(
            (answer, chunk.state),
            (BeginSubmit::Proceed { attempt: 1 }, ChunkState::Submitting)
        );
        let mut saved = Vec::new();
        let answer = chunk.begin_submit(101, GRACE).save_with(|next| {
            saved.push(next.clone());
            Ok::<_, ()>(())
        });
        assert_eq!(answer, Ok(BeginSubmit::InProgress { since: 100 }));
        assert!(saved.is_empty(), "nothing to save when nothing changes");
    }

    // ---- jobs ---------------------------------------------------------------------------------

    #[test]
    fn ingest_finishes_only_while_the_job_is_ingesting() {
        let mut ingested = job(JobStatus::Running);
        ingested.counters = Counters {
            rows: 10,
            rejected: 1,
            chunks: 3,
            ..Default::default()
        };
        let mut stored = job(JobStatus::Ingesting);
        stored.counters.rendered = 2;
        let (applied, next) = stored.finish_ingest(&ingested).after(&stored);
        assert!(applied);
        let expected = Counters {
            rows: 10,
            rejected: 1,
            rendered: 2,
            chunks: 3,
            ..Default::default()
        };
        assert_eq!((next.status, next.counters), (JobStatus::Running, expected));
        assert_eq!(next.finish_ingest(&ingested), Transition::stay(false));
    }

    #[test]
    fn a_job_moves_only_from_the_expected_status() {
        let running = job(JobStatus::Running);
        let (moved, next) = running
            .transition(JobStatus::Running, JobStatus::Finishing)
            .after(&running);
        assert!(moved);
        assert_eq!(next.status, JobStatus::Finishing);
        let stale = next.transition(JobStatus::Running, JobStatus::Finishing);
        assert_eq!(stale, Transition::stay(false));
    }

    #[test]
    fn finishing_a_job_records_its_status_manifest_and_time() {
        let mut finished = job(JobStatus::Finishing);
        finished.finish(JobStatus::Partial, &manifest(), 77);
        assert_eq!(
            (finished.status, finished.manifest, finished.completed_at),
            (JobStatus::Partial, Some(manifest()), Some(77))
        );
    }

    #[test]
    fn an_applied_outcome_adds_its_deltas_and_render_time() {
        let mut running = job(JobStatus::Running);
        let delta = Counters {
            rendered: 3,
            chunks_done: 1,
            ..Default::default()
        };
        running.apply_outcome(&outcome(), &delta);
        running.apply_outcome(&outcome(), &delta);
        assert_eq!(
            (running.counters.rendered, running.counters.chunks_done),
            (6, 2)
        );
        assert_eq!(running.render_ms_total, 500);
    }

    #[test]
    fn a_job_reopens_only_from_the_expected_status() {
        let mut partial = job(JobStatus::Partial);
        partial.counters = Counters {
            rows: 4,
            rendered: 2,
            failed: 2,
            ..Default::default()
        };
        partial.completed_at = Some(200);
        let reopen = Reopen {
            job: partial.id.clone(),
            from: JobStatus::Partial,
            chunks: vec![queued()],
            planned: 1,
            unfailed: 2,
            unrendered: 0,
        };
        let (reopened, next) = partial.reopen(&reopen).after(&partial);
        assert!(reopened);
        assert_eq!(
            (next.status, next.completed_at, next.reopened),
            (JobStatus::Running, None, 1)
        );
        assert_eq!((next.counters.failed, next.counters.retried), (0, 2));
        assert_eq!(next.reopen(&reopen), Transition::stay(false));
    }

    #[test]
    fn a_running_job_pauses_resumes_and_is_cancelled_for_good() {
        let pause = ControlChange::Pause {
            reason: "operator".into(),
        };
        let cancel = ControlChange::Cancel {
            reason: "operator".into(),
        };
        let running = job(JobStatus::Running);
        let (answer, paused) = running.control(&pause).after(&running);
        assert_eq!(answer, Controlled::Applied);
        assert_eq!(paused.control.paused.as_deref(), Some("operator"));
        assert_eq!(
            paused.control(&pause),
            Transition::stay(Controlled::Unchanged)
        );
        let (answer, resumed) = paused.control(&ControlChange::Resume).after(&paused);
        assert_eq!(
            (answer, resumed.control.paused.as_deref()),
            (Controlled::Applied, None)
        );
        let (_, limited) = resumed
            .control(&ControlChange::MaxInFlight(Some(2)))
            .after(&resumed);
        assert_eq!(limited.max_in_flight(), Some(2));

        // A cancel clears a pause, repeats harmlessly, and refuses every other change.
        let (answer, cancelled) = paused.control(&cancel).after(&paused);
        assert_eq!(answer, Controlled::Applied);
        assert_eq!(
            (
                cancelled.control.cancelled.as_deref(),
                cancelled.control.paused.as_deref()
            ),
            (Some("operator"), None)
        );
        assert_eq!(
            cancelled.control(&cancel),
            Transition::stay(Controlled::Unchanged)
        );
        for change in [
            pause,
            ControlChange::Resume,
            ControlChange::MaxInFlight(None),
        ] {
            assert_eq!(
                cancelled.control(&change),
                Transition::stay(Controlled::Cancelled)
            );
        }
    }

    #[test]
    fn a_finishing_or_finished_job_takes_no_control() {
        let cancel = ControlChange::Cancel {
            reason: "late".into(),
        };
        for status in [
            JobStatus::Finishing,
            JobStatus::Completed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(
                job(status).control(&cancel),
                Transition::stay(Controlled::Finished(status))
            );
        }
        let ingesting = job(JobStatus::Ingesting);
        assert_eq!(ingesting.control(&cancel).answer, Controlled::Applied);
    }
}
