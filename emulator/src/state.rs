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
    /// The limits in force: resolved from the config at start (see `starting_limits`), replaced
    /// by `AppState::change_limits`. Read under the lock at every check, never copied for later.
    pub limits: PlanLimits,
    /// Time-weighted in-flight count, for `ledger.mean_batches_in_flight`.
    pub in_flight_clock: InFlightClock,
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

    /// The per-key request limits in force, if any (`None` = requests are not limited).
    pub fn rate_limit(&self) -> Option<crate::ratelimit::Limit> {
        let limit = crate::ratelimit::Limit {
            per_minute: self.limits.requests_per_minute,
            per_day: self.limits.requests_per_day,
        };
        (limit.per_minute.is_some() || limit.per_day.is_some()).then_some(limit)
    }

    /// Call after anything that may change the in-flight count (a batch accepted, finished or
    /// cancelled), under the same lock, so the time-weighted mean and the maximum stay exact.
    pub fn in_flight_changed(&mut self) {
        let in_flight = self.in_flight() as u64;
        self.in_flight_clock.changed(Instant::now(), in_flight);
        self.ledger.max_batches_in_flight = self.ledger.max_batches_in_flight.max(in_flight);
    }

    /// Call once a batch has been created: an in-flight change that also moves the end of the
    /// window `mean_batches_in_flight` is measured over.
    pub fn batch_accepted(&mut self) {
        self.in_flight_changed();
        self.in_flight_clock.accepted();
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

/// The integral of the in-flight count over time, kept incrementally: each change adds the
/// previous count times the time it lasted. Taking a snapshot of the integral at every acceptance
/// lets the mean cover exactly the window from the first to the last accepted batch, when the
/// client still had work to send; the tail after the last submit (draining) is left out.
#[derive(Debug, Default)]
pub(crate) struct InFlightClock {
    /// Batches pending or processing since `changed_at`.
    count: u64,
    changed_at: Option<Instant>,
    /// Batch-seconds in flight up to `changed_at`.
    integral: f64,
    first_accept: Option<Instant>,
    last_accept: Option<Instant>,
    /// `integral` at `last_accept`.
    integral_at_last_accept: f64,
}

impl InFlightClock {
    /// The in-flight count became `count` at `now`.
    pub fn changed(&mut self, now: Instant, count: u64) {
        if let Some(since) = self.changed_at {
            let lasted = now.saturating_duration_since(since).as_secs_f64();
            self.integral += self.count as f64 * lasted;
        }
        self.count = count;
        self.changed_at = Some(now);
    }

    /// A batch was accepted at the last `changed` instant.
    pub fn accepted(&mut self) {
        let Some(now) = self.changed_at else {
            return;
        };
        self.first_accept.get_or_insert(now);
        self.last_accept = Some(now);
        self.integral_at_last_accept = self.integral;
    }

    /// Mean batches in flight from the first to the last acceptance; 0 when fewer than two
    /// batches were accepted (or both at the same instant): an empty window has no mean.
    pub fn mean(&self) -> f64 {
        let (Some(first), Some(last)) = (self.first_accept, self.last_accept) else {
            return 0.0;
        };
        let window = last.saturating_duration_since(first).as_secs_f64();
        if window > 0.0 {
            self.integral_at_last_accept / window
        } else {
            0.0
        }
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
        let latency = config.render_latency();
        let inner = Inner {
            faults: config.faults.clone(),
            limits: starting_limits(&config),
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

    /// Applies `change` to the limits in force (under one lock, so concurrent changes compose)
    /// and returns the result. An absent items limit means the default cap, since every batch
    /// has one. A change of the per-minute request limit refills every key's bucket to the new
    /// capacity (the daily counts are kept), so the new limit applies from the next request.
    pub fn change_limits(&self, change: impl FnOnce(&mut PlanLimits)) -> PlanLimits {
        let mut inner = self.lock();
        let before = inner.limits;
        change(&mut inner.limits);
        let default_cap = self.config.max_items_per_batch;
        inner.limits.items_per_batch = inner.limits.items_per_batch.or(Some(default_cap));
        let per_minute_changed = inner.limits.requests_per_minute != before.requests_per_minute;
        if let Some(limit) = inner.rate_limit().filter(|_| per_minute_changed) {
            for bucket in inner.rate.values_mut() {
                bucket.refill(limit);
            }
        }
        inner.limits
    }

    pub fn ledger_snapshot(&self) -> Ledger {
        let inner = self.lock();
        let mut ledger = inner.ledger.clone();
        ledger.mean_batches_in_flight = inner.in_flight_clock.mean();
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

/// The limits at start: the plan and overrides (`Config::effective_limits`), the older
/// `rate_limit` where neither sets a request limit, and the default items cap where nothing sets
/// one.
fn starting_limits(config: &Config) -> PlanLimits {
    let limits = config.effective_limits();
    let older = config.rate_limit;
    PlanLimits {
        items_per_batch: Some(limits.items_per_batch.unwrap_or(config.max_items_per_batch)),
        requests_per_minute: limits.requests_per_minute.or(older.map(|r| r.per_minute)),
        requests_per_day: limits.requests_per_day.or(older.and_then(|r| r.per_day)),
        ..limits
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn the_mean_is_time_weighted_between_the_first_and_last_acceptance() {
        let t = Instant::now();
        let mut clock = InFlightClock::default();
        assert_eq!(clock.mean(), 0.0);
        clock.changed(t, 1);
        clock.accepted();
        assert_eq!(clock.mean(), 0.0, "one batch: an empty window");
        // One batch for 100 ms, two for 300 ms, then none for 100 ms, then the last submit.
        clock.changed(at(t, 100), 2);
        clock.accepted();
        clock.changed(at(t, 400), 0);
        clock.changed(at(t, 500), 1);
        clock.accepted();
        let expected = (1.0 * 0.1 + 2.0 * 0.3) / 0.5;
        assert!((clock.mean() - expected).abs() < 1e-9, "{}", clock.mean());
        // What happens after the last submit (draining) does not count.
        clock.changed(at(t, 5_000), 0);
        assert!((clock.mean() - expected).abs() < 1e-9, "{}", clock.mean());
    }
}
