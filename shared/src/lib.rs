//! pictify-batch core: everything the Lambda functions, the CLI and the tests share.

#[cfg(feature = "aws")]
pub mod aws;
pub mod dataset;
pub mod domain;
pub mod layout;
#[cfg(feature = "aws")]
pub mod local;
pub mod metrics;
pub mod naming;
pub mod pictify;
pub mod pipeline;
pub mod ports;
pub mod s3_event;
pub mod secret;
pub mod settings;
pub mod signing;
#[cfg(any(test, feature = "contract"))]
pub mod store_contract;
#[cfg(feature = "aws")]
pub mod wiring;
