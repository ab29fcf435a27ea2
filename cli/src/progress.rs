//! Progress while a run is in flight: an indicatif bar on a terminal, else one plain line every
//! ~2 s (CI logs, pipes), both on stderr.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shared::domain::{Job, JobStatus};

const PLAIN_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            last_line: None,
            started: Instant::now(),
        }
    }

    pub fn update(&mut self, job: &Job) {
        let c = job.counters;
        let done = c.terminal();
        let ingesting = job.status == JobStatus::Ingesting;
        let message = format!(
            "rendered {} failed {} rejected {}{}{}",
            c.rendered,
            c.failed,
            c.rejected,
            match c.cancelled {
                0 => String::new(),
                n => format!(" cancelled {n}"),
            },
            if ingesting {
                " (reading the dataset)"
            } else {
                ""
            }
        );
        match &self.bar {
            Some(bar) => {
                if !ingesting {
                    bar.set_length(c.rows);
                }
                bar.set_position(done);
                bar.set_message(message);
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) {
                    self.last_line = Some(Instant::now());
                    let total = if ingesting {
                        "?".to_owned()
                    } else {
                        c.rows.to_string()
                    };
                    eprintln!(
                        "[{:>6.1}s] {done}/{total} rows: {message}",
                        self.started.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
