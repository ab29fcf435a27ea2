//! `pictify-batch check DATASET --template ID`: what a run would find out, before a render or a
//! credit. Every row is read with the pipeline's own rules, then held against the template's
//! variable definitions (the emulator's sidecar, or `GET /templates/{uid}/variables` on Pictify);
//! every distinct image URL is probed; duplicates are counted; and the run is estimated on a plan.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use futures::StreamExt as _;
use serde::Serialize;
use serde_json::{Map, Value};
use shared::dataset::{DatasetReader, Item, RowRules, fingerprint};
use shared::pictify::Plan;
use shared::pictify::variables::{VariableDef, invalid_variables, with_defaults};
use shared::pictify::wire::error_codes;
use shared::pictify::{PictifyClient, PictifyConfig, PictifyError};
use shared::secret::Secret;

use crate::prepare::{self, JobOptions};
use crate::{Failure, Outcome};

/// AWS's share per 1,000 images, measured (README "Deploying": ~1,130 DynamoDB, 16 S3, 20 SQS
/// requests and ~1,020 Lambda invocations per 1,000 rows at us-east-1 on-demand prices).
const AWS_USD_PER_1000_IMAGES: f64 = 0.0012;
/// Rows shown per problem kind in the text report (the JSON has them all).
const SHOWN: usize = 10;

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub input: prepare::DatasetArgs,
    /// The plan the estimates are for.
    #[arg(
        long,
        default_value = "pro",
        value_name = "free|pro|business|enterprise"
    )]
    pub plan: Plan,
    /// Read the template's definitions from Pictify instead of the emulator (no render, no credit).
    #[arg(long, env = "PICTIFY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value = shared::pictify::client::DEFAULT_BASE_URL)]
    pub base_url: String,
    /// Do not probe image URLs.
    #[arg(long)]
    pub no_probe: bool,
    /// Seconds before an image probe counts as unreachable.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
    pub probe_timeout: u64,
    /// Image probes at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub probe_concurrency: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row that would not render, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowProblem {
    /// 0-based data row, as the results manifest's `row` (the CSV header is not a row).
    pub row: u64,
    /// `REJECTED` (the pipeline would not send it) or the error code its render would fail with.
    pub code: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageProblem {
    pub url: String,
    pub reason: String,
    /// The rows that use it.
    pub rows: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    pub plan: String,
    /// One per rendered image: every row that would render, duplicates included (each is a render).
    pub credits: u64,
    /// The plan's monthly renders, when it has a cap.
    pub monthly_renders: Option<u64>,
    pub batches: u64,
    /// Submits plus one results poll per batch (`batch.completed`).
    pub requests: u64,
    /// At `Plan::RENDER_SECONDS` per item, the plan's batches at once and requests a minute.
    pub seconds: u64,
    pub aws_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub dataset: String,
    pub template: String,
    /// `emulator` or the Pictify base URL the definitions came from.
    pub definitions_from: String,
    pub rows: u64,
    pub ok: u64,
    pub rejected: u64,
    pub would_fail: u64,
    /// Distinct (template, variables) among the rows the template accepts (before image probes).
    pub distinct_renders: u64,
    /// Rows whose variables repeat an earlier row's: (row, first row).
    pub duplicates: Vec<(u64, u64)>,
    /// Columns no template variable reads (after the mapping): sent, but unused.
    pub unused_columns: Vec<String>,
    pub problems: Vec<RowProblem>,
    pub images_probed: u64,
    pub image_problems: Vec<ImageProblem>,
    pub estimate: Estimate,
}

pub async fn check(args: CheckArgs) -> Result<Outcome, Failure> {
    let options = args
        .input
        .job_options(shared::pictify::wire::Format::Png, None, None)?;
    let dataset = prepare::check_dataset(&args.input.dataset, &options)?;
    let (definitions, from) = match &args.api_key {
        Some(key) => (
            remote_definitions(&args.base_url, key, &args.input.template).await?,
            args.base_url.clone(),
        ),
        None => (local_definitions(&args)?, "emulator".to_owned()),
    };
    let (mut report, images) = read_rows(&args, &options, &dataset, &definitions)?;
    report.definitions_from = from;
    if !args.no_probe {
        probe_images(&args, images, &mut report).await?;
    }
    report.problems.sort_by_key(|p| p.row);
    report.estimate = estimate(args.plan, report.ok);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Failure::Internal(e.into()))?
        );
    } else {
        print!("{}", render_text(&report));
    }
    Ok(if report.rejected + report.would_fail == 0 {
        Outcome::AllRendered
    } else {
        Outcome::SomeProblems
    })
}

fn local_definitions(args: &CheckArgs) -> Result<Vec<VariableDef>, Failure> {
    let templates = crate::run::emulator_templates(args.input.templates.as_deref())?;
    let template = templates.get(&args.input.template).ok_or_else(|| {
        let known: Vec<&str> = templates.ids().collect();
        Failure::usage(format!(
            "unknown template `{}` (the emulator has: {})",
            args.input.template,
            known.join(", ")
        ))
    })?;
    Ok(template.variables.clone())
}

/// `GET /templates/{uid}/variables` on Pictify.
async fn remote_definitions(
    base_url: &str,
    key: &str,
    template: &str,
) -> Result<Vec<VariableDef>, Failure> {
    let client = PictifyClient::new(PictifyConfig {
        base_url: base_url.to_owned(),
        api_key: Secret::new(key),
        ..PictifyConfig::default()
    })
    .map_err(|e| Failure::Internal(anyhow::anyhow!("building the Pictify client: {e}")))?;
    match client.template_variables(template).await {
        Ok(definitions) => Ok(definitions),
        Err(PictifyError::Unauthorized { .. }) => {
            Err(Failure::usage("Pictify refused the API key (401)"))
        }
        Err(PictifyError::NotFound { .. }) => Err(Failure::usage(format!(
            "unknown template `{template}` (Pictify: 404)"
        ))),
        Err(e) => Err(Failure::usage(format!(
            "reading the definitions of `{template}` from {base_url}: {e}"
        ))),
    }
}

/// The image URLs the rows that would render use, with those rows.
type ImageUses = BTreeMap<String, Vec<u64>>;

/// One pass over the rows: the pipeline's reader (its rejections), then the template's
/// definitions (the `INVALID_VARIABLE`s a render would fail with), duplicates, and the image URLs
/// to probe (memory grows with distinct URLs, not with rows).
fn read_rows(
    args: &CheckArgs,
    options: &JobOptions,
    dataset: &prepare::CheckedDataset,
    definitions: &[VariableDef],
) -> Result<(Report, ImageUses), Failure> {
    let shown = args.input.dataset.display().to_string();
    let file = File::open(&dataset.path)
        .map_err(|e| Failure::usage(format!("cannot read the dataset {shown}: {e}")))?;
    let rules = RowRules {
        mapping: options.mapping.clone(),
        required: options.required.clone(),
        ..RowRules::default()
    };
    let reader = DatasetReader::new(BufReader::new(file), dataset.format, rules)
        .map_err(|e| Failure::usage(format!("dataset {shown}: {e}")))?;
    let base = dataset
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut report = Report {
        dataset: shown.clone(),
        template: args.input.template.clone(),
        definitions_from: String::new(),
        rows: 0,
        ok: 0,
        rejected: 0,
        would_fail: 0,
        distinct_renders: 0,
        duplicates: Vec::new(),
        unused_columns: unused_columns(&dataset.columns, &options.mapping, definitions),
        problems: Vec::new(),
        images_probed: 0,
        image_problems: Vec::new(),
        estimate: estimate(args.plan, 0),
    };
    let file_variables: Vec<&String> = options
        .file_columns
        .iter()
        .map(|column| options.mapping.get(column).unwrap_or(column))
        .collect();
    let mut images = ImageUses::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for item in reader {
        let item = item.map_err(|e| Failure::usage(format!("dataset {shown}: {e}")))?;
        report.rows += 1;
        let mut row = match item {
            Item::Rejected(r) => {
                report.rejected += 1;
                report.problems.push(RowProblem {
                    row: r.number,
                    code: "REJECTED".into(),
                    reason: r.reason.to_string(),
                });
                continue;
            }
            Item::Valid(row) => row,
        };
        for variable in &file_variables {
            if let Some(Value::String(path)) = row.variables.get_mut(*variable) {
                *path = prepare::resolve_value(&base, path);
            }
        }
        if let Some(reason) = invalid(definitions, &row.variables) {
            report.would_fail += 1;
            report.problems.push(RowProblem {
                row: row.number,
                code: error_codes::INVALID_VARIABLE.into(),
                reason,
            });
            continue;
        }
        report.ok += 1;
        for (name, value) in &row.variables {
            let Value::String(url) = value else { continue };
            let remote = url.starts_with("http://") || url.starts_with("https://");
            let image = definitions
                .iter()
                .any(|d| &d.name == name && d.kind.as_deref() == Some("image"));
            let local = url.starts_with("file://") && (image || file_variables.contains(&name));
            if remote || local {
                images.entry(url.clone()).or_default().push(row.number);
            }
        }
        let key = fingerprint(&args.input.template, &row.variables);
        match seen.get(&key) {
            Some(first) => report.duplicates.push((row.number, *first)),
            None => {
                seen.insert(key, row.number);
            }
        }
    }
    report.distinct_renders = seen.len() as u64;
    Ok((report, images))
}

/// What a render of these variables would fail with: the emulator's own rule, plus a hint for
/// an image given as a bare path.
fn invalid(definitions: &[VariableDef], variables: &Map<String, Value>) -> Option<String> {
    let values = with_defaults(definitions, variables);
    let mut reason = invalid_variables(definitions, &values)?;
    let bare_image_path = definitions
        .iter()
        .filter(|d| d.kind.as_deref() == Some("image"))
        .filter_map(|d| values.get(&d.name).and_then(Value::as_str))
        .any(|t| !t.contains(':') && !t.trim().is_empty());
    if bare_image_path {
        reason.push_str(" — a file beside the dataset? pass --file-column with its column");
    }
    Some(reason)
}

fn unused_columns(
    columns: &[String],
    mapping: &BTreeMap<String, String>,
    definitions: &[VariableDef],
) -> Vec<String> {
    columns
        .iter()
        .filter(|column| {
            let variable = mapping.get(*column).unwrap_or(column);
            !definitions.iter().any(|d| &d.name == variable)
        })
        .cloned()
        .collect()
}

/// Probes each distinct image URL the rows that would render use (image-typed variables,
/// `--file-column` paths, any http(s) value): HEAD, then GET when HEAD is not allowed; `file://`
/// paths must exist. The rows behind an unreachable one would fail `IMAGE_FETCH_FAILED`.
async fn probe_images(
    args: &CheckArgs,
    mut urls: ImageUses,
    report: &mut Report,
) -> Result<(), Failure> {
    report.images_probed = urls.len() as u64;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.probe_timeout))
        .build()
        .map_err(|e| Failure::Internal(e.into()))?;
    let results: Vec<(String, Option<String>)> = futures::stream::iter(urls.keys().cloned())
        .map(|url| {
            let client = client.clone();
            async move {
                let problem = probe(&client, &url).await;
                (url, problem)
            }
        })
        .buffer_unordered(args.probe_concurrency as usize)
        .collect()
        .await;
    let mut failed_rows: BTreeMap<u64, String> = BTreeMap::new();
    for (url, problem) in results {
        let Some(reason) = problem else { continue };
        let rows = urls.remove(&url).unwrap_or_default();
        for row in &rows {
            failed_rows
                .entry(*row)
                .or_insert_with(|| format!("{url}: {reason}"));
        }
        report
            .image_problems
            .push(ImageProblem { url, reason, rows });
    }
    report.image_problems.sort_by(|a, b| a.rows.cmp(&b.rows));
    for (row, reason) in failed_rows {
        report.ok -= 1;
        report.would_fail += 1;
        report.problems.push(RowProblem {
            row,
            code: error_codes::IMAGE_FETCH_FAILED.into(),
            reason,
        });
    }
    Ok(())
}

/// Why `url` cannot be fetched, if it cannot.
async fn probe(client: &reqwest::Client, url: &str) -> Option<String> {
    if let Some(path) = url.strip_prefix("file://") {
        let path = url::Url::parse(url)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .unwrap_or_else(|| PathBuf::from(path));
        return (!path.is_file()).then(|| "no such file".to_owned());
    }
    let answer = match client.head(url).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => {
            client.get(url).send().await
        }
        other => other,
    };
    match answer {
        Ok(r) if r.status().is_success() => None,
        Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Some("timed out".into()),
        Err(e) => Some(format!("unreachable ({})", root_cause(&e))),
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The run on `plan`: chunks of min(100, the plan's items per batch), at most its batches at
/// once, each item `Plan::RENDER_SECONDS`, and no faster than its requests a minute allow.
pub fn estimate(plan: Plan, renders: u64) -> Estimate {
    let pacing = shared::settings::Pacing::for_plan(plan);
    let limits = plan.limits();
    let chunk = pacing.chunk_rows.max(1) as u64;
    let batches = renders.div_ceil(chunk);
    let requests = batches * 2;
    let at_once = u64::from(pacing.max_concurrent_batches.unwrap_or(u32::MAX)).max(1);
    let rounds = batches.div_ceil(at_once);
    let render_seconds =
        (rounds as f64 * chunk.min(renders.max(1)) as f64 * Plan::RENDER_SECONDS).ceil() as u64;
    let request_seconds = pacing
        .requests_per_minute
        .map(|per_minute| (requests * 60).div_ceil(u64::from(per_minute.max(1))))
        .unwrap_or(0);
    Estimate {
        plan: plan.name().to_owned(),
        credits: renders,
        monthly_renders: limits.monthly_renders,
        batches,
        requests,
        seconds: if renders == 0 {
            0
        } else {
            render_seconds.max(request_seconds)
        },
        aws_usd: renders as f64 / 1000.0 * AWS_USD_PER_1000_IMAGES,
    }
}

fn render_text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} → {} (definitions from {})",
        r.dataset, r.template, r.definitions_from
    );
    let _ = writeln!(
        out,
        "rows: {} · ok {} · would be rejected {} · would fail {}",
        r.rows, r.ok, r.rejected, r.would_fail
    );
    let mut by_code: BTreeMap<&str, Vec<&RowProblem>> = BTreeMap::new();
    for p in &r.problems {
        by_code.entry(p.code.as_str()).or_default().push(p);
    }
    for (code, problems) in by_code {
        let _ = writeln!(out, "  {code} ({}):", problems.len());
        for p in problems.iter().take(SHOWN) {
            let _ = writeln!(out, "    row {}: {}", p.row, p.reason);
        }
        if problems.len() > SHOWN {
            let _ = writeln!(
                out,
                "    … {} more (--json lists them all)",
                problems.len() - SHOWN
            );
        }
    }
    let _ = writeln!(
        out,
        "distinct renders: {} ({} duplicate row(s){})",
        r.distinct_renders,
        r.duplicates.len(),
        match r.duplicates.first() {
            Some((row, first)) => format!(", e.g. row {row} repeats row {first}"),
            None => String::new(),
        }
    );
    if !r.unused_columns.is_empty() {
        let _ = writeln!(
            out,
            "columns no template variable reads: {}",
            r.unused_columns.join(", ")
        );
    }
    let unreachable = r.image_problems.len();
    let _ = writeln!(
        out,
        "images: {} distinct probed, {} unreachable",
        r.images_probed, unreachable
    );
    for p in r.image_problems.iter().take(SHOWN) {
        let _ = writeln!(out, "    {}: {} ({} row(s))", p.url, p.reason, p.rows.len());
    }
    let e = &r.estimate;
    let _ = writeln!(
        out,
        "on {}: {} credits{}, {} batch(es), {} requests, about {}",
        e.plan,
        e.credits,
        e.monthly_renders
            .map(|m| format!(" (of {m} a month)"))
            .unwrap_or_default(),
        e.batches,
        e.requests,
        human_seconds(e.seconds)
    );
    let _ = writeln!(
        out,
        "cost: {} Pictify credits, plus about ${:.4} of AWS if deployed",
        e.credits, e.aws_usd
    );
    out
}

fn human_seconds(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", seconds.div_ceil(60)),
        _ => format!("{:.1} h", seconds as f64 / 3600.0),
    }
}
