//! Emulator configuration: what to listen on, which keys and templates exist, and which limits apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::faults::Faults;
use crate::render::{RenderOptions, Template, TemplateStore};
pub use shared::pictify::plan::{Plan, PlanLimits};

/// Everything `start` needs. `Config::default()` is a useful local setup (port 4010, key
/// `pk_test_emulator`, bundled sample templates, no limits, no faults).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind; tests use `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// Accepted `Authorization: Bearer` keys.
    pub api_keys: Vec<String>,
    pub templates: TemplateStore,
    /// Templates added on top of `templates` (tests and embedders build them in code).
    pub extra_templates: Vec<Template>,
    /// Where rendered images are written and served from (`GET /images/{file}`).
    pub data_dir: PathBuf,
    /// Base of image URLs in `render.completed`; defaults to the listen address.
    pub public_base_url: Option<String>,
    /// Seed for the fault dice: same seed, same outcomes.
    pub seed: u64,
    pub faults: Faults,
    pub render: RenderOptions,
    /// Multiplies the webhook retry schedule (1m, 5m, 30m, 2h, 24h); tests use ~0.001.
    pub webhook_retry_scale: f64,
    /// A delivery attempt that takes longer than this counts as failed.
    pub webhook_timeout: Duration,
    /// Adds the undocumented `batchId`/`batchIndex` to render events (off, as in production).
    pub correlation_fields: bool,
    /// Webhook subscriptions registered at start-up with a known secret.
    pub subscriptions: Vec<PresetSubscription>,
    /// Per-key request limits on the authenticated routes (`X-RateLimit-*` on each of their
    /// answers); `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Renders left on the account; `None` = unlimited. A submit whose item count exceeds what
    /// is left is refused (402); each rendered item is metered when it renders.
    pub quota: Option<u64>,
    /// Answer an exhausted quota with 429 `{code:"quota_exceeded"}` instead of 402.
    pub quota_as_429: bool,
    /// Items per batch when neither `plan` nor `limits.items_per_batch` sets one.
    pub max_items_per_batch: usize,
    /// A Pictify plan whose limits apply (items per batch, concurrent batches, requests per
    /// minute and day, monthly renders); `None` = no plan limits (the default).
    pub plan: Option<Plan>,
    /// Explicit limits; each one set here replaces the plan's (and works without a plan).
    pub limits: PlanLimits,
    /// Seconds each item takes to render (before `time_scale`); `None` = none without a plan,
    /// [`Plan::RENDER_SECONDS`] with one.
    pub render_seconds: Option<f64>,
    /// Multiplies simulated time (render latency, and the concurrency `Retry-After` estimate):
    /// `0.01` makes a 1 s render take 10 ms.
    pub time_scale: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 4010)),
            api_keys: vec!["pk_test_emulator".to_owned()],
            templates: TemplateStore::bundled(),
            extra_templates: Vec::new(),
            data_dir: PathBuf::from(".pictify-emulator"),
            public_base_url: None,
            seed: 0,
            faults: Faults::default(),
            render: RenderOptions::default(),
            webhook_retry_scale: 1.0,
            webhook_timeout: Duration::from_secs(30),
            correlation_fields: false,
            subscriptions: Vec::new(),
            rate_limit: None,
            quota: None,
            quota_as_429: false,
            max_items_per_batch: 100,
            plan: None,
            limits: PlanLimits::default(),
            render_seconds: None,
            time_scale: 1.0,
        }
    }
}

impl Config {
    /// The limits in force: each explicit `limits` field, else the plan's, else none.
    pub fn effective_limits(&self) -> PlanLimits {
        let plan = self.plan.map(Plan::limits).unwrap_or_default();
        let o = &self.limits;
        PlanLimits {
            items_per_batch: o.items_per_batch.or(plan.items_per_batch),
            concurrent_batches: o.concurrent_batches.or(plan.concurrent_batches),
            requests_per_minute: o.requests_per_minute.or(plan.requests_per_minute),
            requests_per_day: o.requests_per_day.or(plan.requests_per_day),
            monthly_renders: o.monthly_renders.or(plan.monthly_renders),
        }
    }

    /// Simulated time per rendered item, already scaled; zero without a plan or `render_seconds`.
    pub fn render_latency(&self) -> Duration {
        let seconds = self.render_seconds.unwrap_or(if self.plan.is_some() {
            Plan::RENDER_SECONDS
        } else {
            0.0
        });
        scaled(seconds, self.time_scale)
    }
}

/// `seconds * scale` as a `Duration`; negative, NaN or absurd values become zero.
pub(crate) fn scaled(seconds: f64, scale: f64) -> Duration {
    Duration::try_from_secs_f64(seconds * scale).unwrap_or(Duration::ZERO)
}

/// A subscription that exists from start-up, so local runs and tests know its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresetSubscription {
    pub event: String,
    pub target_url: String,
    pub secret: String,
}

/// Per-key token bucket (`per_minute` capacity, refilled evenly) plus an optional daily cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub per_day: Option<u64>,
}

impl RateLimit {
    /// Documented plan limits (docs overview): Free 60/min and 1,000/day.
    pub const FREE: RateLimit = RateLimit {
        per_minute: 60,
        per_day: Some(1_000),
    };
    pub const PRO: RateLimit = RateLimit {
        per_minute: 300,
        per_day: Some(10_000),
    };
    pub const BUSINESS: RateLimit = RateLimit {
        per_minute: 1_000,
        per_day: Some(100_000),
    };
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "free" => Ok(Self::FREE),
            "pro" => Ok(Self::PRO),
            "business" => Ok(Self::BUSINESS),
            other => Err(format!(
                "unknown rate-limit plan `{other}` (expected free, pro or business)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_plan_and_no_overrides_means_no_limits_and_no_latency() {
        let config = Config::default();
        assert_eq!(config.effective_limits(), PlanLimits::default());
        assert_eq!(config.render_latency(), Duration::ZERO);
    }

    #[test]
    fn plans_carry_the_documented_limits_and_overrides_win() {
        let free = Plan::Free.limits();
        assert_eq!(
            (
                free.items_per_batch,
                free.concurrent_batches,
                free.requests_per_minute
            ),
            (Some(10), Some(1), Some(60))
        );
        let enterprise = Plan::Enterprise.limits();
        assert_eq!(
            (enterprise.items_per_batch, enterprise.concurrent_batches),
            (Some(10_000), None)
        );
        let config = Config {
            plan: Some(Plan::Business),
            limits: PlanLimits {
                concurrent_batches: Some(2),
                ..PlanLimits::default()
            },
            time_scale: 0.01,
            ..Config::default()
        };
        let limits = config.effective_limits();
        assert_eq!(
            (limits.items_per_batch, limits.concurrent_batches),
            (Some(1_000), Some(2))
        );
        assert_eq!(config.render_latency(), Duration::from_millis(10));
        assert_eq!("ENTERPRISE".parse::<Plan>(), Ok(Plan::Enterprise));
        assert!("gold".parse::<Plan>().is_err());
    }
}
