//! DynamoDB implementation of the `JobStore` port: one on-demand table (`pk`/`sk`) holding jobs,
//! chunks, the batch index, render/failure records by fingerprint, the submissions switch and
//! orphaned webhooks. The layout and the access pattern of each item type are in
//! `docs/table-design.md`.

mod codec;
mod errors;
#[cfg(feature = "test-support")]
mod test_support;
mod window;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use backon::{ExponentialBuilder, RetryableWithContext as _};
use futures::{StreamExt as _, TryStreamExt as _};
use tracing::{debug, warn};

use self::codec::{
    ACTIVE_PK, ALERT_PREFIX, BATCH_SK, CANCEL_REASON, CHUNK_PREFIX, CONTROL_PK, FAILURE_SK,
    INGEST_OFFSET, JOB_SK, MAX_IN_FLIGHT, PAUSE_REASON, PK, RENDER_SK, Reader, SK, SUBMISSIONS_SK,
    TTL, chunk_from_item, chunk_item, chunk_sk, describe, fingerprint_pks, job_from_item, job_item,
    job_pk, json, key, n, s, truncate,
};
pub use self::codec::{Item, ItemError};
pub use self::errors::StoreError;
use self::errors::{checked, sdk_error};
#[cfg(feature = "test-support")]
pub use self::test_support::create_table;
use crate::domain::{
    Chunk, ChunkKey, ChunkState, ControlChange, Controlled, IngestCheckpoint, Job, JobId,
    JobStatus, ManifestCheckpoint, ManifestLocation,
};
use crate::ports::{
    BeginSubmit, ChunkCompletion, ChunkLedger, FailureRecord, JobLedger, MAX_REOPEN_CHUNKS,
    PortError, PortResult, RenderLog, RenderRecord, Reopen, SubmitSwitch,
};

/// How long render and failure records live by default: Pictify keeps rendered images 7 days,
/// so a record older than that points at an image that is gone.
pub const DEFAULT_RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
const ORPHAN_TTL_SECS: i64 = 14 * 86_400;
/// An item is at most 400 KB; a webhook body kept for the operator does not need more than this.
const ORPHAN_BODY_MAX_BYTES: usize = 64 * 1024;
/// AWS caps BatchGetItem at 100 keys (moto does not, so we must).
const BATCH_GET_MAX_KEYS: usize = 100;
/// Keys left unprocessed are asked for again after 100 ms, doubling up to 3.2 s (each plus up to
/// as much again of jitter): 8 rounds in all.
const BATCH_GET_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_factor(2.0)
    .with_max_delay(Duration::from_millis(3_200))
    .with_max_times(7)
    .with_jitter();
const BATCH_GET_CONCURRENCY: usize = 4;
/// Conditional puts cannot be batched; this bounds the parallel PutItem calls of `put_chunks`.
const PUT_CONCURRENCY: usize = 8;

/// The `JobStore` on one DynamoDB table, shaped as `template.yaml` declares it.
#[derive(Debug, Clone)]
pub struct DynamoJobStore {
    client: Client,
    table: String,
    /// Render and failure records expire this long after they are written (DynamoDB TTL).
    record_ttl: i64,
}

/// A batch get between rounds: the keys still to read and the items found so far.
struct BatchGet {
    keys: Vec<Item>,
    found: Vec<Item>,
    round: u32,
}

/// Why a batch get round did not finish the read.
enum RoundError {
    /// This many keys left unprocessed (throttling, the 16 MB response cap): worth another round.
    Unprocessed(usize),
    /// The call failed: not retried here (the SDK has retried already).
    Failed(PortError),
}

impl DynamoJobStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoJobStore {
            client,
            table: table.into(),
            record_ttl: DEFAULT_RECORD_TTL.as_secs() as i64,
        }
    }

    /// Render and failure records live `ttl` (the image retention of the Pictify account).
    pub fn with_record_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.record_ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, operation: &str, pk: String, sk: &str) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(operation, e))?;
        Ok(out.item)
    }

    /// A conditional put: `false` when an item with that key exists already (left as it is).
    async fn put_if_absent(&self, operation: &str, item: Item) -> PortResult<bool> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .send()
            .await;
        Ok(checked(operation, result)?.is_ok())
    }

    /// Every item of a partition whose sort key starts with `prefix` (`None`: all), in
    /// sort-key order.
    pub(super) async fn query_all(
        &self,
        operation: &str,
        pk: &str,
        prefix: Option<&str>,
    ) -> PortResult<Vec<Item>> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk));
            // DynamoDB refuses an empty begins_with prefix.
            let query = match prefix {
                Some(prefix) => query
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_names("#sk", SK)
                    .expression_attribute_values(":prefix", s(prefix)),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let out = query
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| sdk_error(operation, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => break,
            }
        }
        Ok(items)
    }

    async fn put_chunk_if_absent(&self, chunk: &Chunk) -> PortResult<()> {
        let operation = format!("put_chunks {} {}", chunk.job, chunk.key.label());
        if !self.put_if_absent(&operation, chunk_item(chunk)?).await? {
            debug!(job_id = %chunk.job, chunk = %chunk.key.label(), "chunk exists already; left as is");
        }
        Ok(())
    }

    /// Reads every existing item of `sk` among `pk`s, 100 keys per call, retrying what DynamoDB
    /// leaves unprocessed (throttling, the 16 MB response cap) with exponential backoff.
    async fn batch_get(
        &self,
        operation: &'static str,
        pks: Vec<String>,
        sk: &str,
    ) -> PortResult<Vec<Item>> {
        let keys = pks.into_iter().map(|pk| key(pk, sk)).collect();
        self.batch_get_keys(operation, keys).await
    }

    /// Reads items by key, 100 keys a call, a few calls at once; items not found are left out.
    async fn batch_get_keys(
        &self,
        operation: &'static str,
        keys: Vec<Item>,
    ) -> PortResult<Vec<Item>> {
        let groups: Vec<Vec<Item>> = keys
            .chunks(BATCH_GET_MAX_KEYS)
            .map(<[Item]>::to_vec)
            .collect();
        let found: Vec<Vec<Item>> = futures::stream::iter(groups)
            .map(|keys| self.batch_get_group(operation, keys))
            .buffer_unordered(BATCH_GET_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn batch_get_group(
        &self,
        operation: &'static str,
        keys: Vec<Item>,
    ) -> PortResult<Vec<Item>> {
        let reading = BatchGet {
            found: Vec::with_capacity(keys.len()),
            keys,
            round: 0,
        };
        let (reading, outcome) = (move |mut reading: BatchGet| async move {
            let outcome = self.batch_get_round(operation, &mut reading).await;
            (reading, outcome)
        })
        .retry(BATCH_GET_BACKOFF)
        .context(reading)
        .when(|outcome| matches!(outcome, RoundError::Unprocessed(_)))
        .notify(|outcome, delay| {
            let unprocessed = match outcome {
                RoundError::Unprocessed(left) => *left,
                RoundError::Failed(_) => 0,
            };
            debug!(
                operation,
                unprocessed,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "batch get left keys unprocessed; retrying"
            );
        })
        .await;
        match outcome {
            Ok(()) => Ok(reading.found),
            Err(RoundError::Failed(error)) => Err(error),
            Err(RoundError::Unprocessed(_)) => Err(PortError::new(
                operation,
                StoreError::Unprocessed {
                    operation,
                    rounds: reading.round,
                },
            )),
        }
    }

    /// One BatchGetItem call for the keys still to read; what it leaves unprocessed stays.
    async fn batch_get_round(
        &self,
        operation: &'static str,
        reading: &mut BatchGet,
    ) -> Result<(), RoundError> {
        reading.round += 1;
        let request = KeysAndAttributes::builder()
            .set_keys(Some(std::mem::take(&mut reading.keys)))
            .consistent_read(true)
            .build()
            .map_err(|e| RoundError::Failed(PortError::permanent(operation, e)))?;
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, request)
            .send()
            .await
            .map_err(|e| RoundError::Failed(sdk_error(operation, e)))?;
        if let Some(mut responses) = out.responses {
            reading
                .found
                .extend(responses.remove(&self.table).unwrap_or_default());
        }
        reading.keys = out
            .unprocessed_keys
            .and_then(|mut left| left.remove(&self.table))
            .map(|left| left.keys)
            .unwrap_or_default();
        match reading.keys.len() {
            0 => Ok(()),
            left => Err(RoundError::Unprocessed(left)),
        }
    }

    async fn put_record(&self, operation: &str, item: Item) -> PortResult<()> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error(operation, e))?;
        Ok(())
    }

    fn completion_transaction(
        &self,
        c: &ChunkCompletion,
        with_retry: bool,
    ) -> PortResult<Vec<TransactWriteItem>> {
        let operation = "complete_chunk";
        let mut set_chunk = String::from("SET #state = :completed, #outcome = :outcome");
        if c.alert {
            set_chunk.push_str(", #alerted = :true");
        }
        let mut chunk = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&c.job), &chunk_sk(c.key))))
            .update_expression(set_chunk)
            .condition_expression("#state = :submitted OR #state = :submitting")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#outcome", "outcome")
            .expression_attribute_values(":completed", s(ChunkState::Completed.as_str()))
            .expression_attribute_values(":submitted", s(ChunkState::Submitted.as_str()))
            .expression_attribute_values(":submitting", s(ChunkState::Submitting.as_str()))
            .expression_attribute_values(":outcome", json("chunk outcome", &c.outcome)?);
        if c.alert {
            chunk = chunk
                .expression_attribute_names("#alerted", "alerted")
                .expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        let d = c.delta;
        let job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&c.job), JOB_SK)))
            .update_expression(
                "ADD #rendered :rendered, #failed :failed, #cancelled :cancelled, #reused :reused, #retried :retried, \
                 #chunks :chunks, #chunksDone :chunksDone, #renderMsTotal :renderMs",
            )
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#rendered", "rendered")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_names("#cancelled", "cancelled")
            .expression_attribute_names("#reused", "reused")
            .expression_attribute_names("#retried", "retried")
            .expression_attribute_names("#chunks", "chunks")
            .expression_attribute_names("#chunksDone", "chunksDone")
            .expression_attribute_names("#renderMsTotal", "renderMsTotal")
            .expression_attribute_values(":rendered", n(d.rendered))
            .expression_attribute_values(":failed", n(d.failed))
            .expression_attribute_values(":cancelled", n(d.cancelled))
            .expression_attribute_values(":reused", n(d.reused))
            .expression_attribute_values(":retried", n(d.retried))
            .expression_attribute_values(":chunks", n(d.chunks))
            .expression_attribute_values(":chunksDone", n(d.chunks_done))
            .expression_attribute_values(":renderMs", n(c.outcome.duration_ms.unwrap_or(0)));
        let mut items = vec![
            TransactWriteItem::builder()
                .update(
                    chunk
                        .build()
                        .map_err(|e| PortError::permanent(operation, e))?,
                )
                .build(),
            TransactWriteItem::builder()
                .update(
                    job.build()
                        .map_err(|e| PortError::permanent(operation, e))?,
                )
                .build(),
        ];
        if let (Some(retry), true) = (&c.retry, with_retry) {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(chunk_item(retry)?))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .map_err(|e| PortError::permanent(operation, e))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        Ok(items)
    }
}

#[async_trait]
impl JobLedger for DynamoJobStore {
    async fn create_job(&self, job: &Job) -> PortResult<(Job, bool)> {
        let operation = format!("create_job {}", job.id);
        // The active-job marker first: if we die before the job exists, the reconciler finds a
        // marker without a job and removes it; the other order could hide a job from it.
        self.put_record(&operation, key(ACTIVE_PK.to_owned(), &job_pk(&job.id)))
            .await?;
        if self.put_if_absent(&operation, job_item(job)?).await? {
            return Ok((job.clone(), true));
        }
        // A redelivered S3 event: the job exists, hand back what is stored.
        let item = self
            .get(&operation, job_pk(&job.id), JOB_SK)
            .await?
            .ok_or_else(|| {
                PortError::new(
                    &operation,
                    StoreError::NotFound {
                        what: "job",
                        id: job.id.to_string(),
                    },
                )
            })?;
        let stored = job_from_item(&item).map_err(|e| PortError::permanent(&operation, e))?;
        Ok((stored, false))
    }

    async fn active_jobs(&self) -> PortResult<Vec<JobId>> {
        let mut jobs = Vec::new();
        for item in self.query_all("active_jobs", ACTIVE_PK, None).await? {
            let id = item
                .get(SK)
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.strip_prefix("JOB#"));
            match id.map(JobId::parse) {
                Some(Ok(id)) => jobs.push(id),
                _ => warn!(item = %describe(&item), "ignoring a malformed active-job marker"),
            }
        }
        Ok(jobs)
    }

    async fn job(&self, id: &JobId) -> PortResult<Option<Job>> {
        let operation = format!("job {id}");
        let Some(item) = self.get(&operation, job_pk(id), JOB_SK).await? else {
            return Ok(None);
        };
        job_from_item(&item)
            .map(Some)
            .map_err(|e| PortError::permanent(operation, e))
    }

    /// Sets what only ingest knows (status, rows, rejected, sample, error) and ADDs the other
    /// counters: a batch may complete before ingest of a large file ends, and a SET would erase it.
    /// Guarded by `status = ingesting`, so a repeated call changes nothing.
    async fn finish_ingest(&self, job: &Job) -> PortResult<()> {
        let operation = format!("finish_ingest {}", job.id);
        let c = job.counters;
        let mut set = String::from(
            "SET #status = :status, #rows = :rows, #rejected = :rejected, #sample = :sample",
        );
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&job.id), JOB_SK)))
            .condition_expression("#status = :ingesting")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#rows", "rows")
            .expression_attribute_names("#rejected", "rejected")
            .expression_attribute_names("#sample", "rejectedSample")
            .expression_attribute_names("#rendered", "rendered")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_names("#retried", "retried")
            .expression_attribute_names("#chunks", "chunks")
            .expression_attribute_names("#chunksDone", "chunksDone")
            .expression_attribute_values(":status", s(job.status.as_str()))
            .expression_attribute_values(":ingesting", s(JobStatus::Ingesting.as_str()))
            .expression_attribute_values(":rows", n(c.rows))
            .expression_attribute_values(":rejected", n(c.rejected))
            .expression_attribute_values(":sample", json("rejected sample", &job.rejected_sample)?)
            .expression_attribute_values(":rendered", n(c.rendered))
            .expression_attribute_values(":failed", n(c.failed))
            .expression_attribute_values(":retried", n(c.retried))
            .expression_attribute_values(":chunks", n(c.chunks))
            .expression_attribute_values(":chunksDone", n(c.chunks_done));
        if let Some(at) = job.ingested_at {
            set.push_str(", #ingestedAt = :ingestedAt");
            update = update
                .expression_attribute_names("#ingestedAt", "ingestedAt")
                .expression_attribute_values(":ingestedAt", n(at));
        }
        if let Some(error) = &job.error {
            set.push_str(", #error = :error");
            update = update
                .expression_attribute_names("#error", "error")
                .expression_attribute_values(":error", s(error));
        }
        let update = update.update_expression(format!(
            "{set} ADD #rendered :rendered, #failed :failed, #retried :retried, #chunks :chunks, #chunksDone :chunksDone"
        ));
        match checked(&operation, update.send().await)? {
            Ok(_) => Ok(()),
            Err(None) => Err(PortError::permanent(
                operation,
                StoreError::NotFound {
                    what: "job",
                    id: job.id.to_string(),
                },
            )),
            Err(Some(_)) => {
                debug!(job_id = %job.id, "finish_ingest repeated after the job left `ingesting`; nothing changed");
                Ok(())
            }
        }
    }

    async fn mark_progress(&self, job: &JobId, status: JobStatus, now: i64) -> PortResult<bool> {
        let operation = format!("mark_progress {job}");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .update_expression("SET #progressAt = :now")
            .condition_expression("#status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#progressAt", "progressAt")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        Ok(checked(&operation, result)?.is_ok())
    }

    async fn save_manifest_checkpoint(
        &self,
        job: &JobId,
        checkpoint: Option<&ManifestCheckpoint>,
        now: i64,
    ) -> PortResult<bool> {
        let operation = format!("save_manifest_checkpoint {job}");
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .condition_expression("#status = :finishing")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#progressAt", "progressAt")
            .expression_attribute_names("#checkpoint", "manifestCheckpoint")
            .expression_attribute_values(":finishing", s(JobStatus::Finishing.as_str()))
            .expression_attribute_values(":now", n(now));
        let update = match checkpoint {
            Some(checkpoint) => update
                .update_expression("SET #progressAt = :now, #checkpoint = :checkpoint")
                .expression_attribute_values(
                    ":checkpoint",
                    json("manifest checkpoint", checkpoint)?,
                ),
            None => update.update_expression("SET #progressAt = :now REMOVE #checkpoint"),
        };
        let result = update.send().await;
        Ok(checked(&operation, result)?.is_ok())
    }

    /// One conditional update: while `ingesting`, and never moving the offset back.
    async fn save_checkpoint(
        &self,
        job: &JobId,
        checkpoint: &IngestCheckpoint,
        rejected_sample: &[(u64, String)],
    ) -> PortResult<bool> {
        let operation = format!("save_checkpoint {job}");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(job), JOB_SK)))
            .update_expression(
                "SET #checkpoint = :checkpoint, #offset = :offset, #sample = :sample",
            )
            .condition_expression(
                "#status = :ingesting AND (attribute_not_exists(#offset) OR #offset <= :offset)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#checkpoint", "ingestCheckpoint")
            .expression_attribute_names("#offset", INGEST_OFFSET)
            .expression_attribute_names("#sample", "rejectedSample")
            .expression_attribute_values(":ingesting", s(JobStatus::Ingesting.as_str()))
            .expression_attribute_values(":checkpoint", json("ingest checkpoint", checkpoint)?)
            .expression_attribute_values(":offset", n(checkpoint.position.offset))
            .expression_attribute_values(":sample", json("rejected sample", &rejected_sample)?)
            .send()
            .await;
        Ok(checked(&operation, result)?.is_ok())
    }

    /// One conditional update per change, the condition being [`Job::control`]'s rule; when it
    /// fails, the rule on the item as it was gives the answer.
    async fn control_job(
        &self,
        id: &JobId,
        change: &ControlChange,
    ) -> PortResult<Option<Controlled>> {
        let operation = format!("control_job {id} {change:?}");
        let active = "#status IN (:ingesting, :running)";
        let live = "attribute_not_exists(#cancel)";
        let (update, condition, value) = match change {
            ControlChange::Cancel { reason } => (
                "SET #cancel = :v REMOVE #pause",
                format!("{active} AND {live}"),
                Some(s(reason)),
            ),
            ControlChange::Pause { reason } => (
                "SET #pause = :v",
                format!("{active} AND {live} AND attribute_not_exists(#pause)"),
                Some(s(reason)),
            ),
            ControlChange::Resume => (
                "REMOVE #pause",
                format!("{active} AND {live} AND attribute_exists(#pause)"),
                None,
            ),
            ControlChange::MaxInFlight(Some(limit)) => (
                "SET #limit = :v",
                format!("{active} AND {live} AND (attribute_not_exists(#limit) OR #limit <> :v)"),
                Some(n(*limit)),
            ),
            ControlChange::MaxInFlight(None) => (
                "REMOVE #limit",
                format!("{active} AND {live} AND attribute_exists(#limit)"),
                None,
            ),
        };
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), JOB_SK)))
            .update_expression(update)
            .condition_expression(format!("attribute_exists(#pk) AND {condition}"))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#cancel", CANCEL_REASON)
            .expression_attribute_values(":ingesting", s(JobStatus::Ingesting.as_str()))
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()));
        if update.contains("#pause") || condition.contains("#pause") {
            request = request.expression_attribute_names("#pause", PAUSE_REASON);
        }
        if update.contains("#limit") {
            request = request.expression_attribute_names("#limit", MAX_IN_FLIGHT);
        }
        if let Some(value) = value {
            request = request.expression_attribute_values(":v", value);
        }
        match checked(&operation, request.send().await)? {
            Ok(_) => Ok(Some(Controlled::Applied)),
            Err(None) => Ok(None),
            Err(Some(old)) => {
                let job = job_from_item(&old).map_err(|e| PortError::permanent(&operation, e))?;
                match job.control(change).answer {
                    // The item changed between the condition and this read: let the caller retry.
                    Controlled::Applied => Err(PortError::new(
                        operation,
                        "the job changed while being controlled",
                    )),
                    answer => Ok(Some(answer)),
                }
            }
        }
    }

    async fn transition_job(&self, id: &JobId, from: JobStatus, to: JobStatus) -> PortResult<bool> {
        let operation = format!("transition_job {id} {} -> {}", from.as_str(), to.as_str());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), JOB_SK)))
            .update_expression("SET #status = :to")
            .condition_expression("#status = :from")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .send()
            .await;
        Ok(checked(&operation, result)?.is_ok())
    }

    async fn finish_job(
        &self,
        id: &JobId,
        status: JobStatus,
        manifest: &ManifestLocation,
        now: i64,
    ) -> PortResult<()> {
        let operation = format!("finish_job {id}");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(id), JOB_SK)))
            .update_expression("SET #status = :status, #completedAt = :now, #manifest = :manifest")
            .condition_expression("attribute_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#completedAt", "completedAt")
            .expression_attribute_names("#manifest", "manifest")
            .expression_attribute_values(":status", s(status.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":manifest", json("manifest location", manifest)?)
            .send()
            .await;
        match checked(&operation, result)? {
            Ok(_) => {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key(ACTIVE_PK.to_owned(), &job_pk(id))))
                    .send()
                    .await
                    .map_err(|e| sdk_error(&operation, e))?;
                Ok(())
            }
            Err(_) => Err(PortError::permanent(
                operation,
                StoreError::NotFound {
                    what: "job",
                    id: id.to_string(),
                },
            )),
        }
    }

    async fn reopen_job(&self, reopen: &Reopen) -> PortResult<bool> {
        let r = reopen;
        let operation = format!("reopen_job {}", r.job);
        if r.chunks.len() > MAX_REOPEN_CHUNKS {
            return Err(PortError::permanent(
                &operation,
                format!(
                    "{} chunks in one reopen; at most {MAX_REOPEN_CHUNKS}",
                    r.chunks.len()
                ),
            ));
        }
        let build = |e: aws_sdk_dynamodb::error::BuildError| PortError::permanent(&operation, e);
        let job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(&r.job), JOB_SK)))
            .update_expression(
                "SET #status = :running, #plan = :plan \
                 ADD #failed :unfailed, #rendered :unrendered, #retried :retried, #chunks :chunks, \
                 #reopened :one REMOVE #completedAt",
            )
            .expression_attribute_names("#plan", "reopenPlan")
            .expression_attribute_values(":plan", json("reopen plan", &r.plan())?)
            .condition_expression("#status = :from")
            .expression_attribute_names("#status", "status")
            .expression_attribute_names("#failed", "failed")
            .expression_attribute_names("#rendered", "rendered")
            .expression_attribute_names("#retried", "retried")
            .expression_attribute_names("#chunks", "chunks")
            .expression_attribute_names("#reopened", "reopened")
            .expression_attribute_names("#completedAt", "completedAt")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":from", s(r.from.as_str()))
            .expression_attribute_values(":unfailed", n(-i128::from(r.unfailed)))
            .expression_attribute_values(":unrendered", n(-i128::from(r.unrendered)))
            .expression_attribute_values(":retried", n(r.unfailed + r.unrendered))
            .expression_attribute_values(":chunks", n(r.planned))
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(build)?;
        // Finishing removed the job from the reconciler's list: put it back.
        let active = Put::builder()
            .table_name(&self.table)
            .set_item(Some(key(ACTIVE_PK.to_owned(), &job_pk(&r.job))))
            .build()
            .map_err(build)?;
        let mut items = vec![
            TransactWriteItem::builder().update(job).build(),
            TransactWriteItem::builder().put(active).build(),
        ];
        for chunk in &r.chunks {
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(chunk_item(chunk)?))
                .condition_expression("attribute_not_exists(#pk)")
                .expression_attribute_names("#pk", PK)
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let Err(err) = result else { return Ok(true) };
        let job_condition_failed = match err.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
                e.cancellation_reasons().first().and_then(|r| r.code())
                    == Some("ConditionalCheckFailed")
            }
            _ => false,
        };
        if job_condition_failed {
            return Ok(false);
        }
        Err(sdk_error(&operation, err))
    }

    async fn claim_alert(&self, job: &JobId, kind: &str, now: i64) -> PortResult<bool> {
        let mut item = key(job_pk(job), &format!("{ALERT_PREFIX}{kind}"));
        item.insert("sentAt".into(), n(now));
        self.put_if_absent(&format!("claim_alert {job} {kind}"), item)
            .await
    }
}

#[async_trait]
impl ChunkLedger for DynamoJobStore {
    async fn put_chunks(&self, chunks: &[Chunk]) -> PortResult<()> {
        futures::stream::iter(chunks.iter().map(Ok))
            .try_for_each_concurrent(PUT_CONCURRENCY, |chunk| self.put_chunk_if_absent(chunk))
            .await
    }

    async fn chunk(&self, job: &JobId, key: ChunkKey) -> PortResult<Option<Chunk>> {
        let operation = format!("chunk {job} {}", key.label());
        let Some(item) = self.get(&operation, job_pk(job), &chunk_sk(key)).await? else {
            return Ok(None);
        };
        chunk_from_item(&item)
            .map(Some)
            .map_err(|e| PortError::permanent(operation, e))
    }

    async fn chunks_of_job(&self, job: &JobId) -> PortResult<Vec<Chunk>> {
        let operation = format!("chunks_of_job {job}");
        let mut chunks = self
            .query_all(&operation, &job_pk(job), Some(CHUNK_PREFIX))
            .await?
            .iter()
            .map(chunk_from_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PortError::permanent(&operation, e))?;
        // Labels sort like keys until seq passes 99 999 or attempt passes 9; the key never lies.
        chunks.sort_by_key(|c| c.key);
        Ok(chunks)
    }

    async fn chunks_by_key(&self, job: &JobId, keys: &[ChunkKey]) -> PortResult<Vec<Chunk>> {
        let unique: std::collections::BTreeSet<ChunkKey> = keys.iter().copied().collect();
        let wanted = unique
            .into_iter()
            .map(|k| key(job_pk(job), &chunk_sk(k)))
            .collect();
        let mut chunks = self
            .batch_get_keys("chunks_by_key", wanted)
            .await?
            .iter()
            .map(chunk_from_item)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PortError::permanent(format!("chunks_by_key {job}"), e))?;
        chunks.sort_by_key(|c| c.key);
        Ok(chunks)
    }

    async fn begin_submit(
        &self,
        job: &JobId,
        key: ChunkKey,
        now: i64,
        grace: Duration,
    ) -> PortResult<BeginSubmit> {
        let operation = format!("begin_submit {job} {}", key.label());
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(job_pk(job), &chunk_sk(key))))
            .update_expression("SET #state = :submitting, #since = :now ADD #attempts :one")
            .condition_expression("#state = :queued OR (#state = :submitting AND #since < :cutoff)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#since", "submittingSince")
            .expression_attribute_names("#attempts", "submitAttempts")
            .expression_attribute_values(":submitting", s(ChunkState::Submitting.as_str()))
            .expression_attribute_values(":queued", s(ChunkState::Queued.as_str()))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":cutoff", n(now.saturating_sub(grace)))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match checked(&operation, result)? {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                let attempt = Reader::new(&item)
                    .n("submitAttempts")
                    .map_err(|e| PortError::permanent(&operation, e))?;
                return Ok(BeginSubmit::Proceed { attempt });
            }
            Err(Some(old)) => old,
            // Only a missing chunk fails without an old item; a consistent read makes sure.
            Err(None) => match self.get(&operation, job_pk(job), &chunk_sk(key)).await? {
                Some(item) => item,
                None => return Ok(BeginSubmit::Unknown),
            },
        };
        let chunk = chunk_from_item(&old).map_err(|e| PortError::permanent(&operation, e))?;
        match chunk.state {
            ChunkState::Submitted => match chunk.batch_id {
                Some(batch_id) => Ok(BeginSubmit::AlreadySubmitted { batch_id }),
                None => Err(PortError::permanent(
                    operation,
                    ItemError::Missing {
                        item: describe(&old),
                        attribute: "batchId",
                        expected: "S",
                    },
                )),
            },
            ChunkState::Completed => Ok(BeginSubmit::Completed),
            ChunkState::Submitting => Ok(BeginSubmit::InProgress {
                since: chunk.submitting_since.unwrap_or(now),
            }),
            // Queued passes the condition; seeing it here means it changed under us: try again later.
            ChunkState::Queued => Ok(BeginSubmit::InProgress { since: now }),
        }
    }

    async fn record_submitted(
        &self,
        job: &JobId,
        key: ChunkKey,
        batch_id: &str,
        now: i64,
    ) -> PortResult<()> {
        let operation = format!("record_submitted {job} {} {batch_id}", key.label());
        // The index first: a webhook may race the chunk update, and must find its chunk.
        let mut index = self::key(format!("BATCH#{batch_id}"), BATCH_SK);
        index.insert("jobId".into(), s(job.as_str()));
        index.insert("chunk".into(), s(key.label()));
        self.put_record(&operation, index).await?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(job_pk(job), &chunk_sk(key))))
            .update_expression("SET #state = :submitted, #batchId = :batchId, #submittedAt = :now")
            .condition_expression("#state = :submitting OR #state = :queued")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#batchId", "batchId")
            .expression_attribute_names("#submittedAt", "submittedAt")
            .expression_attribute_values(":submitted", s(ChunkState::Submitted.as_str()))
            .expression_attribute_values(":submitting", s(ChunkState::Submitting.as_str()))
            .expression_attribute_values(":queued", s(ChunkState::Queued.as_str()))
            .expression_attribute_values(":batchId", s(batch_id))
            .expression_attribute_values(":now", n(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match checked(&operation, result)? {
            Ok(_) => Ok(()),
            Err(None) => Err(PortError::permanent(
                operation,
                StoreError::NotFound {
                    what: "chunk",
                    id: key.idempotency_key(job),
                },
            )),
            // A late duplicate: the chunk moved on already and must not regress.
            Err(Some(old)) => {
                let stored = Reader::new(&old).opt_s("batchId").ok().flatten();
                if stored.is_some_and(|stored| stored != batch_id) {
                    warn!(job_id = %job, chunk = %key.label(), batch_id, stored_batch_id = ?stored,
                        "chunk already submitted under another batch id; keeping the first");
                } else {
                    debug!(job_id = %job, chunk = %key.label(), batch_id, "record_submitted repeated; nothing changed");
                }
                Ok(())
            }
        }
    }

    async fn release_submit(&self, job: &JobId, key: ChunkKey) -> PortResult<()> {
        let operation = format!("release_submit {job} {}", key.label());
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(self::key(job_pk(job), &chunk_sk(key))))
            .update_expression("SET #state = :queued REMOVE #since")
            .condition_expression("#state = :submitting")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#since", "submittingSince")
            .expression_attribute_values(":queued", s(ChunkState::Queued.as_str()))
            .expression_attribute_values(":submitting", s(ChunkState::Submitting.as_str()))
            .send()
            .await;
        if checked(&operation, result)?.is_err() {
            debug!(job_id = %job, chunk = %key.label(), "release_submit found the chunk not submitting; nothing changed");
        }
        Ok(())
    }

    async fn chunk_by_batch(&self, batch_id: &str) -> PortResult<Option<(JobId, ChunkKey)>> {
        let operation = format!("chunk_by_batch {batch_id}");
        let Some(item) = self
            .get(&operation, format!("BATCH#{batch_id}"), BATCH_SK)
            .await?
        else {
            return Ok(None);
        };
        let decode = || -> Result<(JobId, ChunkKey), ItemError> {
            let r = Reader::new(&item);
            let job = JobId::parse(r.s("jobId")?).map_err(|reason| r.invalid("jobId", reason))?;
            let label = r.s("chunk")?;
            let key = ChunkKey::parse_label(label)
                .ok_or_else(|| r.invalid("chunk", format!("`{label}` is not a chunk label")))?;
            Ok((job, key))
        };
        decode()
            .map(Some)
            .map_err(|e| PortError::permanent(operation, e))
    }

    async fn complete_chunk(&self, completion: &ChunkCompletion) -> PortResult<bool> {
        let c = completion;
        let operation = format!("complete_chunk {} {}", c.job, c.key.label());
        let mut with_retry = true;
        loop {
            let items = self.completion_transaction(c, with_retry)?;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            let Err(err) = result else { return Ok(true) };
            let reasons: Vec<Option<String>> = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(e)) => e
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().map(str::to_owned))
                    .collect(),
                _ => return Err(sdk_error(&operation, err)),
            };
            let failed = |i: usize| {
                reasons.get(i).and_then(|r| r.as_deref()) == Some("ConditionalCheckFailed")
            };
            if failed(0) {
                debug!(job_id = %c.job, chunk = %c.key.label(), "chunk outcome already applied");
                return Ok(false);
            }
            if failed(1) {
                let rejected = StoreError::CompletionRejected {
                    job: c.job.to_string(),
                    chunk: c.key.label(),
                };
                return Err(PortError::permanent(operation, rejected));
            }
            if failed(2) && with_retry {
                // The retry chunk exists (a crashed earlier attempt cannot leave it alone, but a
                // hand-made one can): apply the outcome without re-creating it.
                warn!(job_id = %c.job, chunk = %c.key.label(), "retry chunk exists already; completing without it");
                with_retry = false;
                continue;
            }
            // TransactionConflict and friends: another writer touched these items; try later.
            return Err(sdk_error(&operation, err));
        }
    }
}

#[async_trait]
impl RenderLog for DynamoJobStore {
    async fn record_render(&self, fingerprint: &str, record: &RenderRecord) -> PortResult<()> {
        let mut item = key(format!("FP#{fingerprint}"), RENDER_SK);
        item.insert("url".into(), s(&record.url));
        if let Some(image_id) = &record.image_id {
            item.insert("imageId".into(), s(image_id));
        }
        if let Some(rendered_at) = &record.rendered_at {
            item.insert("renderedAt".into(), s(rendered_at));
        }
        item.insert("recordedAt".into(), n(record.recorded_at));
        item.insert(
            TTL.into(),
            n(record.recorded_at.saturating_add(self.record_ttl)),
        );
        self.put_record("record_render", item).await
    }

    async fn record_failure(&self, fingerprint: &str, record: &FailureRecord) -> PortResult<()> {
        let mut item = key(format!("FP#{fingerprint}"), FAILURE_SK);
        item.insert("code".into(), s(&record.code));
        item.insert("message".into(), s(&record.message));
        item.insert("recordedAt".into(), n(record.recorded_at));
        item.insert(
            TTL.into(),
            n(record.recorded_at.saturating_add(self.record_ttl)),
        );
        self.put_record("record_failure", item).await
    }

    async fn renders(&self, fingerprints: &[String]) -> PortResult<HashMap<String, RenderRecord>> {
        let items = self
            .batch_get("renders", fingerprint_pks(fingerprints), RENDER_SK)
            .await?;
        items
            .iter()
            .map(|item| {
                let r = Reader::new(item);
                let record = RenderRecord {
                    url: r.s("url")?.to_owned(),
                    image_id: r.opt_s("imageId")?.map(str::to_owned),
                    rendered_at: r.opt_s("renderedAt")?.map(str::to_owned),
                    recorded_at: r.n("recordedAt")?,
                };
                Ok((r.fingerprint()?, record))
            })
            .collect::<Result<_, ItemError>>()
            .map_err(|e| PortError::permanent("renders", e))
    }

    async fn failures(
        &self,
        fingerprints: &[String],
    ) -> PortResult<HashMap<String, FailureRecord>> {
        let items = self
            .batch_get("failures", fingerprint_pks(fingerprints), FAILURE_SK)
            .await?;
        items
            .iter()
            .map(|item| {
                let r = Reader::new(item);
                let record = FailureRecord {
                    code: r.s("code")?.to_owned(),
                    message: r.s("message")?.to_owned(),
                    recorded_at: r.n("recordedAt")?,
                };
                Ok((r.fingerprint()?, record))
            })
            .collect::<Result<_, ItemError>>()
            .map_err(|e| PortError::permanent("failures", e))
    }

    async fn record_orphan(&self, kind: &str, id: &str, body: &str, now: i64) -> PortResult<()> {
        let mut item = key(format!("ORPHAN#{kind}#{id}"), &now.to_string());
        item.insert("kind".into(), s(kind));
        item.insert("body".into(), s(truncate(body, ORPHAN_BODY_MAX_BYTES)));
        item.insert(
            "truncated".into(),
            AttributeValue::Bool(body.len() > ORPHAN_BODY_MAX_BYTES),
        );
        item.insert("recordedAt".into(), n(now));
        item.insert(TTL.into(), n(now.saturating_add(ORPHAN_TTL_SECS)));
        self.put_record(&format!("record_orphan {kind} {id}"), item)
            .await
    }

    async fn batch_completed_early(&self, batch_id: &str) -> PortResult<bool> {
        let operation = format!("batch_completed_early {batch_id}");
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("ORPHAN#batch.completed#{batch_id}")))
            .limit(1)
            .send()
            .await;
        match out {
            Ok(out) => Ok(out.count() > 0),
            Err(e) => Err(sdk_error(operation, e)),
        }
    }
}

#[async_trait]
impl SubmitSwitch for DynamoJobStore {
    async fn pause_submissions(&self, reason: &str, now: i64) -> PortResult<bool> {
        let mut item = key(CONTROL_PK.to_owned(), SUBMISSIONS_SK);
        item.insert("reason".into(), s(reason));
        item.insert("since".into(), n(now));
        self.put_if_absent("pause_submissions", item).await
    }

    async fn submissions_paused(&self) -> PortResult<Option<String>> {
        let operation = "submissions_paused";
        let Some(item) = self
            .get(operation, CONTROL_PK.to_owned(), SUBMISSIONS_SK)
            .await?
        else {
            return Ok(None);
        };
        let reason = Reader::new(&item)
            .opt_s("reason")
            .map_err(|e| PortError::permanent(operation, e))?;
        Ok(Some(reason.unwrap_or("paused").to_owned()))
    }

    async fn resume_submissions(&self) -> PortResult<()> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(CONTROL_PK.to_owned(), SUBMISSIONS_SK)))
            .send()
            .await;
        result.map_err(|e| sdk_error("resume_submissions", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder as _;

    use super::*;

    #[test]
    fn batch_get_rounds_back_off_from_100_ms_to_at_most_3_2_s_plus_jitter() {
        let delays: Vec<Duration> = BATCH_GET_BACKOFF.build().collect();
        let bases = [100.0, 200.0, 400.0, 800.0, 1_600.0, 3_200.0, 3_200.0];
        assert_eq!(delays.len(), bases.len(), "8 rounds in all");
        for (delay, base_ms) in delays.into_iter().zip(bases) {
            let ms = delay.as_secs_f64() * 1_000.0;
            assert!(
                ms > base_ms - 0.001 && ms < 2.0 * base_ms,
                "{ms} ms for base {base_ms} ms"
            );
        }
    }
}
