//! The stack as AWS enforces it: every function runs under its own policy from template.yaml
//! (expanded by aws-sam-translator, `scripts/lib/iam_harness.py`) on a moto that enforces IAM,
//! and the operator's commands run as the built CLI under `OperatorPolicy`. Any AccessDenied
//! fails the test: the step that met it, or at the end the refusals moto logged (a denied call
//! whose error a function only logs, such as an alert it could not publish).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use integration_tests::datasets::{blog_csv, job_id_of};
use integration_tests::iam::Principal;
use integration_tests::stack::{Stack, StackOptions};
use integration_tests::{receive, subscribe_queue};
use pictify_emulator::Faults;
use shared::domain::Job;
use shared::ports::ChunkLedger as _;

/// Runs the CLI as the operator, with the functions' settings (what docs/deploy.md tells an
/// operator to export) and the operator's own credentials. Off the runtime's thread: the
/// emulator it may call runs on that runtime.
async fn operator(stack: &Stack, args: &[&str]) -> Output {
    let principals = stack.principals.as_ref().unwrap();
    let environment = &principals.submitter.environment;
    let mut command = Command::new(env!("CARGO_BIN_EXE_pictify-batch"));
    command.args(args);
    for name in [
        "TABLE_NAME",
        "QUEUE_URL",
        "STEP_QUEUE_URL",
        "SECRET_ARN",
        "ALERT_TOPIC_ARN",
        "ALERT_SECRET_ARN",
        "PICTIFY_BASE_URL",
    ] {
        command.env(name, &environment[name]);
    }
    command.env("DEAD_LETTER_QUEUE_URL", &stack.dlq_url);
    let Principal {
        access_key_id,
        secret_access_key,
        ..
    } = &principals.operator;
    command
        .env("AWS_ENDPOINT_URL", integration_tests::iam::endpoint())
        .env("AWS_ACCESS_KEY_ID", access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret_access_key)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("PICTIFY_API_KEY")
        .env_remove("WEBHOOK_SECRETS")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Drives the functions until the job is terminal: the queues into ingest and the submitter, and,
/// when they are empty, a reconciler pass (deliveries are dropped on purpose).
async fn run_until_done(stack: &Stack, job: &shared::domain::JobId) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let current = stack.job(job).await.unwrap();
        if current.status.is_terminal() {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done: {current:#?}"
        );
        if stack.drain_once().await.unwrap() == 0 {
            stack.reconcile(Duration::ZERO).await.unwrap();
        }
    }
}

#[tokio::test]
async fn each_function_under_its_own_template_policy_renders_a_faulty_job_and_the_operator_repairs_it()
 {
    let faults = Faults {
        item_failures: BTreeMap::from([
            ("IMAGE_FETCH_FAILED".into(), 0.10),
            ("INVALID_VARIABLE".into(), 0.03),
        ]),
        webhook_duplicate_rate: 0.2,
        webhook_drop_rate: 0.1,
        webhook_reorder_rate: 0.1,
        // Batches finished before their 202 came back: the submitter applies them itself.
        submit_late_answer_rate: 0.3,
        late_answer_delay_ms: 1_500,
        submit_429_rate: 0.1,
        ..Faults::default()
    };
    let stack = Stack::start(StackOptions {
        faults,
        seed: 21,
        iam: true,
        // One automatic retry (by the webhook), so retryable failures are left for the operator.
        template_parameters: vec![("MaxAttempts", "2".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let principals = stack.principals.clone().unwrap();

    // The wiring Lambda would give each function, as template.yaml declares it.
    let queue_arn = |url: &str| {
        let sqs = stack.sqs.clone();
        let url = url.to_owned();
        async move { integration_tests::queue_arn(&sqs, &url).await.unwrap() }
    };
    let ingest_source = &principals.ingest.event_sources;
    assert_eq!(ingest_source.len(), 1);
    assert_eq!(
        ingest_source[0].queue_arn,
        queue_arn(&stack.step_queue_url).await
    );
    assert_eq!(
        ingest_source[0].batch_size, 1,
        "the harness drains steps one by one"
    );
    let submitter_source = &principals.submitter.event_sources;
    assert_eq!(submitter_source.len(), 1);
    assert_eq!(
        submitter_source[0].queue_arn,
        queue_arn(&stack.queue_url).await
    );
    assert_eq!(
        submitter_source[0].batch_size, 10,
        "the harness drains 10 at a time"
    );
    assert!(
        ingest_source[0].reports_batch_item_failures
            && submitter_source[0].reports_batch_item_failures
    );
    assert_eq!(principals.submitter.environment["TABLE_NAME"], stack.table);
    assert_eq!(
        principals.submitter.environment["QUEUE_URL"],
        stack.queue_url
    );
    assert_eq!(
        principals.ingest.environment["STEP_QUEUE_URL"],
        stack.step_queue_url
    );
    assert!(
        !principals.ingest.environment.contains_key("SECRET_ARN"),
        "ingest never calls Pictify: it is not told where the API key is"
    );

    // Every alert a function raises must reach the topic: a publish it may not make would only
    // be logged.
    let sns = aws_sdk_sns::Client::new(&integration_tests::iam::admin_config().await);
    let inbox = integration_tests::fresh_queue(&stack.sqs, "inbox")
        .await
        .unwrap();
    subscribe_queue(&sns, &stack.sqs, &stack.topic, &inbox)
        .await
        .unwrap();

    let key = "uploads/tmpl_blog_card/iam.csv";
    stack.upload(key, blog_csv(300)).await.unwrap();
    let job = job_id_of(&stack.ingest(key).await.unwrap()).unwrap();
    let first = run_until_done(&stack, &job).await;
    let c = first.counters;
    assert_eq!((c.rows, c.in_flight()), (300, 0));
    assert_eq!(c.rows, c.rendered + c.failed + c.rejected);
    assert!(c.failed > 0, "{c:?}");
    let chunks = stack.store.chunks_of_job(&job).await.unwrap();
    assert!(
        chunks.iter().any(|chunk| chunk.key.attempt > 0),
        "the webhook retried failures in new chunks (it wrote their payloads)"
    );
    let manifest = stack
        .get_text("results/tmpl_blog_card/iam.csv.results.jsonl")
        .await
        .unwrap();
    assert_eq!(manifest.lines().count(), 300);

    // The operator: status, retry-failed (the image host is back), the repaired job, reconcile.
    stack.emulator.set_faults(Faults::default());
    let status = succeeded(&operator(&stack, &["status", job.as_str()]).await);
    assert!(status.contains(job.as_str()), "{status}");
    let retried = succeeded(&operator(&stack, &["retry-failed", job.as_str()]).await);
    assert!(retried.contains("reopened"), "{retried}");
    let again = run_until_done(&stack, &job).await;
    assert_eq!(again.reopened, 1);
    assert!(again.counters.failed < c.failed, "{:?}", again.counters);
    assert_eq!(again.counters.in_flight(), 0);
    let report = succeeded(&operator(&stack, &["reconcile"]).await);
    assert!(report.contains("\"errors\": 0"), "{report}");
    let printed = succeeded(&operator(&stack, &["results", job.as_str(), "--print"]).await);
    assert_eq!(printed.lines().count(), 301, "header + one line per row");
    let resumed = succeeded(&operator(&stack, &["resume-submissions"]).await);
    assert!(resumed.contains("were not paused"), "{resumed}");
    let secret_arn = &principals.submitter.environment["SECRET_ARN"];
    let registered = succeeded(
        &operator(
            &stack,
            &[
                "register-webhooks",
                "--url",
                &stack.webhook_url,
                "--secret-id",
                secret_arn,
            ],
        )
        .await,
    );
    assert!(registered.contains("render.completed"), "{registered}");

    // Both finishes reached the topic.
    let mut finished = 0;
    for _ in 0..10 {
        let messages = receive(&stack.sqs, &inbox, 10, 1).await.unwrap();
        if messages.is_empty() {
            break;
        }
        finished += messages
            .iter()
            .filter(|m| m.body().unwrap_or_default().contains("job_finished"))
            .count();
    }
    assert_eq!(finished, stack.alerts_of_kind("job_finished"));
    assert_eq!(finished, 2);
    // No call was refused, including those whose errors a function only logs.
    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}

/// The enforcement is real: what a role was not granted is refused.
#[tokio::test]
async fn a_function_is_refused_what_its_policy_does_not_grant() {
    let stack = Stack::start(StackOptions {
        iam: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let principals = stack.principals.clone().unwrap();
    stack
        .upload("uploads/tmpl_blog_card/private.csv", blog_csv(1))
        .await
        .unwrap();

    // Ingest may not read the Pictify key.
    let ingest = principals.ingest.config().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&ingest);
    let refused = secrets
        .get_secret_value()
        .secret_id(&principals.submitter.environment["SECRET_ARN"])
        .send()
        .await;
    assert!(refused.is_err(), "ingest read the Pictify secret");

    // The submitter may not read datasets, nor write results.
    let submitter = principals.submitter.config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&submitter)
            .force_path_style(true)
            .build(),
    );
    let read = s3
        .get_object()
        .bucket(&stack.bucket)
        .key("uploads/tmpl_blog_card/private.csv")
        .send()
        .await;
    assert!(read.is_err(), "the submitter read a dataset");
    let write = s3
        .put_object()
        .bucket(&stack.bucket)
        .key("results/forged.csv")
        .body(Vec::from(*b"x").into())
        .send()
        .await;
    assert!(write.is_err(), "the submitter wrote a result");
    let message = format!("{:?}", write.unwrap_err());
    assert!(message.contains("AccessDenied"), "{message}");
}

/// The DLQ's documented replay, as the operator: a chunk message that died (here: moved there by
/// hand, as SQS does after `MaxReceiveCount` receives) goes back to the work queue, a message that
/// is not ours stays, and the job still ends with every row once.
#[tokio::test]
async fn the_operator_replays_a_dead_chunk_and_its_rows_still_end_once() {
    let stack = Stack::start(StackOptions {
        iam: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let key = "uploads/tmpl_blog_card/dead.csv";
    stack.upload(key, blog_csv(150)).await.unwrap();
    let job = job_id_of(&stack.ingest(key).await.unwrap()).unwrap();

    // One of the two chunk messages dies; a stranger's message sits in the DLQ too.
    let out = stack
        .sqs
        .receive_message()
        .queue_url(&stack.queue_url)
        .max_number_of_messages(1)
        .send()
        .await
        .unwrap();
    let dead = out.messages.unwrap().remove(0);
    for body in [dead.body().unwrap(), "{\"not\": \"ours\"}"] {
        stack
            .sqs
            .send_message()
            .queue_url(&stack.dlq_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }
    stack
        .sqs
        .delete_message()
        .queue_url(&stack.queue_url)
        .receipt_handle(dead.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    // The other chunk renders; the job waits for the dead one.
    for _ in 0..20 {
        stack.drain_once().await.unwrap();
        if stack.job(&job).await.unwrap().counters.rendered == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!stack.job(&job).await.unwrap().status.is_terminal());

    let replay = operator(&stack, &["redrive"]).await;
    assert_eq!(replay.status.code(), Some(2), "a message was left: exit 2");
    let said = String::from_utf8_lossy(&replay.stdout);
    assert!(
        said.contains(
            "1 chunk message(s) sent back to the work queue, 0 step(s) to the step queue, 1 left"
        ),
        "{said}"
    );
    let done = run_until_done(&stack, &job).await;
    let c = done.counters;
    assert_eq!((c.rows, c.rendered, c.in_flight()), (150, 150, 0));
    assert_eq!(
        stack.dlq_depth().await.unwrap(),
        1,
        "the stranger's message stays"
    );
    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}

/// A dataset overwritten while its job runs (the bucket is versioned, as template.yaml's): the
/// first job reads on from its own version and writes its manifest under its job id; the new
/// upload is a job of its own that owns the usual manifest name. Every row of each version ends
/// once, in its own job's manifest.
#[tokio::test]
async fn a_dataset_overwritten_mid_job_leaves_both_jobs_and_manifests_whole() {
    let stack = Stack::start(StackOptions {
        iam: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let key = "uploads/tmpl_blog_card/edited.csv";
    stack.upload(key, blog_csv(150)).await.unwrap();
    let first = job_id_of(&stack.ingest(key).await.unwrap()).unwrap();
    // One chunk of the first job goes out; then the user uploads a corrected file.
    stack.drain_work_once().await.unwrap();
    let edited = String::from_utf8(blog_csv(120))
        .unwrap()
        .replace("Post", "Edited post");
    stack.upload(key, edited.into_bytes()).await.unwrap();
    let second = job_id_of(&stack.ingest(key).await.unwrap()).unwrap();
    assert_ne!(first, second, "a new version is a new job");

    let done_first = run_until_done(&stack, &first).await;
    let done_second = run_until_done(&stack, &second).await;
    assert_eq!(
        (done_first.counters.rows, done_first.counters.rendered),
        (150, 150)
    );
    assert_eq!(
        (done_second.counters.rows, done_second.counters.rendered),
        (120, 120)
    );

    let usual = stack
        .get_text("results/tmpl_blog_card/edited.csv.results.jsonl")
        .await
        .unwrap();
    assert_eq!(
        usual.lines().count(),
        120,
        "the usual name holds the newer upload's rows"
    );
    assert!(usual.lines().all(|l| l.contains("Edited post")));
    let older = stack
        .get_text(&format!(
            "results/tmpl_blog_card/edited.csv.{first}.results.jsonl"
        ))
        .await
        .unwrap();
    assert_eq!(
        older.lines().count(),
        150,
        "the older job's rows, from its own version"
    );
    assert!(!older.contains("Edited post"));
    assert_eq!(
        done_first.manifest.as_ref().map(|m| m.csv.key.clone()),
        Some(format!(
            "results/tmpl_blog_card/edited.csv.{first}.results.csv"
        ))
    );
    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}

/// The job-control commands as the operator, under `OperatorPolicy`, on a job the functions run
/// under theirs: pause, a limit, resume, then cancel (twice); the reconciler under its own
/// policy repeats the cancel for what was at Pictify.
#[tokio::test]
async fn the_operator_pauses_limits_resumes_and_cancels_a_job() {
    let stack = Stack::start(StackOptions {
        iam: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let key = "uploads/tmpl_blog_card/controlled.csv";
    stack.upload(key, blog_csv(500)).await.unwrap();
    let job = job_id_of(&stack.ingest(key).await.unwrap()).unwrap();
    let id = job.as_str();

    let paused = succeeded(&operator(&stack, &["pause", id, "--reason", "look first"]).await);
    assert!(paused.contains("paused"), "{paused}");
    while stack.drain_once().await.unwrap() > 0 {}
    assert_eq!(stack.emulator.ledger().batches_accepted.len(), 0);
    let status = succeeded(&operator(&stack, &["status", id]).await);
    assert!(status.contains("PAUSED: look first"), "{status}");

    succeeded(&operator(&stack, &["concurrency", id, "--batches", "1"]).await);
    succeeded(&operator(&stack, &["resume", id]).await);
    for _ in 0..50 {
        stack.drain_once().await.unwrap();
        if stack.job(&job).await.unwrap().counters.rendered >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cancelled = succeeded(&operator(&stack, &["cancel", id]).await);
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    let done = run_until_done(&stack, &job).await;
    let c = done.counters;
    assert_eq!(done.status, shared::domain::JobStatus::Cancelled);
    assert!(c.rendered >= 100 && c.cancelled > 0, "{c:?}");
    assert_eq!(c.terminal(), 500, "{c:?}");
    let again = succeeded(&operator(&stack, &["cancel", id]).await);
    assert!(again.contains("already cancelled"), "{again}");
    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}

/// The reconciler (under its policy) caches the template's definitions in the bucket; ingest
/// (under its own, with no Pictify key) rejects the rows they refuse, so none is billed.
#[tokio::test]
async fn ingest_rejects_what_the_cached_template_definitions_refuse() {
    let stack = Stack::start(StackOptions {
        iam: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let first = "uploads/tmpl_blog_card/first.csv";
    stack.upload(first, blog_csv(10)).await.unwrap();
    job_id_of(&stack.ingest(first).await.unwrap()).unwrap();
    let report = stack.reconcile(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(report["templatesRefreshed"], 1, "{report}");

    let mut data = String::from("title,author,publishDate\n");
    for i in 0..20 {
        let author = if i % 5 == 0 {
            String::new()
        } else {
            format!("Author {i}")
        };
        data.push_str(&format!("Post {i},{author},2026-01-{:02}\n", i + 1));
    }
    let second = "uploads/tmpl_blog_card/second.csv";
    stack.upload(second, data.into_bytes()).await.unwrap();
    let job = job_id_of(&stack.ingest(second).await.unwrap()).unwrap();
    let done = run_until_done(&stack, &job).await;
    let c = done.counters;
    assert_eq!((c.rows, c.rejected, c.rendered, c.failed), (20, 4, 16, 0));
    assert!(
        done.rejected_sample
            .iter()
            .all(|(_, reason)| reason.contains("INVALID_VARIABLE")),
        "{:?}",
        done.rejected_sample
    );
    assert_eq!(
        stack.emulator.ledger().items_failed,
        0,
        "nothing refused was sent"
    );
    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}

/// Delivery and row events under the template's policies (`DeliveryBucket`, `RowEvents`): the
/// ingest function's deliver steps copy every image to the delivery bucket and publish one event
/// per row, and a sidecar naming any other bucket is refused at ingest.
#[tokio::test]
async fn delivery_and_row_events_run_under_the_template_policies() {
    let admin = integration_tests::iam::admin_config().await;
    let s3 = aws_sdk_s3::Client::new(&admin);
    let delivered = integration_tests::fresh_bucket(&s3, "delivered")
        .await
        .unwrap();
    let stack = Stack::start(StackOptions {
        iam: true,
        template_parameters: vec![
            ("DeliveryBucket", delivered.clone()),
            ("RowEvents", "Enabled".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let environment = &stack.principals.as_ref().unwrap().ingest.environment;
    assert_eq!(environment["ROW_EVENTS_TOPIC_ARN"], stack.row_events_topic);
    assert_eq!(environment["DELIVERY_BUCKET"], delivered);
    let sns = aws_sdk_sns::Client::new(&admin);
    let subscriber = integration_tests::fresh_queue(&stack.sqs, "row-subscriber")
        .await
        .unwrap();
    subscribe_queue(&sns, &stack.sqs, &stack.row_events_topic, &subscriber)
        .await
        .unwrap();

    let key = "uploads/tmpl_blog_card/cards.csv";
    let sidecar = format!(
        r#"{{"delivery": {{"bucket": "{delivered}", "keyPattern": "{{slug(title)}}-{{row}}.{{ext}}"}}}}"#
    );
    stack
        .upload(&format!("{key}.job.json"), sidecar.into_bytes())
        .await
        .unwrap();
    stack.upload(key, blog_csv(120)).await.unwrap();
    let job = run_until_done(
        &stack,
        &job_id_of(&stack.ingest(key).await.unwrap()).unwrap(),
    )
    .await;
    assert_eq!((job.counters.rendered, job.counters.failed), (120, 0));

    let listed = s3
        .list_objects_v2()
        .bucket(&delivered)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.contents().len(), 120);
    let manifest = stack
        .get_text("results/tmpl_blog_card/cards.csv.results.jsonl")
        .await
        .unwrap();
    assert!(
        manifest
            .lines()
            .all(|l| l.contains("\"deliveredKey\":\"post-")),
        "{manifest}"
    );
    let mut events = 0;
    loop {
        let got = receive(&stack.sqs, &subscriber, 10, 1).await.unwrap();
        if got.is_empty() {
            break;
        }
        events += got.len();
        for message in got {
            stack
                .sqs
                .delete_message()
                .queue_url(&subscriber)
                .receipt_handle(message.receipt_handle().unwrap_or_default())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(events, 120);

    // Another bucket: the functions may not write there, so the job fails at ingest, saying why.
    let elsewhere = "uploads/tmpl_blog_card/elsewhere.csv";
    stack
        .upload(
            &format!("{elsewhere}.job.json"),
            br#"{"delivery": {"bucket": "not-ours", "keyPattern": "{row}.{ext}"}}"#.to_vec(),
        )
        .await
        .unwrap();
    stack.upload(elsewhere, blog_csv(3)).await.unwrap();
    let refused = stack
        .job(&job_id_of(&stack.ingest(elsewhere).await.unwrap()).unwrap())
        .await
        .unwrap();
    let error = refused.error.unwrap_or_default();
    assert!(error.contains("DeliveryBucket"), "{error}");

    let denied = integration_tests::iam::denials(&stack.stack_name);
    assert!(denied.is_empty(), "{denied:#?}");
}
