//! deliver: once a chunk's outcome is applied, copy its images to the job's own bucket (named by
//! the job's key pattern) and publish one event per finished row.
//!
//! Fed by the chunk's outcome and the render records (what webhooks wrote), so the webhook stays
//! at one write per `render.completed`, and run once per applied chunk: batch completion is the
//! exactly-once point, so a duplicated webhook copies nothing twice. The step records what it did
//! as one object per chunk (`<work>/<job>/<chunk>.delivery.json`); a step that finds it does
//! nothing, so a redelivered step message neither copies nor publishes again. A crash between the
//! copies and that record repeats them: copies land on the same keys, events carry the same ids.
//! The manifest writer delivers any chunk still without a record (a lost step message) before it
//! writes, and reads each row's delivered key from these records.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::domain::{
    ChunkKey, ChunkPayload, DeliverySpec, Job, JobId, JobStep, ObjectRef, RowState,
};
use crate::layout;
use crate::metrics::{self, Unit};
use crate::naming::{KeyPattern, NameContext};
use crate::ports::{RenderRecord, RowEvent};

/// Tries per image copy (download + put) before the row's delivery is recorded as failed.
const COPY_ATTEMPTS: u32 = 3;
/// First wait between tries; doubled each time.
const COPY_BACKOFF: Duration = Duration::from_millis(200);
/// Images copied at once (a chunk holds at most 100).
const COPY_CONCURRENCY: usize = 8;

/// What the deliver step did for one chunk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChunkDelivery {
    /// Batch index → where its image went, or why it did not (rows with an image only).
    #[serde(default)]
    pub rows: BTreeMap<u32, DeliveredRow>,
    /// Row events published.
    #[serde(default)]
    pub events: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeliveredRow {
    /// The object key in the delivery bucket.
    Key(String),
    /// Why the copy failed after every try.
    Error(String),
}

/// Whether a render record can hold the URL of a row carried by a chunk created at `since`: a
/// record made before is an earlier job's or attempt's, whose image may be gone.
pub(super) fn made_since(record: &RenderRecord, since: Option<i64>) -> bool {
    since.is_none_or(|since| record.recorded_at >= since)
}

/// One row of the chunk, as the step sees it.
struct RowToDeliver {
    index: u32,
    row: u64,
    state: RowState,
    url: Option<String>,
}

impl Pipeline {
    /// Whether a job's finished chunks have anything to deliver.
    pub(super) fn delivers(&self, job: &Job) -> bool {
        job.spec.delivery.is_some() || self.outputs.row_events.enabled()
    }

    /// After a chunk's outcome is applied: its delivery goes to the step queue's worker, or is
    /// done here when there is none (a local run).
    pub(super) async fn deliver_later(&self, job: &Job, key: ChunkKey) -> Result<(), StepError> {
        if !self.delivers(job) {
            return Ok(());
        }
        if self.queue.takes_steps() {
            let step = JobStep::DeliverChunk {
                job: job.id.clone(),
                chunk: key,
            };
            return Ok(self.queue.queue_step(&step).await?);
        }
        self.deliver_chunk(&job.id, key).await.map(drop)
    }

    /// Before the manifest: every applied chunk delivered. A chunk whose step message was lost
    /// (applied longer than `stuck_after` ago), or any chunk when there is no step queue, is
    /// delivered here; a chunk applied just now is left to its own step and the manifest waits (`NotYet`),
    /// so the two never both publish.
    pub(super) async fn deliver_missing(&self, job: &Job) -> Result<(), StepError> {
        if !self.delivers(job) {
            return Ok(());
        }
        let now = self.clock.now();
        let patience = i64::try_from(self.settings.stuck_after.as_secs()).unwrap_or(i64::MAX);
        let mut waiting = 0;
        for chunk in self.store.chunks_of_job(&job.id).await? {
            let Some(outcome) = &chunk.outcome else {
                continue;
            };
            if self.delivery_of(job, chunk.key).await?.is_some() {
                continue;
            }
            let since = outcome
                .completed_at
                .or(chunk.submitted_at)
                .or(chunk.queued_at)
                .unwrap_or(0);
            if self.queue.takes_steps() && now - since < patience {
                waiting += 1;
                continue;
            }
            warn!(job_id = %job.id, chunk = %chunk.key.label(), "chunk never delivered; delivering it before the manifest");
            self.deliver_chunk(&job.id, chunk.key).await?;
        }
        if waiting > 0 {
            return Err(StepError::NotYet(format!(
                "{waiting} chunks of {} are still being delivered",
                job.id
            )));
        }
        Ok(())
    }

    /// [`Pipeline::deliver_later`], a failure only logged: the chunk's outcome is applied
    /// whatever happens here, and the manifest writer delivers what was missed.
    pub(super) async fn deliver_or_warn(&self, job: &Job, key: ChunkKey) {
        if let Err(e) = self.deliver_later(job, key).await {
            warn!(job_id = %job.id, chunk = %key.label(), error = %e, "delivery not queued; the manifest writer delivers it");
        }
    }

    /// Where a chunk's delivery record is kept.
    fn delivery_ref(&self, job: &Job, key: ChunkKey) -> ObjectRef {
        layout::chunk_delivery_ref(&job.source.bucket, &job.id, &key.label(), &self.settings)
    }

    /// A chunk's delivery record; `None` when it was not delivered yet.
    pub(super) async fn delivery_of(
        &self,
        job: &Job,
        key: ChunkKey,
    ) -> Result<Option<ChunkDelivery>, StepError> {
        let at = self.delivery_ref(job, key);
        let Some(bytes) = self.objects.get_bytes(&at).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StepError::Unreadable {
                what: format!("delivery record {at}"),
                reason: e.to_string(),
            })
    }

    /// The step queue's `DeliverChunk`: copies the chunk's images and publishes its rows'
    /// events, once. Returns the record (the earlier one when it was delivered already).
    pub async fn deliver_chunk(
        &self,
        job_id: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkDelivery, StepError> {
        let job = self.stored_job(job_id).await?;
        if let Some(done) = self.delivery_of(&job, key).await? {
            info!(job_id = %job_id, chunk = %key.label(), "chunk delivered already");
            return Ok(done);
        }
        let chunk = self
            .store
            .chunk(job_id, key)
            .await?
            .ok_or_else(|| StepError::Missing {
                what: format!("chunk {} of {job_id}", key.label()),
            })?;
        let Some(outcome) = &chunk.outcome else {
            return Err(StepError::NotYet(format!(
                "chunk {} of {job_id} has no outcome to deliver",
                key.label()
            )));
        };
        let payload = self
            .read_payload(&layout::chunk_payload_ref(
                &job.source.bucket,
                job_id,
                &key.label(),
                &self.settings,
            ))
            .await?;
        let fingerprints: Vec<String> = payload
            .variable_sets
            .iter()
            .map(|v| fingerprint(&payload.template_id, v))
            .collect();
        let renders = self.store.renders(&fingerprints).await?;
        let rows: Vec<RowToDeliver> = chunk
            .rows
            .iter()
            .enumerate()
            .map(|(index, row)| {
                let index = index as u32;
                let state = outcome.state_of(key, index);
                let url = match &state {
                    RowState::Reused { url } => Some(url.clone()),
                    RowState::Rendered { .. } => fingerprints
                        .get(index as usize)
                        .and_then(|fp| renders.get(fp))
                        .filter(|r| made_since(r, chunk.queued_at))
                        .map(|r| r.url.clone()),
                    _ => None,
                };
                RowToDeliver {
                    index,
                    row: *row,
                    state,
                    url,
                }
            })
            .collect();

        let mut record = ChunkDelivery::default();
        if let Some(delivery) = &job.spec.delivery {
            record.rows = self.copy_images(&job, delivery, &payload, &rows).await;
        }
        let events = row_events(&job, key, &payload, &rows, &record);
        if !events.is_empty() {
            self.outputs.row_events.publish(&events).await?;
        }
        record.events = events.len() as u32;
        let at = self.delivery_ref(&job, key);
        let bytes = serde_json::to_vec(&record).map_err(|e| StepError::Unreadable {
            what: format!("delivery record {at}"),
            reason: e.to_string(),
        })?;
        self.objects
            .put_bytes(&at, bytes, "application/json")
            .await?;
        let failed = record
            .rows
            .values()
            .filter(|r| matches!(r, DeliveredRow::Error(_)))
            .count();
        info!(job_id = %job_id, chunk = %key.label(), copied = record.rows.len() - failed, failed, events = record.events, "chunk delivered");
        metrics::emit(
            &[
                (
                    "ImagesDelivered",
                    (record.rows.len() - failed) as f64,
                    Unit::Count,
                ),
                ("DeliveriesFailed", failed as f64, Unit::Count),
                ("RowEventsPublished", f64::from(record.events), Unit::Count),
            ],
            &[("jobId", job_id.as_str())],
        );
        Ok(record)
    }

    /// Copies every row's image that has one: a fresh render always (its key may hold an older
    /// image), a reused one only when its key is empty (the earlier job's copy is kept).
    async fn copy_images(
        &self,
        job: &Job,
        delivery: &DeliverySpec,
        payload: &ChunkPayload,
        rows: &[RowToDeliver],
    ) -> BTreeMap<u32, DeliveredRow> {
        let pattern = match KeyPattern::parse(&delivery.key_pattern) {
            Ok(pattern) => pattern,
            Err(e) => {
                // Checked when the job was created; a record from an older version may differ.
                let error = format!("key pattern: {e}");
                return rows
                    .iter()
                    .filter(|r| r.url.is_some())
                    .map(|r| (r.index, DeliveredRow::Error(error.clone())))
                    .collect();
            }
        };
        let ext = payload.format.extension();
        // Collected first: a lazy iterator of futures makes the step's future not `Send`.
        let copies: Vec<_> = rows.iter().filter_map(|r| {
            let url = r.url.as_deref()?;
            let fields = payload.variable_sets.get(r.index as usize)?;
            let name = NameContext {
                row: r.row,
                template_id: &payload.template_id,
                job: job.id.as_str(),
                ext,
                fields,
            };
            let target = pattern.render(&name).map(|key| ObjectRef {
                bucket: delivery.bucket.clone(),
                key: format!("{}{key}", delivery.prefix),
            });
            let keep_existing = matches!(r.state, RowState::Reused { .. });
            Some(async move {
                let result = match target {
                    Ok(target) => self
                        .copy_image(url, &target, payload.format.content_type(), keep_existing)
                        .await
                        .map(|()| target.key),
                    Err(e) => Err(e.to_string()),
                };
                let delivered = match result {
                    Ok(key) => DeliveredRow::Key(key),
                    Err(error) => {
                        warn!(job_id = %job.id, row = r.row, error = %error, "image not delivered");
                        DeliveredRow::Error(error)
                    }
                };
                (r.index, delivered)
            })
        }).collect();
        stream::iter(copies)
            .buffer_unordered(COPY_CONCURRENCY)
            .collect::<HashMap<_, _>>()
            .await
            .into_iter()
            .collect()
    }

    /// One image to `target`, tried [`COPY_ATTEMPTS`] times while the failure may pass.
    async fn copy_image(
        &self,
        url: &str,
        target: &ObjectRef,
        content_type: &str,
        keep_existing: bool,
    ) -> Result<(), String> {
        let mut wait = COPY_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = async {
                if keep_existing && self.objects.version(target).await?.is_some() {
                    return Ok(());
                }
                let image = self.outputs.images.fetch(url).await?;
                self.objects
                    .put_bytes(target, image.bytes, content_type)
                    .await
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.retryable && tries < COPY_ATTEMPTS => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => return Err(format!("after {tries} tries: {e}")),
            }
        }
    }
}

/// One event per row the chunk finished (a row sent on to a retry finishes in that chunk).
fn row_events(
    job: &Job,
    key: ChunkKey,
    payload: &ChunkPayload,
    rows: &[RowToDeliver],
    record: &ChunkDelivery,
) -> Vec<RowEvent> {
    rows.iter()
        .filter(|r| !matches!(r.state, RowState::InFlight { .. }))
        .map(|r| {
            let (delivered, delivery_error) = match (record.rows.get(&r.index), &job.spec.delivery)
            {
                (Some(DeliveredRow::Key(key)), Some(spec)) => (
                    Some(ObjectRef {
                        bucket: spec.bucket.clone(),
                        key: key.clone(),
                    }),
                    None,
                ),
                (Some(DeliveredRow::Error(error)), _) => (None, Some(error.clone())),
                _ => (None, None),
            };
            let error = match &r.state {
                RowState::Failed { code, message } => Some(crate::domain::RowError {
                    code: code.clone(),
                    message: message.clone(),
                }),
                _ => None,
            };
            // A reused row was rendered by no attempt of this job.
            let attempt = if matches!(r.state, RowState::Reused { .. }) {
                0
            } else {
                key.attempt
            };
            let status = match &r.state {
                RowState::Rendered { .. } => "rendered",
                other => other.label(),
            };
            RowEvent {
                event_id: format!("{}/{}/{attempt}", job.id, r.row),
                kind: "row.finished".into(),
                job_id: job.id.to_string(),
                row: r.row,
                attempt,
                status: status.into(),
                template_id: payload.template_id.clone(),
                source: job.source.clone(),
                image_url: r.url.clone(),
                delivered,
                delivery_error,
                error,
                input: payload
                    .variable_sets
                    .get(r.index as usize)
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect()
}
