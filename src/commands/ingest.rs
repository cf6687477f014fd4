//! `meterbook ingest`: read usage files into the ledger and say what happened.

use anyhow::Result;

use crate::cli::{GlobalArgs, IngestCommand};
use crate::config::{Environment, IngestSettings};
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &IngestCommand, env: &Environment) -> Result<Outcome> {
    let settings = IngestSettings::resolve(global, &args.scope, &args.ingest, env)?;
    Ok(crate::ingest::run(&settings).await?.report())
}
