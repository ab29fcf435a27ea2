//! Control a running job: `pause`, `resume`, `concurrency` and `cancel`, deployed (the
//! operator's AWS credentials; TABLE_NAME, QUEUE_URL, and SECRET_ARN for `cancel`) or, with
//! `--state DIR`, a local run's.
//!
//! Deployed, the command acts at once: a resume or a new limit hands the job's parked chunks
//! over, a cancel runs a cancel pass (the reconciler repeats it until the job is finished).
//! Locally the command changes the job's record; the `run` working on it acts within seconds
//! (its reconciler pass), and a paused job stops the run until `resume` and `run --resume`.

use anyhow::Context as _;
use clap::Args;
use shared::domain::{ControlChange, Controlled, JobId};
use shared::pipeline::Pipeline;
use shared::wiring::{Needs, pipeline_from_env};

use crate::ops::{JobArgs, connect, load_job};
use crate::{Failure, Outcome};

#[derive(Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Why (shown by `status` and in the alert of a later abort).
    #[arg(long, default_value = "paused by an operator")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Why (shown by `status` and in the job's record).
    #[arg(long, default_value = "cancelled by an operator")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct ConcurrencyArgs {
    /// The job id (job_…); with --state, optional (the latest local job).
    pub job: Option<String>,
    /// Batches of this job at Pictify at once, at most (within the plan's window), or
    /// `default` for the job's own setting (its sidecar's maxInFlight, else the window).
    #[arg(long, value_name = "N|default")]
    pub batches: String,
    #[command(flatten)]
    pub target: crate::ops::StateArgs,
}

pub async fn pause(args: PauseArgs) -> Result<Outcome, Failure> {
    let change = ControlChange::Pause {
        reason: args.reason,
    };
    control(&args.job, change).await
}

pub async fn resume(args: JobArgs) -> Result<Outcome, Failure> {
    control(&args, ControlChange::Resume).await
}

pub async fn cancel(args: CancelArgs) -> Result<Outcome, Failure> {
    let change = ControlChange::Cancel {
        reason: args.reason,
    };
    control(&args.job, change).await
}

pub async fn concurrency(args: ConcurrencyArgs) -> Result<Outcome, Failure> {
    let limit = match args.batches.as_str() {
        "default" => None,
        raw => match raw.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(Failure::usage(format!(
                    "--batches `{raw}`: expected a number of batches (1 or more) or `default`"
                )));
            }
        },
    };
    let job = JobArgs {
        job: args.job,
        target: args.target,
    };
    control(&job, ControlChange::MaxInFlight(limit)).await
}

async fn control(args: &JobArgs, change: ControlChange) -> Result<Outcome, Failure> {
    // Deployed, the command acts as well as records; locally the running `run` acts.
    if args.target.state.is_none() {
        let raw = args
            .job
            .as_deref()
            .ok_or_else(|| Failure::usage("give the job id (job_…)"))?;
        let job = JobId::parse(raw).map_err(Failure::usage)?;
        let needs = match change {
            ControlChange::Cancel { .. } => Needs::PICTIFY,
            _ => Needs::NOTHING,
        };
        return act(&deployed(needs).await?, &job, &change).await;
    }
    let stack = connect(&args.target).await?;
    let job = load_job(&stack, args.job.as_deref()).await?;
    let answer = stack
        .store
        .control_job(&job.id, &change)
        .await
        .context("changing the job")?
        .ok_or_else(|| Failure::usage(format!("no job {}", job.id)))?;
    report(&job.id, &change, &answer)?;
    if answer == Controlled::Applied {
        let next = match change {
            ControlChange::Cancel { .. } => {
                "a `run` working on it cancels its batches within seconds; if none is, `run --resume` finishes the cancel"
            }
            ControlChange::Pause { .. } => {
                "a `run` working on it stops; continue with `pictify-batch resume --state DIR` and `run --resume`"
            }
            ControlChange::Resume => {
                "continue with `pictify-batch run <the same dataset> --out DIR --resume`"
            }
            ControlChange::MaxInFlight(_) => "a `run` working on it follows the new limit at once",
        };
        println!("{next}");
    }
    Ok(Outcome::AllRendered)
}

async fn deployed(needs: Needs) -> Result<Pipeline, Failure> {
    Ok(pipeline_from_env(needs)
        .await
        .map_err(|e| Failure::usage(format!("{e:#}")))?
        .pipeline)
}

async fn act(pipeline: &Pipeline, job: &JobId, change: &ControlChange) -> Result<Outcome, Failure> {
    let answer = pipeline
        .control_job(job, change)
        .await
        .map_err(|e| Failure::Internal(e.into()))?
        .ok_or_else(|| Failure::usage(format!("no job {job}")))?;
    report(job, change, &answer)?;
    if let ControlChange::Cancel { .. } = change {
        let record = pipeline
            .store
            .job(job)
            .await
            .context("reading the job")?
            .ok_or_else(|| Failure::usage(format!("no job {job}")))?;
        let c = record.counters;
        println!(
            "job {job} is {}: {} rendered, {} failed, {} cancelled, {} in flight",
            record.status.as_str(),
            c.rendered,
            c.failed,
            c.cancelled,
            c.in_flight()
        );
        if !record.status.is_terminal() {
            println!(
                "batches still finishing at Pictify end as their batch.completed arrives; the reconciler repeats the cancel until the job is finished (or run `pictify-batch cancel {job}` again)"
            );
        }
    }
    Ok(Outcome::AllRendered)
}

/// One line for what the change did; a change the job cannot take is a usage error (exit 3), a
/// repeated one is not.
fn report(job: &JobId, change: &ControlChange, answer: &Controlled) -> Result<(), Failure> {
    let what = match change {
        ControlChange::Pause { .. } => "paused".to_owned(),
        ControlChange::Resume => "resumed".to_owned(),
        ControlChange::Cancel { .. } => "cancelled".to_owned(),
        ControlChange::MaxInFlight(Some(n)) => {
            format!("limited to {n} batch(es) at Pictify at once")
        }
        ControlChange::MaxInFlight(None) => "back to its own in-flight limit".to_owned(),
    };
    match answer {
        Controlled::Applied => println!("job {job} {what}"),
        Controlled::Unchanged => println!("job {job} was already {what}; nothing changed"),
        Controlled::Finished(status) => {
            if matches!(change, ControlChange::Cancel { .. }) {
                println!(
                    "job {job} is already {}: nothing left to cancel",
                    status.as_str()
                );
            } else {
                return Err(Failure::usage(format!(
                    "job {job} is {}: only an ingesting or running job can be {what}",
                    status.as_str()
                )));
            }
        }
        Controlled::Cancelled => {
            return Err(Failure::usage(format!(
                "job {job} is cancelled: it cannot be {what}"
            )));
        }
    }
    Ok(())
}
