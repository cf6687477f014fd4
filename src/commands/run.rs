//! `meterbook run`: the whole job, safely, from any host: one cycle (see [`crate::cycle`]), or,
//! with `--every`, `PROCESSING_INTERVAL_SECONDS` or `CRON_MODE=true`, a cycle on a schedule while
//! serving the health check (see [`crate::daemon`]).

use anyhow::Result;

use crate::cli::{GlobalArgs, RunArgs};
use crate::config::{Environment, RunSettings};
use crate::cycle;
use crate::daemon;
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &RunArgs, env: &Environment) -> Result<Outcome> {
    let settings = RunSettings::resolve(global, args, env)?;
    let Some(schedule) = settings.schedule else {
        return cycle::run(&settings).await;
    };
    tracing::info!("running on a schedule: {schedule:?}");
    daemon::run_forever(schedule, Some(settings.health), || cycle::run(&settings)).await
}
