//! The run's outputs, built from the pipeline's results manifest: the images (downloaded over
//! HTTP from each rendered row's URL, each inspected by [`crate::qa`], with a thumbnail),
//! `results.csv` / `results.jsonl` (input columns + status, file, url, error, warnings, one line
//! per input row), the gallery `index.html` and the final summary.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use shared::domain::{Job, ObjectRef};
use shared::local::FsObjectStore;
use shared::naming::{KeyPattern, NameContext};
use shared::pictify::wire::Format;
use shared::ports::Alert;

use crate::gallery::{self, Warning};
use crate::prepare::CheckedDataset;
use crate::qa;
use crate::{Failure, Outcome};

const DOWNLOADS_IN_PARALLEL: usize = 8;
const SLUG_MAX: usize = 40;
const PROBLEMS_SHOWN: usize = 20;
/// The longest file or folder name most filesystems take, in bytes.
const MAX_SEGMENT_BYTES: usize = 255;
/// Two rows' `--name-pattern` names were the same: the later row's file got `-<row>`.
pub const NAME_COLLISION: &str = "NAME_COLLISION";
/// `--name-pattern` could not name the row (e.g. its field is empty): the default name was used.
pub const NAME_PATTERN_FAILED: &str = "NAME_PATTERN_FAILED";
/// The gallery holds the first this many rows, then only rows with a problem or a warning up to
/// twice as many: a page of 10,000 cards is about 2 MB, and one of a million would not open.
const GALLERY_CARDS: usize = 20_000;

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
    /// The template's width and height, when known (the emulator's templates). Otherwise every
    /// image is held to the size most of the job's images have.
    pub expected_size: Option<(u32, u32)>,
    /// `--no-render`: the images are blank placeholders on purpose.
    pub placeholders: bool,
    /// `--name-pattern`: how image files are named under `images/` (else [`file_stem`]).
    pub name_pattern: Option<&'a KeyPattern>,
    /// Where every row's file name is recorded (in the resumable state), so a resumed run keeps
    /// only files saved for the same row.
    pub names_record: PathBuf,
}

/// What the outputs hold.
#[derive(Debug, Default)]
pub struct Report {
    pub lines: u64,
    pub images: u64,
    /// (row, problem) for every row that did not end as an image.
    pub problems: Vec<(u64, String)>,
    /// (row, "CODE: message; …") for every image with warnings.
    pub warned: Vec<(u64, String)>,
    /// How many images have each warning code.
    pub warning_counts: BTreeMap<String, u64>,
    pub results_csv: PathBuf,
    /// `index.html`, the results gallery (empty when no manifest was written).
    pub gallery: PathBuf,
}

/// One manifest line, as the pipeline wrote it.
pub(crate) struct Line {
    pub row: u64,
    pub status: String,
    pub url: Option<String>,
    pub error: Option<String>,
    pub fields: Map<String, Value>,
}

pub(crate) fn parse_line(text: &str) -> anyhow::Result<Line> {
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

/// The file name a row asks for: its `--name-pattern` name (ending in the format's extension), or
/// the default one, with a `NAME_PATTERN_FAILED` warning when the pattern cannot name the row.
fn wanted_name(input: &OutputInput<'_>, line: &Line) -> (String, Option<Warning>) {
    let ext = input.format.extension();
    let default = || {
        format!(
            "{}.{ext}",
            file_stem(line.row, &line.fields, &input.dataset.columns)
        )
    };
    let Some(pattern) = input.name_pattern else {
        return (default(), None);
    };
    let job = input.job.id.to_string();
    let rendered = pattern
        .render(&NameContext {
            row: line.row,
            template_id: &input.job.spec.template_id,
            job: &job,
            ext,
            fields: &line.fields,
        })
        .map_err(|e| e.to_string())
        .map(|name| with_extension(name, ext))
        .and_then(|name| match name.split('/').find(|s| s.len() > MAX_SEGMENT_BYTES) {
            Some(long) => Err(format!(
                "row {}: `{}…` is {} bytes, over the {MAX_SEGMENT_BYTES}-byte limit of a file or folder name",
                line.row,
                long.chars().take(40).collect::<String>(),
                long.len()
            )),
            None => Ok(name),
        });
    match rendered {
        Ok(name) => (name, None),
        Err(why) => {
            let name = default();
            let warning = Warning {
                code: NAME_PATTERN_FAILED.into(),
                message: format!("{why}; saved as images/{name} instead"),
            };
            (name, Some(warning))
        }
    }
}

/// `name` ending in `.ext` (any case), else with `.ext` added: every file holds what it says.
fn with_extension(name: String, ext: &str) -> String {
    let ends = name
        .len()
        .checked_sub(ext.len() + 1)
        .and_then(|at| name.get(at..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case(&format!(".{ext}")));
    if ends { name } else { format!("{name}.{ext}") }
}

/// The file names given so far (compared ignoring ASCII case, so no two files collide on a
/// case-insensitive filesystem either), with the row that has each.
#[derive(Default)]
struct Names {
    taken: HashMap<String, (u64, bool)>,
}

impl Names {
    /// The name `row` gets: `wanted`, or, when an earlier row has it, `wanted` with `-<row>`
    /// before the extension and a `NAME_COLLISION` warning naming both rows. Rows come in
    /// manifest order (by row number), so the same rows get the same names on every run.
    fn claim(&mut self, row: u64, wanted: String, has_image: bool) -> (String, Option<Warning>) {
        let key = wanted.to_lowercase();
        let Some(&(first, first_has_image)) = self.taken.get(&key) else {
            self.taken.insert(key, (row, has_image));
            return (wanted, None);
        };
        let (stem, ext) = match wanted.rsplit_once('.') {
            Some((stem, ext)) if !ext.contains('/') => (stem, format!(".{ext}")),
            _ => (wanted.as_str(), String::new()),
        };
        let mut name = format!("{stem}-{row}{ext}");
        let mut n = 2;
        while self.taken.contains_key(&name.to_lowercase()) {
            name = format!("{stem}-{row}-{n}{ext}");
            n += 1;
        }
        self.taken.insert(name.to_lowercase(), (row, has_image));
        let mut message = format!(
            "rows {first} and {row} are both named images/{wanted}; row {row}'s image is saved as images/{name}"
        );
        if !first_has_image {
            message.push_str(&format!(
                " (row {first} has no image, but keeps its name for a retry)"
            ));
        }
        let warning = Warning {
            code: NAME_COLLISION.into(),
            message,
        };
        (name, Some(warning))
    }
}

/// A row's image: its URL (none yet for a row that did not render), its file name under
/// `images/`, the warnings its naming already has, and whether a file by that name left by an
/// interrupted run is this row's (and can be kept on --resume).
struct Download {
    row: u64,
    url: Option<String>,
    name: String,
    warnings: Vec<Warning>,
    keep: bool,
}

/// The names an earlier run gave, name → row (`None` when it recorded none, or the record does
/// not read).
fn read_names(path: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .map(|line| {
            let (row, name) = line.split_once('\t')?;
            Some((name.to_owned(), row.parse().ok()?))
        })
        .collect()
}

/// Records every row's file name, `row<TAB>name` a line (a name never holds a control character).
fn write_names(path: &Path, planned: &[Download]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for download in planned {
        writeln!(out, "{}\t{}", download.row, download.name)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
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

    // Pass 1: every column (JSON rows may add keys as they go) and every row's file name. Rows
    // without an image keep theirs too, and names are given in row order, so a row retried
    // later gets the same name on --resume.
    let mut columns = input.dataset.columns.clone();
    let mut wanted = Vec::new();
    for line in read_manifest(input.objects, &manifest.jsonl)? {
        let line = line?;
        for key in line.fields.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
        if line.status == "rejected" {
            continue; // never an image: nothing to name
        }
        let (name, failed) = wanted_name(input, &line);
        wanted.push((line.row, name, failed, line.url));
    }
    wanted.sort_by_key(|(row, ..)| *row);
    let mut names = Names::default();
    let mut planned = Vec::with_capacity(wanted.len());
    for (row, name, failed, url) in wanted {
        let (name, collision) = names.claim(row, name, url.is_some());
        planned.push(Download {
            row,
            url: url.map(|u| download_url(&u, input.emulator_base.as_deref())),
            name,
            warnings: failed.into_iter().chain(collision).collect(),
            keep: false,
        });
    }
    // A file kept on --resume must be the one the interrupted run saved for this same row
    // (a changed --name-pattern may give its name to another row).
    let before = if input.resume {
        read_names(&input.names_record)
    } else {
        None
    };
    for download in &mut planned {
        download.keep = match &before {
            Some(before) => before.get(&download.name) == Some(&download.row),
            // A run from before names were recorded: default names hold their row number.
            None => input.name_pattern.is_none(),
        };
    }
    write_names(&input.names_record, &planned)?;
    let downloads: Vec<Download> = planned.into_iter().filter(|d| d.url.is_some()).collect();
    let thumbs_dir = input.out.join("thumbs");
    std::fs::create_dir_all(&thumbs_dir)
        .with_context(|| format!("creating {}", thumbs_dir.display()))?;
    let mut fetched = download_all(input, &images_dir, &thumbs_dir, downloads).await?;
    if input.expected_size.is_none() {
        hold_to_common_size(&mut fetched);
    }

    // Pass 2: the results files.
    let mut csv = csv::Writer::from_path(&report.results_csv).context("creating results.csv")?;
    let mut header = vec!["row".to_owned()];
    header.extend(columns.iter().cloned());
    header.extend(["status", "file", "url", "error", "warnings"].map(String::from));
    csv.write_record(&header).context("writing results.csv")?;
    let jsonl_path = input.out.join("results.jsonl");
    let mut jsonl =
        BufWriter::new(std::fs::File::create(&jsonl_path).context("creating results.jsonl")?);
    let (mut cards, mut statuses) = (Vec::new(), gallery::StatusCounts::default());
    for line in read_manifest(input.objects, &manifest.jsonl)? {
        let line = line?;
        report.lines += 1;
        let (mut status, mut file, mut error) = (line.status.clone(), None, line.error.clone());
        let (mut thumb, mut warnings) = (None, Vec::new());
        match fetched.remove(&line.row) {
            Some(Ok(saved)) => {
                report.images += 1;
                file = Some(format!("images/{}", saved.name));
                thumb = saved.thumb.map(|t| format!("thumbs/{t}"));
                warnings = saved.warnings;
            }
            Some(Err(problem)) => {
                status = "download_failed".into();
                error = Some(problem);
            }
            None => {}
        }
        if file.is_none() {
            let why = error.clone().unwrap_or_else(|| status.replace('_', " "));
            report.problems.push((line.row, format!("{status}: {why}")));
        }
        let warnings_text = warnings
            .iter()
            .map(|w| format!("{}: {}", w.code, w.message))
            .collect::<Vec<_>>()
            .join("; ");
        if !warnings.is_empty() {
            report.warned.push((line.row, warnings_text.clone()));
            for w in &warnings {
                *report.warning_counts.entry(w.code.clone()).or_default() += 1;
            }
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
            warnings_text,
        ]);
        csv.write_record(&record).context("writing results.csv")?;
        let value = json!({ "row": line.row, "status": status, "file": file, "url": line.url, "error": error, "warnings": warnings, "fields": line.fields });
        serde_json::to_writer(&mut jsonl, &value).context("writing results.jsonl")?;
        jsonl.write_all(b"\n").context("writing results.jsonl")?;
        statuses.add(&status);
        let noteworthy = file.is_none() || !warnings.is_empty();
        if cards.len() < GALLERY_CARDS || (noteworthy && cards.len() < 2 * GALLERY_CARDS) {
            cards.push(gallery::Card {
                row: line.row,
                status,
                fields: gallery::key_fields(&line.fields, &input.dataset.columns),
                image: file.or(line.url),
                thumb,
                error,
                warnings,
            });
        }
    }
    csv.flush().context("writing results.csv")?;
    jsonl.flush().context("writing results.jsonl")?;
    let title = format!("{} · {}", input.job.id, input.job.spec.template_id);
    let mut subtitle = statuses.summary();
    if (cards.len() as u64) < statuses.rows() {
        subtitle.push_str(&format!(
            " (showing {}: the first {GALLERY_CARDS} rows, then those with a problem; results.csv has every row)",
            cards.len()
        ));
    }
    let page = gallery::Page {
        title: &title,
        subtitle: &subtitle,
    };
    report.gallery = input.out.join("index.html");
    gallery::write(&report.gallery, &page, &cards)?;
    Ok(report)
}

/// A saved image: its file name, its thumbnail's, its size and what was found wrong with it.
struct Saved {
    name: String,
    thumb: Option<String>,
    size: Option<(u32, u32)>,
    warnings: Vec<Warning>,
}

/// Fetches every image (a few at a time) and inspects each; row → what was saved, or why it
/// could not be.
async fn download_all(
    input: &OutputInput<'_>,
    images: &Path,
    thumbs: &Path,
    downloads: Vec<Download>,
) -> anyhow::Result<HashMap<u64, Result<Saved, String>>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let checks = qa::Checks {
        size: input.expected_size,
        blank: !input.placeholders,
    };
    let results = futures::stream::iter(downloads)
        .map(|item| {
            let Download {
                row,
                url,
                name,
                warnings: named,
                keep,
            } = item;
            let url = url.unwrap_or_default();
            let (client, path) = (client.clone(), images.join(&name));
            let thumb_name = format!("{}.webp", name.rsplit_once('.').map_or(&*name, |(s, _)| s));
            let thumb_path = thumbs.join(&thumb_name);
            async move {
                let fetched = match make_parents(&[&path, &thumb_path]).await {
                    Err(e) => Err(e),
                    Ok(()) if keep && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) => {
                        render_warnings(&client, &url).await
                    }
                    Ok(()) => download(&client, &url, &path).await,
                };
                let saved = match fetched {
                    Ok(fetched) => {
                        let inspection = tokio::task::spawn_blocking(move || {
                            qa::inspect(&path, checks, &thumb_path)
                        })
                        .await
                        .unwrap_or_else(|e| qa::Inspection::failed(&e.to_string()));
                        let mut warnings = named;
                        warnings.extend(fetched);
                        warnings.extend(inspection.warnings);
                        Ok(Saved {
                            name,
                            thumb: inspection.thumb.then_some(thumb_name),
                            size: inspection.size,
                            warnings,
                        })
                    }
                    Err(e) => Err(format!("download failed: {e}")),
                };
                (row, saved)
            }
        })
        .buffer_unordered(DOWNLOADS_IN_PARALLEL)
        .collect::<HashMap<_, _>>()
        .await;
    Ok(results)
}

/// Creates the folders `paths` are in (a `--name-pattern` with `/` makes folders).
async fn make_parents(paths: &[&Path]) -> Result<(), String> {
    for path in paths {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| format!("cannot create the folder {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}

/// Saves one image; answers the warnings the emulator sent with it (none from real Pictify).
async fn download(
    client: &reqwest::Client,
    url: &str,
    path: &Path,
) -> Result<Vec<Warning>, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {} from {url}", response.status()));
    }
    let warnings = header_warnings(response.headers());
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let temp = path.with_extension("part");
    tokio::fs::write(&temp, &bytes)
        .await
        .map_err(|e| e.to_string())?;
    tokio::fs::rename(&temp, path)
        .await
        .map_err(|e| e.to_string())?;
    Ok(warnings)
}

/// The warnings of an image kept from an interrupted run: asked again, without the body, from an
/// emulator (a URL it cannot reach any more just has none).
async fn render_warnings(client: &reqwest::Client, url: &str) -> Result<Vec<Warning>, String> {
    if !url.starts_with("http://127.0.0.1:") {
        return Ok(Vec::new());
    }
    Ok(match client.head(url).send().await {
        Ok(response) => header_warnings(response.headers()),
        Err(_) => Vec::new(),
    })
}

fn header_warnings(headers: &reqwest::header::HeaderMap) -> Vec<Warning> {
    let Some(value) = headers.get(pictify_emulator::render::WARNINGS_HEADER) else {
        return Vec::new();
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|text| serde_json::from_str::<Vec<Warning>>(text).ok());
    match parsed {
        Some(warnings) => warnings,
        None => vec![Warning {
            code: "WARNINGS_UNREADABLE".into(),
            message: format!(
                "the emulator's {} header does not parse",
                pictify_emulator::render::WARNINGS_HEADER
            ),
        }],
    }
}

/// Without the template's size (real Pictify), an image whose size differs from the one most of
/// the job's images have gets `WRONG_DIMENSIONS`.
fn hold_to_common_size(fetched: &mut HashMap<u64, Result<Saved, String>>) {
    let mut sizes: HashMap<(u32, u32), u64> = HashMap::new();
    for size in fetched.values().filter_map(|s| s.as_ref().ok()?.size) {
        *sizes.entry(size).or_default() += 1;
    }
    let Some(common) = sizes
        .into_iter()
        .max_by_key(|(size, n)| (*n, *size))
        .map(|(s, _)| s)
    else {
        return;
    };
    for saved in fetched.values_mut().filter_map(|s| s.as_mut().ok()) {
        if let Some(size) = saved.size
            && let Some(mut w) = qa::wrong_size(size, Some(common))
        {
            w.message = format!(
                "the image is {}x{}; most of the job's images are {}x{}",
                size.0, size.1, common.0, common.1
            );
            saved.warnings.push(w);
        }
    }
}

/// The final summary printed to stderr.
pub struct Summary<'a> {
    pub job: &'a Job,
    pub report: &'a Report,
    pub alerts: &'a [Alert],
    pub elapsed: Duration,
    /// Images with warnings still count as complete (`--allow-warnings`).
    pub allow_warnings: bool,
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
        let warned = &self.report.warned;
        if !warned.is_empty() {
            let counts: Vec<String> = self
                .report
                .warning_counts
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            s.push_str(&format!(
                "image warnings ({} image(s): {}){}:\n",
                warned.len(),
                counts.join(", "),
                if self.allow_warnings { ", allowed" } else { "" }
            ));
            for (row, warning) in warned.iter().take(PROBLEMS_SHOWN) {
                s.push_str(&format!("  row {row}: {warning}\n"));
            }
            if warned.len() > PROBLEMS_SHOWN {
                s.push_str(&format!("  … and {} more\n", warned.len() - PROBLEMS_SHOWN));
            }
        }
        s.push_str(&format!(
            "images: {}  results: {}",
            out.join("images").display(),
            self.report.results_csv.display()
        ));
        if !self.report.gallery.as_os_str().is_empty() {
            s.push_str(&format!("  gallery: {}", self.report.gallery.display()));
        }
        s.push('\n');
        s
    }

    /// 0: every row is an image with no warning (or warnings are allowed); 3: the dataset itself
    /// failed and nothing rendered; else 2.
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
            && self.report.images == c.rows
            && (self.allow_warnings || self.report.warned.is_empty());
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
    fn a_later_row_with_a_taken_name_gets_its_row_number() {
        let mut names = Names::default();
        assert_eq!(
            names.claim(0, "a/same.png".into(), true),
            ("a/same.png".into(), None)
        );
        let (name, warning) = names.claim(4, "a/Same.png".into(), true);
        assert_eq!(name, "a/Same-4.png", "compared ignoring case");
        let warning = warning.unwrap();
        assert_eq!(warning.code, NAME_COLLISION);
        assert_eq!(
            warning.message,
            "rows 0 and 4 are both named images/a/Same.png; row 4's image is saved as images/a/Same-4.png"
        );
        // A name someone already has with the suffix: counted on.
        assert_eq!(
            names.claim(5, "a/same-7.png".into(), true).0,
            "a/same-7.png"
        );
        assert_eq!(
            names.claim(7, "a/same.png".into(), true).0,
            "a/same-7-2.png"
        );
        // A row without an image keeps its name (for a retry), and the message says so.
        let mut names = Names::default();
        names.claim(1, "x.png".into(), false);
        let (name, warning) = names.claim(2, "x.png".into(), true);
        assert_eq!(name, "x-2.png");
        assert!(
            warning
                .unwrap()
                .message
                .ends_with("(row 1 has no image, but keeps its name for a retry)")
        );
        // Folders with dots do not count as the extension.
        let mut names = Names::default();
        names.claim(1, "v1.2/x".into(), true);
        assert_eq!(names.claim(2, "v1.2/x".into(), true).0, "v1.2/x-2");
    }

    #[test]
    fn pattern_names_end_in_the_format_extension() {
        assert_eq!(with_extension("a/b.png".into(), "png"), "a/b.png");
        assert_eq!(with_extension("a/b.PNG".into(), "png"), "a/b.PNG");
        assert_eq!(with_extension("a/b".into(), "png"), "a/b.png");
        assert_eq!(with_extension("png".into(), "png"), "png.png");
        assert_eq!(with_extension("é".into(), "jpg"), "é.jpg");
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
