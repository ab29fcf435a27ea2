//! The ledger: what the emulator accepted, rendered, billed and delivered, for tests to audit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shared::pictify::wire::BatchStatus;

/// Snapshot served at `GET /_emulator/ledger` and by `RunningEmulator::ledger()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// Every authenticated-or-not `POST /templates/{uid}/batch-render` that reached the server.
    pub submit_requests: u64,
    /// Batches created, in creation order (an idempotent replay creates none).
    pub batches_accepted: Vec<AcceptedBatch>,
    /// Submits answered from the idempotency store.
    pub replays: u64,
    pub items_rendered: u64,
    pub items_failed: u64,
    /// Render credits metered (one per rendered item, at render time).
    pub renders_billed: u64,
    pub deliveries: DeliveryCounts,
    /// Non-2xx answers to submits, by status code.
    pub rejected: BTreeMap<String, u64>,
    /// The most batches pending or processing at the same moment.
    #[serde(default)]
    pub max_batches_in_flight: u64,
    /// Time-weighted mean of the batches pending or processing, from the first accepted batch
    /// to the last one (while the client still had work to send; the drain after the last
    /// submit is left out). 0 with fewer than two batches accepted.
    #[serde(default)]
    pub mean_batches_in_flight: f64,
    /// 429 answers (any route) by cause.
    #[serde(default)]
    pub throttled: ThrottleCounts,
    /// Items rendered past the monthly renders on a plan that allows overage (billed extra).
    #[serde(default)]
    pub overage_items: u64,
    /// Items rendered in the current calendar month (UTC), counted against `monthly_renders`.
    #[serde(default)]
    pub renders_this_month: u64,
}

/// 429s by cause: `rate` (requests per minute), `daily` (requests per day), `concurrency`
/// (too many batches in flight), `quota` (monthly renders used up, Free), `injected` (faults).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ThrottleCounts {
    pub rate: u64,
    pub daily: u64,
    pub concurrency: u64,
    pub quota: u64,
    pub injected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedBatch {
    pub batch_id: String,
    pub idempotency_key: Option<String>,
    pub template_id: String,
    pub total_items: u32,
    pub status: BatchStatus,
    pub rendered: u32,
    pub failed: u32,
    pub created_at: String,
}

/// Webhook delivery counters. `attempted` counts HTTP attempts (retries included); `acknowledged`
/// and `failed` count deliveries (a delivery fails once its retries are exhausted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryCounts {
    pub attempted: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

impl Ledger {
    /// How many batches were created under this idempotency key (a chunk must be exactly one).
    pub fn accepted_with_key(&self, key: &str) -> usize {
        self.batches_accepted
            .iter()
            .filter(|b| b.idempotency_key.as_deref() == Some(key))
            .count()
    }

    /// Submits rejected with this status code.
    pub fn rejected_with(&self, status: u16) -> u64 {
        self.rejected.get(&status.to_string()).copied().unwrap_or(0)
    }
}
