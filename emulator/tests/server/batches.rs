//! Batch lifecycle: acceptance, idempotency, the state machine, cancel, and served images.

use std::collections::BTreeMap;

use pictify_emulator::Faults;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn submit_answers_202_pending_with_the_item_count() {
    let emu = emulator().await;
    let (status, body) = emu.submit(cards(3)).await;
    assert_eq!(status, 202);
    assert!(body["batchId"].as_str().unwrap().starts_with("batch_"));
    assert_eq!(
        (body["status"].clone(), body["totalItems"].clone()),
        (json!("pending"), json!(3))
    );
    assert_eq!(body["message"], "Batch job queued");
}

#[tokio::test]
async fn a_batch_completes_and_lists_every_item() {
    let emu = emulator().await;
    let id = emu.accepted(cards(4)).await;
    let results = emu.finished(&id).await;
    assert_eq!(results["status"], "completed");
    assert_eq!(
        (
            results["progress"].as_f64(),
            results["completedItems"].as_u64()
        ),
        (Some(100.0), Some(4))
    );
    assert_eq!(
        results["results"][2],
        json!({ "index": 2, "success": true, "variables": ["title"] })
    );
    assert!(results["startedAt"].is_string() && results["completedAt"].is_string());
    assert_eq!(emu.emu.ledger().renders_billed, 4);
}

#[tokio::test]
async fn same_idempotency_key_and_body_replays_without_creating_a_batch() {
    let emu = emulator().await;
    let (first_status, first) = emu.submit_keyed("chunk-1", cards(2)).await;
    let (second_status, second) = emu.submit_keyed("chunk-1", cards(2)).await;
    assert_eq!((first_status, second_status), (202, 202));
    assert_eq!(first, second);
    let ledger = emu.emu.ledger();
    assert_eq!(
        (ledger.accepted_with_key("chunk-1"), ledger.replays),
        (1, 1)
    );
}

#[tokio::test]
async fn same_idempotency_key_with_another_body_is_409() {
    let emu = emulator().await;
    emu.submit_keyed("chunk-1", cards(2)).await;
    let (status, body) = emu.submit_keyed("chunk-1", cards(3)).await;
    assert_eq!(status, 409);
    assert_eq!(
        body["message"],
        "Idempotency-Key reused with a different request body"
    );
    assert_eq!(emu.emu.ledger().batches_accepted.len(), 1);
}

#[tokio::test]
async fn some_failures_make_a_partial_batch_with_coded_errors() {
    let emu = emulator_with(|c| c.faults = failing("IMAGE_FETCH_FAILED", 0.5)).await;
    let id = emu.accepted(cards(20)).await;
    let results = emu.finished(&id).await;
    assert_eq!(results["status"], "partial", "{results}");
    let error = results["errors"][0]["error"].as_str().unwrap();
    assert!(error.starts_with("IMAGE_FETCH_FAILED: "), "{error}");
    assert_eq!(results["errors"][0]["success"], false);
}

#[tokio::test]
async fn all_failures_make_a_failed_batch_that_bills_nothing() {
    let emu = emulator_with(|c| c.faults = failing("RENDER_TIMEOUT", 1.0)).await;
    let id = emu.accepted(cards(3)).await;
    let results = emu.finished(&id).await;
    assert_eq!(
        (results["status"].as_str(), results["failedItems"].as_u64()),
        (Some("failed"), Some(3))
    );
    assert_eq!(emu.emu.ledger().renders_billed, 0);
}

#[tokio::test]
async fn cancel_skips_the_items_not_yet_started() {
    let emu = emulator_with(|c| {
        c.faults = Faults {
            render_latency_ms: 100,
            ..Faults::default()
        }
    })
    .await;
    let mut body = cards(10);
    body["concurrency"] = json!(1);
    let id = emu.accepted(body).await;
    let (status, answer) = emu
        .send(
            emu.http
                .post(emu.url(&format!("/templates/batch/{id}/cancel"))),
        )
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("cancelled"))
    );
    let results = emu.finished(&id).await;
    assert_eq!(results["status"], "cancelled");
    assert!(
        results["completedItems"].as_u64().unwrap() < 10,
        "{results}"
    );
}

#[tokio::test]
async fn cancelling_a_finished_batch_is_409() {
    let emu = emulator().await;
    let id = emu.accepted(cards(1)).await;
    emu.finished(&id).await;
    let (status, body) = emu
        .send(
            emu.http
                .post(emu.url(&format!("/templates/batch/{id}/cancel"))),
        )
        .await;
    assert_eq!(status, 409);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already completed"),
        "{body}"
    );
}

#[tokio::test]
async fn rendered_images_are_served_with_their_content_type() {
    let hook = receiver().await;
    let emu = emulator_with(|c| subscribe(c, &hook.url, &["render.completed"])).await;
    let mut body = cards(1);
    body["format"] = json!("jpeg");
    emu.accepted(body).await;
    let event = hook.wait_for(1).await[0].json();
    let url = event["data"]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&emu.emu.base_url()) && url.ends_with(".jpg"),
        "{url}"
    );
    let image = emu.http.get(url).send().await.unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/jpeg");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let emu = emulator().await;
    let url = emu.url("/_emulator/health");
    assert_eq!(emu.http.get(&url).send().await.unwrap().status(), 200);
    emu.emu.shutdown().await;
    assert!(reqwest::Client::new().get(&url).send().await.is_err());
}

pub fn failing(code: &str, rate: f64) -> Faults {
    Faults {
        item_failures: BTreeMap::from([(code.to_owned(), rate)]),
        ..Faults::default()
    }
}
