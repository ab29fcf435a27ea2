//! Chunk payloads: the variable sets a chunk was cut with. Encoded once, stored durably in the
//! job's bucket (retries, reopening and reconciliation read them back), and carried in the queue
//! message inline when they fit, by reference otherwise.

use std::io::Read;

use tracing::info;

use super::{Pipeline, StepError};
use crate::dataset::{DatasetError, DatasetReader, Encoded};
use crate::domain::{Chunk, ChunkKey, ChunkMessage, ChunkPayload, InlinePayload, JobId, ObjectRef};
use crate::layout;

/// Room left in a queue message for the envelope around an inline payload.
const ENVELOPE_BYTES: usize = 512;

/// A chunk payload already encoded: ingest encodes on the parser thread, where the rows were
/// built (freeing them there is cheap) and off the async side, which only does I/O.
pub(crate) struct EncodedChunk {
    job: JobId,
    key: ChunkKey,
    rows: Vec<u64>,
    json: InlinePayload,
}

/// The chunk ingest is cutting: its rows' numbers, and their variable sets as the JSON they will
/// be sent as, each object followed by a comma. No map is built for a row on the way.
#[derive(Default)]
pub(crate) struct ChunkDraft {
    rows: Vec<u64>,
    sets: String,
}

impl ChunkDraft {
    /// Reads the dataset's next row; a valid one joins the draft.
    pub(crate) fn read<R: Read>(
        &mut self,
        dataset: &mut DatasetReader<R>,
    ) -> Option<Result<Encoded, DatasetError>> {
        let read = dataset.next_into(&mut self.sets);
        if let Some(Ok(Encoded::Valid { number })) = &read {
            self.rows.push(*number);
            self.sets.push(',');
        }
        read
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The draft's rows, leaving it empty with room for as many again.
    pub(crate) fn take(&mut self) -> ChunkDraft {
        let room = ChunkDraft {
            rows: Vec::with_capacity(self.rows.len()),
            sets: String::with_capacity(self.sets.len()),
        };
        std::mem::replace(self, room)
    }
}

impl EncodedChunk {
    pub(crate) fn encode(payload: ChunkPayload) -> Result<Self, StepError> {
        let json = InlinePayload::encode(&payload).map_err(|e| cannot_encode(&payload, e))?;
        Ok(EncodedChunk {
            job: payload.job,
            key: payload.key,
            rows: payload.rows,
            json,
        })
    }

    /// Encodes `head` (a payload with no variable sets) with the draft's rows and sets. The bytes
    /// are the ones `encode` writes for the whole payload.
    pub(crate) fn assemble(mut head: ChunkPayload, draft: ChunkDraft) -> Result<Self, StepError> {
        // `variableSets` is the payload's last field: the sets take the place of its empty list.
        const NO_SETS: &str = "\"variableSets\":[]}";
        let ChunkDraft { rows, sets } = draft;
        head.rows = rows;
        let mut json = serde_json::to_string(&head).map_err(|e| cannot_encode(&head, e))?;
        if !head.variable_sets.is_empty() || !json.ends_with(NO_SETS) {
            return Err(StepError::Unreadable {
                what: format!("chunk {}'s payload", head.key.label()),
                reason: "its variable sets are not the last field of its JSON".into(),
            });
        }
        json.truncate(json.len() - 2);
        json.reserve(sets.len() + 2);
        json.push_str(sets.strip_suffix(',').unwrap_or(&sets));
        json.push_str("]}");
        let json =
            InlinePayload::from_assembled_json(&json).map_err(|e| cannot_encode(&head, e))?;
        Ok(EncodedChunk {
            job: head.job,
            key: head.key,
            rows: head.rows,
            json,
        })
    }
}

fn cannot_encode(payload: &ChunkPayload, error: impl std::fmt::Display) -> StepError {
    StepError::Unreadable {
        what: format!("chunk {}'s payload", payload.key.label()),
        reason: format!("it cannot be encoded as JSON: {error}"),
    }
}

/// The payload of a retry chunk: the rows at `indices` of `payload`, under the next attempt's key.
pub(crate) fn retry_payload(payload: &ChunkPayload, indices: &[u32]) -> ChunkPayload {
    let pick = |i: &u32| {
        (
            payload.rows.get(*i as usize).copied(),
            payload.variable_sets.get(*i as usize).cloned(),
        )
    };
    let (rows, variable_sets) = indices
        .iter()
        .filter_map(|i| match pick(i) {
            (Some(row), Some(vars)) => Some((row, vars)),
            _ => None,
        })
        .unzip();
    ChunkPayload {
        key: payload.key.retry(),
        rows,
        variable_sets,
        ..payload.clone()
    }
}

impl Pipeline {
    /// Keeps the durable copy of a chunk's payload and builds the chunk and its queue message.
    pub(crate) async fn store_payload(
        &self,
        bucket: &str,
        payload: ChunkPayload,
    ) -> Result<(Chunk, ChunkMessage), StepError> {
        self.store_encoded(bucket, EncodedChunk::encode(payload)?)
            .await
    }

    pub(crate) async fn store_encoded(
        &self,
        bucket: &str,
        encoded: EncodedChunk,
    ) -> Result<(Chunk, ChunkMessage), StepError> {
        let EncodedChunk {
            job,
            key,
            rows,
            json,
        } = encoded;
        let at = layout::chunk_payload_ref(bucket, &job, &key.label(), &self.settings);
        let bytes = json.json().as_bytes().to_vec();
        // The same JSON travels inline when it fits the queue: encoded once.
        let inline = self.fits_inline(bytes.len()).then_some(json);
        self.objects
            .put_bytes(&at, bytes, "application/json")
            .await?;
        let chunk = Chunk::new(job.clone(), key, rows).queued_at(self.clock.now());
        let message = ChunkMessage {
            job,
            key,
            payload_ref: if inline.is_none() { Some(at) } else { None },
            payload: inline,
        };
        Ok((chunk, message))
    }

    /// Whether a payload of this size travels inside its queue message; bigger ones go by
    /// reference to their stored copy.
    fn fits_inline(&self, payload_bytes: usize) -> bool {
        payload_bytes + ENVELOPE_BYTES <= self.queue.max_message_bytes()
    }

    /// The payload a queue message carries, inline or by reference.
    pub(crate) async fn load_payload(
        &self,
        message: &ChunkMessage,
    ) -> Result<ChunkPayload, StepError> {
        if let Some(payload) = &message.payload {
            return payload.decode().map_err(|e| StepError::Unreadable {
                what: format!("the inline payload of chunk {}", message.key.label()),
                reason: e.to_string(),
            });
        }
        let at = message
            .payload_ref
            .as_ref()
            .ok_or_else(|| StepError::Missing {
                what: format!("the payload of chunk {}'s message", message.key.label()),
            })?;
        self.read_payload(at).await
    }

    /// A chunk's stored payload (the variable sets it was cut with).
    pub async fn chunk_payload(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkPayload, StepError> {
        let bucket = self.job_bucket(job).await?;
        let at = layout::chunk_payload_ref(&bucket, job, &key.label(), &self.settings);
        self.read_payload(&at).await
    }

    /// The bucket a job's payloads live in (the bucket of its upload).
    async fn job_bucket(&self, job: &JobId) -> Result<String, StepError> {
        let stored = self
            .store
            .job(job)
            .await?
            .ok_or_else(|| StepError::Missing {
                what: format!("job {job}"),
            })?;
        Ok(stored.source.bucket)
    }

    /// Rebuilds a chunk's queue message from its stored payload (resume, re-queue, tests). Sending
    /// it again is always safe: the submitter ignores chunks already submitted.
    pub async fn chunk_message(
        &self,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkMessage, StepError> {
        let bucket = self.job_bucket(job).await?;
        self.stored_chunk_message(&bucket, job, key).await
    }

    async fn stored_chunk_message(
        &self,
        bucket: &str,
        job: &JobId,
        key: ChunkKey,
    ) -> Result<ChunkMessage, StepError> {
        let at = layout::chunk_payload_ref(bucket, job, &key.label(), &self.settings);
        let bytes = self.payload_bytes(&at).await?;
        let inline = if self.fits_inline(bytes.len()) {
            String::from_utf8(bytes)
                .ok()
                .and_then(|json| InlinePayload::from_json(json).ok())
        } else {
            None
        };
        Ok(ChunkMessage {
            job: job.clone(),
            key,
            payload_ref: inline.is_none().then_some(at),
            payload: inline,
        })
    }

    /// Sends chunk messages again (their first send may have been lost): a duplicate is harmless,
    /// the submitter's `begin_submit` is conditional. The job is read once for all of them.
    pub async fn resend_chunks(&self, job: &JobId, keys: &[ChunkKey]) -> Result<(), StepError> {
        if keys.is_empty() {
            return Ok(());
        }
        let bucket = self.job_bucket(job).await?;
        let mut messages = Vec::with_capacity(keys.len());
        for key in keys {
            messages.push(self.stored_chunk_message(&bucket, job, *key).await?);
        }
        self.queue.send(&messages).await?;
        info!(job_id = %job, chunks = messages.len(), "chunk messages sent again");
        Ok(())
    }

    pub(crate) async fn read_payload(&self, at: &ObjectRef) -> Result<ChunkPayload, StepError> {
        let bytes = self.payload_bytes(at).await?;
        serde_json::from_slice(&bytes).map_err(|e| StepError::Unreadable {
            what: format!("chunk payload {at}"),
            reason: e.to_string(),
        })
    }

    async fn payload_bytes(&self, at: &ObjectRef) -> Result<Vec<u8>, StepError> {
        self.objects
            .get_bytes(at)
            .await?
            .ok_or_else(|| StepError::Missing {
                what: format!("chunk payload {at}"),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;
    use crate::dataset::{DatasetFormat, RowRules};
    use crate::pictify::wire::Format;

    fn head(quality: Option<f64>, concurrency: Option<u32>) -> ChunkPayload {
        ChunkPayload {
            job: JobId::for_upload("bucket", "uploads/t/a \"quoted\" key.csv", "v1"),
            key: ChunkKey::initial(7),
            template_id: "tmpl_\"odd\"".into(),
            format: Format::Webp,
            quality,
            concurrency,
            rows: Vec::new(),
            variable_sets: Vec::new(),
        }
    }

    #[test]
    fn an_assembled_chunk_is_the_payload_encode_writes_byte_for_byte() {
        let csv = "title,note\nOne,\"a \"\"b\"\"\"\n,empty title\nbad,row,extra\nFour,😀\n";
        let full: Vec<_> =
            DatasetReader::new(csv.as_bytes(), DatasetFormat::Csv, RowRules::default())
                .expect("opens")
                .filter_map(|item| match item.expect("reads") {
                    crate::dataset::Item::Valid(row) => Some(row),
                    crate::dataset::Item::Rejected(_) => None,
                })
                .collect();
        for (quality, concurrency) in [(None, None), (Some(0.8), Some(3))] {
            let mut draft = ChunkDraft::default();
            for _ in 0..2 {
                // The second round fills the draft `take` left behind.
                let mut dataset =
                    DatasetReader::new(csv.as_bytes(), DatasetFormat::Csv, RowRules::default())
                        .expect("opens");
                while draft.read(&mut dataset).is_some() {}
                let assembled = EncodedChunk::assemble(head(quality, concurrency), draft.take())
                    .expect("assembles");
                let whole = ChunkPayload {
                    rows: full.iter().map(|r| r.number).collect(),
                    variable_sets: full.iter().map(|r| r.variables.clone()).collect(),
                    ..head(quality, concurrency)
                };
                let encoded = EncodedChunk::encode(whole.clone()).expect("encodes");
                assert_eq!(assembled.json.json(), encoded.json.json());
                assert_eq!(assembled.rows, vec![0, 1, 3]);
                assert_eq!(assembled.json.decode().expect("decodes"), whole);
                assert!(draft.is_empty());
            }
        }
        // An empty draft is a chunk of no rows (never cut, but well formed).
        let empty =
            EncodedChunk::assemble(head(None, None), ChunkDraft::default()).expect("assembles");
        assert_eq!(empty.json.decode().expect("decodes"), head(None, None));
    }
}
