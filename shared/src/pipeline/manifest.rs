//! The results manifest: one line per input row, in row order, as CSV and JSON Lines.
//!
//! Rows are not stored individually, so the manifest re-reads the upload (pinned to the version
//! the job read) with the same rules — identical row numbers and rejection reasons — and joins
//! each row with its chunk's outcome and its fingerprint's render record.

use std::collections::HashMap;
use std::io::Write;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::alerting::top_errors;
use super::{Pipeline, StepError};
use crate::dataset::{DatasetFormat, DatasetReader, Item, fingerprint};
use crate::domain::{Chunk, ChunkKey, Job, ManifestLocation, RowState};
use crate::layout;

/// Rows looked up together (one BatchGetItem holds 100 keys).
const LOOKUP_GROUP: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct ManifestSummary {
    pub location: ManifestLocation,
    pub lines: u64,
    pub rendered: u64,
    pub url_missing: u64,
    pub failed: u64,
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
}

/// Where each submitted row ended, from the chunks: later chunks (retries, and the chunks of a
/// reopened job, numbered after all others) override earlier ones.
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
                Some(o) => match o.failed.get(&index) {
                    Some(e) => RowState::Failed {
                        code: e.code.clone(),
                        message: e.message.clone(),
                    },
                    None if o.retried.contains(&index) => RowState::InFlight {
                        chunk: chunk.key.retry().label(),
                    },
                    None => RowState::Rendered { url: None },
                },
            };
            let attempts = rows.get(row).map_or(0, |r| r.attempts) + 1;
            rows.insert(
                *row,
                RowOutcome {
                    state,
                    attempts,
                    chunk: chunk.key,
                    index,
                },
            );
        }
    }
    rows
}

impl Pipeline {
    /// Writes both manifest files for a job and returns what they contain.
    pub async fn write_manifest(&self, job: &Job) -> Result<ManifestSummary, StepError> {
        let location = layout::manifest_location(&job.source, &self.settings);
        let outcomes = row_outcomes(self.store.chunks_of_job(&job.id).await?);
        let format =
            DatasetFormat::from_key(&job.source.key).ok_or_else(|| StepError::Unreadable {
                what: job.source.to_string(),
                reason: "not a dataset (.csv, .json, .jsonl)".into(),
            })?;
        let dir = tempfile::tempdir().map_err(|source| StepError::Io {
            what: "creating a temp dir for the manifest",
            source,
        })?;
        let csv_path = dir.path().join("results.csv");
        let jsonl_path = dir.path().join("results.jsonl");

        // The upload may be unreadable (that can be why the job failed): then the manifest has no lines.
        let body = if job.counters.rows > 0 {
            Some(
                self.objects
                    .open(&job.source, Some(&job.source_version))
                    .await?,
            )
        } else {
            None
        };
        let (tx, mut rx) = mpsc::channel::<Vec<Line>>(4);
        let rules = layout::row_rules(&job.spec);
        let template_id = job.spec.template_id.clone();
        let reader = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
            let Some(body) = body else {
                return Ok(Vec::new());
            };
            let dataset =
                DatasetReader::new(body.reader, format, rules).map_err(|e| e.to_string())?;
            let columns = dataset
                .columns()
                .map(<[String]>::to_vec)
                .unwrap_or_default();
            let mut group = Vec::with_capacity(LOOKUP_GROUP);
            for item in dataset {
                let line = match item {
                    Ok(Item::Valid(row)) => {
                        let (state, attempts) = outcomes
                            .get(&row.number)
                            .map_or((RowState::InFlight { chunk: "-".into() }, 0), |o| {
                                (o.state.clone(), o.attempts)
                            });
                        let fp = matches!(state, RowState::Rendered { .. })
                            .then(|| fingerprint(&template_id, &row.variables));
                        Line {
                            number: row.number,
                            fields: row.fields,
                            state,
                            attempts,
                            fingerprint: fp,
                        }
                    }
                    Ok(Item::Rejected(r)) => Line {
                        number: r.number,
                        fields: Map::new(),
                        state: RowState::Rejected {
                            reason: r.reason.to_string(),
                        },
                        attempts: 0,
                        fingerprint: None,
                    },
                    // The job read up to the same point; its error is already on the job.
                    Err(_) => break,
                };
                group.push(line);
                if group.len() == LOOKUP_GROUP
                    && tx.blocking_send(std::mem::take(&mut group)).is_err()
                {
                    return Ok(columns);
                }
            }
            if !group.is_empty() {
                let _ = tx.blocking_send(group);
            }
            Ok(columns)
        });

        let mut summary = ManifestSummary {
            location: location.clone(),
            lines: 0,
            rendered: 0,
            url_missing: 0,
            failed: 0,
            rejected: 0,
            in_flight: 0,
            top_errors: Vec::new(),
        };
        let mut codes: HashMap<String, u64> = HashMap::new();
        let mut jsonl =
            std::io::BufWriter::new(std::fs::File::create(&jsonl_path).map_err(|source| {
                StepError::Io {
                    what: "creating the manifest file",
                    source,
                }
            })?);
        while let Some(mut group) = rx.recv().await {
            let fps: Vec<String> = group.iter().filter_map(|l| l.fingerprint.clone()).collect();
            let renders = if fps.is_empty() {
                HashMap::new()
            } else {
                self.store.renders(&fps).await?
            };
            for line in &mut group {
                if let (RowState::Rendered { url }, Some(fp)) = (&mut line.state, &line.fingerprint)
                {
                    *url = renders.get(fp).map(|r| r.url.clone());
                }
                match &line.state {
                    RowState::Rendered { url: Some(_) } => summary.rendered += 1,
                    RowState::Rendered { url: None } => {
                        summary.rendered += 1;
                        summary.url_missing += 1
                    }
                    RowState::Failed { code, .. } => {
                        summary.failed += 1;
                        *codes.entry(code.clone()).or_default() += 1;
                    }
                    RowState::Rejected { .. } => summary.rejected += 1,
                    RowState::InFlight { .. } => summary.in_flight += 1,
                }
                summary.lines += 1;
                serde_json::to_writer(&mut jsonl, &json_line(line)).map_err(|e| StepError::Io {
                    what: "writing a manifest line",
                    source: e.into(),
                })?;
                jsonl.write_all(b"\n").map_err(|source| StepError::Io {
                    what: "writing a manifest line",
                    source,
                })?;
            }
        }
        // The CSV needs the header, known only once the reader started, so it is written from the
        // JSONL file afterwards rather than from lines kept in memory.
        jsonl.flush().map_err(|source| StepError::Io {
            what: "writing the manifest file",
            source,
        })?;
        drop(jsonl);
        let columns = reader
            .await
            .map_err(|source| StepError::Crashed {
                what: "the manifest reader",
                source,
            })?
            .unwrap_or_default();
        write_csv_from_jsonl(&jsonl_path, &csv_path, &columns).map_err(|e| StepError::Io {
            what: "writing the manifest CSV",
            source: std::io::Error::other(e),
        })?;

        self.objects
            .put_file(&location.csv, &csv_path, "text/csv")
            .await?;
        self.objects
            .put_file(&location.jsonl, &jsonl_path, "application/x-ndjson")
            .await?;
        summary.top_errors = top_errors(codes);
        Ok(summary)
    }
}

fn json_line(line: &Line) -> Value {
    let (url, code, message) = match &line.state {
        RowState::Rendered { url } => (url.clone(), None, None),
        RowState::Failed { code, message } => (None, Some(code.clone()), Some(message.clone())),
        RowState::Rejected { reason } => (None, Some("REJECTED".to_owned()), Some(reason.clone())),
        RowState::InFlight { chunk } => (
            None,
            None,
            Some(format!("still in flight in chunk {chunk}")),
        ),
    };
    json!({
        "row": line.number,
        "status": line.state.label(),
        "url": url,
        "errorCode": code,
        "errorMessage": message,
        "attempts": line.attempts,
        "fields": line.fields,
    })
}

/// CSV columns: row, status, url, error_code, error_message, attempts, then the input's columns
/// (CSV uploads) or one `fields` column holding the row as JSON (JSON uploads, whose keys vary).
fn write_csv_from_jsonl(
    jsonl: &std::path::Path,
    csv_path: &std::path::Path,
    columns: &[String],
) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut out = csv::Writer::from_path(csv_path)?;
    let mut header: Vec<String> = [
        "row",
        "status",
        "url",
        "error_code",
        "error_message",
        "attempts",
    ]
    .map(String::from)
    .to_vec();
    if columns.is_empty() {
        header.push("fields".into());
    } else {
        header.extend(columns.iter().cloned());
    }
    out.write_record(&header)?;
    let text = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    for line in std::io::BufReader::new(std::fs::File::open(jsonl)?).lines() {
        let v: Value = serde_json::from_str(&line?)?;
        let mut record: Vec<String> = [
            "row",
            "status",
            "url",
            "errorCode",
            "errorMessage",
            "attempts",
        ]
        .iter()
        .map(|k| text(&v[*k]))
        .collect();
        if columns.is_empty() {
            record.push(v["fields"].to_string());
        } else {
            record.extend(columns.iter().map(|c| text(&v["fields"][c.as_str()])));
        }
        out.write_record(&record)?;
    }
    out.flush()
}
