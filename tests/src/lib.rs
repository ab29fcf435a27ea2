//! Helpers shared by the integration tests; each concern lives in its own module, re-exported here.

pub mod aws;
pub mod counting;
pub mod datasets;
pub mod iam;
pub mod stack;

pub use aws::{
    SdkResultExt, aws_config, dynamodb, fresh_bucket, fresh_queue, fresh_topic, queue_arn, receive,
    s3, sns, sqs, subscribe_queue, unique_name,
};
