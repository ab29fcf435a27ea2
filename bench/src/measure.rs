//! The measurements themselves. Each runs alone in a child process (`pictify-bench child …`) so
//! its peak RSS (VmHWM) is its own; it writes one JSON object of figures to a result file.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use shared::dataset::{DatasetFormat, DatasetReader, Encoded, RowRules};
use shared::domain::ObjectRef;
use shared::local::LogAlerts;
use shared::pipeline::{IngestOutcome, Pipeline, WebhookRequest};
use shared::ports::SystemClock;
use shared::secret::Secret;
use shared::settings::Settings;
use shared::signing;

use crate::data;
use crate::stubs::{
    NullQueue, NullStore, ReadOnlyObjects, STORE_READS, StubPictify, batch_fixture,
};

/// Figures a child hands back.
pub type Figures = Map<String, Value>;

/// Peak resident set of this process so far, from /proc (KiB).
pub fn peak_rss_kib() -> u64 {
    proc_status_kib(Path::new("/proc/self/status")).unwrap_or(0)
}

/// `VmHWM` of a process's status file (KiB); `None` once the process is gone.
pub fn proc_status_kib(status: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process (clock ticks of 1/100 s, the Linux default).
pub fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn finish(mut figures: Figures, started: Instant, cpu_before: f64) -> Figures {
    figures.insert("secs".into(), json!(started.elapsed().as_secs_f64()));
    figures.insert("cpu_secs".into(), json!(cpu_secs() - cpu_before));
    figures.insert("peak_rss_kib".into(), json!(peak_rss_kib()));
    figures
}

fn format_of(path: &Path) -> anyhow::Result<DatasetFormat> {
    let name = path.to_string_lossy();
    DatasetFormat::from_key(&name).with_context(|| format!("{name}: not a .csv or .jsonl file"))
}

/// The baseline: the `csv` crate into a reused `StringRecord` (UTF-8 checked), or serde_json per
/// line into a `Value`, touching every field.
pub fn raw_parse(path: &Path) -> anyhow::Result<Figures> {
    let (cpu, started) = (cpu_secs(), Instant::now());
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut rows, mut touched) = (0u64, 0u64);
    match format_of(path)? {
        DatasetFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().from_reader(file);
            let mut record = csv::StringRecord::new();
            while reader.read_record(&mut record)? {
                rows += 1;
                touched += record.iter().map(|f| f.len() as u64).sum::<u64>();
            }
        }
        _ => {
            let mut reader = BufReader::with_capacity(64 * 1024, file);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.trim().is_empty() {
                    let value: Value = serde_json::from_str(&line)?;
                    rows += 1;
                    touched += value.as_object().map_or(0, |o| o.len() as u64);
                }
                line.clear();
            }
        }
    }
    let mut figures = Figures::new();
    figures.insert("rows".into(), json!(rows));
    figures.insert("touched".into(), json!(touched));
    figures.insert("bytes".into(), json!(std::fs::metadata(path)?.len()));
    Ok(finish(figures, started, cpu))
}

/// The real ingest step, `Pipeline::ingest`, over the file with queue and store stubbed out.
/// `checked`: with the template's definitions cached (as the reconciler leaves them), so every
/// row is also checked against them.
pub fn pipeline_ingest(data_dir: &Path, name: &str, checked: bool) -> anyhow::Result<Figures> {
    let cache = data_dir
        .join(data::BUCKET)
        .join("work/templates/tmpl_blog_card.variables.json");
    if checked {
        let text = |name: &str| json!({"name": name, "required": true, "maxLength": 200});
        let definitions = json!({
            "templateId": "tmpl_blog_card",
            "fetchedAt": chrono::Utc::now().timestamp(),
            "variables": [
                text("title"), text("author"), text("publishDate"),
                {"name": "readingMinutes", "type": "number"},
            ],
        });
        std::fs::create_dir_all(cache.parent().context("cache folder")?)?;
        std::fs::write(&cache, serde_json::to_vec(&definitions)?)?;
    } else if cache.exists() {
        std::fs::remove_file(&cache)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let objects = Arc::new(ReadOnlyObjects::new(data_dir));
    let queue = Arc::new(NullQueue::default());
    let store = Arc::new(NullStore::default());
    let pipeline = Pipeline {
        store: store.clone(),
        objects: objects.clone(),
        queue: queue.clone(),
        pictify: Arc::new(StubPictify {
            items: 0,
            calls: Default::default(),
        }),
        alerts: Arc::new(LogAlerts),
        clock: Arc::new(SystemClock),
        settings: Settings::default(),
        webhook_secrets: Vec::new(),
        outputs: Default::default(),
    };
    let upload = ObjectRef {
        bucket: data::BUCKET.into(),
        key: data::upload_key(name),
    };
    let bytes = std::fs::metadata(data::upload_path(data_dir, name))?.len();
    let (cpu, started) = (cpu_secs(), Instant::now());
    let outcome = runtime.block_on(pipeline.ingest(&upload, None))?;
    let IngestOutcome::Ingested { counters, .. } = outcome else {
        bail!("ingest of {name} did not run: {outcome:?}");
    };
    let mut figures = Figures::new();
    figures.insert("rows".into(), json!(counters.rows));
    figures.insert("rejected".into(), json!(counters.rejected));
    figures.insert("chunks".into(), json!(counters.chunks));
    figures.insert("bytes".into(), json!(bytes));
    figures.insert(
        "payload_bytes".into(),
        json!(objects.bytes_written.load(Ordering::Relaxed)),
    );
    figures.insert(
        "message_bytes".into(),
        json!(queue.bytes.load(Ordering::Relaxed)),
    );
    Ok(finish(figures, started, cpu))
}

/// Ingest's first phase without the pipeline around them: the dataset reader as ingest drives it
/// (parse, validate, map, each valid row's variables written as JSON), into a buffer emptied
/// every 100 rows as chunks are.
pub fn ingest_phase(path: &Path) -> anyhow::Result<Figures> {
    let (cpu, started) = (cpu_secs(), Instant::now());
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = DatasetReader::new(file, format_of(path)?, RowRules::default())?;
    let (mut rows, mut encoded) = (0u64, 0u64);
    let mut sets = String::new();
    while let Some(read) = reader.next_into(&mut sets) {
        if let Encoded::Valid { .. } = read? {
            rows += 1;
            if rows % 100 == 0 {
                encoded += sets.len() as u64;
                sets.clear();
            }
        }
    }
    encoded += sets.len() as u64;
    let mut figures = Figures::new();
    figures.insert("rows".into(), json!(rows));
    figures.insert("encoded_bytes".into(), json!(encoded));
    figures.insert("bytes".into(), json!(std::fs::metadata(path)?.len()));
    Ok(finish(figures, started, cpu))
}

const WEBHOOK_SECRET: &str = "whsec_bench_secret_0123456789";

fn webhook_pipeline(store: Arc<NullStore>, pictify: Arc<StubPictify>) -> Pipeline {
    Pipeline {
        store,
        objects: Arc::new(ReadOnlyObjects::new(Path::new("/nonexistent"))),
        queue: Arc::new(NullQueue::default()),
        pictify,
        alerts: Arc::new(LogAlerts),
        clock: Arc::new(SystemClock),
        settings: Settings::default(),
        webhook_secrets: vec![Secret::new(WEBHOOK_SECRET)],
        outputs: Default::default(),
    }
}

/// A signed delivery as Pictify sends it: (signature header, body).
fn signed(event: &str, data: Value, now: i64) -> (String, Vec<u8>) {
    let body =
        json!({ "event": event, "timestamp": chrono::Utc::now().to_rfc3339(), "data": data })
            .to_string()
            .into_bytes();
    (signing::signature_header(WEBHOOK_SECRET, now, &body), body)
}

fn render_completed(i: u64, now: i64) -> (String, Vec<u8>) {
    signed(
        "render.completed",
        json!({
            "type": "batch", "source": "batch",
            "imageId": format!("img_{i:08}"),
            "url": format!("https://cdn.pictify.io/renders/img_{i:08}.png"),
            "width": 1200, "height": 630, "format": "png",
            "templateId": "tmpl_blog_card",
            "variables": {
                "title": format!("Post {i}: scaling a million rows without servers"),
                "author": "Grace Hopper",
                "publishDate": "2026-03-14"
            },
            "renderedAt": chrono::Utc::now().to_rfc3339(),
        }),
        now,
    )
}

/// Port calls per event, split into store reads and writes plus the other ports.
fn call_split(calls: &std::collections::BTreeMap<&'static str, u64>, events: u64) -> Value {
    let per = |n: u64| n as f64 / events.max(1) as f64;
    let (mut reads, mut writes) = (0u64, 0u64);
    for (op, n) in calls {
        if op.starts_with("store.") {
            if STORE_READS.contains(op) {
                reads += n;
            } else {
                writes += n;
            }
        }
    }
    let by_op: Map<String, Value> = calls
        .iter()
        .map(|(op, n)| ((*op).to_owned(), json!(per(*n))))
        .collect();
    json!({ "store_reads": per(reads), "store_writes": per(writes), "by_operation": by_op })
}

/// `render.completed` × `events` through `Pipeline::handle_webhook` (verify, parse, the planned
/// write), then `batch.completed` with a 100-item poll result.
pub fn webhook(events: u64) -> anyhow::Result<Figures> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = Arc::new(NullStore::default());
    let pipeline = webhook_pipeline(
        store.clone(),
        Arc::new(StubPictify {
            items: 100,
            calls: Default::default(),
        }),
    );
    let now = chrono::Utc::now().timestamp();
    let deliveries: Vec<(String, Vec<u8>)> =
        (0..events).map(|i| render_completed(i, now)).collect();
    let body_bytes: usize = deliveries.iter().map(|(_, b)| b.len()).sum();

    let (cpu, started) = (cpu_secs(), Instant::now());
    let mut refused = 0u64;
    runtime.block_on(async {
        for (signature, body) in &deliveries {
            let reply = pipeline
                .handle_webhook(WebhookRequest {
                    signature: Some(signature),
                    delivery_id: Some("dlv_bench"),
                    body,
                })
                .await;
            refused += u64::from(reply.status != 200);
        }
    });
    let (secs, cpu_used) = (started.elapsed().as_secs_f64(), cpu_secs() - cpu);
    if refused > 0 {
        bail!("{refused} of {events} render.completed deliveries were refused");
    }
    let render_calls = store.calls.snapshot();

    // batch.completed: one chunk of 100, all rendered; the job stays open (9 chunks to go).
    let batch_store = Arc::new(NullStore {
        fixture: Some(batch_fixture(100)?),
        ..Default::default()
    });
    let pictify = Arc::new(StubPictify {
        items: 100,
        calls: Default::default(),
    });
    let batch_pipeline = webhook_pipeline(batch_store.clone(), pictify.clone());
    let batches = (events / 50).max(20);
    let (signature, body) = signed(
        "batch.completed",
        json!({ "batchId": "batch_bench", "status": "completed", "totalCount": 100,
                "completedCount": 100, "failedCount": 0, "duration": 4200 }),
        now,
    );
    let batch_started = Instant::now();
    runtime.block_on(async {
        for _ in 0..batches {
            let reply = batch_pipeline
                .handle_webhook(WebhookRequest {
                    signature: Some(&signature),
                    delivery_id: Some("dlv_batch"),
                    body: &body,
                })
                .await;
            refused += u64::from(reply.status != 200);
        }
    });
    let batch_secs = batch_started.elapsed().as_secs_f64();
    if refused > 0 {
        bail!("{refused} batch.completed deliveries were refused");
    }
    let mut batch_calls = batch_store.calls.snapshot();
    for (op, n) in pictify.calls.snapshot() {
        batch_calls.insert(op, n);
    }

    let mut figures = Figures::new();
    figures.insert("events".into(), json!(events));
    figures.insert(
        "body_bytes_avg".into(),
        json!(body_bytes as u64 / events.max(1)),
    );
    figures.insert("us_per_event".into(), json!(secs * 1e6 / events as f64));
    figures.insert(
        "cpu_us_per_event".into(),
        json!(cpu_used * 1e6 / events as f64),
    );
    figures.insert("render_calls".into(), call_split(&render_calls, events));
    figures.insert("batches".into(), json!(batches));
    figures.insert(
        "us_per_batch".into(),
        json!(batch_secs * 1e6 / batches as f64),
    );
    figures.insert("batch_calls".into(), call_split(&batch_calls, batches));
    figures.insert("peak_rss_kib".into(), json!(peak_rss_kib()));
    Ok(figures)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_render_completed_costs_one_store_write_and_no_read() {
        let figures = webhook(200).unwrap();
        let calls = &figures["render_calls"];
        assert_eq!(
            (
                calls["store_writes"].as_f64(),
                calls["store_reads"].as_f64()
            ),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(
            calls["by_operation"]["store.record_render"].as_f64(),
            Some(1.0)
        );
    }

    #[test]
    fn a_batch_completed_polls_once_and_applies_once() {
        let figures = webhook(200).unwrap();
        let calls = &figures["batch_calls"]["by_operation"];
        assert_eq!(calls["pictify.get_batch_results"].as_f64(), Some(1.0));
        assert_eq!(calls["store.complete_chunk"].as_f64(), Some(1.0));
    }

    #[test]
    fn ingest_of_a_small_file_queues_every_row() {
        let dir = tempfile_dir();
        let path = data::upload_path(&dir, "small.csv");
        data::ensure(&path, data::Shape::CsvBytes(50_000)).unwrap();
        let raw = raw_parse(&path).unwrap();
        let ingest = pipeline_ingest(&dir, "small.csv", false).unwrap();
        assert_eq!(raw["rows"], ingest["rows"]);
        assert_eq!(ingest["rejected"].as_u64(), Some(0));
        // Checked against definitions every generated row meets: the same rows, none rejected.
        let checked = pipeline_ingest(&dir, "small.csv", true).unwrap();
        assert_eq!(
            (checked["rows"].clone(), checked["rejected"].as_u64()),
            (raw["rows"].clone(), Some(0))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pictify-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
