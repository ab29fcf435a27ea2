//! submitter handler: SQS chunk messages → `Pipeline::handle_chunk_message`, always as a partial
//! batch response. Between messages, the next one is started only with `SUBMITTER_MARGIN_SECONDS`
//! left before the invocation's deadline: the rest of the batch goes back to the queue untouched,
//! so a batch of 10 slow submits never outlives the function (a timed-out invocation would return
//! all 10). The first message always runs, so a timeout set below the margin still makes progress
//! instead of bouncing every message into the DLQ.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{Error, LambdaEvent};
use shared::aws::sqs::SqsWorkQueue;
use shared::domain::ChunkMessage;
use shared::pipeline::{MessageFate, Pipeline};
use shared::wiring::deadline_less;
use tracing::{error, info, warn};

pub async fn function_handler(
    pipeline: &Pipeline,
    queue: &SqsWorkQueue,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let stop_at = deadline_less(event.context.deadline, pipeline.settings.submit_margin);
    let mut response = SqsBatchResponse::default();
    let mut left_for_later = 0;
    for (index, message) in event.payload.records.iter().enumerate() {
        let id = message.message_id.clone().unwrap_or_default();
        let out_of_time = index > 0 && stop_at.is_some_and(|at| std::time::Instant::now() >= at);
        if out_of_time {
            left_for_later += 1;
        }
        if out_of_time || !handle(pipeline, queue, message).await {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    if left_for_later > 0 {
        info!(
            messages = left_for_later,
            "near the invocation's deadline: messages left on the queue for the next invocation"
        );
    }
    Ok(response)
}

/// `true` when the message is done with (acknowledge), `false` to leave it on the queue.
async fn handle(pipeline: &Pipeline, queue: &SqsWorkQueue, message: &SqsMessage) -> bool {
    let body = message.body.as_deref().unwrap_or_default();
    let chunk: ChunkMessage = match serde_json::from_str(body) {
        Ok(chunk) => chunk,
        Err(e) => {
            // Never acknowledged: after maxReceiveCount it lands in the DLQ for an operator.
            error!(message_id = message.message_id.as_deref().unwrap_or("-"), error = %e, "unreadable chunk message");
            return false;
        }
    };
    let MessageFate::Keep { after, .. } = pipeline.handle_chunk_message(&chunk).await else {
        return true;
    };
    // Without a delay the message returns after the queue's visibility timeout.
    if let (Some(delay), Some(receipt)) = (after, message.receipt_handle.as_deref()) {
        if let Err(e) = queue.return_later(receipt, delay).await {
            warn!(job_id = %chunk.job, error = %e, "could not delay the message; it returns after the visibility timeout");
        }
        info!(job_id = %chunk.job, chunk = %chunk.key.label(), delay_s = delay.as_secs(), "message returned to the queue");
    }
    false
}
