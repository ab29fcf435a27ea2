//! Fault injection: what to break, and deterministic dice so one seed always breaks the same things.
//!
//! Outcomes are never drawn from a shared RNG in arrival order (concurrency would reorder the
//! draws); each decision hashes (seed, a stable identity, the fault kind) into `[0, 1)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Fault rates in `[0, 1]`; everything off by default. Serialized camelCase (`submit429Rate`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Item error code → rate, e.g. `{"IMAGE_FETCH_FAILED": 0.03}`.
    pub item_failures: BTreeMap<String, f64>,
    #[serde(rename = "submit429Rate")]
    pub submit_429_rate: f64,
    /// The first N submit attempts answer 429 whatever their keys: a deterministic burst, for
    /// tests that must see one (rates roll per key, and keys change with every job).
    #[serde(rename = "submit429First")]
    pub submit_429_first: u32,
    #[serde(rename = "submit5xxRate")]
    pub submit_5xx_rate: f64,
    /// The batch is created and billed, but the answer comes `late_answer_delay_ms` later.
    pub submit_late_answer_rate: f64,
    pub late_answer_delay_ms: u64,
    pub webhook_duplicate_rate: f64,
    /// The delivery is never sent (the ledger counts it as dropped).
    pub webhook_drop_rate: f64,
    pub webhook_delay_rate: f64,
    pub webhook_delay_ms: u64,
    /// Held-back deliveries are released in shuffled order, possibly after `batch.completed`.
    pub webhook_reorder_rate: f64,
    pub render_latency_ms: u64,
}

impl Faults {
    /// Rejects rates outside `[0, 1]` and item-failure tables whose rates sum above 1.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("submit429Rate", self.submit_429_rate),
            ("submit5xxRate", self.submit_5xx_rate),
            ("submitLateAnswerRate", self.submit_late_answer_rate),
            ("webhookDuplicateRate", self.webhook_duplicate_rate),
            ("webhookDropRate", self.webhook_drop_rate),
            ("webhookDelayRate", self.webhook_delay_rate),
            ("webhookReorderRate", self.webhook_reorder_rate),
        ];
        let item_rates = self
            .item_failures
            .iter()
            .map(|(code, rate)| (code.as_str(), *rate));
        for (name, rate) in rates.into_iter().chain(item_rates) {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1 (got {rate})"));
            }
        }
        let total: f64 = self.item_failures.values().sum();
        if total > 1.0 + 1e-9 {
            return Err(format!(
                "itemFailures rates sum to {total}; at most 1 allowed"
            ));
        }
        Ok(())
    }

    /// The forced failure code for item `index` of the batch with `fingerprint`, if any. One die
    /// per item, split into consecutive ranges per code, so rates add up rather than overlap.
    pub(crate) fn item_failure(&self, seed: u64, fingerprint: &[u8], index: usize) -> Option<&str> {
        if self.item_failures.is_empty() {
            return None;
        }
        let roll = dice(
            seed,
            &[fingerprint, &(index as u64).to_le_bytes()],
            "item-failure",
        );
        let mut upper = 0.0;
        for (code, rate) in &self.item_failures {
            upper += rate;
            if roll < upper {
                return Some(code);
            }
        }
        None
    }
}

/// A deterministic number in `[0, 1)` for (seed, identity parts, fault kind).
pub(crate) fn dice(seed: u64, parts: &[&[u8]], kind: &str) -> f64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    for part in parts {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.update(kind.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// Message of an injected item failure, phrased like the real failure it imitates.
pub(crate) fn item_failure_message(code: &str) -> String {
    let what = match code {
        "IMAGE_FETCH_FAILED" => "could not load an external image",
        "RENDER_TIMEOUT" => "render exceeded its time budget",
        "INVALID_VARIABLE" => "a required variable is missing or invalid",
        "EXPRESSION_ERROR" => "a template expression failed to evaluate",
        "TEMPLATE_NOT_FOUND" => "template not found",
        _ => "item failed",
    };
    format!("{what} (injected fault)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_camel_case() {
        let faults: Faults = serde_json::from_str(
            r#"{"submit429Rate":0.5,"submit5xxRate":0.25,"itemFailures":{"RENDER_TIMEOUT":0.1}}"#,
        )
        .unwrap();
        assert_eq!(faults.submit_429_rate, 0.5);
        assert_eq!(faults.submit_5xx_rate, 0.25);
        assert_eq!(faults.item_failures["RENDER_TIMEOUT"], 0.1);
    }

    #[test]
    fn unknown_fault_names_are_rejected() {
        assert!(serde_json::from_str::<Faults>(r#"{"submit492Rate":0.5}"#).is_err());
    }

    #[test]
    fn dice_depend_on_seed_identity_and_kind() {
        let a = dice(1, &[b"key"], "x");
        assert_eq!(a, dice(1, &[b"key"], "x"));
        assert_ne!(a, dice(2, &[b"key"], "x"));
        assert_ne!(a, dice(1, &[b"kez"], "x"));
        assert_ne!(a, dice(1, &[b"key"], "y"));
        assert!((0.0..1.0).contains(&a));
    }

    #[test]
    fn item_failure_rate_is_roughly_honoured() {
        let faults = Faults {
            item_failures: BTreeMap::from([("RENDER_TIMEOUT".into(), 0.2)]),
            ..Faults::default()
        };
        let failed = (0..10_000)
            .filter(|i| faults.item_failure(7, b"batch", *i).is_some())
            .count();
        assert!((1_700..2_300).contains(&failed), "{failed}");
    }

    #[test]
    fn out_of_range_rates_are_invalid() {
        let faults = Faults {
            webhook_drop_rate: 1.5,
            ..Faults::default()
        };
        assert!(faults.validate().unwrap_err().contains("webhookDropRate"));
    }
}
