//! ingest handler: S3 notification → `Pipeline::ingest` for each created object.

use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;
use shared::pipeline::{IngestOutcome, Pipeline};
use shared::s3_event::{S3Notification, Trigger};
use tracing::{error, info};

/// Handles one notification. An error makes Lambda retry the event; ingest is idempotent.
pub async fn function_handler(
    pipeline: &Pipeline,
    event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let notification: S3Notification = serde_json::from_value(event.payload)
        .map_err(|e| format!("not an S3 notification: {e}"))?;
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
                        error!(upload = %upload, error = %e, "ingest failed; the event will be retried");
                        failures.push(format!("{upload}: {e}"));
                    }
                }
            }
        }
    }
    if !failures.is_empty() {
        return Err(failures.join("; ").into());
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
