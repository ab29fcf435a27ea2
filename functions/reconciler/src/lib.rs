//! reconciler handler: a scheduled event → one `Pipeline::reconcile` pass.

use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;
use shared::pipeline::Pipeline;

/// The event (an EventBridge schedule) carries nothing we need. An error fails the invocation so
/// CloudWatch counts it; the next scheduled pass retries anyway.
pub async fn function_handler(
    pipeline: &Pipeline,
    _event: LambdaEvent<Value>,
) -> Result<Value, Error> {
    let report = pipeline.reconcile(pipeline.settings.stuck_after).await?;
    Ok(serde_json::to_value(report)?)
}
