//! `meterbook resubmit`: re-send failed, rejected or warned lines (all, or one contract or period),
//! recomputed from the ledger with the current formulas, as new attempts linked to the old ones.

use std::sync::Mutex;

use anyhow::Result;

use crate::clazar::Client;
use crate::cli::{GlobalArgs, ResubmitArgs};
use crate::commands::submit::{dry_run, finish, planning, run_settings};
use crate::config::{Environment, Selection, SubmitSettings};
use crate::error::Outcome;
use crate::ledger::Ledger;
use crate::submit::{compute_resubmissions, plan_resubmissions, send_outbox};

pub async fn run(global: &GlobalArgs, args: &ResubmitArgs, env: &Environment) -> Result<Outcome> {
    let settings = SubmitSettings::resolve_retry(global, args, env)?;
    let Selection::Retry(filter) = &settings.selection else {
        unreachable!("resolve_retry selects lines to retry");
    };
    let mut ledger = Ledger::open_for_writing(&settings.ledger)?;
    let planning = planning(&ledger, &settings)?;
    if settings.dry_run {
        let (subs, notes) = compute_resubmissions(&ledger, &planning, filter)?;
        notes.iter().for_each(|n| tracing::warn!("{n}"));
        return dry_run(&ledger, &subs);
    }
    let clazar = settings.clazar()?;
    let client = Client::new(clazar.clone())?;
    let run_id =
        ledger.begin_submission_run("resubmit", None, &run_settings(&planning, clazar)?)?;
    let (ids, notes) = plan_resubmissions(&mut ledger, &planning, filter, run_id)?;
    notes.iter().for_each(|n| tracing::warn!("{n}"));
    tracing::info!("re-sending {} submissions", ids.len());
    let ledger = Mutex::new(ledger);
    let sent = send_outbox(&ledger, &client, Some(&ids), clazar.concurrency).await?;
    let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
    ledger.finish_submission_run(run_id, ids.len() as u64, sent.requests)?;
    finish(&ledger, &sent)
}
