//! Pictify's JSON wire shapes, shared by our client and the emulator so both sides speak one protocol.
//!
//! Field names follow the official Python SDK 1.1.0 (the live-verified reference); see
//! ../shared/pictify-api.md §2–§5 and docs/pictify-protocol.md for the choices where sources disagree.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One render's variables: a JSON object.
pub type VariableSet = Map<String, Value>;

/// Output formats the batch endpoint accepts (SDK `BatchRenderFormat`: no `jpg`, no `pdf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Png,
    Jpeg,
    Webp,
    Gif,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Webp => "webp",
            Format::Gif => "gif",
        }
    }

    /// File extension for a rendered image of this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            other => other.as_str(),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Png => "image/png",
            Format::Jpeg => "image/jpeg",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "png" => Ok(Format::Png),
            "jpeg" => Ok(Format::Jpeg),
            "webp" => Ok(Format::Webp),
            "gif" => Ok(Format::Gif),
            other => Err(format!(
                "unknown format `{other}` (expected png, jpeg, webp or gif)"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of `POST /templates/{uid}/batch-render`. `None` fields are omitted so the server applies defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRenderRequest {
    pub variable_sets: Vec<VariableSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layouts: Option<Vec<String>>,
}

/// Batch status (all sources agree on this set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    Pending,
    Processing,
    Completed,
    Partial,
    Failed,
    Cancelled,
}

impl BatchStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Partial
                | BatchStatus::Failed
                | BatchStatus::Cancelled
        )
    }
}

/// 202 answer to a batch submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    pub batch_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BatchStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_items: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One item of the results poll. `variables` holds variable NAMES, not values (SDK `BatchItemStatus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchItemStatus {
    pub index: u32,
    pub success: bool,
    #[serde(default)]
    pub variables: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /templates/batch/{id}/results` (SDK `BatchResults`). The poll carries no image URLs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchResults {
    pub batch_id: String,
    pub status: BatchStatus,
    #[serde(default)]
    pub progress: f64,
    #[serde(default)]
    pub total_items: u32,
    #[serde(default)]
    pub completed_items: u32,
    #[serde(default)]
    pub failed_items: u32,
    #[serde(default)]
    pub results: Vec<BatchItemStatus>,
    #[serde(default)]
    pub errors: Vec<BatchItemStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

/// `POST /templates/batch/{id}/cancel` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelResult {
    pub batch_id: String,
    pub status: BatchStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Webhook event names Pictify sends.
pub mod event_names {
    pub const RENDER_COMPLETED: &str = "render.completed";
    pub const RENDER_FAILED: &str = "render.failed";
    pub const BATCH_COMPLETED: &str = "batch.completed";
}

/// Header names of a webhook delivery.
pub mod headers {
    pub const SIGNATURE: &str = "x-pictify-signature";
    pub const EVENT: &str = "x-pictify-event";
    pub const DELIVERY_ID: &str = "x-pictify-delivery-id";
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
}

/// Item-level error codes (batch guide "Common Failure Reasons", plus TEMPLATE_NOT_FOUND from render.failed).
pub mod error_codes {
    pub const INVALID_VARIABLE: &str = "INVALID_VARIABLE";
    pub const EXPRESSION_ERROR: &str = "EXPRESSION_ERROR";
    pub const IMAGE_FETCH_FAILED: &str = "IMAGE_FETCH_FAILED";
    pub const RENDER_TIMEOUT: &str = "RENDER_TIMEOUT";
    pub const TEMPLATE_NOT_FOUND: &str = "TEMPLATE_NOT_FOUND";
}

/// Envelope of every webhook delivery: `{event, timestamp, data}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEnvelope {
    pub event: String,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub data: Value,
}

/// `render.completed` data. `batchId`/`batchIndex` are emulator extensions, sent only when asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderCompleted {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<VariableSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
}

/// `render.failed` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenderFailed {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<VariableSet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_index: Option<u32>,
}

/// `batch.completed` data (the fuller variant; `*Count` names differ from the poll's `*Items`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchCompleted {
    pub batch_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_uid: Option<String>,
    pub status: BatchStatus,
    pub total_count: u32,
    pub completed_count: u32,
    pub failed_count: u32,
    /// Milliseconds from creation to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
}

/// Webhook subscription object (`/webhook-subscriptions`). `secret` is present only in the create answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub uid: String,
    pub event: String,
    pub target_url: String,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub filters: Option<SubscriptionFilters>,
    #[serde(default)]
    pub delivery_count: Option<u64>,
    #[serde(default)]
    pub failure_count: Option<u64>,
    #[serde(default)]
    pub last_delivery_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_id: Option<String>,
}

/// Body of `POST /webhook-subscriptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSubscription {
    pub event: String,
    pub target_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<SubscriptionFilters>,
}

/// `{subscription: {...}}` wrapper used by create/get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionEnvelope {
    pub subscription: Subscription,
}

/// `GET /webhook-subscriptions` answer: one page of subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionList {
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
}

/// Page information of list endpoints (`page` is 1-based).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    #[serde(default)]
    pub page: u32,
    #[serde(default)]
    pub limit: u32,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub total_pages: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_next: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_prev: Option<bool>,
}
