//! Operator commands against a deployed stack (DynamoDB table + S3 bucket through the standard
//! AWS configuration; env TABLE_NAME) — or, with `--state DIR`, against a local run's state.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use shared::domain::{ChunkState, Job, JobId};
use shared::local::FsObjectStore;
use shared::ports::{JobStore, ObjectStore};

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

struct Stack {
    store: Arc<dyn JobStore>,
    objects: Arc<dyn ObjectStore>,
    local: Option<SqliteJobStore>,
}

async fn connect(target: &StateArgs) -> Result<Stack, Failure> {
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

async fn load_job(stack: &Stack, raw: Option<&str>) -> Result<Job, Failure> {
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
    println!(
        "rows {}  rendered {}  failed {}  rejected {}  in flight {}  failure rate {:.1}%",
        c.rows,
        c.rendered,
        c.failed,
        c.rejected,
        c.in_flight(),
        c.failure_rate() * 100.0
    );
    println!(
        "invariant rows = rejected + rendered + failed + in flight: {}",
        if c.invariant_holds() {
            "holds"
        } else {
            "VIOLATED"
        }
    );
    println!("chunks {} created, {} done", c.chunks, c.chunks_done);
    let now = chrono::Utc::now().timestamp();
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

pub async fn results(args: ResultsArgs) -> Result<Outcome, Failure> {
    let stack = connect(&args.job.target).await?;
    let job = load_job(&stack, args.job.job.as_deref()).await?;
    let Some(manifest) = &job.manifest else {
        return Err(Failure::usage(format!(
            "job {} is {}: no results manifest yet",
            job.id,
            job.status.as_str()
        )));
    };
    if !args.print {
        println!("{}\n{}", manifest.csv, manifest.jsonl);
        return Ok(Outcome::AllRendered);
    }
    let bytes = stack
        .objects
        .get_bytes(&manifest.csv)
        .await
        .context("reading the manifest")?
        .ok_or_else(|| Failure::usage(format!("the manifest {} is missing", manifest.csv)))?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&bytes)
        .context("writing to stdout")?;
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
    Ok(Outcome::AllRendered)
}
