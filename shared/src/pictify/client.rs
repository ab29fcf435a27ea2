//! `PictifyClient`: the HTTP client for Pictify's batch and webhook-subscription endpoints.
//!
//! # Retry rules, and why
//! Pictify bills renders when they are performed, and keeps rendering after a client gives up.
//! The official SDK therefore never retries a timed-out request (SDK commit 5e87eab: a retried
//! timed-out render can be billed up to `max_retries + 1` times). We follow it, with one
//! exception that the SDK cannot make because it never sends `Idempotency-Key`:
//!
//! - 5xx answers and connection failures (nothing reached the server) are retried, with
//!   exponential backoff `backoff_base * 2^attempt` plus a random jitter of up to as much again
//!   (`backon`), up to `max_retries` times.
//! - 4xx answers are never retried, 429 included: the caller owns scheduling and gets
//!   [`PictifyError::RateLimited`] with the server's `retry_after`.
//! - A timeout (or a connection lost after sending) is retried only when replaying is harmless:
//!   for GET/DELETE, and for POSTs carrying an `Idempotency-Key` — always the case for
//!   [`PictifyClient::render_batch`], which reuses the same key on every attempt so Pictify
//!   answers a replay with the original batch instead of billing a second one. Other POSTs
//!   (create subscription, cancel) surface the timeout.
//!
//! Retries are logged with `tracing` at warn level; neither the API key nor the idempotency key
//! is ever logged.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::error::{FieldError, PictifyError, from_response};
use super::validate::validate_batch_request;
use super::variables::{TemplateVariables, VariableDef};
use super::wire::{
    BatchAccepted, BatchRenderRequest, BatchResults, CancelResult, CreateSubscription,
    Subscription, SubscriptionEnvelope, SubscriptionList, headers,
};
use crate::secret::Secret;

pub const DEFAULT_BASE_URL: &str = "https://api.pictify.io";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Page size asked for when listing subscriptions, and a bound on pages followed.
const LIST_PAGE_LIMIT: u32 = 100;
const LIST_MAX_PAGES: u32 = 50;

/// Everything the client needs; build with [`PictifyConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct PictifyConfig {
    /// Scheme and host, no `/v1` (e.g. `https://api.pictify.io`, `http://127.0.0.1:4010`).
    pub base_url: String,
    pub api_key: Secret,
    /// Per attempt, from sending the request to the end of the answer's body.
    pub timeout: Duration,
    pub max_retries: u32,
    pub backoff_base: Duration,
}

impl PictifyConfig {
    /// The production base URL and the SDK's defaults (30 s timeout, 3 retries from 1 s).
    pub fn new(api_key: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: DEFAULT_BACKOFF_BASE,
        }
    }

    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }
}

/// The production base URL, an empty key (set one before calling) and the SDK's defaults.
impl Default for PictifyConfig {
    fn default() -> Self {
        Self::new(Secret::new(""))
    }
}

/// Cheap to clone: the connection pool is shared.
#[derive(Debug, Clone)]
pub struct PictifyClient {
    http: reqwest::Client,
    base_url: String,
    api_key: Secret,
    timeout: Duration,
    max_retries: u32,
    backoff_base: Duration,
}

/// What `quote(id, safe='')` leaves alone: RFC 3986 unreserved characters.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn segment(id: &str) -> String {
    utf8_percent_encode(id, PATH_SEGMENT).to_string()
}

/// One logical call, replayed identically on each attempt.
struct Call<'a> {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    idempotency_key: Option<&'a str>,
}

impl Call<'_> {
    fn new(method: Method, path: String) -> Self {
        Self {
            method,
            path,
            body: None,
            idempotency_key: None,
        }
    }

    fn json(mut self, body: &impl Serialize) -> Result<Self, PictifyError> {
        let bytes = serde_json::to_vec(body).map_err(|e| PictifyError::InvalidRequest {
            status: None,
            message: format!("request body cannot be serialised: {e}"),
            field_errors: Vec::new(),
        })?;
        self.body = Some(bytes);
        Ok(self)
    }

    /// Whether sending this request twice has the same effect as sending it once.
    fn replay_safe(&self) -> bool {
        matches!(self.method, Method::GET | Method::DELETE) || self.idempotency_key.is_some()
    }

    fn may_retry(&self, error: &PictifyError) -> bool {
        match error {
            PictifyError::Server { .. } => true,
            // A failed connect means the server never saw the request.
            PictifyError::Network { source } => source.is_connect() || self.replay_safe(),
            PictifyError::Timeout { .. } => self.replay_safe(),
            _ => false,
        }
    }
}

impl PictifyClient {
    /// Builds the HTTP client once. A base URL that is not absolute http(s) gives
    /// `InvalidRequest` (field `baseUrl`); a TLS initialisation failure gives `Network`.
    pub fn new(config: PictifyConfig) -> Result<Self, PictifyError> {
        let base_url = config.base_url.trim_end_matches('/').to_string();
        match url::Url::parse(&base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            _ => {
                return Err(PictifyError::invalid(vec![FieldError::new(
                    "baseUrl",
                    format!("base URL `{base_url}` is not an absolute http(s) URL"),
                    "invalid_format",
                )]));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // The API never redirects; following one could re-send a POST elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pictify-batch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| PictifyError::Network { source })?;
        Ok(Self {
            http,
            base_url,
            api_key: config.api_key,
            timeout: config.timeout,
            max_retries: config.max_retries,
            backoff_base: config.backoff_base,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `POST /templates/{uid}/batch-render`. Validates first (no call on invalid input), then
    /// submits with `idempotency_key` (the same on every retry). Answers 202 with the batch id.
    pub async fn render_batch(
        &self,
        template_id: &str,
        request: &BatchRenderRequest,
        idempotency_key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        let mut problems = validate_batch_request(request);
        if template_id.is_empty() {
            problems.insert(
                0,
                FieldError::new("templateId", "template id is required", "required"),
            );
        }
        if idempotency_key.is_empty() || HeaderValue::from_str(idempotency_key).is_err() {
            problems.push(FieldError::new(
                "idempotencyKey",
                "idempotency key must be non-empty visible ASCII",
                "invalid_format",
            ));
        }
        if !problems.is_empty() {
            return Err(PictifyError::invalid(problems));
        }
        let mut call = Call::new(
            Method::POST,
            format!("/templates/{}/batch-render", segment(template_id)),
        )
        .json(request)?;
        call.idempotency_key = Some(idempotency_key);
        self.send_json(call, "batch accepted").await
    }

    /// `GET /templates/batch/{id}/results`: status and per-item outcomes (no image URLs).
    pub async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError> {
        require_id("batchId", batch_id)?;
        let call = Call::new(
            Method::GET,
            format!("/templates/batch/{}/results", segment(batch_id)),
        );
        self.send_json(call, "batch results").await
    }

    /// `GET /templates/{uid}/variables`: the template's variable definitions.
    pub async fn template_variables(
        &self,
        template_id: &str,
    ) -> Result<Vec<VariableDef>, PictifyError> {
        require_id("templateUid", template_id)?;
        let call = Call::new(
            Method::GET,
            format!("/templates/{}/variables", segment(template_id)),
        );
        let answer: TemplateVariables = self.send_json(call, "template variables").await?;
        Ok(answer
            .variables
            .into_iter()
            .map(VariableDef::from)
            .collect())
    }

    /// `POST /templates/batch/{id}/cancel`: rendered items stay, the rest are skipped.
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<CancelResult, PictifyError> {
        require_id("batchId", batch_id)?;
        let call = Call::new(
            Method::POST,
            format!("/templates/batch/{}/cancel", segment(batch_id)),
        );
        self.send_json(call, "cancel result").await
    }

    /// `POST /webhook-subscriptions`. The answer's `secret` is shown only here: store it now.
    pub async fn create_subscription(
        &self,
        request: &CreateSubscription,
    ) -> Result<Subscription, PictifyError> {
        let call = Call::new(Method::POST, "/webhook-subscriptions".to_string()).json(request)?;
        let envelope: SubscriptionEnvelope = self.send_json(call, "subscription").await?;
        Ok(envelope.subscription)
    }

    /// `GET /webhook-subscriptions`, following pages until the last one.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, PictifyError> {
        let mut all = Vec::new();
        for page in 1..=LIST_MAX_PAGES {
            let path = format!("/webhook-subscriptions?page={page}&limit={LIST_PAGE_LIMIT}");
            let list: SubscriptionList = self
                .send_json(Call::new(Method::GET, path), "subscription list")
                .await?;
            let got = list.subscriptions.len();
            all.extend(list.subscriptions);
            let more = list
                .pagination
                .is_some_and(|p| p.has_next.unwrap_or(p.page < p.total_pages));
            if got == 0 || !more {
                break;
            }
        }
        Ok(all)
    }

    /// `DELETE /webhook-subscriptions/{uid}` (200 or 204).
    pub async fn delete_subscription(&self, uid: &str) -> Result<(), PictifyError> {
        require_id("uid", uid)?;
        self.send(Call::new(
            Method::DELETE,
            format!("/webhook-subscriptions/{}", segment(uid)),
        ))
        .await?;
        Ok(())
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        what: &str,
    ) -> Result<T, PictifyError> {
        let body = self.send(call).await?;
        serde_json::from_slice(&body).map_err(|e| PictifyError::Decode {
            message: format!("{what}: {e}"),
        })
    }

    /// Sends `call`, retrying per the module rules; returns a 2xx answer's body.
    async fn send(&self, call: Call<'_>) -> Result<Bytes, PictifyError> {
        let call = &call;
        let mut retries = 0;
        (move || self.attempt(call))
            .retry(self.backoff())
            .when(|error| call.may_retry(error))
            .notify(|error, delay| {
                retries += 1;
                warn!(
                    method = %call.method,
                    path = %call.path,
                    attempt = retries,
                    max_retries = self.max_retries,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %error,
                    "retrying Pictify request"
                );
            })
            .await
    }

    /// Retry `n` (from 0) waits `backoff_base * 2^n` plus a random jitter of up to as much again,
    /// so clients that failed together do not retry in step; at most `max_retries` retries.
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(self.backoff_base)
            .with_factor(2.0)
            .without_max_delay()
            .with_max_times(usize::try_from(self.max_retries).unwrap_or(usize::MAX))
            .with_jitter()
    }

    async fn attempt(&self, call: &Call<'_>) -> Result<Bytes, PictifyError> {
        let mut request = self
            .http
            .request(
                call.method.clone(),
                format!("{}{}", self.base_url, call.path),
            )
            .bearer_auth(self.api_key.expose())
            .header(ACCEPT, "application/json");
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(key) = call.idempotency_key {
            request = request.header(headers::IDEMPOTENCY_KEY, key);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        debug!(method = %call.method, path = %call.path, status = status.as_u16(), "Pictify answered");
        if status.is_success() {
            Ok(body)
        } else {
            Err(from_response(
                status.as_u16(),
                retry_after.as_deref(),
                &body,
            ))
        }
    }

    fn transport_error(&self, error: reqwest::Error) -> PictifyError {
        // A connect timeout is a connection failure: nothing was sent, so it stays retryable.
        if error.is_timeout() && !error.is_connect() {
            PictifyError::Timeout {
                after: self.timeout,
            }
        } else {
            PictifyError::Network { source: error }
        }
    }
}

fn require_id(field: &str, id: &str) -> Result<(), PictifyError> {
    if id.is_empty() {
        return Err(PictifyError::invalid(vec![FieldError::new(
            field,
            format!("{field} is required"),
            "required",
        )]));
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
