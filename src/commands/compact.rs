//! `meterbook compact`: the records of old, fully submitted months give way to each file's totals
//! (see `ledger::compact`), one line per month considered on stdout; with `--vacuum`, the file is
//! rewritten without its free pages.

use std::io::Write;

use anyhow::Result;
use chrono::Utc;

use crate::cli::{CompactArgs, GlobalArgs};
use crate::error::Outcome;
use crate::ledger::{Ledger, MonthCompaction};

pub fn run(global: &GlobalArgs, args: &CompactArgs) -> Result<Outcome> {
    let mut ledger = Ledger::open_for_writing(&global.ledger_file())?;
    let done = ledger.compact(args.before, args.keep_months, Utc::now())?;
    let mut out = std::io::stdout().lock();
    if done.is_empty() {
        writeln!(out, "nothing to compact before {}", args.before)?;
    }
    for (service_key, month, outcome) in &done {
        match outcome {
            MonthCompaction::Compacted { files, records } => writeln!(
                out,
                "compacted {service_key} {month}: {records} records of {files} files are now \
                 their files' totals"
            )?,
            MonthCompaction::Kept(why) => writeln!(out, "kept {service_key} {month}: {why}")?,
        }
    }
    if args.vacuum {
        ledger.vacuum()?;
        writeln!(
            out,
            "vacuumed {}: every page moved, so the next push uploads every segment once",
            ledger.path().display()
        )?;
    }
    Ok(Outcome::Success)
}
