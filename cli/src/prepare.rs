//! Before anything renders: check the dataset and the options (each problem is one line, exit 3),
//! then place the dataset and its job sidecar in the local object store so the pipeline's own
//! ingest reads them exactly as it would read an S3 upload.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use shared::dataset::{DatasetFormat, DatasetReader, Item, RowRules};
use shared::domain::{AbortRule, ObjectRef};
use shared::layout;
use shared::local::FsObjectStore;
use shared::pictify::wire::Format;
use shared::ports::ObjectStore;

use crate::Failure;

/// The bucket local runs use inside `DIR/.state/objects`.
pub const BUCKET: &str = "local";

/// A dataset that passed the checks.
#[derive(Debug, Clone)]
pub struct CheckedDataset {
    /// Absolute path.
    pub path: PathBuf,
    pub format: DatasetFormat,
    pub file_name: String,
    /// The CSV header, or the first JSON object's keys, in file order.
    pub columns: Vec<String>,
}

/// The dataset and how its rows become the template's variables: `run` and `check` take the
/// same flags.
#[derive(clap::Args, Debug)]
pub struct DatasetArgs {
    /// The dataset: .csv (header row), .json (array of objects) or .jsonl / .ndjson.
    pub dataset: PathBuf,
    /// Template id (the emulator bundles tmpl_blog_card, tmpl_certificate, tmpl_product_card, tmpl_social_card).
    #[arg(long)]
    pub template: String,
    /// Rename a column to a template variable (repeatable): --map "Post Title=title".
    #[arg(long = "map", value_name = "COLUMN=VARIABLE")]
    pub map: Vec<String>,
    /// A column every row must have non-empty (repeatable); rows without it are rejected.
    #[arg(long = "require", value_name = "COLUMN")]
    pub require: Vec<String>,
    /// A column holding image paths relative to the dataset's folder (repeatable): they are sent
    /// as file:// URLs, which the local emulator can read (real Pictify needs public http(s) URLs).
    #[arg(long = "file-column", value_name = "COLUMN")]
    pub file_column: Vec<String>,
    /// Emulator: extra templates (<id>.html + <id>.json pairs) on top of the bundled ones.
    #[arg(long, value_name = "DIR")]
    pub templates: Option<PathBuf>,
}

impl DatasetArgs {
    /// The job these flags describe, in `format` (and `quality`), stopped by `abort`.
    pub fn job_options(
        &self,
        format: Format,
        quality: Option<f64>,
        abort: Option<AbortRule>,
    ) -> Result<JobOptions, Failure> {
        Ok(JobOptions {
            template_id: self.template.clone(),
            format,
            quality,
            mapping: parse_mapping(&self.map)?,
            required: self.require.clone(),
            file_columns: self.file_column.clone(),
            abort,
        })
    }
}

/// What the user asked for, as the job sidecar carries it.
#[derive(Debug, Clone)]
pub struct JobOptions {
    pub template_id: String,
    pub format: Format,
    pub quality: Option<f64>,
    pub mapping: BTreeMap<String, String>,
    pub required: Vec<String>,
    /// Columns whose relative paths become `file://` URLs (resolved against the dataset's folder).
    pub file_columns: Vec<String>,
    /// When to stop the job for its failures (`--max-failure-rate`, …).
    pub abort: Option<AbortRule>,
}

/// Parses `column=variable` pairs.
pub fn parse_mapping(pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut mapping = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((column, variable))
                if !column.trim().is_empty() && !variable.trim().is_empty() =>
            {
                mapping.insert(column.trim().to_owned(), variable.trim().to_owned());
            }
            _ => {
                return Err(Failure::usage(format!(
                    "--map `{pair}`: expected column=variable"
                )));
            }
        }
    }
    Ok(mapping)
}

/// Checks the file, its format, its start (header / first object) and that every column the
/// options name exists.
pub fn check_dataset(path: &Path, options: &JobOptions) -> Result<CheckedDataset, Failure> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Failure::usage(format!("dataset not found: {shown}")),
        _ => Failure::usage(format!("cannot read the dataset {shown}: {e}")),
    })?;
    if !meta.is_file() {
        return Err(Failure::usage(format!("dataset {shown} is not a file")));
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.contains('\\'))
        .ok_or_else(|| Failure::usage(format!("dataset {shown} has no usable file name")))?;
    let format = DatasetFormat::from_key(&file_name).ok_or_else(|| {
        let ext = file_name
            .rsplit_once('.')
            .map(|(_, e)| format!(".{e}"))
            .unwrap_or_else(|| "no extension".into());
        Failure::usage(format!(
            "unknown dataset format ({ext}) for {shown}: expected .csv, .json, .jsonl or .ndjson"
        ))
    })?;
    let absolute = std::fs::canonicalize(path)
        .map_err(|e| Failure::usage(format!("cannot resolve {shown}: {e}")))?;

    let file = File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read the dataset {shown}: {e}")))?;
    // Column checks are ours (clearer messages); the rest of the rules are the pipeline's own.
    let mut reader = DatasetReader::new(BufReader::new(file), format, RowRules::default())
        .map_err(|e| Failure::usage(format!("dataset {shown}: {e}")))?;
    let header = reader.columns().map(<[String]>::to_vec);
    let first = match reader.next() {
        Some(Ok(item)) => item,
        Some(Err(e)) => return Err(Failure::usage(format!("dataset {shown}: {e}"))),
        None => return Err(Failure::usage(format!("dataset {shown} has no data rows"))),
    };
    let columns = match header {
        Some(columns) => columns,
        None => match first {
            Item::Valid(row) => row.fields.keys().cloned().collect(),
            Item::Rejected(r) => {
                return Err(Failure::usage(format!(
                    "dataset {shown}: the first row is unusable: {}",
                    r.reason
                )));
            }
        },
    };
    let kind = if format == DatasetFormat::Csv {
        "the CSV header"
    } else {
        "the first JSON object"
    };
    let named = options
        .mapping
        .keys()
        .map(|c| ("--map", c))
        .chain(options.required.iter().map(|c| ("--require", c)))
        .chain(options.file_columns.iter().map(|c| ("--file-column", c)));
    for (flag, column) in named {
        if !columns.iter().any(|c| c == column) {
            return Err(Failure::usage(format!(
                "{flag} names column \"{column}\", which is not in {kind} of {shown} (columns: {})",
                columns.join(", ")
            )));
        }
    }
    // The pipeline's own dataset-level checks with the real rules (conflicting mappings, …).
    let file = File::open(path)
        .map_err(|e| Failure::usage(format!("cannot read the dataset {shown}: {e}")))?;
    let rules = RowRules {
        mapping: options.mapping.clone(),
        required: options.required.clone(),
        ..RowRules::default()
    };
    DatasetReader::new(BufReader::new(file), format, rules)
        .map_err(|e| Failure::usage(format!("dataset {shown}: {e}")))?;
    Ok(CheckedDataset {
        path: absolute,
        format,
        file_name,
        columns,
    })
}

/// Where the dataset lives in the local bucket.
pub fn upload_ref(template_id: &str, dataset: &CheckedDataset) -> ObjectRef {
    ObjectRef {
        bucket: BUCKET.into(),
        key: format!("uploads/{template_id}/{}", dataset.file_name),
    }
}

/// Result of placing the upload.
pub struct Placed {
    pub upload: ObjectRef,
    /// The object store version the job id derives from.
    pub version: String,
    /// The sidecar differed from the one already stored (options changed since the last run).
    pub sidecar_changed: bool,
}

/// Writes the dataset (with file columns resolved) and its sidecar, leaving identical objects
/// untouched: `FsObjectStore` versions are (size, mtime, inode), so an unchanged file keeps its
/// version and `--resume` finds the same job id.
pub async fn place(
    objects: &FsObjectStore,
    dataset: &CheckedDataset,
    options: &JobOptions,
    scratch: &Path,
) -> anyhow::Result<Placed> {
    let upload = upload_ref(&options.template_id, dataset);
    let source = if options.file_columns.is_empty() {
        dataset.path.clone()
    } else {
        let rewritten = scratch.join("dataset.resolved");
        let (input, output, columns) = (
            dataset.path.clone(),
            rewritten.clone(),
            options.file_columns.clone(),
        );
        let format = dataset.format;
        tokio::task::spawn_blocking(move || {
            resolve_file_columns(&input, &output, format, &columns)
        })
        .await??;
        rewritten
    };
    let target = objects.path_of(&upload)?;
    if !same_contents(&source, &target)? {
        objects
            .put_file(&upload, &source, "application/octet-stream")
            .await?;
    }
    let sidecar = layout::sidecar_of(&upload);
    let bytes = serde_json::to_vec_pretty(&sidecar_json(options))?;
    let sidecar_changed = objects
        .get_bytes(&sidecar)
        .await?
        .is_some_and(|old| old != bytes);
    if objects.get_bytes(&sidecar).await?.as_deref() != Some(bytes.as_slice()) {
        objects
            .put_bytes(&sidecar, bytes, "application/json")
            .await?;
    }
    let version = shared::ports::ObjectStore::version(objects, &upload)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the placed dataset {upload} vanished"))?;
    Ok(Placed {
        upload,
        version,
        sidecar_changed,
    })
}

fn sidecar_json(options: &JobOptions) -> Value {
    let mut sidecar = Map::new();
    sidecar.insert(
        "templateId".into(),
        Value::from(options.template_id.clone()),
    );
    sidecar.insert("format".into(), Value::from(options.format.as_str()));
    if let Some(q) = options.quality {
        sidecar.insert("quality".into(), Value::from(q));
    }
    sidecar.insert("mapping".into(), serde_json::json!(options.mapping));
    sidecar.insert("required".into(), serde_json::json!(options.required));
    if let Some(rule) = &options.abort {
        // The sidecar's own keys (`layout::Sidecar`), so ingest applies it as it would upstream.
        if let Some(rate) = rule.max_failure_rate {
            sidecar.insert("maxFailureRate".into(), Value::from(rate));
        }
        if let Some(rows) = rule.max_failed_rows {
            sidecar.insert("maxFailedRows".into(), Value::from(rows));
        }
        sidecar.insert("abortAfterRows".into(), Value::from(rule.after_rows));
        sidecar.insert("onAbort".into(), Value::from(rule.action.as_str()));
    }
    Value::Object(sidecar)
}

/// Streams both files; `false` when the target is missing or differs.
fn same_contents(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return Ok(false);
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (
        BufReader::new(File::open(a)?),
        BufReader::new(File::open(b)?),
    );
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// A relative path (no scheme) becomes a `file://` URL of the file beside the dataset. Missing
/// files are resolved too, so the render fails with IMAGE_FETCH_FAILED naming the full path.
pub(crate) fn resolve_value(base: &Path, value: &str) -> String {
    let trimmed = value.trim();
    let has_scheme = trimmed.contains("://") || trimmed.starts_with("data:");
    if trimmed.is_empty() || has_scheme {
        return value.to_owned();
    }
    let path = base.join(trimmed);
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    url::Url::from_file_path(&path)
        .map(String::from)
        .unwrap_or_else(|()| value.to_owned())
}

/// Copies the dataset to `output` with the file columns resolved (deterministic output, so an
/// unchanged dataset is rewritten to identical bytes).
fn resolve_file_columns(
    input: &Path,
    output: &Path,
    format: DatasetFormat,
    columns: &[String],
) -> anyhow::Result<()> {
    let base = input.parent().map(Path::to_path_buf).unwrap_or_default();
    match format {
        DatasetFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(input)?;
            let mut writer = csv::WriterBuilder::new().flexible(true).from_path(output)?;
            let header = reader.headers()?.clone();
            let wanted: Vec<bool> = header
                .iter()
                .map(|h| columns.iter().any(|c| c == h.trim()))
                .collect();
            writer.write_record(&header)?;
            for record in reader.records() {
                let record = record?;
                let fields = record.iter().enumerate().map(|(i, v)| {
                    if wanted.get(i).copied().unwrap_or(false) {
                        resolve_value(&base, v)
                    } else {
                        v.to_owned()
                    }
                });
                writer.write_record(fields)?;
            }
            writer.flush()?;
        }
        DatasetFormat::Json | DatasetFormat::JsonLines => {
            let resolve = |value: &mut Value| {
                if let Value::Object(object) = value {
                    for column in columns {
                        if let Some(Value::String(s)) = object.get_mut(column) {
                            *s = resolve_value(&base, s);
                        }
                    }
                }
            };
            let text = std::fs::read_to_string(input)?;
            let out = if format == DatasetFormat::Json {
                let mut all: Value = serde_json::from_str(&text)?;
                if let Value::Array(items) = &mut all {
                    items.iter_mut().for_each(resolve);
                }
                serde_json::to_string(&all)?
            } else {
                let mut lines = Vec::new();
                for line in text.lines() {
                    if line.trim().is_empty() {
                        lines.push(String::new());
                        continue;
                    }
                    let mut value: Value = serde_json::from_str(line)?;
                    resolve(&mut value);
                    lines.push(serde_json::to_string(&value)?);
                }
                lines.join("\n") + "\n"
            };
            std::fs::write(output, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_become_file_urls_and_urls_stay() {
        let base = Path::new("/data/set");
        assert_eq!(
            resolve_value(base, "images/a.png"),
            "file:///data/set/images/a.png"
        );
        assert_eq!(resolve_value(base, "https://x/a.png"), "https://x/a.png");
        assert_eq!(resolve_value(base, ""), "");
    }

    #[test]
    fn mapping_pairs_need_both_sides() {
        assert_eq!(
            parse_mapping(&["Name=title".into()])
                .unwrap()
                .get("Name")
                .unwrap(),
            "title"
        );
        assert!(parse_mapping(&["Name".into()]).is_err());
        assert!(parse_mapping(&["=title".into()]).is_err());
    }
}
