//! The Pictify emulator: a local stand-in for Pictify's batch API, webhooks and renderer.
//!
//! `start(Config)` binds a real HTTP server implementing the batch endpoints, webhook
//! subscriptions (with signed, retried deliveries), rate limits, quota, idempotency and
//! deterministic fault injection; `GET /_emulator/ledger` lets tests audit what happened, and
//! `PUT /_emulator/limits` changes the plan limits while it runs.

mod api;
mod batch;
mod config;
mod error;
mod faults;
mod ledger;
mod limits;
mod ratelimit;
pub mod render;
mod state;
mod subscriptions;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::pictify::wire::SubscriptionFilters;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{Config, Plan, PlanLimits, PresetSubscription, RateLimit};
pub use faults::Faults;
pub use ledger::{AcceptedBatch, DeliveryCounts, Ledger, ThrottleCounts};

use state::AppState;

/// How long `shutdown` waits for in-flight requests before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A started emulator. Dropping it without `shutdown` leaves the server running until the
/// runtime ends.
pub struct RunningEmulator {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningEmulator {
    /// `http://<addr>`: the base URL clients should use (no `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Snapshot of everything accepted, rendered, billed and delivered so far.
    pub fn ledger(&self) -> Ledger {
        self.state.ledger_snapshot()
    }

    /// Replaces the active faults (takes effect for the next decision).
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// The plan limits in force (plan, overrides and run-time changes; `None` = unlimited,
    /// except that `items_per_batch` is always set: every batch has a cap).
    pub fn limits(&self) -> PlanLimits {
        self.state.lock().limits
    }

    /// Replaces every limit (takes effect for the next request) and returns the limits now in
    /// force, as `PUT /_emulator/limits` does; change one with
    /// `set_limits(PlanLimits { monthly_renders: Some(5_000), ..emu.limits() })`.
    /// `items_per_batch: None` restores the default cap (`Config::max_items_per_batch`).
    /// Refuses (and changes nothing) a zero `items_per_batch` or `requests_per_minute`.
    pub fn set_limits(&self, limits: PlanLimits) -> anyhow::Result<PlanLimits> {
        limits::check(limits.items_per_batch, limits.requests_per_minute)
            .map_err(|e| anyhow::anyhow!("invalid limits: {e}"))?;
        Ok(self.state.change_limits(|current| *current = limits))
    }

    /// Stops accepting connections, lets in-flight requests finish (bounded), and aborts
    /// background work (batch workers, pending webhook retries).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "emulator server ended with an error"),
            Ok(Err(e)) => warn!(error = %e, "emulator server task failed"),
            Err(_) => {
                warn!("emulator server did not stop in time; aborting");
                server.abort();
            }
        }
        self.state.tasks.abort_all();
        info!(addr = %self.addr, "emulator stopped");
    }
}

/// Binds `config.listen` and serves until `RunningEmulator::shutdown`.
pub async fn start(config: Config) -> anyhow::Result<RunningEmulator> {
    config
        .faults
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid faults: {e}"))?;
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let public_base_url = config
        .public_base_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let renderer =
        Arc::new(render::Renderer::new(config.render.clone()).context("starting the renderer")?);
    let (stop, stopped) = watch::channel(false);
    let presets = config.subscriptions.clone();
    let state = Arc::new(
        AppState::new(config, public_base_url, renderer, stopped).context("building state")?,
    );
    {
        let mut inner = state.lock();
        for preset in presets {
            subscriptions::register(
                &mut inner,
                preset.event,
                preset.target_url,
                "custom".into(),
                SubscriptionFilters::default(),
                preset.secret,
            );
        }
    }
    let app = api::router(state.clone());
    let shutdown = state.shutting_down();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    info!(%addr, templates = state.templates.len(), "emulator listening");
    Ok(RunningEmulator {
        addr,
        state,
        stop,
        server,
    })
}
