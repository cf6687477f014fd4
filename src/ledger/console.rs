//! The queries behind `meterbook serve`'s pages and `/metrics`: each is a read-only SELECT over
//! the ledger's views, kept here as text so that a page can show exactly the statement that gave
//! its numbers, with its parameters written in as literals (copyable into `meterbook sql`).

use anyhow::{Context, Result};
use rusqlite::types::Value;

use super::{Ledger, SqlValue, SubmissionFilter};

/// One SELECT and its parameters (`?1`, `?2`, ... in order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Query {
    pub sql: String,
    pub params: Vec<Param>,
    /// An aggregate (a month's usage, pending periods, drift, unattributed usage): its whole
    /// result is kept while the ledger is unchanged and paged from there, see
    /// [`Query::expensive`].
    pub expensive: bool,
}

/// A parameter's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Param {
    Text(String),
    Int(i64),
}

impl Query {
    /// A query that reads only indexed ranges or small tables.
    pub fn cheap(sql: &str, params: Vec<Param>) -> Query {
        Query {
            sql: sql.trim().to_string(),
            params,
            expensive: false,
        }
    }

    /// A query that aggregates: read whole once per state of the ledger.
    pub fn expensive(sql: &str, params: Vec<Param>) -> Query {
        Query {
            expensive: true,
            ..Query::cheap(sql, params)
        }
    }

    /// The same query limited to `limit` rows from `offset` on.
    pub fn page(&self, offset: u64, limit: u64) -> Query {
        let n = self.params.len();
        let mut params = self.params.clone();
        params.push(Param::Int(i64::try_from(limit).unwrap_or(i64::MAX)));
        params.push(Param::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
        Query {
            sql: format!("{}\nLIMIT ?{} OFFSET ?{}", self.sql, n + 1, n + 2),
            params,
            expensive: self.expensive,
        }
    }

    /// The statement with its parameters written in as SQL literals: what `meterbook sql` runs
    /// to give the same rows.
    pub fn display(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 32);
        let mut rest = self.sql.as_str();
        while let Some(at) = rest.find('?') {
            out.push_str(&rest[..at]);
            let digits: String = rest[at + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let param = digits
                .parse::<usize>()
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| self.params.get(i));
            match param {
                Some(Param::Text(t)) => {
                    out.push('\'');
                    out.push_str(&t.replace('\'', "''"));
                    out.push('\'');
                }
                Some(Param::Int(i)) => out.push_str(&i.to_string()),
                None => {
                    out.push('?');
                    out.push_str(&digits);
                }
            }
            rest = &rest[at + 1 + digits.len()..];
        }
        out.push_str(rest);
        out
    }
}

/// A query's result, held in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
}

impl Rows {
    /// The index of column `name`; a page asking for a column its query lacks is a bug.
    pub fn col(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("the query has no column {name}"))
    }

    /// The value of column `name` in row `i`.
    pub fn get(&self, i: usize, name: &str) -> &SqlValue {
        &self.rows[i][self.col(name)]
    }
}

impl Ledger {
    /// Runs a console query and collects its rows.
    pub fn console_rows(&self, q: &Query) -> Result<Rows> {
        let mut stmt = self
            .conn
            .prepare_cached(&q.sql)
            .with_context(|| format!("preparing {}", q.display()))?;
        let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let params = q.params.iter().map(|p| match p {
            Param::Text(t) => Value::Text(t.clone()),
            Param::Int(i) => Value::Integer(*i),
        });
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .with_context(|| format!("running {}", q.display()))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(
                (0..columns.len())
                    .map(|i| row.get_ref(i).map(SqlValue::from))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        Ok(Rows { columns, rows: out })
    }

    /// Runs `f` in one read transaction, so that every query in it sees the same state of the
    /// ledger however other processes write meanwhile. Returns SQLite's `data_version` for that
    /// state too: equal numbers on this connection mean nothing was committed in between.
    pub fn in_read_transaction<T>(&self, f: impl FnOnce(&Ledger, i64) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let result = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .map_err(anyhow::Error::from)
            .and_then(|version| f(self, version));
        // A read transaction has nothing to keep: ending it can only release the snapshot.
        let ended = self.conn.execute_batch("ROLLBACK");
        let value = result?;
        ended?;
        Ok(value)
    }
}

/// Text parameter.
pub fn text(s: impl Into<String>) -> Param {
    Param::Text(s.into())
}

// ---------------------------------------------------------------------------------------------
// Overview

/// Per service key: its files, the newest hour, and Omnistrate's completion marker.
pub const SERVICE_KEYS: &str = "
SELECT k.service_key,
       (SELECT COUNT(*) FROM usage_files f WHERE f.service_key = k.service_key) AS files,
       (SELECT MAX(hour) FROM usage_files f WHERE f.service_key = k.service_key) AS newest_hour,
       c.last_processed_to,
       c.last_updated_at,
       c.last_seen_at AS marker_seen_at
FROM (SELECT service_key FROM usage_files WHERE service_key IS NOT NULL
      UNION
      SELECT service_key FROM export_markers) k
LEFT JOIN export_completion c ON c.service_key = k.service_key
ORDER BY k.service_key";

/// The newest ingest run.
pub const LAST_INGEST: &str = "
SELECT id, source, scope, started_at, finished_at, files_seen, files_new, files_replaced,
       files_unchanged, files_too_large, records, problems
FROM ingest_runs
ORDER BY id DESC
LIMIT 1";

/// The newest read of Omnistrate's completion marker.
pub const LAST_MARKER_READ: &str = "
SELECT source, read_at, status, detail
FROM export_marker_reads
ORDER BY id DESC
LIMIT 1";

/// The newest submission run with its lines by outcome.
pub const LAST_SUBMISSION_RUN: &str = "
SELECT r.id, r.command, r.period_kind, r.started_at, r.finished_at, r.planned, r.sent,
       COUNT(l.id) AS lines,
       COUNT(CASE WHEN l.status IN ('accepted', 'duplicate') THEN 1 END) AS accepted,
       COUNT(CASE WHEN l.status IN ('rejected', 'failed') THEN 1 END) AS failed,
       COUNT(CASE WHEN l.status = 'warning' THEN 1 END) AS warnings,
       COUNT(CASE WHEN l.status IN ('pending', 'sending', 'transient') THEN 1 END) AS in_flight
FROM submission_runs r
LEFT JOIN submissions s ON s.run_id = r.id
LEFT JOIN submission_lines l ON l.submission_id = s.id
GROUP BY r.id
ORDER BY r.id DESC
LIMIT 1";

/// Lines and problems that need an operator, counted (drift, pending periods and unattributed
/// usage are counted from [`DRIFT`], [`PENDING`] and [`UNATTRIBUTED`], which their pages show).
pub const ATTENTION: &str = "
SELECT (SELECT COUNT(*) FROM submission_failures WHERE status IN ('failed', 'rejected')) AS failed_lines,
       (SELECT COUNT(*) FROM submission_failures WHERE status = 'warning') AS warning_lines,
       (SELECT COUNT(*) FROM submission_failures WHERE status = 'transient') AS unanswered_lines,
       (SELECT COUNT(*) FROM ingest_problems) AS record_problems,
       (SELECT COUNT(*) FROM source_problems) AS path_problems";

// ---------------------------------------------------------------------------------------------
// Usage

/// Months with usage files, newest first.
pub const MONTHS: &str = "
SELECT DISTINCT substr(hour, 1, 7) AS month
FROM usage_files
WHERE hour IS NOT NULL
ORDER BY month DESC";

/// A month's usage per contract and dimension (`monthly_usage_totals`: `monthly_usage`'s rows,
/// from the totals ingest keeps), beside what was sent for it:
/// the quantity Clazar accepted and the statuses of the lines not since retried.
pub const MONTH_USAGE: &str = "
WITH usage AS (
    SELECT service_key, contract_id, dimension, value, amount, records, files, hours
    FROM monthly_usage_totals
    WHERE month = ?1
),
sent AS (
    SELECT service_key, contract_id, dimension,
           SUM(CASE WHEN status IN ('accepted', 'duplicate') THEN quantity END) AS sent_quantity,
           group_concat(DISTINCT status) AS sent_status
    FROM submission_lines l
    WHERE substr(period, 1, 7) = ?1
      AND NOT EXISTS (SELECT 1 FROM submission_lines r WHERE r.retry_of = l.id)
    GROUP BY service_key, contract_id, dimension
)
SELECT COALESCE(u.service_key, s.service_key) AS service_key,
       COALESCE(u.contract_id, s.contract_id) AS contract_id,
       COALESCE(u.dimension, s.dimension) AS dimension,
       u.value, u.amount, u.records, u.files, u.hours,
       s.sent_quantity, s.sent_status
FROM usage u
FULL JOIN sent s
  ON s.service_key = u.service_key AND s.contract_id = u.contract_id AND s.dimension = u.dimension
ORDER BY 1, 2, 3";

/// Usage not yet planned for submission (`pending_periods`), complete ones first.
pub const PENDING: &str = "
SELECT service_key, month, contract_id, dimensions, value, last_processed_to, complete
FROM pending_periods
ORDER BY complete DESC, month, service_key, contract_id";

/// One contract's hours in a month (`hourly_usage`; the hour range reads only that month).
pub const CONTRACT_HOURS: &str = "
SELECT hour, dimension, value, amount, records, files
FROM hourly_usage
WHERE service_key = ?1 AND contract_id = ?2 AND hour >= ?3 AND hour < ?4
ORDER BY hour, dimension";

/// The files that hold one contract's records in a month (or, in a compacted month, their totals).
pub const CONTRACT_FILES: &str = "
SELECT f.key, f.hour, f.status, f.record_count, f.problem_count, f.version, f.ingested_at
FROM usage_files f
WHERE f.id IN (SELECT file_id FROM usage_records
               WHERE service_key = ?1 AND contract_id = ?2 AND hour >= ?3 AND hour < ?4
               UNION ALL
               SELECT file_id FROM compacted_usage
               WHERE service_key = ?1 AND contract_id = ?2 AND hour >= ?3 AND hour < ?4)
ORDER BY f.hour, f.key";

// ---------------------------------------------------------------------------------------------
// Submissions

/// Columns of the history list (`submission_history`, plus whether the line needs attention).
pub const HISTORY_COLUMNS: &str = "
SELECT h.line_id, h.submission_id, h.service_key, h.contract_id, h.period, h.dimension,
       h.quantity, h.status, h.attempts, h.http_status, h.code, h.detail, h.answered_at,
       EXISTS (SELECT 1 FROM submission_failures f WHERE f.line_id = h.line_id) AS needs_attention
FROM submission_history h";

/// Needing attention first, then newest period first.
pub const HISTORY_ORDER: &str =
    "ORDER BY needs_attention DESC, h.period DESC, h.service_key, h.contract_id, h.dimension, h.line_id DESC";

/// The history list, filtered; `attention_only` keeps the lines in `submission_failures`.
pub fn history(filter: &SubmissionFilter, attention_only: bool) -> Query {
    let (terms, values) = filter.sql();
    let mut terms: Vec<&str> = terms.split(" AND ").filter(|t| *t != "1 = 1").collect();
    if attention_only {
        terms.push("h.line_id IN (SELECT line_id FROM submission_failures)");
    }
    let filter = match terms.is_empty() {
        true => String::new(),
        false => format!("\nWHERE {}", terms.join(" AND ")),
    };
    Query::cheap(
        &format!("{HISTORY_COLUMNS}{filter}\n{HISTORY_ORDER}"),
        values.into_iter().map(Param::Text).collect(),
    )
}

/// One line with its request and Clazar's answer.
pub const LINE: &str = "
SELECT h.line_id, h.submission_id, h.run_id, h.service_key, h.contract_id, h.period_kind,
       h.period, h.dimension, h.exact_quantity, h.quantity, h.status, h.submission_status,
       h.attempts, h.http_status, h.result_status, h.code, h.message, h.errors, h.clazar_id,
       h.retry_of, h.created_at, h.sent_at, h.answered_at,
       (SELECT r.id FROM submission_lines r WHERE r.retry_of = h.line_id) AS retried_by,
       EXISTS (SELECT 1 FROM submission_failures f WHERE f.line_id = h.line_id) AS needs_attention,
       s.start_time, s.end_time, s.cloud, s.payload, s.response_body, s.error
FROM submission_history h
JOIN submissions s ON s.id = h.submission_id
WHERE h.line_id = ?1";

/// The lines of one submission.
pub const SUBMISSION_LINES: &str = "
SELECT line_id, dimension, quantity, status, detail
FROM submission_history
WHERE submission_id = ?1
ORDER BY line_id";

/// Delivered periods whose usage has changed since (`submission_drift`).
pub const DRIFT: &str = "
SELECT service_key, contract_id, period_kind, period, dimension, submission_id,
       submitted_value, current_value, difference
FROM submission_drift
ORDER BY period DESC, service_key, contract_id, dimension";

// ---------------------------------------------------------------------------------------------
// Problems

/// Problems with usage files, newest first (`usage_problems` without the paths).
pub const FILE_PROBLEMS: &str = "
SELECT id, key, service_key, hour, record_index, reason, record_kept, file_status, detected_at
FROM usage_problems
WHERE id IS NOT NULL
ORDER BY id DESC";

/// Paths of a source that could not be taken as usage files.
pub const PATH_PROBLEMS: &str = "
SELECT source, path, reason, first_seen_at, last_seen_at
FROM source_problems
ORDER BY last_seen_at DESC, path";

/// Records without a contract id (`unattributed_usage`).
pub const UNATTRIBUTED: &str = "
SELECT service_key, month, subscription_id, customer_id, dimension, value, records, files,
       first_hour, last_hour, example_key
FROM unattributed_usage
ORDER BY month DESC, service_key, records DESC";

// ---------------------------------------------------------------------------------------------
// Costs

/// The newest day with cost line items (UTC), for the default window.
pub const LAST_COST_DAY: &str =
    "SELECT substr(MAX(usage_start), 1, 10) AS day FROM cost_line_items";

/// Months' line items against their invoice totals (`cost_month_check`).
pub const MONTH_CHECKS: &str = "
SELECT account_id, month, line_items, rounding, invoice_total, difference, status,
       line_items_nanos, rounding_nanos, invoice_total_nanos
FROM cost_month_check
WHERE month >= ?1 AND month <= ?2
ORDER BY month DESC, account_id";

// ---------------------------------------------------------------------------------------------
// Metrics

/// Usage files by status, and the records they hold.
pub const FILES_BY_STATUS: &str = "
SELECT status, COUNT(*) AS files, COALESCE(SUM(record_count), 0) AS records
FROM usage_files
GROUP BY status";

/// Submission lines by status.
pub const LINES_BY_STATUS: &str = "
SELECT status, COUNT(*) AS lines
FROM submission_lines
GROUP BY status";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_writes_parameters_in_as_literals() {
        let q = Query::cheap(
            "SELECT * FROM t WHERE a = ?1 AND b = ?2 AND c = ?1 AND d = '?'",
            vec![text("it's"), Param::Int(7)],
        );
        assert_eq!(
            q.display(),
            "SELECT * FROM t WHERE a = 'it''s' AND b = 7 AND c = 'it''s' AND d = '?'"
        );
        assert_eq!(
            q.page(100, 50).display(),
            "SELECT * FROM t WHERE a = 'it''s' AND b = 7 AND c = 'it''s' AND d = '?'\nLIMIT 50 OFFSET 100"
        );
    }
}
