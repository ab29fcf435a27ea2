//! Shared emulator state: batches, subscriptions, idempotency records and meters behind one lock.
//!
//! A single `std::sync::Mutex` is plenty for an emulator and keeps every multi-step update
//! (check idempotency, check quota, create batch) atomic. It is never held across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use shared::pictify::wire::{BatchStatus, Format, Subscription, VariableSet};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::config::{Config, PlanLimits};
use crate::faults::Faults;
use crate::ledger::{AcceptedBatch, Ledger};
use crate::render::{Renderer, Template};

pub(crate) struct AppState {
    pub config: Config,
    /// Base of image URLs handed out in `render.completed`.
    pub public_base_url: String,
    pub templates: HashMap<String, Arc<Template>>,
    pub renderer: Arc<Renderer>,
    /// Webhook client: built once, no proxy (only 127.0.0.1 may be contacted in tests).
    pub http: reqwest::Client,
    pub tasks: Tasks,
    pub shutdown: watch::Receiver<bool>,
    /// The limits in force (`Config::effective_limits`), resolved once at start.
    pub limits: PlanLimits,
    /// Per-key request limits, from the plan/overrides or the older `rate_limit` field.
    pub rate: Option<crate::ratelimit::Limit>,
    /// Most items a batch may carry.
    pub items_cap: usize,
    /// Simulated render time per item (already time-scaled).
    pub latency: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    pub faults: Faults,
    pub batches: HashMap<String, Batch>,
    /// Batch ids in creation order (for the ledger).
    pub batch_order: Vec<String>,
    /// (API key, Idempotency-Key) → stored answer.
    pub idempotency: HashMap<(String, String), StoredAnswer>,
    /// Submit attempts per request identity, so a retry rolls fresh submit-fault dice.
    pub submit_attempts: HashMap<String, u64>,
    /// Submit attempts of any identity (for `submit429First`).
    pub submits_seen: u64,
    pub subscriptions: BTreeMap<String, SubscriptionRecord>,
    pub subscription_seq: u64,
    /// Ordered delivery queues by target URL (see `webhooks`).
    pub queues: HashMap<String, mpsc::UnboundedSender<Delivery>>,
    /// Counters; `batches_accepted` is filled in by `ledger_snapshot`.
    pub ledger: Ledger,
    pub quota: Option<u64>,
    pub rate: HashMap<String, crate::ratelimit::Bucket>,
    /// The (year, month) `ledger.renders_this_month` counts.
    month: Option<(i32, u32)>,
    ids: Option<StdRng>,
}

impl Inner {
    /// `prefix` + 24 random hex digits.
    pub fn new_id(&mut self, prefix: &str) -> String {
        format!("{prefix}{}", self.random_hex(12))
    }

    /// Batches pending or processing (what the concurrent-batch limit counts).
    pub fn in_flight(&self) -> usize {
        self.batches
            .values()
            .filter(|b| !b.status.is_terminal())
            .count()
    }

    /// Renders this calendar month (UTC), starting the count afresh when the month turns.
    pub fn renders_this_month(&mut self) -> u64 {
        let now = Utc::now();
        let month = Some((now.year(), now.month()));
        if self.month != month {
            self.month = month;
            self.ledger.renders_this_month = 0;
        }
        self.ledger.renders_this_month
    }

    pub fn random_hex(&mut self, bytes: usize) -> String {
        let rng = self.ids.get_or_insert_with(StdRng::from_os_rng);
        let mut buf = vec![0u8; bytes];
        rng.fill_bytes(&mut buf);
        hex::encode(buf)
    }
}

/// One event for one subscription; duplicates and retries keep the same `id`.
/// Queued per target URL in [`Inner::queues`]; sent by `webhooks`.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub id: String,
    pub subscription: String,
    pub event: &'static str,
    pub body: Bytes,
}

pub(crate) struct SubscriptionRecord {
    /// The public object (never carries the secret).
    pub subscription: Subscription,
    pub secret: String,
    /// Creation order, for stable listing.
    pub seq: u64,
}

pub(crate) struct StoredAnswer {
    pub fingerprint: [u8; 32],
    pub status: StatusCode,
    pub body: Vec<u8>,
    pub stored_at: Instant,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Item {
    Pending,
    Running,
    Rendered,
    Failed { code: String, message: String },
    Skipped,
}

pub(crate) struct Batch {
    pub id: String,
    pub template: Arc<Template>,
    pub format: Format,
    pub quality: f64,
    pub concurrency: usize,
    pub variable_sets: Arc<Vec<VariableSet>>,
    pub items: Vec<Item>,
    pub status: BatchStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Hash of (template, request body): the stable identity for fault dice.
    pub fingerprint: [u8; 32],
    pub idempotency_key: Option<String>,
}

impl Batch {
    pub fn count(&self, pred: impl Fn(&Item) -> bool) -> u32 {
        self.items.iter().filter(|i| pred(i)).count() as u32
    }

    pub fn rendered(&self) -> u32 {
        self.count(|i| matches!(i, Item::Rendered))
    }

    pub fn failed(&self) -> u32 {
        self.count(|i| matches!(i, Item::Failed { .. }))
    }
}

impl AppState {
    pub fn new(
        config: Config,
        public_base_url: String,
        renderer: Arc<Renderer>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let mut templates: HashMap<String, Arc<Template>> = HashMap::new();
        for id in config.templates.ids() {
            if let Some(t) = config.templates.get(id) {
                templates.insert(id.to_owned(), t);
            }
        }
        for t in &config.extra_templates {
            templates.insert(t.id.clone(), Arc::new(t.clone()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.webhook_timeout)
            .no_proxy()
            .build()?;
        let limits = config.effective_limits();
        let rate = if limits.requests_per_minute.is_some() || limits.requests_per_day.is_some() {
            let older = config.rate_limit;
            Some(crate::ratelimit::Limit {
                per_minute: limits.requests_per_minute.or(older.map(|r| r.per_minute)),
                per_day: limits.requests_per_day.or(older.and_then(|r| r.per_day)),
            })
        } else {
            config.rate_limit.map(Into::into)
        };
        let items_cap = limits.items_per_batch.unwrap_or(config.max_items_per_batch);
        let latency = config.render_latency();
        let inner = Inner {
            faults: config.faults.clone(),
            quota: config.quota,
            ids: None,
            ..Inner::default()
        };
        Ok(Self {
            config,
            public_base_url,
            templates,
            renderer,
            http,
            tasks: Tasks::default(),
            shutdown,
            limits,
            rate,
            items_cap,
            latency,
            inner: Mutex::new(inner),
        })
    }

    /// The state lock; a panic elsewhere never makes the emulator unusable.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn ledger_snapshot(&self) -> Ledger {
        let inner = self.lock();
        let mut ledger = inner.ledger.clone();
        ledger.batches_accepted = inner
            .batch_order
            .iter()
            .filter_map(|id| inner.batches.get(id))
            .map(|b| AcceptedBatch {
                batch_id: b.id.clone(),
                idempotency_key: b.idempotency_key.clone(),
                template_id: b.template.id.clone(),
                total_items: b.items.len() as u32,
                status: b.status,
                rendered: b.rendered(),
                failed: b.failed(),
                created_at: iso(b.created_at),
            })
            .collect();
        ledger
    }

    /// Resolves when the emulator is shutting down.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            // An error means the sender is gone, which also means shutdown.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Background tasks (batch workers, webhook deliveries), aborted together on shutdown.
#[derive(Default)]
pub(crate) struct Tasks {
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        // Reap finished tasks so the set does not grow without bound.
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    pub fn abort_all(&self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}

pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}
