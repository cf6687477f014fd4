//! Planning a submission run: which periods are due for which contracts (or which failed lines
//! are retried), each contract's lines computed with the formulas and rounding, split into
//! requests, and written as outbox rows (`pending`, the exact body to send) in one transaction.
//! Nothing leaves here; [`compute_plan`] and [`compute_resubmissions`] write nothing (dry runs).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::clazar::{Cloud, MeteringRecord, MeteringRequest};
use crate::config::{Selection, SubmitSettings};
use crate::dimensions::{BaseUsage, Dimensions};
use crate::ledger::{
    Ledger, LineStatus, NewLine, NewSubmission, SubmissionFilter, SubmissionStatus,
};
use crate::period::{Month, Period, PeriodKind};
use crate::plan::{due_periods, Completeness, PeriodRules};
use crate::source::{Scope, ServiceKey};

/// What planning needs.
#[derive(Debug, Clone)]
pub struct Planning {
    pub rules: PeriodRules,
    pub dimensions: Dimensions,
    /// `CLAZAR_CLOUD`.
    pub cloud: Cloud,
    /// At most this many records per request (a contract's lines are split, never mixed).
    pub max_records_per_request: usize,
    /// Which service keys.
    pub scope: Scope,
    /// Service keys not planned at all (the predecessor's state is there but was not imported).
    pub held_back: BTreeSet<String>,
}

impl Planning {
    /// What the settings plan, with formulas compiled against the ledger's dimensions.
    pub fn new(ledger: &Ledger, settings: &SubmitSettings) -> Result<Planning> {
        let scope = match &settings.selection {
            Selection::Due { scope, .. } => scope.clone(),
            Selection::Retry(_) => Scope::default(),
        };
        Ok(Planning {
            rules: settings.rules(),
            dimensions: settings
                .quantity
                .dimensions(&ledger.dimensions_in_usage()?)?,
            cloud: settings.cloud,
            max_records_per_request: settings.quantity.max_records_per_request,
            scope,
            held_back: BTreeSet::new(),
        })
    }
}

/// The result of planning.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub submissions: Vec<NewSubmission>,
    /// Periods with usage that are not due yet, and why.
    pub waiting: Vec<(String, Period, Completeness)>,
    /// Periods with usage before `START_MONTH`, per service key: never submitted while it says so.
    pub before_start: Vec<(String, Period)>,
}

impl Plan {
    /// Says which periods wait and why; true when one waits for a marker that was never seen.
    pub fn report_waiting(&self) -> bool {
        let mut no_marker = false;
        for (key, period, why) in &self.waiting {
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

    pub fn formula_failures(&self) -> usize {
        self.submissions
            .iter()
            .filter(|s| s.status == SubmissionStatus::Failed)
            .count()
    }
}

/// Says, per service key, which months with usage were left out because they are before the
/// start month, and how to include them. Deliberate (the predecessor never sent them either), so
/// it does not change the exit code.
pub fn report_left_out(before_start: &[(String, Period)], start_month: Option<Month>) {
    let Some(start) = start_month else {
        return;
    };
    let mut months: BTreeMap<&str, BTreeSet<Month>> = BTreeMap::new();
    for (key, period) in before_start {
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

fn service_key_in_scope(scope: &Scope, key: &str) -> bool {
    let parts: Vec<&str> = key.split(':').collect();
    match parts.as_slice() {
        [service, environment, plan] => scope.admits_service_key(&ServiceKey {
            service: service.to_string(),
            environment: environment.to_string(),
            plan: plan.to_string(),
        }),
        _ => scope.service_key().is_none() && scope.service.is_none(),
    }
}

/// Computes the plan without writing anything (this is also the dry run).
pub fn compute_plan(ledger: &Ledger, s: &Planning, now: DateTime<Utc>) -> Result<Plan> {
    let mut by_key: BTreeMap<String, Vec<Period>> = BTreeMap::new();
    for (key, period) in ledger.periods_with_unplanned_usage(s.rules.kind)? {
        if !service_key_in_scope(&s.scope, &key) || s.held_back.contains(&key) {
            continue;
        }
        if let Some(p) = Period::parse(s.rules.kind, &period) {
            by_key.entry(key).or_default().push(p);
        }
    }
    let mut plan = Plan::default();
    for (key, mut periods) in by_key {
        let marker = ledger.export_complete_to(&key)?;
        periods.retain(|p| s.scope.admits_month(p.month_of()));
        if let Some(through) = ledger.predecessor_processed_through(&key)? {
            // The predecessor's periods: what it sent is imported, what failed is resubmitted.
            periods.retain(|p| {
                let theirs = p.end() <= through;
                if theirs {
                    tracing::warn!(
                        "{key} {p}: the predecessor processed this period (imported state), but \
                         some contracts' usage here was not in its state; not sent automatically \
                         (see the pending_periods view)"
                    );
                }
                !theirs
            });
        }
        let periods = due_periods(&periods, marker, now, &s.rules);
        plan.waiting.extend(
            periods
                .waiting
                .into_iter()
                .map(|(p, why)| (key.clone(), p, why)),
        );
        plan.before_start
            .extend(periods.before_start.into_iter().map(|p| (key.clone(), p)));
        for period in periods.due {
            let done = ledger.contracts_with_submissions(&key, period)?;
            for (contract, usage) in ledger.usage_by_contract(&key, period)? {
                if done.contains(&contract) {
                    continue;
                }
                plan.submissions.extend(build_submissions(
                    s,
                    &key,
                    &contract,
                    period,
                    &usage,
                    &BTreeMap::new(),
                    None,
                ));
            }
        }
    }
    Ok(plan)
}

/// Writes a computed plan as outbox rows in one transaction; returns the submission ids.
pub fn write_plan(ledger: &mut Ledger, run_id: i64, plan: &Plan) -> Result<Vec<i64>> {
    ledger.insert_submissions(run_id, &plan.submissions)
}

/// The planning step of `submit`: compute the due periods and commit their outbox rows.
pub fn plan_submissions(
    ledger: &mut Ledger,
    s: &Planning,
    run_id: i64,
    now: DateTime<Utc>,
) -> Result<Plan> {
    let plan = compute_plan(ledger, s, now)?;
    write_plan(ledger, run_id, &plan)?;
    Ok(plan)
}

/// The planning step of `resubmit`: recompute every failed, rejected or warned line that the
/// filter selects with the current formulas, as new submissions linked to the old ones. Lines
/// already accepted (or in flight) are never planned again. Returns the new submissions' ids and
/// what could not be retried.
pub fn plan_resubmissions(
    ledger: &mut Ledger,
    s: &Planning,
    filter: &SubmissionFilter,
    run_id: i64,
) -> Result<(Vec<i64>, Vec<String>)> {
    let (subs, notes) = compute_resubmissions(ledger, s, filter)?;
    let ids = ledger.insert_submissions(run_id, &subs)?;
    Ok((ids, notes))
}

/// What [`plan_resubmissions`] would write, without writing it (the dry run of `resubmit`).
pub fn compute_resubmissions(
    ledger: &Ledger,
    s: &Planning,
    filter: &SubmissionFilter,
) -> Result<(Vec<NewSubmission>, Vec<String>)> {
    let mut groups: BTreeMap<(String, String, PeriodKind, String), Vec<_>> = BTreeMap::new();
    for c in ledger.retry_candidates(filter)? {
        groups
            .entry((
                c.service_key.clone(),
                c.contract_id.clone(),
                c.period_kind,
                c.period.clone(),
            ))
            .or_default()
            .push(c);
    }
    let mut subs = Vec::new();
    let mut notes = Vec::new();
    for ((key, contract, kind, period_key), candidates) in groups {
        let Some(period) = Period::parse(kind, &period_key) else {
            notes.push(format!(
                "{key} {contract} {period_key}: not a {kind} period"
            ));
            continue;
        };
        let usage = ledger
            .usage_by_contract(&key, period)?
            .into_iter()
            .find(|(c, _)| *c == contract)
            .map(|(_, u)| u);
        let Some(usage) = usage else {
            notes.push(format!(
                "{key} contract {contract} {period_key}: no usage in the ledger now; nothing to re-send"
            ));
            continue;
        };
        let held = ledger.held_dimensions(&key, &contract, period)?;
        if held.contains("*") {
            continue;
        }
        let retry_of: BTreeMap<String, i64> = candidates
            .iter()
            .map(|c| (c.dimension.clone(), c.line_id))
            .collect();
        let previous = candidates.iter().map(|c| c.submission_id).max();
        let planned = build_submissions(s, &key, &contract, period, &usage, &retry_of, previous);
        for c in candidates.iter().filter(|c| c.dimension != "*") {
            let computed = planned
                .iter()
                .any(|p| p.lines.iter().any(|l| l.dimension == c.dimension));
            if !computed && !held.contains(&c.dimension) {
                notes.push(format!(
                    "{key} contract {contract} {period_key}: dimension {} is no longer computed by the current formulas; left as it was",
                    c.dimension
                ));
            }
        }
        subs.extend(planned.into_iter().filter_map(|mut p| {
            p.lines.retain(|l| !held.contains(&l.dimension));
            (!p.lines.is_empty()).then(|| rebuild_payload(p))
        }));
    }
    Ok((subs, notes))
}

/// One contract's submissions for a period: its lines computed, split into requests of at most
/// `max_records_per_request`, or one failed submission when any line cannot be sent.
fn build_submissions(
    s: &Planning,
    service_key: &str,
    contract: &str,
    period: Period,
    usage: &BaseUsage,
    retry_of: &BTreeMap<String, i64>,
    previous: Option<i64>,
) -> Vec<NewSubmission> {
    let computed = s.dimensions.compute(usage);
    let errors: Vec<String> = computed
        .iter()
        .filter_map(|l| l.quantity.as_ref().err().cloned())
        .collect();
    let base = NewSubmission {
        service_key: service_key.to_string(),
        contract_id: contract.to_string(),
        period,
        cloud: s.cloud,
        payload: None,
        status: SubmissionStatus::Pending,
        error: None,
        retry_of: previous,
        inputs: usage.clone(),
        lines: Vec::new(),
    };
    // A failure recorded for the whole contract and period ('*', imported from the predecessor
    // without its request) is retried by every line.
    let line = |dimension: &str, exact: f64, quantity: Option<i64>, status, message| NewLine {
        dimension: dimension.to_string(),
        exact_quantity: Some(exact),
        quantity,
        status,
        message,
        retry_of: retry_of.get(dimension).or(retry_of.get("*")).copied(),
    };
    if !errors.is_empty() {
        let error = format!("not sent: {}", errors.join("; "));
        let lines = computed
            .iter()
            .map(|l| match &l.quantity {
                Ok(q) => line(
                    &l.dimension,
                    l.exact,
                    Some(*q),
                    LineStatus::Failed,
                    Some("not sent: another dimension of this contract failed".into()),
                ),
                Err(why) => line(
                    &l.dimension,
                    l.exact,
                    None,
                    LineStatus::Failed,
                    Some(why.clone()),
                ),
            })
            .collect();
        return vec![NewSubmission {
            status: SubmissionStatus::Failed,
            error: Some(error),
            lines,
            ..base
        }];
    }
    let lines: Vec<NewLine> = computed
        .iter()
        .map(|l| {
            line(
                &l.dimension,
                l.exact,
                l.quantity.clone().ok(),
                LineStatus::Pending,
                None,
            )
        })
        .collect();
    let size = match s.max_records_per_request {
        0 => usize::MAX,
        n => n,
    };
    lines
        .chunks(size)
        .map(|chunk| {
            rebuild_payload(NewSubmission {
                lines: chunk.to_vec(),
                ..base.clone()
            })
        })
        .collect()
}

/// Sets a pending submission's payload from its lines: the exact body that will be sent.
fn rebuild_payload(mut s: NewSubmission) -> NewSubmission {
    if s.status != SubmissionStatus::Pending {
        return s;
    }
    let (start_time, end_time) = s.period.window();
    let request = MeteringRequest {
        request: s
            .lines
            .iter()
            .map(|l| MeteringRecord {
                cloud: s.cloud.to_string(),
                contract_id: s.contract_id.clone(),
                dimension: l.dimension.clone(),
                start_time: start_time.clone(),
                end_time: end_time.clone(),
                quantity: l.quantity.unwrap_or_default().to_string(),
            })
            .collect(),
    };
    s.payload = Some(serde_json::to_string(&request).expect("a request serializes"));
    s
}
