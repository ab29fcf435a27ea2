//! ingest handler: S3 notification → `Pipeline::ingest_until` for each created object; and the
//! step queue (SQS), the long steps of a job that need this function's 15 minutes:
//! `continueIngest` → `Pipeline::continue_ingest` (an upload handed on by an earlier invocation),
//! `writeManifest` → `Pipeline::write_manifest_step`. An ingest piece stops
//! `INGEST_HANDOFF_MARGIN_SECONDS` before the invocation's deadline.

use std::time::Instant;

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::{Value, json};
use shared::domain::{JobStep, ObjectRef};
use shared::pipeline::{IngestOutcome, Pipeline, StepError};
use shared::s3_event::{S3Notification, Trigger};
use shared::wiring::deadline_less;
use tracing::{error, info};

/// Why an invocation failed; Lambda retries the event (ingest is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("neither an S3 notification nor a step queue message: {0}")]
    NotAnS3Notification(#[source] serde_json::Error),
    /// Every upload that failed, with its error (the others were ingested).
    #[error("{}", describe_failures(.0))]
    Failed(Vec<(ObjectRef, StepError)>),
}

fn describe_failures(failures: &[(ObjectRef, StepError)]) -> String {
    let parts: Vec<String> = failures
        .iter()
        .map(|(upload, e)| format!("{upload}: {e}"))
        .collect();
    parts.join("; ")
}

/// CloudWatch shows `errorType`: the kind of the (first) step error, not a generic string.
impl From<IngestError> for Diagnostic {
    fn from(error: IngestError) -> Diagnostic {
        let error_type = match &error {
            IngestError::NotAnS3Notification(_) => "NotAnS3Notification".to_owned(),
            IngestError::Failed(failures) => failures
                .first()
                .map_or("IngestFailed", |(_, e)| e.kind())
                .to_owned(),
        };
        Diagnostic {
            error_type,
            error_message: error.to_string(),
        }
    }
}

/// Handles one event: an S3 notification, or a batch from the step queue. An error makes
/// Lambda retry the event (or the message); ingest is idempotent and resumes from its checkpoint.
pub async fn function_handler(
    pipeline: &Pipeline,
    event: LambdaEvent<Value>,
) -> Result<Value, IngestError> {
    // The rest of an upload is handed on this long before the invocation's deadline.
    let hand_off_at = deadline_less(
        event.context.deadline,
        pipeline.settings.ingest_handoff_margin,
    );
    if is_sqs_event(&event.payload) {
        return Ok(run_steps(pipeline, event.payload, hand_off_at).await);
    }
    let notification: S3Notification =
        serde_json::from_value(event.payload).map_err(IngestError::NotAnS3Notification)?;
    if notification.records.is_empty() {
        info!(
            event = notification.event.as_deref().unwrap_or("-"),
            "notification without records skipped"
        );
        return Ok(serde_json::json!({ "ingested": [], "skipped": 1 }));
    }
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for record in &notification.records {
        match record.trigger() {
            Trigger::Skip { reason } => {
                info!(event_name = %record.event_name, reason = %reason, "record skipped");
                outcomes.push(serde_json::json!({ "skipped": reason }));
            }
            Trigger::Ingest { upload, version } => {
                match pipeline
                    .ingest_until(&upload, version.as_deref(), hand_off_at)
                    .await
                {
                    Ok(outcome) => outcomes.push(describe(&outcome)),
                    Err(e) => {
                        error!(upload = %upload, error = %e, retryable = e.is_retryable(), "ingest failed; the event will be retried");
                        failures.push((upload, e));
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(IngestError::Failed(failures));
    }
    Ok(serde_json::json!({ "outcomes": outcomes }))
}

fn is_sqs_event(payload: &Value) -> bool {
    payload["Records"][0]["eventSource"] == "aws:sqs"
}

/// Step queue messages, each one long step of one job. A step that fails is reported in
/// `batchItemFailures` and comes back after its visibility timeout; an unreadable message is
/// dropped with an error log (it would fail the same way forever; the reconciler still sees the
/// stalled job).
async fn run_steps(pipeline: &Pipeline, payload: Value, hand_off_at: Option<Instant>) -> Value {
    let records = payload["Records"].as_array().cloned().unwrap_or_default();
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for record in records {
        let message_id = record["messageId"].as_str().unwrap_or_default().to_owned();
        let body = record["body"].as_str().unwrap_or_default();
        let step = match serde_json::from_str::<JobStep>(body) {
            Ok(step) => step,
            Err(e) => {
                error!(message_id = %message_id, error = %e, "step message unreadable; dropped");
                outcomes.push(json!({ "dropped": message_id }));
                continue;
            }
        };
        let done = match &step {
            JobStep::ContinueIngest(job) => pipeline
                .continue_ingest(job, hand_off_at)
                .await
                .map(|outcome| describe(&outcome)),
            JobStep::WriteManifest(job) => pipeline
                .write_manifest_step(job)
                .await
                .map(|wrote| json!({ "job": job, "manifest": wrote })),
            JobStep::DeliverChunk { job, chunk } => pipeline
                .deliver_chunk(job, *chunk)
                .await
                .map(|done| json!({ "job": job, "chunk": chunk.label(), "delivered": done.rows.len(), "events": done.events })),
        };
        match done {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                error!(job_id = %step.job(), error = %e, retryable = e.is_retryable(), "step failed; the message comes back");
                failures.push(json!({ "itemIdentifier": message_id }));
            }
        }
    }
    json!({ "outcomes": outcomes, "batchItemFailures": failures })
}

fn describe(outcome: &IngestOutcome) -> Value {
    match outcome {
        IngestOutcome::Skipped { reason } => serde_json::json!({ "skipped": reason }),
        IngestOutcome::Duplicate { job } => serde_json::json!({ "duplicate": job }),
        IngestOutcome::Ingested { job, counters } => {
            serde_json::json!({ "job": job, "counters": counters })
        }
        IngestOutcome::Failed { job, reason } => {
            serde_json::json!({ "job": job, "failed": reason })
        }
        IngestOutcome::HandedOff { job, checkpoint } => {
            serde_json::json!({ "job": job, "handedOff": checkpoint })
        }
    }
}
