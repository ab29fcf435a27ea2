//! reconciler Lambda: composition root. Clients and configuration are built once per cold start.
use lambda_runtime::{Error, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let wired = shared::wiring::pipeline_from_env(shared::wiring::Needs::PICTIFY).await?;
    let pipeline = &wired.pipeline;
    run(service_fn(|event| {
        reconciler::function_handler(pipeline, event)
    }))
    .await
}
