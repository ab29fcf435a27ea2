//! Alerts: which events deserve an operator's attention, decided by pure functions (the 5% batch
//! rule is `batch_failure_alert`), and sending them, best effort.
//!
//! Each alert fires once: the batch alert is recorded with the chunk's completion (exactly one
//! caller applies it), the pause alert with the pause, the deadline alert with a claim.

use std::collections::HashMap;

use tracing::error;

use super::Pipeline;
use crate::domain::{AbortAction, Counters, Job, JobId, JobStatus};
use crate::ports::{Alert, AlertKind};

/// Error codes listed in an alert, most frequent first.
const TOP_ERRORS: usize = 5;

/// Failed items over all items of a batch (0 for an empty one).
pub fn failure_rate(failed: usize, size: usize) -> f64 {
    if size == 0 {
        0.0
    } else {
        failed as f64 / size as f64
    }
}

/// The per-batch rule from the batch guide: alert when more than `threshold` (default 5%) of a
/// batch's items failed, retried ones included, naming the most frequent error codes.
pub fn batch_failure_alert(
    job: &JobId,
    batch_id: &str,
    failed: usize,
    size: usize,
    threshold: f64,
    code_counts: HashMap<String, u64>,
) -> Option<Alert> {
    let rate = failure_rate(failed, size);
    if rate <= threshold {
        return None;
    }
    Some(Alert {
        message: format!(
            "Batch {batch_id} of job {job} had a {:.1}% failure rate ({failed} of {size} items)",
            rate * 100.0
        ),
        batch_id: Some(batch_id.to_owned()),
        failure_rate: Some(rate),
        top_errors: top_errors(code_counts),
        ..Alert::about(AlertKind::BatchHighFailureRate, job)
    })
}

/// Pictify refused a submission for the whole account: nothing more is submitted until resumed.
pub fn submissions_paused_alert(job: &JobId, reason: &str) -> Alert {
    Alert {
        message: format!(
            "Pictify refused a submission ({reason}); all submissions are paused until an operator resumes them"
        ),
        ..Alert::about(AlertKind::SubmissionsPaused, job)
    }
}

/// A chunk ended without rendering: Pictify refused it (`SubmitRejected`) or it could not be
/// submitted at all (`ChunkUnsubmittable`). Every row of it failed with `code`.
pub fn chunk_failed_alert(
    kind: AlertKind,
    job: &JobId,
    chunk: &str,
    rows: u64,
    code: &str,
    error: &str,
) -> Alert {
    let what = match kind {
        AlertKind::SubmitRejected => "Pictify rejected chunk",
        _ => "Could not submit chunk",
    };
    Alert {
        message: format!("{what} {chunk} ({rows} rows failed): {error}"),
        failure_rate: Some(1.0),
        top_errors: vec![(code.to_owned(), rows)],
        ..Alert::about(kind, job)
    }
}

/// A job still unfinished `age` seconds after its upload, past `deadline` seconds.
pub fn deadline_alert(job: &Job, age: i64, deadline: i64) -> Alert {
    let c = job.counters;
    Alert {
        message: format!(
            "Job {} ({}) is still {} after {} minutes (deadline {} minutes): {} of {} rows in flight, {} rendered, {} failed",
            job.id,
            job.source,
            job.status.as_str(),
            age / 60,
            deadline / 60,
            c.in_flight(),
            c.rows,
            c.rendered,
            c.failed
        ),
        failure_rate: Some(c.failure_rate()),
        counters: Some(c),
        ..Alert::about(AlertKind::JobDeadlineExceeded, &job.id)
    }
}

/// A job reached its final status; `manifest` is where its results are.
pub fn job_finished_alert(
    job: &Job,
    status: JobStatus,
    manifest: &str,
    top: Vec<(String, u64)>,
) -> Alert {
    let c: Counters = job.counters;
    Alert {
        message: format!(
            "Job {} ({}) {}: {} rows, {} rendered, {} failed, {} rejected{}. Results: {manifest}",
            job.id,
            job.source,
            status.as_str(),
            c.rows,
            c.rendered,
            c.failed,
            c.rejected,
            match c.cancelled {
                0 => String::new(),
                n => format!(", {n} cancelled"),
            },
        ),
        failure_rate: Some(c.failure_rate()),
        top_errors: top,
        counters: Some(c),
        ..Alert::about(AlertKind::JobFinished, &job.id)
    }
}

/// A job passed its abort rule (`why`) and is paused or cancelled (`action`).
pub fn job_aborted_alert(job: &Job, action: AbortAction, why: &str) -> Alert {
    let c = job.counters;
    let next = match action {
        AbortAction::Pause => format!(
            "paused: nothing more is submitted until `pictify-batch resume {}` (or `cancel`)",
            job.id
        ),
        AbortAction::Cancel => "cancelled: the rows not rendered end `cancelled`".to_owned(),
    };
    Alert {
        message: format!(
            "Job {} ({}) {next}. {why}. So far {} rendered, {} failed of {} rows",
            job.id, job.source, c.rendered, c.failed, c.rows
        ),
        failure_rate: Some(c.failure_rate()),
        counters: Some(c),
        ..Alert::about(AlertKind::JobAborted, &job.id)
    }
}

/// Error codes by count, most frequent first (ties by name), the first few.
pub(crate) fn top_errors(code_counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut top: Vec<(String, u64)> = code_counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP_ERRORS);
    top
}

impl Alert {
    /// An alert of `kind` about `job`, its message and details still to be filled in.
    fn about(kind: AlertKind, job: &JobId) -> Alert {
        Alert {
            kind,
            message: String::new(),
            job: Some(job.to_string()),
            batch_id: None,
            failure_rate: None,
            top_errors: Vec::new(),
            counters: None,
        }
    }
}

impl Pipeline {
    /// Alerts are best effort: a failed alert is logged, never allowed to undo the work it reports.
    pub(crate) async fn alert(&self, alert: Alert) {
        if let Err(e) = self.alerts.send(&alert).await {
            error!(kind = %alert.kind, error = %e, "alert could not be sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::for_upload("bucket", "uploads/tmpl/data.csv", "v1")
    }

    #[test]
    fn a_batch_at_exactly_the_threshold_raises_no_alert() {
        assert!(batch_failure_alert(&job(), "b1", 5, 100, 0.05, HashMap::new()).is_none());
    }

    #[test]
    fn a_batch_over_the_threshold_alerts_with_its_top_codes_most_frequent_first() {
        let codes = HashMap::from([
            ("RENDER_TIMEOUT".to_owned(), 2),
            ("IMAGE_FETCH_FAILED".to_owned(), 4),
        ]);
        let alert = batch_failure_alert(&job(), "b1", 6, 100, 0.05, codes).expect("over 5%");
        assert_eq!(alert.kind, AlertKind::BatchHighFailureRate);
        assert_eq!(alert.batch_id.as_deref(), Some("b1"));
        assert_eq!(alert.failure_rate, Some(0.06));
        assert_eq!(alert.top_errors[0], ("IMAGE_FETCH_FAILED".to_owned(), 4));
        assert!(alert.message.contains("6.0% failure rate (6 of 100 items)"));
    }

    #[test]
    fn an_empty_batch_never_alerts() {
        assert!(batch_failure_alert(&job(), "b1", 0, 0, 0.0, HashMap::new()).is_none());
    }

    #[test]
    fn alert_kinds_keep_their_wire_names() {
        let json = serde_json::to_string(&AlertKind::JobDeadlineExceeded).unwrap_or_default();
        assert_eq!(json, "\"job_deadline_exceeded\"");
        assert_eq!(AlertKind::BatchHighFailureRate, "batch_high_failure_rate");
    }
}
