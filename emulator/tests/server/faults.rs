//! Fault injection is deterministic per seed and does what each fault promises.

use std::time::Duration;

use pictify_emulator::Faults;
use serde_json::{Value, json};

use crate::batches::failing;
use crate::support::*;

/// Indexes of the failed items of one 40-item batch run with `seed`.
async fn failed_indexes(seed: u64) -> Vec<u64> {
    let emu = emulator_with(|c| {
        c.seed = seed;
        c.faults = failing("EXPRESSION_ERROR", 0.3);
    })
    .await;
    let id = emu.accepted(cards(40)).await;
    let results = emu.finished(&id).await;
    let mut failed: Vec<u64> = results["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    failed.sort_unstable();
    failed
}

#[tokio::test]
async fn the_same_seed_fails_the_same_items_and_another_seed_does_not() {
    let first = failed_indexes(7).await;
    assert!(!first.is_empty());
    assert_eq!(first, failed_indexes(7).await);
    assert_ne!(first, failed_indexes(8).await);
}

#[tokio::test]
async fn a_retried_submit_can_succeed_and_each_key_is_accepted_once() {
    let emu = emulator_with(|c| {
        c.faults = Faults {
            submit_5xx_rate: 0.5,
            ..Faults::default()
        }
    })
    .await;
    for chunk in 0..8 {
        let key = format!("chunk-{chunk}");
        let mut attempts = 0;
        while emu.submit_keyed(&key, cards(1)).await.0 == 503 {
            attempts += 1;
            assert!(attempts < 30, "{key} never got through");
        }
    }
    let ledger = emu.emu.ledger();
    assert!(ledger.rejected_with(503) > 0);
    assert!((0..8).all(|c| ledger.accepted_with_key(&format!("chunk-{c}")) == 1));
}

#[tokio::test]
async fn a_late_answer_still_creates_and_bills_the_batch() {
    let faults = Faults {
        submit_late_answer_rate: 1.0,
        late_answer_delay_ms: 2_000,
        ..Faults::default()
    };
    let emu = emulator_with(|c| c.faults = faults).await;
    let url = emu.url(&format!("/templates/{TEMPLATE}/batch-render"));
    let request = emu
        .http
        .post(&url)
        .bearer_auth(KEY)
        .header("Idempotency-Key", "late-1")
        .json(&cards(2));
    let timed_out = request.timeout(Duration::from_millis(300)).send().await;
    assert!(timed_out.unwrap_err().is_timeout());

    let (status, replay) = emu.submit_keyed("late-1", cards(2)).await;
    assert_eq!(status, 202);
    let ledger = emu.emu.ledger();
    assert_eq!(ledger.accepted_with_key("late-1"), 1);
    assert_eq!(
        replay["batchId"].as_str(),
        Some(ledger.batches_accepted[0].batch_id.as_str())
    );
    emu.finished(replay["batchId"].as_str().unwrap()).await;
    assert_eq!(emu.emu.ledger().renders_billed, 2);
}

#[tokio::test]
async fn injected_submit_429_carries_retry_after() {
    let emu = emulator_with(|c| {
        c.faults = Faults {
            submit_429_rate: 1.0,
            ..Faults::default()
        }
    })
    .await;
    let (status, body) = emu.submit(cards(1)).await;
    assert_eq!((status, body["retry_after"].as_u64()), (429, Some(1)));
    assert!(emu.emu.ledger().batches_accepted.is_empty());
}

#[tokio::test]
async fn dropped_deliveries_are_counted_but_never_sent() {
    let hook = receiver().await;
    let emu = emulator_with(|c| {
        c.faults = Faults {
            webhook_drop_rate: 1.0,
            ..Faults::default()
        };
        subscribe(c, &hook.url, &ALL_EVENTS);
    })
    .await;
    let id = emu.accepted(cards(3)).await;
    emu.finished(&id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(hook.hits().is_empty());
    let ledger = emu.ledger_when(|l| l.deliveries.dropped >= 4).await;
    assert_eq!(ledger.deliveries.dropped, 4);
}

#[tokio::test]
async fn duplicated_deliveries_share_one_delivery_id() {
    let hook = receiver().await;
    let emu = emulator_with(|c| {
        c.faults = Faults {
            webhook_duplicate_rate: 1.0,
            ..Faults::default()
        };
        subscribe(c, &hook.url, &["render.completed"]);
    })
    .await;
    emu.accepted(cards(1)).await;
    let hits = hook.wait_for(2).await;
    assert_eq!(hits[0].delivery_id, hits[1].delivery_id);
    assert_eq!(hits[0].body, hits[1].body);
}

#[tokio::test]
async fn reordered_deliveries_all_arrive_eventually() {
    let hook = receiver().await;
    let emu = emulator_with(|c| {
        c.faults = Faults {
            webhook_reorder_rate: 1.0,
            ..Faults::default()
        };
        subscribe(c, &hook.url, &["render.completed"]);
        subscribe(c, &hook.url, &["batch.completed"]);
    })
    .await;
    let id = emu.accepted(cards(5)).await;
    let hits = hook.wait_for(6).await;
    assert_eq!(
        hits.iter().filter(|h| h.event == "batch.completed").count(),
        1
    );
    assert_eq!(emu.finished(&id).await["status"], "completed");
}

#[tokio::test]
async fn faults_can_be_read_and_replaced_over_http() {
    let emu = emulator().await;
    let put = |body: Value| emu.http.put(emu.url("/_emulator/faults")).json(&body);
    let (status, _) = emu
        .send(put(
            json!({ "webhookDropRate": 0.25, "itemFailures": { "RENDER_TIMEOUT": 0.1 } }),
        ))
        .await;
    assert_eq!(status, 200);
    let (_, faults) = emu.get("/_emulator/faults").await;
    assert_eq!(
        (
            faults["webhookDropRate"].as_f64(),
            faults["itemFailures"]["RENDER_TIMEOUT"].as_f64()
        ),
        (Some(0.25), Some(0.1))
    );
    let (status, body) = emu.send(put(json!({ "webhookDropRat": 0.25 }))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        emu.send(put(json!({ "webhookDropRate": 2.0 }))).await.0,
        400
    );
}
