//! Staying up: run a job on a schedule (`--every DURATION`, or the predecessor's `CRON_MODE`: the
//! first day of each month at 00:10 UTC), survive a failed cycle, stop cleanly on SIGTERM/SIGINT,
//! and serve `GET /health` (200 while healthy, 503 with the reason after repeated failures).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::error::Outcome;

/// When cycles run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A cycle, then a pause of this long, then the next.
    Every(Duration),
    /// The first day of each month at 00:10 UTC (the predecessor's `CRON_MODE=true`).
    MonthlyCron,
}

impl Schedule {
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

/// What `/health` reports.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: u32,
    last_error: Option<String>,
    cycles: u64,
}

/// Failures in a row after which `/health` answers 503.
pub const UNHEALTHY_AFTER: u32 = 3;

impl Health {
    fn record(&mut self, result: &Result<Outcome>) {
        self.cycles += 1;
        match result {
            Ok(_) => {
                self.consecutive_failures = 0;
                self.last_error = None;
            }
            Err(e) => {
                self.consecutive_failures += 1;
                self.last_error = Some(format!("{e:#}"));
            }
        }
    }

    fn answer(&self) -> (StatusCode, String) {
        if self.consecutive_failures >= UNHEALTHY_AFTER {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unhealthy: {} cycles failed in a row; last error: {}\n",
                    self.consecutive_failures,
                    self.last_error.as_deref().unwrap_or("unknown")
                ),
            )
        } else {
            (StatusCode::OK, format!("ok: {} cycles run\n", self.cycles))
        }
    }
}

type SharedHealth = Arc<Mutex<Health>>;

async fn health(State(h): State<SharedHealth>) -> (StatusCode, String) {
    h.lock().expect("health lock").answer()
}

/// Binds `GET /health` on `addr` and serves it in the background until the process ends.
async fn start_health(addr: SocketAddr, state: SharedHealth) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::error::Fatal::Config(format!(
            "cannot serve the health check on {addr} (HEALTHCHECK_PORT): {e}"
        ))
    })?;
    tracing::info!("health check on http://{}/health", listener.local_addr()?);
    let app = Router::new()
        .route("/health", get(health))
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

/// Runs `cycle` on `schedule` until SIGTERM/SIGINT. A signal during a cycle lets the cycle finish
/// (its steps are bounded, and each leaves the ledger and the state consistent); a second signal
/// abandons it at once, which is safe too: transactions roll back, the lease expires, and an
/// in-flight submission is reconciled by the next run.
pub async fn run_forever<F, Fut>(
    schedule: Schedule,
    health_addr: Option<SocketAddr>,
    mut cycle: F,
) -> Result<Outcome>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Outcome>>,
{
    let state: SharedHealth = Arc::default();
    if let Some(addr) = health_addr {
        start_health(addr, state.clone()).await?;
    }
    let mut last = Outcome::Success;
    loop {
        let started = Utc::now();
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
                        tracing::warn!("abandoning the current cycle");
                        return Ok(last);
                    }
                }
            }
        };
        match &result {
            Ok(outcome) => last = *outcome,
            Err(e) => {
                tracing::error!("cycle failed: {e:#}; trying again at the next scheduled time")
            }
        }
        state.lock().expect("health lock").record(&result);
        if stopping {
            return Ok(last);
        }
        let next = schedule.next_start(started, Utc::now());
        tracing::info!("next cycle at {}", crate::period::format_utc(next));
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown_signal() => {
                tracing::info!("stopping between cycles");
                return Ok(last);
            }
        }
    }
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

    #[test]
    fn health_turns_503_after_repeated_failures_and_recovers() {
        let mut h = Health::default();
        assert_eq!(h.answer().0, StatusCode::OK);
        for _ in 0..UNHEALTHY_AFTER - 1 {
            h.record(&Err(anyhow::anyhow!("S3 unreachable")));
        }
        assert_eq!(h.answer().0, StatusCode::OK);
        h.record(&Err(anyhow::anyhow!("S3 unreachable")));
        let (code, body) = h.answer();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("S3 unreachable"), "{body}");
        h.record(&Ok(Outcome::Success));
        assert_eq!(h.answer().0, StatusCode::OK);
    }
}
