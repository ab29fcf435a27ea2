//! Client logic against a scripted local HTTP server: request shape, status mapping, retries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use backon::BackoffBuilder as _;
use serde_json::json;

use super::*;
use crate::pictify::wire::{BatchStatus, Format};

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: String,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
}

fn reply(status: u16, body: serde_json::Value) -> Reply {
    Reply {
        status,
        body: body.to_string(),
        headers: Vec::new(),
        delay: Duration::ZERO,
    }
}

impl Reply {
    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: serde_json::Value,
}

/// Plays `script` in order, then repeats its last entry; records every request.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn play(State(server): State<Scripted>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, usize::MAX).await.unwrap();
    server.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    });
    let next = {
        let mut script = server.script.lock().unwrap();
        if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script[0].clone()
        }
    };
    tokio::time::sleep(next.delay).await;
    let mut response = Response::builder().status(StatusCode::from_u16(next.status).unwrap());
    for (name, value) in next.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(next.body)).unwrap()
}

async fn serve(script: Vec<Reply>) -> (PictifyClient, Scripted) {
    let server = Scripted {
        script: Arc::new(Mutex::new(script.into())),
        seen: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(play).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (client_for(addr), server)
}

fn client_for(addr: SocketAddr) -> PictifyClient {
    let mut config =
        PictifyConfig::new(Secret::new("pk_test_unit")).with_base_url(format!("http://{addr}/"));
    config.timeout = Duration::from_millis(300);
    config.max_retries = 2;
    config.backoff_base = Duration::from_millis(5);
    PictifyClient::new(config).unwrap()
}

fn batch(sets: usize) -> BatchRenderRequest {
    let set = json!({"title": "Hello"}).as_object().cloned().unwrap();
    BatchRenderRequest {
        variable_sets: vec![set; sets],
        format: Some(Format::Webp),
        quality: None,
        concurrency: Some(2),
        layout: None,
        layouts: None,
    }
}

fn accepted() -> Reply {
    reply(
        202,
        json!({"batchId": "batch_1", "status": "pending", "totalItems": 1, "message": "Batch job queued"}),
    )
}

const SLOW: Duration = Duration::from_millis(1_000);

#[tokio::test]
async fn render_batch_sends_the_documented_request() {
    let (client, server) = serve(vec![accepted()]).await;
    let accepted = client
        .render_batch("tmpl/a b", &batch(1), "job-1:0")
        .await
        .unwrap();
    assert_eq!(accepted.batch_id, "batch_1");
    assert_eq!(accepted.status, Some(BatchStatus::Pending));
    let [seen] = server.requests().try_into().unwrap();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/templates/tmpl%2Fa%20b/batch-render")
    );
    assert_eq!(seen.headers["authorization"], "Bearer pk_test_unit");
    assert_eq!(seen.headers["idempotency-key"], "job-1:0");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(
        seen.body,
        json!({"variableSets": [{"title": "Hello"}], "format": "webp", "concurrency": 2})
    );
}

#[tokio::test]
async fn poll_cancel_and_subscription_calls_use_their_paths() {
    let results = json!({"batchId": "b 1", "status": "processing", "progress": 50, "totalItems": 2, "completedItems": 1,
        "failedItems": 0, "results": [{"index": 0, "success": true, "variables": ["title"]}], "errors": []});
    let (client, server) = serve(vec![
        reply(200, results),
        reply(200, json!({"batchId": "b 1", "status": "cancelled", "message": "Batch cancelled"})),
        reply(201, json!({"subscription": {"uid": "wh_1", "event": "render.completed", "targetUrl": "http://x/", "secret": "whsec_1"}})),
        reply(200, json!({"subscriptions": [{"uid": "wh_1", "event": "render.completed", "targetUrl": "http://x/"}],
            "pagination": {"page": 1, "limit": 100, "total": 1, "totalPages": 1, "hasNext": false, "hasPrev": false}})),
        Reply { status: 204, body: String::new(), headers: Vec::new(), delay: Duration::ZERO },
    ])
    .await;
    assert_eq!(
        client
            .get_batch_results("b 1")
            .await
            .unwrap()
            .completed_items,
        1
    );
    assert_eq!(
        client.cancel_batch("b 1").await.unwrap().status,
        BatchStatus::Cancelled
    );
    let create = CreateSubscription {
        event: "render.completed".into(),
        target_url: "http://x/".into(),
        platform: None,
        filters: None,
    };
    assert_eq!(
        client
            .create_subscription(&create)
            .await
            .unwrap()
            .secret
            .as_deref(),
        Some("whsec_1")
    );
    assert_eq!(client.list_subscriptions().await.unwrap().len(), 1);
    client.delete_subscription("wh_1").await.unwrap();
    let calls: Vec<String> = server
        .requests()
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert_eq!(
        calls,
        [
            "GET /templates/batch/b%201/results",
            "POST /templates/batch/b%201/cancel",
            "POST /webhook-subscriptions",
            "GET /webhook-subscriptions?page=1&limit=100",
            "DELETE /webhook-subscriptions/wh_1",
        ]
    );
}

#[tokio::test]
async fn list_subscriptions_follows_pages() {
    let page = |uid: &str, has_next: bool| {
        reply(
            200,
            json!({"subscriptions": [{"uid": uid, "event": "render.completed", "targetUrl": "http://x/"}],
            "pagination": {"page": 1, "limit": 1, "total": 2, "totalPages": 2, "hasNext": has_next}}),
        )
    };
    let (client, server) = serve(vec![page("wh_1", true), page("wh_2", false)]).await;
    let uids: Vec<String> = client
        .list_subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.uid)
        .collect();
    assert_eq!(uids, ["wh_1", "wh_2"]);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn invalid_batch_is_refused_without_a_call() {
    let (client, server) = serve(vec![accepted()]).await;
    let request = BatchRenderRequest {
        quality: Some(5.0),
        ..batch(101)
    };
    let error = client
        .render_batch("tmpl_x", &request, "k")
        .await
        .unwrap_err();
    let fields: Vec<&str> = error
        .field_errors()
        .iter()
        .map(|e| e.field.as_str())
        .collect();
    assert_eq!(fields, ["variableSets", "quality"]);
    assert!(matches!(
        error,
        PictifyError::InvalidRequest { status: None, .. }
    ));
    let no_key = client
        .render_batch("tmpl_x", &batch(1), "")
        .await
        .unwrap_err();
    assert_eq!(no_key.field_errors()[0].field, "idempotencyKey");
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_then_surfaced() {
    let (client, server) = serve(vec![reply(503, json!({"message": "overloaded"}))]).await;
    let error = client.get_batch_results("b1").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::Server { status: 503, ref message } if message == "overloaded")
    );
    assert_eq!(server.requests().len(), 3, "first try + max_retries");
}

#[tokio::test]
async fn a_retried_submit_reuses_its_idempotency_key() {
    let (client, server) = serve(vec![reply(500, json!({})), accepted()]).await;
    client
        .render_batch("tmpl_x", &batch(1), "chunk-7")
        .await
        .unwrap();
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys, ["chunk-7", "chunk-7"]);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for (status, body) in [
        (400, json!({})),
        (401, json!({})),
        (402, json!({})),
        (404, json!({})),
        (409, json!({})),
        (422, json!({})),
        (429, json!({})),
    ] {
        let (client, server) = serve(vec![reply(status, body)]).await;
        let error = client
            .render_batch("tmpl_x", &batch(1), "k")
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(status));
        assert_eq!(server.requests().len(), 1, "status {status}");
    }
}

#[tokio::test]
async fn rate_limit_carries_retry_after_from_the_header() {
    let (client, _server) = serve(vec![
        reply(429, json!({"message": "slow down", "retry_after": 9})).header("retry-after", "7"),
    ])
    .await;
    let error = client
        .render_batch("tmpl_x", &batch(1), "k")
        .await
        .unwrap_err();
    assert!(matches!(error, PictifyError::RateLimited { .. }));
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(error.is_retryable());
}

#[tokio::test]
async fn timed_out_submit_is_retried_with_the_same_key() {
    let (client, server) = serve(vec![accepted().after(SLOW), accepted()]).await;
    let accepted = client
        .render_batch("tmpl_x", &batch(1), "chunk-9")
        .await
        .unwrap();
    assert_eq!(accepted.batch_id, "batch_1");
    let keys: Vec<_> = server
        .requests()
        .iter()
        .map(|s| s.headers["idempotency-key"].clone())
        .collect();
    assert_eq!(keys, ["chunk-9", "chunk-9"]);
}

#[tokio::test]
async fn timed_out_post_without_key_is_not_retried() {
    let (client, server) = serve(vec![reply(200, json!({})).after(SLOW)]).await;
    let error = client.cancel_batch("b1").await.unwrap_err();
    assert!(
        matches!(error, PictifyError::Timeout { after } if after == Duration::from_millis(300))
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn timed_out_get_is_retried() {
    let results = json!({"batchId": "b1", "status": "completed"});
    let (client, server) = serve(vec![
        reply(200, results.clone()).after(SLOW),
        reply(200, results),
    ])
    .await;
    assert_eq!(
        client.get_batch_results("b1").await.unwrap().status,
        BatchStatus::Completed
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn refused_connection_is_a_retried_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let create = CreateSubscription {
        event: "render.completed".into(),
        target_url: "http://x/".into(),
        platform: None,
        filters: None,
    };
    let started = std::time::Instant::now();
    let error = client_for(addr)
        .create_subscription(&create)
        .await
        .unwrap_err();
    assert!(matches!(error, PictifyError::Network { .. }), "{error:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(15),
        "backoff 5 ms + 10 ms was slept"
    );
}

#[tokio::test]
async fn unreadable_success_body_is_a_decode_error() {
    let (client, _server) = serve(vec![Reply {
        status: 202,
        body: "<html>".into(),
        headers: Vec::new(),
        delay: Duration::ZERO,
    }])
    .await;
    let error = client
        .render_batch("tmpl_x", &batch(1), "k")
        .await
        .unwrap_err();
    assert!(matches!(error, PictifyError::Decode { .. }), "{error:?}");
}

#[test]
fn backoff_doubles_from_the_base_plus_jitter_for_max_retries() {
    let client = client_for(SocketAddr::from(([127, 0, 0, 1], 9)));
    let delays: Vec<Duration> = client.backoff().build().collect();
    assert_eq!(delays.len(), 2, "max_retries");
    for (delay, base_ms) in delays.into_iter().zip([5.0, 10.0]) {
        // backon computes in f32: allow a microsecond below the exact base.
        let ms = delay.as_secs_f64() * 1_000.0;
        assert!(
            ms > base_ms - 0.001 && ms < 2.0 * base_ms,
            "{ms} ms for base {base_ms} ms"
        );
    }
}

#[test]
fn base_url_must_be_absolute_http() {
    for url in ["api.pictify.io", "ftp://x", ""] {
        let config = PictifyConfig::new(Secret::new("k")).with_base_url(url);
        assert!(
            matches!(
                PictifyClient::new(config),
                Err(PictifyError::InvalidRequest { status: None, .. })
            ),
            "{url}"
        );
    }
}

#[test]
fn debug_output_never_shows_the_api_key() {
    let client = PictifyClient::new(PictifyConfig::new(Secret::new("pk_live_hidden"))).unwrap();
    assert!(!format!("{client:?}").contains("pk_live_hidden"));
}
