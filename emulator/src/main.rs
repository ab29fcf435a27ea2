//! `pictify-emulator` binary: parses flags into a `Config`, starts the server, stops on Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pictify_emulator::render::TemplateStore;
use pictify_emulator::{Config, Faults, Plan, PlanLimits, RateLimit};
use tracing_subscriber::EnvFilter;

/// A local stand-in for Pictify's batch API: real HTTP, real signed webhooks, real images.
#[derive(Debug, Parser)]
#[command(name = "pictify-emulator", version)]
struct Args {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:4010",
        env = "PICTIFY_EMULATOR_LISTEN"
    )]
    listen: SocketAddr,
    /// Accepted API key (repeatable); default `pk_test_emulator`.
    #[arg(long = "api-key")]
    api_keys: Vec<String>,
    /// Directory of extra templates (`<id>.html` + `<id>.json`), added to the bundled samples.
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Where rendered images are stored.
    #[arg(long, default_value = ".pictify-emulator")]
    data_dir: PathBuf,
    /// Base of image URLs in webhooks (default: the listen address).
    #[arg(long)]
    public_base_url: Option<String>,
    /// JSON file of faults to inject (see `Faults`; camelCase field names).
    #[arg(long)]
    faults: Option<PathBuf>,
    /// Seed for fault decisions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A Pictify plan: free, pro, business or enterprise. Enforces its items per batch,
    /// concurrent batches, requests per minute/day and monthly renders (default: no limits).
    #[arg(long)]
    plan: Option<Plan>,
    /// Most items (variable sets) per batch; overrides the plan's.
    #[arg(long)]
    items_per_batch: Option<usize>,
    /// Most batches pending or processing at once; overrides the plan's.
    #[arg(long)]
    concurrent_batches: Option<u32>,
    /// Requests per minute per API key; overrides the plan's.
    #[arg(long)]
    requests_per_minute: Option<u32>,
    /// Requests per day per API key; overrides the plan's.
    #[arg(long)]
    requests_per_day: Option<u64>,
    /// Renders per calendar month; overrides the plan's (Free and no plan: then 429
    /// `quota_exceeded`; paid plans: overage, counted in the ledger).
    #[arg(long)]
    monthly_quota: Option<u64>,
    /// Seconds each item takes to render (default: 1 with a plan, 0 without).
    #[arg(long)]
    render_seconds: Option<f64>,
    /// Multiplies simulated time: 0.01 makes a 1 s render take 10 ms.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Per-key request limits only (older flag): free, pro or business.
    #[arg(long)]
    rate_limit: Option<RateLimit>,
    /// Renders left on the account (default: unlimited).
    #[arg(long)]
    quota: Option<u64>,
    /// Answer an exhausted quota with 429 `{code:"quota_exceeded"}` instead of 402.
    #[arg(long)]
    quota_as_429: bool,
    /// Multiplier of the webhook retry schedule (1m, 5m, 30m, 2h, 24h).
    #[arg(long, default_value_t = 1.0)]
    webhook_retry_scale: f64,
    /// Add `batchId`/`batchIndex` to render events (an emulator extension).
    #[arg(long)]
    correlation_fields: bool,
    /// Skip rasterisation (placeholder images) to measure pipeline overhead.
    #[arg(long)]
    no_render: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = config_from(Args::parse())?;
    let key = config.api_keys.first().cloned().unwrap_or_default();
    let emulator = pictify_emulator::start(config).await?;
    println!("Pictify emulator listening on {}", emulator.base_url());
    println!("API key: {key}");
    println!("Ledger:  {}/_emulator/ledger", emulator.base_url());
    stop_requested().await?;
    emulator.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM (how CI and process managers stop us).
async fn stop_requested() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

fn config_from(args: Args) -> anyhow::Result<Config> {
    let mut config = Config {
        listen: args.listen,
        data_dir: args.data_dir,
        public_base_url: args.public_base_url,
        seed: args.seed,
        rate_limit: args.rate_limit,
        quota: args.quota,
        quota_as_429: args.quota_as_429,
        plan: args.plan,
        limits: PlanLimits {
            items_per_batch: args.items_per_batch,
            concurrent_batches: args.concurrent_batches,
            requests_per_minute: args.requests_per_minute,
            requests_per_day: args.requests_per_day,
            monthly_renders: args.monthly_quota,
        },
        render_seconds: args.render_seconds,
        time_scale: args.time_scale,
        webhook_retry_scale: args.webhook_retry_scale,
        correlation_fields: args.correlation_fields,
        ..Config::default()
    };
    if !args.api_keys.is_empty() {
        config.api_keys = args.api_keys;
    }
    if let Some(dir) = args.templates {
        let extra = TemplateStore::load_dir(&dir)
            .with_context(|| format!("loading templates from {}", dir.display()))?;
        config.templates.merge(extra);
    }
    if let Some(path) = args.faults {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        config.faults = serde_json::from_str::<Faults>(&text)
            .with_context(|| format!("parsing faults in {}", path.display()))?;
    }
    config.render.rasterize = !args.no_render;
    anyhow::ensure!(
        config.time_scale.is_finite() && config.time_scale >= 0.0,
        "--time-scale must be a non-negative number"
    );
    anyhow::ensure!(
        config
            .render_seconds
            .is_none_or(|s| s.is_finite() && s >= 0.0),
        "--render-seconds must be a non-negative number"
    );
    Ok(config)
}
