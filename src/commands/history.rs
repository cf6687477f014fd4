//! `meterbook history`: submissions line by line (what was sent, what Clazar answered), filtered
//! by contract, period and status: a table that fits a terminal (long ids and details shortened),
//! or every column with `--wide`, CSV or JSON.

use anyhow::Result;

use crate::cli::{GlobalArgs, HistoryArgs};
use crate::error::Outcome;
use crate::ledger::{Ledger, SubmissionFilter};
use crate::output::{self, Fit, Format};

/// The width a default history table fits in.
const TERMINAL_COLUMNS: u16 = 120;

/// How each column of the default table is shortened: contract, period, dimension, quantity,
/// status, attempts, detail.
const FITS: [Fit; 7] = [
    Fit::Middle(19),
    Fit::Keep,
    Fit::End(24),
    Fit::Keep,
    Fit::Keep,
    Fit::Keep,
    Fit::End(36),
];

pub fn run(global: &GlobalArgs, args: &HistoryArgs) -> Result<Outcome> {
    let ledger = Ledger::open_for_reading(&global.ledger_file())?;
    let filter = SubmissionFilter {
        contract_id: args.contract.clone(),
        period: args.period.clone(),
        status: args.status,
    };
    let stdout = std::io::stdout().lock();
    let wide = args.wide || args.format != Format::Table;
    let mut sink = match wide {
        true => output::sink(args.format, stdout),
        false => output::fitted_table(stdout, TERMINAL_COLUMNS, FITS.to_vec()),
    };
    ledger.history(&filter, args.failures, wide, sink.as_mut())?;
    Ok(Outcome::Success)
}
