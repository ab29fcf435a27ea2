//! Pictify's plans and their documented limits (../shared/pictify-api.md §6): the emulator
//! enforces them, the pipeline paces itself by them (`settings::Pacing`).

use std::str::FromStr;

/// Pictify's plans (docs: api-reference/batch, api-reference/overview, dashboard/usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    Free,
    Pro,
    Business,
    Enterprise,
}

impl Plan {
    /// Default render time per item once a plan is chosen (a modest HTML render; tune with
    /// `render_seconds`).
    pub const RENDER_SECONDS: f64 = 1.0;

    pub fn name(self) -> &'static str {
        match self {
            Plan::Free => "Free",
            Plan::Pro => "Pro",
            Plan::Business => "Business",
            Plan::Enterprise => "Enterprise",
        }
    }

    /// The documented limits. Enterprise's request limits and monthly renders are "custom":
    /// unlimited here unless overridden.
    pub fn limits(self) -> PlanLimits {
        let (items, concurrent, per_minute, per_day, monthly) = match self {
            Plan::Free => (10, Some(1), Some(60), Some(1_000), Some(100)),
            Plan::Pro => (100, Some(3), Some(300), Some(10_000), Some(5_000)),
            Plan::Business => (1_000, Some(10), Some(1_000), Some(100_000), Some(50_000)),
            Plan::Enterprise => (10_000, None, None, None, None),
        };
        PlanLimits {
            items_per_batch: Some(items),
            concurrent_batches: concurrent,
            requests_per_minute: per_minute,
            requests_per_day: per_day,
            monthly_renders: monthly,
        }
    }

    /// Paid plans keep rendering past the monthly renders (billed as overage); Free stops.
    pub fn allows_overage(self) -> bool {
        self != Plan::Free
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Plan {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "free" => Ok(Plan::Free),
            "pro" => Ok(Plan::Pro),
            "business" => Ok(Plan::Business),
            "enterprise" => Ok(Plan::Enterprise),
            other => Err(format!(
                "unknown plan `{other}` (expected free, pro, business or enterprise)"
            )),
        }
    }
}

/// Account limits; `None` = unlimited. As `Config::limits`, each `Some` overrides the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanLimits {
    pub items_per_batch: Option<usize>,
    /// Batches pending or processing at once (across all keys: one account).
    pub concurrent_batches: Option<u32>,
    /// Per API key, as a token bucket refilled evenly over the minute.
    pub requests_per_minute: Option<u32>,
    /// Per API key, reset at midnight UTC.
    pub requests_per_day: Option<u64>,
    /// Rendered items per calendar month (UTC) before the hard limit (Free) or overage (paid).
    pub monthly_renders: Option<u64>,
}
