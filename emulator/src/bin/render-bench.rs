//! Render benchmark: N blog cards (1200×630) one at a time for the median latency, then with parallel workers for throughput.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use pictify_emulator::render::{RenderOptions, Renderer, TemplateStore};
use serde_json::json;
use shared::pictify::wire::{Format, VariableSet};

#[derive(Parser)]
#[command(about = "Measure the emulator's renderer on the bundled blog card")]
struct Args {
    /// Images per phase.
    #[arg(long, default_value_t = 40)]
    n: usize,
    /// Parallel workers for the throughput phase.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Output format: png, jpeg, webp or gif.
    #[arg(long, default_value = "png")]
    format: String,
    /// Template to render.
    #[arg(long, default_value = "tmpl_blog_card")]
    template: String,
    /// Skip rasterisation (measures substitution + placeholder overhead only).
    #[arg(long)]
    no_rasterize: bool,
}

fn variables(i: usize) -> VariableSet {
    let mut v = VariableSet::new();
    v.insert(
        "title".into(),
        json!(format!(
            "Benchmarking a browserless renderer, take {i}: flexbox, gradients and text"
        )),
    );
    v.insert("author".into(), json!("Alice Johnson"));
    v.insert("publishDate".into(), json!("2026-01-15"));
    v
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format: Format = serde_json::from_value(json!(args.format)).context("unknown --format")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = TemplateStore::bundled();
        let template = store.get(&args.template).context("unknown --template")?;
        let options = RenderOptions { rasterize: !args.no_rasterize, ..RenderOptions::default() };
        let renderer = Arc::new(Renderer::new(options)?);

        // Warm-up: first-use glyph caches and the lazily built thread pools.
        renderer.render(&template, &variables(0), format, 0.9).await?;

        let mut times = Vec::with_capacity(args.n);
        let mut bytes = 0usize;
        for i in 0..args.n {
            let started = Instant::now();
            let out = renderer.render(&template, &variables(i), format, 0.9).await?;
            times.push(started.elapsed());
            bytes += out.bytes.len();
        }
        times.sort();
        let median = times.get(times.len() / 2).copied().unwrap_or_default();
        println!(
            "sequential: {} × {} {}  median {:.2} ms/image  (min {:.1}, max {:.1}; mean size {} KiB)",
            args.n,
            args.template,
            format.as_str(),
            ms(median),
            ms(times.first().copied().unwrap_or_default()),
            ms(times.last().copied().unwrap_or_default()),
            bytes / args.n.max(1) / 1024,
        );

        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..args.workers {
            let (renderer, template) = (Arc::clone(&renderer), Arc::clone(&template));
            let share = args.n / args.workers + usize::from(w < args.n % args.workers);
            tasks.push(tokio::spawn(async move {
                for i in 0..share {
                    renderer.render(&template, &variables(i), format, 0.9).await?;
                }
                anyhow::Ok(share)
            }));
        }
        let mut done = 0;
        for task in tasks {
            done += task.await??;
        }
        let elapsed = started.elapsed();
        println!(
            "parallel:   {done} images with {} workers in {:.2} s  → {:.1} images/s",
            args.workers,
            elapsed.as_secs_f64(),
            done as f64 / elapsed.as_secs_f64()
        );
        anyhow::Ok(())
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
