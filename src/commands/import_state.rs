//! `meterbook import-state`: take over from the Python exporter without re-sending a single month
//! (see [`crate::predecessor`]).

use anyhow::Result;

use crate::cli::{GlobalArgs, ImportStateArgs};
use crate::config::{Environment, ImportSettings};
use crate::error::Outcome;

pub async fn run(
    global: &GlobalArgs,
    args: &ImportStateArgs,
    env: &Environment,
) -> Result<Outcome> {
    let settings = ImportSettings::resolve(global, args, env);
    Ok(crate::predecessor::import(&settings).await?.report())
}
