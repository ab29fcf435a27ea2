//! AWS adapters behind the ports in `crate::ports`: DynamoDB job store, S3, SQS and SNS.

pub mod dynamo;
pub mod s3;
pub mod sns;
pub mod sqs;
