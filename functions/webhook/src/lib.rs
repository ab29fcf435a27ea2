//! webhook handler: HTTP request (Function URL / API Gateway v2) → `Pipeline::handle_webhook`.

use lambda_http::{Body, Error, Request, Response};
use shared::pictify::wire::headers;
use shared::pipeline::{Pipeline, WebhookRequest};

pub async fn function_handler(
    pipeline: &Pipeline,
    request: Request,
) -> Result<Response<Body>, Error> {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    // The signature covers the exact bytes Pictify sent: never re-serialise before verifying.
    let body: &[u8] = match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    };
    let reply = pipeline
        .handle_webhook(WebhookRequest {
            signature: header(headers::SIGNATURE),
            delivery_id: header(headers::DELIVERY_ID),
            body,
        })
        .await;
    Ok(Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(Body::Text(reply.body))?)
}
