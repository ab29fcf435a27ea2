//! `pictify-batch`: check a dataset before spending (`check`), render it to images on this
//! machine with the pipeline's own steps (`run`), and operate a deployed stack (`status`, `results`, `retry-failed`, `reconcile`,
//! `redrive`, `resume-submissions`, `register-webhooks`).

mod check;
mod control;
mod gallery;
mod ops;
mod output;
mod prepare;
mod progress;
mod qa;
mod register;
mod run;
mod sqlite_store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  every row rendered (and, for `run`, every image downloaded and passing image QA)
  2  some rows failed or were rejected, or (for `run`) some images have warnings such as
     MISSING_GLYPHS or BLANK_IMAGE (see the summary and results.csv; --allow-warnings exits 0
     for warnings alone)
  3  dataset-level or usage error: missing file, unknown format, unknown template,
     --map naming a missing column, an unreadable dataset, or Pictify refusing the API key / quota
  4  the job is paused (`pictify-batch pause`, or its abort rule): its state is kept; resume it
     and run again with --resume
  1  unexpected internal error";

#[derive(Parser, Debug)]
#[command(name = "pictify-batch", version, about = "Render datasets to images with Pictify's batch API", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render a CSV / JSON / JSON Lines dataset locally (in-process emulator by default).
    #[command(after_help = EXIT_CODES)]
    Run(Box<run::RunArgs>),
    /// Check a dataset against a template before spending anything: rows that would be rejected or
    /// fail (with codes), unreachable images, duplicates, and the credits, requests and time on a plan.
    Check(Box<check::CheckArgs>),
    /// A job's counters, failure rate, invariant, oldest in-flight chunk and rejected samples.
    Status(ops::JobArgs),
    /// Where a job's results manifest is (or print it with --print).
    Results(ops::ResultsArgs),
    /// Write a finished job's results gallery (DIR/index.html) from its manifest, showing each
    /// image from its Pictify URL.
    Report(ops::ReportArgs),
    /// Re-queue a finished job's retryable failed rows (or, with --missing-urls, its rows whose
    /// URL never arrived) as new chunks; the job then finishes again with a new manifest.
    RetryFailed(ops::RetryArgs),
    /// Run one reconciler pass against the deployed stack now (the Lambda environment variables:
    /// TABLE_NAME, QUEUE_URL, SECRET_ARN, ALERT_TOPIC_ARN, …).
    Reconcile,
    /// Pause one job: nothing more of it is submitted until `resume` (batches at Pictify finish).
    Pause(control::PauseArgs),
    /// Resume a paused job (one paused by `pause` or by its abort rule).
    Resume(ops::JobArgs),
    /// Cancel a job: batches at Pictify are cancelled, queued chunks are stopped, and the rows
    /// not rendered end `cancelled`. Safe to repeat.
    Cancel(control::CancelArgs),
    /// Change how many of a running job's batches may be at Pictify at once.
    Concurrency(control::ConcurrencyArgs),
    /// Clear the pause flag set when Pictify refused the API key or quota.
    ResumeSubmissions(ops::StateArgs),
    /// Send the dead-letter queue's messages back to the queues they came from
    /// (DEAD_LETTER_QUEUE_URL, QUEUE_URL, STEP_QUEUE_URL).
    Redrive,
    /// Subscribe the stack's webhook URL to Pictify's events and store the signing secrets in the stack secret.
    RegisterWebhooks(register::RegisterArgs),
}

/// How a command ended, mapped to the documented exit codes.
#[derive(Debug)]
pub enum Outcome {
    AllRendered,
    SomeProblems,
}

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The input or the invocation is wrong; one line for the user, exit 3.
    #[error("{0}")]
    Usage(String),
    /// The job is paused: the run stops, its state kept (exit 4).
    #[error("{0}")]
    Paused(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure::Usage(message.into())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 3 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Check(args) => check::check(*args).await,
            Command::Status(args) => ops::status(args).await,
            Command::Results(args) => ops::results(args).await,
            Command::Report(args) => ops::report(args).await,
            Command::ResumeSubmissions(args) => ops::resume_submissions(args).await,
            Command::Pause(args) => control::pause(args).await,
            Command::Resume(args) => control::resume(args).await,
            Command::Cancel(args) => control::cancel(args).await,
            Command::Concurrency(args) => control::concurrency(args).await,
            Command::RetryFailed(args) => ops::retry_failed(args).await,
            Command::Reconcile => ops::reconcile().await,
            Command::Redrive => ops::redrive().await,
            Command::RegisterWebhooks(args) => register::register_webhooks(args).await,
        }
    });
    // Background tasks (webhook retries, sleeping re-deliveries) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(Outcome::AllRendered) => ExitCode::SUCCESS,
        Ok(Outcome::SomeProblems) => ExitCode::from(2),
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(3)
        }
        Err(Failure::Paused(message)) => {
            eprintln!("paused: {message}");
            ExitCode::from(4)
        }
        Err(Failure::Internal(e)) => {
            eprintln!("internal error: {e:#}");
            ExitCode::from(1)
        }
    }
}
