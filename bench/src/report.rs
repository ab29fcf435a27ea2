//! The table: rows with their targets and verdicts, figures read from elsewhere (AWS request
//! counts, Lambda bootstrap sizes and init times), and the machine the run happened on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::Options;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// A figure without a target, or one that could not be measured here.
    Info,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub figure: &'static str,
    pub what: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn info(figure: &'static str, what: &str, measured: &str) -> Self {
        Row {
            figure,
            what: what.to_owned(),
            measured: measured.to_owned(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    pub fn check(
        figure: &'static str,
        what: &str,
        measured: &str,
        target: &str,
        met: bool,
    ) -> Self {
        Row {
            figure,
            what: what.to_owned(),
            measured: measured.to_owned(),
            target: target.to_owned(),
            verdict: if met { Verdict::Met } else { Verdict::Missed },
        }
    }
}

/// Public on-demand prices, us-east-1, as of 2026-11-28 (the ones docs/deploy.md §7 uses).
mod price {
    pub const DATE: &str = "2026-11-28";
    pub const DYNAMO_WRITE_UNIT: f64 = 0.625e-6;
    pub const DYNAMO_READ_UNIT: f64 = 0.125e-6;
    pub const SQS_REQUEST: f64 = 0.40e-6;
    pub const S3_PUT: f64 = 0.005e-3;
    pub const S3_GET: f64 = 0.0004e-3;
    pub const SNS_PUBLISH: f64 = 0.50e-6;
    pub const SECRET_GET: f64 = 0.05e-4;
    /// Lambda requests and duration per 1,000 images from docs/deploy.md §7: the SDK log of the
    /// e2e test cannot see invocations, so these stay estimates (≈1,030 × $0.20/M + ≈14 GB-s).
    pub const LAMBDA_PER_1000: f64 = 0.00021 + 0.00019;
}

const COST_TARGET: f64 = 0.002;

/// Cost of one request by (service, operation). Items are ≤ 1 KB (true for this table), so a
/// plain request is one unit. Upper bounds where the log cannot see inside a request: a
/// transaction is taken as 2 items at 2 write units each, a `BatchGetItem` as 100 keys (the
/// manifest's batch size) at one strongly consistent read unit each.
fn request_cost(service: &str, operation: &str) -> f64 {
    match (service, operation) {
        ("DynamoDB", "TransactWriteItems") => 4.0 * price::DYNAMO_WRITE_UNIT,
        ("DynamoDB", "BatchGetItem") => 100.0 * price::DYNAMO_READ_UNIT,
        ("DynamoDB", "GetItem" | "Query" | "Scan") => price::DYNAMO_READ_UNIT,
        ("DynamoDB", _) => price::DYNAMO_WRITE_UNIT,
        ("SQS", _) => price::SQS_REQUEST,
        ("S3", "GetObject" | "HeadObject") => price::S3_GET,
        ("S3", _) => price::S3_PUT,
        ("SNS", _) => price::SNS_PUBLISH,
        ("SecretsManager", _) => price::SECRET_GET,
        _ => 0.0,
    }
}

/// (service, operation) → count from the `--nocapture` output of the e2e request-count test.
fn parse_request_log(text: &str) -> BTreeMap<(String, String), u64> {
    let mut counts = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("AWS requests for a 1,000-row job") {
            inside = true;
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match (inside, parts.as_slice()) {
            (true, [service, operation, n]) if line.starts_with("  ") => {
                if let Ok(n) = n.parse() {
                    counts.insert(((*service).to_owned(), (*operation).to_owned()), n);
                }
            }
            (true, _) => inside = false,
            _ => {}
        }
    }
    counts
}

pub fn aws_rows(log: Option<&Path>) -> anyhow::Result<Vec<Row>> {
    let counts = match log {
        Some(path) => parse_request_log(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        ),
        None => BTreeMap::new(),
    };
    if counts.is_empty() {
        let why = match log {
            Some(path) => format!("no request counts in {}", path.display()),
            None => "moto not available or --no-aws".to_owned(),
        };
        return Ok(vec![
            Row::info(
                "3",
                "AWS requests per 1,000 rows (reference, docs/deploy.md §7; not measured in this run)",
                &format!(
                    "~1,080 DynamoDB write units, ~40 read units, ~30 SQS, ~15 S3, 1 SNS, ~1,030 Lambda invocations ({why})"
                ),
            ),
            Row::check(
                "3",
                &format!(
                    "AWS cost per 1,000 images (reference, prices of {})",
                    price::DATE
                ),
                "≈ $0.0012",
                "≤ $0.002",
                0.0012 <= COST_TARGET,
            ),
        ]);
    }
    let mut by_service: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    let mut detail = Vec::new();
    for ((service, operation), n) in &counts {
        let entry = by_service.entry(service).or_default();
        entry.0 += n;
        entry.1 += *n as f64 * request_cost(service, operation);
        detail.push(format!("{service} {operation} {n}"));
    }
    let requests_cost: f64 = by_service.values().map(|(_, c)| c).sum();
    let total = requests_cost + price::LAMBDA_PER_1000;
    let summary = by_service
        .iter()
        .map(|(service, (n, cost))| format!("{service} {n} (${cost:.5})"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(vec![
        Row::info(
            "3",
            "AWS requests per 1,000 rows (pipeline_e2e against moto, SDK interceptor)",
            &format!("{summary}; {}", detail.join(", ")),
        ),
        Row::check(
            "3",
            &format!(
                "AWS cost per 1,000 images (prices of {}; Lambda ≈ ${:.5} from docs/deploy.md)",
                price::DATE,
                price::LAMBDA_PER_1000
            ),
            &format!("${total:.5}"),
            "≤ $0.002",
            total <= COST_TARGET,
        ),
    ])
}

fn functions(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo.join("functions"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Where scripts/lambda-build leaves bootstraps: `$LAMBDA_DIR`, `target/lambda`, or
/// `<other target dir>/lambda` when it ran with another CARGO_TARGET_DIR.
fn lambda_dirs(repo: &Path) -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("LAMBDA_DIR") {
        return vec![PathBuf::from(dir)];
    }
    let target = repo.join("target");
    let mut dirs = vec![target.join("lambda")];
    if let Ok(entries) = std::fs::read_dir(&target) {
        let mut others: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("lambda"))
            .filter(|p| p.is_dir() && *p != target.join("lambda"))
            .collect();
        others.sort();
        dirs.extend(others);
    }
    dirs
}

pub fn lambda_rows(repo: &Path) -> Vec<Row> {
    let names = functions(repo);
    let dir = lambda_dirs(repo)
        .into_iter()
        .find(|d| names.iter().any(|n| d.join(n).join("bootstrap").is_file()));
    let mut rows = Vec::new();
    match dir {
        None => rows.push(Row::info(
            "5",
            "Lambda bootstrap size",
            "not built (scripts/lambda-build)",
        )),
        Some(dir) => {
            for name in &names {
                let size = std::fs::metadata(dir.join(name).join("bootstrap")).map(|m| m.len());
                rows.push(match size {
                    Ok(bytes) => {
                        let mib = bytes as f64 / (1024.0 * 1024.0);
                        Row::check(
                            "5",
                            &format!(
                                "Lambda `{name}` bootstrap (stripped), {}",
                                dir.strip_prefix(repo).unwrap_or(&dir).display()
                            ),
                            &format!("{mib:.2} MiB ({bytes} B)"),
                            "≤ 10 MB",
                            mib <= 10.0,
                        )
                    }
                    Err(_) => Row::info(
                        "5",
                        &format!("Lambda `{name}` bootstrap"),
                        "not built (scripts/lambda-build)",
                    ),
                });
            }
        }
    }
    rows.push(init_row(repo));
    rows
}

/// Init times, if scripts/local-invoke left them in `target/local-invoke/init.jsonl` (one
/// `{"function": …, "init_ms": …}` per line).
fn init_row(repo: &Path) -> Row {
    let path = repo.join("target/local-invoke/init.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Row::info("5", "Lambda init (process start → ready)", "not measured");
    };
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for value in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if let (Some(f), Some(ms)) = (value["function"].as_str(), value["init_ms"].as_f64()) {
            times.entry(f.to_owned()).or_default().push(ms);
        }
    }
    if times.is_empty() {
        return Row::info("5", "Lambda init (process start → ready)", "not measured");
    }
    let medians: Vec<(String, f64)> = times
        .into_iter()
        .map(|(f, mut v)| {
            v.sort_by(f64::total_cmp);
            (f, v[v.len() / 2])
        })
        .collect();
    let worst = medians.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
    Row::check(
        "5",
        "Lambda init (process start → ready, median, from scripts/local-invoke)",
        &medians
            .iter()
            .map(|(f, ms)| format!("{f} {ms:.1} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        "≤ 50 ms",
        worst <= 50.0,
    )
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0 / 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), {mem_gib:.1} GiB RAM, load average at the end {}",
        load.join(" ")
    )
}

pub fn print(options: &Options, rows: &[Row]) {
    println!();
    println!(
        "pictify-bench{} — {} — {}",
        if options.tiny {
            " --tiny (smoke sizes: figures are not meaningful)"
        } else {
            ""
        },
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine()
    );
    println!();
    println!("| # | figure | measured | target | verdict |");
    println!("|---|---|---|---|---|");
    for row in rows {
        let verdict = match row.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
        };
        println!(
            "| {} | {} | {} | {} | {verdict} |",
            row.figure, row.what, row.measured, row.target
        );
    }
    let missed = rows.iter().filter(|r| r.verdict == Verdict::Missed).count();
    println!();
    println!(
        "{} targets met, {missed} missed{}",
        rows.iter().filter(|r| r.verdict == Verdict::Met).count(),
        if missed > 0 {
            " (see docs/benchmarks.md for why and what next)"
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_e2e_request_log_is_read_by_service_and_operation() {
        let log = "running 1 test\nAWS requests for a 1,000-row job (service, operation, count):\n  DynamoDB   PutItem                        1021\n  SQS        SendMessageBatch                  1\ntest a_1000_row_job ... ok\n";
        let counts = parse_request_log(log);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[&("DynamoDB".to_owned(), "PutItem".to_owned())], 1021);
    }

    #[test]
    fn a_transaction_costs_two_items_at_double_rate() {
        assert_eq!(
            request_cost("DynamoDB", "TransactWriteItems"),
            4.0 * request_cost("DynamoDB", "PutItem")
        );
    }
}
