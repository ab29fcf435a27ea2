//! Per-key rate limiting: a token bucket (per-minute capacity, even refill) plus a daily cap.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::{NaiveDate, Utc};
use serde_json::json;

use crate::config::RateLimit;
use crate::error::ApiError;

pub(crate) struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    day: NaiveDate,
    used_today: u64,
}

/// The outcome for one request: headers to add, or the 429 to answer with.
pub(crate) struct Decision {
    pub headers: HeaderMap,
    pub rejection: Option<ApiError>,
}

impl Bucket {
    pub fn full(limit: RateLimit) -> Self {
        Self {
            tokens: f64::from(limit.per_minute.max(1)),
            refilled_at: Instant::now(),
            day: Utc::now().date_naive(),
            used_today: 0,
        }
    }
}

/// Takes one token from `bucket` and reports the headers, or the 429 to answer with.
pub(crate) fn check(bucket: &mut Bucket, limit: RateLimit) -> Decision {
    let now = Instant::now();
    let today = Utc::now().date_naive();
    let capacity = f64::from(limit.per_minute.max(1));
    let per_second = capacity / 60.0;
    bucket.tokens = (bucket.tokens
        + now.duration_since(bucket.refilled_at).as_secs_f64() * per_second)
        .min(capacity);
    bucket.refilled_at = now;
    if bucket.day != today {
        bucket.day = today;
        bucket.used_today = 0;
    }

    let daily_exhausted = limit.per_day.is_some_and(|cap| bucket.used_today >= cap);
    let allowed = !daily_exhausted && bucket.tokens >= 1.0;
    if allowed {
        bucket.tokens -= 1.0;
        bucket.used_today += 1;
    }
    let unix_now = Utc::now().timestamp();
    let until_full = ((capacity - bucket.tokens) / per_second).ceil() as i64;
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-limit", HeaderValue::from(limit.per_minute));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(bucket.tokens.floor() as u64),
    );
    headers.insert(
        "x-ratelimit-reset",
        HeaderValue::from(unix_now + until_full),
    );
    if allowed {
        return Decision {
            headers,
            rejection: None,
        };
    }

    let (retry_after, message) = if daily_exhausted {
        let midnight = Utc::now()
            .date_naive()
            .succ_opt()
            .and_then(|d| d.and_hms_opt(0, 0, 0));
        let secs = midnight
            .map(|m| (m.and_utc().timestamp() - unix_now).max(1))
            .unwrap_or(86_400);
        let cap = limit.per_day.unwrap_or_default();
        (
            secs,
            format!("Daily request limit of {cap} requests exceeded"),
        )
    } else {
        let secs = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as i64;
        (
            secs,
            format!(
                "Rate limit exceeded: {} requests per minute",
                limit.per_minute
            ),
        )
    };
    // Both spellings: the SDK reads `retry_after`, the docs show `retryAfter`, MCP reads the header.
    let rejection = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        .with_field("retry_after", json!(retry_after))
        .with_field("retryAfter", json!(retry_after))
        .with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(retry_after),
        );
    Decision {
        headers,
        rejection: Some(rejection),
    }
}
