//! ingest handler: S3 notification → `Pipeline::ingest` for each created object.

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use shared::domain::ObjectRef;
use shared::pipeline::{IngestOutcome, Pipeline, StepError};
use shared::s3_event::{S3Notification, Trigger};
use tracing::{error, info};

/// Why an invocation failed; Lambda retries the event (ingest is idempotent).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("not an S3 notification: {0}")]
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

/// Handles one notification. An error makes Lambda retry the event; ingest is idempotent.
pub async fn function_handler(
    pipeline: &Pipeline,
    event: LambdaEvent<Value>,
) -> Result<Value, IngestError> {
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
                match pipeline.ingest(&upload, version.as_deref()).await {
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
    }
}
