//! reconciler handler: a scheduled event → one `Pipeline::reconcile` pass.

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;
use shared::metrics::{self, Unit};
use shared::pipeline::{Pipeline, ReconcileReport, StepError};
use tracing::error;

/// Why a pass failed. Either way the next scheduled pass tries again; the failed invocation is
/// what CloudWatch counts (`ReconcilerErrorsAlarm`), so a job the reconciler cannot repair is
/// never only a log line.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the reconcile pass failed: {0}")]
    Pass(#[from] StepError),
    /// The pass went through every job, but some could not be repaired (each is logged with
    /// its job id and error).
    #[error("{} job(s) or window check(s) could not be reconciled; see the log: {report:?}", report.errors)]
    Jobs { report: ReconcileReport },
}

impl From<ReconcileError> for Diagnostic {
    fn from(error: ReconcileError) -> Diagnostic {
        let error_type = match &error {
            ReconcileError::Pass(e) => e.kind(),
            ReconcileError::Jobs { .. } => "ReconcileErrors",
        };
        Diagnostic {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// The event (an EventBridge schedule) carries nothing we need.
pub async fn function_handler(
    pipeline: &Pipeline,
    _event: LambdaEvent<Value>,
) -> Result<Value, ReconcileError> {
    let report = pipeline.reconcile(pipeline.settings.stuck_after).await?;
    // Gauges for the alarms that stay on while a job is overdue or a subscription is down
    // (JobDeadlineAlarm, WebhookSubscriptionAlarm); the alerts themselves go out once.
    metrics::emit(
        &[
            ("JobsPastDeadline", report.past_deadline as f64, Unit::Count),
            (
                "WebhookSubscriptionsUnhealthy",
                report.unhealthy_subscriptions as f64,
                Unit::Count,
            ),
        ],
        &[],
    );
    if report.errors > 0 {
        error!(errors = report.errors, "reconcile pass left errors");
        return Err(ReconcileError::Jobs { report });
    }
    Ok(serde_json::to_value(report).unwrap_or_default())
}
