//! `meterbook history`: submissions line by line (what was sent, what Clazar answered), filtered
//! by contract, period and status, as a table, CSV or JSON.

use anyhow::Result;

use crate::cli::{GlobalArgs, HistoryArgs};
use crate::error::Outcome;
use crate::ledger::{Ledger, SubmissionFilter};
use crate::output;

pub fn run(global: &GlobalArgs, args: &HistoryArgs) -> Result<Outcome> {
    let ledger = Ledger::open_for_reading(&global.ledger_file())?;
    let filter = SubmissionFilter {
        contract_id: args.contract.clone(),
        period: args.period.clone(),
        status: args.status,
    };
    let stdout = std::io::stdout().lock();
    let mut sink = output::sink(args.format, stdout);
    ledger.history(&filter, args.failures, sink.as_mut())?;
    Ok(Outcome::Success)
}
