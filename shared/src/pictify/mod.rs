//! Pictify: the wire protocol, the HTTP client and typed webhook events.

pub mod wire;
