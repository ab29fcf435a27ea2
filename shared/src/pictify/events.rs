//! Typed webhook events: turns a verified delivery body into a [`WebhookEvent`].
//!
//! Call only after [`crate::signing::verify`] has accepted the raw bytes. Unknown event types
//! are preserved (not rejected) so Pictify can add events without our endpoint answering 4xx
//! and getting the subscription paused.

use serde_json::Value;

use super::wire::{BatchCompleted, RenderCompleted, RenderFailed, WebhookEnvelope, event_names};

/// One delivery's event, by type.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookEvent {
    RenderCompleted(RenderCompleted),
    RenderFailed(RenderFailed),
    BatchCompleted(BatchCompleted),
    /// An event type we do not handle (e.g. `binding.updated`), kept verbatim.
    Unknown {
        event: String,
        data: Value,
    },
}

impl WebhookEvent {
    /// The wire name, e.g. `render.completed`.
    pub fn name(&self) -> &str {
        match self {
            WebhookEvent::RenderCompleted(_) => event_names::RENDER_COMPLETED,
            WebhookEvent::RenderFailed(_) => event_names::RENDER_FAILED,
            WebhookEvent::BatchCompleted(_) => event_names::BATCH_COMPLETED,
            WebhookEvent::Unknown { event, .. } => event,
        }
    }
}

/// A parsed delivery: the event plus the envelope's ISO 8601 `timestamp`, when present.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedWebhook {
    pub event: WebhookEvent,
    pub timestamp: Option<String>,
}

/// Why a delivery body could not be turned into an event. Answer these with a 4xx.
#[derive(Debug, thiserror::Error)]
pub enum WebhookParseError {
    #[error("webhook body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("webhook body is not an event envelope {{event, timestamp, data}}: {0}")]
    InvalidEnvelope(#[source] serde_json::Error),
    #[error("`{event}` event has invalid data: {source}")]
    InvalidData {
        event: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Parses a delivery body (the raw bytes whose signature was verified).
pub fn parse_webhook(raw_body: &[u8]) -> Result<ParsedWebhook, WebhookParseError> {
    let value: Value = serde_json::from_slice(raw_body).map_err(WebhookParseError::InvalidJson)?;
    let envelope: WebhookEnvelope =
        serde_json::from_value(value).map_err(WebhookParseError::InvalidEnvelope)?;
    let WebhookEnvelope {
        event,
        timestamp,
        data,
    } = envelope;

    fn typed<T: serde::de::DeserializeOwned>(
        event: &str,
        data: Value,
    ) -> Result<T, WebhookParseError> {
        serde_json::from_value(data).map_err(|source| WebhookParseError::InvalidData {
            event: event.to_string(),
            source,
        })
    }

    let event = match event.as_str() {
        event_names::RENDER_COMPLETED => WebhookEvent::RenderCompleted(typed(&event, data)?),
        event_names::RENDER_FAILED => WebhookEvent::RenderFailed(typed(&event, data)?),
        event_names::BATCH_COMPLETED => WebhookEvent::BatchCompleted(typed(&event, data)?),
        _ => WebhookEvent::Unknown { event, data },
    };
    Ok(ParsedWebhook { event, timestamp })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pictify::wire::BatchStatus;

    fn parse(body: &str) -> Result<ParsedWebhook, WebhookParseError> {
        parse_webhook(body.as_bytes())
    }

    #[test]
    fn render_completed_is_typed_with_its_timestamp() {
        let parsed = parse(
            r#"{"event":"render.completed","timestamp":"2026-01-29T10:30:00Z",
                "data":{"type":"image","url":"https://cdn.pictify.io/r/a.png","templateId":"tmpl_x",
                        "variables":{"title":"Hi"},"width":1200,"height":630,"userId":"u_1"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.timestamp.as_deref(), Some("2026-01-29T10:30:00Z"));
        let WebhookEvent::RenderCompleted(data) = parsed.event else {
            panic!("wrong variant")
        };
        assert_eq!(data.url, "https://cdn.pictify.io/r/a.png");
        assert_eq!(data.template_id.as_deref(), Some("tmpl_x"));
        assert_eq!(data.variables.unwrap()["title"], "Hi");
    }

    #[test]
    fn render_failed_is_typed() {
        let parsed = parse(
            r#"{"event":"render.failed","data":{"templateId":"tmpl_x","error":"Template not found","errorCode":"TEMPLATE_NOT_FOUND"}}"#,
        )
        .unwrap();
        assert_eq!(parsed.timestamp, None);
        let WebhookEvent::RenderFailed(data) = parsed.event else {
            panic!("wrong variant")
        };
        assert_eq!(data.error_code.as_deref(), Some("TEMPLATE_NOT_FOUND"));
    }

    #[test]
    fn batch_completed_is_typed() {
        let parsed = parse(
            r#"{"event":"batch.completed","timestamp":"2026-01-29T10:30:15Z","data":{"batchId":"batch_1",
                "templateUid":"tmpl_x","status":"partial","totalCount":3,"completedCount":2,"failedCount":1,"duration":45000}}"#,
        )
        .unwrap();
        let WebhookEvent::BatchCompleted(data) = parsed.event else {
            panic!("wrong variant")
        };
        assert_eq!(
            (data.batch_id.as_str(), data.status),
            ("batch_1", BatchStatus::Partial)
        );
        assert_eq!(
            (data.total_count, data.completed_count, data.failed_count),
            (3, 2, 1)
        );
    }

    #[test]
    fn unknown_event_is_preserved_not_rejected() {
        let parsed = parse(r#"{"event":"binding.updated","data":{"bindingId":"b_1"}}"#).unwrap();
        assert_eq!(parsed.event.name(), "binding.updated");
        let WebhookEvent::Unknown { data, .. } = parsed.event else {
            panic!("wrong variant")
        };
        assert_eq!(data["bindingId"], "b_1");
    }

    #[test]
    fn invalid_json_is_named_as_such() {
        let err = parse("{not json").unwrap_err();
        assert!(matches!(err, WebhookParseError::InvalidJson(_)));
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn json_without_an_event_name_is_not_an_envelope() {
        for body in [r#"{"data":{}}"#, "[1,2]", r#"{"event":7}"#] {
            assert!(
                matches!(parse(body), Err(WebhookParseError::InvalidEnvelope(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn known_event_with_wrong_data_shape_is_rejected() {
        let err =
            parse(r#"{"event":"render.completed","data":{"templateId":"tmpl_x"}}"#).unwrap_err();
        assert!(
            matches!(&err, WebhookParseError::InvalidData { event, .. } if event == "render.completed")
        );
        assert!(err.to_string().contains("url"), "{err}");
        let missing_data = parse(r#"{"event":"batch.completed"}"#).unwrap_err();
        assert!(matches!(
            missing_data,
            WebhookParseError::InvalidData { .. }
        ));
    }
}
