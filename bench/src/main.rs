//! pictify-bench: runs every benchmark of issue #7 (ingest, webhook, AWS requests, local pipeline,
//! Lambda) and prints one table. Run it through `scripts/bench` (`--tiny` for a seconds-long smoke
//! run). Each measurement runs in a child process of this same binary, so peak RSS is its own.

mod data;
mod measure;
mod report;
mod runs;
mod stubs;

use std::path::PathBuf;

use anyhow::{Context, bail};

/// What the orchestrating run was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub tiny: bool,
    pub data_dir: PathBuf,
    pub repo: PathBuf,
    /// `--nocapture` output of the `pipeline_e2e` request-count test, when scripts/bench ran it.
    pub aws_log: Option<PathBuf>,
    pub skip_local: bool,
    /// Only figure 6 (pacing to a plan).
    pub only_pacing: bool,
    /// Only figure 1 (ingest against the raw parse).
    pub only_ingest: bool,
}

const USAGE: &str =
    "usage: pictify-bench [--tiny] [--data DIR] [--repo DIR] [--aws-log FILE] [--skip-local] [--only-pacing] [--only-ingest]
  --tiny        every measurement on a tiny input (seconds; what CI runs)
  --data DIR    scratch dir for generated inputs (default <repo>/target/bench-data)
  --repo DIR    repository root (default: the current directory)
  --aws-log F   output of `cargo test --test pipeline_e2e a_1000_row_job -- --nocapture`
  --skip-local  skip the pictify-batch runs (figures 4 and 6)
  --only-pacing only figure 6: runs paced to Free, Pro and Business
  --only-ingest only figure 1: ingest against the raw parse";

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        tiny: false,
        data_dir: PathBuf::new(),
        repo: PathBuf::from("."),
        aws_log: None,
        skip_local: false,
        only_pacing: false,
        only_ingest: false,
    };
    let mut data_dir = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--tiny" => options.tiny = true,
            "--skip-local" => options.skip_local = true,
            "--only-pacing" => options.only_pacing = true,
            "--only-ingest" => options.only_ingest = true,
            "--data" => data_dir = Some(value()?),
            "--repo" => options.repo = value()?,
            "--aws-log" => options.aws_log = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    options.data_dir = data_dir.unwrap_or_else(|| options.repo.join("target/bench-data"));
    Ok(options)
}

/// `child <kind> <result-file> <args…>`: one measurement, figures written as JSON.
fn child(args: &[String]) -> anyhow::Result<()> {
    let [kind, result, rest @ ..] = args else {
        bail!("child needs <kind> <result-file>");
    };
    let arg = |i: usize| {
        rest.get(i)
            .with_context(|| format!("child {kind}: argument {i} missing"))
    };
    let figures = match kind.as_str() {
        "raw" => measure::raw_parse(&PathBuf::from(arg(0)?))?,
        "ingest" => measure::pipeline_ingest(&PathBuf::from(arg(0)?), arg(1)?, false)?,
        "ingest-checked" => measure::pipeline_ingest(&PathBuf::from(arg(0)?), arg(1)?, true)?,
        "phase-read" => measure::ingest_phase(&PathBuf::from(arg(0)?))?,
        "webhook" => measure::webhook(arg(0)?.parse().context("event count")?)?,
        other => bail!("unknown child measurement {other}"),
    };
    std::fs::write(result, serde_json::to_vec(&figures)?)
        .with_context(|| format!("writing {result}"))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return child(&args[1..]);
    }
    let options = parse(&args)?;
    let rows = runs::run_all(&options)?;
    report::print(&options, &rows);
    Ok(())
}
