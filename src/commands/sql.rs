//! `meterbook sql`: one read-only statement against the ledger, printed as a table, CSV or JSON.

use anyhow::Result;

use crate::cli::{GlobalArgs, SqlArgs};
use crate::error::Outcome;
use crate::ledger::Ledger;
use crate::output;

pub fn run(global: &GlobalArgs, args: &SqlArgs) -> Result<Outcome> {
    let ledger = Ledger::open_for_reading(&global.ledger_file())?;
    let stdout = std::io::stdout().lock();
    let mut sink = output::sink(args.format, stdout);
    ledger.run_sql(&args.query, sink.as_mut())?;
    Ok(Outcome::Success)
}
