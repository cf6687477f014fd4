//! Submitting to Clazar, exactly once: the sequence `submit`, `resubmit` and `run` share.
//!
//! 1. [`prepare`] plans (see [`plan`]): the due periods (or, for `resubmit`, the failed lines the
//!    filter selects), each contract's lines, committed as outbox rows under a submission run.
//!    Nothing leaves yet, so `run` can upload the ledger before the first request. A dry run
//!    prints the request bodies instead and changes nothing.
//! 2. [`Planned::send`] sends the outbox (see [`send`]), records every answer (read by
//!    [`answer`]), finishes the run, and says what needs attention (failures, warnings, drift).
//!
//! [`submit`] is both steps at once.

pub mod answer;
pub mod plan;
pub mod send;

use std::io::Write;
use std::sync::Mutex;

use anyhow::{Context, Result};
use chrono::Utc;

use crate::clazar::{ClazarSettings, Client};
use crate::config::{Selection, SubmitSettings};
use crate::error::{FailureKind, Outcome, Step};
use crate::ledger::{Ledger, LedgerFile, NewSubmission};
use crate::period::{Month, Period};
use crate::predecessor::hold_back;
pub use plan::{
    compute_plan, compute_resubmissions, plan_resubmissions, plan_submissions, Plan, Planning,
};
pub use send::{send_outbox, SendReport, FAILPOINT_AFTER_SEND};

/// What [`prepare`] did.
pub enum Prepared {
    /// A dry run: the request bodies were printed, nothing was changed; how it went.
    Printed(Outcome),
    /// Planned and committed; nothing sent yet.
    Planned(Box<Planned>),
}

/// A submission run whose outbox is written: what sending it needs.
pub struct Planned {
    client: Client,
    run_id: i64,
    /// Submissions this run planned.
    planned: u64,
    /// Only these submissions are sent (`resubmit`); otherwise the whole outbox.
    only: Option<Vec<i64>>,
    /// Whether the outbox held nothing to send once planned: no request can leave.
    nothing_to_send: bool,
    concurrency: usize,
    /// What needs attention already (service keys held back, periods without a marker).
    outcome: Outcome,
    /// Periods with usage before the start month, said after sending.
    before_start: Vec<(String, Period)>,
    start_month: Option<Month>,
}

/// Plans what the settings select as outbox rows of a submission run recorded as `command`, or,
/// for a dry run, prints the request bodies instead.
pub async fn prepare(settings: &SubmitSettings, command: &'static str) -> Result<Prepared> {
    let mut ledger = Ledger::open_for_writing(&settings.ledger)?;
    let mut planning = Planning::new(&ledger, settings)?;
    match &settings.selection {
        Selection::Due { predecessor, .. } => {
            let held = hold_back(&ledger, predecessor, &mut planning)
                .await
                .context(Step::new(
                    FailureKind::Export,
                    "looking for the predecessor's state",
                ))?;
            let now = Utc::now();
            if settings.dry_run {
                let plan = compute_plan(&ledger, &planning, now)?;
                plan.report_waiting();
                let printed = print_payloads(&ledger, &plan.submissions)?;
                plan::report_left_out(&plan.before_start, planning.rules.start_month);
                return Ok(Prepared::Printed(printed.and(held)));
            }
            let clazar = settings.clazar()?;
            let client = Client::new(clazar.clone())?;
            let run_id = ledger.begin_submission_run(
                command,
                Some(planning.rules.kind),
                &run_settings(&planning, clazar),
            )?;
            let plan = plan_submissions(&mut ledger, &planning, run_id, now)?;
            let no_marker = match plan.report_waiting() {
                true => Outcome::NeedsAttention,
                false => Outcome::Success,
            };
            tracing::info!(
                "planned {} submissions ({} could not be computed)",
                plan.submissions.len(),
                plan.formula_failures()
            );
            Ok(Prepared::Planned(Box::new(Planned {
                client,
                run_id,
                planned: plan.submissions.len() as u64,
                only: None,
                nothing_to_send: ledger.outbox_is_empty()?,
                concurrency: clazar.concurrency,
                outcome: held.and(no_marker),
                before_start: plan.before_start,
                start_month: planning.rules.start_month,
            })))
        }
        Selection::Retry(filter) => {
            if settings.dry_run {
                let (subs, notes) = compute_resubmissions(&ledger, &planning, filter)?;
                notes.iter().for_each(|n| tracing::warn!("{n}"));
                return Ok(Prepared::Printed(print_payloads(&ledger, &subs)?));
            }
            let clazar = settings.clazar()?;
            let client = Client::new(clazar.clone())?;
            let run_id =
                ledger.begin_submission_run(command, None, &run_settings(&planning, clazar))?;
            let (ids, notes) = plan_resubmissions(&mut ledger, &planning, filter, run_id)?;
            notes.iter().for_each(|n| tracing::warn!("{n}"));
            tracing::info!("re-sending {} submissions", ids.len());
            Ok(Prepared::Planned(Box::new(Planned {
                client,
                run_id,
                nothing_to_send: ids.is_empty(),
                planned: ids.len() as u64,
                only: Some(ids),
                concurrency: clazar.concurrency,
                outcome: Outcome::Success,
                before_start: Vec::new(),
                start_month: None,
            })))
        }
    }
}

impl Planned {
    /// Whether sending will send nothing: the outbox was empty once planned.
    pub fn sends_nothing(&self) -> bool {
        self.nothing_to_send
    }

    /// Sends the outbox, records every answer and finishes the run; says what needs attention.
    pub async fn send(self, ledger: &LedgerFile) -> Result<Outcome> {
        let ledger = Mutex::new(Ledger::open_for_writing(ledger)?);
        let sent = send_outbox(
            &ledger,
            &self.client,
            self.only.as_deref(),
            self.concurrency,
        )
        .await
        .context(Step::new(FailureKind::Clazar, "sending to Clazar"))?;
        let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
        ledger.finish_submission_run(self.run_id, self.planned, sent.requests)?;
        let outcome = report(&ledger, &sent)?;
        plan::report_left_out(&self.before_start, self.start_month);
        Ok(outcome.and(self.outcome))
    }
}

/// Plans and sends (or, for a dry run, prints): `meterbook submit` and `resubmit`.
pub async fn submit(settings: &SubmitSettings, command: &'static str) -> Result<Outcome> {
    match prepare(settings, command).await? {
        Prepared::Printed(outcome) => Ok(outcome),
        Prepared::Planned(planned) => planned.send(&settings.ledger).await,
    }
}

/// The settings a run used, as JSON for `submission_runs` (no secrets).
fn run_settings(s: &Planning, clazar: &ClazarSettings) -> String {
    let formulas: Vec<_> = s
        .dimensions
        .formulas
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "formula": f.source, "from": f.origin}))
        .collect();
    serde_json::json!({
        "period": s.rules.kind.as_str(),
        "start_month": s.rules.start_month.map(|m| m.to_string()),
        "max_per_run": s.rules.max_per_run,
        "grace_without_marker_secs": s.rules.grace_without_marker.map(|g| g.num_seconds()),
        "formulas": formulas,
        "send_base_dimensions": s.dimensions.send_base,
        "rounding": format!("{:?}", s.dimensions.rounding).to_lowercase(),
        "cloud": s.cloud.as_str(),
        "max_records_per_request": s.max_records_per_request,
        "metering_url": clazar.metering_url,
        "max_retries": clazar.max_retries,
    })
    .to_string()
}

/// Prints the exact request bodies that would be sent (planned now, and left in the outbox by an
/// earlier run), one per line, and changes nothing.
fn print_payloads(ledger: &Ledger, planned: &[NewSubmission]) -> Result<Outcome> {
    let mut out = std::io::stdout().lock();
    let earlier = ledger.outbox(None)?;
    for item in &earlier {
        writeln!(out, "{}", item.payload)?;
    }
    let mut failed = 0;
    for s in planned {
        match &s.payload {
            Some(p) => writeln!(out, "{p}")?,
            None => {
                failed += 1;
                tracing::warn!(
                    "{} contract {} {}: {}",
                    s.service_key,
                    s.contract_id,
                    s.period,
                    s.error.as_deref().unwrap_or("cannot be sent")
                );
            }
        }
    }
    out.flush()?;
    tracing::info!(
        "dry run: {} requests would be sent ({} left in the outbox earlier), {failed} could not be computed; nothing was changed or sent",
        earlier.len() + planned.len() - failed,
        earlier.len()
    );
    Ok(if failed > 0 {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    })
}

/// Reports the send step, drift and what needs attention, and picks the outcome.
fn report(ledger: &Ledger, sent: &SendReport) -> Result<Outcome> {
    let drift = ledger.drift()?;
    for d in &drift {
        tracing::warn!(
            "drift: {} contract {} {} {} {}: submitted from {} but the ledger now has {} ({:+}); not re-sent",
            d.service_key,
            d.contract_id,
            d.period_kind,
            d.period,
            d.dimension,
            d.submitted_value,
            d.current_value,
            d.difference
        );
    }
    let failures = ledger.submission_failure_count()?;
    let summary = sent.line();
    if sent.needs_attention() || failures > 0 || !drift.is_empty() {
        tracing::warn!("{summary}");
        if failures > 0 {
            tracing::warn!(
                "{failures} lines need attention; see: meterbook history --failures (then meterbook resubmit)"
            );
        }
        if !drift.is_empty() {
            tracing::warn!("see: meterbook sql \"SELECT * FROM submission_drift\"");
        }
        Ok(Outcome::NeedsAttention)
    } else {
        tracing::info!("{summary}");
        Ok(Outcome::Success)
    }
}
