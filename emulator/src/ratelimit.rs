//! Per-key rate limiting: a token bucket (per-minute capacity, even refill) plus a daily cap.
//! Either may be absent (Enterprise's "custom" limits, or an override of just one of them).

use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::{NaiveDate, Utc};
use serde_json::json;

use crate::config::RateLimit;
use crate::error::ApiError;

/// The limits one key is held to; at least one is set when rate limiting is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    pub per_minute: Option<u32>,
    pub per_day: Option<u64>,
}

impl From<RateLimit> for Limit {
    fn from(r: RateLimit) -> Self {
        Self {
            per_minute: Some(r.per_minute),
            per_day: r.per_day,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    PerMinute,
    Daily,
}

pub(crate) struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    day: NaiveDate,
    used_today: u64,
}

/// The outcome for one request: headers to add, or the 429 to answer with.
pub(crate) struct Decision {
    pub headers: HeaderMap,
    pub rejection: Option<(Cause, ApiError)>,
}

impl Bucket {
    pub fn full(limit: Limit) -> Self {
        Self {
            tokens: capacity(limit),
            refilled_at: Instant::now(),
            day: Utc::now().date_naive(),
            used_today: 0,
        }
    }

    /// Full again at `limit`'s capacity (after the limit changed); today's count is kept.
    pub fn refill(&mut self, limit: Limit) {
        self.tokens = capacity(limit);
        self.refilled_at = Instant::now();
    }
}

fn capacity(limit: Limit) -> f64 {
    f64::from(limit.per_minute.unwrap_or(1).max(1))
}

/// Seconds until the next midnight UTC (at least 1).
fn until_midnight(unix_now: i64) -> i64 {
    Utc::now()
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|m| (m.and_utc().timestamp() - unix_now).max(1))
        .unwrap_or(86_400)
}

/// Takes one token from `bucket` and reports the headers, or the 429 to answer with.
pub(crate) fn check(bucket: &mut Bucket, limit: Limit) -> Decision {
    let now = Instant::now();
    let today = Utc::now().date_naive();
    let capacity = capacity(limit);
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
    let minute_exhausted = limit.per_minute.is_some() && bucket.tokens < 1.0;
    let allowed = !daily_exhausted && !minute_exhausted;
    if allowed {
        if limit.per_minute.is_some() {
            bucket.tokens -= 1.0;
        }
        bucket.used_today += 1;
    }
    let unix_now = Utc::now().timestamp();
    let mut headers = HeaderMap::new();
    match (limit.per_minute, limit.per_day) {
        (Some(per_minute), _) => {
            let until_full = ((capacity - bucket.tokens) / per_second).ceil() as i64;
            headers.insert("x-ratelimit-limit", HeaderValue::from(per_minute));
            headers.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(bucket.tokens.floor() as u64),
            );
            headers.insert(
                "x-ratelimit-reset",
                HeaderValue::from(unix_now + until_full),
            );
        }
        (None, Some(per_day)) => {
            headers.insert("x-ratelimit-limit", HeaderValue::from(per_day));
            headers.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(per_day.saturating_sub(bucket.used_today)),
            );
            headers.insert(
                "x-ratelimit-reset",
                HeaderValue::from(unix_now + until_midnight(unix_now)),
            );
        }
        (None, None) => {}
    }
    if allowed {
        return Decision {
            headers,
            rejection: None,
        };
    }

    let (cause, retry_after, message) = if daily_exhausted {
        let cap = limit.per_day.unwrap_or_default();
        (
            Cause::Daily,
            until_midnight(unix_now),
            format!("Daily request limit of {cap} requests exceeded"),
        )
    } else {
        let secs = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as i64;
        (
            Cause::PerMinute,
            secs,
            format!(
                "Rate limit exceeded: {} requests per minute",
                limit.per_minute.unwrap_or_default()
            ),
        )
    };
    Decision {
        headers,
        rejection: Some((cause, too_many_requests(message, retry_after))),
    }
}

/// A 429 with the wait in every spelling: the SDK reads `retry_after`, the docs show
/// `retryAfter`, MCP reads the header.
pub(crate) fn too_many_requests(message: impl Into<String>, retry_after: i64) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        .with_field("retry_after", json!(retry_after))
        .with_field("retryAfter", json!(retry_after))
        .with_header(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(retry_after),
        )
}
