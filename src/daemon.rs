//! Staying up: run a job on a schedule (`--every DURATION` or `PROCESSING_INTERVAL_SECONDS`, or
//! the predecessor's older `CRON_MODE`: the first day of each month at 00:10 UTC), survive a failed
//! cycle, stop on SIGTERM/SIGINT with the last cycle's exit code, and serve the health check
//! (`GET`/`HEAD` on `/health` and `/health/`: 200 while healthy, 503 after repeated failures; the
//! body names the kind of failure, never its text) and the run's metrics (`GET /metrics`, see
//! [`crate::console::metrics`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::console::metrics::{RunTelemetry, CONTENT_TYPE};
use crate::error::{FailureKind, Fatal, Outcome};

/// When cycles run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A cycle, then a pause of this long, then the next.
    Every(Duration),
    /// The first day of each month at 00:10 UTC (the predecessor's `CRON_MODE=true`).
    MonthlyCron,
}

impl Schedule {
    /// The schedule the settings ask for, if any: `--every` (a duration), else
    /// `PROCESSING_INTERVAL_SECONDS`, else `CRON_MODE`. An interval wins over `CRON_MODE` (said in
    /// a warning): the monthly cron runs too early in the month for Omnistrate's marker to cover
    /// the month before, so an interval is what both settings together can sensibly mean.
    pub fn choose(
        every: Option<chrono::Duration>,
        interval_seconds: Option<u64>,
        cron_mode: bool,
    ) -> Result<Option<Schedule>> {
        let interval = match (every, interval_seconds) {
            (Some(every), _) => {
                if every <= chrono::Duration::zero() {
                    return Err(Fatal::Config("--every must be longer than zero".into()).into());
                }
                Some(every.to_std().context("--every")?)
            }
            (None, Some(secs)) => Some(Duration::from_secs(secs)),
            (None, None) => None,
        };
        Ok(match (interval, cron_mode) {
            (Some(d), cron) => {
                if cron {
                    tracing::warn!(
                        "CRON_MODE is ignored: a cycle runs every {}s (--every or \
                         PROCESSING_INTERVAL_SECONDS wins)",
                        d.as_secs()
                    );
                }
                Some(Schedule::Every(d))
            }
            (None, true) => Some(Schedule::MonthlyCron),
            (None, false) => None,
        })
    }

    /// When the next cycle starts, given that the last one started at `last_start` and it is `now`.
    pub fn next_start(self, last_start: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::Every(d) => {
                let next =
                    last_start + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
                next.max(now)
            }
            Schedule::MonthlyCron => next_monthly(now),
        }
    }
}

/// The next first-of-month 00:10 UTC strictly after `now`.
fn next_monthly(now: DateTime<Utc>) -> DateTime<Utc> {
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 10, 0)
        .single()
        .expect("00:10 on the first exists");
    if this_month > now {
        return this_month;
    }
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 10, 0)
        .single()
        .expect("00:10 on the first exists")
}

/// How the last finished cycle went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastCycle {
    Succeeded,
    NeedsAttention,
    Failed(FailureKind),
}

/// What the health check reports.
#[derive(Debug, Default)]
pub struct Health {
    cycles: u64,
    consecutive_failures: u32,
    last: Option<LastCycle>,
}

/// Failures in a row after which the health check answers 503.
pub const UNHEALTHY_AFTER: u32 = 3;

impl Health {
    fn record(&mut self, result: &Result<Outcome>) {
        self.cycles += 1;
        let last = match result {
            Ok(Outcome::Success) => LastCycle::Succeeded,
            Ok(Outcome::NeedsAttention) => LastCycle::NeedsAttention,
            Err(e) => LastCycle::Failed(FailureKind::of(e)),
        };
        self.consecutive_failures = match last {
            LastCycle::Failed(_) => self.consecutive_failures + 1,
            _ => 0,
        };
        self.last = Some(last);
    }

    /// The status and a one-line body. The body says how the last cycle went and, for a failure,
    /// its kind; never the error's text, which names buckets, URLs and client ids (the port may be
    /// reachable by anyone on the network).
    fn answer(&self) -> (StatusCode, String) {
        let last = match self.last {
            None => "no cycle has finished yet".to_string(),
            Some(LastCycle::Succeeded) => "the last one succeeded".to_string(),
            Some(LastCycle::NeedsAttention) => "the last one needs attention".to_string(),
            Some(LastCycle::Failed(kind)) => format!(
                "the last {} failed ({})",
                self.consecutive_failures,
                kind.as_str()
            ),
        };
        if self.consecutive_failures >= UNHEALTHY_AFTER {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("unhealthy: {last}\n"),
            )
        } else {
            (
                StatusCode::OK,
                format!("ok: {} cycles run, {last}\n", self.cycles),
            )
        }
    }
}

type SharedHealth = Arc<Mutex<Health>>;

/// What the health port serves.
#[derive(Clone)]
struct Served {
    health: SharedHealth,
    telemetry: Arc<RunTelemetry>,
}

async fn health(State(s): State<Served>) -> (StatusCode, String) {
    s.health.lock().expect("health lock").answer()
}

async fn metrics(State(s): State<Served>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        s.telemetry.render().await,
    )
}

/// Binds the health check on `addr` and serves it (and `/metrics`) in the background until the
/// process ends. Axum answers `HEAD` on a `GET` route, without the body.
async fn start_health(addr: SocketAddr, state: Served) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Fatal::Config(format!(
            "cannot serve the health check on {addr} (HEALTHCHECK_PORT): {e}"
        ))
    })?;
    tracing::info!("health check on http://{}/health", listener.local_addr()?);
    let app = Router::new()
        .route("/health", get(health))
        .route("/health/", get(health))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("health check stopped: {e}");
        }
    });
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs `cycle` on `schedule` until SIGTERM/SIGINT, then ends as the last finished cycle did: its
/// outcome, or its error (so the exit code says a failing job failed). A signal during a cycle
/// lets the cycle finish (its steps are bounded, and each leaves the ledger and the state
/// consistent); a second signal abandons it at once, which is safe too: transactions roll back,
/// the lease expires, and an in-flight submission is reconciled by the next run. An abandoned
/// cycle did not finish: that ends with an error.
pub async fn run_forever<F, Fut>(
    schedule: Schedule,
    health_addr: Option<SocketAddr>,
    telemetry: Arc<RunTelemetry>,
    mut cycle: F,
) -> Result<Outcome>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    let state: SharedHealth = Arc::default();
    if let Some(addr) = health_addr {
        let served = Served {
            health: state.clone(),
            telemetry: telemetry.clone(),
        };
        start_health(addr, served).await?;
    }
    loop {
        let started = Utc::now();
        telemetry.cycle_started();
        let running = cycle();
        tokio::pin!(running);
        let mut stopping = false;
        let result = tokio::select! {
            r = &mut running => r,
            _ = shutdown_signal() => {
                stopping = true;
                tracing::warn!("stopping after the current cycle; signal again to stop at once");
                tokio::select! {
                    r = &mut running => r,
                    _ = shutdown_signal() => {
                        anyhow::bail!("stopped during a cycle; the next run finishes its work");
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::error!(
                "cycle failed ({}): {e:#}; trying again at the next scheduled time",
                FailureKind::of(e).as_str()
            );
        }
        state.lock().expect("health lock").record(&result);
        telemetry.cycle_finished(&result);
        if stopping {
            return stopped(result);
        }
        let next = schedule.next_start(started, Utc::now());
        tracing::info!("next cycle at {}", crate::period::format_utc(next));
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown_signal() => {
                tracing::info!("stopping between cycles");
                return stopped(result);
            }
        }
    }
}

/// The end of a scheduled run: the last cycle's outcome, or its error.
fn stopped(last: Result<Outcome>) -> Result<Outcome> {
    last.context("stopped; the last cycle failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_mode_runs_on_the_first_at_ten_past_midnight() {
        assert_eq!(
            next_monthly(t("2025-06-15T12:00:00Z")),
            t("2025-07-01T00:10:00Z")
        );
        assert_eq!(
            next_monthly(t("2025-07-01T00:09:59Z")),
            t("2025-07-01T00:10:00Z")
        );
        assert_eq!(
            next_monthly(t("2025-07-01T00:10:00Z")),
            t("2025-08-01T00:10:00Z")
        );
        assert_eq!(
            next_monthly(t("2025-12-31T23:00:00Z")),
            t("2026-01-01T00:10:00Z")
        );
    }

    #[test]
    fn every_counts_from_the_start_of_the_last_cycle() {
        let s = Schedule::Every(Duration::from_secs(3600));
        assert_eq!(
            s.next_start(t("2025-06-01T00:00:00Z"), t("2025-06-01T00:20:00Z")),
            t("2025-06-01T01:00:00Z")
        );
        // A cycle longer than the interval starts the next one at once.
        assert_eq!(
            s.next_start(t("2025-06-01T00:00:00Z"), t("2025-06-01T02:00:00Z")),
            t("2025-06-01T02:00:00Z")
        );
    }

    fn s3_failure() -> anyhow::Error {
        anyhow::anyhow!("reading s3://secret-bucket/key at http://10.0.0.1:9000: unreachable")
            .context(crate::error::Step::new(FailureKind::State, "pulling"))
    }

    #[test]
    fn health_turns_503_after_repeated_failures_and_recovers() {
        let mut h = Health::default();
        assert_eq!(
            h.answer(),
            (
                StatusCode::OK,
                "ok: 0 cycles run, no cycle has finished yet\n".into()
            )
        );
        for _ in 0..UNHEALTHY_AFTER - 1 {
            h.record(&Err(s3_failure()));
        }
        assert_eq!(
            h.answer(),
            (
                StatusCode::OK,
                "ok: 2 cycles run, the last 2 failed (state)\n".into()
            )
        );
        h.record(&Err(s3_failure()));
        assert_eq!(
            h.answer(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "unhealthy: the last 3 failed (state)\n".into()
            )
        );
        h.record(&Ok(Outcome::NeedsAttention));
        assert_eq!(
            h.answer(),
            (
                StatusCode::OK,
                "ok: 4 cycles run, the last one needs attention\n".into()
            )
        );
        h.record(&Ok(Outcome::Success));
        assert_eq!(
            h.answer(),
            (
                StatusCode::OK,
                "ok: 5 cycles run, the last one succeeded\n".into()
            )
        );
    }

    #[test]
    fn a_stopped_schedule_ends_as_its_last_cycle_did() {
        assert_eq!(
            stopped(Ok(Outcome::NeedsAttention)).unwrap(),
            Outcome::NeedsAttention
        );
        let denied = stopped(Err(Fatal::Config("access denied".into()).into())).unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&denied),
            crate::error::exit::CONFIG
        );
        let unreachable = stopped(Err(s3_failure())).unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&unreachable),
            crate::error::exit::FAILURE
        );
    }

    #[test]
    fn an_interval_wins_over_cron_mode_and_every_over_the_interval() {
        let choose = |every, secs, cron| Schedule::choose(every, secs, cron).unwrap();
        assert_eq!(choose(None, None, false), None);
        assert_eq!(choose(None, None, true), Some(Schedule::MonthlyCron));
        assert_eq!(
            choose(None, Some(300), true),
            Some(Schedule::Every(Duration::from_secs(300)))
        );
        assert_eq!(
            choose(Some(chrono::Duration::hours(1)), Some(300), false),
            Some(Schedule::Every(Duration::from_secs(3600)))
        );
        assert!(Schedule::choose(Some(chrono::Duration::zero()), None, false).is_err());
    }
}
