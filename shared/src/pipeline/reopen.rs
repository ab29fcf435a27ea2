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
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tracing::info;

use super::deliver::made_since;
use super::manifest::{RowOutcome, row_outcomes};
use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::domain::{
    Chunk, ChunkKey, ChunkMessage, ChunkPayload, Job, JobId, JobStatus, RowState, is_retryable,
};
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
    /// `rows` re-queued in `chunks` new chunks (any number: they are written in pages).
    Reopened { rows: u64, chunks: u64 },
    /// No row matches the selection; the job is left as it is.
    NothingToDo,
    /// The job is not finished (or someone else reopened it first).
    NotFinished { status: JobStatus },
    /// The job was cancelled: nothing of it is rendered again.
    Cancelled,
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
        let job = self.stored_job(job_id).await?;
        let reopenable = job.status.is_terminal()
            || (selection == Selection::MissingUrls && job.status == JobStatus::Finishing);
        if !reopenable {
            return Ok(ReopenOutcome::NotFinished { status: job.status });
        }
        if job.control.cancelled.is_some() {
            return Ok(ReopenOutcome::Cancelled);
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
        let next_seq = outcomes
            .values()
            .map(|o| o.chunk.seq)
            .max()
            .map_or(0, |s| s + 1);
        drop(outcomes);
        let groups: Vec<&[Picked]> = picked.chunks(chunk_rows).collect();
        let planned = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        let key_of = |n: usize| ChunkKey::initial(next_seq + n as u32);

        // Every payload first: once the job is reopened, a chunk record a crash left unwritten
        // is made again from its payload (the reconciler), so all of them must exist by then.
        for (n, group) in groups.iter().enumerate() {
            let mut rows = Vec::with_capacity(group.len());
            let mut variable_sets = Vec::with_capacity(group.len());
            for p in group.iter() {
                rows.push(p.row);
                variable_sets.push(self.variables_of(&job, p, &mut payloads).await?);
            }
            let payload = ChunkPayload {
                job: job.id.clone(),
                key: key_of(n),
                template_id: job.spec.template_id.clone(),
                format: job.spec.format,
                quality: job.spec.quality,
                concurrency: job.spec.concurrency,
                rows,
                variable_sets,
            };
            self.store_payload(&job.source.bucket, payload).await?;
        }

        // Then the pages of chunk records: the first with the reopen itself (one transaction,
        // which only one caller wins), the others after it.
        let now = self.clock.now();
        let page = |from: usize| -> (Vec<Chunk>, Vec<ChunkMessage>) {
            groups
                .iter()
                .enumerate()
                .skip(from)
                .take(MAX_REOPEN_CHUNKS)
                .map(|(n, group)| {
                    let key = key_of(n);
                    let rows = group.iter().map(|p| p.row).collect();
                    let chunk = Chunk::new(job.id.clone(), key, rows).queued_at(now);
                    (chunk, self.message_by_reference(&job, key))
                })
                .unzip()
        };
        let (first_chunks, first_messages) = page(0);
        let unfailed = picked.iter().filter(|p| p.failed).count() as u64;
        let reopen = Reopen {
            job: job.id.clone(),
            from: job.status,
            unfailed,
            unrendered: picked.len() as u64 - unfailed,
            chunks: first_chunks,
            planned,
        };
        if !self.store.reopen_job(&reopen).await? {
            let status = self
                .store
                .job(job_id)
                .await?
                .map_or(job.status, |j| j.status);
            return Ok(ReopenOutcome::NotFinished { status });
        }
        // If a send is lost, the reconciler re-sends chunks left queued; if a later page is
        // lost with this process, it makes the missing chunks from their payloads.
        self.queue.send(&first_messages).await?;
        for from in (MAX_REOPEN_CHUNKS..groups.len()).step_by(MAX_REOPEN_CHUNKS) {
            let (chunks, messages) = page(from);
            self.store.put_chunks(&chunks).await?;
            self.queue.send(&messages).await?;
        }
        let outcome = ReopenOutcome::Reopened {
            rows: picked.len() as u64,
            chunks: u64::from(planned),
        };
        info!(job_id = %job.id, ?selection, ?outcome, "job reopened");
        Ok(outcome)
    }

    /// A planned chunk whose record is missing (its reopen died between two pages): made again
    /// from its stored payload and queued. Returns how many were made.
    pub(super) async fn restore_planned_chunks(
        &self,
        job: &Job,
        existing: &HashSet<ChunkKey>,
    ) -> Result<u64, StepError> {
        let Some(plan) = job.reopen_plan else {
            return Ok(0);
        };
        let now = self.clock.now();
        let (mut chunks, mut messages) = (Vec::new(), Vec::new());
        for key in plan.keys().filter(|k| !existing.contains(k)) {
            let at = layout::chunk_payload_ref(
                &job.source.bucket,
                &job.id,
                &key.label(),
                &self.settings,
            );
            let payload = self.read_payload(&at).await?;
            chunks.push(Chunk::new(job.id.clone(), key, payload.rows).queued_at(now));
            messages.push(self.message_by_reference(job, key));
        }
        if chunks.is_empty() {
            return Ok(0);
        }
        info!(job_id = %job.id, chunks = chunks.len(), "planned chunks of a reopen made again from their payloads");
        self.store.put_chunks(&chunks).await?;
        self.queue.send(&messages).await?;
        Ok(chunks.len() as u64)
    }

    /// A chunk's queue message carrying its stored payload by reference.
    fn message_by_reference(&self, job: &Job, key: ChunkKey) -> ChunkMessage {
        let at =
            layout::chunk_payload_ref(&job.source.bucket, &job.id, &key.label(), &self.settings);
        ChunkMessage {
            job: job.id.clone(),
            key,
            payload: None,
            payload_ref: Some(at),
        }
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
        // Picked rows come in row order, so their chunks mostly do too: a few cached suffice.
        if payloads.0.len() >= PAYLOAD_CACHE && !payloads.0.contains_key(&picked.from) {
            payloads.0.clear();
        }
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

/// Payloads kept while picking: enough for rows in row order, bounded for a reopen of any size.
const PAYLOAD_CACHE: usize = 64;

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
