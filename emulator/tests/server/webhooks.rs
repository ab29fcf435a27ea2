//! Webhooks: subscriptions CRUD, signed deliveries, retries, ordering, and payload fields.

use serde_json::json;
use shared::signing::compute_v1;

use crate::support::*;

#[tokio::test]
async fn every_delivery_is_signed_with_the_subscription_secret() {
    let hook = receiver().await;
    let emu = emulator_with(|c| subscribe(c, &hook.url, &ALL_EVENTS)).await;
    emu.accepted(cards(2)).await;
    for hit in hook.wait_for(3).await {
        let (t, v1) = parse_signature(&hit.signature);
        assert_eq!(v1, compute_v1(SECRET, t, &hit.body), "{}", hit.event);
        assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
        assert!(hit.delivery_id.starts_with("del_"));
        assert_eq!(hit.json()["event"], hit.event);
    }
}

#[tokio::test]
async fn a_refused_delivery_is_retried_under_the_same_id() {
    let hook = receiver_scripted(&[500, 500], None).await;
    let emu = emulator_with(|c| subscribe(c, &hook.url, &["render.completed"])).await;
    emu.accepted(cards(1)).await;
    let hits = hook.wait_for(3).await;
    assert!(hits.iter().all(|h| h.delivery_id == hits[0].delivery_id));
    for hit in &hits {
        let (t, v1) = parse_signature(&hit.signature);
        assert_eq!(v1, compute_v1(SECRET, t, &hit.body));
    }
    let deliveries = emu
        .ledger_when(|l| l.deliveries.acknowledged + l.deliveries.failed > 0)
        .await
        .deliveries;
    assert_eq!(
        (
            deliveries.attempted,
            deliveries.acknowledged,
            deliveries.failed
        ),
        (3, 1, 0)
    );
}

#[tokio::test]
async fn exhausted_retries_mark_the_subscription_failed() {
    let hook = receiver_scripted(&[], Some(503)).await;
    let emu = emulator_with(|c| {
        subscribe(c, &hook.url, &["render.completed"]);
        c.webhook_retry_scale = 0.000_01;
    })
    .await;
    emu.accepted(cards(1)).await;
    assert_eq!(hook.wait_for(6).await.len(), 6);
    // The emulator marks the subscription in the same step that counts the failed delivery.
    let ledger = emu.ledger_when(|l| l.deliveries.failed > 0).await;
    assert_eq!(ledger.deliveries.failed, 1);
    let (_, list) = emu.get("/webhook-subscriptions").await;
    let sub = &list["subscriptions"][0];
    assert_eq!(
        (sub["status"].as_str(), sub["failureCount"].as_u64()),
        (Some("failed"), Some(1))
    );
}

#[tokio::test]
async fn batch_completed_arrives_after_every_item_event() {
    let hook = receiver().await;
    let emu = emulator_with(|c| {
        c.faults = crate::batches::failing("INVALID_VARIABLE", 0.3);
        subscribe(c, &hook.url, &ALL_EVENTS);
    })
    .await;
    emu.accepted(cards(30)).await;
    let hits = hook.wait_for(31).await;
    assert_eq!(hits.last().unwrap().event, "batch.completed");
    let summary = hits.last().unwrap().json()["data"].clone();
    let counts = (
        summary["completedCount"].as_u64().unwrap(),
        summary["failedCount"].as_u64().unwrap(),
    );
    assert_eq!(counts.0 + counts.1, 30);
    assert_eq!(summary["templateUid"], TEMPLATE);
    assert!(counts.1 > 0 && summary["status"] == "partial", "{summary}");
}

#[tokio::test]
async fn render_events_carry_the_documented_fields_and_no_batch_id_by_default() {
    let hook = receiver().await;
    let emu = emulator_with(|c| subscribe(c, &hook.url, &["render.completed"])).await;
    emu.accepted(cards(1)).await;
    let data = hook.wait_for(1).await[0].json()["data"].clone();
    assert_eq!(
        (data["type"].as_str(), data["source"].as_str()),
        (Some("image"), Some("api"))
    );
    assert_eq!(data["variables"], json!({ "title": "card 0" }));
    assert_eq!(
        (data["templateId"].as_str(), data["format"].as_str()),
        (Some(TEMPLATE), Some("png"))
    );
    assert!(
        data["imageId"].as_str().unwrap().starts_with("img_") && data["renderedAt"].is_string()
    );
    assert!(data.get("batchId").is_none() && data.get("batchIndex").is_none());
}

#[tokio::test]
async fn correlation_fields_are_added_when_enabled() {
    let hook = receiver().await;
    let emu = emulator_with(|c| {
        c.correlation_fields = true;
        subscribe(c, &hook.url, &["render.completed"]);
    })
    .await;
    let id = emu.accepted(cards(1)).await;
    let data = hook.wait_for(1).await[0].json()["data"].clone();
    assert_eq!(
        (data["batchId"].as_str(), data["batchIndex"].as_u64()),
        (Some(id.as_str()), Some(0))
    );
}

#[tokio::test]
async fn a_template_filter_limits_what_a_subscription_receives() {
    let hook = receiver().await;
    let emu = emulator().await;
    let create = |template: &str| {
        let body = json!({ "event": "render.completed", "targetUrl": hook.url, "filters": { "templateId": template } });
        emu.http.post(emu.url("/webhook-subscriptions")).json(&body)
    };
    assert_eq!(emu.send(create("tmpl_other")).await.0, 201);
    assert_eq!(emu.send(create(TEMPLATE)).await.0, 201);
    emu.accepted(cards(2)).await;
    hook.wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(hook.hits().len(), 2);
}

#[tokio::test]
async fn subscriptions_support_create_get_list_update_delete() {
    let emu = emulator().await;
    let body = json!({ "event": "render.failed", "targetUrl": "http://127.0.0.1:9/hook" });
    let (status, created) = emu
        .send(emu.http.post(emu.url("/webhook-subscriptions")).json(&body))
        .await;
    assert_eq!(status, 201);
    let secret = created["subscription"]["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() == 6 + 64);
    let uid = created["subscription"]["uid"].as_str().unwrap();
    let path = format!("/webhook-subscriptions/{uid}");

    let (_, fetched) = emu.get(&path).await;
    assert!(fetched["subscription"].get("secret").is_none());
    let (_, list) = emu.get("/webhook-subscriptions?event=render.failed").await;
    assert_eq!(list["pagination"]["total"], 1);
    let (status, updated) = emu
        .send(
            emu.http
                .put(emu.url(&path))
                .json(&json!({ "status": "paused" })),
        )
        .await;
    assert_eq!(
        (status, updated["subscription"]["status"].as_str()),
        (200, Some("paused"))
    );
    assert_eq!(emu.send(emu.http.delete(emu.url(&path))).await.0, 200);
    assert_eq!(emu.get(&path).await.0, 404);
}

#[tokio::test]
async fn invalid_subscriptions_are_400_naming_the_field() {
    let emu = emulator().await;
    let body = json!({ "event": "render.started", "targetUrl": "ftp://x" });
    let (status, answer) = emu
        .send(emu.http.post(emu.url("/webhook-subscriptions")).json(&body))
        .await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["event", "targetUrl"]);
}
