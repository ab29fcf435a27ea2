//! webhook: verify the signature on the raw body, then record what the event says. Every effect is
//! idempotent, so duplicated, replayed and reordered deliveries change nothing.

use tracing::{info, warn};

use super::{Pipeline, StepError};
use crate::dataset::fingerprint;
use crate::metrics::{self, Unit};
use crate::pictify::events::{WebhookEvent, parse_webhook};
use crate::ports::{FailureRecord, RenderRecord};
use crate::signing;

/// The parts of an HTTP request the webhook step needs.
pub struct WebhookRequest<'a> {
    pub signature: Option<&'a str>,
    pub delivery_id: Option<&'a str>,
    pub body: &'a [u8],
}

/// Status and a short JSON body. 4xx bodies say what was wrong, except 401, which tells a stranger
/// nothing (not even whether a secret is configured); 5xx bodies say nothing internal.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookReply {
    pub status: u16,
    pub body: String,
}

impl WebhookReply {
    fn ok(note: &str) -> Self {
        WebhookReply {
            status: 200,
            body: serde_json::json!({ "ok": true, "note": note }).to_string(),
        }
    }

    fn refuse(status: u16, error: &str) -> Self {
        WebhookReply {
            status,
            body: serde_json::json!({ "ok": false, "error": error }).to_string(),
        }
    }
}

impl Pipeline {
    pub async fn handle_webhook(&self, request: WebhookRequest<'_>) -> WebhookReply {
        let delivery = request.delivery_id.unwrap_or("-");
        if request.body.len() > self.settings.webhook_max_body_bytes {
            warn!(
                delivery_id = delivery,
                bytes = request.body.len(),
                "webhook body too large"
            );
            return WebhookReply::refuse(413, "body too large");
        }
        let now = self.clock.now();
        if let Err(e) = signing::verify(
            request.signature,
            request.body,
            &self.webhook_secrets,
            now,
            self.settings.signature_tolerance,
        ) {
            // The reason (missing, stale, forged, no secret configured) is for our logs only.
            warn!(delivery_id = delivery, error = %e, "webhook signature refused");
            return WebhookReply::refuse(401, "unauthorized");
        }
        let parsed = match parse_webhook(request.body) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(delivery_id = delivery, error = %e, "webhook body refused");
                return WebhookReply::refuse(400, &e.to_string());
            }
        };
        match self.apply_event(parsed.event, request.body, now).await {
            Ok(note) => {
                info!(delivery_id = delivery, note, "webhook applied");
                WebhookReply::ok(note)
            }
            Err(e) => {
                // 5xx asks Pictify to deliver again later; the details stay in our logs.
                tracing::error!(delivery_id = delivery, error = %e, "webhook could not be applied");
                WebhookReply::refuse(500, "internal error; please retry")
            }
        }
    }

    async fn apply_event(
        &self,
        event: WebhookEvent,
        raw: &[u8],
        now: i64,
    ) -> Result<&'static str, StepError> {
        match event {
            WebhookEvent::RenderCompleted(data) => {
                let (Some(template_id), Some(variables)) =
                    (data.template_id.as_deref(), data.variables.as_ref())
                else {
                    self.orphan(
                        "render.completed",
                        data.image_id.as_deref().unwrap_or("-"),
                        raw,
                        now,
                    )
                    .await?;
                    return Ok("render without template or variables: recorded as orphan");
                };
                let record = RenderRecord {
                    url: data.url.clone(),
                    image_id: data.image_id.clone(),
                    rendered_at: data.rendered_at.clone(),
                    recorded_at: now,
                };
                self.store
                    .record_render(&fingerprint(template_id, variables), &record)
                    .await?;
                // A missing or unparseable renderedAt gives NaN, which emit drops.
                let lag = data.rendered_at.as_deref().and_then(metrics::millis_since);
                metrics::emit(
                    &[("WebhookLag", lag.unwrap_or(f64::NAN), Unit::Milliseconds)],
                    &[],
                );
                Ok("render recorded")
            }
            WebhookEvent::RenderFailed(data) => {
                let (Some(template_id), Some(variables)) =
                    (data.template_id.as_deref(), data.variables.as_ref())
                else {
                    self.orphan("render.failed", "-", raw, now).await?;
                    return Ok("failure without template or variables: recorded as orphan");
                };
                let record = FailureRecord {
                    code: data
                        .error_code
                        .clone()
                        .unwrap_or_else(|| crate::domain::own_codes::UNKNOWN.into()),
                    message: data.error.clone().unwrap_or_default(),
                    recorded_at: now,
                };
                self.store
                    .record_failure(&fingerprint(template_id, variables), &record)
                    .await?;
                Ok("failure recorded")
            }
            WebhookEvent::BatchCompleted(data) => Ok(
                match self.complete_batch(&data.batch_id, data.duration).await? {
                    super::BatchApplied::Applied => "batch applied",
                    super::BatchApplied::AlreadyApplied => "batch already applied",
                    super::BatchApplied::UnknownBatch => {
                        self.orphan("batch.completed", &data.batch_id, raw, now)
                            .await?;
                        "unknown batch: recorded as orphan"
                    }
                },
            ),
            WebhookEvent::Unknown { event, .. } => {
                info!(event = %event, "ignoring an event type we do not handle");
                Ok("event type ignored")
            }
        }
    }

    async fn orphan(&self, kind: &str, id: &str, raw: &[u8], now: i64) -> Result<(), StepError> {
        warn!(kind, id, "orphan webhook");
        let body = String::from_utf8_lossy(raw);
        self.store.record_orphan(kind, id, &body, now).await?;
        Ok(())
    }
}
