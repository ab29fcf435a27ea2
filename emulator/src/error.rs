//! Error answers in the SDK-compatible shapes, and the one place request bodies are read and parsed.
//!
//! Every rejection (auth, limits, body too large, wrong content type, malformed JSON, validation)
//! goes through `ApiError`, so clients always get JSON with a `message` naming the problem.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_TYPE, HeaderName};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Largest accepted request body; 100 variable sets of a few KB fit easily.
pub(crate) const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// One entry of `errors[]` in a 400 answer (`code` from the documented set: required,
/// invalid_type, out_of_range, invalid_format, too_long).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
    pub code: &'static str,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            code,
        }
    }
}

/// A JSON error answer: `{"message": …}` plus optional extra fields and headers.
/// Boxed so `Result<_, ApiError>` stays small on every handler's happy path.
#[derive(Debug)]
pub(crate) struct ApiError(Box<ErrorAnswer>);

#[derive(Debug)]
struct ErrorAnswer {
    status: StatusCode,
    body: Map<String, Value>,
    headers: HeaderMap,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        let mut body = Map::new();
        body.insert("message".into(), Value::String(message.into()));
        Self(Box::new(ErrorAnswer {
            status,
            body,
            headers: HeaderMap::new(),
        }))
    }

    /// 400 whose `message` repeats the first problem (the SDK shows only `message`).
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let first = errors
            .first()
            .map(|e| e.message.clone())
            .unwrap_or_else(|| "invalid request".into());
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("Validation failed: {first}"),
        )
        .with_field("errors", json!(errors))
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn with_field(mut self, key: &str, value: Value) -> Self {
        self.0.body.insert(key.into(), value);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ErrorAnswer {
            status,
            body,
            headers,
        } = *self.0;
        let mut response = (status, axum::Json(Value::Object(body))).into_response();
        response.headers_mut().extend(headers);
        response
    }
}

/// The raw request body, with read failures (e.g. over `MAX_BODY_BYTES` → 413) as `ApiError`.
pub(crate) struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        format!("Request body too large (limit {MAX_BODY_BYTES} bytes)"),
                    )
                } else {
                    ApiError::new(
                        status,
                        format!("Could not read request body: {}", rejection.body_text()),
                    )
                }
            })
    }
}

/// A JSON body parsed to a `Value` (validation happens per route, where field names are known).
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&headers, &bytes).map(JsonBody)
    }
}

/// Checks the content type and parses JSON; the single mapping of body problems to 4xx.
pub(crate) fn parse_json(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json (got {shown})"),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("Malformed JSON body: {e}")))
}
