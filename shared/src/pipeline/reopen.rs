//! Reopening a finished job for another attempt at some of its rows: rows that failed in a way
//! retrying can help (the operator's `retry-failed`), or rows Pictify rendered whose
//! `render.completed` never reached us (the re-render policy for missing URLs).
//!
//! The rows go out as new chunks numbered after every existing chunk of the job; a row's state
//! comes from the last chunk that carried it, so the new outcome supersedes the old one. The
//! counters move back out of `failed` / `rendered` in the same atomic write that creates the
//! chunks and sets the job running again, so `rows = rejected + rendered + failed + in flight`
//! holds throughout and the job finishes (and writes its manifest) again on its own.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tracing::info;

use super::manifest::{RowOutcome, made_since, row_outcomes};
use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::domain::{ChunkKey, ChunkPayload, Job, JobId, JobStatus, RowState, is_retryable};
use crate::layout;
use crate::pictify::wire::VariableSet;
use crate::ports::{MAX_REOPEN_CHUNKS, Reopen};
use crate::settings::MAX_CHUNK_ROWS;

/// Which rows get another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Failed rows whose code says retrying can help (not INVALID_VARIABLE and the like).
    RetryableFailures,
    /// Rendered rows with no recorded image URL.
    MissingUrls,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "outcome")]
pub enum ReopenOutcome {
    /// `rows` re-queued in `chunks` new chunks; `left` selected rows did not fit this round
    /// (run it again once the job has finished).
    Reopened { rows: u64, chunks: u64, left: u64 },
    /// No row matches the selection; the job is left as it is.
    NothingToDo,
    /// The job is not finished (or someone else reopened it first).
    NotFinished { status: JobStatus },
}

/// A row picked for another attempt.
#[derive(Debug, Clone, Copy)]
struct Picked {
    row: u64,
    from: ChunkKey,
    index: u32,
    failed: bool,
}

impl Pipeline {
    /// Reopens a finished job for the selected rows. Safe to race: only one caller moves the job
    /// out of its finished status; the others get `NotFinished`.
    pub async fn reopen(
        &self,
        job_id: &JobId,
        selection: Selection,
    ) -> Result<ReopenOutcome, StepError> {
        let job = self
            .store
            .job(job_id)
            .await?
            .ok_or_else(|| StepError::Missing {
                what: format!("job {job_id}"),
            })?;
        let reopenable = job.status.is_terminal()
            || (selection == Selection::MissingUrls && job.status == JobStatus::Finishing);
        if !reopenable {
            return Ok(ReopenOutcome::NotFinished { status: job.status });
        }
        let outcomes = row_outcomes(self.store.chunks_of_job(job_id).await?);
        let mut payloads = PayloadCache::default();
        let picked = match selection {
            Selection::RetryableFailures => pick_retryable(&outcomes),
            Selection::MissingUrls => {
                self.pick_missing_urls(&job, &outcomes, &mut payloads)
                    .await?
            }
        };
        if picked.is_empty() {
            return Ok(ReopenOutcome::NothingToDo);
        }
        let chunk_rows = self.settings.pacing.chunk_rows;
        let capacity = MAX_REOPEN_CHUNKS * chunk_rows;
        let left = picked.len().saturating_sub(capacity) as u64;
        let picked = &picked[..picked.len().min(capacity)];

        let next_seq = outcomes
            .values()
            .map(|o| o.chunk.seq)
            .max()
            .map_or(0, |s| s + 1);
        let now = self.clock.now();
        let (mut chunks, mut messages) = (Vec::new(), Vec::new());
        for (n, group) in picked.chunks(chunk_rows).enumerate() {
            let mut rows = Vec::with_capacity(group.len());
            let mut variable_sets = Vec::with_capacity(group.len());
            for p in group {
                rows.push(p.row);
                variable_sets.push(self.variables_of(&job, p, &mut payloads).await?);
            }
            let payload = ChunkPayload {
                job: job.id.clone(),
                key: ChunkKey::initial(next_seq + n as u32),
                template_id: job.spec.template_id.clone(),
                format: job.spec.format,
                quality: job.spec.quality,
                concurrency: job.spec.concurrency,
                rows,
                variable_sets,
            };
            let (chunk, message) = self.store_payload(&job.source.bucket, payload).await?;
            chunks.push(chunk.queued_at(now));
            messages.push(message);
        }
        let unfailed = picked.iter().filter(|p| p.failed).count() as u64;
        let reopen = Reopen {
            job: job.id.clone(),
            from: job.status,
            unfailed,
            unrendered: picked.len() as u64 - unfailed,
            chunks,
        };
        if !self.store.reopen_job(&reopen).await? {
            let status = self
                .store
                .job(job_id)
                .await?
                .map_or(job.status, |j| j.status);
            return Ok(ReopenOutcome::NotFinished { status });
        }
        // If this send is lost, the reconciler re-sends chunks left queued.
        self.queue.send(&messages).await?;
        let outcome = ReopenOutcome::Reopened {
            rows: picked.len() as u64,
            chunks: reopen.chunks.len() as u64,
            left,
        };
        info!(job_id = %job.id, ?selection, ?outcome, "job reopened");
        Ok(outcome)
    }

    async fn pick_missing_urls(
        &self,
        job: &Job,
        outcomes: &HashMap<u64, RowOutcome>,
        payloads: &mut PayloadCache,
    ) -> Result<Vec<Picked>, StepError> {
        let mut rendered: Vec<Picked> = outcomes
            .iter()
            .filter(|(_, o)| matches!(o.state, RowState::Rendered { .. }))
            .map(|(row, o)| Picked {
                row: *row,
                from: o.chunk,
                index: o.index,
                failed: false,
            })
            .collect();
        rendered.sort_by_key(|p| p.row);
        let mut missing = Vec::new();
        for group in rendered.chunks(MAX_CHUNK_ROWS) {
            let mut fingerprints = Vec::with_capacity(group.len());
            for p in group {
                let variables = self.variables_of(job, p, payloads).await?;
                fingerprints.push(fingerprint(&job.spec.template_id, &variables));
            }
            let recorded = self.store.renders(&fingerprints).await?;
            missing.extend(
                group
                    .iter()
                    .zip(&fingerprints)
                    .filter(|(p, fp)| {
                        !recorded.get(*fp).is_some_and(|r| {
                            made_since(r, outcomes.get(&p.row).and_then(|o| o.since))
                        })
                    })
                    .map(|(p, _)| *p),
            );
        }
        Ok(missing)
    }

    /// The variables a row was rendered with, from the payload of the chunk that last carried it.
    async fn variables_of(
        &self,
        job: &Job,
        picked: &Picked,
        payloads: &mut PayloadCache,
    ) -> Result<VariableSet, StepError> {
        let payload = match payloads.0.entry(picked.from) {
            Entry::Occupied(cached) => cached.into_mut(),
            Entry::Vacant(slot) => {
                let at = layout::chunk_payload_ref(
                    &job.source.bucket,
                    &job.id,
                    &picked.from.label(),
                    &self.settings,
                );
                slot.insert(self.read_payload(&at).await?)
            }
        };
        payload
            .variable_sets
            .get(picked.index as usize)
            .cloned()
            .ok_or_else(|| StepError::Unreadable {
                what: format!("chunk {}'s payload", picked.from.label()),
                reason: format!("row {} is not at index {}", picked.row, picked.index),
            })
    }
}

/// Payloads read so far (several picked rows usually share a chunk).
#[derive(Default)]
struct PayloadCache(BTreeMap<ChunkKey, ChunkPayload>);

fn pick_retryable(outcomes: &HashMap<u64, RowOutcome>) -> Vec<Picked> {
    let mut picked: Vec<Picked> = outcomes
        .iter()
        .filter(|(_, o)| matches!(&o.state, RowState::Failed { code, .. } if is_retryable(code)))
        .map(|(row, o)| Picked {
            row: *row,
            from: o.chunk,
            index: o.index,
            failed: true,
        })
        .collect();
    picked.sort_by_key(|p| p.row);
    picked
}
