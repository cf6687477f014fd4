//! Recording the predecessor's state (see `crate::predecessor`): its successes as imported
//! submission lines, its failures as failed ones, and how far it had processed. Importing the same
//! state twice records nothing new.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{Ledger, SubmissionStatus};
use crate::period::{format_utc, parse_timestamp, Month, Period};
use crate::predecessor::{PredecessorError, PredecessorState};

/// What an import recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportCounts {
    pub imported: u64,
    pub failed: u64,
    /// Already recorded (by an earlier import, or sent by meterbook itself).
    pub already: u64,
}

impl Ledger {
    /// Records one state file's content in one transaction.
    pub fn import_predecessor(
        &mut self,
        source: &str,
        states: &[PredecessorState],
        cloud: &str,
    ) -> Result<ImportCounts> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO submission_runs (command, settings, started_at, finished_at)
             VALUES ('import-state', ?1, ?2, ?2)",
            params![serde_json::json!({ "source": source }).to_string(), now],
        )?;
        let run_id = tx.last_insert_rowid();
        let mut counts = ImportCounts::default();
        for state in states {
            let (mut ok, mut failed) = (0, 0);
            for (month, contract) in &state.successes {
                if covered(&tx, &state.service_key, contract, *month)? {
                    counts.already += 1;
                } else {
                    record_success(&tx, run_id, state, contract, *month, cloud, &now)?;
                    ok += 1;
                }
            }
            for e in &state.errors {
                if covered(&tx, &state.service_key, &e.contract_id, e.month)? {
                    counts.already += 1;
                } else {
                    record_failure(&tx, run_id, &state.service_key, e, cloud, &now)?;
                    failed += 1;
                }
            }
            counts.imported += ok;
            counts.failed += failed;
            let (kind, last, through) =
                match (state.last_processed_month, state.last_processed_hour) {
                    (Some(m), _) => ("month", m.to_string(), m.end()),
                    (None, Some(h)) => ("hour", format_utc(h), h + chrono::Duration::hours(1)),
                    (None, None) => continue,
                };
            tx.execute(
                "INSERT INTO predecessor_imports (source, service_key, period_kind, last_processed,
                     processed_through, last_updated, successes, errors, imported_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    source,
                    state.service_key,
                    kind,
                    last,
                    format_utc(through),
                    state.last_updated.map(format_utc),
                    ok,
                    failed,
                    now
                ],
            )?;
        }
        tx.commit().context("committing the imported state")?;
        Ok(counts)
    }

    /// Up to when the predecessor is responsible for `service_key` (periods ending at or before
    /// this are not planned); `None` when nothing was imported for it.
    pub fn predecessor_processed_through(
        &self,
        service_key: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let through: Option<String> = self
            .conn
            .query_row(
                "SELECT processed_through FROM predecessor_coverage WHERE service_key = ?1",
                [service_key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(through.as_deref().and_then(parse_timestamp))
    }

    /// Service keys with usage files but no history: nothing submitted (in any state) and nothing
    /// imported from the predecessor. The keys are walked through the `(service_key, hour)` index
    /// one at a time, so the cost grows with the number of keys, not of files.
    pub fn service_keys_without_history(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare(
            "WITH RECURSIVE keys (k) AS (
                 SELECT MIN(service_key) FROM usage_files
                 UNION ALL
                 SELECT (SELECT MIN(service_key) FROM usage_files WHERE service_key > k)
                 FROM keys WHERE k IS NOT NULL)
             SELECT k FROM keys
             WHERE k IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM submissions s WHERE s.service_key = k)
               AND NOT EXISTS (SELECT 1 FROM predecessor_imports p WHERE p.service_key = k)",
        )?;
        let keys = stmt.query_map([], |r| r.get(0))?;
        Ok(keys.collect::<rusqlite::Result<_>>()?)
    }
}

/// Is there already a submission for this contract and month (imported, sent, or failed)?
fn covered(tx: &Transaction, service_key: &str, contract: &str, month: Month) -> Result<bool> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM submissions
             WHERE service_key = ?1 AND contract_id = ?2 AND period_kind = 'month' AND period = ?3
             LIMIT 1",
            params![service_key, contract, month.to_string()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

/// A submission row the import writes.
struct Imported<'a> {
    service_key: &'a str,
    contract: &'a str,
    month: Month,
    cloud: &'a str,
    status: SubmissionStatus,
    payload: Option<String>,
    error: String,
}

fn insert_submission(tx: &Transaction, run_id: i64, row: &Imported, now: &str) -> Result<i64> {
    let (start, end) = Period::month(row.month).window();
    tx.execute(
        "INSERT INTO submissions (run_id, service_key, contract_id, period_kind, period, start_time,
             end_time, cloud, payload, status, error, created_at, answered_at)
         VALUES (?1, ?2, ?3, 'month', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        params![
            run_id,
            row.service_key,
            row.contract,
            row.month.to_string(),
            start,
            end,
            row.cloud,
            row.payload,
            row.status,
            row.error,
            now
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

fn record_success(
    tx: &Transaction,
    run_id: i64,
    state: &PredecessorState,
    contract: &str,
    month: Month,
    cloud: &str,
    now: &str,
) -> Result<()> {
    let row = Imported {
        service_key: &state.service_key,
        contract,
        month,
        cloud,
        status: SubmissionStatus::Imported,
        payload: None,
        error: "sent by the predecessor (imported from its state file)".into(),
    };
    let id = insert_submission(tx, run_id, &row, now)?;
    // '*': every dimension of this contract and month was the predecessor's.
    tx.execute(
        "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind, period,
             dimension, status, message, updated_at)
         VALUES (?1, ?2, ?3, 'month', ?4, '*', 'imported', 'sent by the predecessor', ?5)",
        params![id, state.service_key, contract, month.to_string(), now],
    )?;
    Ok(())
}

fn record_failure(
    tx: &Transaction,
    run_id: i64,
    service_key: &str,
    e: &PredecessorError,
    cloud: &str,
    now: &str,
) -> Result<()> {
    let words = [e.code.as_deref(), e.message.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(": ");
    let error = format!(
        "failed in the predecessor after {} retries{}",
        e.retry_count.unwrap_or(0),
        if words.is_empty() {
            String::new()
        } else {
            format!(" ({words})")
        }
    );
    let row = Imported {
        service_key,
        contract: &e.contract_id,
        month: e.month,
        cloud,
        status: SubmissionStatus::Failed,
        payload: e.payload.as_ref().map(|p| p.to_string()),
        error,
    };
    let id = insert_submission(tx, run_id, &row, now)?;
    // One failed line per dimension the predecessor tried to send, with its quantity.
    let records: Vec<&serde_json::Value> = e
        .payload
        .as_ref()
        .and_then(|p| p.get("request"))
        .and_then(|r| r.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut lines: Vec<(String, Option<i64>)> = records
        .iter()
        .filter_map(|r| {
            let dimension = r.get("dimension")?.as_str()?.to_string();
            let quantity = r.get("quantity").and_then(|q| match q {
                serde_json::Value::String(s) => s.parse().ok(),
                other => other.as_i64(),
            });
            Some((dimension, quantity))
        })
        .collect();
    if lines.is_empty() {
        lines.push(("*".to_string(), None));
    }
    for (dimension, quantity) in lines {
        tx.execute(
            "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind,
                 period, dimension, quantity, status, code, message, errors, updated_at)
             VALUES (?1, ?2, ?3, 'month', ?4, ?5, ?6, 'failed', ?7, ?8, ?9, ?10)",
            params![
                id,
                service_key,
                e.contract_id,
                e.month.to_string(),
                dimension,
                quantity,
                e.code,
                e.message,
                e.errors.to_string(),
                now
            ],
        )?;
    }
    Ok(())
}
