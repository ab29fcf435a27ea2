//! Hostile and odd webhook deliveries, through the real webhook handler: each case asserts the
//! answer and that nothing changed (or, for the accepted oddities, only what should).

use integration_tests::stack::{Stack, StackOptions};
use serde_json::json;
use shared::signing::{compute_v1, signature_header};

fn render_completed() -> String {
    json!({
        "event": "render.completed",
        "timestamp": "2026-11-28T12:00:00Z",
        "data": { "url": "http://127.0.0.1/images/x.png", "templateId": "tmpl_blog_card", "variables": { "title": "Hostile" } }
    })
    .to_string()
}

async fn deliver(stack: &Stack, signature: Option<String>, body: &str) -> anyhow::Result<u16> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri("/")
        .header("content-type", "application/json");
    if let Some(signature) = signature {
        request = request.header("x-pictify-signature", signature);
    }
    let request = request.body(lambda_http::Body::Text(body.to_owned()))?;
    let response = webhook::function_handler(&stack.pipeline, request)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(response.status().as_u16())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn refused_deliveries_change_nothing() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let body = render_completed();
    let secret = stack.webhook_secret.clone();
    // Past the webhook's limit (Lambda's 6 MiB request cap): no allowed row makes a delivery
    // this large (`settings::largest_render_completed`), so it is not Pictify's.
    let oversized = format!(
        r#"{{"event":"render.completed","data":{{"url":"u","pad":"{}"}}}}"#,
        "x".repeat(stack.pipeline.settings.webhook_max_body_bytes)
    );
    let cases: Vec<(&str, Option<String>, String, u16)> = vec![
        (
            "forged signature",
            Some(signature_header("whsec_forged", now(), body.as_bytes())),
            body.clone(),
            401,
        ),
        (
            "tampered body",
            Some(signature_header(&secret, now(), body.as_bytes())),
            body.replace("Hostile", "Friendly"),
            401,
        ),
        (
            "stale timestamp",
            Some(signature_header(&secret, now() - 360, body.as_bytes())),
            body.clone(),
            401,
        ),
        (
            "future timestamp",
            Some(signature_header(&secret, now() + 360, body.as_bytes())),
            body.clone(),
            401,
        ),
        ("missing header", None, body.clone(), 401),
        (
            "malformed header",
            Some(format!(
                "v1={}",
                compute_v1(&secret, now(), body.as_bytes())
            )),
            body.clone(),
            401,
        ),
        (
            "garbage header",
            Some("t=abc,v1=zz".into()),
            body.clone(),
            401,
        ),
        (
            "oversized body",
            Some(signature_header(&secret, now(), oversized.as_bytes())),
            oversized.clone(),
            413,
        ),
        (
            "invalid JSON",
            Some(signature_header(&secret, now(), b"{not json")),
            "{not json".into(),
            400,
        ),
        (
            "valid JSON of the wrong shape",
            Some(signature_header(
                &secret,
                now(),
                br#"{"event":"render.completed","data":{"templateId":1}}"#,
            )),
            r#"{"event":"render.completed","data":{"templateId":1}}"#.into(),
            400,
        ),
    ];
    let before = stack.table_snapshot().await?;
    for (name, signature, body, expected) in cases {
        assert_eq!(deliver(&stack, signature, &body).await?, expected, "{name}");
        assert_eq!(
            stack.table_snapshot().await?,
            before,
            "{name} changed state"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_replayed_valid_delivery_is_harmless() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let body = render_completed();
    let signature = signature_header(&stack.webhook_secret, now(), body.as_bytes());
    assert_eq!(deliver(&stack, Some(signature.clone()), &body).await?, 200);
    let after_first = stack.table_snapshot().await?;
    assert_eq!(deliver(&stack, Some(signature), &body).await?, 200);
    assert_eq!(stack.table_snapshot().await?, after_first);
    Ok(())
}

#[tokio::test]
async fn an_unknown_event_type_is_acknowledged_and_ignored() -> anyhow::Result<()> {
    let stack = Stack::start(StackOptions::default()).await?;
    let body = json!({ "event": "binding.updated", "data": { "bindingId": "b1" } }).to_string();
    let before = stack.table_snapshot().await?;
    assert_eq!(
        deliver(
            &stack,
            Some(signature_header(
                &stack.webhook_secret,
                now(),
                body.as_bytes()
            )),
            &body
        )
        .await?,
        200
    );
    assert_eq!(stack.table_snapshot().await?, before);
    Ok(())
}

#[tokio::test]
async fn an_event_for_an_unknown_batch_is_acknowledged_and_kept_as_an_orphan() -> anyhow::Result<()>
{
    let stack = Stack::start(StackOptions::default()).await?;
    let body = json!({ "event": "batch.completed", "data": { "batchId": "batch_nobody", "status": "completed", "totalCount": 1, "completedCount": 1, "failedCount": 0 } }).to_string();
    assert_eq!(
        deliver(
            &stack,
            Some(signature_header(
                &stack.webhook_secret,
                now(),
                body.as_bytes()
            )),
            &body
        )
        .await?,
        200
    );
    let items = stack.table_snapshot().await?;
    assert_eq!(items.len(), 1);
    assert!(
        items[0].contains("ORPHAN#batch.completed#batch_nobody"),
        "{items:?}"
    );
    Ok(())
}
