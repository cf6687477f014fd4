//! `meterbook submit`: plan the complete periods into outbox rows, send them to Clazar, and say
//! what needs attention (failures, warnings, drift). `DRY_RUN` prints the payloads instead.

use anyhow::Result;

use crate::cli::{GlobalArgs, SubmitCommand};
use crate::config::{Environment, SubmitSettings};
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &SubmitCommand, env: &Environment) -> Result<Outcome> {
    let bucket = env.export_bucket.clone();
    let settings = SubmitSettings::resolve(global, &args.scope, &args.submit, bucket, env)?;
    crate::submit::submit(&settings, "submit").await
}
