//! Compacting months: the records of a month that is fully submitted and older than the drift
//! window give way to each file's own totals (`compacted_usage`, per file, contract, dimension,
//! subscription and customer), so that the ledger stops growing with every month of records.
//! The usage views read both (migration V10) and give the same numbers, which is checked before
//! the records go (`amount`, a sum of floating-point products that is never sent, to its last
//! digits): a month whose totals would not give the same numbers is left as it is.
//! A file of a compacted month that ingest stores again (a rewrite) is kept as totals too, in
//! place of its earlier totals, which become its replaced version's history.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use super::Ledger;
use crate::period::{format_utc, Month};

/// What compacting did to one service key's month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonthCompaction {
    /// Its records are now totals.
    Compacted { files: u64, records: u64 },
    /// Left as it is, and why.
    Kept(String),
}

/// Where a month's records sit: `hour >= start AND hour < end`.
fn range(month: Month) -> (String, String) {
    (format_utc(month.start()), format_utc(month.next().start()))
}

/// The views whose rows a month's compaction must leave as they were.
const VIEWS: [&str; 3] = ["hourly_usage", "monthly_usage", "unattributed_usage"];

/// Rows of `view` (of one service key's month) that differ between now and `temp.before_view`:
/// every column exactly, except `amount`, a sum of floating-point products (never sent anywhere),
/// which may differ in its last digits (relative 1e-12) once summed per file first.
fn differing_rows(view: &str) -> String {
    let now = format!("SELECT * FROM {view} WHERE service_key = ?1 AND month = ?2");
    if view == "unattributed_usage" {
        return format!(
            "SELECT COUNT(*) FROM (SELECT * FROM ({now} EXCEPT SELECT * FROM temp.before_{view})
                                   UNION ALL
                                   SELECT * FROM (SELECT * FROM temp.before_{view} EXCEPT {now}))"
        );
    }
    let (period, hours) = match view {
        "hourly_usage" => ("hour", ""),
        _ => ("month", " OR a.hours IS NOT b.hours"),
    };
    format!(
        "SELECT COUNT(*) FROM ({now}) a
         FULL OUTER JOIN temp.before_{view} b
           ON a.{period} = b.{period} AND a.contract_id = b.contract_id AND a.dimension = b.dimension
         WHERE a.value IS NOT b.value OR a.records IS NOT b.records OR a.files IS NOT b.files{hours}
            OR NOT (a.amount IS b.amount
                    OR abs(a.amount - b.amount) <= 1e-12 * max(abs(a.amount), abs(b.amount)))"
    )
}

impl Ledger {
    /// Compacts every service key's month before `before` that is at least `keep_months` months
    /// before `now`'s and fully submitted (every contract with usage has a submission, none in
    /// flight, none failed); returns what became of each month considered, oldest first.
    pub fn compact(
        &mut self,
        before: Month,
        keep_months: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Month, MonthCompaction)>> {
        let mut newest_allowed = Month::of(now);
        for _ in 0..keep_months {
            newest_allowed = newest_allowed.prev();
        }
        let candidates: Vec<(String, String)> = self
            .conn
            .prepare(
                "SELECT DISTINCT service_key, substr(hour, 1, 7) FROM usage_files
                 WHERE hour IS NOT NULL AND service_key IS NOT NULL AND hour < ?1
                   AND record_count > 0
                   AND substr(hour, 1, 7) NOT IN (
                       SELECT month FROM compacted_months m WHERE m.service_key = usage_files.service_key)
                 ORDER BY 2, 1",
            )?
            .query_map([format_utc(before.start())], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut done = Vec::new();
        for (service_key, month) in candidates {
            let month: Month = month.parse().map_err(|e: String| {
                anyhow::anyhow!("the month of {service_key} usage '{month}': {e}")
            })?;
            let outcome = if month > newest_allowed {
                MonthCompaction::Kept(format!(
                    "within the drift window (the last {keep_months} months are kept as records)"
                ))
            } else {
                compact_month(
                    self.conn.transaction()?,
                    &service_key,
                    month,
                    &format_utc(now),
                )?
            };
            done.push((service_key, month, outcome));
        }
        Ok(done)
    }

    /// Rewrites the ledger file without free pages (SQLite's VACUUM).
    pub fn vacuum(&self) -> Result<()> {
        self.conn
            .execute_batch("VACUUM")
            .with_context(|| format!("vacuuming ledger {}", self.path.display()))
    }
}

/// Why a month cannot be compacted yet, if it cannot.
fn not_fully_submitted(
    tx: &Transaction,
    service_key: &str,
    month: Month,
) -> Result<Option<String>> {
    let (start, end) = range(month);
    let m = month.to_string();
    let unsubmitted: i64 = tx.query_row(
        "SELECT COUNT(*) FROM pending_periods WHERE service_key = ?1 AND month = ?2",
        params![service_key, m],
        |r| r.get(0),
    )?;
    if unsubmitted > 0 {
        return Ok(Some(format!(
            "{unsubmitted} contracts with usage have no submission for it yet"
        )));
    }
    let open: i64 = tx.query_row(
        "SELECT COUNT(*) FROM submission_lines
         WHERE service_key = ?1 AND status IN ('pending', 'sending', 'transient')
           AND ((period_kind = 'month' AND period = ?2) OR (period_kind = 'hour' AND period >= ?3 AND period < ?4))",
        params![service_key, m, start, end],
        |r| r.get(0),
    )?;
    if open > 0 {
        return Ok(Some(format!("{open} submission lines are still in flight")));
    }
    let failed: i64 = tx.query_row(
        "SELECT COUNT(*) FROM submission_failures
         WHERE service_key = ?1 AND substr(period, 1, 7) = ?2",
        params![service_key, m],
        |r| r.get(0),
    )?;
    if failed > 0 {
        return Ok(Some(format!(
            "{failed} submission lines need an operator (see submission_failures)"
        )));
    }
    Ok(None)
}

/// Compacts one service key's month and commits `tx`, or says why not (and rolls it back).
fn compact_month(
    sp: Transaction,
    service_key: &str,
    month: Month,
    now: &str,
) -> Result<MonthCompaction> {
    if let Some(reason) = not_fully_submitted(&sp, service_key, month)? {
        return Ok(MonthCompaction::Kept(reason));
    }
    let (start, end) = range(month);
    let m = month.to_string();
    for view in VIEWS {
        sp.execute(
            &format!(
                "CREATE TEMP TABLE before_{view} AS
                 SELECT * FROM {view} WHERE service_key = ?1 AND month = ?2"
            ),
            params![service_key, m],
        )?;
    }
    let (files, records): (u64, u64) = sp.query_row(
        "SELECT COUNT(DISTINCT file_id), COUNT(*) FROM usage_records
         WHERE service_key = ?1 AND hour >= ?2 AND hour < ?3",
        params![service_key, start, end],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    sp.execute(
        "INSERT INTO compacted_usage (file_id, service_key, hour, contract_id, dimension,
             subscription_id, customer_id, records, value, amount)
         SELECT file_id, service_key, hour, contract_id, dimension, subscription_id, customer_id,
                COUNT(*), SUM(value), SUM(value * price_per_unit)
         FROM usage_records WHERE service_key = ?1 AND hour >= ?2 AND hour < ?3
         GROUP BY hour, file_id, contract_id, dimension, subscription_id, customer_id",
        params![service_key, start, end],
    )?;
    sp.execute(
        "DELETE FROM usage_records WHERE service_key = ?1 AND hour >= ?2 AND hour < ?3",
        params![service_key, start, end],
    )?;
    let mut differing = 0i64;
    for view in VIEWS {
        differing += sp.query_row(&differing_rows(view), params![service_key, m], |r| {
            r.get::<_, i64>(0)
        })?;
        sp.execute(&format!("DROP TABLE temp.before_{view}"), [])?;
    }
    if differing > 0 {
        drop(sp); // rolls the month back
        return Ok(MonthCompaction::Kept(format!(
            "its totals would not give the same numbers in {differing} rows of the usage views \
             (sums of non-integer values depend on their order); its records are kept"
        )));
    }
    sp.execute(
        "INSERT INTO compacted_months (service_key, month, files, records, compacted_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![service_key, m, files, records, now],
    )?;
    sp.commit()?;
    Ok(MonthCompaction::Compacted { files, records })
}

/// Keeps a file of a compacted month as totals: called once its records are stored.
pub(super) fn keep_as_totals_if_compacted(
    tx: &Transaction,
    file_id: i64,
    service_key: &str,
    hour: &str,
) -> Result<()> {
    let compacted: Option<i64> = tx
        .prepare_cached(
            "SELECT 1 FROM compacted_months WHERE service_key = ?1 AND month = substr(?2, 1, 7)",
        )?
        .query_row(params![service_key, hour], |r| r.get(0))
        .optional()?;
    if compacted.is_none() {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO compacted_usage (file_id, service_key, hour, contract_id, dimension,
             subscription_id, customer_id, records, value, amount)
         SELECT file_id, service_key, hour, contract_id, dimension, subscription_id, customer_id,
                COUNT(*), SUM(value), SUM(value * price_per_unit)
         FROM usage_records WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1
         GROUP BY contract_id, dimension, subscription_id, customer_id",
    )?
    .execute(params![file_id, service_key, hour])?;
    tx.prepare_cached(
        "DELETE FROM usage_records WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1",
    )?
    .execute(params![file_id, service_key, hour])?;
    Ok(())
}

/// Moves a replaced file's totals (of a compacted month) into its version's history.
pub(super) fn keep_replaced_totals(tx: &Transaction, file_id: i64, version_id: i64) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO usage_file_version_totals (version_id, contract_id, dimension, records, value, amount)
         SELECT ?2, contract_id, dimension, SUM(records), SUM(value), SUM(amount)
         FROM compacted_usage WHERE file_id = ?1
         GROUP BY contract_id, dimension",
    )?
    .execute(params![file_id, version_id])?;
    tx.prepare_cached("DELETE FROM compacted_usage WHERE file_id = ?1")?
        .execute([file_id])?;
    Ok(())
}
