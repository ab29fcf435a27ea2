//! webhook Lambda entry point (stub until issue B wires the pipeline step).
use lambda_http::{Body, Error, Request, Response, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_http::tracing::init_default_subscriber();
    run(service_fn(|_req: Request| async move {
        Ok::<_, Error>(Response::builder().status(200).body(Body::Empty)?)
    }))
    .await
}
