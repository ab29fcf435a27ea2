//! Alert sinks that need no AWS service: an HTTP webhook (Slack-compatible), a log, a fan-out and
//! an in-memory collector. `HttpAlerts` and `FanoutAlerts` serve the deployed functions too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::ports::{Alert, Alerts, PortError, PortResult};
use crate::secret::Secret;

/// Slack-style webhooks answer within a second or two; an alert must not stall a handler.
const HTTP_ALERT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum AlertError {
    #[error("alert webhook URL is not an absolute http(s) URL")]
    BadUrl,
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("alert webhook not configured: {0}")]
    Unusable(String),
    #[error("alert webhook unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("alert webhook answered HTTP {0}")]
    Status(u16),
}

/// Posts each alert as Slack-compatible JSON to a webhook URL (which is a secret: Slack puts the
/// token in the path, so the URL never appears in logs or errors).
#[derive(Debug, Clone)]
pub struct HttpAlerts {
    /// The client and URL, or why they could not be set up (reported on every send).
    target: Result<(reqwest::Client, Secret), String>,
}

impl HttpAlerts {
    /// Never fails, so a composition root can always build its sinks: an unusable URL is logged
    /// here and makes every `send` fail. Prefer [`HttpAlerts::try_new`] to fail at start-up.
    pub fn new(url: impl Into<String>) -> Self {
        match Self::try_new(Secret::new(url.into())) {
            Ok(alerts) => alerts,
            Err(error) => {
                tracing::error!(error = %error, "alert webhook unusable; its alerts will fail");
                HttpAlerts {
                    target: Err(error.to_string()),
                }
            }
        }
    }

    /// Checks the URL (absolute http(s)) and builds the HTTP client.
    pub fn try_new(url: Secret) -> PortResult<Self> {
        match url::Url::parse(url.expose()) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
            _ => {
                return Err(PortError::permanent(
                    "configure alert webhook",
                    AlertError::BadUrl,
                ));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_ALERT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pictify-batch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PortError::permanent("configure alert webhook", AlertError::Client(e)))?;
        Ok(HttpAlerts {
            target: Ok((http, url)),
        })
    }
}

/// One line, no emoji, no line breaks: what a pager or a phone notification shows.
pub fn alert_summary(alert: &Alert) -> String {
    let mut line = format!("pictify-batch {}: {}", alert.kind, alert.message);
    if let Some(rate) = alert.failure_rate {
        line.push_str(&format!(" ({:.1}% failed)", rate * 100.0));
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `{"text": …, "attachments": [{"fields": [{title, value, short}]}]}` (Slack's legacy attachment
/// fields, which Slack, Mattermost and most "Slack-compatible" receivers still render).
pub fn slack_payload(alert: &Alert) -> Value {
    let field = |title: &str, value: String, short: bool| json!({"title": title, "value": value, "short": short});
    let mut fields = vec![field("Kind", alert.kind.to_string(), true)];
    if let Some(job) = &alert.job {
        fields.push(field("Job", job.clone(), true));
    }
    if let Some(batch) = &alert.batch_id {
        fields.push(field("Batch", batch.clone(), true));
    }
    if let Some(rate) = alert.failure_rate {
        fields.push(field("Failure rate", format!("{:.1}%", rate * 100.0), true));
    }
    if !alert.top_errors.is_empty() {
        let errors: Vec<String> = alert
            .top_errors
            .iter()
            .map(|(code, n)| format!("{code} x{n}"))
            .collect();
        fields.push(field("Top errors", errors.join(", "), false));
    }
    if let Some(c) = &alert.counters {
        let summary = format!(
            "rows {} = rejected {} + rendered {} + failed {} + in flight {}",
            c.rows,
            c.rejected,
            c.rendered,
            c.failed,
            c.in_flight()
        );
        fields.push(field("Counters", summary, false));
    }
    json!({
        "text": alert_summary(alert),
        "attachments": [{"fallback": alert_summary(alert), "fields": fields}],
    })
}

#[async_trait]
impl Alerts for HttpAlerts {
    async fn send(&self, alert: &Alert) -> PortResult<()> {
        let operation = format!("post {} alert to the webhook", alert.kind);
        let (http, url) = match &self.target {
            Ok(target) => target,
            Err(problem) => {
                return Err(PortError::permanent(
                    operation,
                    AlertError::Unusable(problem.clone()),
                ));
            }
        };
        let response = http
            .post(url.expose())
            .json(&slack_payload(alert))
            .send()
            .await
            .map_err(|e| {
                PortError::new(operation.clone(), AlertError::Transport(e.without_url()))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let error = AlertError::Status(status.as_u16());
        if status.is_server_error() || status.as_u16() == 429 {
            Err(PortError::new(operation, error))
        } else {
            Err(PortError::permanent(operation, error))
        }
    }
}

/// Sends to every sink; one failing sink does not keep the alert from the others.
pub struct FanoutAlerts(pub Vec<Arc<dyn Alerts>>);

impl FanoutAlerts {
    pub fn new(sinks: Vec<Arc<dyn Alerts>>) -> Self {
        FanoutAlerts(sinks)
    }
}

#[async_trait]
impl Alerts for FanoutAlerts {
    /// Tries every sink, then reports the first error (the others are logged).
    async fn send(&self, alert: &Alert) -> PortResult<()> {
        let mut first_error = None;
        for sink in &self.0 {
            if let Err(error) = sink.send(alert).await {
                tracing::warn!(kind = %alert.kind, error = %error, "alert sink failed");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Logs alerts as warnings: the sink for local runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogAlerts;

#[async_trait]
impl Alerts for LogAlerts {
    async fn send(&self, alert: &Alert) -> PortResult<()> {
        tracing::warn!(
            kind = %alert.kind,
            job_id = alert.job.as_deref().unwrap_or(""),
            batch_id = alert.batch_id.as_deref().unwrap_or(""),
            failure_rate = alert.failure_rate.unwrap_or(0.0),
            top_errors = ?alert.top_errors,
            "{}",
            alert.message
        );
        Ok(())
    }
}

/// Collects alerts for assertions; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct MemoryAlerts {
    sent: Arc<Mutex<Vec<Alert>>>,
}

impl MemoryAlerts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn alerts(&self) -> Vec<Alert> {
        self.sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[async_trait]
impl Alerts for MemoryAlerts {
    async fn send(&self, alert: &Alert) -> PortResult<()> {
        self.sent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(alert.clone());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            kind: crate::ports::AlertKind::BatchHighFailureRate,
            message: "batch b1 of job_1:\n3 of 20 rows failed".into(),
            job: Some("job_1".into()),
            batch_id: Some("b1".into()),
            failure_rate: Some(0.15),
            top_errors: vec![
                ("IMAGE_FETCH_FAILED".into(), 2),
                ("RENDER_TIMEOUT".into(), 1),
            ],
            counters: None,
        }
    }

    struct Failing;

    #[async_trait]
    impl Alerts for Failing {
        async fn send(&self, _: &Alert) -> PortResult<()> {
            Err(PortError::permanent(
                "failing sink",
                AlertError::Status(500),
            ))
        }
    }

    #[test]
    fn the_summary_is_one_line() {
        let summary = alert_summary(&alert());
        assert_eq!(
            summary,
            "pictify-batch batch_high_failure_rate: batch b1 of job_1: 3 of 20 rows failed (15.0% failed)"
        );
    }

    #[test]
    fn the_slack_payload_carries_job_batch_rate_and_top_errors() {
        let payload = slack_payload(&alert());
        let fields = payload["attachments"][0]["fields"].as_array().unwrap();
        let value =
            |title: &str| fields.iter().find(|f| f["title"] == title).unwrap()["value"].clone();
        assert_eq!(value("Job"), "job_1");
        assert_eq!(value("Batch"), "b1");
        assert_eq!(value("Failure rate"), "15.0%");
        assert_eq!(
            value("Top errors"),
            "IMAGE_FETCH_FAILED x2, RENDER_TIMEOUT x1"
        );
    }

    #[tokio::test]
    async fn fanout_tries_every_sink_and_reports_the_failure() {
        let memory = MemoryAlerts::new();
        let fanout = FanoutAlerts(vec![Arc::new(Failing), Arc::new(memory.clone())]);
        assert!(fanout.send(&alert()).await.is_err());
        assert_eq!(memory.alerts(), vec![alert()]);
    }

    #[test]
    fn a_malformed_webhook_url_is_refused_without_echoing_it() {
        let error =
            HttpAlerts::try_new(Secret::new("hooks.slack.com/services/T/B/secret")).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn an_unusable_webhook_fails_every_send() {
        let error = HttpAlerts::new("not a url")
            .send(&alert())
            .await
            .unwrap_err();
        assert!(
            !error.retryable && error.to_string().contains("not configured"),
            "{error}"
        );
    }
}
