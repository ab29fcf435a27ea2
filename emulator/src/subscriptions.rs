//! `/webhook-subscriptions` CRUD: the documented subscription object; the secret is shown only on create.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Serialize;
use serde_json::{Map, Value, json};
use shared::pictify::wire::{Subscription, SubscriptionEnvelope, SubscriptionFilters};

use crate::error::{ApiError, FieldError, JsonBody};
use crate::state::{AppState, Inner, SubscriptionRecord, iso};

const EVENTS: [&str; 5] = [
    "render.completed",
    "render.failed",
    "binding.updated",
    "binding.failed",
    "batch.completed",
];
const PLATFORMS: [&str; 5] = ["zapier", "make", "n8n", "pipedream", "custom"];
const DEFAULT_PAGE_SIZE: u64 = 20;
const MAX_PAGE_SIZE: u64 = 100;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Pagination {
    page: u64,
    limit: u64,
    total: u64,
    total_pages: u64,
    has_next: bool,
    has_prev: bool,
}

/// Registers a subscription (API create and start-up presets share this).
pub(crate) fn register(
    inner: &mut Inner,
    event: String,
    target_url: String,
    platform: String,
    filters: SubscriptionFilters,
    secret: String,
) -> Subscription {
    let uid = inner.new_id("wh_");
    let subscription = Subscription {
        uid: uid.clone(),
        event,
        target_url,
        platform: Some(platform),
        status: Some("active".into()),
        filters: Some(filters),
        delivery_count: Some(0),
        failure_count: Some(0),
        last_delivery_at: None,
        created_at: Some(iso(Utc::now())),
        secret: None,
    };
    let seq = inner.subscription_seq;
    inner.subscription_seq += 1;
    inner.subscriptions.insert(
        uid,
        SubscriptionRecord {
            subscription: subscription.clone(),
            secret,
            seq,
        },
    );
    subscription
}

pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let obj = object(&body)?;
    let mut errors = Vec::new();
    let event = required_str(obj, "event", &mut errors);
    if let Some(e) = &event
        && !EVENTS.contains(&e.as_str())
    {
        errors.push(FieldError::new(
            "event",
            "invalid_format",
            format!("event must be one of {}", EVENTS.join(", ")),
        ));
    }
    let target_url = required_str(obj, "targetUrl", &mut errors);
    if let Some(url) = &target_url {
        check_url(url, &mut errors);
    }
    let platform = match obj.get("platform") {
        None | Some(Value::Null) => "custom".to_owned(),
        Some(Value::String(p)) if PLATFORMS.contains(&p.as_str()) => p.clone(),
        Some(_) => {
            errors.push(FieldError::new(
                "platform",
                "invalid_format",
                format!("platform must be one of {}", PLATFORMS.join(", ")),
            ));
            String::new()
        }
    };
    let filters = filters(obj, &mut errors);
    let (Some(event), Some(target_url), true) = (event, target_url, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let mut inner = state.lock();
    let secret = format!("whsec_{}", inner.random_hex(32));
    let mut subscription = register(
        &mut inner,
        event,
        target_url,
        platform,
        filters,
        secret.clone(),
    );
    subscription.secret = Some(secret);
    Ok((
        StatusCode::CREATED,
        Json(SubscriptionEnvelope { subscription }),
    )
        .into_response())
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let number = |name: &str, default: u64, max: u64| -> Result<u64, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(vec![FieldError::new(
                        name,
                        "out_of_range",
                        format!("{name} must be an integer between 1 and {max}"),
                    )])
                }),
        }
    };
    let page = number("page", 1, u64::MAX)?;
    let limit = number("limit", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let inner = state.lock();
    let mut records: Vec<&SubscriptionRecord> = inner
        .subscriptions
        .values()
        .filter(|r| {
            query
                .get("event")
                .is_none_or(|e| &r.subscription.event == e)
        })
        .filter(|r| {
            query
                .get("status")
                .is_none_or(|s| r.subscription.status.as_ref() == Some(s))
        })
        .collect();
    records.sort_by_key(|r| r.seq);
    let total = records.len() as u64;
    let total_pages = total.div_ceil(limit);
    let start = usize::try_from(page.saturating_sub(1).saturating_mul(limit)).unwrap_or(usize::MAX);
    let subscriptions: Vec<&Subscription> = records
        .iter()
        .skip(start)
        .take(limit as usize)
        .map(|r| &r.subscription)
        .collect();
    let pagination = Pagination {
        page,
        limit,
        total,
        total_pages,
        has_next: page < total_pages,
        has_prev: page > 1,
    };
    Ok(Json(json!({ "subscriptions": subscriptions, "pagination": pagination })).into_response())
}

pub(crate) async fn get(
    State(state): State<Arc<AppState>>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let inner = state.lock();
    let record = inner.subscriptions.get(&uid).ok_or_else(not_found)?;
    Ok(Json(SubscriptionEnvelope {
        subscription: record.subscription.clone(),
    })
    .into_response())
}

pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Path(uid): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let obj = object(&body)?;
    let mut errors = Vec::new();
    let target_url = match obj.get("targetUrl") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => {
            check_url(url, &mut errors);
            Some(url.clone())
        }
        Some(_) => {
            errors.push(FieldError::new(
                "targetUrl",
                "invalid_type",
                "targetUrl must be a string",
            ));
            None
        }
    };
    let status = match obj.get("status") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == "active" || s == "paused" => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new(
                "status",
                "invalid_format",
                "status must be active or paused",
            ));
            None
        }
    };
    let filters = obj
        .contains_key("filters")
        .then(|| filters(obj, &mut errors));
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let mut inner = state.lock();
    let record = inner.subscriptions.get_mut(&uid).ok_or_else(not_found)?;
    let sub = &mut record.subscription;
    if let Some(url) = target_url {
        sub.target_url = url;
    }
    if let Some(status) = status {
        sub.status = Some(status);
    }
    if let Some(filters) = filters {
        sub.filters = Some(filters);
    }
    Ok(Json(SubscriptionEnvelope {
        subscription: sub.clone(),
    })
    .into_response())
}

pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let mut inner = state.lock();
    inner.subscriptions.remove(&uid).ok_or_else(not_found)?;
    Ok(Json(json!({ "deleted": true })).into_response())
}

fn not_found() -> ApiError {
    ApiError::not_found("Webhook subscription")
}

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object().ok_or_else(|| {
        ApiError::validation(vec![FieldError::new(
            "body",
            "invalid_type",
            "request body must be a JSON object",
        )])
    })
}

fn required_str(
    obj: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                field,
                "required",
                format!("{field} is required"),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(
                field,
                "invalid_type",
                format!("{field} must be a non-empty string"),
            ));
            None
        }
    }
}

fn check_url(url: &str, errors: &mut Vec<FieldError>) {
    let ok = url::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        errors.push(FieldError::new(
            "targetUrl",
            "invalid_format",
            "targetUrl must be an absolute http(s) URL",
        ));
    }
}

fn filters(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> SubscriptionFilters {
    match obj.get("filters") {
        None | Some(Value::Null) => SubscriptionFilters::default(),
        Some(value) => serde_json::from_value(value.clone()).unwrap_or_else(|_| {
            errors.push(FieldError::new(
                "filters",
                "invalid_type",
                "filters must be an object with optional string templateId and bindingId",
            ));
            SubscriptionFilters::default()
        }),
    }
}
