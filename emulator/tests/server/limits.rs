//! Rate limits and quota: 429 with the documented headers, 402 when renders run out.

use pictify_emulator::RateLimit;

use crate::support::*;

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_with_retry_after() {
    let emu = emulator_with(|c| {
        c.rate_limit = Some(RateLimit {
            per_minute: 3,
            per_day: None,
        })
    })
    .await;
    let url = emu.url("/webhook-subscriptions");
    for remaining in ["2", "1", "0"] {
        let ok = emu.http.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-remaining"], remaining);
        assert_eq!(ok.headers()["x-ratelimit-limit"], "3");
        assert!(ok.headers().contains_key("x-ratelimit-reset"));
    }
    let limited = emu.http.get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(
        (body["retry_after"].as_u64(), body["retryAfter"].as_u64()),
        (Some(retry_after), Some(retry_after))
    );
    assert!((1..=20).contains(&retry_after), "{retry_after}");
}

#[tokio::test]
async fn the_daily_cap_rejects_once_used_up() {
    let emu = emulator_with(|c| {
        c.rate_limit = Some(RateLimit {
            per_minute: 100,
            per_day: Some(1),
        })
    })
    .await;
    assert_eq!(emu.get("/webhook-subscriptions").await.0, 200);
    let (status, body) = emu.get("/webhook-subscriptions").await;
    assert_eq!(status, 429);
    assert!(
        body["message"].as_str().unwrap().contains("Daily"),
        "{body}"
    );
}

#[tokio::test]
async fn an_exhausted_quota_is_402_and_only_rendered_items_are_billed() {
    let emu = emulator_with(|c| c.quota = Some(2)).await;
    let (status, body) = emu.submit(cards(3)).await;
    assert_eq!(
        (status, body["message"].as_str()),
        (402, Some("Quota exceeded"))
    );
    let id = emu.accepted(cards(2)).await;
    emu.finished(&id).await;
    assert_eq!(emu.submit(cards(1)).await.0, 402);
    let ledger = emu.emu.ledger();
    assert_eq!((ledger.renders_billed, ledger.rejected_with(402)), (2, 2));
}

#[tokio::test]
async fn quota_can_be_reported_as_429_with_a_code() {
    let emu = emulator_with(|c| {
        c.quota = Some(0);
        c.quota_as_429 = true;
    })
    .await;
    let (status, body) = emu.submit(cards(1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("quota_exceeded"))
    );
}
