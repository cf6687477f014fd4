//! Progress for long work: a bar on a terminal, periodic log lines otherwise. Always on stderr.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts of an ingest as it goes.
pub struct IngestProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Cell<Instant>,
    listed: Cell<u64>,
    skipped: Cell<u64>,
    fetched: Cell<u64>,
    records: Cell<u64>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl IngestProgress {
    pub fn new(enabled: bool) -> IngestProgress {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        IngestProgress {
            bar,
            started: Instant::now(),
            last_log: Cell::new(Instant::now()),
            listed: Cell::new(0),
            skipped: Cell::new(0),
            fetched: Cell::new(0),
            records: Cell::new(0),
        }
    }

    pub fn listed(&self) {
        self.listed.set(self.listed.get() + 1);
        self.tick();
    }

    pub fn skipped(&self) {
        self.skipped.set(self.skipped.get() + 1);
        self.tick();
    }

    pub fn fetched(&self, records: usize) {
        self.fetched.set(self.fetched.get() + 1);
        self.records.set(self.records.get() + records as u64);
        self.tick();
    }

    fn message(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "{} files listed, {} unchanged, {} read, {} records ({:.0} files/s)",
            self.listed.get(),
            self.skipped.get(),
            self.fetched.get(),
            self.records.get(),
            (self.fetched.get() + self.skipped.get()) as f64 / secs
        )
    }

    fn tick(&self) {
        match &self.bar {
            Some(bar) => {
                if (self.listed.get() + self.fetched.get()) % 256 == 0 {
                    bar.set_message(self.message());
                }
            }
            None => {
                if self.last_log.get().elapsed() >= LOG_EVERY {
                    self.last_log.set(Instant::now());
                    tracing::info!("ingest: {}", self.message());
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
