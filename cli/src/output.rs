//! The run's outputs, built from the pipeline's results manifest: the images (downloaded over
//! HTTP from each rendered row's URL), `results.csv` / `results.jsonl` (input columns + status,
//! file, url, error, one line per input row) and the final summary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::domain::{Job, ObjectRef};
use shared::local::FsObjectStore;
use shared::pictify::wire::Format;
use shared::ports::Alert;

use crate::prepare::CheckedDataset;
use crate::{Failure, Outcome};

const DOWNLOADS_IN_PARALLEL: usize = 8;
const SLUG_MAX: usize = 40;
const PROBLEMS_SHOWN: usize = 20;

pub struct OutputInput<'a> {
    pub out: &'a Path,
    pub objects: &'a FsObjectStore,
    pub job: &'a Job,
    pub dataset: &'a CheckedDataset,
    pub format: Format,
    /// With the local emulator: its current base URL (image URLs of an interrupted run name the
    /// old port; the new instance serves the same data dir).
    pub emulator_base: Option<String>,
    /// Keep images already downloaded by the interrupted run.
    pub resume: bool,
}

/// What the outputs hold.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: u64,
    pub images: u64,
    /// (row, problem) for every row that did not end as an image.
    pub problems: Vec<(u64, String)>,
    pub results_csv: PathBuf,
}

/// One manifest line, as the pipeline wrote it.
struct Line {
    row: u64,
    status: String,
    url: Option<String>,
    error: Option<String>,
    fields: Map<String, Value>,
}

fn parse_line(text: &str) -> anyhow::Result<Line> {
    let v: Value = serde_json::from_str(text).context("reading a manifest line")?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let error = match (s("errorCode"), s("errorMessage")) {
        (Some(code), Some(message)) if message.starts_with(&code) => Some(message),
        (Some(code), Some(message)) => Some(format!("{code}: {message}")),
        (code, message) => code.or(message),
    };
    Ok(Line {
        row: v.get("row").and_then(Value::as_u64).unwrap_or_default(),
        status: s("status").unwrap_or_default(),
        url: s("url"),
        error,
        fields: v
            .get("fields")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

/// `00042-my-first-post`: the row number, then a slug of the title (or first text column).
pub fn file_stem(row: u64, fields: &Map<String, Value>, columns: &[String]) -> String {
    let text = fields
        .get("title")
        .and_then(Value::as_str)
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            columns
                .iter()
                .filter_map(|c| fields.get(c).and_then(Value::as_str))
                .find(|t| !t.trim().is_empty())
        })
        .unwrap_or("");
    let mut slug = String::new();
    for ch in text.chars().flat_map(char::to_lowercase) {
        if ch.is_ascii_alphanumeric() {
            slug.push(ch);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= SLUG_MAX {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        format!("{row:05}")
    } else {
        format!("{row:05}-{slug}")
    }
}

/// Rewrites an emulator image URL of an earlier instance to the running one.
fn download_url(url: &str, emulator_base: Option<&str>) -> String {
    match (emulator_base, url.find("/images/")) {
        (Some(base), Some(at)) if url.starts_with("http://127.0.0.1:") => {
            format!("{base}{}", &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn read_manifest(
    objects: &FsObjectStore,
    at: &ObjectRef,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Line>>> {
    let path = objects.path_of(at)?;
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening the manifest {}", path.display()))?;
    Ok(BufReader::new(file)
        .lines()
        .map(|l| parse_line(&l.context("reading the manifest")?)))
}

pub async fn write_outputs(input: &OutputInput<'_>) -> Result<Report, Failure> {
    let images_dir = input.out.join("images");
    std::fs::create_dir_all(&images_dir)
        .with_context(|| format!("creating {}", images_dir.display()))?;
    let mut report = Report {
        results_csv: input.out.join("results.csv"),
        ..Report::default()
    };
    let Some(manifest) = &input.job.manifest else {
        return Ok(report);
    };

    // Pass 1: which files to fetch, and every column (JSON rows may add keys as they go).
    let mut columns = input.dataset.columns.clone();
    let mut downloads = Vec::new();
    for line in read_manifest(input.objects, &manifest.jsonl)? {
        let line = line?;
        for key in line.fields.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        if let Some(url) = &line.url {
            let name = format!(
                "{}.{}",
                file_stem(line.row, &line.fields, &input.dataset.columns),
                input.format.extension()
            );
            downloads.push((
                line.row,
                download_url(url, input.emulator_base.as_deref()),
                name,
            ));
        }
    }
    let fetched = download_all(&images_dir, downloads, input.resume).await?;

    // Pass 2: the results files.
    let mut csv = csv::Writer::from_path(&report.results_csv).context("creating results.csv")?;
    let mut header = vec!["row".to_owned()];
    header.extend(columns.iter().cloned());
    header.extend(["status", "file", "url", "error"].map(String::from));
    csv.write_record(&header).context("writing results.csv")?;
    let jsonl_path = input.out.join("results.jsonl");
    let mut jsonl =
        BufWriter::new(std::fs::File::create(&jsonl_path).context("creating results.jsonl")?);
    for line in read_manifest(input.objects, &manifest.jsonl)? {
        let line = line?;
        report.lines += 1;
        let (mut status, mut file, mut error) = (line.status.clone(), None, line.error.clone());
        match fetched.get(&line.row) {
            Some(Ok(name)) => {
                report.images += 1;
                file = Some(format!("images/{name}"));
            }
            Some(Err(problem)) => {
                status = "download_failed".into();
                error = Some(problem.clone());
            }
            None => {}
        }
        if file.is_none() {
            let why = error.clone().unwrap_or_else(|| status.replace('_', " "));
            report.problems.push((line.row, format!("{status}: {why}")));
        }
        let text = |v: Option<&Value>| match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let mut record = vec![line.row.to_string()];
        record.extend(columns.iter().map(|c| text(line.fields.get(c))));
        record.extend([
            status.clone(),
            file.clone().unwrap_or_default(),
            line.url.clone().unwrap_or_default(),
            error.clone().unwrap_or_default(),
        ]);
        csv.write_record(&record).context("writing results.csv")?;
        let value = json!({ "row": line.row, "status": status, "file": file, "url": line.url, "error": error, "fields": line.fields });
        serde_json::to_writer(&mut jsonl, &value).context("writing results.jsonl")?;
        jsonl.write_all(b"\n").context("writing results.jsonl")?;
    }
    csv.flush().context("writing results.csv")?;
    jsonl.flush().context("writing results.jsonl")?;
    Ok(report)
}

/// Fetches every image (a few at a time); row → file name, or why it could not be saved.
async fn download_all(
    dir: &Path,
    downloads: Vec<(u64, String, String)>,
    resume: bool,
) -> anyhow::Result<HashMap<u64, Result<String, String>>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let results = futures::stream::iter(downloads)
        .map(|(row, url, name)| {
            let (client, path) = (client.clone(), dir.join(&name));
            async move {
                let kept = resume && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
                let outcome = if kept {
                    Ok(())
                } else {
                    download(&client, &url, &path).await
                };
                (
                    row,
                    outcome
                        .map(|()| name)
                        .map_err(|e| format!("download failed: {e}")),
                )
            }
        })
        .buffer_unordered(DOWNLOADS_IN_PARALLEL)
        .collect::<HashMap<_, _>>()
        .await;
    Ok(results)
}

async fn download(client: &reqwest::Client, url: &str, path: &Path) -> Result<(), String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {} from {url}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let temp = path.with_extension("part");
    tokio::fs::write(&temp, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&temp, path)
        .await
        .map_err(|e| e.to_string())
}

/// The final summary printed to stderr.
pub struct Summary<'a> {
    pub job: &'a Job,
    pub report: &'a Report,
    pub alerts: &'a [Alert],
    pub elapsed: Duration,
}

impl Summary<'_> {
    pub fn render(&self, out: &Path) -> String {
        let c = self.job.counters;
        let secs = self.elapsed.as_secs_f64().max(0.001);
        let mut s = String::new();
        s.push_str(&format!(
            "\njob {} {} ({})\n",
            self.job.id,
            self.job.status.as_str(),
            self.job.spec.template_id
        ));
        if let Some(error) = &self.job.error {
            s.push_str(&format!("dataset problem: {error}\n"));
        }
        s.push_str(&format!(
            "rows {}  rendered {}  failed {}  cancelled {}  rejected {}  failure rate {:.1}%\n",
            c.rows,
            c.rendered,
            c.failed,
            c.cancelled,
            c.rejected,
            c.failure_rate() * 100.0
        ));
        if let Some(reason) = &self.job.control.cancelled {
            s.push_str(&format!("cancelled: {reason}\n"));
        }
        s.push_str(&format!(
            "invariant: rows {} = rejected {} + rendered {} + failed {} + cancelled {} + in flight {} ({})\n",
            c.rows,
            c.rejected,
            c.rendered,
            c.failed,
            c.cancelled,
            c.in_flight(),
            if c.invariant_holds() && c.in_flight() == 0 {
                "holds"
            } else {
                "VIOLATED"
            }
        ));
        s.push_str(&format!(
            "elapsed {:.1}s  {:.1} rows/s  {} images saved ({:.1} images/s)",
            secs,
            c.rows as f64 / secs,
            self.report.images,
            self.report.images as f64 / secs
        ));
        if let Some(kib) = peak_memory_kib() {
            s.push_str(&format!("  peak memory {:.1} MiB", kib as f64 / 1024.0));
        }
        s.push('\n');
        let fired: Vec<&Alert> = self
            .alerts
            .iter()
            .filter(|a| a.kind != "job_finished")
            .collect();
        if fired.is_empty() {
            s.push_str("alerts: none\n");
        } else {
            s.push_str(&format!(
                "alerts that would have fired ({}):\n",
                fired.len()
            ));
            for alert in fired.iter().take(PROBLEMS_SHOWN) {
                s.push_str(&format!("  - {}: {}\n", alert.kind, alert.message));
            }
            if fired.len() > PROBLEMS_SHOWN {
                s.push_str(&format!("  … and {} more\n", fired.len() - PROBLEMS_SHOWN));
            }
        }
        let problems = &self.report.problems;
        if !problems.is_empty() {
            s.push_str(&format!("row problems ({}):\n", problems.len()));
            for (row, problem) in problems.iter().take(PROBLEMS_SHOWN) {
                s.push_str(&format!("  row {row}: {problem}\n"));
            }
            if problems.len() > PROBLEMS_SHOWN {
                s.push_str(&format!(
                    "  … and {} more\n",
                    problems.len() - PROBLEMS_SHOWN
                ));
            }
        }
        s.push_str(&format!(
            "images: {}  results: {}\n",
            out.join("images").display(),
            self.report.results_csv.display()
        ));
        s
    }

    /// 0: every row is an image; 3: the dataset itself failed and nothing rendered; else 2.
    pub fn outcome(&self) -> Result<Outcome, Failure> {
        let c = self.job.counters;
        if let Some(error) = &self.job.error
            && c.rendered == 0
        {
            return Err(Failure::usage(format!(
                "the dataset could not be processed: {error}"
            )));
        }
        let complete = self.job.error.is_none()
            && self.report.problems.is_empty()
            && self.report.images == c.rows;
        Ok(if complete {
            Outcome::AllRendered
        } else {
            Outcome::SomeProblems
        })
    }
}

/// Peak resident memory of this process (Linux `VmHWM`).
pub fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn file_names_use_the_title_or_the_first_text_column() {
        let cols = vec!["productName".to_owned(), "title".to_owned()];
        assert_eq!(
            file_stem(7, &fields(&[("title", "Hello, World!")]), &cols),
            "00007-hello-world"
        );
        assert_eq!(
            file_stem(7, &fields(&[("productName", "Café Mug")]), &cols),
            "00007-caf-mug"
        );
        assert_eq!(file_stem(123456, &fields(&[]), &cols), "123456");
        let long = "a".repeat(80);
        assert_eq!(
            file_stem(1, &fields(&[("title", &long)]), &cols).len(),
            6 + SLUG_MAX
        );
    }

    #[test]
    fn emulator_urls_of_an_earlier_instance_point_at_the_running_one() {
        let base = Some("http://127.0.0.1:9000");
        assert_eq!(
            download_url("http://127.0.0.1:4321/images/a.png", base),
            "http://127.0.0.1:9000/images/a.png"
        );
        assert_eq!(
            download_url("https://cdn.pictify.io/a.png", base),
            "https://cdn.pictify.io/a.png"
        );
        assert_eq!(
            download_url("http://127.0.0.1:4321/images/a.png", None),
            "http://127.0.0.1:4321/images/a.png"
        );
    }
}
