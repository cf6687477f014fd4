//! Submissions to Clazar as rows: runs, the outbox (a request body and its lines, written before
//! the request leaves), answers, and the queries behind planning, resubmit, drift and history.
//! The unique index `submission_lines_once` makes a second accepted or in-flight line impossible.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use chrono::Utc;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, params_from_iter, ToSql, Transaction};

use super::status::holding_sql_list;
use super::{Ledger, LineStatus, QueryResult, SubmissionStatus};
use crate::clazar::Cloud;
use crate::dimensions::{BaseUsage, DimensionSum};
use crate::error::Fatal;
use crate::period::{format_utc, Period, PeriodKind};
use crate::source::parse::Quantity;

/// The submissions in the outbox: planned, in flight, or without an answer, with a request to send.
const IN_OUTBOX: &str = "status IN ('pending', 'sending', 'transient') AND payload IS NOT NULL";

/// A submission as planned, before it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSubmission {
    pub service_key: String,
    pub contract_id: String,
    pub period: Period,
    pub cloud: Cloud,
    /// The exact body to send; `None` when nothing can be sent (then `status` is `failed`).
    pub payload: Option<String>,
    /// `Pending`, or `Failed` when nothing can be sent.
    pub status: SubmissionStatus,
    pub error: Option<String>,
    pub retry_of: Option<i64>,
    /// The base usage it was computed from (for drift).
    pub inputs: BaseUsage,
    pub lines: Vec<NewLine>,
}

/// One line of a planned submission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLine {
    pub dimension: String,
    pub exact_quantity: Option<f64>,
    pub quantity: Option<i64>,
    /// `Pending`, or `Failed` when this line (or another of the contract's) cannot be sent.
    pub status: LineStatus,
    pub message: Option<String>,
    pub retry_of: Option<i64>,
}

/// A submission waiting to be sent (or re-sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    pub id: i64,
    pub service_key: String,
    pub contract_id: String,
    pub period_kind: PeriodKind,
    pub period: String,
    pub payload: String,
    pub status: SubmissionStatus,
    pub attempts: i64,
    /// Line ids and dimensions, in payload order.
    pub lines: Vec<(i64, String)>,
}

/// What an answer did to a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmissionUpdate {
    /// With no `lines`, every line of the submission takes this status too.
    pub status: SubmissionStatus,
    pub attempts: u32,
    pub http_status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub lines: Vec<LineUpdate>,
}

/// What an answer did to one line.
#[derive(Debug, Clone, PartialEq)]
pub struct LineUpdate {
    pub line_id: i64,
    pub status: LineStatus,
    pub clazar_id: Option<String>,
    pub result_status: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub errors: Option<String>,
}

/// A failed, rejected or warned line that resubmit may retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryCandidate {
    pub line_id: i64,
    pub submission_id: i64,
    pub service_key: String,
    pub contract_id: String,
    pub period_kind: PeriodKind,
    pub period: String,
    pub dimension: String,
}

/// A delivered period whose usage has changed since.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    pub service_key: String,
    pub contract_id: String,
    pub period_kind: PeriodKind,
    pub period: String,
    pub dimension: String,
    pub submitted_value: f64,
    pub current_value: f64,
    pub difference: f64,
}

/// Filters for history and resubmit; `None` means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmissionFilter {
    pub contract_id: Option<String>,
    /// A period key (`2025-06`, or an hour); a month also matches its hours.
    pub period: Option<String>,
    pub status: Option<LineStatus>,
}

impl SubmissionFilter {
    /// `WHERE` terms over a view with `contract_id`, `period` and `status` columns.
    pub(super) fn sql(&self) -> (String, Vec<String>) {
        let status = self.status.map(|s| s.as_str().to_string());
        let mut terms = vec!["1 = 1".to_string()];
        let mut values = Vec::new();
        let mut add = |term: &str, v: &Option<String>| {
            if let Some(v) = v {
                values.push(v.clone());
                terms.push(term.replace('?', &format!("?{}", values.len())));
            }
        };
        add("contract_id = ?", &self.contract_id);
        add("(period = ? OR substr(period, 1, 7) = ?)", &self.period);
        add("status = ?", &status);
        (terms.join(" AND "), values)
    }
}

fn now() -> String {
    format_utc(Utc::now())
}

fn f64_of(v: rusqlite::types::ValueRef<'_>) -> f64 {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Integer(i) => i as f64,
        ValueRef::Real(r) => r,
        ValueRef::Text(t) => String::from_utf8_lossy(t).parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A usage value is stored as the SQL type it has: integers stay exact integers.
impl ToSql for Quantity {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match *self {
            Quantity::Int(i) => ToSqlOutput::from(i),
            Quantity::Real(x) => ToSqlOutput::from(x),
        })
    }
}

impl FromSql for Quantity {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Integer(i) => Ok(Quantity::Int(i)),
            ValueRef::Real(x) => Ok(Quantity::Real(x)),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

impl Ledger {
    pub fn begin_submission_run(
        &self,
        command: &str,
        kind: Option<PeriodKind>,
        settings: &str,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO submission_runs (command, period_kind, settings, started_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![command, kind, settings, now()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn finish_submission_run(&self, run_id: i64, planned: u64, sent: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE submission_runs SET finished_at = ?2, planned = ?3, sent = ?4 WHERE id = ?1",
            params![run_id, now(), planned, sent],
        )?;
        Ok(())
    }

    /// Service keys and periods that hold attributed usage of a contract with no submission yet
    /// for that period (or an overlapping one of the other kind). Months are those of the
    /// `pending_periods` view (it reads the monthly totals ingest keeps, so planning does not read
    /// every record of the ledger's history on each run); hours are read from the records.
    pub fn periods_with_unplanned_usage(&self, kind: PeriodKind) -> Result<Vec<(String, String)>> {
        let sql = match kind {
            PeriodKind::Month => {
                "SELECT DISTINCT service_key, month AS period FROM pending_periods ORDER BY 2, 1"
            }
            PeriodKind::Hour => {
                "SELECT DISTINCT u.service_key, u.period FROM (
                     SELECT service_key, hour AS period, contract_id
                     FROM usage_records WHERE contract_id IS NOT NULL
                     GROUP BY 1, 2, 3) u
                 WHERE NOT EXISTS (
                     SELECT 1 FROM submissions s
                     WHERE s.service_key = u.service_key AND s.contract_id = u.contract_id
                       AND ((s.period_kind = 'hour' AND s.period = u.period)
                            OR (s.period_kind = 'month' AND s.period = substr(u.period, 1, 7))))
                 ORDER BY 2, 1"
            }
        };
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every dimension the ledger has usage of (formulas may read any of them): those of the
    /// monthly totals (attributed usage, compacted months included) and of unattributed records
    /// (read through their partial index).
    pub fn dimensions_in_usage(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "SELECT dimension FROM usage_month_totals
             UNION
             SELECT dimension FROM usage_records WHERE contract_id IS NULL
             ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every contract's base usage in a period: dimension -> sums of value and priced amount.
    pub fn usage_by_contract(
        &self,
        service_key: &str,
        period: Period,
    ) -> Result<Vec<(String, BaseUsage)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT contract_id, dimension, SUM(value), SUM(value * price_per_unit)
             FROM usage_records
             WHERE service_key = ?1 AND hour >= ?2 AND hour < ?3 AND contract_id IS NOT NULL
             GROUP BY contract_id, dimension
             ORDER BY contract_id, dimension",
        )?;
        let mut rows = stmt.query(params![
            service_key,
            format_utc(period.start),
            format_utc(period.end())
        ])?;
        let mut out: Vec<(String, BaseUsage)> = Vec::new();
        while let Some(r) = rows.next()? {
            let contract: String = r.get(0)?;
            let dimension: String = r.get(1)?;
            // The sum keeps its SQL type: an int when every value is one (formulas see a Python
            // int), else a float.
            let sum = DimensionSum {
                value: r.get(2)?,
                amount: r.get(3)?,
            };
            match out.last_mut() {
                Some((c, usage)) if *c == contract => {
                    usage.insert(dimension, sum);
                }
                _ => out.push((contract, BaseUsage::from([(dimension, sum)]))),
            }
        }
        Ok(out)
    }

    /// Contracts that already have a submission for this period or an overlapping one.
    pub fn contracts_with_submissions(
        &self,
        service_key: &str,
        period: Period,
    ) -> Result<BTreeSet<String>> {
        let month = period.month_of().to_string();
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT contract_id FROM submissions
             WHERE service_key = ?1
               AND ((period_kind = ?2 AND period = ?3)
                    OR (?2 = 'hour' AND period_kind = 'month' AND period = ?4)
                    OR (?2 = 'month' AND period_kind = 'hour' AND period >= ?4 AND period < ?4 || '~'))",
        )?;
        let rows = stmt.query_map(
            params![service_key, period.kind, period.key(), month],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Writes planned submissions, their lines and inputs in one transaction (the outbox).
    /// Returns their ids. The unique index refuses a second holding line for the same key.
    pub fn insert_submissions(&mut self, run_id: i64, subs: &[NewSubmission]) -> Result<Vec<i64>> {
        let tx = self.conn.transaction()?;
        let ids = subs
            .iter()
            .map(|s| {
                let what = format!(
                    "writing the submission of contract {} for {} {}",
                    s.contract_id, s.period.kind, s.period
                );
                insert_submission(&tx, run_id, s).map_err(|e| {
                    if is_constraint_violation(&e) {
                        // The unique index: another run planned or sent the same line meanwhile.
                        Fatal::Conflict(format!(
                            "{what}: the ledger already holds an accepted or in-flight line for it \
                             (another meterbook run?); nothing of this plan was written"
                        ))
                        .into()
                    } else {
                        e.context(what)
                    }
                })
            })
            .collect::<Result<Vec<i64>>>()?;
        tx.commit().context("committing planned submissions")?;
        Ok(ids)
    }

    /// Whether nothing waits to be sent or re-sent (see [`Ledger::outbox`]).
    pub fn outbox_is_empty(&self) -> Result<bool> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM submissions WHERE {IN_OUTBOX})");
        Ok(self.conn.query_row(&sql, [], |r| r.get(0))?)
    }

    /// Submissions waiting to be sent or re-sent, oldest first; `ids` limits them.
    pub fn outbox(&self, ids: Option<&[i64]>) -> Result<Vec<OutboxItem>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, service_key, contract_id, period_kind, period, payload, status, attempts
             FROM submissions
             WHERE {IN_OUTBOX}
             ORDER BY period, id"
        ))?;
        let mut items: Vec<OutboxItem> = stmt
            .query_map([], |r| {
                Ok(OutboxItem {
                    id: r.get(0)?,
                    service_key: r.get(1)?,
                    contract_id: r.get(2)?,
                    period_kind: r.get(3)?,
                    period: r.get(4)?,
                    payload: r.get(5)?,
                    status: r.get(6)?,
                    attempts: r.get(7)?,
                    lines: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        if let Some(ids) = ids {
            let wanted: BTreeSet<i64> = ids.iter().copied().collect();
            items.retain(|i| wanted.contains(&i.id));
        }
        let mut lines = self.conn.prepare_cached(
            "SELECT id, dimension FROM submission_lines WHERE submission_id = ?1 ORDER BY id",
        )?;
        for item in &mut items {
            item.lines = lines
                .query_map([item.id], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(items)
    }

    /// Marks a submission as possibly sent, before its request leaves.
    pub fn mark_sending(&mut self, id: i64) -> Result<()> {
        let tx = self.conn.transaction()?;
        let at = now();
        tx.execute(
            "UPDATE submissions SET status = 'sending', sent_at = ?2 WHERE id = ?1",
            params![id, at],
        )?;
        tx.execute(
            "UPDATE submission_lines SET status = 'sending', updated_at = ?2 WHERE submission_id = ?1",
            params![id, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Puts a submission that certainly did not reach Clazar back into the outbox as pending.
    pub fn release(&mut self, id: i64) -> Result<()> {
        self.record_answer(
            id,
            &SubmissionUpdate {
                status: SubmissionStatus::Pending,
                attempts: 0,
                http_status: None,
                response_body: None,
                error: None,
                lines: Vec::new(),
            },
        )
    }

    /// Records what an answer (or its absence) did to a submission and its lines.
    pub fn record_answer(&mut self, id: i64, u: &SubmissionUpdate) -> Result<()> {
        let tx = self.conn.transaction()?;
        let at = now();
        let answered =
            (u.http_status.is_some() || u.status != SubmissionStatus::Pending).then_some(&at);
        tx.execute(
            "UPDATE submissions SET status = ?2, attempts = attempts + ?3,
                 http_status = COALESCE(?4, http_status), response_body = COALESCE(?5, response_body),
                 error = ?6, answered_at = COALESCE(?7, answered_at)
             WHERE id = ?1",
            params![id, u.status, u.attempts, u.http_status, u.response_body, u.error, answered],
        )?;
        if let (true, Some(every)) = (u.lines.is_empty(), u.status.of_every_line()) {
            // The whole request shares one fate (pending again, transient, rejected, failed).
            tx.execute(
                "UPDATE submission_lines SET status = ?2, message = ?3, updated_at = ?4
                 WHERE submission_id = ?1",
                params![id, every, u.error, at],
            )?;
        }
        for l in &u.lines {
            tx.execute(
                "UPDATE submission_lines SET status = ?2, clazar_id = ?3, result_status = ?4,
                     code = ?5, message = ?6, errors = ?7, updated_at = ?8
                 WHERE id = ?1 AND submission_id = ?9",
                params![
                    l.line_id,
                    l.status,
                    l.clazar_id,
                    l.result_status,
                    l.code,
                    l.message,
                    l.errors,
                    at,
                    id
                ],
            )?;
        }
        tx.commit()
            .with_context(|| format!("recording the answer to submission {id}"))?;
        Ok(())
    }

    /// Failed, rejected or warned lines not yet retried and not held by another line.
    pub fn retry_candidates(&self, filter: &SubmissionFilter) -> Result<Vec<RetryCandidate>> {
        let (terms, values) = filter.sql();
        let sql = format!(
            "SELECT line_id, submission_id, service_key, contract_id, period_kind, period, dimension
             FROM submission_failures
             WHERE status IN ('failed', 'rejected', 'warning') AND {terms}
             ORDER BY period, service_key, contract_id, line_id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(values.iter()), |r| {
            Ok(RetryCandidate {
                line_id: r.get(0)?,
                submission_id: r.get(1)?,
                service_key: r.get(2)?,
                contract_id: r.get(3)?,
                period_kind: r.get(4)?,
                period: r.get(5)?,
                dimension: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Dimensions of a contract and period held by an accepted or in-flight line (`*` = all).
    pub fn held_dimensions(
        &self,
        service_key: &str,
        contract_id: &str,
        period: Period,
    ) -> Result<BTreeSet<String>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT dimension FROM submission_lines
             WHERE service_key = ?1 AND contract_id = ?2 AND period_kind = ?3 AND period = ?4
               AND status IN ({})",
            holding_sql_list()
        ))?;
        let rows = stmt.query_map(
            params![service_key, contract_id, period.kind, period.key()],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Delivered periods whose usage changed since (the `submission_drift` view).
    pub fn drift(&self) -> Result<Vec<DriftRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT service_key, contract_id, period_kind, period, dimension,
                    submitted_value, current_value, difference
             FROM submission_drift ORDER BY period, service_key, contract_id, dimension",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DriftRow {
                service_key: r.get(0)?,
                contract_id: r.get(1)?,
                period_kind: r.get(2)?,
                period: r.get(3)?,
                dimension: r.get(4)?,
                submitted_value: f64_of(r.get_ref(5)?),
                current_value: f64_of(r.get_ref(6)?),
                difference: f64_of(r.get_ref(7)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many lines need an operator (the `submission_failures` view).
    pub fn submission_failure_count(&self) -> Result<u64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM submission_failures", [], |r| r.get(0))?)
    }

    /// Streams `submission_history` (or `submission_failures` when `failures_only`) to `sink`:
    /// every column when `wide`, else the ones a terminal has room for.
    pub fn history(
        &self,
        filter: &SubmissionFilter,
        failures_only: bool,
        wide: bool,
        sink: &mut dyn QueryResult,
    ) -> Result<()> {
        let (terms, values) = filter.sql();
        let view = if failures_only {
            "submission_failures"
        } else {
            "submission_history"
        };
        let columns = if wide {
            "submission_id, line_id, service_key, contract_id, period_kind, period, dimension,
             exact_quantity, quantity, status, attempts, http_status, code, detail, retry_of,
             sent_at, answered_at"
        } else {
            "contract_id AS contract, period, dimension, quantity, status, attempts, detail"
        };
        let sql = format!(
            "SELECT {columns}
             FROM {view} WHERE {terms}
             ORDER BY period, service_key, contract_id, dimension, line_id"
        );
        self.stream(&sql, &values, sink)
    }
}

fn is_constraint_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation
        )
    })
}

fn insert_submission(tx: &Transaction<'_>, run_id: i64, s: &NewSubmission) -> Result<i64> {
    let at = now();
    let (start, end) = s.period.window();
    tx.execute(
        "INSERT INTO submissions (run_id, service_key, contract_id, period_kind, period, start_time,
             end_time, cloud, payload, status, error, retry_of, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            run_id,
            s.service_key,
            s.contract_id,
            s.period.kind,
            s.period.key(),
            start,
            end,
            s.cloud.as_str(),
            s.payload,
            s.status,
            s.error,
            s.retry_of,
            at
        ],
    )?;
    let id = tx.last_insert_rowid();
    let mut line = tx.prepare_cached(
        "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind, period,
             dimension, exact_quantity, quantity, status, message, retry_of, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for l in &s.lines {
        line.execute(params![
            id,
            s.service_key,
            s.contract_id,
            s.period.kind,
            s.period.key(),
            l.dimension,
            l.exact_quantity.filter(|x| x.is_finite()),
            l.quantity,
            l.status,
            l.message,
            l.retry_of,
            at
        ])
        .with_context(|| format!("dimension {}", l.dimension))?;
    }
    let mut input = tx.prepare_cached(
        "INSERT INTO submission_inputs (submission_id, dimension, value, amount) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (dimension, sum) in &s.inputs {
        input.execute(params![id, dimension, sum.value, sum.amount])?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::LedgerFile;
    use crate::period::Month;
    use crate::predecessor::PredecessorState;

    const KEY: &str = "pg:PROD:pt-1";

    fn ledger(dir: &tempfile::TempDir) -> Ledger {
        let file = LedgerFile::new(dir.path().join("l.sqlite"), Duration::from_secs(5));
        Ledger::open_for_writing(&file).unwrap()
    }

    fn june() -> Period {
        Period::parse(PeriodKind::Month, "2025-06").unwrap()
    }

    /// A submission of `contract` for June with a line per dimension, all in `status`.
    fn planned(contract: &str, dimensions: &[&str], status: LineStatus) -> NewSubmission {
        let failed = status == LineStatus::Failed;
        NewSubmission {
            service_key: KEY.into(),
            contract_id: contract.into(),
            period: june(),
            cloud: Cloud::Aws,
            payload: (!failed).then(|| format!("{{\"contract\": \"{contract}\"}}")),
            status: match failed {
                true => SubmissionStatus::Failed,
                false => SubmissionStatus::Pending,
            },
            error: None,
            retry_of: None,
            inputs: dimensions
                .iter()
                .map(|d| {
                    let sum = DimensionSum {
                        value: Quantity::Int(7),
                        amount: None,
                    };
                    (d.to_string(), sum)
                })
                .collect(),
            lines: dimensions
                .iter()
                .map(|d| NewLine {
                    dimension: d.to_string(),
                    exact_quantity: Some(7.0),
                    quantity: (!failed).then_some(7),
                    status,
                    message: None,
                    retry_of: None,
                })
                .collect(),
        }
    }

    fn count(ledger: &Ledger, sql: &str) -> i64 {
        ledger.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Answers every line of submission `id` with `status`, as Clazar would.
    fn answer(ledger: &mut Ledger, id: i64, status: LineStatus) {
        let lines: Vec<i64> = ledger
            .conn
            .prepare("SELECT id FROM submission_lines WHERE submission_id = ?1 ORDER BY id")
            .unwrap()
            .query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let update = SubmissionUpdate {
            status: SubmissionStatus::Answered,
            attempts: 1,
            http_status: Some(200),
            response_body: Some("{}".into()),
            error: None,
            lines: lines
                .into_iter()
                .map(|line_id| LineUpdate {
                    line_id,
                    status,
                    clazar_id: None,
                    result_status: None,
                    code: None,
                    message: Some(format!("{status} by the test")),
                    errors: None,
                })
                .collect(),
        };
        ledger.record_answer(id, &update).unwrap();
    }

    /// One single-line June submission per (contract, dimension), planned in one run and then
    /// left as it is (`Pending`: in flight; `Failed`: not sendable) or answered with the status
    /// given. Returns their ids.
    fn lines_that_are(ledger: &mut Ledger, lines: &[(&str, &str, LineStatus)]) -> Vec<i64> {
        let run = ledger.begin_submission_run("submit", None, "{}").unwrap();
        let plan: Vec<NewSubmission> = lines
            .iter()
            .map(|&(contract, dimension, status)| {
                let planned_as = match status {
                    LineStatus::Failed => LineStatus::Failed,
                    _ => LineStatus::Pending,
                };
                planned(contract, &[dimension], planned_as)
            })
            .collect();
        let ids = ledger.insert_submissions(run, &plan).unwrap();
        for (&id, &(_, _, status)) in ids.iter().zip(lines) {
            if !matches!(status, LineStatus::Pending | LineStatus::Failed) {
                answer(ledger, id, status);
            }
        }
        ids
    }

    #[test]
    fn a_plan_is_written_whole_with_its_lines_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = ledger(&dir);
        let run = ledger
            .begin_submission_run("submit", Some(PeriodKind::Month), "{}")
            .unwrap();
        let plan = [
            planned("c-1", &["cpu", "mem"], LineStatus::Pending),
            planned("c-2", &["cpu"], LineStatus::Failed),
        ];
        let ids = ledger.insert_submissions(run, &plan).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(
            count(
                &ledger,
                "SELECT COUNT(*) FROM submission_lines WHERE status = 'pending'"
            ),
            2
        );
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM submission_inputs"), 3);
        // The outbox holds what can be sent: the failed one has no body.
        let outbox = ledger.outbox(None).unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(
            (outbox[0].id, outbox[0].period_kind),
            (ids[0], PeriodKind::Month)
        );
        let dimensions: Vec<&str> = outbox[0].lines.iter().map(|(_, d)| d.as_str()).collect();
        assert_eq!(dimensions, ["cpu", "mem"]);
    }

    #[test]
    fn a_second_holding_line_is_a_conflict_and_nothing_of_that_plan_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = ledger(&dir);
        let run = ledger.begin_submission_run("submit", None, "{}").unwrap();
        ledger
            .insert_submissions(run, &[planned("c-1", &["cpu"], LineStatus::Pending)])
            .unwrap();
        let again = [
            planned("c-2", &["cpu"], LineStatus::Pending),
            planned("c-1", &["cpu"], LineStatus::Pending),
        ];
        let err = ledger.insert_submissions(run, &again).unwrap_err();
        assert_eq!(
            crate::error::exit_code_for(&err),
            crate::error::exit::CONFLICT
        );
        assert!(err.to_string().contains("contract c-1"), "{err}");
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM submissions"), 1);
        assert_eq!(count(&ledger, "SELECT COUNT(*) FROM submission_inputs"), 1);
    }

    #[test]
    fn retry_candidates_are_failed_rejected_or_warned_lines_not_retried_nor_held() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = ledger(&dir);
        let ids = lines_that_are(
            &mut ledger,
            &[
                ("c-1", "cpu", LineStatus::Accepted),
                ("c-2", "cpu", LineStatus::Rejected),
                ("c-3", "cpu", LineStatus::Warning),
                ("c-4", "cpu", LineStatus::Failed),
            ],
        );
        let contracts = |ledger: &Ledger, filter: &SubmissionFilter| -> Vec<String> {
            ledger
                .retry_candidates(filter)
                .unwrap()
                .into_iter()
                .map(|c| c.contract_id)
                .collect()
        };
        let all = SubmissionFilter::default();
        assert_eq!(contracts(&ledger, &all), ["c-2", "c-3", "c-4"]);
        let one = SubmissionFilter {
            contract_id: Some("c-3".into()),
            period: Some("2025-06".into()),
            ..SubmissionFilter::default()
        };
        let found = ledger.retry_candidates(&one).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (
                found[0].submission_id,
                found[0].period_kind,
                found[0].dimension.as_str()
            ),
            (ids[2], PeriodKind::Month, "cpu")
        );
        let other_month = SubmissionFilter {
            period: Some("2025-07".into()),
            ..SubmissionFilter::default()
        };
        assert!(contracts(&ledger, &other_month).is_empty());

        // Retried: a new line points at c-2's; it is no longer a candidate.
        let mut retry = planned("c-2", &["cpu"], LineStatus::Pending);
        retry.lines[0].retry_of = Some(found_line(&ledger, "c-2"));
        let run = ledger.begin_submission_run("resubmit", None, "{}").unwrap();
        ledger.insert_submissions(run, &[retry]).unwrap();
        assert_eq!(contracts(&ledger, &all), ["c-3", "c-4"]);
    }

    fn found_line(ledger: &Ledger, contract: &str) -> i64 {
        ledger
            .conn
            .query_row(
                "SELECT id FROM submission_lines WHERE contract_id = ?1",
                [contract],
                |r| r.get(0),
            )
            .unwrap()
    }

    #[test]
    fn held_dimensions_are_those_accepted_or_in_flight_and_an_import_holds_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = ledger(&dir);
        lines_that_are(
            &mut ledger,
            &[
                ("c-1", "cpu", LineStatus::Accepted),
                ("c-1", "mem", LineStatus::Rejected),
                ("c-1", "disk", LineStatus::Pending),
            ],
        );
        let held = ledger.held_dimensions(KEY, "c-1", june()).unwrap();
        assert_eq!(
            held,
            BTreeSet::from(["cpu".to_string(), "disk".to_string()])
        );
        assert!(ledger
            .held_dimensions(KEY, "c-2", june())
            .unwrap()
            .is_empty());
        let july = Period::parse(PeriodKind::Month, "2025-07").unwrap();
        assert!(ledger.held_dimensions(KEY, "c-1", july).unwrap().is_empty());

        // The predecessor's import of a contract-month holds every dimension.
        let state = PredecessorState {
            service_key: KEY.into(),
            last_processed_month: Some(Month::new(2025, 6).unwrap()),
            last_processed_hour: None,
            last_updated: None,
            successes: vec![(Month::new(2025, 6).unwrap(), "c-9".into())],
            errors: Vec::new(),
        };
        ledger
            .import_predecessor("state.json", &[state], "aws")
            .unwrap();
        assert_eq!(
            ledger.held_dimensions(KEY, "c-9", june()).unwrap(),
            BTreeSet::from(["*".to_string()])
        );
    }
}
