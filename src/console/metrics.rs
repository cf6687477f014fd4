//! `GET /metrics` in the Prometheus (OpenMetrics) text format, on `serve` and on a scheduled
//! `run`'s health port. Two kinds of numbers:
//!
//! - from the ledger, computed at each scrape in one read transaction: marker lag per service
//!   key, usage files and records, problems, submission lines by status, lines needing attention,
//!   pending periods, drift lines (the aggregates are kept while the ledger is unchanged, see
//!   [`super::reader`]);
//! - from the run itself ([`RunMetrics`]): cycles by outcome, the last finished cycle, sync pull
//!   and push durations and the bytes they moved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::pages::Attention;
use super::reader::{Reader, Snapshot};
use crate::error::{FailureKind, Outcome};
use crate::ledger::console::{self as q, Query};
use crate::ledger::{LedgerFile, SqlValue};
use crate::period::parse_timestamp;

/// The content type of the OpenMetrics text format, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// What a scheduled `run` records about itself.
pub struct RunMetrics {
    cycles: Family<Labels, Counter>,
    last_finished: FloatGauge,
    sync_seconds: Family<Labels, Histogram>,
    sync_bytes: Family<Labels, Counter>,
}

impl Default for RunMetrics {
    fn default() -> RunMetrics {
        RunMetrics {
            cycles: Family::default(),
            last_finished: FloatGauge::default(),
            sync_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 14))
            }),
            sync_bytes: Family::default(),
        }
    }
}

/// Which way a sync went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Pull,
    Push,
}

impl RunMetrics {
    /// Counts a finished cycle: `success`, `needs_attention` (exit code 3: it finished, and
    /// something waits for an operator) or `failed` (by kind: `failed_state`, ...).
    pub fn cycle(&self, result: &Result<Outcome>, at: DateTime<Utc>) {
        let outcome = match result {
            Ok(Outcome::Success) => "success".to_string(),
            Ok(Outcome::NeedsAttention) => "needs_attention".to_string(),
            Err(e) => format!("failed_{}", FailureKind::of(e).as_str()),
        };
        self.cycles.get_or_create(&label("outcome", &outcome)).inc();
        if result.is_ok() {
            self.last_finished
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Records one sync: how long it took, and the bytes it moved over the network: the stored
    /// (compressed) segments a push uploaded or a pull downloaded (0 when there was nothing to
    /// move).
    pub fn sync(&self, direction: Direction, took: Duration, bytes: u64) {
        let labels = label(
            "direction",
            match direction {
                Direction::Pull => "pull",
                Direction::Push => "push",
            },
        );
        self.sync_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.sync_bytes.get_or_create(&labels).inc_by(bytes);
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "meterbook_cycles",
            "Cycles of meterbook run by outcome (success, needs_attention, failed_<kind>)",
            self.cycles.clone(),
        );
        registry.register(
            "meterbook_last_finished_cycle_timestamp_seconds",
            "When the last cycle that finished (exit code 0 or 3) ended, Unix time",
            self.last_finished.clone(),
        );
        registry.register(
            "meterbook_sync_duration_seconds",
            "Duration of sync pulls and pushes of the ledger",
            self.sync_seconds.clone(),
        );
        registry.register(
            "meterbook_sync_bytes",
            "Stored (compressed) bytes of the segments sync downloaded (pull) and uploaded (push)",
            self.sync_bytes.clone(),
        );
    }
}

/// The ledger's numbers at one moment.
#[derive(Debug, Clone, Default)]
pub struct LedgerGauges {
    /// (service key, last_processed_to) of each service key with a marker.
    markers: Vec<(String, DateTime<Utc>)>,
    /// (status, files, records).
    files: Vec<(String, i64, i64)>,
    /// (status, lines).
    lines: Vec<(String, i64)>,
    attention: Vec<(&'static str, i64)>,
}

impl LedgerGauges {
    /// Reads them in `snapshot`.
    pub fn read(snapshot: &mut Snapshot<'_>) -> Result<LedgerGauges> {
        let keys = snapshot.rows(&Query::cheap(q::SERVICE_KEYS, vec![]))?;
        let markers = (0..keys.rows.len())
            .filter_map(|i| {
                let to = text(keys.get(i, "last_processed_to")).and_then(parse_timestamp)?;
                Some((text(keys.get(i, "service_key"))?.to_string(), to))
            })
            .collect();
        let f = snapshot.rows(&Query::cheap(q::FILES_BY_STATUS, vec![]))?;
        let files = (0..f.rows.len())
            .map(|i| {
                (
                    text(f.get(i, "status")).unwrap_or_default().to_string(),
                    int(f.get(i, "files")),
                    int(f.get(i, "records")),
                )
            })
            .collect();
        let l = snapshot.rows(&Query::cheap(q::LINES_BY_STATUS, vec![]))?;
        let lines = (0..l.rows.len())
            .map(|i| {
                (
                    text(l.get(i, "status")).unwrap_or_default().to_string(),
                    int(l.get(i, "lines")),
                )
            })
            .collect();
        let a = Attention::read(snapshot)?;
        let attention = vec![
            ("failed_lines", a.failed_lines),
            ("warning_lines", a.warning_lines),
            ("unanswered_lines", a.unanswered_lines),
            ("drift_lines", a.drift_lines),
            ("record_problems", a.record_problems),
            ("path_problems", a.path_problems),
            ("unattributed_records", a.unattributed_records),
            ("pending_complete", a.pending_complete),
            ("pending_periods", a.pending_periods),
        ];
        Ok(LedgerGauges {
            markers,
            files,
            lines,
            attention,
        })
    }

    fn attention(&self, name: &str) -> i64 {
        self.attention
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    fn register(&self, registry: &mut Registry, now: DateTime<Utc>) {
        let lag = Family::<Labels, FloatGauge>::default();
        let marker = Family::<Labels, FloatGauge>::default();
        for (key, to) in &self.markers {
            let labels = label("service_key", key);
            lag.get_or_create(&labels)
                .set((now - *to).num_milliseconds() as f64 / 1000.0);
            marker
                .get_or_create(&labels)
                .set(to.timestamp_millis() as f64 / 1000.0);
        }
        registry.register(
            "meterbook_export_marker_lag_seconds",
            "How far Omnistrate's completion marker (last_processed_to) is behind now, per service key",
            lag,
        );
        registry.register(
            "meterbook_export_marker_timestamp_seconds",
            "Omnistrate's completion marker (last_processed_to) per service key, Unix time",
            marker,
        );
        let files = Family::<Labels, Gauge>::default();
        let records = Family::<Labels, Gauge>::default();
        for (status, n, r) in &self.files {
            files.get_or_create(&label("status", status)).set(*n);
            records.get_or_create(&label("file_status", status)).set(*r);
        }
        registry.register(
            "meterbook_usage_files",
            "Usage files in the ledger by status (ok, partial, rejected)",
            files,
        );
        registry.register(
            "meterbook_usage_records",
            "Usage records in the ledger by the status of their file",
            records,
        );
        let problems = Family::<Labels, Gauge>::default();
        problems
            .get_or_create(&label("kind", "record"))
            .set(self.attention("record_problems"));
        problems
            .get_or_create(&label("kind", "path"))
            .set(self.attention("path_problems"));
        registry.register(
            "meterbook_ingest_problems",
            "Ingest problems: with files and records (ingest_problems), with paths (source_problems)",
            problems,
        );
        let unattributed = Gauge::<i64>::default();
        unattributed.set(self.attention("unattributed_records"));
        registry.register(
            "meterbook_unattributed_records",
            "Usage records without a contract id (unattributed_usage): never billed",
            unattributed,
        );
        let lines = Family::<Labels, Gauge>::default();
        for (status, n) in &self.lines {
            lines.get_or_create(&label("status", status)).set(*n);
        }
        registry.register(
            "meterbook_submission_lines",
            "Submission lines by status",
            lines,
        );
        let attention = Family::<Labels, Gauge>::default();
        for (reason, column) in [
            ("failed", "failed_lines"),
            ("warning", "warning_lines"),
            ("unanswered", "unanswered_lines"),
        ] {
            attention
                .get_or_create(&label("reason", reason))
                .set(self.attention(column));
        }
        registry.register(
            "meterbook_submission_lines_needing_attention",
            "Lines in submission_failures: failed or rejected, warned, or unanswered after every retry",
            attention,
        );
        let pending = Family::<Labels, Gauge>::default();
        let complete = self.attention("pending_complete");
        pending
            .get_or_create(&label("complete", "true"))
            .set(complete);
        pending
            .get_or_create(&label("complete", "false"))
            .set(self.attention("pending_periods") - complete);
        registry.register(
            "meterbook_pending_periods",
            "Contract-months with usage and no submission (pending_periods), by whether the marker covers them",
            pending,
        );
        let drift = Gauge::<i64>::default();
        drift.set(self.attention("drift_lines"));
        registry.register(
            "meterbook_drift_lines",
            "Delivered lines whose usage changed since (submission_drift)",
            drift,
        );
    }
}

fn text(v: &SqlValue) -> Option<&str> {
    match v {
        SqlValue::Text(t) => Some(t),
        _ => None,
    }
}

fn int(v: &SqlValue) -> i64 {
    match v {
        SqlValue::Integer(i) => *i,
        SqlValue::Real(r) => *r as i64,
        _ => 0,
    }
}

/// The text of `/metrics`.
pub fn render(
    run: Option<&RunMetrics>,
    ledger: Option<&LedgerGauges>,
    now: DateTime<Utc>,
) -> String {
    let mut registry = Registry::default();
    if let Some(run) = run {
        run.register(&mut registry);
    }
    if let Some(ledger) = ledger {
        ledger.register(&mut registry, now);
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// A scheduled run's metrics: its own, and the ledger's read between cycles. While a cycle runs,
/// the ledger's numbers of the last scrape between cycles are served, so that a scrape never
/// holds a read transaction while the cycle pulls (installing a pulled ledger needs it unused).
pub struct RunTelemetry {
    pub run: RunMetrics,
    reader: Reader,
    cycle_running: AtomicBool,
    last_gauges: Mutex<Option<LedgerGauges>>,
}

impl RunTelemetry {
    pub fn new(ledger: LedgerFile) -> RunTelemetry {
        RunTelemetry {
            run: RunMetrics::default(),
            reader: Reader::new(ledger),
            cycle_running: AtomicBool::new(false),
            last_gauges: Mutex::new(None),
        }
    }

    pub fn cycle_started(&self) {
        self.cycle_running.store(true, Ordering::SeqCst);
    }

    pub fn cycle_finished(&self, result: &Result<Outcome>) {
        self.run.cycle(result, Utc::now());
        self.cycle_running.store(false, Ordering::SeqCst);
    }

    /// The text of `/metrics`. The ledger's numbers are left out while there is no ledger yet.
    pub async fn render(self: Arc<Self>) -> String {
        tokio::task::spawn_blocking(move || {
            if !self.cycle_running.load(Ordering::SeqCst) {
                match self.reader.read(LedgerGauges::read) {
                    Ok(g) => *self.last_gauges.lock().expect("gauges lock") = Some(g),
                    Err(e) => tracing::debug!("metrics: the ledger was not read: {e:#}"),
                }
            }
            let gauges = self.last_gauges.lock().expect("gauges lock").clone();
            render(Some(&self.run), gauges.as_ref(), Utc::now())
        })
        .await
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_metrics_count_cycles_by_outcome_and_syncs_by_direction() {
        let m = RunMetrics::default();
        let at = DateTime::parse_from_rfc3339("2025-07-01T00:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        m.cycle(&Ok(Outcome::Success), at);
        m.cycle(&Ok(Outcome::NeedsAttention), at);
        m.cycle(
            &Err(anyhow::anyhow!("x")
                .context(crate::error::Step::new(FailureKind::State, "pulling"))),
            at,
        );
        m.sync(Direction::Push, Duration::from_millis(300), 2048);
        let text = render(Some(&m), None, at);
        for line in [
            "meterbook_cycles_total{outcome=\"success\"} 1",
            "meterbook_cycles_total{outcome=\"needs_attention\"} 1",
            "meterbook_cycles_total{outcome=\"failed_state\"} 1",
            "meterbook_last_finished_cycle_timestamp_seconds 1751328010.0",
            "meterbook_sync_bytes_total{direction=\"push\"} 2048",
            "meterbook_sync_duration_seconds_count{direction=\"push\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
