//! `meterbook resubmit`: re-send failed, rejected or warned lines (all, or one contract or period),
//! recomputed from the ledger with the current formulas, as new attempts linked to the old ones.

use anyhow::Result;

use crate::cli::{GlobalArgs, ResubmitArgs};
use crate::config::{Environment, SubmitSettings};
use crate::error::Outcome;

pub async fn run(global: &GlobalArgs, args: &ResubmitArgs, env: &Environment) -> Result<Outcome> {
    let settings = SubmitSettings::resolve_retry(global, args, env)?;
    crate::submit::submit(&settings, "resubmit").await
}
