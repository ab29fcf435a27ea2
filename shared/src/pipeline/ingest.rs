//! ingest: stream the upload, map and validate rows, record the job, cut chunks of ≤100 valid rows
//! and queue them. Memory stays flat: rows flow through a bounded channel from a blocking parser.

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::payload::EncodedChunk;
use super::{Pipeline, StepError};
use crate::dataset::{DatasetFormat, DatasetReader, Item, RowRules};
use crate::domain::{ChunkKey, ChunkPayload, Counters, Job, JobId, JobSpec, JobStatus, ObjectRef};
use crate::layout::{self, UploadKind};
use crate::metrics::{self, Unit};
use crate::pictify::wire::VariableSet;

/// Chunks written and queued together (one SendMessageBatch holds 10).
const CHUNKS_PER_FLUSH: usize = 10;
/// Rejections kept on the job item for `status`; the manifest lists every one.
const REJECTED_SAMPLE: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    Skipped {
        reason: String,
    },
    /// The job already exists past ingest (a redelivered event).
    Duplicate {
        job: JobId,
    },
    Ingested {
        job: JobId,
        counters: Counters,
    },
    /// The dataset could not be read; nothing (more) was queued.
    Failed {
        job: JobId,
        reason: String,
    },
}

/// What the blocking parser hands to the async side.
enum Parsed {
    Chunk(EncodedChunk),
    Rejected(u64, String),
    Done { rows: u64, error: Option<String> },
}

impl Pipeline {
    /// Ingests one uploaded object. `version` is the event's ETag / version id when known.
    pub async fn ingest(
        &self,
        upload: &ObjectRef,
        version: Option<&str>,
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
        let spec = layout::job_spec(&template_id, sidecar.as_deref(), &self.settings);
        let now = self.clock.now();
        let mut job = Job {
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
        };
        let (stored, created) = self.store.create_job(&job).await?;
        if !created && stored.status != JobStatus::Ingesting {
            info!(job_id = %job_id, status = stored.status.as_str(), "duplicate upload event: job exists");
            return Ok(IngestOutcome::Duplicate { job: job_id });
        }
        if !created {
            // An earlier attempt died mid-ingest: redo it. Chunk writes are conditional and
            // the submitter ignores chunks already submitted, so nothing is done twice.
            warn!(job_id = %job_id, "resuming an interrupted ingest");
            job = stored;
        }
        let spec = match spec {
            Ok(spec) => spec,
            Err(reason) => return self.fail_ingest(job, reason).await,
        };
        info!(job_id = %job_id, upload = %upload, template_id = %spec.template_id, "ingest started");

        let body = match self.objects.open(upload, Some(&version)).await {
            Ok(body) => body,
            Err(e) => {
                return self
                    .fail_ingest(job, format!("cannot read the upload: {e}"))
                    .await;
            }
        };
        let (tx, mut rx) = mpsc::channel::<Parsed>(CHUNKS_PER_FLUSH * 2);
        let parser = tokio::task::spawn_blocking({
            let spec = spec.clone();
            let job_id = job_id.clone();
            let chunk_rows = self.settings.pacing.chunk_rows;
            move || parse_into_chunks(body.reader, format, &spec, &job_id, chunk_rows, &tx)
        });

        let mut pending: Vec<EncodedChunk> = Vec::with_capacity(CHUNKS_PER_FLUSH);
        let mut counters = Counters::default();
        let mut dataset_error = None;
        while let Some(parsed) = rx.recv().await {
            match parsed {
                Parsed::Chunk(payload) => {
                    pending.push(payload);
                    if pending.len() == CHUNKS_PER_FLUSH {
                        counters.chunks += self
                            .queue_chunks(&upload.bucket, std::mem::take(&mut pending))
                            .await?;
                        info!(job_id = %job_id, chunks = counters.chunks, "ingest progress");
                    }
                }
                Parsed::Rejected(number, reason) => {
                    counters.rejected += 1;
                    if job.rejected_sample.len() < REJECTED_SAMPLE {
                        job.rejected_sample.push((number, reason));
                    }
                }
                Parsed::Done { rows, error } => {
                    counters.rows = rows;
                    dataset_error = error;
                }
            }
        }
        counters.chunks += self.queue_chunks(&upload.bucket, pending).await?;
        parser.await.map_err(|source| StepError::Crashed {
            what: "the dataset parser",
            source,
        })?;

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
            dataset_error = job.error.as_deref().unwrap_or(""), "ingest finished"
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

    /// Stores each payload, records the chunks, then queues them. Returns how many were queued.
    async fn queue_chunks(
        &self,
        bucket: &str,
        payloads: Vec<EncodedChunk>,
    ) -> Result<u64, StepError> {
        if payloads.is_empty() {
            return Ok(0);
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
        Ok(chunks.len() as u64)
    }

    async fn fail_ingest(&self, mut job: Job, reason: String) -> Result<IngestOutcome, StepError> {
        warn!(job_id = %job.id, reason = %reason, "dataset rejected");
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

fn placeholder_spec(template_id: &str) -> JobSpec {
    JobSpec {
        template_id: template_id.to_owned(),
        format: Default::default(),
        quality: None,
        concurrency: None,
        mapping: Default::default(),
        required: Vec::new(),
    }
}

/// Runs on a blocking thread: reads the whole file, sending chunks and rejections as they come.
fn parse_into_chunks(
    reader: Box<dyn std::io::Read + Send>,
    format: DatasetFormat,
    spec: &JobSpec,
    job: &JobId,
    chunk_rows: usize,
    tx: &mpsc::Sender<Parsed>,
) {
    let done = |rows, error| {
        let _ = tx.blocking_send(Parsed::Done { rows, error });
    };
    // Ingest sends only the variables; the manifest, which shows the input columns, keeps them.
    let rules = RowRules {
        keep_fields: false,
        ..layout::row_rules(spec)
    };
    let dataset = match DatasetReader::new(reader, format, rules) {
        Ok(d) => d,
        Err(e) => return done(0, Some(e.to_string())),
    };
    let mut rows = 0u64;
    let mut seq = 0u32;
    let mut numbers = Vec::with_capacity(chunk_rows);
    let mut sets: Vec<VariableSet> = Vec::with_capacity(chunk_rows);
    // `rows` so far, for the report of an encoding failure (not expected: the maps are JSON).
    let flush =
        |numbers: &mut Vec<u64>, sets: &mut Vec<VariableSet>, seq: &mut u32, rows: u64| -> bool {
            if numbers.is_empty() {
                return true;
            }
            *seq += 1;
            let payload = ChunkPayload {
                job: job.clone(),
                key: ChunkKey::initial(*seq),
                template_id: spec.template_id.clone(),
                format: spec.format,
                quality: spec.quality,
                concurrency: spec.concurrency,
                rows: std::mem::take(numbers),
                variable_sets: std::mem::take(sets),
            };
            match EncodedChunk::encode(payload) {
                Ok(encoded) => tx.blocking_send(Parsed::Chunk(encoded)).is_ok(),
                Err(e) => {
                    done(rows, Some(e.to_string()));
                    false
                }
            }
        };
    for item in dataset {
        let sent = match item {
            Ok(Item::Valid(row)) => {
                rows += 1;
                numbers.push(row.number);
                sets.push(row.variables);
                numbers.len() < chunk_rows || flush(&mut numbers, &mut sets, &mut seq, rows)
            }
            Ok(Item::Rejected(rejected)) => {
                rows += 1;
                tx.blocking_send(Parsed::Rejected(
                    rejected.number,
                    rejected.reason.to_string(),
                ))
                .is_ok()
            }
            Err(e) => {
                if flush(&mut numbers, &mut sets, &mut seq, rows) {
                    done(rows, Some(format!("after {rows} rows: {e}")));
                }
                return;
            }
        };
        if !sent {
            return; // the receiver is gone: the async side failed and reports why
        }
    }
    if flush(&mut numbers, &mut sets, &mut seq, rows) {
        done(rows, None);
    }
}
