//! Submitting to Clazar, in two steps that `meterbook submit`, `resubmit` and (later) `run` compose:
//!
//! 1. **Planning** ([`plan_submissions`], [`plan_resubmissions`]): compute the due periods and
//!    each contract's lines, and commit them as outbox rows (status `pending`). Nothing leaves yet,
//!    so a caller can, for example, upload the ledger before the first request.
//! 2. **Sending** ([`send_outbox`]): each pending (or crashed-in-flight, or transiently failed)
//!    submission is marked `sending` and committed, then posted, then its answer recorded.
//!
//! A crash between the POST and the record leaves `sending` rows; the next run re-sends the same
//! payload and Clazar's duplicate answer confirms it had arrived. [`compute_plan`] is the dry run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::clazar::{
    Answer, ClazarError, Client, Cloud, Delivery, MeteringRecord, MeteringRequest, ResultKind,
};
use crate::dimensions::{BaseUsage, Dimensions};
use crate::ledger::{
    Ledger, LineStatus, LineUpdate, NewLine, NewSubmission, OutboxItem, SubmissionFilter,
    SubmissionStatus, SubmissionUpdate,
};
use crate::period::{Period, PeriodKind};
use crate::plan::{due_periods, Completeness, PeriodRules};
use crate::source::{Scope, ServiceKey};

/// The failpoint that kills the process right after an answer arrives, before it is recorded
/// (`METERBOOK_FAILPOINT=after-send`), to test crash recovery.
pub const FAILPOINT_AFTER_SEND: &str = "after-send";

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
    pub fn formula_failures(&self) -> usize {
        self.submissions
            .iter()
            .filter(|s| s.status == SubmissionStatus::Failed)
            .count()
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

/// What a send step did, counted by line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendReport {
    pub requests: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub warning: u64,
    pub rejected: u64,
    pub failed: u64,
    pub transient: u64,
}

impl SendReport {
    pub fn needs_attention(&self) -> bool {
        self.warning + self.rejected + self.failed + self.transient > 0
    }

    fn count(&mut self, u: &SubmissionUpdate, lines: usize) {
        self.requests += 1;
        if let (true, Some(every)) = (u.lines.is_empty(), u.status.of_every_line()) {
            self.add(every, lines as u64);
        }
        for l in &u.lines {
            self.add(l.status, 1);
        }
    }

    fn add(&mut self, status: LineStatus, n: u64) {
        let counter = match status {
            LineStatus::Accepted => &mut self.accepted,
            // Accepted before: by Clazar (a duplicate), or by the predecessor (imported).
            LineStatus::Duplicate | LineStatus::Imported => &mut self.duplicate,
            LineStatus::Warning => &mut self.warning,
            LineStatus::Rejected => &mut self.rejected,
            LineStatus::Failed => &mut self.failed,
            // Without an answer: the next run sends it again.
            LineStatus::Transient | LineStatus::Pending | LineStatus::Sending => {
                &mut self.transient
            }
        };
        *counter += n;
    }

    pub fn line(&self) -> String {
        format!(
            "{} requests: {} lines accepted, {} already accepted (duplicate), {} warnings, {} rejected, {} failed, {} without an answer",
            self.requests, self.accepted, self.duplicate, self.warning, self.rejected, self.failed, self.transient
        )
    }
}

/// The sending step: posts every outbox submission (all, or those in `only`), `concurrency` at a
/// time. Each is marked `sending` and committed before its request leaves, and its answer is
/// recorded when it arrives. Stops with an error only when Clazar refuses the credentials.
pub async fn send_outbox(
    ledger: &Mutex<Ledger>,
    client: &Client,
    only: Option<&[i64]>,
    concurrency: usize,
) -> Result<SendReport> {
    let items = lock(ledger).outbox(only)?;
    let reconciling = items
        .iter()
        .filter(|i| i.status != SubmissionStatus::Pending)
        .count();
    if reconciling > 0 {
        tracing::info!(
            "re-sending {reconciling} submissions left in flight or without an answer by an earlier run"
        );
    }
    let bar = progress_bar(items.len());
    // Set when Clazar refuses the credentials: what has not started yet stays pending.
    let stop = AtomicBool::new(false);
    let results: Vec<Result<Option<(SubmissionUpdate, usize)>>> = futures::stream::iter(
        items
            .into_iter()
            .map(|item| send_one(ledger, client, item, &stop)),
    )
    .buffer_unordered(concurrency.max(1))
    .inspect(|_| bar.inc(1))
    .collect()
    .await;
    bar.finish_and_clear();
    let mut report = SendReport::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Some((u, lines))) => report.count(&u, lines),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// A bar on a terminal, nothing otherwise (the summary line says the rest).
fn progress_bar(len: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} requests [{elapsed_precise}]",
        )
        .expect("a valid template"),
    );
    bar
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn send_one(
    ledger: &Mutex<Ledger>,
    client: &Client,
    item: OutboxItem,
    stop: &AtomicBool,
) -> Result<Option<(SubmissionUpdate, usize)>> {
    if stop.load(Ordering::SeqCst) {
        return Ok(None);
    }
    lock(ledger).mark_sending(item.id)?;
    let delivery = match client.deliver(&item.payload).await {
        Ok(d) => d,
        Err(e @ (ClazarError::CredentialsRefused { .. } | ClazarError::TokenRefused { .. })) => {
            // Nothing reached the metering endpoint with a valid token: back to pending.
            stop.store(true, Ordering::SeqCst);
            lock(ledger).release(item.id)?;
            return Err(crate::error::Fatal::Config(e.to_string()).into());
        }
    };
    crate::failpoint::hit(FAILPOINT_AFTER_SEND);
    let update = interpret(&item, &delivery);
    report_update(&item, &update);
    lock(ledger)
        .record_answer(item.id, &update)
        .with_context(|| format!("recording the answer for contract {}", item.contract_id))?;
    Ok(Some((update, item.lines.len())))
}

fn report_update(item: &OutboxItem, u: &SubmissionUpdate) {
    let what = format!(
        "{} contract {} {} {}",
        item.service_key, item.contract_id, item.period_kind, item.period
    );
    match u.status {
        SubmissionStatus::Answered => {
            for l in u.lines.iter().filter(|l| !l.status.delivered()) {
                let dimension = item
                    .lines
                    .iter()
                    .find(|(id, _)| *id == l.line_id)
                    .map(|(_, d)| d.as_str())
                    .unwrap_or("?");
                tracing::warn!(
                    "{what} {dimension}: {} ({})",
                    l.status,
                    l.message.as_deref().unwrap_or("no message")
                );
            }
        }
        status => tracing::warn!(
            "{what}: {status}: {}",
            u.error.as_deref().unwrap_or("no detail")
        ),
    }
}

/// What an answer means for a submission and each of its lines.
fn interpret(item: &OutboxItem, d: &Delivery) -> SubmissionUpdate {
    let whole =
        |status: SubmissionStatus, http: Option<u16>, body: Option<String>, error: String| {
            SubmissionUpdate {
                status,
                attempts: d.attempts,
                http_status: http,
                response_body: body,
                error: Some(error),
                lines: Vec::new(),
            }
        };
    match &d.answer {
        Answer::Results {
            status,
            body,
            results,
        } => {
            let by_dimension: BTreeMap<&str, usize> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.dimension.as_deref().map(|d| (d, i)))
                .collect();
            let lines = item
                .lines
                .iter()
                .enumerate()
                .map(|(pos, (line_id, dimension))| {
                    let at_position = results
                        .get(pos)
                        .filter(|r| r.dimension.as_deref().is_none_or(|d| d == dimension));
                    let result = at_position
                        .or_else(|| by_dimension.get(dimension.as_str()).map(|i| &results[*i]));
                    match result {
                        Some(r) => line_update(*line_id, r),
                        None => LineUpdate {
                            line_id: *line_id,
                            status: LineStatus::Failed,
                            clazar_id: None,
                            result_status: None,
                            code: None,
                            message: Some("no result for this record in Clazar's answer".into()),
                            errors: None,
                        },
                    }
                })
                .collect();
            SubmissionUpdate {
                status: SubmissionStatus::Answered,
                attempts: d.attempts,
                http_status: Some(*status),
                response_body: Some(body.clone()),
                error: None,
                lines,
            }
        }
        Answer::Transient {
            why, status, body, ..
        } => whole(
            SubmissionStatus::Transient,
            *status,
            body.clone(),
            format!(
                "no answer after {} attempts: {why}; the next run re-sends it",
                d.attempts
            ),
        ),
        Answer::Rejected { status, body } => whole(
            SubmissionStatus::Rejected,
            Some(*status),
            Some(body.clone()),
            format!("HTTP {status}: {}", snippet(body)),
        ),
        Answer::Unauthorized { body } => whole(
            SubmissionStatus::Rejected,
            Some(401),
            Some(body.clone()),
            format!("HTTP 401: {}", snippet(body)),
        ),
        Answer::Unreadable { status, body, why } => whole(
            SubmissionStatus::Failed,
            Some(*status),
            Some(body.clone()),
            format!("{why}; body: {}", snippet(body)),
        ),
    }
}

fn line_update(line_id: i64, r: &crate::clazar::MeteringResult) -> LineUpdate {
    let errors = r.error_texts();
    let kind = r.kind();
    let message = match kind {
        ResultKind::Warning => Some(r.message.clone().unwrap_or_else(|| {
            format!(
                "status '{}' without errors (e.g. a dimension not registered for the listing)",
                r.status.as_deref().unwrap_or("none")
            )
        })),
        _ => r
            .message
            .clone()
            .or_else(|| (!errors.is_empty()).then(|| errors.join("; "))),
    };
    LineUpdate {
        line_id,
        status: match kind {
            ResultKind::Accepted => LineStatus::Accepted,
            ResultKind::Duplicate => LineStatus::Duplicate,
            ResultKind::Warning => LineStatus::Warning,
            ResultKind::Rejected => LineStatus::Rejected,
        },
        clazar_id: r.id.clone(),
        result_status: r.status.clone(),
        code: r.code_text(),
        message,
        errors: r.errors.as_ref().map(|e| e.to_string()),
    }
}

fn snippet(body: &str) -> String {
    let flat: String = body.chars().take(200).collect();
    flat.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clazar::classify_http;

    fn item() -> OutboxItem {
        OutboxItem {
            id: 1,
            service_key: "pg:PROD:pt-1".into(),
            contract_id: "c1".into(),
            period_kind: PeriodKind::Month,
            period: "2025-06".into(),
            payload: "{}".into(),
            status: SubmissionStatus::Pending,
            attempts: 0,
            lines: vec![(10, "cpu".into()), (11, "mem".into()), (12, "disk".into())],
        }
    }

    fn delivered(status: u16, body: &str) -> Delivery {
        Delivery {
            answer: classify_http(status, None, body.as_bytes()),
            attempts: 1,
        }
    }

    #[test]
    fn results_are_matched_to_lines_by_dimension_when_out_of_order() {
        let body = r#"{"results": [
            {"dimension": "mem", "status": "fail"},
            {"dimension": "cpu", "status": "success", "id": "r1"}
        ]}"#;
        let u = interpret(&item(), &delivered(200, body));
        assert_eq!(u.status, SubmissionStatus::Answered);
        let got: Vec<(i64, LineStatus)> = u.lines.iter().map(|l| (l.line_id, l.status)).collect();
        assert_eq!(
            got,
            [
                (10, LineStatus::Accepted),
                (11, LineStatus::Warning),
                (12, LineStatus::Failed)
            ]
        );
        assert_eq!(u.lines[0].clazar_id.as_deref(), Some("r1"));
        assert!(u.lines[2].message.as_deref().unwrap().contains("no result"));
    }

    #[test]
    fn whole_request_outcomes_keep_status_and_body() {
        let u = interpret(&item(), &delivered(404, "not here"));
        assert_eq!(
            (u.status, u.http_status, u.response_body.as_deref()),
            (SubmissionStatus::Rejected, Some(404), Some("not here"))
        );
        let u = interpret(&item(), &delivered(200, "<html>"));
        assert_eq!(u.status, SubmissionStatus::Failed);
        assert!(u.error.unwrap().contains("<html>"));
        let u = interpret(&item(), &delivered(503, ""));
        assert_eq!(u.status, SubmissionStatus::Transient);
        assert!(u.lines.is_empty());
    }
}
