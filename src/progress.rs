//! Progress for long work: a bar on a terminal, periodic log lines otherwise. Always on stderr.

use std::cell::Cell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts of an ingest as it goes.
pub struct IngestProgress {
    bar: Option<ProgressBar>,
    started: Instant,
    /// When the bar's message or the last log line was written.
    last_shown: Cell<Instant>,
    listed: Cell<u64>,
    skipped: Cell<u64>,
    fetched: Cell<u64>,
    records: Cell<u64>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);
const BAR_EVERY: Duration = Duration::from_millis(100);

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
            last_shown: Cell::new(Instant::now()),
            listed: Cell::new(0),
            skipped: Cell::new(0),
            fetched: Cell::new(0),
            records: Cell::new(0),
        }
    }

    pub fn listed(&self, files: usize) {
        self.listed.set(self.listed.get() + files as u64);
        self.tick();
    }

    pub fn skipped(&self, files: usize) {
        self.skipped.set(self.skipped.get() + files as u64);
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
        let every = if self.bar.is_some() {
            BAR_EVERY
        } else {
            LOG_EVERY
        };
        if self.last_shown.get().elapsed() < every {
            return;
        }
        self.last_shown.set(Instant::now());
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None => tracing::info!("ingest: {}", self.message()),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
