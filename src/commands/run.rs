//! `meterbook run`: the whole job, safely, from any host: one cycle (see [`crate::cycle`]), or,
//! with `--every`, `PROCESSING_INTERVAL_SECONDS` or `CRON_MODE=true`, a cycle on a schedule while
//! serving the health check and `/metrics` (see [`crate::daemon`]).

use std::sync::Arc;

use anyhow::Result;

use crate::cli::{GlobalArgs, RunArgs};
use crate::config::{Environment, RunSettings};
use crate::console::metrics::{RunMetrics, RunTelemetry};
use crate::cycle;
use crate::daemon;
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &RunArgs, env: &Environment) -> Result<Outcome> {
    let settings = RunSettings::resolve(global, args, env)?;
    let Some(schedule) = settings.schedule else {
        return cycle::run(&settings, &RunMetrics::default()).await;
    };
    tracing::info!("running on a schedule: {schedule:?}");
    let telemetry = Arc::new(RunTelemetry::new(settings.ledger.clone()));
    let metrics = telemetry.clone();
    daemon::run_forever(schedule, Some(settings.health), telemetry, || {
        cycle::run(&settings, &metrics.run)
    })
    .await
}
