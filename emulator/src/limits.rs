//! `GET` / `PUT /_emulator/limits`: the plan limits in force, changeable while the emulator runs
//! (a test can exhaust the monthly renders mid-job, raise them, and resume).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};
use tracing::info;

use crate::config::PlanLimits;
use crate::error::{ApiError, JsonBody};
use crate::state::AppState;

/// The limits as JSON: camelCase, `null` = unlimited.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LimitsJson {
    monthly_renders: Option<u64>,
    concurrent_batches: Option<u32>,
    items_per_batch: Option<usize>,
    requests_per_minute: Option<u32>,
    requests_per_day: Option<u64>,
}

impl From<PlanLimits> for LimitsJson {
    fn from(l: PlanLimits) -> Self {
        Self {
            monthly_renders: l.monthly_renders,
            concurrent_batches: l.concurrent_batches,
            items_per_batch: l.items_per_batch,
            requests_per_minute: l.requests_per_minute,
            requests_per_day: l.requests_per_day,
        }
    }
}

/// A `PUT` body. The outer `Option` is whether the field was sent (absent = keep the limit);
/// the inner one is the new limit (`null` = unlimited).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LimitsChange {
    #[serde(default, deserialize_with = "sent")]
    monthly_renders: Option<Option<u64>>,
    #[serde(default, deserialize_with = "sent")]
    concurrent_batches: Option<Option<u32>>,
    #[serde(default, deserialize_with = "sent")]
    items_per_batch: Option<Option<usize>>,
    #[serde(default, deserialize_with = "sent")]
    requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "sent")]
    requests_per_day: Option<Option<u64>>,
}

/// A field that is present (possibly `null`); serde's `default` covers the absent case, which
/// plain `Option<Option<T>>` cannot tell from `null`.
fn sent<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl LimitsChange {
    fn apply(self, limits: &mut PlanLimits) {
        if let Some(v) = self.monthly_renders {
            limits.monthly_renders = v;
        }
        if let Some(v) = self.concurrent_batches {
            limits.concurrent_batches = v;
        }
        if let Some(v) = self.items_per_batch {
            limits.items_per_batch = v;
        }
        if let Some(v) = self.requests_per_minute {
            limits.requests_per_minute = v;
        }
        if let Some(v) = self.requests_per_day {
            limits.requests_per_day = v;
        }
    }
}

/// Zero is refused where it would not mean what it says: a batch needs at least one item, and
/// the token bucket cannot hold fewer than one request a minute. (Zero monthly renders, concurrent
/// batches or daily requests do mean "refuse everything", and are allowed.)
pub(crate) fn check(
    items_per_batch: Option<usize>,
    requests_per_minute: Option<u32>,
) -> Result<(), String> {
    if items_per_batch == Some(0) {
        return Err("itemsPerBatch must be at least 1 (or null for the default cap)".into());
    }
    if requests_per_minute == Some(0) {
        return Err("requestsPerMinute must be at least 1 (or null for unlimited)".into());
    }
    Ok(())
}

pub(crate) async fn get(State(state): State<Arc<AppState>>) -> Response {
    Json(LimitsJson::from(state.lock().limits)).into_response()
}

pub(crate) async fn put(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let invalid =
        |e: String| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid limits: {e}"));
    // serde would also read an array as the fields in order (`[1]` = monthlyRenders 1).
    if !body.is_object() {
        return Err(invalid("the body must be a JSON object".into()));
    }
    let change: LimitsChange = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    check(
        change.items_per_batch.flatten(),
        change.requests_per_minute.flatten(),
    )
    .map_err(invalid)?;
    let limits = state.change_limits(|limits| change.apply(limits));
    info!(?limits, "limits changed");
    Ok(Json(LimitsJson::from(limits)).into_response())
}
