//! Webhook subscription health: Pictify stops delivering to a subscription it has paused, or
//! failed after repeated failed deliveries, and every event it carried is lost while it is
//! (`render.completed`: the rows' image URLs). The reconciler reads the subscriptions to the
//! stack's webhook URL each pass and alerts once per subscription and state.

use tracing::warn;

use super::{Pipeline, StepError};
use crate::domain::JobId;
use crate::pictify::wire::{Subscription, event_names};
use crate::ports::{Alert, AlertKind};

/// The events the stack subscribes to (`pictify-batch register-webhooks`) and needs.
pub const NEEDED_EVENTS: [&str; 3] = [
    event_names::RENDER_COMPLETED,
    event_names::RENDER_FAILED,
    event_names::BATCH_COMPLETED,
];

/// A subscription the stack needs that does not deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// No subscription sends this event to the webhook URL.
    Missing { event: String },
    /// Pictify paused it, or failed it after repeated failed deliveries.
    Stopped {
        uid: String,
        event: String,
        status: String,
        failures: u64,
    },
}

impl Unhealthy {
    /// What an alert is claimed under: a subscription that recovers and stops again (more
    /// failures) alerts again; the same state never twice.
    fn claim_key(&self) -> String {
        match self {
            Unhealthy::Missing { event } => format!("missing#{event}"),
            Unhealthy::Stopped {
                uid,
                status,
                failures,
                ..
            } => format!("{uid}#{status}#{failures}"),
        }
    }

    fn message(&self, url: &str) -> String {
        match self {
            Unhealthy::Missing { event } => format!(
                "Pictify has no subscription sending {event} to {url}: those events are lost until one exists (pictify-batch register-webhooks --url {url})"
            ),
            Unhealthy::Stopped {
                uid,
                event,
                status,
                failures,
            } => format!(
                "Pictify subscription {uid} ({event} -> {url}) is {status} after {failures} failed deliveries: every {event} is lost while it is. Fix the webhook (WebhookServerErrorsAlarm, the webhook function's log), then set the subscription active again (PUT /webhook-subscriptions/{uid} {{\"status\": \"active\"}})"
            ),
        }
    }
}

/// The subscriptions to `url` that do not deliver, and the needed events none carries. Any
/// active subscription for an event is enough for it.
pub fn unhealthy(subscriptions: &[Subscription], url: &str) -> Vec<Unhealthy> {
    let same = |target: &str| target.trim_end_matches('/') == url.trim_end_matches('/');
    let ours: Vec<&Subscription> = subscriptions
        .iter()
        .filter(|s| same(&s.target_url))
        .collect();
    let mut found = Vec::new();
    for event in NEEDED_EVENTS {
        if !ours.iter().any(|s| s.event == event) {
            found.push(Unhealthy::Missing {
                event: event.to_owned(),
            });
        }
    }
    for s in ours {
        let status = s.status.as_deref().unwrap_or("active");
        if status == "failed" || status == "paused" {
            found.push(Unhealthy::Stopped {
                uid: s.uid.clone(),
                event: s.event.clone(),
                status: status.to_owned(),
                failures: s.failure_count.unwrap_or(0),
            });
        }
    }
    found
}

impl Pipeline {
    /// Reads the subscriptions and alerts each unhealthy one once. Returns how many are unhealthy
    /// now (the `WebhookSubscriptionsUnhealthy` metric: its alarm stays on while one is).
    pub(crate) async fn check_subscriptions(&self, url: &str) -> Result<u64, StepError> {
        let found = unhealthy(&self.pictify.list_subscriptions().await?, url);
        let now = self.clock.now();
        // Claimed under a stack-wide record: these alerts belong to no job.
        let claim = JobId::for_upload("pictify-batch", "webhook-subscriptions", url);
        for problem in &found {
            let kind = format!(
                "{}#{}",
                AlertKind::WebhookSubscriptionUnhealthy.as_str(),
                problem.claim_key()
            );
            if !self.store.claim_alert(&claim, &kind, now).await? {
                continue;
            }
            warn!(problem = ?problem, "a webhook subscription the stack needs does not deliver");
            self.alert(Alert {
                kind: AlertKind::WebhookSubscriptionUnhealthy,
                message: problem.message(url),
                job: None,
                batch_id: None,
                failure_rate: None,
                top_errors: Vec::new(),
                counters: None,
            })
            .await;
        }
        Ok(found.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(
        uid: &str,
        event: &str,
        url: &str,
        status: &str,
        failures: u64,
    ) -> Subscription {
        serde_json::from_value(serde_json::json!({
            "uid": uid, "event": event, "targetUrl": url, "status": status, "failureCount": failures,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn stopped_and_missing_subscriptions_to_the_stack_are_found_and_others_ignored() {
        let url = "https://abc.lambda-url.us-east-1.on.aws/";
        let all = [
            subscription("wh_1", "render.completed", url, "failed", 10),
            subscription(
                "wh_2",
                "render.failed",
                "https://abc.lambda-url.us-east-1.on.aws",
                "active",
                0,
            ),
            // Someone else's subscription (e.g. Zapier) is not the stack's business.
            subscription(
                "wh_3",
                "batch.completed",
                "https://hooks.zapier.com/x",
                "paused",
                0,
            ),
        ];
        assert_eq!(
            unhealthy(&all, url),
            vec![
                Unhealthy::Missing {
                    event: "batch.completed".into()
                },
                Unhealthy::Stopped {
                    uid: "wh_1".into(),
                    event: "render.completed".into(),
                    status: "failed".into(),
                    failures: 10
                },
            ]
        );
        let healthy = [
            subscription("wh_1", "render.completed", url, "active", 3),
            subscription("wh_2", "render.failed", url, "active", 0),
            subscription("wh_4", "batch.completed", url, "active", 0),
        ];
        assert!(unhealthy(&healthy, url).is_empty());
    }
}
