//! webhook Lambda: composition root. Clients and configuration are built once per cold start.
use lambda_http::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    let wired = shared::wiring::pipeline_from_env(shared::wiring::Needs::WEBHOOK).await?;
    let pipeline = &wired.pipeline;
    run(service_fn(|request| {
        webhook::function_handler(pipeline, request)
    }))
    .await
}
