//! Webhook deliveries: matching subscriptions, signing, ordered queues, retries and delivery faults.
//!
//! Each target URL has a queue whose first attempts leave in emit order (up to
//! `IN_FLIGHT_PER_TARGET` at once); `batch.completed` waits until every earlier delivery's
//! first attempt to that URL has finished, so without faults it arrives after its items even when
//! item and batch events come from separate subscriptions pointing at one endpoint. Retries run
//! on their own schedule outside the queue (at-least-once, no ordering promise — like Pictify).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use chrono::Utc;
use serde_json::Value;
use shared::pictify::wire::{WebhookEnvelope, event_names, headers};
use shared::signing::signature_header;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, warn};

use crate::faults::dice;
use crate::state::{AppState, Delivery, Inner, SubscriptionRecord, iso};

/// Documented retry schedule after a failed attempt: 1 m, 5 m, 30 m, 2 h, 24 h.
const RETRY_SCHEDULE_SECS: [f64; 5] = [60.0, 300.0, 1_800.0, 7_200.0, 86_400.0];
const IN_FLIGHT_PER_TARGET: usize = 8;
/// Smallest window over which reordered deliveries are released.
const MIN_REORDER_WINDOW_MS: u64 = 200;

enum Outcome {
    Acknowledged,
    Failed,
    /// The subscription was deleted: stop trying.
    Gone,
}

/// Hands `event` to every matching active subscription. `identity` (stable across runs) seeds
/// the delivery-fault dice together with the target and the event name.
pub(crate) fn emit(
    state: &Arc<AppState>,
    event: &'static str,
    data: Value,
    template_id: &str,
    identity: &[&[u8]],
) {
    let envelope = WebhookEnvelope {
        event: event.to_owned(),
        timestamp: Some(iso(Utc::now())),
        data,
    };
    let body = match serde_json::to_vec(&envelope) {
        Ok(body) => Bytes::from(body),
        Err(e) => {
            error!(event, error = %e, "could not serialize a webhook envelope");
            return;
        }
    };
    let seed = state.config.seed;
    let mut inner = state.lock();
    let faults = inner.faults.clone();
    let targets: Vec<(String, String)> = inner
        .subscriptions
        .iter()
        .filter(|(_, record)| matches(record, event, template_id))
        .map(|(uid, record)| (uid.clone(), record.subscription.target_url.clone()))
        .collect();
    for (uid, target) in targets {
        let mut parts: Vec<&[u8]> = identity.to_vec();
        parts.extend([target.as_bytes(), event.as_bytes()]);
        let roll = |kind: &str| dice(seed, &parts, kind);
        if roll("webhook-drop") < faults.webhook_drop_rate {
            inner.ledger.deliveries.dropped += 1;
            continue;
        }
        let duplicate = roll("webhook-duplicate") < faults.webhook_duplicate_rate;
        if duplicate {
            inner.ledger.deliveries.duplicated += 1;
        }
        let mut hold_ms = 0;
        if roll("webhook-delay") < faults.webhook_delay_rate {
            hold_ms += faults.webhook_delay_ms;
        }
        if roll("webhook-reorder") < faults.webhook_reorder_rate {
            // A pseudo-random hold within a window shuffles the held deliveries among themselves
            // and lets unheld ones (e.g. batch.completed) overtake them.
            let window = faults.webhook_delay_ms.max(MIN_REORDER_WINDOW_MS);
            hold_ms += window / 2 + (roll("webhook-reorder-hold") * window as f64) as u64;
        }
        let delivery = Delivery {
            id: inner.new_id("del_"),
            subscription: uid,
            event,
            body: body.clone(),
        };
        let copies = if duplicate { 2 } else { 1 };
        for _ in 0..copies {
            if hold_ms == 0 {
                enqueue(state, &mut inner, &target, delivery.clone());
            } else {
                let state = state.clone();
                let delivery = delivery.clone();
                state.clone().tasks.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(hold_ms)).await;
                    deliver_with_retries(&state, &delivery, true).await;
                });
            }
        }
    }
}

fn matches(record: &SubscriptionRecord, event: &str, template_id: &str) -> bool {
    let sub = &record.subscription;
    let template_filter = sub.filters.as_ref().and_then(|f| f.template_id.as_deref());
    sub.event == event
        && sub.status.as_deref() == Some("active")
        && template_filter.is_none_or(|t| t == template_id)
}

fn enqueue(state: &Arc<AppState>, inner: &mut Inner, target: &str, delivery: Delivery) {
    let sender = inner.queues.entry(target.to_owned()).or_insert_with(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        state.tasks.spawn(queue_worker(state.clone(), rx));
        tx
    });
    if sender.send(delivery).is_err() {
        debug!("delivery queue closed; emulator is shutting down");
    }
}

async fn queue_worker(state: Arc<AppState>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
    let mut in_flight = JoinSet::new();
    while let Some(delivery) = rx.recv().await {
        if delivery.event == event_names::BATCH_COMPLETED {
            while in_flight.join_next().await.is_some() {}
        }
        while in_flight.len() >= IN_FLIGHT_PER_TARGET {
            in_flight.join_next().await;
        }
        let state = state.clone();
        in_flight.spawn(async move {
            match attempt(&state, &delivery).await {
                Outcome::Failed => {
                    let retry_state = state.clone();
                    state.tasks.spawn(async move {
                        deliver_with_retries(&retry_state, &delivery, false).await
                    });
                }
                Outcome::Acknowledged | Outcome::Gone => {}
            }
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// Runs the (optional) first attempt and then the retry schedule until acknowledged or exhausted.
async fn deliver_with_retries(state: &AppState, delivery: &Delivery, first_attempt: bool) {
    if first_attempt {
        match attempt(state, delivery).await {
            Outcome::Failed => {}
            Outcome::Acknowledged | Outcome::Gone => return,
        }
    }
    let scale = if state.config.webhook_retry_scale.is_finite() {
        state.config.webhook_retry_scale.max(0.0)
    } else {
        1.0
    };
    for secs in RETRY_SCHEDULE_SECS {
        tokio::time::sleep(Duration::from_secs_f64(secs * scale)).await;
        match attempt(state, delivery).await {
            Outcome::Failed => {}
            Outcome::Acknowledged | Outcome::Gone => return,
        }
    }
    let mut inner = state.lock();
    inner.ledger.deliveries.failed += 1;
    if let Some(record) = inner.subscriptions.get_mut(&delivery.subscription) {
        let sub = &mut record.subscription;
        sub.failure_count = Some(sub.failure_count.unwrap_or(0) + 1);
        sub.status = Some("failed".to_owned());
    }
    warn!(delivery_id = %delivery.id, subscription = %delivery.subscription, "webhook delivery failed after all retries");
}

/// One signed POST; a fresh timestamp and signature each time, the same delivery id always.
async fn attempt(state: &AppState, delivery: &Delivery) -> Outcome {
    let (url, secret) = {
        let mut inner = state.lock();
        let Some(record) = inner.subscriptions.get(&delivery.subscription) else {
            return Outcome::Gone;
        };
        let target = (
            record.subscription.target_url.clone(),
            record.secret.clone(),
        );
        inner.ledger.deliveries.attempted += 1;
        target
    };
    let signature = signature_header(&secret, Utc::now().timestamp(), &delivery.body);
    let sent = state
        .http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(headers::SIGNATURE, signature)
        .header(headers::EVENT, delivery.event)
        .header(headers::DELIVERY_ID, &delivery.id)
        .body(delivery.body.clone())
        .send()
        .await;
    let acknowledged = match sent {
        Ok(response) => {
            let status = response.status();
            // Drain the body so the connection can be reused.
            let _ = response.bytes().await;
            if !status.is_success() {
                debug!(delivery_id = %delivery.id, %status, "webhook receiver refused a delivery");
            }
            status.is_success()
        }
        Err(e) => {
            debug!(delivery_id = %delivery.id, error = %e, "webhook delivery attempt failed");
            false
        }
    };
    let mut inner = state.lock();
    if let Some(record) = inner.subscriptions.get_mut(&delivery.subscription) {
        let sub = &mut record.subscription;
        sub.last_delivery_at = Some(iso(Utc::now()));
        if acknowledged {
            sub.delivery_count = Some(sub.delivery_count.unwrap_or(0) + 1);
        }
    }
    if acknowledged {
        inner.ledger.deliveries.acknowledged += 1;
        Outcome::Acknowledged
    } else {
        Outcome::Failed
    }
}
