//! `meterbook submit`: plan the complete periods into outbox rows, send them to Clazar, and say
//! what needs attention (failures, warnings, drift). `DRY_RUN` prints the payloads instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use anyhow::Result;
use chrono::Utc;

use super::import_state::predecessor_guard;
use crate::clazar::{ClazarSettings, Client};
use crate::cli::{GlobalArgs, SubmitCommand};
use crate::config::{Environment, Selection, SubmitSettings};
use crate::error::Outcome;
use crate::ledger::{Ledger, NewSubmission};
use crate::period::Month;
use crate::plan::{Completeness, PeriodRules};
use crate::source::Scope;
use crate::submit::{compute_plan, plan_submissions, send_outbox, Plan, Planning, SendReport};

pub async fn run(global: &GlobalArgs, args: &SubmitCommand, env: &Environment) -> Result<Outcome> {
    let settings = SubmitSettings::resolve(
        global,
        &args.scope,
        &args.submit,
        env.export_bucket.clone(),
        env,
    )?;
    let mut ledger = Ledger::open_for_writing(&settings.ledger)?;
    let mut planning = planning(&ledger, &settings)?;
    let held = hold_back(&ledger, &settings, &mut planning).await?;
    let now = Utc::now();
    if settings.dry_run {
        let plan = compute_plan(&ledger, &planning, now)?;
        report_waiting(&plan);
        let outcome = dry_run(&ledger, &plan.submissions)?;
        report_left_out(&plan, &planning.rules);
        return Ok(outcome.and(held));
    }
    let clazar = settings.clazar()?;
    let client = Client::new(clazar.clone())?;
    let run_id = ledger.begin_submission_run(
        "submit",
        Some(planning.rules.kind),
        &run_settings(&planning, clazar)?,
    )?;
    let plan = plan_submissions(&mut ledger, &planning, run_id, now)?;
    let no_marker = report_waiting(&plan);
    tracing::info!(
        "planned {} submissions ({} could not be computed)",
        plan.submissions.len(),
        plan.formula_failures()
    );
    let ledger = Mutex::new(ledger);
    let sent = send_outbox(&ledger, &client, None, clazar.concurrency).await?;
    let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
    ledger.finish_submission_run(run_id, plan.submissions.len() as u64, sent.requests)?;
    let outcome = finish(&ledger, &sent)?;
    report_left_out(&plan, &planning.rules);
    let marker = if no_marker {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    };
    Ok(outcome.and(held).and(marker))
}

/// Leaves out of the plan every service key whose predecessor state is there but was not
/// imported (see [`predecessor_guard`]), saying what to do; `NeedsAttention` when there is one.
pub(crate) async fn hold_back(
    ledger: &Ledger,
    settings: &SubmitSettings,
    planning: &mut Planning,
) -> Result<Outcome> {
    let Selection::Due { predecessor, .. } = &settings.selection else {
        return Ok(Outcome::Success);
    };
    let held = predecessor_guard(ledger, predecessor, &planning.scope).await?;
    for why in held.values() {
        tracing::warn!("{why}");
    }
    planning.held_back = held.into_keys().collect();
    Ok(if planning.held_back.is_empty() {
        Outcome::Success
    } else {
        Outcome::NeedsAttention
    })
}

/// Says, per service key, which months with usage were left out because they are before the
/// start month, and how to include them. Deliberate (the predecessor never sent them either), so
/// it does not change the exit code.
pub(crate) fn report_left_out(plan: &Plan, rules: &PeriodRules) {
    let Some(start) = rules.start_month else {
        return;
    };
    let mut months: BTreeMap<&str, BTreeSet<Month>> = BTreeMap::new();
    for (key, period) in &plan.before_start {
        months.entry(key).or_default().insert(period.month_of());
    }
    for (key, months) in months {
        let (first, last) = (months.first(), months.last());
        let (Some(first), Some(last)) = (first, last) else {
            continue;
        };
        let which = if first == last {
            format!("month {first}")
        } else {
            format!("{} months from {first} to {last}", months.len())
        };
        tracing::warn!(
            "{key}: usage in {which} is not submitted: it is before the start month {start} \
             (START_MONTH or --start-month; {} when neither is set). To submit it, set \
             START_MONTH={first} or pass --start-month {first}",
            crate::config::DEFAULT_START_MONTH
        );
    }
}

/// What planning needs, with formulas validated against the ledger's dimensions.
pub(crate) fn planning(ledger: &Ledger, s: &SubmitSettings) -> Result<Planning> {
    let scope = match &s.selection {
        Selection::Due { scope, .. } => scope.clone(),
        Selection::Retry(_) => Scope::default(),
    };
    Ok(Planning {
        rules: s.rules(),
        dimensions: s.quantity.dimensions(&ledger.dimensions_in_usage()?)?,
        cloud: s.cloud,
        max_records_per_request: s.quantity.max_records_per_request,
        scope,
        held_back: BTreeSet::new(),
    })
}

/// The settings a run used, as JSON for `submission_runs` (no secrets).
pub(crate) fn run_settings(s: &Planning, clazar: &ClazarSettings) -> Result<String> {
    let formulas: Vec<_> = s
        .dimensions
        .formulas
        .iter()
        .map(|f| serde_json::json!({"name": f.name, "formula": f.source, "from": f.origin}))
        .collect();
    Ok(serde_json::json!({
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
    .to_string())
}

/// Says which periods wait and why; true when one waits for a marker that was never seen.
pub(crate) fn report_waiting(plan: &Plan) -> bool {
    let mut no_marker = false;
    for (key, period, why) in &plan.waiting {
        match why {
            Completeness::NoMarker => {
                no_marker = true;
                tracing::warn!(
                    "{key} {period}: no completion marker was ever seen for this service key, so it is not submitted; \
                     ingest the export's last_success_export.json, or opt in with --grace-without-marker"
                );
            }
            Completeness::ExportBehind { last_processed_to } => tracing::info!(
                "{key} {period}: waiting, Omnistrate's export is complete only to {last_processed_to}"
            ),
            Completeness::InGrace => {
                tracing::info!("{key} {period}: waiting for the grace delay after its end")
            }
            Completeness::NotOver | Completeness::Complete => {}
        }
    }
    no_marker
}

/// Prints the exact request bodies that would be sent (planned now, and left in the outbox by an
/// earlier run), one per line, and changes nothing.
pub(crate) fn dry_run(ledger: &Ledger, planned: &[NewSubmission]) -> Result<Outcome> {
    use std::io::Write;
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
pub(crate) fn finish(ledger: &Ledger, sent: &SendReport) -> Result<Outcome> {
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
