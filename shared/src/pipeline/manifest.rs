//! The results manifest: one line per input row, in row order, as CSV and JSON Lines.
//!
//! Rows are not stored individually, so the manifest re-reads the upload (pinned to the version
//! the job read) with the same rules — identical row numbers and rejection reasons — and joins
//! each row with its chunk's outcome and its fingerprint's render record.
//!
//! It is a stream whatever the job's size. A job's first chunks hold its rows in file order, so
//! they are read a page (100 chunks and their retries) at a time as the rows go by; the chunks a
//! reopen added come after them, carry rows from anywhere, and are read first (their rows are
//! the only per-row state held for the whole job). Both files go out in parts of 8 MiB (an S3
//! multipart upload once a file outgrows one part), sent together at a row boundary that is
//! saved as the job's manifest checkpoint: a writer that dies is carried on from there by the
//! next. Memory: one page of chunks, one group of lines, two part buffers.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::alerting::top_errors;
use super::deliver::{ChunkDelivery, DeliveredRow, made_since};
use super::{Pipeline, StepError};
use crate::dataset::{DatasetFormat, DatasetReader, Item, ReadPosition, fingerprint};
use crate::domain::{
    Chunk, ChunkKey, Job, JobId, JobStatus, ManifestCheckpoint, ManifestLocation, ObjectRef,
    PartsSent, RowState, own_codes,
};
use crate::layout;
use crate::ports::UploadedPart;

/// Rows looked up together (one BatchGetItem holds 100 keys).
const LOOKUP_GROUP: usize = 100;
/// Chunks read per page (one BatchGetItem).
const CHUNK_PAGE: u32 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSummary {
    pub location: ManifestLocation,
    pub lines: u64,
    pub rendered: u64,
    pub url_missing: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub reused: u64,
    pub rejected: u64,
    pub in_flight: u64,
    pub top_errors: Vec<(String, u64)>,
}

/// One manifest line before its URL is known.
struct Line {
    number: u64,
    fields: Map<String, Value>,
    state: RowState,
    attempts: u32,
    fingerprint: Option<String>,
    /// Render records older than this are another attempt's (see [`RowOutcome::since`]).
    since: Option<i64>,
    /// Where its image was copied (a job that delivers).
    delivered: Option<DeliveredRow>,
}

/// Where a submitted row ended: the state from the last chunk that carried it.
#[derive(Debug, Clone)]
pub(super) struct RowOutcome {
    pub state: RowState,
    /// Chunks that carried the row (its render attempts).
    pub attempts: u32,
    /// The last chunk that carried it, and the row's index in that chunk's batch.
    pub chunk: ChunkKey,
    pub index: u32,
    /// When that chunk was created: only a render record made since can hold the row's URL.
    pub since: Option<i64>,
}

/// Where each row of `chunks` ended: later chunks (retries, and the chunks of a reopened job,
/// numbered after all others) override earlier ones.
pub(super) fn row_outcomes(mut chunks: Vec<Chunk>) -> HashMap<u64, RowOutcome> {
    chunks.sort_by_key(|c| c.key);
    let mut rows: HashMap<u64, RowOutcome> = HashMap::new();
    for chunk in chunks {
        for (index, row) in chunk.rows.iter().enumerate() {
            let index = index as u32;
            let state = match &chunk.outcome {
                None => RowState::InFlight {
                    chunk: chunk.key.label(),
                },
                Some(o) => o.state_of(chunk.key, index),
            };
            // An incremental re-run's first look at a chunk (it reused some rows) sent nothing:
            // neither its reused rows nor the changed ones it sent on were attempted by it.
            let attempted = chunk.outcome.as_ref().is_none_or(|o| o.reused.is_empty());
            let attempts = rows.get(row).map_or(0, |r| r.attempts) + u32::from(attempted);
            rows.insert(
                *row,
                RowOutcome {
                    state,
                    attempts,
                    chunk: chunk.key,
                    index,
                    since: chunk.queued_at,
                },
            );
        }
    }
    rows
}

/// The outcome of one row: its first chunks' (`first`), overridden by a reopen's (`reopened`),
/// whose attempts add to the first ones.
fn combine(first: Option<&RowOutcome>, reopened: Option<&RowOutcome>) -> Option<RowOutcome> {
    match (first, reopened) {
        (first, Some(later)) => Some(RowOutcome {
            attempts: later.attempts + first.map_or(0, |f| f.attempts),
            ..later.clone()
        }),
        (Some(first), None) => Some(first.clone()),
        (None, None) => None,
    }
}

/// The outcomes of the rows of the job's first chunks, a page at a time in row order.
struct FirstChunks {
    job: JobId,
    /// The current page starts at this sequence number, the next one at `next_seq`.
    page_seq: u32,
    next_seq: u32,
    /// The last of the first chunks (the reopened ones come after).
    last_seq: u32,
    /// The current page's rows, and the greatest of them.
    outcomes: HashMap<u64, RowOutcome>,
    max_row: Option<u64>,
    /// Delivery records of the chunks the current page's lines ended in (a job that delivers).
    deliveries: HashMap<ChunkKey, Option<ChunkDelivery>>,
}

/// What the blocking reader hands to the async side.
enum Read {
    /// The CSV header (first, CSV only).
    Columns(Vec<String>),
    /// A group of rows, and where the read stands after them.
    Items(Vec<Item>, ReadPosition),
}

/// One manifest file being written: bytes wait in `buffer` until a part is full.
struct PartWriter {
    object: ObjectRef,
    content_type: &'static str,
    buffer: Vec<u8>,
    /// The multipart upload, once the file outgrew one part.
    upload: Option<String>,
    parts: Vec<UploadedPart>,
}

impl PartWriter {
    /// A writer, carrying on with the parts a checkpoint recorded when given.
    fn new(object: ObjectRef, content_type: &'static str, sent: Option<&PartsSent>) -> Self {
        PartWriter {
            object,
            content_type,
            buffer: Vec::new(),
            upload: sent.map(|s| s.upload.clone()),
            parts: sent.map(|s| s.parts.clone()).unwrap_or_default(),
        }
    }

    /// Sends the buffer as the next part.
    async fn send_part(&mut self, pipeline: &Pipeline) -> Result<(), StepError> {
        let objects = &pipeline.objects;
        let upload = match &self.upload {
            Some(upload) => upload.clone(),
            None => {
                let upload = objects
                    .start_upload(&self.object, self.content_type)
                    .await?;
                self.upload = Some(upload.clone());
                upload
            }
        };
        let number = self.parts.len() as u32 + 1;
        let bytes = std::mem::take(&mut self.buffer);
        let etag = objects
            .upload_part(&self.object, &upload, number, bytes)
            .await?;
        self.parts.push(UploadedPart { number, etag });
        Ok(())
    }

    /// The parts sent so far (once the file went multipart).
    fn sent(&self) -> Option<PartsSent> {
        self.upload.as_ref().map(|upload| PartsSent {
            upload: upload.clone(),
            parts: self.parts.clone(),
        })
    }

    /// The rest as the last part; a file that never outgrew one part is a single PUT.
    async fn finish(mut self, pipeline: &Pipeline) -> Result<(), StepError> {
        let objects = &pipeline.objects;
        let Some(upload) = self.upload.clone() else {
            return Ok(objects
                .put_bytes(&self.object, self.buffer, self.content_type)
                .await?);
        };
        self.send_part(pipeline).await?;
        Ok(objects
            .finish_upload(&self.object, &upload, &self.parts)
            .await?)
    }
}

impl Pipeline {
    /// Whether the job's upload has been overwritten since the job read it (a newer version, or
    /// a different ETag, is now at its key). Its rows are still read from the job's own version
    /// (a versioned bucket keeps it). A deleted upload has no newer job: not superseded.
    async fn upload_superseded(&self, job: &Job) -> Result<bool, StepError> {
        let bare = |version: &str| version.trim_matches('"').to_owned();
        let current = self.objects.version(&job.source).await?;
        Ok(current.is_some_and(|v| bare(&v) != bare(&job.source_version)))
    }

    /// Writes both manifest files for a job and returns what they contain. A job in
    /// `finishing` whose last writer died part-way is carried on from that writer's checkpoint.
    pub async fn write_manifest(&self, job: &Job) -> Result<ManifestSummary, StepError> {
        let resumed = job
            .manifest_checkpoint
            .as_ref()
            .filter(|c| job.status == JobStatus::Finishing && c.generation == job.reopened);
        let superseded = match resumed {
            Some(at) => at.superseded,
            None => self.upload_superseded(job).await?,
        };
        let location =
            layout::manifest_location(&job.source, superseded.then_some(&job.id), &self.settings);
        let format =
            DatasetFormat::from_key(&job.source.key).ok_or_else(|| StepError::Unreadable {
                what: job.source.to_string(),
                reason: "not a dataset (.csv, .json, .jsonl)".into(),
            })?;
        let (mut first, reopened) = self.scan_chunks(&job.id).await?;
        if let Some(at) = resumed {
            first.next_seq = at.page_seq;
            info!(job_id = %job.id, from_row = at.position.rows, parts = at.csv.parts.len(), "manifest carried on from its checkpoint");
        }

        // The upload may be unreadable (that can be why the job failed): then the manifest has no lines.
        let readers = if job.counters.rows > 0 {
            let version = Some(job.source_version.as_str());
            let head = self.objects.open(&job.source, version).await?.reader;
            let rest = match resumed {
                Some(at) => Some(
                    self.objects
                        .open_at(&job.source, version, at.position.offset)
                        .await?
                        .reader,
                ),
                None => None,
            };
            Some((head, rest))
        } else {
            None
        };
        let (tx, mut rx) = mpsc::channel::<Read>(4);
        let rules = layout::row_rules(&job.spec);
        let start = resumed.map(|c| c.position);
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let Some((head, rest)) = readers else {
                return Ok(());
            };
            let mut dataset = match (rest, start) {
                (Some(rest), Some(at)) => DatasetReader::resume(head, rest, format, rules, at),
                _ => DatasetReader::new(head, format, rules),
            }
            .map_err(|e| e.to_string())?;
            if let Some(columns) = dataset.columns()
                && tx.blocking_send(Read::Columns(columns.to_vec())).is_err()
            {
                return Ok(());
            }
            let mut group = Vec::with_capacity(LOOKUP_GROUP);
            // An error ends the rows: the job read up to the same point, and has the error.
            while let Some(Ok(item)) = dataset.next() {
                group.push(item);
                if group.len() == LOOKUP_GROUP {
                    let items = std::mem::take(&mut group);
                    if tx
                        .blocking_send(Read::Items(items, dataset.position()))
                        .is_err()
                    {
                        return Ok(());
                    }
                }
            }
            if !group.is_empty() {
                let _ = tx.blocking_send(Read::Items(group, dataset.position()));
            }
            Ok(())
        });

        let mut summary = ManifestSummary {
            location: location.clone(),
            lines: 0,
            rendered: 0,
            url_missing: 0,
            failed: 0,
            cancelled: 0,
            reused: 0,
            rejected: 0,
            in_flight: 0,
            top_errors: Vec::new(),
        };
        let mut codes: BTreeMap<String, u64> = BTreeMap::new();
        if let Some(at) = resumed {
            (summary.lines, summary.rendered, summary.url_missing) =
                (at.lines, at.rendered, at.url_missing);
            (summary.failed, summary.rejected, summary.in_flight) =
                (at.failed, at.rejected, at.in_flight);
            (summary.cancelled, summary.reused) = (at.cancelled, at.reused);
            codes = at.codes.clone();
        }
        let mut jsonl = PartWriter::new(
            location.jsonl.clone(),
            "application/x-ndjson",
            resumed.map(|c| &c.jsonl),
        );
        let mut csv = PartWriter::new(location.csv.clone(), "text/csv", resumed.map(|c| &c.csv));
        let mut columns: Vec<String> = Vec::new();
        // A carried-on manifest has its header in its first part already.
        let mut header_written = resumed.is_some();
        let delivers = job.spec.delivery.is_some();
        let part_bytes = self.settings.manifest_part_bytes;
        while let Some(read) = rx.recv().await {
            let (items, position) = match read {
                Read::Columns(names) => {
                    columns = names;
                    continue;
                }
                Read::Items(items, position) => (items, position),
            };
            if !header_written {
                write_csv_header(&mut csv.buffer, &columns, delivers)?;
                header_written = true;
            }
            let mut lines = Vec::with_capacity(items.len());
            for item in items {
                lines.push(self.line_of(item, job, &mut first, &reopened).await?);
            }
            self.fill_urls(&mut lines).await?;
            for line in &lines {
                count(&mut summary, &mut codes, &line.state);
                let value = json_line(line, delivers);
                serde_json::to_writer(&mut jsonl.buffer, &value).map_err(|e| StepError::Io {
                    what: "writing a manifest line",
                    source: e.into(),
                })?;
                jsonl.buffer.push(b'\n');
                write_csv_line(&mut csv.buffer, &value, &columns, delivers)?;
            }
            // Both files send a part at the same row, so one checkpoint describes both.
            if csv.buffer.len() >= part_bytes && jsonl.buffer.len() >= part_bytes {
                csv.send_part(self).await?;
                jsonl.send_part(self).await?;
                let (Some(csv_sent), Some(jsonl_sent)) = (csv.sent(), jsonl.sent()) else {
                    continue;
                };
                let checkpoint = ManifestCheckpoint {
                    generation: job.reopened,
                    superseded,
                    position,
                    page_seq: first.page_seq,
                    csv: csv_sent,
                    jsonl: jsonl_sent,
                    lines: summary.lines,
                    rendered: summary.rendered,
                    url_missing: summary.url_missing,
                    failed: summary.failed,
                    cancelled: summary.cancelled,
                    reused: summary.reused,
                    rejected: summary.rejected,
                    in_flight: summary.in_flight,
                    codes: codes.clone(),
                };
                // Alive, and how far: the reconciler leaves this writer alone, and one that
                // takes over carries on from here.
                let now = self.clock.now();
                self.store
                    .save_manifest_checkpoint(&job.id, Some(&checkpoint), now)
                    .await?;
            }
        }
        let read = reader.await.map_err(|source| StepError::Crashed {
            what: "the manifest reader",
            source,
        })?;
        if let Err(reason) = read {
            // The job's own error says why; its manifest has the lines read, here none.
            warn!(job_id = %job.id, reason = %reason, "the upload cannot be read again for the manifest");
        }
        if !header_written {
            write_csv_header(&mut csv.buffer, &columns, delivers)?;
        }
        let checkpointed = job.manifest_checkpoint.is_some() || csv.upload.is_some();
        csv.finish(self).await?;
        jsonl.finish(self).await?;
        if checkpointed {
            // The uploads are complete: nobody may carry them on again.
            let now = self.clock.now();
            self.store
                .save_manifest_checkpoint(&job.id, None, now)
                .await?;
        }
        summary.top_errors = top_errors(codes.into_iter().collect());
        info!(job_id = %job.id, lines = summary.lines, manifest = %location.csv, "manifest written");
        Ok(summary)
    }

    /// Reads the attempt-0 chunks by sequence number until one is missing: the first chunks
    /// (rows increasing) up to the first chunk whose rows do not start after every row before
    /// it, which is the first a reopen added. Returns the first chunks' walker and the outcomes
    /// of the reopened rows.
    async fn scan_chunks(
        &self,
        job: &JobId,
    ) -> Result<(FirstChunks, HashMap<u64, RowOutcome>), StepError> {
        let (mut seq, mut last_first, mut max_row) = (1u32, 0u32, None::<u64>);
        let mut reopened: Vec<Chunk> = Vec::new();
        loop {
            let keys: Vec<ChunkKey> = (seq..seq + CHUNK_PAGE).map(ChunkKey::initial).collect();
            let page = self.store.chunks_by_key(job, &keys).await?;
            let found = page.len() as u32;
            for chunk in page {
                let starts_after = match (chunk.rows.first(), max_row) {
                    (Some(first), Some(max)) => *first > max,
                    _ => true,
                };
                if reopened.is_empty() && starts_after {
                    max_row = chunk.rows.last().copied().or(max_row);
                    last_first = chunk.key.seq;
                } else {
                    reopened.push(chunk);
                }
            }
            if found < CHUNK_PAGE {
                break;
            }
            seq += CHUNK_PAGE;
        }
        let reopened = self.with_retries(job, reopened).await?;
        let first = FirstChunks {
            job: job.clone(),
            page_seq: 1,
            next_seq: 1,
            last_seq: last_first,
            outcomes: HashMap::new(),
            max_row: None,
            deliveries: HashMap::new(),
        };
        Ok((first, row_outcomes(reopened)))
    }

    /// `chunks` and every retry chunk that follows from them.
    async fn with_retries(
        &self,
        job: &JobId,
        mut chunks: Vec<Chunk>,
    ) -> Result<Vec<Chunk>, StepError> {
        let mut next: Vec<ChunkKey> = retries_of(&chunks);
        while !next.is_empty() {
            let found = self.store.chunks_by_key(job, &next).await?;
            next = retries_of(&found);
            chunks.extend(found);
        }
        Ok(chunks)
    }

    /// A read row as a manifest line (its URL comes later, by group).
    async fn line_of(
        &self,
        item: Item,
        job: &Job,
        first: &mut FirstChunks,
        reopened: &HashMap<u64, RowOutcome>,
    ) -> Result<Line, StepError> {
        let row = match item {
            Item::Valid(row) => row,
            Item::Rejected(r) => {
                return Ok(Line {
                    number: r.number,
                    fields: Map::new(),
                    state: RowState::Rejected {
                        reason: r.reason.to_string(),
                    },
                    attempts: 0,
                    fingerprint: None,
                    since: None,
                    delivered: None,
                });
            }
        };
        // The first chunks hold rows in file order: read pages until one reaches this row.
        while first.max_row.is_none_or(|max| row.number > max) && first.next_seq <= first.last_seq {
            let end = (first.next_seq + CHUNK_PAGE).min(first.last_seq + 1);
            let keys: Vec<ChunkKey> = (first.next_seq..end).map(ChunkKey::initial).collect();
            let page = self.store.chunks_by_key(&first.job, &keys).await?;
            first.max_row = page
                .iter()
                .filter_map(|c| c.rows.last().copied())
                .max()
                .or(first.max_row);
            first.outcomes = row_outcomes(self.with_retries(&first.job, page).await?);
            first.page_seq = first.next_seq;
            first.deliveries.clear();
            first.next_seq = end;
        }
        let outcome = combine(first.outcomes.get(&row.number), reopened.get(&row.number));
        let delivered = match (&job.spec.delivery, &outcome) {
            (Some(_), Some(o)) => {
                // Fetched with an await, which the entry API cannot hold across.
                let cached = first.deliveries.contains_key(&o.chunk);
                if !cached {
                    let record = self.delivery_of(job, o.chunk).await?;
                    first.deliveries.insert(o.chunk, record);
                }
                first
                    .deliveries
                    .get(&o.chunk)
                    .and_then(Option::as_ref)
                    .and_then(|r| r.rows.get(&o.index).cloned())
            }
            _ => None,
        };
        let (state, attempts, since) = outcome
            .map_or((RowState::InFlight { chunk: "-".into() }, 0, None), |o| {
                (o.state, o.attempts, o.since)
            });
        let fingerprint = matches!(state, RowState::Rendered { .. })
            .then(|| fingerprint(&job.spec.template_id, &row.variables));
        Ok(Line {
            number: row.number,
            fields: row.fields,
            state,
            attempts,
            fingerprint,
            since,
            delivered,
        })
    }

    /// The image URL of every rendered line, from render records made since its chunk.
    async fn fill_urls(&self, lines: &mut [Line]) -> Result<(), StepError> {
        let fps: Vec<String> = lines.iter().filter_map(|l| l.fingerprint.clone()).collect();
        if fps.is_empty() {
            return Ok(());
        }
        let renders = self.store.renders(&fps).await?;
        for line in lines {
            if let (RowState::Rendered { url }, Some(fp)) = (&mut line.state, &line.fingerprint) {
                *url = renders
                    .get(fp)
                    .filter(|r| made_since(r, line.since))
                    .map(|r| r.url.clone());
            }
        }
        Ok(())
    }
}

/// The retry chunks that follow from `chunks` (a retry exists when an outcome retried rows).
fn retries_of(chunks: &[Chunk]) -> Vec<ChunkKey> {
    chunks
        .iter()
        .filter(|c| c.outcome.as_ref().is_some_and(|o| !o.retried.is_empty()))
        .map(|c| c.key.retry())
        .collect()
}

fn count(summary: &mut ManifestSummary, codes: &mut BTreeMap<String, u64>, state: &RowState) {
    match state {
        RowState::Rendered { url: Some(_) } => summary.rendered += 1,
        RowState::Rendered { url: None } => {
            summary.rendered += 1;
            summary.url_missing += 1
        }
        RowState::Failed { code, .. } => {
            summary.failed += 1;
            *codes.entry(code.clone()).or_default() += 1;
        }
        RowState::Cancelled => summary.cancelled += 1,
        RowState::Reused { .. } => summary.reused += 1,
        RowState::Rejected { .. } => summary.rejected += 1,
        RowState::InFlight { .. } => summary.in_flight += 1,
    }
    summary.lines += 1;
}

fn json_line(line: &Line, delivers: bool) -> Value {
    let (url, code, message) = match &line.state {
        RowState::Rendered { url } => (url.clone(), None, None),
        RowState::Reused { url } => (Some(url.clone()), None, None),
        RowState::Failed { code, message } => (None, Some(code.clone()), Some(message.clone())),
        RowState::Rejected { reason } => (None, Some("REJECTED".to_owned()), Some(reason.clone())),
        RowState::Cancelled => (
            None,
            Some(own_codes::CANCELLED.to_owned()),
            Some("the job was cancelled before this row rendered".to_owned()),
        ),
        RowState::InFlight { chunk } => (
            None,
            None,
            Some(format!("still in flight in chunk {chunk}")),
        ),
    };
    let mut value = json!({
        "row": line.number,
        "status": line.state.label(),
        "url": url,
        "errorCode": code,
        "errorMessage": message,
        "attempts": line.attempts,
        "fields": line.fields,
    });
    if delivers {
        let (key, error) = match &line.delivered {
            Some(DeliveredRow::Key(key)) => (Some(key.as_str()), None),
            Some(DeliveredRow::Error(error)) => (None, Some(error.as_str())),
            None => (None, None),
        };
        value["deliveredKey"] = json!(key);
        value["deliveryError"] = json!(error);
    }
    value
}

/// The columns a job that delivers adds after the fixed ones.
const CSV_DELIVERY: [(&str, &str); 2] = [
    ("delivered_key", "deliveredKey"),
    ("delivery_error", "deliveryError"),
];

/// The JSON line's keys the CSV's first columns come from.
const CSV_FIXED: [(&str, &str); 6] = [
    ("row", "row"),
    ("status", "status"),
    ("url", "url"),
    ("error_code", "errorCode"),
    ("error_message", "errorMessage"),
    ("attempts", "attempts"),
];

/// CSV columns: row, status, url, error_code, error_message, attempts, then the input's columns
/// (CSV uploads) or one `fields` column holding the row as JSON (JSON uploads, whose keys vary).
fn write_csv_header(
    out: &mut Vec<u8>,
    columns: &[String],
    delivers: bool,
) -> Result<(), StepError> {
    let extra: &[(&str, &str)] = if delivers { &CSV_DELIVERY } else { &[] };
    let mut header: Vec<&str> = CSV_FIXED
        .iter()
        .chain(extra)
        .map(|(name, _)| *name)
        .collect();
    if columns.is_empty() {
        header.push("fields");
    } else {
        header.extend(columns.iter().map(String::as_str));
    }
    write_csv_record(out, &header)
}

fn write_csv_line(
    out: &mut Vec<u8>,
    line: &Value,
    columns: &[String],
    delivers: bool,
) -> Result<(), StepError> {
    let extra: &[(&str, &str)] = if delivers { &CSV_DELIVERY } else { &[] };
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut record: Vec<String> = CSV_FIXED
        .iter()
        .chain(extra)
        .map(|(_, key)| text(&line[*key]))
        .collect();
    if columns.is_empty() {
        record.push(line["fields"].to_string());
    } else {
        record.extend(columns.iter().map(|c| text(&line["fields"][c.as_str()])));
    }
    write_csv_record(out, &record)
}

fn write_csv_record<T: AsRef<[u8]>>(out: &mut Vec<u8>, record: &[T]) -> Result<(), StepError> {
    let mut writer = csv::Writer::from_writer(out);
    writer
        .write_record(record)
        .and_then(|()| writer.flush().map_err(csv::Error::from))
        .map_err(|e| StepError::Io {
            what: "writing a manifest CSV line",
            source: std::io::Error::other(e),
        })
}
