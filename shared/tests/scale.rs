//! A job of any size on one machine: `SCALE_ROWS` rows (20,000 by default; `scripts/scale` runs
//! 1,000,000) through the real steps — ingest, submit, batch completion, the manifest — with the
//! local adapters (a directory object store, the in-memory store and queue) and a Pictify that
//! accepts and completes every batch at once. No `render.completed` is sent, so every row ends
//! `rendered_url_missing` and the manifest's URL lookups find nothing: the run measures the
//! pipeline, not a store of a million render records (DynamoDB holds those).
//!
//! Prints wall times and peak RSS: for the whole run, and for the manifest step alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shared::domain::{JobStatus, ObjectRef};
use shared::local::{FsObjectStore, MemoryAlerts, MemoryJobStore, MemoryQueue};
use shared::pictify::PictifyError;
use shared::pictify::wire::{
    BatchAccepted, BatchItemStatus, BatchRenderRequest, BatchResults, BatchStatus,
};
use shared::pipeline::{IngestOutcome, Pipeline, SubmitOutcome};
use shared::ports::{JobLedger, PictifyApi, SystemClock};
use shared::secret::Secret;
use shared::settings::Settings;

/// Accepts every batch and reports every item rendered.
#[derive(Default)]
struct InstantPictify {
    sizes: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl PictifyApi for InstantPictify {
    async fn list_subscriptions(
        &self,
    ) -> Result<Vec<shared::pictify::wire::Subscription>, PictifyError> {
        Ok(Vec::new())
    }

    async fn render_batch(
        &self,
        _template: &str,
        request: &BatchRenderRequest,
        key: &str,
    ) -> Result<BatchAccepted, PictifyError> {
        let id = format!("batch_{key}");
        let items = request.variable_sets.len() as u32;
        self.sizes.lock().unwrap().insert(id.clone(), items);
        Ok(BatchAccepted {
            batch_id: id,
            status: Some(BatchStatus::Pending),
            total_items: Some(items),
            message: None,
        })
    }

    async fn get_batch_results(&self, batch_id: &str) -> Result<BatchResults, PictifyError> {
        let items = self
            .sizes
            .lock()
            .unwrap()
            .get(batch_id)
            .copied()
            .unwrap_or(0);
        Ok(BatchResults {
            batch_id: batch_id.into(),
            status: BatchStatus::Completed,
            progress: 100.0,
            total_items: items,
            completed_items: items,
            failed_items: 0,
            results: (0..items)
                .map(|index| BatchItemStatus {
                    index,
                    success: true,
                    variables: vec![],
                    error: None,
                })
                .collect(),
            errors: vec![],
            created_at: None,
            started_at: None,
            completed_at: None,
        })
    }
}

/// Peak resident set size in MiB since the process started or [`reset_peak`] (Linux).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Starts a new peak at the current RSS (`/proc/self/clear_refs`, Linux ≥ 4.0).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A blog-card CSV of `rows` rows of ~250 bytes (an excerpt with a comma, quoted).
fn write_csv(path: &std::path::Path, rows: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "title,author,publishDate,excerpt").unwrap();
    let excerpt = "A story about batches, rows and images that all arrive ".repeat(3);
    for i in 0..rows {
        writeln!(
            out,
            "Post number {i},Author {},2026-01-{:02},\"{excerpt}{i}\"",
            i % 977,
            i % 28 + 1
        )
        .unwrap();
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_any_size_ends_with_one_manifest_line_per_row_in_bounded_memory() {
    let rows: u64 = std::env::var("SCALE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(FsObjectStore::new(dir.path().to_path_buf()));
    let upload = ObjectRef {
        bucket: "data".into(),
        key: "uploads/tmpl_blog_card/scale.csv".into(),
    };
    let started = Instant::now();
    write_csv(&objects.path_of(&upload).unwrap(), rows);
    let bytes = std::fs::metadata(objects.path_of(&upload).unwrap())
        .unwrap()
        .len();
    let generated_in = started.elapsed();

    let store = Arc::new(MemoryJobStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let pipeline = Pipeline {
        store: store.clone(),
        objects: objects.clone(),
        queue: queue.clone(),
        pictify: Arc::new(InstantPictify::default()),
        alerts: Arc::new(MemoryAlerts::new()),
        clock: Arc::new(SystemClock),
        settings: Settings::default(),
        webhook_secrets: vec![Secret::new("whsec_scale")],
        outputs: Default::default(),
    };
    let baseline = peak_rss_mib();

    // Ingest, with a submitter draining the queue as it fills (as Lambda's would).
    let started = Instant::now();
    let submitter = tokio::spawn({
        let (pipeline, queue) = (pipeline.clone(), queue.clone());
        async move {
            let mut submitted = 0u64;
            let mut idle_since = Instant::now();
            loop {
                match queue.pop() {
                    Some(message) => {
                        let outcome = pipeline.submit(&message).await.unwrap();
                        assert!(
                            matches!(outcome, SubmitOutcome::Submitted { .. }),
                            "{outcome:?}"
                        );
                        submitted += 1;
                        idle_since = Instant::now();
                    }
                    None if idle_since.elapsed() > Duration::from_secs(2) => return submitted,
                    None => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
    });
    let outcome = pipeline.ingest(&upload, None).await.unwrap();
    let ingested_in = started.elapsed();
    let IngestOutcome::Ingested { job, counters } = outcome else {
        panic!("expected Ingested, got {outcome:?}");
    };
    assert_eq!((counters.rows, counters.rejected), (rows, 0));
    let submitted = submitter.await.unwrap();
    assert_eq!(submitted, counters.chunks);
    let submitted_in = started.elapsed() - ingested_in;

    // Every batch completes (the reconciler's poll, as if every batch.completed was lost); the
    // last completion finishes the job and writes its manifest.
    let started = Instant::now();
    pipeline.reconcile_one(&job, Duration::ZERO).await.unwrap();
    let completed_in = started.elapsed();
    let finished = store.job(&job).await.unwrap().unwrap();
    assert_eq!(finished.status, JobStatus::Completed);
    let c = finished.counters;
    assert_eq!(
        (c.rows, c.rendered, c.failed, c.in_flight()),
        (rows, rows, 0, 0)
    );
    let whole_run_peak = peak_rss_mib();

    // The manifest step alone, again (it is idempotent), with its own peak.
    let reset = reset_peak();
    let before = peak_rss_mib();
    let started = Instant::now();
    let summary = pipeline.write_manifest(&finished).await.unwrap();
    let manifest_in = started.elapsed();
    let manifest_peak = peak_rss_mib();
    assert_eq!((summary.lines, summary.url_missing), (rows, rows));

    // One line per row, in order, each in one state (read as a stream: the file is big).
    let location = finished.manifest.unwrap();
    let jsonl = std::io::BufReader::new(
        std::fs::File::open(objects.path_of(&location.jsonl).unwrap()).unwrap(),
    );
    let mut expected = 0u64;
    for line in jsonl.lines() {
        let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        assert_eq!(line["row"], expected);
        assert_eq!(line["status"], "rendered_url_missing");
        expected += 1;
    }
    assert_eq!(expected, rows);
    let csv_lines = std::io::BufReader::new(
        std::fs::File::open(objects.path_of(&location.csv).unwrap()).unwrap(),
    )
    .lines()
    .count() as u64;
    assert_eq!(csv_lines, rows + 1, "header + one line per row");

    eprintln!(
        "scale: {rows} rows, {bytes} bytes generated in {generated_in:.1?}; ingest {ingested_in:.1?}, \
         submits done {submitted_in:.1?} later, every batch completed + manifest {completed_in:.1?}; \
         manifest alone {manifest_in:.1?} ({:.0} rows/s); peak RSS {baseline} MiB at start, \
         {whole_run_peak} MiB for the whole run, manifest step {before} -> {manifest_peak} MiB \
         (peak reset: {reset})",
        rows as f64 / manifest_in.as_secs_f64()
    );
    assert!(whole_run_peak <= 256, "whole run peak {whole_run_peak} MiB");
    if reset {
        assert!(
            manifest_peak.saturating_sub(before) <= 128,
            "the manifest step grew RSS from {before} to {manifest_peak} MiB"
        );
    }
}
