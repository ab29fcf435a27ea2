//! Pictify plans: items per batch, concurrent batches, requests per minute/day, monthly renders,
//! render latency, and the ledger's view of them. Without a plan nothing is limited.

use std::time::Duration;

use pictify_emulator::{Plan, PlanLimits, ThrottleCounts};
use serde_json::{Value, json};

use crate::support::*;

/// `PUT /_emulator/limits` with `body`.
async fn put_limits(emu: &Emu, body: Value) -> (u16, Value) {
    emu.send(emu.http.put(emu.url("/_emulator/limits")).json(&body))
        .await
}

/// `n` cards rendered one at a time, so a batch stays in flight for `n` render latencies.
fn slow_cards(n: usize) -> Value {
    let mut body = cards(n);
    body["concurrency"] = json!(1);
    body
}

#[tokio::test]
async fn free_rejects_an_11_item_batch_with_400_naming_the_limit_and_plan() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Free);
        c.time_scale = 0.0;
    })
    .await;
    let (status, body) = emu.submit(cards(11)).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("Free plan") && message.contains("at most 10"),
        "{message}"
    );
    assert_eq!(body["errors"][0]["code"], "too_long");
    let id = emu.accepted(cards(10)).await;
    emu.finished(&id).await;
}

#[tokio::test]
async fn an_items_override_replaces_the_plan_limit() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Pro);
        c.limits.items_per_batch = Some(2);
        c.time_scale = 0.0;
    })
    .await;
    assert_eq!(emu.submit(cards(3)).await.0, 400);
    emu.accepted(cards(2)).await;
}

#[tokio::test]
async fn pro_refuses_a_fourth_concurrent_batch_until_one_finishes() {
    // 1 s per item scaled to 40 ms: a 10-item batch at concurrency 1 takes ~400 ms.
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Pro);
        c.time_scale = 0.04;
    })
    .await;
    let first = emu.accepted(slow_cards(10)).await;
    emu.accepted(slow_cards(10)).await;
    emu.accepted(slow_cards(10)).await;

    let refused = emu
        .http
        .post(emu.url(&format!("/templates/{TEMPLATE}/batch-render")))
        .bearer_auth(KEY)
        .json(&slow_cards(10))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "concurrent_batch_limit", "{body}");
    assert_eq!(body["retry_after"].as_u64(), Some(retry_after));
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Pro plan allows 3"),
        "{body}"
    );

    emu.finished(&first).await;
    let again = emu.accepted(slow_cards(1)).await;
    emu.finished(&again).await;
    let ledger = emu.emu.ledger();
    assert_eq!(ledger.max_batches_in_flight, 3);
    assert_eq!(ledger.throttled.concurrency, 1);
    assert_eq!(ledger.rejected_with(429), 1);
}

#[tokio::test]
async fn the_per_minute_limit_answers_429_with_headers_once_exhausted() {
    let emu = emulator_with(|c| c.plan = Some(Plan::Free)).await;
    let url = emu.url("/webhook-subscriptions");
    for used in 1..=60u32 {
        let ok = emu.http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-limit"], "60");
        // The bucket refills a token a second, so allow for one that came back meanwhile.
        let remaining: u32 = ok.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((60 - used..=61 - used).contains(&remaining), "{remaining}");
    }
    // Drain whatever trickled back in during the loop.
    let mut limited = None;
    for _ in 0..5 {
        let answer = emu.http.get(&url).bearer_auth(KEY).send().await.unwrap();
        if answer.status() == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("never rate limited");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    assert!(limited.headers().contains_key("x-ratelimit-reset"));
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("60 requests per minute"),
        "{body}"
    );
    assert_eq!(
        body["code"],
        Value::Null,
        "a rate limit is not a quota: {body}"
    );
    assert_eq!(emu.emu.ledger().throttled.rate, 1);
}

#[tokio::test]
async fn a_requests_per_day_override_works_without_a_plan() {
    let emu = emulator_with(|c| c.limits.requests_per_day = Some(2)).await;
    for remaining in ["1", "0"] {
        let ok = emu
            .http
            .get(emu.url("/webhook-subscriptions"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-limit"], "2");
        assert_eq!(ok.headers()["x-ratelimit-remaining"], remaining);
    }
    let (status, body) = emu.get("/webhook-subscriptions").await;
    assert_eq!(status, 429);
    assert!(
        body["message"].as_str().unwrap().contains("Daily"),
        "{body}"
    );
    assert_eq!(emu.emu.ledger().throttled.daily, 1);
}

#[tokio::test]
async fn free_monthly_renders_run_out_with_429_quota_exceeded() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Free);
        c.time_scale = 0.0;
        // Polling while ten batches finish would trip Free's 60 a minute; not what is tested.
        c.limits.requests_per_minute = Some(10_000);
    })
    .await;
    for _ in 0..10 {
        let id = emu.accepted(cards(10)).await;
        emu.finished(&id).await;
    }
    let (status, body) = emu.submit(cards(1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("100 renders a month"),
        "{body}"
    );
    let ledger = emu.emu.ledger();
    assert_eq!((ledger.renders_this_month, ledger.overage_items), (100, 0));
    assert_eq!(ledger.throttled.quota, 1);
}

#[tokio::test]
async fn a_paid_plan_keeps_rendering_past_its_quota_and_counts_overage() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Pro);
        c.limits.monthly_renders = Some(5);
        c.time_scale = 0.0;
    })
    .await;
    let id = emu.accepted(cards(8)).await;
    emu.finished(&id).await;
    let id = emu.accepted(cards(4)).await;
    emu.finished(&id).await;
    let ledger = emu.emu.ledger();
    assert_eq!(
        (
            ledger.renders_billed,
            ledger.renders_this_month,
            ledger.overage_items
        ),
        (12, 12, 7)
    );
    assert_eq!(ledger.throttled, ThrottleCounts::default());
}

#[tokio::test]
async fn the_ledger_reports_the_most_batches_in_flight() {
    // No plan, so no concurrency limit; latency alone keeps the batches in flight together.
    let emu = emulator_with(|c| {
        c.render_seconds = Some(1.0);
        c.time_scale = 0.05;
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(emu.accepted(slow_cards(4)).await);
    }
    for id in &ids {
        emu.finished(id).await;
    }
    let later = emu.accepted(slow_cards(1)).await;
    emu.finished(&later).await;
    assert_eq!(emu.emu.ledger().max_batches_in_flight, 4);
}

#[tokio::test]
async fn render_latency_is_time_scaled() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Business);
        c.time_scale = 0.05; // 1 s → 50 ms per item
    })
    .await;
    let started = std::time::Instant::now();
    let id = emu.accepted(slow_cards(4)).await;
    emu.finished(&id).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn no_plan_means_no_limits() {
    let emu = emulator().await;
    // Many batches at once, none refused, none slowed down.
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(emu.accepted(cards(100)).await);
    }
    for id in &ids {
        emu.finished(id).await;
    }
    // Plenty of requests, no rate-limit headers.
    for _ in 0..100 {
        let ok = emu
            .http
            .get(emu.url("/webhook-subscriptions"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        assert!(!ok.headers().contains_key("x-ratelimit-limit"));
    }
    let ledger = emu.emu.ledger();
    assert_eq!(ledger.throttled, ThrottleCounts::default());
    assert_eq!((ledger.overage_items, ledger.renders_billed), (0, 1_200));
    // The item cap is the historical 100, with its historical message.
    let (status, body) = emu.submit(cards(101)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["message"],
        "variableSets has 101 items; at most 100 are allowed"
    );
}

#[tokio::test]
async fn mean_batches_in_flight_covers_the_first_to_the_last_submit_only() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Business);
        c.time_scale = 0.05; // 50 ms per item: ten items one at a time take 500 ms
    })
    .await;
    assert_eq!(emu.emu.ledger().mean_batches_in_flight, 0.0);
    let long = emu.accepted(slow_cards(10)).await;
    assert_eq!(
        emu.emu.ledger().mean_batches_in_flight,
        0.0,
        "one batch is no window"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let short = emu.accepted(slow_cards(1)).await;
    // The long batch was in flight for the whole window and nothing else was.
    let mean = emu.emu.ledger().mean_batches_in_flight;
    assert!((mean - 1.0).abs() < 1e-9, "{mean}");
    // Two in flight after the last submit, then none: the drain does not count.
    emu.finished(&short).await;
    emu.finished(&long).await;
    let ledger = emu.emu.ledger();
    assert!(
        (ledger.mean_batches_in_flight - 1.0).abs() < 1e-9,
        "{ledger:?}"
    );
    assert_eq!(ledger.max_batches_in_flight, 2);
}

#[tokio::test]
async fn a_client_that_keeps_pro_saturated_averages_close_to_three_in_flight() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Pro);
        c.time_scale = 0.05; // 20 items one at a time: 1 s per batch
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(emu.accepted(slow_cards(20)).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Free a slot and take it straight back: the window dips to two for one round trip.
    let (status, body) = emu
        .send(
            emu.http
                .post(emu.url(&format!("/templates/batch/{}/cancel", ids[0]))),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ids.push(emu.accepted(slow_cards(20)).await);
    let ledger = emu.emu.ledger();
    let mean = ledger.mean_batches_in_flight;
    assert!((2.7..=3.0 + 1e-9).contains(&mean), "{mean}");
    assert_eq!(
        (ledger.max_batches_in_flight, ledger.throttled.concurrency),
        (3, 0)
    );
    for id in &ids[1..] {
        let path = format!("/templates/batch/{id}/cancel");
        assert_eq!(emu.send(emu.http.post(emu.url(&path))).await.0, 200);
    }
}

#[tokio::test]
async fn raising_the_monthly_renders_lets_a_free_job_resume_after_quota_exceeded() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Free);
        c.time_scale = 0.0;
        c.limits.requests_per_minute = Some(10_000);
    })
    .await;
    // Lowered at run time too, so the quota runs out after two batches rather than ten.
    let (status, body) = put_limits(&emu, json!({ "monthlyRenders": 20 })).await;
    assert_eq!((status, body["monthlyRenders"].as_u64()), (200, Some(20)));
    for _ in 0..2 {
        let id = emu.accepted(cards(10)).await;
        emu.finished(&id).await;
    }
    let (status, body) = emu.submit(cards(10)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("quota_exceeded")),
        "{body}"
    );

    let (status, body) = put_limits(&emu, json!({ "monthlyRenders": 5_000 })).await;
    let expected = json!({
        "monthlyRenders": 5_000,
        "concurrentBatches": 1,
        "itemsPerBatch": 10,
        "requestsPerMinute": 10_000,
        "requestsPerDay": 1_000,
    });
    assert_eq!((status, &body), (200, &expected));
    assert_eq!(emu.get("/_emulator/limits").await, (200, expected));
    let id = emu.accepted(cards(10)).await;
    emu.finished(&id).await;

    let ledger = emu.emu.ledger();
    assert_eq!(
        (
            ledger.renders_this_month,
            ledger.throttled.quota,
            ledger.rejected_with(429)
        ),
        (30, 1, 1)
    );
}

#[tokio::test]
async fn set_limits_changes_items_and_concurrency_for_the_next_submit() {
    let emu = emulator_with(|c| {
        c.plan = Some(Plan::Pro);
        c.time_scale = 0.05;
    })
    .await;
    let pro = emu.emu.limits();
    assert_eq!(pro, Plan::Pro.limits());
    let tight = PlanLimits {
        items_per_batch: Some(2),
        concurrent_batches: Some(1),
        ..pro
    };
    assert_eq!(emu.emu.set_limits(tight).unwrap(), tight);

    let (status, body) = emu.submit(cards(3)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("at most 2"),
        "{body}"
    );
    let first = emu.accepted(slow_cards(2)).await;
    let (status, body) = emu.submit(cards(1)).await;
    assert_eq!(
        (status, body["code"].as_str(), body["limit"].as_u64()),
        (429, Some("concurrent_batch_limit"), Some(1)),
        "{body}"
    );

    // Unlimited concurrency; no items limit means the default cap, not none.
    let open = emu
        .emu
        .set_limits(PlanLimits {
            concurrent_batches: None,
            items_per_batch: None,
            ..tight
        })
        .unwrap();
    assert_eq!(
        (open.concurrent_batches, open.items_per_batch),
        (None, Some(100))
    );
    let second = emu.accepted(cards(3)).await;
    emu.finished(&first).await;
    emu.finished(&second).await;

    // A zero items cap is refused and changes nothing.
    let zero = PlanLimits {
        items_per_batch: Some(0),
        ..open
    };
    assert!(emu.emu.set_limits(zero).is_err());
    assert_eq!(emu.emu.limits(), open);
}

#[tokio::test]
async fn changing_requests_per_minute_refills_the_bucket_and_null_lifts_it() {
    let emu = emulator_with(|c| c.limits.requests_per_minute = Some(2)).await;
    let subscriptions = emu.url("/webhook-subscriptions");
    let request = || emu.http.get(&subscriptions).bearer_auth(KEY).send();
    for _ in 0..2 {
        assert_eq!(request().await.unwrap().status(), 200);
    }
    assert_eq!(request().await.unwrap().status(), 429);

    // Another limit changed, the per-minute one kept: the bucket stays empty.
    let (status, body) = put_limits(&emu, json!({ "requestsPerDay": 1_000 })).await;
    assert_eq!((status, body["requestsPerMinute"].as_u64()), (200, Some(2)));
    assert_eq!(request().await.unwrap().status(), 429);

    // A new per-minute limit starts every key with a full bucket at that limit.
    put_limits(&emu, json!({ "requestsPerMinute": 5 })).await;
    let ok = request().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        (
            &ok.headers()["x-ratelimit-limit"],
            &ok.headers()["x-ratelimit-remaining"]
        ),
        (&"5".parse().unwrap(), &"4".parse().unwrap())
    );

    let (status, body) = put_limits(
        &emu,
        json!({ "requestsPerMinute": null, "requestsPerDay": null }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["requestsPerMinute"], &body["requestsPerDay"]),
        (&Value::Null, &Value::Null)
    );
    let ok = request().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(!ok.headers().contains_key("x-ratelimit-limit"));
    assert_eq!(emu.emu.ledger().throttled.rate, 2);
}

#[tokio::test]
async fn bad_limit_changes_are_400_and_change_nothing() {
    let emu = emulator_with(|c| c.plan = Some(Plan::Pro)).await;
    for bad in [
        json!({ "monthlyQuota": 5 }),
        json!({ "itemsPerBatch": 0 }),
        json!({ "requestsPerMinute": 0 }),
        json!({ "concurrentBatches": "3" }),
        json!({ "monthlyRenders": -1 }),
        json!([1]),
    ] {
        let (status, body) = put_limits(&emu, bad.clone()).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid limits"),
            "{body}"
        );
    }
    assert_eq!(emu.emu.limits(), Plan::Pro.limits());
    // Zero is a real limit where it means "refuse everything".
    let (status, body) = put_limits(&emu, json!({ "concurrentBatches": 0 })).await;
    assert_eq!((status, body["concurrentBatches"].as_u64()), (200, Some(0)));
    assert_eq!(emu.submit(cards(1)).await.0, 429);
}
