//! `SnsAlerts`: operator alerts published to an SNS topic as JSON, with a `kind` attribute that
//! subscriptions can filter on.

use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;

use super::s3::sdk_port_error;
use crate::ports::{Alert, Alerts, PortError, PortResult};

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
