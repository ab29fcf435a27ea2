//! ingest Lambda entry point (stub until issue B wires the pipeline step).
use lambda_runtime::{Error, LambdaEvent, run, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    run(service_fn(|event: LambdaEvent<Value>| async move {
        tracing::info!(request_id = %event.context.request_id, "ingest stub invoked");
        Ok::<Value, Error>(Value::Null)
    }))
    .await
}
