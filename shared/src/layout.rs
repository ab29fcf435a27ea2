//! Where things live in the bucket, and how an upload's key and sidecar become a job spec.
//!
//! `uploads/<templateId>/<name>.<csv|json|jsonl>` is a dataset; an optional sidecar
//! `uploads/<templateId>/<name>.<ext>.job.json` (uploaded first) overrides the defaults.
//! Results go to `results/<templateId>/<name>.<ext>.results.{csv,jsonl}` — outside the upload
//! prefix, so our own writes never trigger ingest.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::dataset::{DatasetFormat, RowRules};
use crate::domain::{
    AbortAction, AbortRule, DeliverySpec, JobId, JobSpec, ManifestLocation, ObjectRef,
};
use crate::pictify::wire::Format;
use crate::settings::Settings;

pub const SIDECAR_SUFFIX: &str = ".job.json";

/// What an object key under the upload prefix turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum UploadKind {
    Dataset {
        template_id: String,
        format: DatasetFormat,
    },
    /// Not ours to ingest, with the reason (logged).
    Ignored(String),
}

pub fn classify(key: &str, settings: &Settings) -> UploadKind {
    let Some(rest) = key.strip_prefix(&settings.upload_prefix) else {
        return UploadKind::Ignored(format!(
            "outside the upload prefix `{}`",
            settings.upload_prefix
        ));
    };
    if key.ends_with(SIDECAR_SUFFIX) {
        return UploadKind::Ignored("a job sidecar, read when its dataset arrives".into());
    }
    let Some((template_id, name)) = rest.split_once('/') else {
        return UploadKind::Ignored(format!(
            "expected {}<templateId>/<file>",
            settings.upload_prefix
        ));
    };
    if template_id.is_empty() || name.is_empty() || name.ends_with('/') {
        return UploadKind::Ignored(format!(
            "expected {}<templateId>/<file>",
            settings.upload_prefix
        ));
    }
    match DatasetFormat::from_key(name) {
        Some(format) => UploadKind::Dataset {
            template_id: template_id.to_owned(),
            format,
        },
        None => UploadKind::Ignored("not a .csv, .json or .jsonl file".into()),
    }
}

pub fn sidecar_of(upload: &ObjectRef) -> ObjectRef {
    ObjectRef {
        bucket: upload.bucket.clone(),
        key: format!("{}{SIDECAR_SUFFIX}", upload.key),
    }
}

/// The sidecar's shape: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sidecar {
    pub template_id: Option<String>,
    pub format: Option<Format>,
    pub quality: Option<f64>,
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub required: Vec<String>,
    /// At most this many of the job's batches at Pictify at once.
    pub max_in_flight: Option<u32>,
    /// The abort rule (`AbortRule`): stop when the job's failure rate passes this (0 to 1) ...
    pub max_failure_rate: Option<f64>,
    /// ... or more rows than this have failed,
    pub max_failed_rows: Option<u64>,
    /// judging the rate once this many rows ended (default `AbortRule::DEFAULT_AFTER_ROWS`),
    pub abort_after_rows: Option<u64>,
    /// by pausing (the default) or cancelling the rest.
    pub on_abort: Option<AbortAction>,
    /// Render every row of a re-upload, even those an earlier job rendered (default: only
    /// the rows whose template or variables changed).
    #[serde(default)]
    pub render_all: bool,
    /// Copy each image to your own bucket: `{"bucket", "prefix", "keyPattern"}`.
    pub delivery: Option<DeliverySpec>,
}

/// Builds the job spec from the key's template id, the sidecar (if any) and the defaults.
/// A job sidecar larger than this fails its job (a real one is a few hundred bytes).
pub const MAX_SIDECAR_BYTES: usize = 64 * 1024;

pub fn job_spec(
    template_id: &str,
    sidecar: Option<&[u8]>,
    settings: &Settings,
) -> Result<JobSpec, String> {
    let sidecar: Sidecar = match sidecar {
        Some(bytes) if bytes.len() > MAX_SIDECAR_BYTES => {
            return Err(format!(
                "job sidecar is {} bytes, over the {MAX_SIDECAR_BYTES}-byte limit",
                bytes.len()
            ));
        }
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| format!("job sidecar is not valid: {e}"))?
        }
        None => Sidecar::default(),
    };
    if let Some(q) = sidecar.quality
        && !(0.1..=1.0).contains(&q)
    {
        return Err(format!("job sidecar: quality {q} is outside 0.1..=1"));
    }
    if let Some(c) = sidecar.concurrency
        && !(1..=10).contains(&c)
    {
        return Err(format!("job sidecar: concurrency {c} is outside 1..=10"));
    }
    if sidecar.max_in_flight == Some(0) {
        return Err("job sidecar: maxInFlight must be at least 1".into());
    }
    let abort = abort_rule(&sidecar)?;
    if let Some(delivery) = &sidecar.delivery {
        check_delivery(delivery, settings)?;
    }
    Ok(JobSpec {
        template_variables: None,
        max_in_flight: sidecar.max_in_flight,
        abort,
        template_id: sidecar
            .template_id
            .unwrap_or_else(|| template_id.to_owned()),
        format: sidecar.format.unwrap_or(settings.default_format),
        quality: sidecar.quality.or(settings.default_quality),
        concurrency: sidecar.concurrency,
        mapping: sidecar.mapping,
        required: sidecar.required,
        // Wanted unless `renderAll`; ingest keeps it only for a re-upload (`Pipeline::ingest`).
        incremental: !sidecar.render_all,
        delivery: sidecar.delivery,
    })
}

/// A delivery the job could never make is refused when the job is created, not row by row.
fn check_delivery(delivery: &DeliverySpec, settings: &Settings) -> Result<(), String> {
    if delivery.bucket.trim().is_empty() {
        return Err("job sidecar: delivery.bucket is empty".into());
    }
    if let Some(allowed) = &settings.delivery_bucket
        && *allowed != delivery.bucket
    {
        return Err(format!(
            "job sidecar: delivery.bucket {:?} is not this stack's delivery bucket {allowed:?} \
             (template parameter DeliveryBucket): its functions may not write there",
            delivery.bucket
        ));
    }
    if delivery.prefix.starts_with('/') {
        return Err(format!(
            "job sidecar: delivery.prefix {:?} starts with '/' (S3 keys do not)",
            delivery.prefix
        ));
    }
    crate::naming::KeyPattern::parse(&delivery.key_pattern)
        .map(drop)
        .map_err(|e| format!("job sidecar: delivery.keyPattern: {e}"))
}

/// The sidecar's abort rule, if it sets a limit.
fn abort_rule(sidecar: &Sidecar) -> Result<Option<AbortRule>, String> {
    if let Some(rate) = sidecar.max_failure_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return Err(format!(
            "job sidecar: maxFailureRate {rate} is outside 0..=1 (0.1 is 10%)"
        ));
    }
    if sidecar.max_failure_rate.is_none() && sidecar.max_failed_rows.is_none() {
        if sidecar.abort_after_rows.is_some() || sidecar.on_abort.is_some() {
            return Err(
                "job sidecar: abortAfterRows / onAbort need maxFailureRate or maxFailedRows".into(),
            );
        }
        return Ok(None);
    }
    Ok(Some(AbortRule {
        max_failure_rate: sidecar.max_failure_rate,
        max_failed_rows: sidecar.max_failed_rows,
        after_rows: sidecar
            .abort_after_rows
            .unwrap_or(AbortRule::DEFAULT_AFTER_ROWS),
        action: sidecar.on_abort.unwrap_or_default(),
    }))
}

/// Where a job's manifest goes: `results/<path under uploads/>.results.{csv,jsonl}`. A job whose
/// upload was overwritten before its manifest was written (`superseded_by` the newer upload)
/// writes `….<job id>.results.…` instead: the usual name belongs to the newer upload's job, which
/// an older job finishing later must not overwrite.
pub fn manifest_location(
    upload: &ObjectRef,
    superseded: Option<&JobId>,
    settings: &Settings,
) -> ManifestLocation {
    let relative = upload
        .key
        .strip_prefix(&settings.upload_prefix)
        .unwrap_or(&upload.key);
    let job = superseded.map(|id| format!(".{id}")).unwrap_or_default();
    let at = |suffix: &str| ObjectRef {
        bucket: upload.bucket.clone(),
        key: format!(
            "{}{relative}{job}.results.{suffix}",
            settings.results_prefix
        ),
    };
    ManifestLocation {
        csv: at("csv"),
        jsonl: at("jsonl"),
    }
}

/// Where the reconciler caches a template's variable definitions for ingest.
pub fn template_variables_ref(bucket: &str, template_id: &str, settings: &Settings) -> ObjectRef {
    ObjectRef {
        bucket: bucket.to_owned(),
        key: format!(
            "{}templates/{template_id}.variables.json",
            settings.work_prefix
        ),
    }
}

pub fn chunk_payload_ref(bucket: &str, job: &JobId, label: &str, settings: &Settings) -> ObjectRef {
    ObjectRef {
        bucket: bucket.to_owned(),
        key: format!("{}{job}/{label}.json", settings.work_prefix),
    }
}

/// What the deliver step did for a chunk (`pipeline::deliver`), beside its payload.
pub fn chunk_delivery_ref(
    bucket: &str,
    job: &JobId,
    label: &str,
    settings: &Settings,
) -> ObjectRef {
    ObjectRef {
        bucket: bucket.to_owned(),
        key: format!("{}{job}/{label}.delivery.json", settings.work_prefix),
    }
}

/// The rules the reader applies for a spec; the manifest re-reads the file with the same rules as
/// ingest, so row numbers and rejection reasons come out identical.
pub fn row_rules(spec: &JobSpec) -> RowRules {
    RowRules {
        mapping: spec.mapping.clone(),
        required: spec.required.clone(),
        variables: spec.template_variables.as_deref().map(std::sync::Arc::from),
        ..RowRules::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csv_under_a_template_folder_is_a_dataset() {
        let s = Settings::default();
        assert_eq!(
            classify("uploads/tmpl_blog_card/my posts+more.csv", &s),
            UploadKind::Dataset {
                template_id: "tmpl_blog_card".into(),
                format: DatasetFormat::Csv
            }
        );
    }

    #[test]
    fn sidecars_results_and_stray_files_are_ignored() {
        let s = Settings::default();
        for key in [
            "uploads/t/x.csv.job.json",
            "results/t/x.csv.results.csv",
            "uploads/x.csv",
            "uploads/t/readme.txt",
        ] {
            assert!(matches!(classify(key, &s), UploadKind::Ignored(_)), "{key}");
        }
    }

    #[test]
    fn a_delivery_is_checked_when_the_job_is_created() {
        let mut s = Settings::default();
        let sidecar = |pattern: &str, bucket: &str| {
            format!(
                r#"{{"delivery":{{"bucket":"{bucket}","prefix":"cards/","keyPattern":"{pattern}"}}}}"#
            )
        };
        let spec = job_spec(
            "t",
            Some(sidecar("{slug(title)}-{row}.{ext}", "mine").as_bytes()),
            &s,
        )
        .expect("a good delivery");
        let delivery = spec.delivery.expect("kept on the spec");
        assert_eq!(
            (delivery.bucket.as_str(), delivery.prefix.as_str()),
            ("mine", "cards/")
        );
        assert!(spec.incremental, "wanted unless renderAll");

        let bad = job_spec(
            "t",
            Some(sidecar("{slug(title}.png", "mine").as_bytes()),
            &s,
        )
        .expect_err("an unclosed placeholder");
        assert!(bad.contains("delivery.keyPattern"), "{bad}");
        let empty =
            job_spec("t", Some(sidecar("{row}", " ").as_bytes()), &s).expect_err("an empty bucket");
        assert!(empty.contains("delivery.bucket is empty"), "{empty}");

        s.delivery_bucket = Some("stack-cards".into());
        let other = job_spec("t", Some(sidecar("{row}", "mine").as_bytes()), &s)
            .expect_err("not the stack's bucket");
        assert!(
            other.contains("DeliveryBucket") && other.contains("stack-cards"),
            "{other}"
        );
        let all = job_spec("t", Some(br#"{"renderAll": true}"#), &s).expect("renderAll");
        assert!(!all.incremental);
    }

    #[test]
    fn the_sidecar_overrides_defaults_and_bad_values_are_named() {
        let s = Settings::default();
        let spec = job_spec(
            "t",
            Some(br#"{"format":"jpeg","quality":0.8,"mapping":{"Name":"title"}}"#),
            &s,
        )
        .unwrap();
        assert_eq!(spec.format, Format::Jpeg);
        assert_eq!(spec.mapping.get("Name").map(String::as_str), Some("title"));
        assert!(
            job_spec("t", Some(br#"{"quality":3}"#), &s)
                .unwrap_err()
                .contains("quality")
        );
        assert!(
            job_spec("t", Some(br#"{"colour":"red"}"#), &s)
                .unwrap_err()
                .contains("colour")
        );
    }

    #[test]
    fn results_land_outside_the_upload_prefix() {
        let s = Settings::default();
        let up = ObjectRef {
            bucket: "b".into(),
            key: "uploads/t/x.csv".into(),
        };
        assert_eq!(
            manifest_location(&up, None, &s).csv.key,
            "results/t/x.csv.results.csv"
        );
        let older = JobId::for_upload("b", "uploads/t/x.csv", "v1");
        assert_eq!(
            manifest_location(&up, Some(&older), &s).jsonl.key,
            format!("results/t/x.csv.{older}.results.jsonl")
        );
    }
}
