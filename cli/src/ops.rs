//! Operator commands against a deployed stack (DynamoDB table + S3 bucket through the standard
//! AWS configuration; env TABLE_NAME, and QUEUE_URL for the commands that queue work:
//! `retry-failed`, `reconcile`) — or, with `--state DIR`, against a local run's state.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use shared::domain::{ChunkState, Job, JobId, JobStatus, ManifestLocation, ObjectRef};
use shared::local::{FsObjectStore, LogAlerts, MemoryQueue};
use shared::pictify::{PictifyClient, PictifyConfig};
use shared::pipeline::{Pipeline, ReopenOutcome, Selection};
use shared::ports::{JobStore, ObjectStore, SystemClock};
use shared::secret::Secret;
use shared::settings::Settings;

use crate::gallery;
use crate::run::OutDir;
use crate::sqlite_store::SqliteJobStore;
use crate::{Failure, Outcome};

#[derive(Args, Debug)]
pub struct StateArgs {
    /// Use the state of a local run (its --out directory) instead of AWS (env TABLE_NAME, BUCKET).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job id (job_…), as shown by `run`; optional with --state (the latest local job).
    pub job: Option<String>,
    #[command(flatten)]
    pub target: StateArgs,
}

#[derive(Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Print the CSV manifest instead of its location.
    #[arg(long)]
    pub print: bool,
}

pub(crate) struct Stack {
    pub store: Arc<dyn JobStore>,
    objects: Arc<dyn ObjectStore>,
    local: Option<SqliteJobStore>,
}

pub(crate) async fn connect(target: &StateArgs) -> Result<Stack, Failure> {
    if let Some(dir) = &target.state {
        let out = OutDir::new(dir.clone());
        if !out.db().exists() {
            return Err(Failure::usage(format!(
                "{} holds no local run state",
                dir.display()
            )));
        }
        let store = SqliteJobStore::open(&out.db())?;
        let objects = Arc::new(FsObjectStore::new(out.objects()));
        return Ok(Stack {
            store: Arc::new(store.clone()),
            objects,
            local: Some(store),
        });
    }
    let table = std::env::var("TABLE_NAME").map_err(|_| {
        Failure::usage("TABLE_NAME is not set (or pass --state DIR for a local run)")
    })?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    Ok(Stack {
        store: Arc::new(shared::aws::dynamo::DynamoJobStore::new(dynamo, table)),
        objects: Arc::new(shared::aws::s3::S3ObjectStore::new(s3)),
        local: None,
    })
}

pub(crate) async fn load_job(stack: &Stack, raw: Option<&str>) -> Result<Job, Failure> {
    let Some(raw) = raw else {
        let local = stack
            .local
            .as_ref()
            .ok_or_else(|| Failure::usage("give the job id (job_…)"))?;
        let jobs = local.jobs().await.context("listing the jobs")?;
        return jobs
            .into_iter()
            .last()
            .ok_or_else(|| Failure::usage("the local state holds no job"));
    };
    let id = JobId::parse(raw).map_err(Failure::usage)?;
    stack
        .store
        .job(&id)
        .await
        .context("reading the job")?
        .ok_or_else(|| Failure::usage(format!("no job {id}")))
}

pub async fn status(args: JobArgs) -> Result<Outcome, Failure> {
    let stack = connect(&args.target).await?;
    let job = load_job(&stack, args.job.as_deref()).await?;
    let chunks = stack
        .store
        .chunks_of_job(&job.id)
        .await
        .context("reading the chunks")?;
    let c = job.counters;
    println!(
        "job {} {} (template {}, source {})",
        job.id,
        job.status.as_str(),
        job.spec.template_id,
        job.source
    );
    if let Some(error) = &job.error {
        println!("dataset problem: {error}");
    }
    if let (JobStatus::Ingesting, Some(point)) = (job.status, job.checkpoint) {
        println!(
            "ingest: {} rows read ({} rejected, {} chunks) up to byte {} in {} piece(s); last checkpoint {}s ago",
            point.position.rows,
            point.rejected,
            point.chunks,
            point.position.offset,
            point.pieces,
            chrono::Utc::now().timestamp() - point.saved_at
        );
    }
    println!(
        "rows {}  rendered {}  reused {}  failed {}  cancelled {}  rejected {}  in flight {}  failure rate {:.1}%",
        c.rows,
        c.rendered,
        c.reused,
        c.failed,
        c.cancelled,
        c.rejected,
        c.in_flight(),
        c.failure_rate() * 100.0
    );
    let control = &job.control;
    if let Some(reason) = &control.cancelled {
        println!("CANCELLED: {reason}");
    }
    if let Some(reason) = &control.paused {
        println!(
            "PAUSED: {reason} (resume with `pictify-batch resume {}`)",
            job.id
        );
    }
    if let Some(limit) = job.max_in_flight() {
        println!("in-flight limit: {limit} batch(es) of this job at Pictify at once");
    }
    if let Some(rule) = &job.spec.abort {
        println!(
            "abort rule: {} on{}{} (rate judged after {} rows)",
            rule.action.as_str(),
            rule.max_failure_rate
                .map(|r| format!(" failure rate over {:.1}%", r * 100.0))
                .unwrap_or_default(),
            rule.max_failed_rows
                .map(|n| format!(" more than {n} failed rows"))
                .unwrap_or_default(),
            rule.after_rows
        );
    }
    println!(
        "invariant rows = rejected + rendered + failed + cancelled + in flight: {}",
        if c.invariant_holds() {
            "holds"
        } else {
            "VIOLATED"
        }
    );
    println!("chunks {} created, {} done", c.chunks, c.chunks_done);
    let now = chrono::Utc::now().timestamp();
    // The window is the account's: this job's share of it, and what waits.
    let slots = stack
        .store
        .live_slots(now)
        .await
        .context("reading the window")?;
    let parked = stack
        .store
        .parked()
        .await
        .context("reading the parking lot")?;
    let mine = |j: &shared::domain::JobId| *j == job.id;
    println!(
        "window: {} batch slot(s) held ({} by this job); {} chunk(s) parked ({} of this job)",
        slots.len(),
        slots.iter().filter(|s| mine(&s.job)).count(),
        parked.len(),
        parked.iter().filter(|(j, _)| mine(j)).count()
    );
    if let Some(reason) = stack
        .store
        .submissions_paused()
        .await
        .context("reading the pause flag")?
    {
        println!(
            "submissions are PAUSED: {reason} (resume with `pictify-batch resume-submissions`)"
        );
    }
    let oldest = chunks
        .iter()
        .filter(|ch| ch.state != ChunkState::Completed)
        .filter_map(|ch| ch.submitted_at.or(ch.submitting_since).map(|t| (t, ch)))
        .min_by_key(|(t, _)| *t);
    match oldest {
        Some((t, ch)) => println!(
            "oldest in-flight chunk: {} ({}, batch {}) for {}s",
            ch.key.label(),
            ch.state.as_str(),
            ch.batch_id.as_deref().unwrap_or("-"),
            now - t
        ),
        None => {
            let queued = chunks
                .iter()
                .filter(|ch| ch.state == ChunkState::Queued)
                .count();
            println!("no chunk in flight at Pictify ({queued} queued)");
        }
    }
    if !job.rejected_sample.is_empty() {
        println!("rejected rows (sample):");
        for (row, reason) in &job.rejected_sample {
            println!("  row {row}: {reason}");
        }
    }
    if let Some(m) = &job.manifest {
        println!("results: {}  {}", m.csv, m.jsonl);
    }
    Ok(Outcome::AllRendered)
}

/// Where a finished job's results are; a usage error naming its status before that.
fn manifest_of(job: &Job) -> Result<&ManifestLocation, Failure> {
    job.manifest.as_ref().ok_or_else(|| {
        Failure::usage(format!(
            "job {} is {}: no results manifest yet",
            job.id,
            job.status.as_str()
        ))
    })
}

async fn read_manifest(stack: &Stack, at: &ObjectRef) -> Result<Vec<u8>, Failure> {
    stack
        .objects
        .get_bytes(at)
        .await
        .context("reading the manifest")?
        .ok_or_else(|| Failure::usage(format!("the manifest {at} is missing")))
}

pub async fn results(args: ResultsArgs) -> Result<Outcome, Failure> {
    let stack = connect(&args.job.target).await?;
    let job = load_job(&stack, args.job.job.as_deref()).await?;
    let manifest = manifest_of(&job)?;
    if !args.print {
        println!("{}\n{}", manifest.csv, manifest.jsonl);
        return Ok(Outcome::AllRendered);
    }
    let bytes = read_manifest(&stack, &manifest.csv).await?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&bytes)
        .context("writing to stdout")?;
    Ok(Outcome::AllRendered)
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Where to write the gallery (DIR/index.html).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

/// The results gallery of a finished job, from its manifest: each rendered row shows its image
/// from its Pictify URL (kept 7 days by Pictify), each other row its status and error.
pub async fn report(args: ReportArgs) -> Result<Outcome, Failure> {
    let stack = connect(&args.job.target).await?;
    let job = load_job(&stack, args.job.job.as_deref()).await?;
    let manifest = manifest_of(&job)?;
    let bytes = read_manifest(&stack, &manifest.jsonl).await?;
    let text = String::from_utf8(bytes).context("the manifest is not UTF-8")?;
    let mut cards = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let line = crate::output::parse_line(line)?;
        let columns: Vec<String> = line.fields.keys().cloned().collect();
        cards.push(gallery::Card {
            row: line.row,
            fields: gallery::key_fields(&line.fields, &columns),
            image: line.url,
            thumb: None,
            status: line.status,
            error: line.error,
            warnings: Vec::new(),
        });
    }
    let title = format!("{} · {}", job.id, job.spec.template_id);
    let subtitle = gallery::status_summary(&cards);
    let path = args.out.join("index.html");
    gallery::write(
        &path,
        &gallery::Page {
            title: &title,
            subtitle: &subtitle,
        },
        &cards,
    )?;
    println!("{}: {subtitle}", path.display());
    Ok(Outcome::AllRendered)
}

pub async fn resume_submissions(args: StateArgs) -> Result<Outcome, Failure> {
    let stack = connect(&args).await?;
    match stack
        .store
        .submissions_paused()
        .await
        .context("reading the pause flag")?
    {
        Some(reason) => {
            stack
                .store
                .resume_submissions()
                .await
                .context("clearing the pause flag")?;
            println!("submissions resumed (they were paused: {reason})");
        }
        None => println!("submissions were not paused"),
    }
    if args.state.is_none() {
        // Deployed: the parked chunks wait for a hand-over; start it now rather than at the
        // reconciler's next pass. (A local run hands its own over on `run --resume`.)
        let pipeline = shared::wiring::pipeline_from_env(shared::wiring::Needs::PICTIFY)
            .await
            .map_err(|e| Failure::usage(format!("{e:#}")))?
            .pipeline;
        let mut handed = 0;
        loop {
            let n = pipeline
                .hand_over()
                .await
                .map_err(|e| Failure::Internal(e.into()))?;
            handed += n;
            if n == 0 {
                break;
            }
        }
        println!("{handed} parked chunk(s) sent to the submitter");
    }
    Ok(Outcome::AllRendered)
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Re-render rows Pictify reported rendered but whose image URL never arrived, instead of
    /// the retryable failed rows.
    #[arg(long)]
    pub missing_urls: bool,
}

/// Reopens a finished job for another attempt at its retryable failed rows (or its rows without
/// a URL): new chunks go to the work queue, and the job finishes again with a new manifest.
pub async fn retry_failed(args: RetryArgs) -> Result<Outcome, Failure> {
    let selection = if args.missing_urls {
        Selection::MissingUrls
    } else {
        Selection::RetryableFailures
    };
    let local = args.job.target.state.clone();
    let pipeline = match &local {
        Some(dir) => local_pipeline(dir)?,
        None => {
            shared::wiring::pipeline_from_env(shared::wiring::Needs::NOTHING)
                .await
                .map_err(|e| Failure::usage(format!("{e:#}")))?
                .pipeline
        }
    };
    let stack = Stack {
        store: pipeline.store.clone(),
        objects: pipeline.objects.clone(),
        local: match &local {
            Some(dir) => Some(SqliteJobStore::open(&OutDir::new(dir.clone()).db())?),
            None => None,
        },
    };
    let job = load_job(&stack, args.job.job.as_deref()).await?;
    let outcome = pipeline
        .reopen(&job.id, selection)
        .await
        .map_err(|e| Failure::Internal(e.into()))?;
    match outcome {
        ReopenOutcome::Reopened { rows, chunks } => {
            println!(
                "job {} reopened: {rows} rows re-queued in {chunks} new chunks",
                job.id
            );
            match &local {
                Some(dir) => println!(
                    "render them with: pictify-batch run <the same dataset> --out {} --resume",
                    dir.display()
                ),
                None => println!("follow it with: pictify-batch status {}", job.id),
            }
            Ok(Outcome::AllRendered)
        }
        ReopenOutcome::NothingToDo => {
            let what = if args.missing_urls {
                "no rendered row lacks its URL".to_owned()
            } else {
                format!(
                    "none of the {} failed rows can be helped by retrying (their codes are permanent: fix the data and upload again)",
                    job.counters.failed
                )
            };
            println!("job {}: {what}; nothing re-queued", job.id);
            Ok(Outcome::AllRendered)
        }
        ReopenOutcome::Cancelled => Err(Failure::usage(format!(
            "job {} was cancelled: its rows are not rendered again (upload the dataset again for a new job)",
            job.id
        ))),
        ReopenOutcome::NotFinished { status } => Err(Failure::usage(format!(
            "job {} is {}: retry-failed works on finished jobs (see `pictify-batch status {}`)",
            job.id,
            status.as_str(),
            job.id
        ))),
    }
}

/// One reconciler pass against the deployed stack, now (the scheduled function does the same):
/// polls stuck batches, re-sends lost chunks, finishes stalled manifests, alerts overdue jobs.
pub async fn reconcile() -> Result<Outcome, Failure> {
    let pipeline = shared::wiring::pipeline_from_env(shared::wiring::Needs::PICTIFY)
        .await
        .map_err(|e| Failure::usage(format!("{e:#}")))?
        .pipeline;
    let report = pipeline
        .reconcile(pipeline.settings.stuck_after)
        .await
        .map_err(|e| Failure::Internal(e.into()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).context("encoding the report")?
    );
    Ok(if report.errors == 0 {
        Outcome::AllRendered
    } else {
        Outcome::SomeProblems
    })
}

/// Replays the dead-letter queue into the work and step queues (after the cause is fixed: a
/// message that died once will die again otherwise). Exit 2 when some messages were left.
pub async fn redrive() -> Result<Outcome, Failure> {
    let variable = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{name} is not set (the stack's outputs name the queues)"
                ))
            })
    };
    let dlq = variable("DEAD_LETTER_QUEUE_URL")?;
    let work = variable("QUEUE_URL")?;
    let steps = variable("STEP_QUEUE_URL")?;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let report = shared::aws::sqs::redrive(&aws_sdk_sqs::Client::new(&config), &dlq, &work, &steps)
        .await
        .map_err(|e| Failure::Internal(e.into()))?;
    println!(
        "{} chunk message(s) sent back to the work queue, {} step(s) to the step queue, {} left in the dead-letter queue (not ours)",
        report.chunks, report.steps, report.left
    );
    Ok(if report.left == 0 {
        Outcome::AllRendered
    } else {
        Outcome::SomeProblems
    })
}

/// The pipeline over a local run's state, for steps that only touch the store, the objects and
/// the queue. Chunks it queues stay `queued` in the store; `run --resume` sends them.
fn local_pipeline(dir: &std::path::Path) -> Result<Pipeline, Failure> {
    let out = OutDir::new(dir.to_path_buf());
    if !out.db().exists() {
        return Err(Failure::usage(format!(
            "{} holds no local run state",
            dir.display()
        )));
    }
    let unused_pictify = PictifyClient::new(PictifyConfig {
        base_url: "http://127.0.0.1:9".into(),
        api_key: Secret::new(""),
        ..PictifyConfig::default()
    })
    .context("building the Pictify client")?;
    Ok(Pipeline {
        store: Arc::new(SqliteJobStore::open(&out.db())?),
        objects: Arc::new(FsObjectStore::new(out.objects())),
        queue: Arc::new(MemoryQueue::new()),
        pictify: Arc::new(unused_pictify),
        alerts: Arc::new(LogAlerts),
        clock: Arc::new(SystemClock),
        settings: Settings::default(),
        webhook_secrets: Vec::new(),
        outputs: Default::default(),
    })
}
