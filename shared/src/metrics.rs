//! Business metrics as CloudWatch Embedded Metric Format (EMF): one JSON line on stdout per call,
//! which CloudWatch Logs turns into metrics in the `PictifyBatch` namespace with no API call,
//! no extra permission and no latency on the hot path.
//!
//! Lines are written only inside a Lambda runtime (`AWS_LAMBDA_FUNCTION_NAME` is set, which is
//! also the `Function` dimension): the CLI and the tests share the pipeline, and their stdout
//! belongs to them.

use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The CloudWatch namespace of every metric this crate emits.
pub const NAMESPACE: &str = "PictifyBatch";
/// The dimension key; its value is the Lambda function name.
pub const FUNCTION_DIMENSION: &str = "Function";

/// CloudWatch units used by the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Percent,
    None,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Percent => "Percent",
            Unit::None => "None",
        }
    }
}

/// One value: (name, value, unit).
pub type Metric<'a> = (&'a str, f64, Unit);

/// Writes one EMF line for `metrics`, with `properties` (e.g. `jobId`) as searchable log fields.
/// A no-op outside Lambda. Never fails: a metric is not worth failing a step for.
pub fn emit(metrics: &[Metric<'_>], properties: &[(&str, &str)]) {
    let Some(function) = function_name() else {
        return;
    };
    let line = render(
        now_ms(),
        NAMESPACE,
        Some((FUNCTION_DIMENSION, function)),
        metrics,
        properties,
    );
    if line.is_empty() {
        return;
    }
    // One write of the whole line under the lock, so log lines from other tasks cannot split it.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

/// Milliseconds from an RFC 3339 instant (e.g. a webhook's `renderedAt`) until now; `None` when it
/// does not parse.
pub fn millis_since(rfc3339: &str) -> Option<f64> {
    let then = chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()?
        .timestamp_millis();
    Some(now_ms().saturating_sub(then).max(0) as f64)
}

/// The EMF document as one line ending in `\n`, or an empty string when no metric has a finite
/// value. Non-finite values are dropped (JSON cannot carry them), and so are properties whose
/// names collide with a metric, the dimension or `_aws`.
pub fn render(
    timestamp_ms: i64,
    namespace: &str,
    dimension: Option<(&str, &str)>,
    metrics: &[Metric<'_>],
    properties: &[(&str, &str)],
) -> String {
    let metrics: Vec<&Metric<'_>> = metrics.iter().filter(|(_, v, _)| v.is_finite()).collect();
    if metrics.is_empty() {
        return String::new();
    }
    let mut out = String::with_capacity(160 + 48 * metrics.len());
    out.push_str("{\"_aws\":{\"Timestamp\":");
    out.push_str(&timestamp_ms.to_string());
    out.push_str(",\"CloudWatchMetrics\":[{\"Namespace\":");
    push_json_str(&mut out, namespace);
    out.push_str(",\"Dimensions\":[[");
    if let Some((key, _)) = dimension {
        push_json_str(&mut out, key);
    }
    out.push_str("]],\"Metrics\":[");
    for (i, (name, _, unit)) in metrics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"Name\":");
        push_json_str(&mut out, name);
        out.push_str(",\"Unit\":\"");
        out.push_str(unit.as_str());
        out.push_str("\"}");
    }
    out.push_str("]}]}");
    if let Some((key, value)) = dimension {
        push_field(&mut out, key);
        push_json_str(&mut out, value);
    }
    for (name, value, _) in &metrics {
        push_field(&mut out, name);
        push_number(&mut out, *value);
    }
    let taken = |key: &str| {
        key == "_aws"
            || dimension.is_some_and(|(d, _)| d == key)
            || metrics.iter().any(|(m, _, _)| *m == key)
    };
    for (key, value) in properties.iter().filter(|(key, _)| !taken(key)) {
        push_field(&mut out, key);
        push_json_str(&mut out, value);
    }
    out.push_str("}\n");
    out
}

fn function_name() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .ok()
            .filter(|n| !n.is_empty())
    })
    .as_deref()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn push_field(out: &mut String, key: &str) {
    out.push(',');
    push_json_str(out, key);
    out.push(':');
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whole numbers print without a fraction (`250`, not `250.0`), as CloudWatch shows them.
fn push_number(out: &mut String, value: f64) {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        out.push_str(&(value as i64).to_string());
    } else {
        out.push_str(&value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const T: i64 = 1_764_331_200_000;

    fn parsed(line: &str) -> Value {
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "one line: {line:?}"
        );
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn document_has_the_exact_emf_shape() {
        let line = render(
            T,
            NAMESPACE,
            Some(("Function", "ingest")),
            &[
                ("RowsIngested", 250.0, Unit::Count),
                ("RowsRejected", 3.0, Unit::Count),
            ],
            &[("jobId", "job_0123")],
        );
        let expected = json!({
            "_aws": {
                "Timestamp": T,
                "CloudWatchMetrics": [{
                    "Namespace": "PictifyBatch",
                    "Dimensions": [["Function"]],
                    "Metrics": [{"Name": "RowsIngested", "Unit": "Count"}, {"Name": "RowsRejected", "Unit": "Count"}]
                }]
            },
            "Function": "ingest",
            "RowsIngested": 250,
            "RowsRejected": 3,
            "jobId": "job_0123"
        });
        assert_eq!(parsed(&line), expected);
    }

    #[test]
    fn whole_numbers_print_without_a_fraction() {
        let line = render(
            T,
            NAMESPACE,
            None,
            &[("RowsIngested", 250.0, Unit::Count)],
            &[],
        );
        assert!(line.contains("\"RowsIngested\":250}"), "{line}");
    }

    #[test]
    fn fractions_keep_their_digits() {
        let line = render(
            T,
            NAMESPACE,
            None,
            &[("FailureRate", 12.5, Unit::Percent)],
            &[],
        );
        assert_eq!(parsed(&line)["FailureRate"], json!(12.5));
    }

    #[test]
    fn no_dimension_publishes_an_empty_dimension_set() {
        let line = render(
            T,
            NAMESPACE,
            None,
            &[("WebhookLag", 40.0, Unit::Milliseconds)],
            &[],
        );
        assert_eq!(
            parsed(&line)["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
    }

    #[test]
    fn non_finite_values_are_dropped() {
        let line = render(
            T,
            NAMESPACE,
            None,
            &[("A", f64::NAN, Unit::None), ("B", 1.0, Unit::None)],
            &[],
        );
        let doc = parsed(&line);
        assert_eq!(
            doc["_aws"]["CloudWatchMetrics"][0]["Metrics"],
            json!([{"Name": "B", "Unit": "None"}])
        );
        assert!(doc.get("A").is_none());
    }

    #[test]
    fn nothing_to_report_renders_nothing() {
        assert_eq!(
            render(
                T,
                NAMESPACE,
                None,
                &[("A", f64::INFINITY, Unit::None)],
                &[("jobId", "j")]
            ),
            ""
        );
    }

    #[test]
    fn properties_cannot_overwrite_metrics_or_the_envelope() {
        let line = render(
            T,
            NAMESPACE,
            Some(("Function", "webhook")),
            &[("RowsFailed", 2.0, Unit::Count)],
            &[
                ("RowsFailed", "x"),
                ("_aws", "x"),
                ("Function", "x"),
                ("batchId", "batch_1"),
            ],
        );
        let doc = parsed(&line);
        assert_eq!(
            (doc["RowsFailed"].clone(), doc["Function"].clone()),
            (json!(2), json!("webhook"))
        );
        assert_eq!(doc["batchId"], json!("batch_1"));
        assert_eq!(line.matches("\"RowsFailed\":").count(), 1);
    }

    #[test]
    fn strings_are_escaped() {
        let line = render(
            T,
            NAMESPACE,
            None,
            &[("A", 1.0, Unit::Count)],
            &[("note", "a\"b\\c\nd\u{1}")],
        );
        assert_eq!(parsed(&line)["note"], json!("a\"b\\c\nd\u{1}"));
    }

    #[test]
    fn lag_is_measured_from_an_rfc3339_instant() {
        let lag = millis_since("2020-01-01T00:00:00Z").unwrap();
        assert!(lag > 1.0e11, "{lag}");
        assert_eq!(millis_since("yesterday"), None);
        assert_eq!(millis_since("2999-01-01T00:00:00Z"), Some(0.0));
    }
}
