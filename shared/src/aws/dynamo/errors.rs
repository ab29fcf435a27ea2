//! The store's own errors, and how DynamoDB's are classified: which failed conditions are
//! expected outcomes, and which SDK errors are worth retrying later.

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use tracing::warn;

use super::codec::Item;
use crate::ports::{PortError, PortResult};

/// A write that needs an item that is not there (or a transaction the store cannot apply).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no such {what}: {id}")]
    NotFound { what: &'static str, id: String },
    #[error("chunk {chunk} of job {job} completed without its job item: transaction cancelled")]
    CompletionRejected { job: String, chunk: String },
    #[error("{operation}: keys still unprocessed after {rounds} rounds (throttled)")]
    Unprocessed {
        operation: &'static str,
        rounds: u32,
    },
    #[error("encoding {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Operation errors that can say "the condition failed" and hand back the item as it was.
pub(super) trait ConditionFailure {
    /// `None`: some other error; `Some(old)`: the condition failed (`old` when ALL_OLD was asked).
    fn condition_failure(&self) -> Option<Option<Item>>;
}

impl ConditionFailure for PutItemError {
    fn condition_failure(&self) -> Option<Option<Item>> {
        match self {
            PutItemError::ConditionalCheckFailedException(e) => Some(e.item.clone()),
            _ => None,
        }
    }
}

impl ConditionFailure for DeleteItemError {
    fn condition_failure(&self) -> Option<Option<Item>> {
        match self {
            DeleteItemError::ConditionalCheckFailedException(e) => Some(e.item.clone()),
            _ => None,
        }
    }
}

impl ConditionFailure for UpdateItemError {
    fn condition_failure(&self) -> Option<Option<Item>> {
        match self {
            UpdateItemError::ConditionalCheckFailedException(e) => Some(e.item.clone()),
            _ => None,
        }
    }
}

/// Splits a conditional write's result: `Ok(Ok(out))` applied, `Ok(Err(old))` the condition
/// failed (an expected outcome, not an error), `Err` anything else.
pub(super) fn checked<T, E>(
    operation: &str,
    result: Result<T, SdkError<E, HttpResponse>>,
) -> PortResult<Result<T, Option<Item>>>
where
    E: ConditionFailure + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(out) => Ok(Ok(out)),
        Err(err) => match err
            .as_service_error()
            .and_then(ConditionFailure::condition_failure)
        {
            Some(old) => Ok(Err(old)),
            None => Err(sdk_error(operation, err)),
        },
    }
}

/// DynamoDB error codes worth retrying later (the SDK has already retried a few times).
pub(super) const RETRYABLE_CODES: [&str; 8] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
    "ReplicatedWriteConflictException",
];

/// Keeps the SDK error as the source and decides whether trying again can help: throttling,
/// 5xx, timeouts and connection failures can; validation, permissions and missing tables cannot.
pub(super) fn sdk_error<E>(
    operation: impl Into<String>,
    err: SdkError<E, HttpResponse>,
) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::ConstructionFailure(_) => false,
        SdkError::ServiceError(ctx) => {
            ctx.raw().status().is_server_error()
                || ctx
                    .err()
                    .code()
                    .is_some_and(|code| RETRYABLE_CODES.contains(&code))
        }
        _ => true,
    };
    let operation = operation.into();
    warn!(operation = %operation, code = err.code().unwrap_or("-"), retryable, "dynamodb call failed");
    PortError {
        operation,
        retryable,
        source: Box::new(err),
    }
}
