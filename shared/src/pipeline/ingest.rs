//! ingest: stream the upload, map and validate rows, record the job, cut chunks of ≤100 valid rows
//! and queue them. Memory stays flat: rows flow through a bounded channel from a blocking parser.
//!
//! An upload of any size: ingest saves a checkpoint (where the next row starts, and what the rows
//! before it made) every few thousand rows. When its invocation nears its end (`hand_off_at`) or
//! has read `INGEST_HANDOFF_ROWS` rows, it queues everything before its last safe point, saves
//! that point and hands the rest to a fresh invocation (a `JobStep::ContinueIngest`). A piece
//! that dies is carried on from the last checkpoint by a redelivered event, its continuation
//! message or the reconciler. Chunk numbers and contents follow from the position alone, so the
//! chunks made in N pieces are the chunks one pass makes, and a piece done twice writes the same
//! chunks again (conditional writes; the submitter ignores chunks already submitted).

use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::payload::{ChunkDraft, EncodedChunk};
use super::{Pipeline, StepError};
use crate::dataset::{DatasetFormat, DatasetReader, Encoded, ReadPosition};
use crate::domain::{
    ChunkKey, ChunkPayload, Counters, IngestCheckpoint, Job, JobId, JobSpec, JobStatus, JobStep,
    ObjectRef,
};
use crate::layout::{self, UploadKind};
use crate::metrics::{self, Unit};

/// Chunks written and queued together (one SendMessageBatch holds 10).
const CHUNKS_PER_FLUSH: usize = 10;
/// Rejections kept on the job item for `status`; the manifest lists every one.
const REJECTED_SAMPLE: usize = 20;
/// The parser offers a safe point at least this often (in rows), so even a file of rejected
/// rows can be handed on.
const SAFE_POINT_ROWS: u64 = 1_000;
/// A checkpoint is saved after this many rows (and at every hand-off).
const CHECKPOINT_ROWS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    Skipped {
        reason: String,
    },
    /// The job already exists past ingest (a redelivered event), or another invocation got
    /// further with it.
    Duplicate {
        job: JobId,
    },
    Ingested {
        job: JobId,
        counters: Counters,
    },
    /// This invocation's share is done: everything before `checkpoint` is queued and a fresh
    /// invocation was asked to carry on from it.
    HandedOff {
        job: JobId,
        checkpoint: IngestCheckpoint,
    },
    /// The dataset could not be read; nothing (more) was queued.
    Failed {
        job: JobId,
        reason: String,
    },
}

/// What the blocking parser hands to the async side, in file order.
enum Parsed {
    /// A chunk cut: the payload without its variable sets (`head`), and its rows. It is encoded
    /// on the async side, so the parser thread only reads.
    Chunk {
        head: ChunkPayload,
        draft: ChunkDraft,
    },
    Rejected(u64, String),
    /// Every row before this point is in a chunk sent above, or rejected above: the read can
    /// stop and be carried on from here.
    Safe(IngestCheckpoint),
    /// The read ended: at the end of the file, or at this dataset error. The rows read are in
    /// the parser's returned position.
    Done {
        error: Option<String>,
    },
}

/// The upload as one piece reads it: from the top (`rest: None`), or the top for a CSV header
/// and `rest` from the checkpoint on.
struct UploadReaders {
    head: Box<dyn std::io::Read + Send>,
    rest: Option<Box<dyn std::io::Read + Send>>,
    /// The whole upload's size, when the store says.
    size: Option<u64>,
}

/// Where the parser starts: the job's checkpoint, or the top of the file.
fn starting_point(job: &Job) -> IngestCheckpoint {
    job.checkpoint.unwrap_or(IngestCheckpoint {
        position: ReadPosition::default(),
        rejected: 0,
        chunks: 0,
        pieces: 0,
        saved_at: job.created_at,
    })
}

impl Pipeline {
    /// Ingests one uploaded object in one pass (unless `INGEST_HANDOFF_ROWS` says otherwise).
    /// `version` is the event's ETag / version id when known.
    pub async fn ingest(
        &self,
        upload: &ObjectRef,
        version: Option<&str>,
    ) -> Result<IngestOutcome, StepError> {
        self.ingest_until(upload, version, None).await
    }

    /// Ingests an upload, handing the rest on once `hand_off_at` has passed (the invocation's
    /// deadline less a margin). A job already ingesting carries on from its checkpoint.
    pub async fn ingest_until(
        &self,
        upload: &ObjectRef,
        version: Option<&str>,
        hand_off_at: Option<Instant>,
    ) -> Result<IngestOutcome, StepError> {
        let (template_id, format) = match layout::classify(&upload.key, &self.settings) {
            UploadKind::Dataset {
                template_id,
                format,
            } => (template_id, format),
            UploadKind::Ignored(reason) => return Ok(IngestOutcome::Skipped { reason }),
        };
        let version = match version {
            Some(v) if !v.is_empty() => v.to_owned(),
            _ => match self.objects.version(upload).await? {
                Some(v) => v,
                None => {
                    return Ok(IngestOutcome::Skipped {
                        reason: "the object no longer exists".into(),
                    });
                }
            },
        };
        let job_id = JobId::for_upload(&upload.bucket, &upload.key, &version);
        let sidecar = self.objects.get_bytes(&layout::sidecar_of(upload)).await?;
        let mut spec = layout::job_spec(&template_id, sidecar.as_deref(), &self.settings);
        if let Ok(spec) = &mut spec {
            spec.template_variables = self
                .cached_template_variables(&upload.bucket, &spec.template_id)
                .await;
            // A re-upload (its key has a manifest: an earlier job finished) re-renders only rows
            // that changed, unless the sidecar says `renderAll`.
            if spec.incremental {
                let earlier = layout::manifest_location(upload, None, &self.settings);
                spec.incremental = self.objects.version(&earlier.jsonl).await?.is_some();
            }
        }
        let now = self.clock.now();
        let job = Job {
            id: job_id.clone(),
            source: upload.clone(),
            source_version: version.clone(),
            spec: spec
                .clone()
                .unwrap_or_else(|_| placeholder_spec(&template_id)),
            status: JobStatus::Ingesting,
            counters: Counters::default(),
            error: None,
            rejected_sample: Vec::new(),
            created_at: now,
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
        };
        let (stored, created) = self.store.create_job(&job).await?;
        if !created && stored.status != JobStatus::Ingesting {
            info!(job_id = %job_id, status = stored.status.as_str(), "duplicate upload event: job exists");
            return Ok(IngestOutcome::Duplicate { job: job_id });
        }
        if !created {
            // An earlier attempt died mid-ingest: carry on from its checkpoint.
            warn!(job_id = %job_id, "resuming an interrupted ingest");
        }
        if let Err(reason) = spec {
            return self.fail_ingest(stored, reason).await;
        }
        self.ingest_rest(stored, format, hand_off_at).await
    }

    /// Carries on with a job's ingest from its checkpoint (a step queue message, or the
    /// reconciler's repair of an ingest that died).
    pub async fn continue_ingest(
        &self,
        job_id: &JobId,
        hand_off_at: Option<Instant>,
    ) -> Result<IngestOutcome, StepError> {
        let job = self.stored_job(job_id).await?;
        if job.status != JobStatus::Ingesting {
            info!(job_id = %job_id, status = job.status.as_str(), "ingest continuation for a job past ingest");
            return Ok(IngestOutcome::Duplicate {
                job: job_id.clone(),
            });
        }
        let Some(format) = DatasetFormat::from_key(&job.source.key) else {
            let reason = format!("{} is not a dataset (.csv, .json, .jsonl)", job.source);
            return self.fail_ingest(job, reason).await;
        };
        self.ingest_rest(job, format, hand_off_at).await
    }

    /// Reads the upload from the job's checkpoint on: to the end, or to the hand-off.
    async fn ingest_rest(
        &self,
        mut job: Job,
        format: DatasetFormat,
        hand_off_at: Option<Instant>,
    ) -> Result<IngestOutcome, StepError> {
        let job_id = job.id.clone();
        let mut start = starting_point(&job);
        start.pieces += 1;
        start.saved_at = self.clock.now();
        // Claims this piece: a fresh `saved_at` keeps the reconciler from starting another.
        if !self
            .store
            .save_checkpoint(&job_id, &start, &job.rejected_sample)
            .await?
        {
            info!(job_id = %job_id, "another invocation is further on with this ingest");
            return Ok(IngestOutcome::Duplicate { job: job_id });
        }
        info!(
            job_id = %job_id, upload = %job.source, template_id = %job.spec.template_id,
            piece = start.pieces, from_row = start.position.rows, from_byte = start.position.offset,
            "ingest started"
        );

        let opened = self.open_from(&job, &start.position).await;
        let readers = match opened {
            Ok(readers)
                if readers.size > Some(self.settings.max_upload_bytes)
                    && start.position == ReadPosition::default() =>
            {
                let reason = format!(
                    "the upload is {} bytes, over the {}-byte limit (MAX_UPLOAD_BYTES)",
                    readers.size.unwrap_or_default(),
                    self.settings.max_upload_bytes
                );
                return self.fail_ingest(job, reason).await;
            }
            Ok(readers) => readers,
            Err(e) => {
                return self
                    .fail_ingest(job, format!("cannot read the upload: {e}"))
                    .await;
            }
        };
        let (tx, mut rx) = mpsc::channel::<Parsed>(CHUNKS_PER_FLUSH * 2);
        let parser = tokio::task::spawn_blocking({
            let spec = job.spec.clone();
            let id = job_id.clone();
            let chunk_rows = self.settings.pacing.chunk_rows;
            move || parse_into_chunks(readers, format, &spec, &id, start, chunk_rows, &tx)
        });

        let hand_off_rows = self.settings.ingest_handoff_rows;
        let mut pending: Vec<EncodedChunk> = Vec::with_capacity(CHUNKS_PER_FLUSH);
        let mut saved = start;
        let mut dataset_error = None;
        while let Some(parsed) = rx.recv().await {
            match parsed {
                Parsed::Chunk { head, draft } => {
                    pending.push(EncodedChunk::assemble(head, draft)?);
                    if pending.len() == CHUNKS_PER_FLUSH {
                        self.queue_chunks(&job.source.bucket, std::mem::take(&mut pending))
                            .await?;
                    }
                }
                Parsed::Rejected(number, reason) => {
                    // A piece carried on from a safe point inside a chunk reads some rows again.
                    let seen = job.rejected_sample.iter().any(|(n, _)| *n == number);
                    if !seen && job.rejected_sample.len() < REJECTED_SAMPLE {
                        job.rejected_sample.push((number, reason));
                    }
                }
                Parsed::Safe(mut point) => {
                    point.pieces = start.pieces;
                    let read = point.position.rows - start.position.rows;
                    // With no step queue (a local run) there is no one to hand to: read on.
                    let hand_off = self.queue.takes_steps()
                        && (hand_off_at.is_some_and(|at| Instant::now() >= at)
                            || hand_off_rows.is_some_and(|limit| read >= limit));
                    if hand_off {
                        // Every chunk before the point goes out before the point is saved.
                        self.queue_chunks(&job.source.bucket, std::mem::take(&mut pending))
                            .await?;
                        drop(rx); // the parser stops at its next row
                        self.join_parser(parser).await?;
                        return self.hand_off(&job, point).await;
                    }
                    if pending.is_empty()
                        && point.position.rows - saved.position.rows >= CHECKPOINT_ROWS
                    {
                        point.saved_at = self.clock.now();
                        let sample = sample_before(&job.rejected_sample, &point);
                        self.store.save_checkpoint(&job_id, &point, &sample).await?;
                        info!(job_id = %job_id, rows = point.position.rows, chunks = point.chunks, "ingest progress");
                        saved = point;
                    }
                }
                Parsed::Done { error } => dataset_error = error,
            }
        }
        self.queue_chunks(&job.source.bucket, pending).await?;
        let end = self.join_parser(parser).await?;
        let counters = Counters {
            rows: end.position.rows,
            rejected: end.rejected,
            chunks: end.chunks,
            ..Counters::default()
        };

        if counters.rows == 0
            && let Some(reason) = dataset_error
        {
            return self.fail_ingest(job, reason).await;
        }
        job.counters = counters;
        job.error = dataset_error;
        job.status = JobStatus::Running;
        job.ingested_at = Some(self.clock.now());
        self.store.finish_ingest(&job).await?;
        info!(
            job_id = %job_id, rows = counters.rows, rejected = counters.rejected, chunks = counters.chunks,
            pieces = start.pieces, dataset_error = job.error.as_deref().unwrap_or(""), "ingest finished"
        );
        metrics::emit(
            &[
                ("RowsIngested", counters.rows as f64, Unit::Count),
                ("RowsRejected", counters.rejected as f64, Unit::Count),
            ],
            &[("jobId", job_id.as_str())],
        );
        // A file with no valid rows is complete already.
        self.finish_job_if_done(&job_id).await?;
        Ok(IngestOutcome::Ingested {
            job: job_id,
            counters,
        })
    }

    /// The readers a piece needs: from the top of the file, or the file's head (a CSV header)
    /// and the rest from the checkpoint's byte on.
    async fn open_from(&self, job: &Job, at: &ReadPosition) -> Result<UploadReaders, StepError> {
        let version = Some(job.source_version.as_str());
        let head = self.objects.open(&job.source, version).await?;
        let (size, head) = (head.size, head.reader);
        if *at == ReadPosition::default() {
            return Ok(UploadReaders {
                head,
                rest: None,
                size,
            });
        }
        let rest = self
            .objects
            .open_at(&job.source, version, at.offset)
            .await?;
        Ok(UploadReaders {
            head,
            rest: Some(rest.reader),
            size,
        })
    }

    async fn join_parser(
        &self,
        parser: tokio::task::JoinHandle<IngestCheckpoint>,
    ) -> Result<IngestCheckpoint, StepError> {
        parser.await.map_err(|source| StepError::Crashed {
            what: "the dataset parser",
            source,
        })
    }

    /// Saves the safe point and asks a fresh invocation to carry on from it.
    async fn hand_off(
        &self,
        job: &Job,
        mut point: IngestCheckpoint,
    ) -> Result<IngestOutcome, StepError> {
        point.saved_at = self.clock.now();
        let sample = sample_before(&job.rejected_sample, &point);
        if !self.store.save_checkpoint(&job.id, &point, &sample).await? {
            info!(job_id = %job.id, "another invocation is further on with this ingest");
            return Ok(IngestOutcome::Duplicate {
                job: job.id.clone(),
            });
        }
        self.queue
            .queue_step(&JobStep::ContinueIngest(job.id.clone()))
            .await?;
        info!(
            job_id = %job.id, piece = point.pieces, rows = point.position.rows, chunks = point.chunks,
            byte = point.position.offset, "ingest handed on to a fresh invocation"
        );
        Ok(IngestOutcome::HandedOff {
            job: job.id.clone(),
            checkpoint: point,
        })
    }

    /// Stores each payload, records the chunks, then queues them.
    async fn queue_chunks(
        &self,
        bucket: &str,
        payloads: Vec<EncodedChunk>,
    ) -> Result<(), StepError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut chunks = Vec::with_capacity(payloads.len());
        let mut messages = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let (chunk, message) = self.store_encoded(bucket, payload).await?;
            chunks.push(chunk);
            messages.push(message);
        }
        self.store.put_chunks(&chunks).await?;
        self.queue.send(&messages).await?;
        Ok(())
    }

    async fn fail_ingest(&self, mut job: Job, reason: String) -> Result<IngestOutcome, StepError> {
        warn!(job_id = %job.id, reason = %reason, "dataset rejected");
        // Rows an earlier piece queued are in flight: they count, and the job waits for them.
        if let Some(point) = job.checkpoint {
            job.counters.rows = point.position.rows;
            job.counters.rejected = point.rejected;
            job.counters.chunks = point.chunks;
        }
        job.status = JobStatus::Running;
        job.error = Some(reason.clone());
        job.ingested_at = Some(self.clock.now());
        self.store.finish_ingest(&job).await?;
        self.finish_job_if_done(&job.id).await?;
        Ok(IngestOutcome::Failed {
            job: job.id,
            reason,
        })
    }
}

/// The rejections a checkpoint covers (rows after it are read again by the next piece).
fn sample_before(sample: &[(u64, String)], point: &IngestCheckpoint) -> Vec<(u64, String)> {
    sample
        .iter()
        .filter(|(number, _)| *number < point.position.rows)
        .cloned()
        .collect()
}

fn placeholder_spec(template_id: &str) -> JobSpec {
    JobSpec {
        template_id: template_id.to_owned(),
        format: Default::default(),
        quality: None,
        concurrency: None,
        mapping: Default::default(),
        required: Vec::new(),
        max_in_flight: None,
        abort: None,
        template_variables: None,
        incremental: false,
        delivery: None,
    }
}

/// Runs on a blocking thread: reads the file from `start` on, sending chunks, rejections and safe
/// points in file order. Returns where it stopped (the end of the file, or the last row read
/// before the async side hung up).
fn parse_into_chunks(
    UploadReaders { head, rest, .. }: UploadReaders,
    format: DatasetFormat,
    spec: &JobSpec,
    job: &JobId,
    start: IngestCheckpoint,
    chunk_rows: usize,
    tx: &mpsc::Sender<Parsed>,
) -> IngestCheckpoint {
    let mut at = start;
    let done = |error| {
        let _ = tx.blocking_send(Parsed::Done { error });
    };
    let rules = layout::row_rules(spec);
    let opened = match rest {
        None => DatasetReader::new(head, format, rules),
        Some(rest) => DatasetReader::resume(head, rest, format, rules, start.position),
    };
    let mut dataset = match opened {
        Ok(d) => d,
        Err(e) => {
            done(Some(e.to_string()));
            return at;
        }
    };
    let mut draft = ChunkDraft::default();
    // Where the chunk being filled started: the last safe point while it is not sent.
    let mut chunk_start: Option<IngestCheckpoint> = None;
    let mut last_safe = start.position.rows;
    // Sends the chunk being filled; `false` when the receiver is gone or encoding failed.
    let flush = |draft: &mut ChunkDraft, at: &mut IngestCheckpoint| -> bool {
        if draft.is_empty() {
            return true;
        }
        at.chunks += 1;
        let head = ChunkPayload {
            job: job.clone(),
            key: ChunkKey::initial(u32::try_from(at.chunks).unwrap_or(u32::MAX)),
            template_id: spec.template_id.clone(),
            format: spec.format,
            quality: spec.quality,
            concurrency: spec.concurrency,
            rows: Vec::new(),
            variable_sets: Vec::new(),
        };
        let draft = draft.take();
        tx.blocking_send(Parsed::Chunk { head, draft }).is_ok()
    };
    loop {
        let was_empty = draft.is_empty();
        let Some(item) = draft.read(&mut dataset) else {
            break;
        };
        let sent = match item {
            Ok(Encoded::Valid { .. }) => {
                if was_empty {
                    chunk_start = Some(at);
                }
                at.position = dataset.position();
                draft.len() < chunk_rows || {
                    let sent = flush(&mut draft, &mut at);
                    chunk_start = None;
                    last_safe = at.position.rows;
                    sent && tx.blocking_send(Parsed::Safe(at)).is_ok()
                }
            }
            Ok(Encoded::Rejected(rejected)) => {
                at.position = dataset.position();
                at.rejected += 1;
                let sent = tx
                    .blocking_send(Parsed::Rejected(
                        rejected.number,
                        rejected.reason.to_string(),
                    ))
                    .is_ok();
                // Offer a safe point now and then even when few rows are valid.
                if sent && at.position.rows - last_safe >= SAFE_POINT_ROWS {
                    last_safe = at.position.rows;
                    tx.blocking_send(Parsed::Safe(chunk_start.unwrap_or(at)))
                        .is_ok()
                } else {
                    sent
                }
            }
            Err(e) => {
                if flush(&mut draft, &mut at) {
                    let rows = at.position.rows;
                    done(Some(format!("after {rows} rows: {e}")));
                }
                return at;
            }
        };
        if !sent {
            return at; // the receiver is gone: the async side failed or handed off
        }
    }
    if flush(&mut draft, &mut at) {
        done(None);
    }
    at
}
