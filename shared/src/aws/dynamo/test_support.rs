//! Test support: creating the table that `template.yaml` declares for AWS, for tests against
//! moto. Behind the `test-support` feature, so production builds do not carry it.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters as _;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use tracing::{debug, info};

use super::codec::{PK, SK, TTL};
use super::errors::sdk_error;
use crate::ports::{PortError, PortResult};

/// Creates the table (pk/sk strings, on demand) and turns on TTL for the `ttl` attribute.
/// An existing table is left as it is, so a test harness can call this on every start.
pub async fn create_table(client: &Client, name: &str) -> PortResult<()> {
    let operation = format!("create_table {name}");
    let permanent = |e| PortError::permanent(operation.clone(), e);
    let created = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(PK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(permanent)?,
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(SK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(permanent)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(PK)
                .key_type(KeyType::Hash)
                .build()
                .map_err(permanent)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(SK)
                .key_type(KeyType::Range)
                .build()
                .map_err(permanent)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            debug!(table = name, "table exists already");
            return Ok(());
        }
        Err(e) => return Err(sdk_error(&operation, e)),
    }
    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(Duration::from_secs(120))
        .await
        .map_err(|e| PortError::new(operation.clone(), e))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name(TTL)
                .build()
                .map_err(permanent)?,
        )
        .send()
        .await
        .map_err(|e| sdk_error(&operation, e))?;
    info!(table = name, "table created");
    Ok(())
}
