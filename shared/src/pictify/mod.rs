//! Pictify: the wire protocol, the HTTP client and typed webhook events.

pub mod client;
pub mod error;
pub mod events;
pub mod images;
pub mod plan;
pub mod validate;
pub mod variables;
pub mod wire;

pub use client::{PictifyClient, PictifyConfig};
pub use error::{FieldError, PictifyError};
pub use events::{ParsedWebhook, WebhookEvent, WebhookParseError, parse_webhook};
pub use plan::{Plan, PlanLimits};
