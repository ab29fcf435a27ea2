//! `SnsAlerts`: operator alerts published to an SNS topic as JSON, with a `kind` attribute that
//! subscriptions can filter on.

use async_trait::async_trait;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};

use super::s3::sdk_port_error;
use crate::ports::{Alert, Alerts, PortError, PortResult, RowEvent, RowEvents};

/// SNS subjects: at most 100 printable ASCII characters, no line breaks.
const SUBJECT_MAX: usize = 100;

/// `pictify-batch: <kind>`, made safe for SNS (email subscriptions show it as the subject line).
pub fn sns_subject(kind: &str) -> String {
    format!("pictify-batch: {kind}")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .take(SUBJECT_MAX)
        .collect()
}

/// Publishes alerts to one topic. The client is built once by the caller.
#[derive(Debug, Clone)]
pub struct SnsAlerts {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsAlerts {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: impl Into<String>) -> Self {
        SnsAlerts {
            client,
            topic_arn: topic_arn.into(),
        }
    }
}

#[async_trait]
impl Alerts for SnsAlerts {
    async fn send(&self, alert: &Alert) -> PortResult<()> {
        let operation = format!("publish {} alert", alert.kind);
        let body =
            serde_json::to_string(alert).map_err(|e| PortError::permanent(operation.clone(), e))?;
        let kind = alert.kind.as_str();
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(kind)
            .build()
            .map_err(|e| PortError::permanent(operation.clone(), e))?;
        self.client
            .publish()
            .topic_arn(&self.topic_arn)
            .subject(sns_subject(kind))
            .message(body)
            .message_attributes("kind", attribute)
            .send()
            .await
            .map_err(|e| sdk_port_error(operation, e))?;
        tracing::info!(kind = %alert.kind, "alert published");
        Ok(())
    }
}

/// Publishes finished rows to one topic, ten to a `PublishBatch`. On a FIFO topic (`….fifo`)
/// each event's id is its deduplication id, so SNS drops a repeat within its 5-minute window.
#[derive(Debug, Clone)]
pub struct SnsRowEvents {
    client: aws_sdk_sns::Client,
    topic_arn: String,
}

impl SnsRowEvents {
    pub fn new(client: aws_sdk_sns::Client, topic_arn: impl Into<String>) -> Self {
        SnsRowEvents {
            client,
            topic_arn: topic_arn.into(),
        }
    }
}

/// Entries in one `PublishBatch`.
const PUBLISH_BATCH: usize = 10;

#[async_trait]
impl RowEvents for SnsRowEvents {
    fn enabled(&self) -> bool {
        true
    }

    async fn publish(&self, events: &[RowEvent]) -> PortResult<()> {
        let fifo = self.topic_arn.ends_with(".fifo");
        for group in events.chunks(PUBLISH_BATCH) {
            let operation = format!("publish {} row events", group.len());
            let mut entries = Vec::with_capacity(group.len());
            for (i, event) in group.iter().enumerate() {
                let body = serde_json::to_string(event)
                    .map_err(|e| PortError::permanent(operation.clone(), e))?;
                let status = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(&event.status)
                    .build()
                    .map_err(|e| PortError::permanent(operation.clone(), e))?;
                let mut entry = PublishBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message(body)
                    .message_attributes("status", status);
                if fifo {
                    entry = entry
                        .message_group_id(&event.job_id)
                        .message_deduplication_id(&event.event_id);
                }
                entries.push(
                    entry
                        .build()
                        .map_err(|e| PortError::permanent(operation.clone(), e))?,
                );
            }
            let answer = self
                .client
                .publish_batch()
                .topic_arn(&self.topic_arn)
                .set_publish_batch_request_entries(Some(entries))
                .send()
                .await
                .map_err(|e| sdk_port_error(operation.clone(), e))?;
            if let Some(failed) = answer.failed.as_ref().filter(|f| !f.is_empty()) {
                let first = &failed[0];
                return Err(PortError::new(
                    operation,
                    format!(
                        "{} of {} entries refused, e.g. {}: {}",
                        failed.len(),
                        group.len(),
                        first.code,
                        first.message.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_short_printable_ascii() {
        assert_eq!(
            sns_subject("batch_high_failure_rate"),
            "pictify-batch: batch_high_failure_rate"
        );
        let odd = sns_subject(&format!("a\nb—{}", "x".repeat(200)));
        assert_eq!(odd.len(), 100);
        assert!(odd.starts_with("pictify-batch: a_b_x"));
    }
}
