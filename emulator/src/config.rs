//! Emulator configuration: what to listen on, which keys and templates exist, and which limits apply.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::faults::Faults;
use crate::render::{RenderOptions, Template, TemplateStore};

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
    pub max_items_per_batch: usize,
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
        }
    }
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
