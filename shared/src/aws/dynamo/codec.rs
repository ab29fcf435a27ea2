//! How the store's items look: the key layout, the builders that turn domain values into items,
//! and the `Reader` that turns items back, with errors that name the item and the attribute.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::str::FromStr;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::errors::StoreError;
use crate::domain::{
    Chunk, ChunkKey, ChunkState, Counters, Job, JobControl, JobId, JobSpec, JobStatus, ObjectRef,
};
use crate::ports::{PortError, PortResult};

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Partition of the active-job markers (`sk = JOB#<id>`), read by the reconciler.
pub(super) const ACTIVE_PK: &str = "ACTIVE";
pub(super) const PK: &str = "pk";
pub(super) const SK: &str = "sk";
pub(super) const JOB_SK: &str = "#JOB";
pub(super) const CHUNK_PREFIX: &str = "CHUNK#";
pub(super) const BATCH_SK: &str = "#BATCH";
pub(super) const RENDER_SK: &str = "#RENDER";
pub(super) const FAILURE_SK: &str = "#FAILURE";
pub(super) const CONTROL_PK: &str = "CONTROL";
/// Job-level alerts that fired (`JOB#<id>` / `#ALERT#<kind>`), so each fires once.
pub(super) const ALERT_PREFIX: &str = "#ALERT#";
pub(super) const SUBMISSIONS_SK: &str = "#SUBMISSIONS";
pub(super) const TTL: &str = "ttl";

/// A stored item that does not decode into the domain type (a bug or a hand-edited item).
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("item {item}: attribute `{attribute}` is missing or not of type {expected}")]
    Missing {
        item: String,
        attribute: &'static str,
        expected: &'static str,
    },
    #[error("item {item}: attribute `{attribute}` is invalid: {reason}")]
    Invalid {
        item: String,
        attribute: &'static str,
        reason: String,
    },
    #[error("item {item}: attribute `{attribute}` is not the expected JSON")]
    Json {
        item: String,
        attribute: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

pub(super) fn job_pk(id: &JobId) -> String {
    format!("JOB#{id}")
}

pub(super) fn chunk_sk(key: ChunkKey) -> String {
    format!("{CHUNK_PREFIX}{}", key.label())
}

pub(super) fn fingerprint_pks(fingerprints: &[String]) -> Vec<String> {
    let unique: BTreeSet<&String> = fingerprints.iter().collect();
    unique.into_iter().map(|fp| format!("FP#{fp}")).collect()
}

pub(super) fn key(pk: String, sk: &str) -> Item {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk)),
        (SK.to_owned(), s(sk)),
    ])
}

pub(super) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn n(value: impl Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(super) fn json(what: &'static str, value: &impl Serialize) -> PortResult<AttributeValue> {
    serde_json::to_string(value)
        .map(AttributeValue::S)
        .map_err(|source| PortError::permanent("encode", StoreError::Encode { what, source }))
}

pub(super) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A job's control (`JobControl`), one attribute each so every change is one conditional update.
pub(super) const PAUSE_REASON: &str = "pauseReason";
pub(super) const CANCEL_REASON: &str = "cancelReason";
pub(super) const MAX_IN_FLIGHT: &str = "maxInFlight";

/// The checkpoint's offset, kept beside its JSON so a save can be conditioned on it.
pub(super) const INGEST_OFFSET: &str = "ingestOffset";

pub(super) fn job_item(job: &Job) -> PortResult<Item> {
    let c = job.counters;
    let mut item = key(job_pk(&job.id), JOB_SK);
    let mut put = |name: &str, value| {
        item.insert(name.to_owned(), value);
    };
    put("jobId", s(job.id.as_str()));
    put("status", s(job.status.as_str()));
    put("sourceBucket", s(&job.source.bucket));
    put("sourceKey", s(&job.source.key));
    put("sourceVersion", s(&job.source_version));
    put("spec", json("job spec", &job.spec)?);
    put("rows", n(c.rows));
    put("rejected", n(c.rejected));
    put("rendered", n(c.rendered));
    put("failed", n(c.failed));
    put("cancelled", n(c.cancelled));
    put("reused", n(c.reused));
    put("retried", n(c.retried));
    put("chunks", n(c.chunks));
    put("chunksDone", n(c.chunks_done));
    put("renderMsTotal", n(job.render_ms_total));
    put(
        "rejectedSample",
        json("rejected sample", &job.rejected_sample)?,
    );
    put("createdAt", n(job.created_at));
    if let Some(error) = &job.error {
        put("error", s(error));
    }
    if let Some(at) = job.ingested_at {
        put("ingestedAt", n(at));
    }
    if let Some(at) = job.completed_at {
        put("completedAt", n(at));
    }
    if let Some(manifest) = &job.manifest {
        put("manifest", json("manifest location", manifest)?);
    }
    put("reopened", n(job.reopened));
    if let Some(checkpoint) = &job.checkpoint {
        put("ingestCheckpoint", json("ingest checkpoint", checkpoint)?);
        put(INGEST_OFFSET, n(checkpoint.position.offset));
    }
    if let Some(at) = job.progress_at {
        put("progressAt", n(at));
    }
    if let Some(checkpoint) = &job.manifest_checkpoint {
        put(
            "manifestCheckpoint",
            json("manifest checkpoint", checkpoint)?,
        );
    }
    if let Some(plan) = &job.reopen_plan {
        put("reopenPlan", json("reopen plan", plan)?);
    }
    let control = &job.control;
    if let Some(reason) = &control.paused {
        put(PAUSE_REASON, s(reason));
    }
    if let Some(reason) = &control.cancelled {
        put(CANCEL_REASON, s(reason));
    }
    if let Some(limit) = control.max_in_flight {
        put(MAX_IN_FLIGHT, n(limit));
    }
    Ok(item)
}

pub(super) fn job_from_item(item: &Item) -> Result<Job, ItemError> {
    let r = Reader::new(item);
    let status = r.s("status")?;
    Ok(Job {
        id: JobId::parse(r.s("jobId")?).map_err(|reason| r.invalid("jobId", reason))?,
        source: ObjectRef {
            bucket: r.s("sourceBucket")?.to_owned(),
            key: r.s("sourceKey")?.to_owned(),
        },
        source_version: r.s("sourceVersion")?.to_owned(),
        spec: r.json::<JobSpec>("spec")?,
        status: parse_job_status(status)
            .ok_or_else(|| r.invalid("status", format!("unknown job status `{status}`")))?,
        counters: Counters {
            rows: r.n_or_zero("rows")?,
            rejected: r.n_or_zero("rejected")?,
            rendered: r.n_or_zero("rendered")?,
            failed: r.n_or_zero("failed")?,
            cancelled: r.n_or_zero("cancelled")?,
            reused: r.n_or_zero("reused")?,
            retried: r.n_or_zero("retried")?,
            chunks: r.n_or_zero("chunks")?,
            chunks_done: r.n_or_zero("chunksDone")?,
        },
        error: r.opt_s("error")?.map(str::to_owned),
        rejected_sample: r.opt_json("rejectedSample")?.unwrap_or_default(),
        created_at: r.n("createdAt")?,
        ingested_at: r.opt_n("ingestedAt")?,
        completed_at: r.opt_n("completedAt")?,
        render_ms_total: r.n_or_zero("renderMsTotal")?,
        manifest: r.opt_json("manifest")?,
        reopened: r.n_or_zero("reopened")?,
        checkpoint: r.opt_json("ingestCheckpoint")?,
        progress_at: r.opt_n("progressAt")?,
        reopen_plan: r.opt_json("reopenPlan")?,
        manifest_checkpoint: r.opt_json("manifestCheckpoint")?,
        control: JobControl {
            paused: r.opt_s(PAUSE_REASON)?.map(str::to_owned),
            cancelled: r.opt_s(CANCEL_REASON)?.map(str::to_owned),
            max_in_flight: r.opt_n(MAX_IN_FLIGHT)?,
        },
    })
}

pub(super) fn chunk_item(chunk: &Chunk) -> PortResult<Item> {
    let mut item = key(job_pk(&chunk.job), &chunk_sk(chunk.key));
    item.insert("state".into(), s(chunk.state.as_str()));
    // A JSON string keeps row order (a DynamoDB number set would not) and stays compact.
    item.insert("rows".into(), json("chunk rows", &chunk.rows)?);
    item.insert("submitAttempts".into(), n(chunk.submit_attempts));
    if let Some(at) = chunk.queued_at {
        item.insert("queuedAt".into(), n(at));
    }
    if let Some(batch_id) = &chunk.batch_id {
        item.insert("batchId".into(), s(batch_id));
    }
    if let Some(at) = chunk.submitting_since {
        item.insert("submittingSince".into(), n(at));
    }
    if let Some(at) = chunk.submitted_at {
        item.insert("submittedAt".into(), n(at));
    }
    if let Some(outcome) = &chunk.outcome {
        item.insert("outcome".into(), json("chunk outcome", outcome)?);
    }
    Ok(item)
}

pub(super) fn chunk_from_item(item: &Item) -> Result<Chunk, ItemError> {
    let r = Reader::new(item);
    let pk = r.s(PK)?;
    let job = pk
        .strip_prefix("JOB#")
        .ok_or_else(|| r.invalid(PK, format!("`{pk}` is not a job key")))
        .and_then(|id| JobId::parse(id).map_err(|reason| r.invalid(PK, reason)))?;
    let sk = r.s(SK)?;
    let key = sk
        .strip_prefix(CHUNK_PREFIX)
        .and_then(ChunkKey::parse_label)
        .ok_or_else(|| r.invalid(SK, format!("`{sk}` is not a chunk key")))?;
    let state = r.s("state")?;
    Ok(Chunk {
        job,
        key,
        rows: r.json("rows")?,
        state: parse_chunk_state(state)
            .ok_or_else(|| r.invalid("state", format!("unknown chunk state `{state}`")))?,
        queued_at: r.opt_n("queuedAt")?,
        batch_id: r.opt_s("batchId")?.map(str::to_owned),
        submitting_since: r.opt_n("submittingSince")?,
        submitted_at: r.opt_n("submittedAt")?,
        submit_attempts: r.n_or_zero("submitAttempts")?,
        outcome: r.opt_json("outcome")?,
    })
}

fn parse_job_status(raw: &str) -> Option<JobStatus> {
    [
        JobStatus::Ingesting,
        JobStatus::Running,
        JobStatus::Finishing,
        JobStatus::Completed,
        JobStatus::Partial,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ]
    .into_iter()
    .find(|status| status.as_str() == raw)
}

fn parse_chunk_state(raw: &str) -> Option<ChunkState> {
    [
        ChunkState::Queued,
        ChunkState::Submitting,
        ChunkState::Submitted,
        ChunkState::Completed,
    ]
    .into_iter()
    .find(|state| state.as_str() == raw)
}

/// `pk/sk` of an item, for error messages.
pub(super) fn describe(item: &Item) -> String {
    let part = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_s().ok())
            .map_or("?", String::as_str)
    };
    format!("{}/{}", part(PK), part(SK))
}

/// Typed attribute access with errors that name the item and the attribute.
pub(super) struct Reader<'a> {
    item: &'a Item,
}

impl<'a> Reader<'a> {
    pub(super) fn new(item: &'a Item) -> Self {
        Reader { item }
    }

    fn missing(&self, attribute: &'static str, expected: &'static str) -> ItemError {
        ItemError::Missing {
            item: describe(self.item),
            attribute,
            expected,
        }
    }

    pub(super) fn invalid(&self, attribute: &'static str, reason: impl Into<String>) -> ItemError {
        ItemError::Invalid {
            item: describe(self.item),
            attribute,
            reason: reason.into(),
        }
    }

    pub(super) fn opt_s(&self, attribute: &'static str) -> Result<Option<&'a str>, ItemError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(value)) => Ok(Some(value)),
            Some(_) => Err(self.missing(attribute, "S")),
        }
    }

    pub(super) fn s(&self, attribute: &'static str) -> Result<&'a str, ItemError> {
        self.opt_s(attribute)?
            .ok_or_else(|| self.missing(attribute, "S"))
    }

    pub(super) fn opt_n<T: FromStr>(
        &self,
        attribute: &'static str,
    ) -> Result<Option<T>, ItemError> {
        match self.item.get(attribute) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(raw)) => raw
                .parse()
                .map(Some)
                .map_err(|_| self.invalid(attribute, format!("`{raw}` is out of range"))),
            Some(_) => Err(self.missing(attribute, "N")),
        }
    }

    pub(super) fn n<T: FromStr>(&self, attribute: &'static str) -> Result<T, ItemError> {
        self.opt_n(attribute)?
            .ok_or_else(|| self.missing(attribute, "N"))
    }

    pub(super) fn n_or_zero<T: FromStr + Default>(
        &self,
        attribute: &'static str,
    ) -> Result<T, ItemError> {
        Ok(self.opt_n(attribute)?.unwrap_or_default())
    }

    pub(super) fn opt_json<T: DeserializeOwned>(
        &self,
        attribute: &'static str,
    ) -> Result<Option<T>, ItemError> {
        self.opt_s(attribute)?
            .map(|raw| {
                serde_json::from_str(raw).map_err(|source| ItemError::Json {
                    item: describe(self.item),
                    attribute,
                    source,
                })
            })
            .transpose()
    }

    pub(super) fn json<T: DeserializeOwned>(
        &self,
        attribute: &'static str,
    ) -> Result<T, ItemError> {
        self.opt_json(attribute)?
            .ok_or_else(|| self.missing(attribute, "S"))
    }

    pub(super) fn fingerprint(&self) -> Result<String, ItemError> {
        let pk = self.s(PK)?;
        pk.strip_prefix("FP#")
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(PK, format!("`{pk}` is not a fingerprint key")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_deduplicated_into_keys() {
        let pks = fingerprint_pks(&["b".into(), "a".into(), "b".into()]);
        assert_eq!(pks, ["FP#a", "FP#b"]);
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }

    #[test]
    fn a_chunk_round_trips_through_its_item() {
        let job = JobId::for_upload("b", "k", "v");
        let mut chunk = Chunk::new(job, ChunkKey::initial(7).retry(), vec![3, 1, 2]);
        chunk.batch_id = Some("batch_1".into());
        chunk.submitted_at = Some(42);
        let item = chunk_item(&chunk).unwrap();
        assert_eq!(chunk_from_item(&item).unwrap(), chunk);
    }

    #[test]
    fn a_bad_item_names_the_attribute() {
        let mut item = key("JOB#job_1".into(), "CHUNK#c00001");
        item.insert("state".into(), s("lost"));
        item.insert("rows".into(), s("[]"));
        let err = chunk_from_item(&item).unwrap_err();
        assert!(err.to_string().contains("`state`"), "{err}");
    }
}
