//! HTTP routes: the Pictify batch API (auth, rate limits, idempotency), images, and the admin API.
//!
//! Idempotency (`Idempotency-Key` on batch submit), choices where the docs are silent:
//! - keys are scoped per API key and kept 24 h;
//! - only accepted (202) answers are stored: a request rejected with 4xx/5xx can be retried
//!   under the same key once the problem is fixed;
//! - same key + same request (template uid + JSON body, compared structurally) → the stored
//!   status and body are replayed, nothing is created or billed, `ledger.replays` counts it;
//! - same key + different request → 409 `{"message":"Idempotency-Key reused with a different request body"}`;
//! - concurrent duplicates are serialized by the state lock, so exactly one batch is created.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::pictify::wire::{BatchAccepted, BatchStatus, CancelResult, Format, headers};
use tracing::info;

use crate::batch;
use crate::config::Plan;
use crate::error::{ApiError, FieldError, JsonBody, MAX_BODY_BYTES, RawBody, parse_json};
use crate::faults::{Faults, dice};
use crate::limits;
use crate::ratelimit;
use crate::state::{AppState, Batch, Inner, Item, StoredAnswer};
use crate::subscriptions;

const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The authenticated caller's API key.
#[derive(Clone)]
struct ApiKey(String);

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let pictify = Router::new()
        .route("/templates/{uid}/batch-render", post(submit))
        .route("/templates/batch/{id}/results", get(results))
        .route("/templates/batch/{id}/cancel", post(cancel))
        .route("/templates/{uid}/variables", get(template_variables))
        .route(
            "/webhook-subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/webhook-subscriptions/{uid}",
            get(subscriptions::get)
                .put(subscriptions::update)
                .delete(subscriptions::delete),
        )
        // route_layer order: the last added runs first, so auth precedes rate limiting.
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let local = Router::new()
        .route("/images/{file}", get(image))
        .route(
            "/_emulator/health",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/_emulator/ledger", get(ledger))
        .route("/_emulator/faults", get(get_faults).put(put_faults))
        .route("/_emulator/limits", get(limits::get).put(limits::put));
    pictify
        .merge(local)
        .fallback(|| async { ApiError::not_found("Route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        .layer(middleware::from_fn_with_state(state.clone(), count_submits))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if state.config.api_keys.iter().any(|k| k == key) => {
            let key = ApiKey(key.to_owned());
            req.extensions_mut().insert(key);
            next.run(req).await
        }
        _ => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Invalid Request: missing or unknown API key",
        )
        .into_response(),
    }
}

async fn rate_limit(
    State(state): State<Arc<AppState>>,
    Extension(ApiKey(key)): Extension<ApiKey>,
    req: Request,
    next: Next,
) -> Response {
    let Some(decision) = rate_decision(&state, key) else {
        return next.run(req).await;
    };
    let mut response = match decision.rejection {
        Some((_, rejection)) => rejection.into_response(),
        None => next.run(req).await,
    };
    response.headers_mut().extend(decision.headers);
    response
}

/// Takes a token from `key`'s bucket; `None` when requests are not limited. The limits are read
/// here at each request (under the lock) because they can change at run time.
fn rate_decision(state: &AppState, key: String) -> Option<ratelimit::Decision> {
    let mut inner = state.lock();
    let limit = inner.rate_limit()?;
    let bucket = inner
        .rate
        .entry(key)
        .or_insert_with(|| ratelimit::Bucket::full(limit));
    let decision = ratelimit::check(bucket, limit);
    match decision.rejection.as_ref().map(|(cause, _)| cause) {
        Some(ratelimit::Cause::PerMinute) => inner.ledger.throttled.rate += 1,
        Some(ratelimit::Cause::Daily) => inner.ledger.throttled.daily += 1,
        None => {}
    }
    Some(decision)
}

/// Counts submit requests and their rejections, wherever they were rejected (auth, limits, body).
async fn count_submits(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let is_submit = req.method() == Method::POST
        && path.starts_with("/templates/")
        && path.ends_with("/batch-render");
    if is_submit {
        state.lock().ledger.submit_requests += 1;
    }
    let response = next.run(req).await;
    if is_submit && !response.status().is_success() {
        *state
            .lock()
            .ledger
            .rejected
            .entry(response.status().as_u16().to_string())
            .or_default() += 1;
    }
    response
}

async fn submit(
    State(state): State<Arc<AppState>>,
    Path(uid): Path<String>,
    Extension(ApiKey(api_key)): Extension<ApiKey>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let value = parse_json(&headers, &body)?;
    // Read at each submit: the items cap can change at run time.
    let items_cap = state
        .lock()
        .limits
        .items_per_batch
        .unwrap_or(state.config.max_items_per_batch);
    let valid =
        batch::validate(&value, items_cap, state.config.plan).map_err(ApiError::validation)?;
    let fingerprint = fingerprint(&uid, &value);
    let late_answer = submit_faults(&state, idempotency_key.as_deref(), &fingerprint)?;
    let template = state
        .templates
        .get(&uid)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Template"))?;

    let total = valid.variable_sets.len();
    let (answer, batch_id) = {
        let mut inner = state.lock();
        if let Some(key) = &idempotency_key {
            inner
                .idempotency
                .retain(|_, stored| stored.stored_at.elapsed() < IDEMPOTENCY_TTL);
            if let Some(stored) = inner.idempotency.get(&(api_key.clone(), key.clone())) {
                if stored.fingerprint != fingerprint {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "Idempotency-Key reused with a different request body",
                    ));
                }
                let replay = (
                    stored.status,
                    [(CONTENT_TYPE, "application/json")],
                    stored.body.clone(),
                );
                inner.ledger.replays += 1;
                return Ok(replay.into_response());
            }
        }
        if inner.quota.is_some_and(|left| left < total as u64) {
            if state.config.quota_as_429 {
                inner.ledger.throttled.quota += 1;
            }
            return Err(quota_exceeded(state.config.quota_as_429));
        }
        if let Some(refusal) = plan_limits(&state, &mut inner, total as u64) {
            return Err(refusal);
        }
        let batch_id = inner.new_id("batch_");
        let accepted = BatchAccepted {
            batch_id: batch_id.clone(),
            status: Some(BatchStatus::Pending),
            total_items: Some(total as u32),
            message: Some("Batch job queued".into()),
        };
        let answer = serde_json::to_vec(&accepted)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error"))?;
        inner.batches.insert(
            batch_id.clone(),
            Batch {
                id: batch_id.clone(),
                template,
                format: valid.format,
                quality: valid.quality,
                concurrency: valid.concurrency,
                variable_sets: Arc::new(valid.variable_sets),
                items: vec![Item::Pending; total],
                status: BatchStatus::Pending,
                created_at: Utc::now(),
                started_at: None,
                completed_at: None,
                fingerprint,
                idempotency_key: idempotency_key.clone(),
            },
        );
        inner.batch_order.push(batch_id.clone());
        inner.batch_accepted();
        if let Some(key) = &idempotency_key {
            let stored = StoredAnswer {
                fingerprint,
                status: StatusCode::ACCEPTED,
                body: answer.clone(),
                stored_at: Instant::now(),
            };
            inner.idempotency.insert((api_key, key.clone()), stored);
        }
        (answer, batch_id)
    };
    info!(batch_id = %batch_id, template = %uid, items = total, "batch accepted");
    state.tasks.spawn(batch::run(state.clone(), batch_id));
    if let Some(delay) = late_answer {
        // The batch exists and renders (and bills) meanwhile; only the answer is late.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = state.shutting_down() => {}
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        [(CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get(headers::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match raw.to_str().map(str::trim) {
        Ok(key) if (1..=255).contains(&key.len()) => Ok(Some(key.to_owned())),
        _ => Err(ApiError::validation(vec![FieldError::new(
            "Idempotency-Key",
            "invalid_format",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )])),
    }
}

/// Identity of a submit: template uid + the parsed body (object keys are sorted by serde_json).
fn fingerprint(uid: &str, body: &Value) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(uid.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(body).unwrap_or_default());
    hasher.finalize().into()
}

/// Rolls the submit faults for this attempt; `Ok(Some(delay))` asks for a late answer.
/// Keyed by (seed, idempotency key or body hash, attempt number) so a retry rolls afresh.
fn submit_faults(
    state: &AppState,
    idempotency_key: Option<&str>,
    fingerprint: &[u8; 32],
) -> Result<Option<Duration>, ApiError> {
    let identity = idempotency_key.map_or_else(|| hex::encode(fingerprint), |k| format!("key:{k}"));
    let (faults, attempt, seen) = {
        let mut inner = state.lock();
        let counter = inner.submit_attempts.entry(identity.clone()).or_default();
        let attempt = *counter;
        *counter += 1;
        let seen = inner.submits_seen;
        inner.submits_seen += 1;
        (inner.faults.clone(), attempt, seen)
    };
    let attempt = attempt.to_le_bytes();
    let roll = |kind: &str| dice(state.config.seed, &[identity.as_bytes(), &attempt], kind);
    if seen < u64::from(faults.submit_429_first) || roll("submit-429") < faults.submit_429_rate {
        state.lock().ledger.throttled.injected += 1;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests (injected fault)",
        )
        .with_field("retry_after", json!(1))
        .with_field("retryAfter", json!(1))
        .with_header(RETRY_AFTER, HeaderValue::from(1)));
    }
    if roll("submit-5xx") < faults.submit_5xx_rate {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service temporarily unavailable (injected fault)",
        ));
    }
    let late = roll("submit-late") < faults.submit_late_answer_rate;
    Ok(late.then(|| Duration::from_millis(faults.late_answer_delay_ms)))
}

/// The monthly renders (Free: a hard limit) and the concurrent-batch limit, checked under the
/// state lock so two racing submits cannot both take the last slot. `None` = go ahead.
fn plan_limits(state: &AppState, inner: &mut Inner, items: u64) -> Option<ApiError> {
    let plan = state.config.plan;
    let plan_name = plan.map_or_else(|| "account".to_owned(), |p| format!("{p} plan"));
    let overage = plan.is_some_and(Plan::allows_overage);
    if let Some(monthly) = inner.limits.monthly_renders.filter(|_| !overage) {
        let used = inner.renders_this_month();
        if used.saturating_add(items) > monthly {
            inner.ledger.throttled.quota += 1;
            return Some(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "Plan limit exceeded: the {plan_name} includes {monthly} renders a month; \
                         {used} used, this batch needs {items}"
                    ),
                )
                .with_field("code", json!("quota_exceeded")),
            );
        }
    }
    let cap = inner.limits.concurrent_batches?;
    if inner.in_flight() < cap as usize {
        return None;
    }
    inner.ledger.throttled.concurrency += 1;
    let retry_after = concurrency_retry_after(inner, state.latency);
    Some(
        ratelimit::too_many_requests(
            format!(
                "Concurrent batch limit reached: the {plan_name} allows {cap} batch{} pending or \
                 processing at once; submit again when one finishes",
                if cap == 1 { "" } else { "es" }
            ),
            retry_after,
        )
        .with_field("code", json!("concurrent_batch_limit"))
        .with_field("limit", json!(cap)),
    )
}

/// Seconds until the in-flight batch closest to done should finish (at least 1): its unfinished
/// items, `concurrency` at a time, at the simulated render latency.
fn concurrency_retry_after(inner: &Inner, latency: Duration) -> i64 {
    let soonest = inner
        .batches
        .values()
        .filter(|b| !b.status.is_terminal())
        .map(|b| {
            let left = b.count(|i| matches!(i, Item::Pending | Item::Running));
            let waves = u64::from(left).div_ceil(b.concurrency.max(1) as u64);
            latency.as_secs_f64() * waves as f64
        })
        .fold(f64::INFINITY, f64::min);
    if soonest.is_finite() {
        (soonest.ceil() as i64).max(1)
    } else {
        1
    }
}

fn quota_exceeded(as_429: bool) -> ApiError {
    if as_429 {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Quota exceeded")
            .with_field("code", json!("quota_exceeded"))
    } else {
        ApiError::new(StatusCode::PAYMENT_REQUIRED, "Quota exceeded")
    }
}

async fn results(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let inner = state.lock();
    let batch = inner
        .batches
        .get(&id)
        .ok_or_else(|| ApiError::not_found("Batch"))?;
    Ok(Json(batch::results(batch)).into_response())
}

/// `GET /templates/{uid}/variables`: the template's variable definitions, as Pictify documents
/// them (`pictify-batch check` reads them before anything is billed).
async fn template_variables(
    State(state): State<Arc<AppState>>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let template = state
        .templates
        .get(&uid)
        .cloned()
        .ok_or_else(|| ApiError::not_found("Template"))?;
    let variables: Vec<Value> = template
        .variables
        .iter()
        .map(|def| {
            json!({
                "name": def.name,
                "type": def.kind.as_deref().unwrap_or("text"),
                "defaultValue": def.default,
                "validation": {
                    "required": def.required,
                    "minLength": def.min_length,
                    "maxLength": def.max_length,
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "templateUid": template.id,
        "templateName": template.name,
        "variables": variables,
    }))
    .into_response())
}

/// Cancels a non-terminal batch: unstarted items are skipped, items in flight keep their result.
/// A terminal batch answers 409 (undocumented upstream; a no-op 200 would hide client bugs).
async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut inner = state.lock();
    let batch = inner
        .batches
        .get_mut(&id)
        .ok_or_else(|| ApiError::not_found("Batch"))?;
    if batch.status.is_terminal() {
        let status = serde_json::to_value(batch.status).unwrap_or(Value::Null);
        let shown = status.as_str().unwrap_or("finished");
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("Batch is already {shown} and cannot be cancelled"),
        )
        .with_field("status", status.clone()));
    }
    let mut skipped = 0;
    for item in batch.items.iter_mut().filter(|i| **i == Item::Pending) {
        *item = Item::Skipped;
        skipped += 1;
    }
    batch.status = BatchStatus::Cancelled;
    batch.completed_at = Some(Utc::now());
    inner.in_flight_changed();
    info!(batch_id = %id, skipped, "batch cancelled");
    Ok(Json(CancelResult {
        batch_id: id,
        status: BatchStatus::Cancelled,
        message: Some(format!(
            "Batch cancelled; {skipped} unprocessed items skipped"
        )),
    })
    .into_response())
}

/// Serves rendered images: the emulator's "CDN", unauthenticated like real image URLs.
async fn image(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("Image");
    let safe = !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    let format = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => Format::Png,
        Some("jpg" | "jpeg") => Format::Jpeg,
        Some("webp") => Format::Webp,
        Some("gif") => Format::Gif,
        _ => return Err(not_found()),
    };
    if !safe {
        return Err(not_found());
    }
    let bytes = tokio::fs::read(state.config.data_dir.join(&file))
        .await
        .map_err(|_| not_found())?;
    let mut response = ([(CONTENT_TYPE, format.content_type())], bytes).into_response();
    let warnings = state.config.data_dir.join(batch::warnings_file(&file));
    if let Ok(header) = tokio::fs::read_to_string(warnings).await
        && let Ok(value) = HeaderValue::from_str(&header)
    {
        response
            .headers_mut()
            .insert(crate::render::WARNINGS_HEADER, value);
    }
    Ok(response)
}

async fn ledger(State(state): State<Arc<AppState>>) -> Response {
    Json(state.ledger_snapshot()).into_response()
}

async fn get_faults(State(state): State<Arc<AppState>>) -> Response {
    Json(state.lock().faults.clone()).into_response()
}

async fn put_faults(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let faults: Faults = serde_json::from_value(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid faults: {e}")))?;
    faults
        .validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Invalid faults: {e}")))?;
    state.lock().faults = faults.clone();
    info!(?faults, "faults replaced");
    Ok(Json(faults).into_response())
}
