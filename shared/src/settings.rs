//! Pipeline settings: one struct, read once from the environment, with the same variable names in
//! `template.yaml`, local runs and the README.

use std::time::Duration;

use crate::pictify::plan::Plan;
use crate::pictify::wire::Format;

/// Everything the pipeline steps need to know that is not a port.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Keys under this prefix are datasets: `<UPLOAD_PREFIX><templateId>/<name>.<csv|json|jsonl>`.
    pub upload_prefix: String,
    /// Results manifests: `<RESULTS_PREFIX><path below the upload prefix>.results.{csv,jsonl}`.
    pub results_prefix: String,
    /// Chunk payloads: `<WORK_PREFIX><jobId>/<chunk>.json`.
    pub work_prefix: String,
    pub default_format: Format,
    pub default_quality: Option<f64>,
    /// Alert when a batch's failed/total is above this (the batch guide's 5%).
    pub failure_alert_threshold: f64,
    /// Render attempts per row, including the first.
    pub max_attempts: u32,
    /// A submit whose outcome is unknown is not retried before this much time has passed.
    pub submit_grace: Duration,
    /// Delay before retrying a 429 without Retry-After, or a 5xx.
    pub retry_delay: Duration,
    pub webhook_max_body_bytes: usize,
    pub signature_tolerance: Duration,
    /// A submitted batch with no `batch.completed` after this long is polled by the reconciler
    /// (and a chunk still queued this long is sent again).
    pub stuck_after: Duration,
    /// A job not finished this long after its upload raises one `job_deadline_exceeded` alert.
    pub job_deadline: Duration,
    /// The stack's own webhook URL (`WEBHOOK_URL`): the reconciler checks that Pictify's
    /// subscriptions to it are alive for every event the stack needs. `None`: not checked.
    pub webhook_url: Option<String>,
    /// `DELIVERY_BUCKET`: the one bucket a deployed stack may copy images to (its functions'
    /// policies name it); a job whose sidecar names another is refused at ingest. `None`: any
    /// bucket (a local run, or tests).
    pub delivery_bucket: Option<String>,
    /// What happens to rows Pictify rendered whose `render.completed` (their URL) never came.
    pub missing_url_policy: MissingUrlPolicy,
    /// How hard the pipeline may drive the customer's Pictify account.
    pub pacing: Pacing,
    /// An ingest invocation hands the rest of the upload to a fresh one this long before its
    /// deadline (Lambda's remaining time).
    pub ingest_handoff_margin: Duration,
    /// A submitter invocation starts its next chunk message only with this much time left before
    /// its deadline (the first always runs); the rest of its batch goes back to the queue (as
    /// batch item failures) for the next invocation. One submit's client timeout (30 s) and the
    /// store calls around it.
    pub submit_margin: Duration,
    /// An ingest invocation hands the rest on after reading this many rows (`None`: only the
    /// deadline does). For tests and for spreading one huge upload over many invocations.
    pub ingest_handoff_rows: Option<u64>,
    /// A long step (an ingest piece, a manifest writer) that has shown no progress for this long
    /// has died (no invocation lives past 15 minutes): the reconciler starts it again.
    pub step_stall: Duration,
    /// The manifest files go out in parts of at least this size (S3 refuses parts under 5 MiB
    /// but the last); both send a part at the same row, which is a checkpoint.
    pub manifest_part_bytes: usize,
    /// An upload larger than this fails its job before a row is read (`UPLOAD_TOO_LARGE`).
    pub max_upload_bytes: u64,
    /// How long Pictify keeps a rendered image (7 days). Render records live as long: a URL older
    /// than that points at nothing.
    pub image_retention: Duration,
}

/// The pace the customer's Pictify plan allows: chunk size, batches at Pictify at once, and
/// requests a minute. Set by `PICTIFY_PLAN` and refined by the explicit `PICTIFY_MAX_*` /
/// `PICTIFY_REQUESTS_PER_MINUTE` variables; unset, nothing is limited (chunks of 100).
#[derive(Debug, Clone, PartialEq)]
pub struct Pacing {
    pub plan: Option<Plan>,
    /// Rows per chunk: min(100, the plan's items per batch).
    pub chunk_rows: usize,
    /// Batches pending or processing at Pictify at once, across every job and submitter
    /// (`None`: unlimited, no window is kept).
    pub max_concurrent_batches: Option<u32>,
    /// Requests a minute to Pictify across the whole stack (`None`: no budget is kept).
    pub requests_per_minute: Option<u32>,
    /// A window slot is a lease: a holder that died without releasing it loses it after this.
    pub slot_lease: Duration,
}

/// Rows per chunk when the plan allows more: a chunk is one SQS message (≤ 256 KiB) and one
/// payload; 100 keeps both small and is the seed's documented batch size.
pub const MAX_CHUNK_ROWS: usize = 100;

impl Pacing {
    /// No limits: chunks of 100, no window, no request budget (the seed's behaviour).
    pub fn unlimited() -> Self {
        Pacing {
            plan: None,
            chunk_rows: MAX_CHUNK_ROWS,
            max_concurrent_batches: None,
            requests_per_minute: None,
            slot_lease: Duration::from_secs(1800),
        }
    }

    /// A plan's documented limits.
    pub fn for_plan(plan: Plan) -> Self {
        let limits = plan.limits();
        Pacing {
            plan: Some(plan),
            chunk_rows: limits
                .items_per_batch
                .unwrap_or(MAX_CHUNK_ROWS)
                .clamp(1, MAX_CHUNK_ROWS),
            max_concurrent_batches: limits.concurrent_batches,
            requests_per_minute: limits.requests_per_minute,
            ..Pacing::unlimited()
        }
    }

    /// One line for logs and the CLI: `Pro: chunks of 100, 3 batches at once, 300 requests/min`.
    pub fn describe(&self) -> String {
        let plan = self
            .plan
            .map_or("no plan".to_owned(), |p| p.name().to_owned());
        let window = self
            .max_concurrent_batches
            .map_or("unlimited batches at once".to_owned(), |n| {
                format!("{n} batch{} at once", if n == 1 { "" } else { "es" })
            });
        let rate = self
            .requests_per_minute
            .map_or("no request budget".to_owned(), |n| {
                format!("{n} requests/min")
            });
        format!("{plan}: chunks of {}, {window}, {rate}", self.chunk_rows)
    }
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing::unlimited()
    }
}

/// Rows reported successful by the batch poll but without a recorded URL (a lost webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingUrlPolicy {
    /// Finish the job; the rows show as `rendered_url_missing` in status and the manifest.
    #[default]
    Leave,
    /// Once no URL has arrived for `stuck_after` since the job's last submit, render those rows
    /// again (once per job), then finish with whatever arrived.
    Rerender,
}

impl std::str::FromStr for MissingUrlPolicy {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "leave" => Ok(MissingUrlPolicy::Leave),
            "rerender" => Ok(MissingUrlPolicy::Rerender),
            other => Err(format!("`{other}` is not a policy (leave or rerender)")),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upload_prefix: "uploads/".into(),
            results_prefix: "results/".into(),
            work_prefix: "work/".into(),
            default_format: Format::Png,
            default_quality: None,
            failure_alert_threshold: 0.05,
            max_attempts: 3,
            submit_grace: Duration::from_secs(120),
            retry_delay: Duration::from_secs(30),
            webhook_max_body_bytes: WEBHOOK_BODY_CAP,
            signature_tolerance: Duration::from_secs(300),
            stuck_after: Duration::from_secs(900),
            job_deadline: Duration::from_secs(6 * 3600),
            webhook_url: None,
            delivery_bucket: None,
            missing_url_policy: MissingUrlPolicy::Leave,
            pacing: Pacing::unlimited(),
            ingest_handoff_margin: Duration::from_secs(60),
            ingest_handoff_rows: None,
            submit_margin: Duration::from_secs(35),
            step_stall: Duration::from_secs(960),
            image_retention: Duration::from_secs(7 * 86_400),
            max_upload_bytes: 100 * 1024 * 1024 * 1024,
            manifest_part_bytes: 8 * 1024 * 1024,
        }
    }
}

/// S3's largest object (5 TiB): the most `MAX_UPLOAD_BYTES` can allow.
pub const MAX_S3_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;

/// Lambda's cap on a Function URL request (6 MiB): no webhook larger than this reaches us.
pub const WEBHOOK_BODY_CAP: usize = 6 * 1024 * 1024;

/// Room in a `render.completed` for everything but the row's variables: event name, timestamp,
/// image URL and id, template id, JSON punctuation.
const RENDER_COMPLETED_ENVELOPE: usize = 16 * 1024;

/// The largest `render.completed` Pictify can send for a row of `max_row_bytes`: it echoes the
/// row's variables as JSON, and escaping turns one input byte into at most 6 (a control
/// character as `\u00XX`), plus the envelope. The webhook accepts at least this much, so a
/// validly signed delivery is never refused for its size.
pub fn largest_render_completed(max_row_bytes: usize) -> usize {
    max_row_bytes * 6 + RENDER_COMPLETED_ENVELOPE
}

/// A setting that is present but unusable; names the variable.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}: {problem}")]
pub struct SettingError {
    pub name: &'static str,
    pub problem: String,
}

impl Settings {
    /// Reads the optional variables, keeping defaults for those not set.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        let mut s = Settings::default();
        let prefix = |name: &'static str, value: String| -> Result<String, SettingError> {
            if value.is_empty() || value.starts_with('/') {
                return Err(SettingError {
                    name,
                    problem: "must be a non-empty key prefix without a leading /".into(),
                });
            }
            Ok(if value.ends_with('/') {
                value
            } else {
                format!("{value}/")
            })
        };
        if let Some(v) = get("UPLOAD_PREFIX") {
            s.upload_prefix = prefix("UPLOAD_PREFIX", v)?;
        }
        if let Some(v) = get("RESULTS_PREFIX") {
            s.results_prefix = prefix("RESULTS_PREFIX", v)?;
        }
        if let Some(v) = get("WORK_PREFIX") {
            s.work_prefix = prefix("WORK_PREFIX", v)?;
        }
        if s.results_prefix.starts_with(&s.upload_prefix)
            || s.work_prefix.starts_with(&s.upload_prefix)
        {
            return Err(SettingError {
                name: "RESULTS_PREFIX",
                problem: "results and work prefixes must be outside UPLOAD_PREFIX, or our own writes would trigger ingest".into(),
            });
        }
        if let Some(v) = get("DEFAULT_FORMAT") {
            s.default_format = v.parse().map_err(|problem| SettingError {
                name: "DEFAULT_FORMAT",
                problem,
            })?;
        }
        if let Some(v) = get("DEFAULT_QUALITY") {
            s.default_quality = Some(parse_in("DEFAULT_QUALITY", &v, 0.1, 1.0)?);
        }
        if let Some(v) = get("FAILURE_ALERT_THRESHOLD") {
            s.failure_alert_threshold = parse_in("FAILURE_ALERT_THRESHOLD", &v, 0.0, 1.0)?;
        }
        if let Some(v) = get("MAX_ATTEMPTS") {
            s.max_attempts = parse_in("MAX_ATTEMPTS", &v, 1.0, 10.0)? as u32;
        }
        if let Some(v) = get("SUBMIT_GRACE_SECONDS") {
            s.submit_grace =
                Duration::from_secs(parse_in("SUBMIT_GRACE_SECONDS", &v, 1.0, 86_400.0)? as u64);
        }
        if let Some(v) = get("RETRY_DELAY_SECONDS") {
            s.retry_delay =
                Duration::from_secs(parse_in("RETRY_DELAY_SECONDS", &v, 0.0, 43_200.0)? as u64);
        }
        if let Some(v) = get("STUCK_AFTER_SECONDS") {
            s.stuck_after =
                Duration::from_secs(parse_in("STUCK_AFTER_SECONDS", &v, 0.0, 604_800.0)? as u64);
        }
        if let Some(v) = get("JOB_DEADLINE_SECONDS") {
            s.job_deadline = Duration::from_secs(parse_in(
                "JOB_DEADLINE_SECONDS",
                &v,
                60.0,
                2_592_000.0,
            )? as u64);
        }
        if let Some(v) = get("MISSING_URL_POLICY") {
            s.missing_url_policy = v.parse().map_err(|problem| SettingError {
                name: "MISSING_URL_POLICY",
                problem,
            })?;
        }
        s.pacing = pacing_from(&get)?;
        if let Some(v) = get("INGEST_HANDOFF_MARGIN_SECONDS") {
            s.ingest_handoff_margin =
                Duration::from_secs(
                    parse_in("INGEST_HANDOFF_MARGIN_SECONDS", &v, 5.0, 600.0)? as u64
                );
        }
        if let Some(v) = get("SUBMITTER_MARGIN_SECONDS") {
            s.submit_margin =
                Duration::from_secs(parse_in("SUBMITTER_MARGIN_SECONDS", &v, 1.0, 600.0)? as u64);
        }
        if let Some(v) = get("INGEST_HANDOFF_ROWS").filter(|v| !v.trim().is_empty()) {
            s.ingest_handoff_rows = Some(parse_in("INGEST_HANDOFF_ROWS", &v, 100.0, 1e12)? as u64);
        }
        if let Some(v) = get("IMAGE_RETENTION_DAYS") {
            s.image_retention = Duration::from_secs(
                (parse_in("IMAGE_RETENTION_DAYS", &v, 1.0, 365.0)? * 86_400.0) as u64,
            );
        }
        if let Some(v) = get("STEP_STALL_SECONDS") {
            s.step_stall =
                Duration::from_secs(parse_in("STEP_STALL_SECONDS", &v, 0.0, 86_400.0)? as u64);
        }
        if let Some(v) = get("WEBHOOK_MAX_BODY_BYTES") {
            // Below this, the largest allowed row's render.completed would be refused.
            let least = largest_render_completed(crate::dataset::RowRules::default().max_row_bytes);
            s.webhook_max_body_bytes = parse_in(
                "WEBHOOK_MAX_BODY_BYTES",
                &v,
                least as f64,
                WEBHOOK_BODY_CAP as f64,
            )? as usize;
        }
        s.webhook_url = get("WEBHOOK_URL").filter(|url| !url.trim().is_empty());
        s.delivery_bucket = get("DELIVERY_BUCKET").filter(|b| !b.trim().is_empty());
        if let Some(v) = get("MAX_UPLOAD_BYTES") {
            s.max_upload_bytes =
                parse_in("MAX_UPLOAD_BYTES", &v, 1.0, MAX_S3_OBJECT as f64)? as u64;
        }
        Ok(s)
    }
}

/// `PICTIFY_PLAN` first, then each explicit limit over it. `0` or `unlimited` lifts a limit.
fn pacing_from(get: &impl Fn(&str) -> Option<String>) -> Result<Pacing, SettingError> {
    let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let mut pacing = match set("PICTIFY_PLAN") {
        Some(v) => Pacing::for_plan(v.trim().parse().map_err(|problem| SettingError {
            name: "PICTIFY_PLAN",
            problem,
        })?),
        None => Pacing::unlimited(),
    };
    if let Some(v) = set("PICTIFY_MAX_BATCH_ITEMS") {
        let items = parse_in("PICTIFY_MAX_BATCH_ITEMS", &v, 1.0, 10_000.0)? as usize;
        pacing.chunk_rows = items.min(MAX_CHUNK_ROWS);
    }
    if let Some(v) = set("PICTIFY_MAX_CONCURRENT_BATCHES") {
        pacing.max_concurrent_batches = limit("PICTIFY_MAX_CONCURRENT_BATCHES", &v, 1_000.0)?;
    }
    if let Some(v) = set("PICTIFY_REQUESTS_PER_MINUTE") {
        pacing.requests_per_minute = limit("PICTIFY_REQUESTS_PER_MINUTE", &v, 1_000_000.0)?;
    }
    if let Some(v) = set("SLOT_LEASE_SECONDS") {
        pacing.slot_lease =
            Duration::from_secs(parse_in("SLOT_LEASE_SECONDS", &v, 60.0, 86_400.0)? as u64);
    }
    Ok(pacing)
}

/// A count limit where `0` or `unlimited` means none.
fn limit(name: &'static str, raw: &str, max: f64) -> Result<Option<u32>, SettingError> {
    if raw.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let value = parse_in(name, raw, 0.0, max)? as u32;
    Ok((value > 0).then_some(value))
}

fn parse_in(name: &'static str, raw: &str, min: f64, max: f64) -> Result<f64, SettingError> {
    let value: f64 = raw.trim().parse().map_err(|_| SettingError {
        name,
        problem: format!("`{raw}` is not a number"),
    })?;
    if !(min..=max).contains(&value) {
        return Err(SettingError {
            name,
            problem: format!("{value} is outside {min}..={max}"),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_lookup(|_| None).unwrap();
        assert_eq!(s.upload_prefix, "uploads/");
        assert_eq!(s.failure_alert_threshold, 0.05);
    }

    #[test]
    fn the_webhook_accepts_the_render_completed_of_the_largest_allowed_row() {
        let s = Settings::default();
        let largest = largest_render_completed(crate::dataset::RowRules::default().max_row_bytes);
        assert!(
            largest <= s.webhook_max_body_bytes && s.webhook_max_body_bytes <= WEBHOOK_BODY_CAP
        );
        // A smaller limit would refuse such a delivery: it is not accepted as a setting.
        let err =
            Settings::from_lookup(|n| (n == "WEBHOOK_MAX_BODY_BYTES").then(|| "262144".into()))
                .unwrap_err();
        assert!(err.to_string().contains("WEBHOOK_MAX_BODY_BYTES"), "{err}");
        let s =
            Settings::from_lookup(|n| (n == "MAX_UPLOAD_BYTES").then(|| "1000".into())).unwrap();
        assert_eq!(s.max_upload_bytes, 1_000);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err =
            Settings::from_lookup(|n| (n == "FAILURE_ALERT_THRESHOLD").then(|| "lots".into()))
                .unwrap_err();
        assert!(err.to_string().contains("FAILURE_ALERT_THRESHOLD"));
    }

    #[test]
    fn the_missing_url_policy_is_read_and_checked() {
        let s = Settings::from_lookup(|n| (n == "MISSING_URL_POLICY").then(|| "Rerender".into()))
            .unwrap();
        assert_eq!(s.missing_url_policy, MissingUrlPolicy::Rerender);
        let err = Settings::from_lookup(|n| (n == "MISSING_URL_POLICY").then(|| "retry".into()))
            .unwrap_err();
        assert!(err.to_string().contains("MISSING_URL_POLICY"));
    }

    #[test]
    fn a_plan_sets_the_pace_and_explicit_limits_refine_it() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |n: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == n)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let unset = Settings::from_lookup(|_| None).unwrap().pacing;
        assert_eq!(unset, Pacing::unlimited());
        let free = Settings::from_lookup(vars(&[("PICTIFY_PLAN", "free")]))
            .unwrap()
            .pacing;
        assert_eq!(
            (
                free.chunk_rows,
                free.max_concurrent_batches,
                free.requests_per_minute
            ),
            (10, Some(1), Some(60))
        );
        let business = Settings::from_lookup(vars(&[
            ("PICTIFY_PLAN", "Business"),
            ("PICTIFY_MAX_CONCURRENT_BATCHES", "4"),
            ("PICTIFY_REQUESTS_PER_MINUTE", "unlimited"),
        ]))
        .unwrap()
        .pacing;
        assert_eq!(
            (
                business.chunk_rows,
                business.max_concurrent_batches,
                business.requests_per_minute
            ),
            (100, Some(4), None)
        );
        let err = Settings::from_lookup(vars(&[("PICTIFY_PLAN", "gold")])).unwrap_err();
        assert!(err.to_string().contains("PICTIFY_PLAN"), "{err}");
        let err = Settings::from_lookup(vars(&[("PICTIFY_MAX_BATCH_ITEMS", "0")])).unwrap_err();
        assert!(err.to_string().contains("PICTIFY_MAX_BATCH_ITEMS"), "{err}");
        assert_eq!(
            Pacing::for_plan(Plan::Pro).describe(),
            "Pro: chunks of 100, 3 batches at once, 300 requests/min"
        );
    }

    #[test]
    fn results_inside_the_upload_prefix_are_refused() {
        let err =
            Settings::from_lookup(|n| (n == "RESULTS_PREFIX").then(|| "uploads/results".into()))
                .unwrap_err();
        assert!(err.to_string().contains("trigger ingest"));
    }
}
