//! Smoke tests proving the harness: moto answers S3, SQS, DynamoDB and SNS calls through the real AWS SDK.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use aws_sdk_s3::primitives::ByteStream;
use integration_tests::{
    SdkResultExt as _, aws_config, dynamodb, fresh_bucket, fresh_queue, fresh_topic, receive, s3,
    sns, sqs, subscribe_queue, unique_name,
};

#[tokio::test]
async fn object_put_in_a_fresh_bucket_reads_back_identically() -> anyhow::Result<()> {
    let s3 = s3(&aws_config().await);
    let bucket = fresh_bucket(&s3, "smoke").await?;
    let body = b"id,title\n1,hello world\n".to_vec();

    s3.put_object()
        .bucket(&bucket)
        .key("in/data set.csv")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .sdk_context("put object")?;
    let got = s3
        .get_object()
        .bucket(&bucket)
        .key("in/data set.csv")
        .send()
        .await
        .sdk_context("get object")?;

    assert_eq!(got.body.collect().await?.into_bytes().as_ref(), body);
    Ok(())
}

#[tokio::test]
async fn message_sent_to_a_fresh_queue_is_received() -> anyhow::Result<()> {
    let sqs = sqs(&aws_config().await);
    let queue = fresh_queue(&sqs, "smoke").await?;

    sqs.send_message()
        .queue_url(&queue)
        .message_body(r#"{"job":"j-1"}"#)
        .send()
        .await
        .sdk_context("send message")?;
    let messages = receive(&sqs, &queue, 10, 1).await?;

    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body(), Some(r#"{"job":"j-1"}"#));
    Ok(())
}

#[tokio::test]
async fn conditional_put_fails_the_second_time() -> anyhow::Result<()> {
    let ddb = dynamodb(&aws_config().await);
    let table = unique_name("smoke");
    ddb.create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()?,
        )
        .send()
        .await
        .sdk_context("create table")?;
    let put_once = || {
        ddb.put_item()
            .table_name(&table)
            .item("pk", AttributeValue::S("job#1".into()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
    };

    put_once().await.sdk_context("first put")?;
    let second = put_once().await;

    let err = second.err().map(|e| e.into_service_error());
    assert!(
        err.as_ref()
            .is_some_and(|e| e.is_conditional_check_failed_exception()),
        "expected ConditionalCheckFailedException, got {err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn message_published_to_a_topic_reaches_a_subscribed_queue() -> anyhow::Result<()> {
    let cfg = aws_config().await;
    let (sns, sqs) = (sns(&cfg), sqs(&cfg));
    let topic = fresh_topic(&sns, "smoke").await?;
    let queue = fresh_queue(&sqs, "smoke").await?;
    subscribe_queue(&sns, &sqs, &topic, &queue).await?;

    let published = sns
        .publish()
        .topic_arn(&topic)
        .subject("batch alert")
        .message("failure rate 7% over threshold 5%")
        .send()
        .await
        .sdk_context("publish")?;
    let messages = receive(&sqs, &queue, 10, 2).await?;

    assert!(published.message_id().is_some());
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].body(),
        Some("failure rate 7% over threshold 5%")
    );
    Ok(())
}
