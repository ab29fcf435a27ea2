//! pictify-batch core: everything the Lambda functions, the CLI and the tests share.

pub mod pictify;
pub mod signing;
