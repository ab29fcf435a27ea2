//! `run`: the pipeline's own steps (ingest, submit, webhook, batch completion, manifest) wired to
//! local parts — a directory object store, an in-process queue drained by submitter tasks, the
//! embedded SQLite job store, a real HTTP webhook listener, and the Pictify emulator in-process
//! (or real Pictify with `--api-key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use clap::Args;
use rand::{RngCore, SeedableRng};
use shared::dataset::DatasetFormat;
use shared::domain::{AbortAction, AbortRule, ChunkMessage, ChunkState, Job, JobId, JobStatus};
use shared::local::{FanoutAlerts, FsObjectStore, LogAlerts, MemoryAlerts, MemoryQueue};
use shared::naming::KeyPattern;
use shared::pictify::plan::{Plan, PlanLimits};
use shared::pictify::wire::{CreateSubscription, Format, event_names, headers};
use shared::pictify::{PictifyClient, PictifyConfig, PictifyError};
use shared::pipeline::{
    IngestOutcome, KeepReason, MessageFate, Pipeline, StepError, WebhookRequest,
};
use shared::ports::{Alerts, ChunkLedger, JobLedger, SubmitSwitch, SubmitWindow, SystemClock};
use shared::secret::Secret;
use shared::settings::{MAX_CHUNK_ROWS, Pacing, Settings};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::prepare::{self, JobOptions};
use crate::sqlite_store::SqliteJobStore;
use crate::{Failure, Outcome, output, progress};

const EMULATOR_API_KEY: &str = "pk_test_emulator";
const WEBHOOK_PATH: &str = "/webhooks/pictify";
/// A chunk submitted longer ago than this with no outcome is polled (a lost `batch.completed`).
const RECONCILE_AFTER: Duration = Duration::from_secs(60);
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// Submit errors the run tolerates (each re-queues its chunk) before giving up.
const MAX_SUBMIT_ERRORS: usize = 50;
/// When a kept message comes back if the pipeline names no delay (SQS would wait out its
/// visibility timeout).
const REDELIVER_AFTER: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: prepare::DatasetArgs,
    /// Output directory: images/, results.csv, results.jsonl, run.log and the resumable .state/.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    #[arg(long, default_value = "png", value_parser = ["png", "jpeg", "webp"])]
    pub format: String,
    /// JPEG / WebP quality, 0.1 to 1.
    #[arg(long)]
    pub quality: Option<f64>,
    /// Name each image file under images/ by this pattern, e.g. '{templateId}/{slug(title)}-{row}.{ext}'
    /// ('/' makes folders). Placeholders: {row} (or {row:06}), {templateId}, {job}, {ext}, {COLUMN},
    /// {slug(COLUMN)}; {{ and }} are braces. Two rows with one name: the later gets -ROW
    /// (NAME_COLLISION) [default: ROW-SLUG.EXT, e.g. 00042-why-idempotency-matters.png].
    #[arg(long, value_name = "PATTERN")]
    pub name_pattern: Option<String>,
    /// Your Pictify plan: sets the chunk size, batches at once and requests a minute (and, with
    /// the emulator, the limits it enforces). Without it: chunks of 100, 4 batches at once.
    #[arg(long, value_name = "free|pro|business|enterprise")]
    pub plan: Option<Plan>,
    /// Batches in flight at Pictify at once (submitted, not yet completed) [default: the plan's,
    /// else 4].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: Option<u32>,
    /// Items per batch (rows per chunk, at most 100) [default: the plan's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_batch_items: Option<u32>,
    /// Requests a minute to Pictify [default: the plan's; none without a plan].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub requests_per_minute: Option<u32>,
    /// Emulator: simulated render seconds per item (benchmarks; default 0, as fast as it can).
    #[arg(long, hide = true, default_value_t = 0.0)]
    pub emulator_render_seconds: f64,
    /// Emulator: renders a month before the plan's hard limit or overage (benchmarks).
    #[arg(long, hide = true)]
    pub emulator_monthly_quota: Option<u64>,
    /// Continue the interrupted run in --out instead of starting over; finished rows are not rendered again.
    #[arg(long)]
    pub resume: bool,
    /// Exit 0 even when images have warnings (MISSING_GLYPHS, BLANK_IMAGE, …): they are still
    /// listed in the summary, results and gallery.
    #[arg(long)]
    pub allow_warnings: bool,
    /// Use real Pictify with this API key instead of the local emulator (needs --public-url).
    #[arg(long, env = "PICTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Pictify API base URL (with --api-key).
    #[arg(long, default_value = shared::pictify::client::DEFAULT_BASE_URL)]
    pub base_url: String,
    /// Public https URL that reaches the local webhook listener (a tunnel), with --api-key.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Address of the local webhook listener (fix the port when a tunnel points at it).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Emulator: check variables and expressions but skip rasterising (placeholder images).
    #[arg(long)]
    pub no_render: bool,
    /// Stop the job when more than this share of its rows fail (0.05 is 5%), judged once
    /// --abort-after-rows rows have ended. What stopping does is --on-abort.
    #[arg(long, value_name = "RATE")]
    pub max_failure_rate: Option<f64>,
    /// Stop the job when more than this many rows have failed.
    #[arg(long, value_name = "ROWS")]
    pub max_failed_rows: Option<u64>,
    /// Rows that must have ended before --max-failure-rate is judged [default: 50].
    #[arg(long, value_name = "ROWS")]
    pub abort_after_rows: Option<u64>,
    /// What stopping does: `pause` (the run stops; `pictify-batch resume --state OUT` and
    /// `run --resume` go on) or `cancel` (the rest of the rows end `cancelled`) [default: pause].
    #[arg(long, value_name = "pause|cancel", value_parser = ["pause", "cancel"])]
    pub on_abort: Option<String>,
    /// Emulator: fault injection as JSON, e.g. '{"itemFailures":{"RENDER_TIMEOUT":0.05}}' (testing aid).
    #[arg(long, value_name = "JSON")]
    pub emulator_faults: Option<String>,
}

/// Which Pictify this run talks to.
enum Backend {
    Emulator(Box<pictify_emulator::RunningEmulator>),
    Real {
        client: PictifyClient,
        subscriptions: Vec<String>,
    },
}

impl Backend {
    fn emulator_base(&self) -> Option<String> {
        match self {
            Backend::Emulator(e) => Some(e.base_url()),
            Backend::Real { .. } => None,
        }
    }
}

/// Paths inside `--out`.
pub struct OutDir {
    pub root: PathBuf,
    pub state: PathBuf,
}

impl OutDir {
    pub fn new(root: PathBuf) -> Self {
        let state = root.join(".state");
        OutDir { root, state }
    }
    pub fn objects(&self) -> PathBuf {
        self.state.join("objects")
    }
    pub fn db(&self) -> PathBuf {
        self.state.join("jobs.db")
    }
    /// Each row's image file name, as the last run gave them.
    pub fn image_names(&self) -> PathBuf {
        self.state.join("image-names.tsv")
    }
}

/// What the submitter tasks report to the run loop.
enum RunEvent {
    SubmitError(String),
}

pub async fn run(args: RunArgs) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let prepared = prepare_run(&args).await?;
    let services = start_services(&args, &prepared).await?;
    let job = match drive(&prepared, &services).await {
        Ok(job) => job,
        Err(failure) => {
            services.shutdown().await;
            return Err(failure);
        }
    };
    let job = settle_manifest(&services.pipeline, job).await?;
    report(&args, &prepared, services, job, started).await
}

/// Everything known before a service starts: the checked options and dataset, the output
/// directory and its logs, the upload placed in the local object store, and the job store.
struct Prepared {
    options: JobOptions,
    dataset: prepare::CheckedDataset,
    templates: pictify_emulator::render::TemplateStore,
    out: OutDir,
    objects: Arc<FsObjectStore>,
    placed: prepare::Placed,
    store: Arc<SqliteJobStore>,
    name_pattern: Option<KeyPattern>,
}

async fn prepare_run(args: &RunArgs) -> Result<Prepared, Failure> {
    let format = args.format.parse::<Format>().map_err(Failure::usage)?;
    let options = args
        .input
        .job_options(format, args.quality, abort_rule(args)?)?;
    check_options(args)?;
    let name_pattern = name_pattern(args, format)?;
    let dataset = prepare::check_dataset(&args.input.dataset, &options)?;
    if let Some(pattern) = &name_pattern {
        check_pattern_fields(pattern, &dataset)?;
    }
    let templates = emulator_templates(args.input.templates.as_deref())?;
    check_template(args, &templates).await?;

    let out = OutDir::new(args.out.clone());
    prepare_out_dir(&out, args.resume)?;
    init_logging(&out.root)?;
    info!(dataset = %dataset.path.display(), template = %options.template_id, resume = args.resume, "run started");

    let objects = Arc::new(FsObjectStore::new(out.objects()));
    let placed = prepare::place(&objects, &dataset, &options, &out.state).await?;
    if placed.sidecar_changed && args.resume {
        eprintln!(
            "note: the options differ from the interrupted run; the resumed job keeps its original options"
        );
    }
    let store = Arc::new(
        SqliteJobStore::open(&out.db())
            .with_context(|| format!("opening {}", out.db().display()))?,
    );
    if args.resume {
        // The user is retrying on purpose (e.g. after fixing the key): lift an earlier pause.
        store
            .resume_submissions()
            .await
            .map_err(anyhow::Error::from)?;
    }
    Ok(Prepared {
        options,
        dataset,
        templates,
        out,
        objects,
        placed,
        store,
        name_pattern,
    })
}

/// What runs while the job does: Pictify (the emulator, or real Pictify's subscriptions), the
/// webhook listener, and the pipeline wired to the local parts.
struct Services {
    backend: Backend,
    server: tokio::task::JoinHandle<()>,
    pipeline: Pipeline,
    queue: Arc<MemoryQueue>,
    alerts: Arc<MemoryAlerts>,
}

impl Services {
    async fn shutdown(self) {
        shutdown(self.backend, self.server).await;
    }
}

async fn start_services(args: &RunArgs, prepared: &Prepared) -> Result<Services, Failure> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the webhook listener on {}", args.listen))?;
    let local_hook = format!(
        "http://{}{WEBHOOK_PATH}",
        listener.local_addr().context("listener address")?
    );
    let secret = format!("whsec_{}", random_hex(24));
    let (backend, pictify, secrets) = start_backend(
        args,
        &prepared.out,
        &local_hook,
        &secret,
        prepared.templates.clone(),
    )
    .await?;

    let queue = Arc::new(MemoryQueue::new());
    let memory_alerts = Arc::new(MemoryAlerts::new());
    let alerts: Vec<Arc<dyn Alerts>> = vec![memory_alerts.clone(), Arc::new(LogAlerts)];
    let settings = Settings {
        submit_grace: Duration::from_secs(15),
        pacing: pacing(args),
        ..Settings::default()
    };
    info!(pacing = %settings.pacing.describe(), "pacing");
    let pipeline = Pipeline {
        store: prepared.store.clone(),
        objects: prepared.objects.clone(),
        queue: queue.clone(),
        pictify: Arc::new(pictify),
        alerts: Arc::new(FanoutAlerts::new(alerts)),
        clock: Arc::new(SystemClock),
        settings,
        webhook_secrets: secrets,
        outputs: Default::default(),
    };
    let server = tokio::spawn(serve_webhooks(listener, pipeline.clone()));
    Ok(Services {
        backend,
        server,
        pipeline,
        queue,
        alerts: memory_alerts,
    })
}

/// Batches at once when neither `--concurrency` nor a limited plan says (the local emulator
/// renders every batch of the window in parallel).
const DEFAULT_CONCURRENCY: u32 = 4;

/// The run's pace: the plan's, with each explicit flag over it. The window is always kept
/// locally (an unlimited plan gets the default), so the emulator is never flooded.
fn pacing(args: &RunArgs) -> Pacing {
    let mut pacing = args.plan.map_or_else(Pacing::unlimited, Pacing::for_plan);
    if let Some(items) = args.max_batch_items {
        pacing.chunk_rows = (items as usize).min(MAX_CHUNK_ROWS);
    }
    pacing.max_concurrent_batches = Some(
        args.concurrency
            .or(pacing.max_concurrent_batches)
            .unwrap_or(DEFAULT_CONCURRENCY),
    );
    if args.requests_per_minute.is_some() {
        pacing.requests_per_minute = args.requests_per_minute;
    }
    pacing
}

/// Runs the job to a terminal status: submitter tasks, ingest, recovery of an interrupted run,
/// then a wait with progress, the local reconciler, and the stop conditions.
async fn drive(prepared: &Prepared, services: &Services) -> Result<Job, Failure> {
    let (store, pipeline) = (&prepared.store, &services.pipeline);
    let upload = &prepared.placed.upload;
    let job_id = JobId::for_upload(&upload.bucket, &upload.key, &prepared.placed.version);
    let before = store
        .chunks_of_job(&job_id)
        .await
        .map_err(anyhow::Error::from)?;
    for chunk in before.iter().filter(|c| c.state == ChunkState::Submitting) {
        // The process that started this submit is gone; resend under the same idempotency key.
        store
            .release_submit(&job_id, chunk.key)
            .await
            .map_err(anyhow::Error::from)?;
    }
    clear_window(store).await.map_err(anyhow::Error::from)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Submitters only take a slot or park (the window in the store holds the pace), so a few
    // more than the window keep it full while others are parking.
    let window = pipeline
        .settings
        .pacing
        .max_concurrent_batches
        .unwrap_or(DEFAULT_CONCURRENCY);
    let submitters = Submitters(
        (0..window + 2)
            .map(|_| {
                tokio::spawn(submitter(
                    pipeline.clone(),
                    services.queue.clone(),
                    stop.clone(),
                    events_tx.clone(),
                ))
            })
            .collect(),
    );
    drop(events_tx);

    // The local queue takes no long steps: ingest reads the whole file and the manifest is
    // written in place.
    let ingest = pipeline
        .ingest(upload, Some(&prepared.placed.version))
        .await
        .map_err(step_error)?;
    info!(?ingest, "ingest returned");
    let duplicate = matches!(ingest, IngestOutcome::Duplicate { .. });
    let emulator = services.backend.emulator_base().is_some();
    recover(pipeline, store, &job_id, &before, duplicate, emulator).await?;

    let mut bar = progress::Progress::new();
    let mut last_reconcile = Instant::now();
    let mut submit_errors = Vec::new();
    let stopped = |bar: &mut progress::Progress| {
        stop.store(true, Ordering::Relaxed);
        bar.finish();
    };
    loop {
        let job = store
            .job(&job_id)
            .await
            .map_err(anyhow::Error::from)?
            .context("the job vanished from the store")?;
        bar.update(&job);
        if job.status.is_terminal() {
            stopped(&mut bar);
            drop(submitters);
            return Ok(job);
        }
        if let Some(reason) = &job.control.paused {
            stopped(&mut bar);
            return Err(Failure::Paused(format!(
                "job {job_id} is paused: {reason}. Nothing more is submitted; continue with `pictify-batch resume --state {out}` then the same `run` with --resume, or end it with `pictify-batch cancel --state {out}` and `run --resume`",
                out = prepared.out.root.display()
            )));
        }
        if job.status == JobStatus::Finishing && duplicate {
            // Interrupted while writing the manifest: finish it (idempotent).
            pipeline.finish_job(job.clone()).await.map_err(step_error)?;
            continue;
        }
        while let Ok(RunEvent::SubmitError(e)) = events.try_recv() {
            submit_errors.push(e);
        }
        if let Some(reason) = store
            .submissions_paused()
            .await
            .map_err(anyhow::Error::from)?
        {
            stopped(&mut bar);
            return Err(Failure::usage(format!(
                "Pictify refused the submission: {reason}. Nothing more is submitted; fix the API key or quota and run again with --resume"
            )));
        }
        if submit_errors.len() > MAX_SUBMIT_ERRORS {
            stopped(&mut bar);
            return Err(Failure::Internal(anyhow::anyhow!(
                "{} submit errors; last: {} (state kept: run again with --resume)",
                submit_errors.len(),
                submit_errors.last().map(String::as_str).unwrap_or("-")
            )));
        }
        // A job being finished is left to its finisher: a second one would write twice.
        if last_reconcile.elapsed() >= RECONCILE_EVERY && job.status == JobStatus::Running {
            last_reconcile = Instant::now();
            if let Err(e) = pipeline.reconcile_one(&job_id, RECONCILE_AFTER).await {
                tracing::debug!(error = %e, "reconcile pass: not settled");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The submitter tasks, stopped when the run is done with them (or gives up).
struct Submitters(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Submitters {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Writes the outputs and the summary, and shuts the services down.
async fn report(
    args: &RunArgs,
    prepared: &Prepared,
    services: Services,
    job: Job,
    started: Instant,
) -> Result<Outcome, Failure> {
    let written = output::write_outputs(&output::OutputInput {
        out: &prepared.out.root,
        objects: prepared.objects.as_ref(),
        job: &job,
        dataset: &prepared.dataset,
        format: prepared.options.format,
        emulator_base: services.backend.emulator_base(),
        resume: args.resume,
        expected_size: match &services.backend {
            Backend::Emulator(_) => prepared
                .templates
                .get(&prepared.options.template_id)
                .map(|t| (t.width, t.height)),
            Backend::Real { .. } => None,
        },
        placeholders: args.no_render,
        name_pattern: prepared.name_pattern.as_ref(),
        names_record: prepared.out.image_names(),
    })
    .await;
    let written = match written {
        Ok(written) => written,
        Err(failure) => {
            services.shutdown().await;
            return Err(failure);
        }
    };
    if let Backend::Emulator(emulator) = &services.backend {
        let ledger =
            serde_json::to_vec_pretty(&emulator.ledger()).context("encoding the ledger")?;
        std::fs::write(prepared.out.state.join("ledger.json"), ledger)
            .context("writing the ledger")?;
    }
    let alerts = services.alerts.alerts();
    services.shutdown().await;
    let summary = output::Summary {
        job: &job,
        report: &written,
        alerts: &alerts,
        elapsed: started.elapsed(),
        allow_warnings: args.allow_warnings,
    };
    eprint!("{}", summary.render(&prepared.out.root));
    info!(job_id = %job.id, status = job.status.as_str(), "run finished");
    summary.outcome()
}

fn check_options(args: &RunArgs) -> Result<(), Failure> {
    if args.input.template.is_empty()
        || args.input.template.contains(['/', '\\'])
        || args.input.template.starts_with('.')
    {
        return Err(Failure::usage(format!(
            "--template `{}` is not a template id",
            args.input.template
        )));
    }
    if let Some(q) = args.quality
        && !(0.1..=1.0).contains(&q)
    {
        return Err(Failure::usage(format!("--quality {q} is outside 0.1..=1")));
    }
    if args.api_key.is_some() && args.public_url.is_none() {
        return Err(Failure::usage(
            "--api-key needs --public-url: a public URL that reaches the webhook listener (e.g. a cloudflared or ngrok tunnel to --listen)",
        ));
    }
    if let Some(faults) = &args.emulator_faults {
        serde_json::from_str::<pictify_emulator::Faults>(faults)
            .map_err(|e| Failure::usage(format!("--emulator-faults is not valid: {e}")))?
            .validate()
            .map_err(|e| Failure::usage(format!("--emulator-faults: {e}")))?;
    }
    Ok(())
}

/// `--name-pattern`, parsed before anything runs. A pattern ending in another format's
/// extension would name files for what they are not: it must end in `.{ext}` or this format's.
fn name_pattern(args: &RunArgs, format: Format) -> Result<Option<KeyPattern>, Failure> {
    let Some(text) = &args.name_pattern else {
        return Ok(None);
    };
    let pattern = KeyPattern::parse(text)
        .map_err(|e| Failure::usage(format!("--name-pattern '{text}': {e}")))?;
    let ext = format.extension();
    let lower = text.to_ascii_lowercase();
    let other = ["png", "jpg", "jpeg", "webp", "gif"]
        .into_iter()
        .find(|e| lower.ends_with(&format!(".{e}")));
    if let Some(other) = other
        && other != ext
        && !(other == "jpeg" && ext == "jpg")
    {
        return Err(Failure::usage(format!(
            "--name-pattern '{text}' ends in .{other} but the images are {}: end it with .{{ext}}",
            format.as_str()
        )));
    }
    Ok(Some(pattern))
}

/// A CSV's header names every column its rows can have: a pattern field not in it would fail on
/// every row, so it is a usage error now. (JSON rows may add keys as they go: checked per row.)
fn check_pattern_fields(
    pattern: &KeyPattern,
    dataset: &prepare::CheckedDataset,
) -> Result<(), Failure> {
    if dataset.format != DatasetFormat::Csv {
        return Ok(());
    }
    match pattern
        .fields()
        .into_iter()
        .find(|f| !dataset.columns.iter().any(|c| c == f))
    {
        Some(field) => Err(Failure::usage(format!(
            "--name-pattern '{pattern}' uses field \"{field}\", which is not in the CSV header of {} (columns: {})",
            dataset.path.display(),
            dataset.columns.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The abort rule the flags ask for, if any.
fn abort_rule(args: &RunArgs) -> Result<Option<AbortRule>, Failure> {
    if let Some(rate) = args.max_failure_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(Failure::usage(format!(
            "--max-failure-rate {rate} is outside 0..=1 (0.05 is 5%)"
        )));
    }
    if args.max_failure_rate.is_none() && args.max_failed_rows.is_none() {
        if args.abort_after_rows.is_some() || args.on_abort.is_some() {
            return Err(Failure::usage(
                "--abort-after-rows and --on-abort need --max-failure-rate or --max-failed-rows",
            ));
        }
        return Ok(None);
    }
    Ok(Some(AbortRule {
        max_failure_rate: args.max_failure_rate,
        max_failed_rows: args.max_failed_rows,
        after_rows: args
            .abort_after_rows
            .unwrap_or(AbortRule::DEFAULT_AFTER_ROWS),
        action: match args.on_abort.as_deref() {
            Some("cancel") => AbortAction::Cancel,
            _ => AbortAction::Pause,
        },
    }))
}

/// The bundled templates, plus those in `dir` (`--templates`).
pub(crate) fn emulator_templates(
    dir: Option<&std::path::Path>,
) -> Result<pictify_emulator::render::TemplateStore, Failure> {
    let mut templates = pictify_emulator::render::TemplateStore::bundled();
    if let Some(dir) = dir {
        let extra = pictify_emulator::render::TemplateStore::load_dir(dir)
            .map_err(|e| Failure::usage(format!("--templates {}: {e:#}", dir.display())))?;
        templates.merge(extra);
    }
    Ok(templates)
}

/// Unknown templates fail before anything renders: from the emulator's store, or real Pictify's answer.
async fn check_template(
    args: &RunArgs,
    templates: &pictify_emulator::render::TemplateStore,
) -> Result<(), Failure> {
    let Some(key) = &args.api_key else {
        if templates.get(&args.input.template).is_none() {
            let known: Vec<&str> = templates.ids().collect();
            return Err(Failure::usage(format!(
                "unknown template `{}` (the emulator has: {})",
                args.input.template,
                known.join(", ")
            )));
        }
        return Ok(());
    };
    let url = format!(
        "{}/templates/{}/variables",
        args.base_url.trim_end_matches('/'),
        args.input.template
    );
    let answer = reqwest::Client::new()
        .get(&url)
        .bearer_auth(key)
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    match answer {
        Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
            // Only a 404 about the template is conclusive (a server without this route says otherwise).
            let body = r.text().await.unwrap_or_default();
            if body.to_ascii_lowercase().contains("template") {
                return Err(Failure::usage(format!(
                    "unknown template `{}` (Pictify: {})",
                    args.input.template,
                    body.trim()
                )));
            }
            warn!("template check inconclusive (404 without a template message); going on");
            Ok(())
        }
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
            Err(Failure::usage("Pictify refused the API key (401)"))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            // Not conclusive: the submit will say it again if the template is really missing.
            warn!(error = %e, "could not check the template; going on");
            Ok(())
        }
    }
}

/// A fresh run starts from nothing; `--resume` keeps the state of the interrupted one.
fn prepare_out_dir(out: &OutDir, resume: bool) -> Result<(), Failure> {
    if !resume && out.state.exists() {
        std::fs::remove_dir_all(&out.state).map_err(|e| {
            Failure::usage(format!(
                "cannot clear the previous run's state {}: {e}",
                out.state.display()
            ))
        })?;
    }
    std::fs::create_dir_all(out.objects())
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", out.state.display())))?;
    Ok(())
}

/// Structured logs go to `DIR/run.log` (stderr is the user's: progress and the summary).
fn init_logging(root: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("run.log"))
        .context("opening run.log")?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PICTIFY_BATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Starts the emulator (default) or subscribes real Pictify's webhooks to `--public-url`.
async fn start_backend(
    args: &RunArgs,
    out: &OutDir,
    local_hook: &str,
    secret: &str,
    templates: pictify_emulator::render::TemplateStore,
) -> Result<(Backend, PictifyClient, Vec<Secret>), Failure> {
    let events = [
        event_names::RENDER_COMPLETED,
        event_names::RENDER_FAILED,
        event_names::BATCH_COMPLETED,
    ];
    if let Some(key) = &args.api_key {
        let client = PictifyClient::new(
            PictifyConfig::new(Secret::new(key.clone())).with_base_url(args.base_url.clone()),
        )
        .map_err(|e| Failure::usage(format!("--base-url: {e}")))?;
        let public = args
            .public_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let target = format!("{public}{WEBHOOK_PATH}");
        let (mut uids, mut secrets) = (Vec::new(), Vec::new());
        for event in events {
            let request = CreateSubscription {
                event: event.into(),
                target_url: target.clone(),
                platform: None,
                filters: None,
            };
            let sub = client
                .create_subscription(&request)
                .await
                .map_err(|e| match e {
                    PictifyError::Unauthorized { .. } => {
                        Failure::usage("Pictify refused the API key (401)")
                    }
                    other => Failure::Internal(anyhow::anyhow!(
                        "creating the {event} webhook subscription: {other}"
                    )),
                })?;
            secrets.push(Secret::new(sub.secret.clone().unwrap_or_default()));
            uids.push(sub.uid);
        }
        info!(target = %target, "webhook subscriptions created");
        return Ok((
            Backend::Real {
                client: client.clone(),
                subscriptions: uids,
            },
            client,
            secrets,
        ));
    }
    let faults = match &args.emulator_faults {
        Some(json) => serde_json::from_str(json)
            .map_err(|e| Failure::usage(format!("--emulator-faults: {e}")))?,
        None => pictify_emulator::Faults::default(),
    };
    let config = pictify_emulator::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_keys: vec![EMULATOR_API_KEY.to_owned()],
        templates,
        data_dir: out.state.join("emulator"),
        faults,
        render: pictify_emulator::render::RenderOptions {
            rasterize: !args.no_render,
            ..Default::default()
        },
        webhook_retry_scale: 0.01,
        // The emulated account is the one the flags describe, so the run meets its limits.
        plan: args.plan,
        limits: PlanLimits {
            items_per_batch: args.max_batch_items.map(|n| n as usize),
            concurrent_batches: args.concurrency,
            requests_per_minute: args.requests_per_minute,
            monthly_renders: args.emulator_monthly_quota,
            ..PlanLimits::default()
        },
        render_seconds: Some(args.emulator_render_seconds),
        subscriptions: events
            .iter()
            .map(|event| pictify_emulator::PresetSubscription {
                event: (*event).to_owned(),
                target_url: local_hook.to_owned(),
                secret: secret.to_owned(),
            })
            .collect(),
        ..pictify_emulator::Config::default()
    };
    let emulator = pictify_emulator::start(config)
        .await
        .context("starting the Pictify emulator")?;
    let client = PictifyClient::new(
        PictifyConfig::new(Secret::new(EMULATOR_API_KEY)).with_base_url(emulator.base_url()),
    )
    .map_err(|e| anyhow::anyhow!("emulator client: {e}"))?;
    Ok((
        Backend::Emulator(Box::new(emulator)),
        client,
        vec![Secret::new(secret)],
    ))
}

async fn shutdown(backend: Backend, server: tokio::task::JoinHandle<()>) {
    match backend {
        Backend::Emulator(emulator) => emulator.shutdown().await,
        Backend::Real {
            client,
            subscriptions,
        } => {
            for uid in subscriptions {
                if let Err(e) = client.delete_subscription(&uid).await {
                    warn!(uid = %uid, error = %e, "could not delete the webhook subscription");
                }
            }
        }
    }
    server.abort();
}

/// The webhook endpoint: raw body and headers straight into the pipeline's webhook step.
async fn serve_webhooks(listener: tokio::net::TcpListener, pipeline: Pipeline) {
    let app = axum::Router::new()
        .route(WEBHOOK_PATH, axum::routing::post(webhook))
        .with_state(pipeline);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "webhook listener stopped");
    }
}

async fn webhook(State(pipeline): State<Pipeline>, headers: HeaderMap, body: Bytes) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reply = pipeline
        .handle_webhook(WebhookRequest {
            signature: header(headers::SIGNATURE),
            delivery_id: header(headers::DELIVERY_ID),
            body: &body,
        })
        .await;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(CONTENT_TYPE, "application/json")], reply.body).into_response()
}

/// A new run owns the window: slots and parked chunks left by an interrupted process are
/// dropped (their chunks are still `queued` or `submitting`, and `recover` sends them again).
async fn clear_window(store: &SqliteJobStore) -> shared::ports::PortResult<()> {
    for slot in store.live_slots(i64::MIN).await? {
        store.release_slot(&slot.job, slot.key).await?;
    }
    for (job, key) in store.parked().await? {
        store.unpark(&job, key).await?;
    }
    Ok(())
}

/// One submitter: pops a chunk message and hands it to the pipeline, which submits it within
/// the plan's window or parks it (a completed batch hands its slot to the next parked chunk).
async fn submitter(
    pipeline: Pipeline,
    queue: Arc<MemoryQueue>,
    stop: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<RunEvent>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(message) = queue.pop() else {
            tokio::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        match pipeline.handle_chunk_message(&message).await {
            MessageFate::Acknowledge => {}
            MessageFate::Keep { after, why } => {
                if let KeepReason::Error { error } = why {
                    let _ = events.send(RunEvent::SubmitError(format!(
                        "chunk {}: {error}",
                        message.key.label()
                    )));
                }
                redeliver_later(&queue, message, after.unwrap_or(REDELIVER_AFTER));
            }
        }
    }
}

/// The local stand-in for SQS visibility: the message comes back after `delay`.
fn redeliver_later(queue: &Arc<MemoryQueue>, message: ChunkMessage, delay: Duration) {
    let queue = queue.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        queue.push(message);
    });
}

/// Resuming: re-queue chunks whose messages died with the interrupted process, and settle
/// chunks submitted but not completed by polling their batch (idempotent).
async fn recover(
    pipeline: &Pipeline,
    store: &SqliteJobStore,
    job: &JobId,
    before: &[shared::domain::Chunk],
    duplicate: bool,
    emulator: bool,
) -> Result<(), Failure> {
    let mut resend = Vec::new();
    for chunk in before {
        match chunk.state {
            // A re-run ingest re-queues the initial chunks itself; retry chunks only live in the store.
            ChunkState::Queued | ChunkState::Submitting if duplicate || chunk.key.attempt > 0 => {
                resend.push(chunk.key);
            }
            ChunkState::Submitted => {
                let Some(batch) = chunk.batch_id.as_deref() else {
                    continue;
                };
                match pipeline.complete_batch(batch, None).await {
                    Ok(applied) => {
                        info!(chunk = %chunk.key.label(), ?applied, "resumed chunk polled")
                    }
                    Err(StepError::Pictify(PictifyError::NotFound { .. })) if emulator => {
                        // Its batch lived in the emulator of the interrupted run: submit it again.
                        if store
                            .forget_batch(job, chunk.key)
                            .await
                            .map_err(anyhow::Error::from)?
                        {
                            resend.push(chunk.key);
                        }
                    }
                    Err(e) => {
                        info!(chunk = %chunk.key.label(), error = %e, "resumed chunk not settled yet; the reconciler will poll it")
                    }
                }
            }
            _ => {}
        }
    }
    pipeline
        .resend_chunks(job, &resend)
        .await
        .map_err(step_error)
}

/// `render.completed` can trail `batch.completed`: rewrite the manifest (the pipeline's own step)
/// for a few seconds while rendered rows still lack their URL.
async fn settle_manifest(pipeline: &Pipeline, job: Job) -> Result<Job, Failure> {
    if job.manifest.is_none() {
        return Ok(job);
    }
    for _ in 0..20 {
        let summary = pipeline.write_manifest(&job).await.map_err(step_error)?;
        if summary.url_missing == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(job)
}

fn step_error(e: StepError) -> Failure {
    Failure::Internal(anyhow::Error::from(e))
}
