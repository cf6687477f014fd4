//! `meterbook resubmit`: re-send failed, rejected or warned lines (all, or one contract or period),
//! recomputed from the ledger with the current formulas, as new attempts linked to the old ones.

use std::sync::Mutex;

use anyhow::Result;

use crate::clazar::Client;
use crate::cli::{GlobalArgs, ResubmitArgs};
use crate::commands::submit::{dry_run, finish, run_settings, settings};
use crate::error::Outcome;
use crate::ledger::{Ledger, SubmissionFilter};
use crate::period::PeriodKind;
use crate::plan::PeriodRules;
use crate::source::Scope;
use crate::submit::{compute_resubmissions, plan_resubmissions, send_outbox};

pub async fn run(global: &GlobalArgs, args: &ResubmitArgs) -> Result<Outcome> {
    let mut ledger = Ledger::open_for_writing(&global.ledger_file())?;
    // Periods were complete when first planned; resubmit does not select periods by rules.
    let rules = PeriodRules {
        kind: PeriodKind::Month,
        start_month: None,
        max_per_run: usize::MAX,
        grace_without_marker: None,
    };
    let settings = settings(
        &ledger,
        rules,
        Scope::default(),
        &args.quantity,
        &args.clazar,
    )?;
    let filter = SubmissionFilter {
        contract_id: args.contract.clone(),
        period: args.period.clone(),
        ..SubmissionFilter::default()
    };
    if args.quantity.dry_run {
        let (subs, notes) = compute_resubmissions(&ledger, &settings, &filter)?;
        notes.iter().for_each(|n| tracing::warn!("{n}"));
        return dry_run(&ledger, &subs);
    }
    let client = Client::new(args.clazar.resolve()?)?;
    let run_id =
        ledger.begin_submission_run("resubmit", None, &run_settings(&settings, &args.clazar)?)?;
    let (ids, notes) = plan_resubmissions(&mut ledger, &settings, &filter, run_id)?;
    notes.iter().for_each(|n| tracing::warn!("{n}"));
    tracing::info!("re-sending {} submissions", ids.len());
    let ledger = Mutex::new(ledger);
    let sent = send_outbox(&ledger, &client, Some(&ids), args.clazar.concurrency).await?;
    let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
    ledger.finish_submission_run(run_id, ids.len() as u64, sent.requests)?;
    finish(&ledger, &sent)
}
