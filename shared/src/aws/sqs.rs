//! `SqsWorkQueue`: the work queue on SQS: batched sends that never drop an entry silently, and
//! "return this message later" for the submitter's retry-after path.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use backon::{ExponentialBuilder, RetryableWithContext as _};

use super::s3::sdk_port_error;
use crate::domain::{ChunkMessage, JobStep};
use crate::ports::{PortError, PortResult, WorkQueue};

/// AWS's message size limit (moto accepts 1 MiB; we hold ourselves to AWS's). It also caps the
/// sum of a `SendMessageBatch` call's bodies.
pub const SQS_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Entries per `SendMessageBatch` call (AWS limit).
pub const SQS_BATCH_ENTRIES: usize = 10;
/// Longest visibility timeout SQS accepts (12 h).
pub const SQS_MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// Entries SQS refused for its own reasons are sent again after 200 ms, then 400 ms (each plus
/// up to as much again of jitter): three attempts in all.
const SEND_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(200))
    .with_factor(2.0)
    .with_max_times(2)
    .with_jitter();

/// `job_…/c00012`: how a chunk message is named in errors and logs.
pub fn message_label(message: &ChunkMessage) -> String {
    format!("{}/{}", message.job, message.key.label())
}

/// What a replay of the dead-letter queue did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Chunk messages sent back to the work queue.
    pub chunks: u64,
    /// Long steps (an ingest to carry on, a manifest to write) sent back to the step queue.
    pub steps: u64,
    /// Messages that are neither (not ours, or damaged): left in the dead-letter queue.
    pub left: u64,
}

/// Replays the dead-letter queue: each message goes back to the queue it came from, told by its
/// body (both queues share the DLQ), and is then deleted from it. A message that is neither a
/// chunk nor a step stays. A crash between the send and the delete sends one message twice,
/// which the submitter's claim and the steps' checkpoints absorb.
///
/// (SQS's own message move, `StartMessageMoveTask`, sends every message to one queue and moto
/// does not implement it; this is plain receive, send, delete.)
pub async fn redrive(
    client: &aws_sdk_sqs::Client,
    dlq_url: &str,
    work_queue_url: &str,
    step_queue_url: &str,
) -> PortResult<RedriveReport> {
    let mut report = RedriveReport::default();
    loop {
        let received = client
            .receive_message()
            .queue_url(dlq_url)
            .max_number_of_messages(SQS_BATCH_ENTRIES as i32)
            // Messages left in place stay hidden until this pass is over, so it ends.
            .visibility_timeout(300)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| sdk_port_error(format!("receive from {dlq_url}"), e))?;
        let messages = received.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(report);
        }
        for message in messages {
            let body = message.body.unwrap_or_default();
            let target = if serde_json::from_str::<JobStep>(&body).is_ok() {
                report.steps += 1;
                step_queue_url
            } else if serde_json::from_str::<ChunkMessage>(&body).is_ok() {
                report.chunks += 1;
                work_queue_url
            } else {
                tracing::warn!(message_id = ?message.message_id, "a dead letter that is neither a chunk nor a step is left in place");
                report.left += 1;
                continue;
            };
            client
                .send_message()
                .queue_url(target)
                .message_body(body)
                .send()
                .await
                .map_err(|e| sdk_port_error(format!("send back to {target}"), e))?;
            if let Some(receipt) = message.receipt_handle {
                client
                    .delete_message()
                    .queue_url(dlq_url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .map_err(|e| sdk_port_error(format!("delete from {dlq_url}"), e))?;
            }
        }
    }
}

/// A chunk message over the queue's size limit: the caller should have sent it by reference.
#[derive(Debug, thiserror::Error)]
#[error(
    "chunk message {label} is {size} bytes, over the queue's {max}-byte limit; send its payload by reference"
)]
pub struct MessageTooLarge {
    pub label: String,
    pub size: usize,
    pub max: usize,
}

/// A long step with no step queue configured.
#[derive(Debug, thiserror::Error)]
#[error("STEP_QUEUE_URL is not set: no worker takes long steps here")]
pub struct NoStepQueue;

/// Entries SQS did not accept after every attempt, with SQS's reason for each.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} chunk messages were not queued: {}", failed.len(), describe(failed))]
pub struct SendFailed {
    pub total: usize,
    /// (chunk label, reason)
    pub failed: Vec<(String, String)>,
}

fn describe(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(label, reason)| format!("{label} ({reason})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serialises every message, refusing the whole send if one is too large (before any call).
pub fn encode_messages(messages: &[ChunkMessage], max: usize) -> PortResult<Vec<String>> {
    messages
        .iter()
        .map(|message| {
            let body = serde_json::to_string(message)
                .map_err(|e| PortError::permanent("encode chunk message", e))?;
            if body.len() > max {
                let error = MessageTooLarge {
                    label: message_label(message),
                    size: body.len(),
                    max,
                };
                return Err(PortError::permanent("queue chunk messages", error));
            }
            Ok(body)
        })
        .collect()
}

/// Groups entries into calls of at most 10 entries and at most `max` bytes in total.
fn batches(pending: &[usize], bodies: &[String], max: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut bytes = 0;
    for &index in pending {
        let size = bodies[index].len();
        match out.last_mut() {
            Some(batch) if batch.len() < SQS_BATCH_ENTRIES && bytes + size <= max => {
                batch.push(index);
                bytes += size;
            }
            _ => {
                out.push(vec![index]);
                bytes = size;
            }
        }
    }
    out
}

/// The work queue on SQS. The client is built once by the caller.
#[derive(Debug, Clone)]
pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    /// Where long steps go (`STEP_QUEUE_URL`): the rest of an ingest, a manifest to write.
    step_queue_url: Option<String>,
}

/// Where a send stands between attempts: entries to (re)send, entries that failed for good, the
/// last reason given for each entry still pending, and the calls made so far.
#[derive(Default)]
struct Progress {
    pending: Vec<usize>,
    failed: Vec<(usize, String)>,
    reasons: HashMap<usize, String>,
    calls: usize,
}

/// An attempt's outcome when SQS left entries unqueued that are worth sending again.
#[derive(Debug)]
struct StillPending(usize);

impl SqsWorkQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        SqsWorkQueue {
            client,
            queue_url: queue_url.into(),
            step_queue_url: None,
        }
    }

    /// Where long steps go.
    pub fn with_step_queue(mut self, url: impl Into<String>) -> Self {
        self.step_queue_url = Some(url.into());
        self
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// Makes a received message visible again after `delay` (clamped to SQS's 0..=12 h), so a
    /// throttled submit is retried later without counting as a failure of the handler.
    pub async fn return_later(&self, receipt_handle: &str, delay: Duration) -> PortResult<()> {
        let seconds = delay.min(SQS_MAX_VISIBILITY).as_secs();
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_port_error("return message to the queue later", e))?;
        Ok(())
    }

    /// One attempt: every pending entry once, in batches. Entries SQS refused for its own
    /// reasons stay pending; sender-fault entries move to `failed`.
    async fn send_pending(
        &self,
        bodies: &[String],
        progress: &mut Progress,
    ) -> Result<(), StillPending> {
        let pending = std::mem::take(&mut progress.pending);
        for batch in batches(&pending, bodies, SQS_MAX_MESSAGE_BYTES) {
            progress.calls += 1;
            self.send_batch(&batch, bodies, progress).await;
        }
        match progress.pending.len() {
            0 => Ok(()),
            left => Err(StillPending(left)),
        }
    }

    /// One `SendMessageBatch` call; entry ids are indexes into `bodies`.
    async fn send_batch(&self, batch: &[usize], bodies: &[String], progress: &mut Progress) {
        let mut entries = Vec::with_capacity(batch.len());
        for &index in batch {
            match SendMessageBatchRequestEntry::builder()
                .id(index.to_string())
                .message_body(&bodies[index])
                .build()
            {
                Ok(entry) => entries.push(entry),
                Err(error) => progress.failed.push((index, error.to_string())),
            }
        }
        let output = match self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                let error = sdk_port_error("send message batch", error);
                let reason = error.to_string();
                for &index in batch {
                    if error.retryable {
                        progress.pending.push(index);
                        progress.reasons.insert(index, reason.clone());
                    } else {
                        progress.failed.push((index, reason.clone()));
                    }
                }
                return;
            }
        };
        let mut answered: HashSet<usize> = output
            .successful()
            .iter()
            .filter_map(|ok| ok.id().parse().ok())
            .collect();
        for entry in output.failed() {
            let Ok(index) = entry.id().parse::<usize>() else {
                continue;
            };
            answered.insert(index);
            let reason = format!(
                "{}: {}",
                entry.code(),
                entry.message().unwrap_or("no message")
            );
            if entry.sender_fault() {
                progress.failed.push((index, reason));
            } else {
                progress.pending.push(index);
                progress.reasons.insert(index, reason);
            }
        }
        // An entry SQS neither accepted nor refused is not known to be queued: try it again.
        for &index in batch.iter().filter(|i| !answered.contains(i)) {
            progress.pending.push(index);
            progress
                .reasons
                .insert(index, "not acknowledged by SQS".to_owned());
        }
    }
}

#[async_trait]
impl WorkQueue for SqsWorkQueue {
    fn max_message_bytes(&self) -> usize {
        SQS_MAX_MESSAGE_BYTES
    }

    /// Sends in batches; entries SQS refuses for its own reasons are retried with backoff
    /// (sender-fault entries are not), then everything still unsent is reported by chunk label.
    /// Messages already sent stay sent: a caller retrying the whole call may duplicate some,
    /// which the submitter's `begin_submit` absorbs.
    fn takes_steps(&self) -> bool {
        self.step_queue_url.is_some()
    }

    async fn queue_step(&self, step: &JobStep) -> PortResult<()> {
        let operation = format!("queue a step of {}", step.job());
        let Some(url) = &self.step_queue_url else {
            return Err(PortError::permanent(operation, NoStepQueue));
        };
        let body =
            serde_json::to_string(step).map_err(|e| PortError::permanent(operation.clone(), e))?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| sdk_port_error(operation, e))?;
        Ok(())
    }

    async fn send(&self, messages: &[ChunkMessage]) -> PortResult<()> {
        let bodies = encode_messages(messages, SQS_MAX_MESSAGE_BYTES)?;
        let bodies = &bodies;
        let progress = Progress {
            pending: (0..bodies.len()).collect(),
            ..Progress::default()
        };
        let (progress, _) = (move |mut progress: Progress| async move {
            let sent = self.send_pending(bodies, &mut progress).await;
            (progress, sent)
        })
        .retry(SEND_BACKOFF)
        .context(progress)
        .notify(|StillPending(left), delay| {
            tracing::debug!(
                pending = left,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "SQS left chunk messages unqueued; retrying them"
            );
        })
        .await;
        let Progress {
            pending,
            mut failed,
            mut reasons,
            calls,
        } = progress;
        let retryable = !pending.is_empty();
        failed.extend(
            pending
                .into_iter()
                .map(|i| (i, reasons.remove(&i).unwrap_or_default())),
        );
        if failed.is_empty() {
            tracing::debug!(messages = messages.len(), calls, "chunk messages queued");
            return Ok(());
        }
        failed.sort_unstable_by_key(|(index, _)| *index);
        let failed: Vec<(String, String)> = failed
            .into_iter()
            .map(|(index, reason)| (message_label(&messages[index]), reason))
            .collect();
        tracing::error!(
            failed = failed.len(),
            total = messages.len(),
            "chunk messages not queued"
        );
        let error = SendFailed {
            total: messages.len(),
            failed,
        };
        Err(PortError {
            operation: "queue chunk messages".into(),
            retryable,
            source: Box::new(error),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::{ChunkKey, ChunkPayload, JobId};
    use crate::pictify::wire::Format;

    fn message(seq: u32, padding: usize) -> ChunkMessage {
        let mut vars = serde_json::Map::new();
        vars.insert("title".into(), "x".repeat(padding).into());
        let job = JobId::parse("job_abc").unwrap();
        let payload = ChunkPayload {
            job: job.clone(),
            key: ChunkKey::initial(seq),
            template_id: "t".into(),
            format: Format::Png,
            quality: None,
            concurrency: None,
            rows: vec![0],
            variable_sets: vec![vars],
        };
        ChunkMessage {
            job,
            key: ChunkKey::initial(seq),
            payload: Some(crate::domain::InlinePayload::encode(&payload).unwrap()),
            payload_ref: None,
        }
    }

    #[test]
    fn refused_entries_get_two_more_attempts_after_jittered_backoff() {
        use backon::BackoffBuilder as _;
        let delays: Vec<Duration> = SEND_BACKOFF.build().collect();
        assert_eq!(delays.len(), 2);
        for (delay, base_ms) in delays.into_iter().zip([200.0, 400.0]) {
            let ms = delay.as_secs_f64() * 1_000.0;
            assert!(
                ms > base_ms - 0.001 && ms < 2.0 * base_ms,
                "{ms} ms for base {base_ms} ms"
            );
        }
    }

    #[test]
    fn an_oversize_message_is_refused_by_label_before_sending() {
        let error = encode_messages(
            &[message(0, 10), message(1, 300_000)],
            SQS_MAX_MESSAGE_BYTES,
        )
        .unwrap_err();
        assert!(!error.retryable);
        assert!(error.to_string().contains("job_abc/c00001"), "{error}");
    }

    #[test]
    fn batches_hold_ten_entries_and_respect_the_byte_limit() {
        let small = encode_messages(
            &(0..25).map(|i| message(i, 10)).collect::<Vec<_>>(),
            SQS_MAX_MESSAGE_BYTES,
        )
        .unwrap();
        let sizes: Vec<usize> =
            batches(&(0..25).collect::<Vec<_>>(), &small, SQS_MAX_MESSAGE_BYTES)
                .iter()
                .map(Vec::len)
                .collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let big = encode_messages(
            &(0..5).map(|i| message(i, 100_000)).collect::<Vec<_>>(),
            SQS_MAX_MESSAGE_BYTES,
        )
        .unwrap();
        let sizes: Vec<usize> = batches(&(0..5).collect::<Vec<_>>(), &big, SQS_MAX_MESSAGE_BYTES)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, vec![2, 2, 1]);
    }
}
