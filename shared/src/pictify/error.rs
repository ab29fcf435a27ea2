//! `PictifyError`: every way a Pictify call can fail, classified so callers can branch on it.
//!
//! Mapping follows the official SDK (errors.py): 401 → `Unauthorized`, 402 (or 429 with
//! `code == "quota_exceeded"`) → `Quota`, 404 → `NotFound`, other 429 → `RateLimited`,
//! other 4xx → `InvalidRequest`, 5xx → `Server`. There is no unified error envelope, so the
//! message is read from `error`, then `message`, then `detail` (RFC 9457), then the joined
//! `errors`, then the status text.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One field-level problem, from a 4xx body's `errors: [{field, message, code?}]` or from our
/// own validation (codes follow the docs: `required`, `out_of_range`, `invalid_format`, `too_long`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>, code: &str) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            code: Some(code.to_string()),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PictifyError {
    /// The API key is missing, unknown or revoked. Permanent until the key is fixed.
    #[error("Pictify rejected the API key (401): {message}")]
    Unauthorized { message: String },
    /// The account's render quota is used up. Stop submitting; retrying will not help.
    #[error("Pictify quota exceeded ({status}): {message}")]
    Quota { status: u16, message: String },
    /// Unknown template or batch.
    #[error("Pictify resource not found (404): {message}")]
    NotFound { message: String },
    /// The request was refused as invalid (400/422/409/other 4xx), or failed our own checks
    /// before sending (`status: None`). Permanent for this request.
    #[error("{}", describe_invalid(*.status, .message, .field_errors))]
    InvalidRequest {
        status: Option<u16>,
        message: String,
        field_errors: Vec<FieldError>,
    },
    /// Rate limited (429). Never retried by the client: the caller reschedules after `retry_after`.
    #[error("Pictify rate limit hit (429{}): {message}", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 5xx, after the client's own retries.
    #[error("Pictify server error ({status}): {message}")]
    Server { status: u16, message: String },
    /// No answer within the configured timeout. The server may still have acted on the request.
    #[error("Pictify request timed out after {}ms; the server may still have processed it", after.as_millis())]
    Timeout { after: Duration },
    /// Connection-level failure (refused, reset, TLS, DNS), or the HTTP client could not be built.
    #[error("network error talking to Pictify: {source}")]
    Network {
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx (or unexpected non-error status) whose body we could not understand.
    #[error("could not understand Pictify's answer: {message}")]
    Decode { message: String },
}

fn describe_invalid(status: Option<u16>, message: &str, field_errors: &[FieldError]) -> String {
    let head = match status {
        Some(status) => format!("Pictify rejected the request ({status}): {message}"),
        None => format!("invalid Pictify request (not sent): {message}"),
    };
    let fields: Vec<String> = field_errors.iter().map(ToString::to_string).collect();
    // Avoid repeating the field list when the message was built from it.
    if fields.is_empty() || message == fields.join("; ") {
        head
    } else {
        format!("{head} [{}]", fields.join("; "))
    }
}

impl PictifyError {
    /// Worth trying again later with the same request: rate limits, server errors, network
    /// failures and timeouts. Everything else needs a change (key, quota, payload) first.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PictifyError::RateLimited { .. }
                | PictifyError::Server { .. }
                | PictifyError::Network { .. }
                | PictifyError::Timeout { .. }
        )
    }

    /// How long the server asked us to wait (429 only).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PictifyError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status Pictify answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PictifyError::Unauthorized { .. } => Some(401),
            PictifyError::NotFound { .. } => Some(404),
            PictifyError::RateLimited { .. } => Some(429),
            PictifyError::Quota { status, .. } | PictifyError::Server { status, .. } => {
                Some(*status)
            }
            PictifyError::InvalidRequest { status, .. } => *status,
            _ => None,
        }
    }

    /// Field-level details of an `InvalidRequest` (empty otherwise).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            PictifyError::InvalidRequest { field_errors, .. } => field_errors,
            _ => &[],
        }
    }

    pub(crate) fn invalid(field_errors: Vec<FieldError>) -> Self {
        let message = field_errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        PictifyError::InvalidRequest {
            status: None,
            message,
            field_errors,
        }
    }
}

/// Longest server message we keep: an HTML error page must not flood logs.
const MAX_MESSAGE_CHARS: usize = 500;

/// Classifies a non-2xx answer. `retry_after_header` is the raw `Retry-After` value.
pub(crate) fn from_response(
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> PictifyError {
    let json = serde_json::from_slice::<Value>(body).ok();
    let object = json.as_ref().and_then(Value::as_object);
    let field_errors = object.map(field_errors_of).unwrap_or_default();
    let message = object
        .and_then(|o| message_of(o, &field_errors))
        .or_else(|| text_message(body, json.is_some()))
        .unwrap_or_else(|| status_text(status));
    let message = truncate(message);
    let code = object.and_then(|o| o.get("code")).and_then(Value::as_str);

    match status {
        401 => PictifyError::Unauthorized { message },
        402 => PictifyError::Quota { status, message },
        404 => PictifyError::NotFound { message },
        429 if code == Some("quota_exceeded") => PictifyError::Quota { status, message },
        429 => {
            let retry_after = retry_after_header
                .and_then(parse_seconds)
                .or_else(|| object.and_then(retry_after_of_body));
            PictifyError::RateLimited {
                retry_after,
                message,
            }
        }
        400..=499 => PictifyError::InvalidRequest {
            status: Some(status),
            message,
            field_errors,
        },
        500..=599 => PictifyError::Server { status, message },
        _ => PictifyError::Decode {
            message: format!("unexpected HTTP status {status}: {message}"),
        },
    }
}

fn message_of(body: &Map<String, Value>, field_errors: &[FieldError]) -> Option<String> {
    let non_empty_str = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_string)
    };
    non_empty_str("error")
        .or_else(|| non_empty_str("message"))
        .or_else(|| non_empty_str("detail"))
        .or_else(|| {
            let strings: Vec<&str> = body
                .get("errors")?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            (!strings.is_empty()).then(|| strings.join("; "))
        })
        .or_else(|| {
            (!field_errors.is_empty()).then(|| {
                field_errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
}

fn field_errors_of(body: &Map<String, Value>) -> Vec<FieldError> {
    let Some(items) = body.get("errors").and_then(Value::as_array) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let field = item.get("field")?.as_str()?;
            let message = item.get("message")?.as_str()?;
            let code = item.get("code").and_then(Value::as_str).map(str::to_string);
            Some(FieldError {
                field: field.to_string(),
                message: message.to_string(),
                code,
            })
        })
        .collect()
}

/// A non-JSON body (proxy error page, plain text) is still the best message we have.
fn text_message(body: &[u8], was_json: bool) -> Option<String> {
    if was_json {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn status_text(status: u16) -> String {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(|| format!("HTTP {status}"), str::to_string)
}

fn truncate(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut short: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    short.push('…');
    short
}

/// `Retry-After` in delta-seconds (the HTTP-date form is not used by Pictify and is ignored).
fn parse_seconds(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    duration_from_secs(seconds)
}

fn retry_after_of_body(body: &Map<String, Value>) -> Option<Duration> {
    ["retry_after", "retryAfter"]
        .iter()
        .find_map(|key| match body.get(*key)? {
            Value::Number(n) => duration_from_secs(n.as_f64()?),
            Value::String(s) => parse_seconds(s),
            _ => None,
        })
}

fn duration_from_secs(seconds: f64) -> Option<Duration> {
    (0.0..1e9)
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> PictifyError {
        from_response(status, None, body.as_bytes())
    }

    fn message(err: &PictifyError) -> String {
        err.to_string()
    }

    #[test]
    fn statuses_map_like_the_sdk() {
        assert!(matches!(
            classify(401, r#"{"message":"Invalid Request"}"#),
            PictifyError::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(402, r#"{"message":"Quota exceeded"}"#),
            PictifyError::Quota { status: 402, .. }
        ));
        assert!(matches!(
            classify(404, r#"{"message":"Batch not found"}"#),
            PictifyError::NotFound { .. }
        ));
        assert!(matches!(
            classify(429, r#"{"code":"quota_exceeded","message":"Plan limit"}"#),
            PictifyError::Quota { status: 429, .. }
        ));
        assert!(matches!(
            classify(429, "{}"),
            PictifyError::RateLimited { .. }
        ));
        for status in [400, 403, 409, 422] {
            assert!(
                matches!(classify(status, "{}"), PictifyError::InvalidRequest { status: Some(s), .. } if s == status),
                "{status}"
            );
        }
        assert!(matches!(
            classify(503, ""),
            PictifyError::Server { status: 503, .. }
        ));
        assert!(matches!(classify(304, ""), PictifyError::Decode { .. }));
    }

    #[test]
    fn message_precedence_is_error_message_detail_errors_status_text() {
        let cases = [
            (r#"{"error":"E","message":"M","detail":"D"}"#, "E"),
            (r#"{"message":"M","detail":"D"}"#, "M"),
            (r#"{"title":"Bad","detail":"D"}"#, "D"),
            (
                r#"{"errors":["first fix","second fix"]}"#,
                "first fix; second fix",
            ),
            (
                r#"{"errors":[{"field":"quality","message":"must be <= 1"}]}"#,
                "quality: must be <= 1",
            ),
            ("{}", "Unprocessable Entity"),
            ("upstream exploded", "upstream exploded"),
        ];
        for (body, expected) in cases {
            let err = classify(422, body);
            let PictifyError::InvalidRequest { message, .. } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(message, expected, "body {body}");
        }
    }

    #[test]
    fn field_errors_are_kept_with_their_codes() {
        let err = classify(
            400,
            r#"{"message":"Validation failed","errors":[{"field":"variableSets","message":"max 100","code":"too_long"},{"field":"layout","message":"bad"}]}"#,
        );
        assert_eq!(
            err.field_errors(),
            [
                FieldError::new("variableSets", "max 100", "too_long"),
                FieldError {
                    field: "layout".into(),
                    message: "bad".into(),
                    code: None
                }
            ]
        );
        let shown = message(&err);
        assert!(
            shown.contains("400")
                && shown.contains("Validation failed")
                && shown.contains("variableSets: max 100"),
            "{shown}"
        );
    }

    #[test]
    fn retry_after_prefers_header_then_snake_then_camel_body_key() {
        let retry = |header: Option<&str>, body: &str| {
            from_response(429, header, body.as_bytes()).retry_after()
        };
        assert_eq!(
            retry(Some("7"), r#"{"retry_after":3}"#),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry(None, r#"{"retry_after":3}"#),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry(None, r#"{"retryAfter":45}"#),
            Some(Duration::from_secs(45))
        );
        assert_eq!(
            retry(
                Some("Wed, 21 Oct 2026 07:28:00 GMT"),
                r#"{"retryAfter":"2"}"#
            ),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry(Some("-1"), "{}"), None);
        assert_eq!(retry(None, "{}"), None);
    }

    #[test]
    fn display_includes_status_and_server_message() {
        assert_eq!(
            message(&classify(503, r#"{"message":"down"}"#)),
            "Pictify server error (503): down"
        );
        let limited = from_response(429, Some("5"), br#"{"message":"slow down"}"#);
        assert_eq!(
            message(&limited),
            "Pictify rate limit hit (429, retry after 5s): slow down"
        );
    }

    #[test]
    fn long_messages_are_truncated() {
        let body = "x".repeat(5_000);
        let PictifyError::Server { message, .. } = classify(502, &body) else {
            panic!()
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retryable_kinds() {
        assert!(classify(429, "{}").is_retryable());
        assert!(classify(500, "{}").is_retryable());
        assert!(
            PictifyError::Timeout {
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(!classify(400, "{}").is_retryable());
        assert!(!classify(402, "{}").is_retryable());
        assert!(!classify(401, "{}").is_retryable());
    }
}
