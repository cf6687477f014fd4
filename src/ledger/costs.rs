//! Cloud costs in the ledger: storing a billing file's rows (one transaction per file, replacing
//! the month's earlier version), the user-tag setting, and the queries the report is built from.

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use super::usage::{format_mtime, more_problems_reason};
use super::{KnownFile, Ledger};
use crate::costs::grants::Grant;
use crate::costs::parse::Parsed;
use crate::period::format_utc;
use crate::source::parse::PROBLEMS_KEPT_PER_FILE;

/// One version of a billing file, as listed.
#[derive(Debug, Clone)]
pub struct CostFile {
    pub key: String,
    pub source: String,
    pub account_id: String,
    /// `YYYY-MM`
    pub month: String,
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// What storing a billing file did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredCostFile {
    /// The month was already known: its earlier line items were replaced.
    pub replaced: bool,
    /// The file could not be read; the month keeps what it had.
    pub rejected: bool,
    pub line_items: u64,
    pub totals: u64,
    pub problems: u64,
}

impl StoredCostFile {
    /// A file recorded as rejected: one problem, nothing stored.
    pub fn rejected() -> StoredCostFile {
        StoredCostFile {
            rejected: true,
            problems: 1,
            ..StoredCostFile::default()
        }
    }
}

/// Spend in one UTC hour for one user and product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourlyCost {
    pub hour: DateTime<Utc>,
    pub user: Option<String>,
    pub product: Option<String>,
    pub nanos: i64,
}

/// A month's line items against its invoice total (see the `cost_month_check` view).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MonthCheck {
    pub account_id: String,
    pub month: String,
    pub line_items_nanos: i64,
    pub rounding_nanos: i64,
    /// `None` while the file has no InvoiceTotal row.
    pub invoice_total_nanos: Option<i64>,
}

impl MonthCheck {
    /// Invoice total minus (line items + rounding), when there is an invoice total.
    pub fn difference_nanos(&self) -> Option<i64> {
        self.invoice_total_nanos
            .map(|t| t - self.line_items_nanos - self.rounding_nanos)
    }
}

const USER_TAGS: &str = "user_tags";

/// The line items of a window in `usage_start` order, read by [`Ledger::hourly_costs`].
pub const HOURLY_COSTS_SQL: &str = "SELECT usage_start, user, product_name, blended_nanos
FROM cost_line_items INDEXED BY cost_line_items_by_start
WHERE usage_start >= ?1 AND usage_start < ?2
ORDER BY usage_start";

/// Every grant, by user and start ([`Ledger::cost_grants`]).
pub const COST_GRANTS_SQL: &str = "SELECT user, amount_nanos, starts_on, ends_on, note, line
FROM cost_grants
ORDER BY user, starts_on, id";

/// A user's spend over `[?2, ?3)` (open-ended when `?3` is NULL) ([`Ledger::user_spend`]).
pub const USER_SPEND_SQL: &str = "SELECT COALESCE(SUM(blended_nanos), 0) FROM cost_line_items
WHERE user = ?1 AND usage_start >= ?2 AND (?3 IS NULL OR usage_start < ?3)";

impl Ledger {
    /// What the ledger holds for an account's month: the key and the version it was read from.
    pub fn known_cost_file(
        &self,
        account_id: &str,
        month: &str,
    ) -> Result<Option<(String, KnownFile)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT key, etag, size, last_modified FROM cost_files
                 WHERE account_id = ?1 AND month = ?2",
            )?
            .query_row([account_id, month], |r| {
                Ok((
                    r.get(0)?,
                    KnownFile {
                        fingerprint: None,
                        etag: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        last_modified: r.get(3)?,
                    },
                ))
            })
            .optional()?)
    }

    /// Records the user-tag list. When it differs from the stored one, every stored line item's
    /// user is resolved again from its tags; returns how many line items were updated.
    pub fn set_cost_user_tags(&mut self, tags: &[String]) -> Result<u64> {
        let wanted = tags.join(",");
        let tx = self.conn.transaction()?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT value FROM cost_settings WHERE name = ?1",
                [USER_TAGS],
                |r| r.get(0),
            )
            .optional()?;
        if stored.as_deref() == Some(wanted.as_str()) {
            return Ok(0);
        }
        tx.execute(
            "INSERT INTO cost_settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [USER_TAGS, &wanted],
        )?;
        let updated = match stored {
            None => 0,
            Some(_) => {
                // The first tag present in the JSON object wins; tags hold only non-empty values.
                let picks: Vec<String> = (1..=tags.len())
                    .map(|i| format!("json_extract(tags, ?{i})"))
                    .collect();
                let sql = format!(
                    "UPDATE cost_line_items SET user = COALESCE({}, NULL)",
                    picks.join(", ")
                );
                let paths: Vec<String> = tags.iter().map(|t| format!("$.\"{t}\"")).collect();
                tx.execute(&sql, rusqlite::params_from_iter(paths.iter()))? as u64
            }
        };
        tx.commit()?;
        Ok(updated)
    }

    /// Stores a billing file's rows in one transaction, replacing the month's earlier line items.
    /// An `Err` from `rows` (a damaged archive) rolls the file back, and it is recorded as
    /// rejected instead: the month keeps what it had.
    pub fn store_cost_file(
        &mut self,
        file: &CostFile,
        rows: impl Iterator<Item = Result<Parsed, String>>,
    ) -> Result<StoredCostFile> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let (file_id, replaced) = upsert_file(&tx, file, &now)?;
        let mut stored = StoredCostFile {
            replaced,
            ..StoredCostFile::default()
        };
        {
            let mut item = tx.prepare_cached(
                "INSERT INTO cost_line_items (file_id, line, record_type, invoice_id,
                     linked_account_id, product_name, usage_type, operation, availability_zone,
                     item_description, usage_start, usage_end, usage_quantity, blended_nanos,
                     unblended_nanos, resource_id, user, tags)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            let mut total = tx.prepare_cached(
                "INSERT INTO cost_totals (file_id, line, record_type, invoice_id, linked_account_id,
                     item_description, blended_nanos, unblended_nanos)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut problem = tx.prepare_cached(
                "INSERT INTO cost_ingest_problems (file_id, line, reason, detected_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for row in rows {
                match row {
                    Ok(Parsed::Item(i)) => {
                        item.execute(params![
                            file_id,
                            i.line,
                            i.record_type,
                            i.invoice_id,
                            i.linked_account_id,
                            i.product_name,
                            i.usage_type,
                            i.operation,
                            i.availability_zone,
                            i.item_description,
                            format_naive(i.usage_start),
                            i.usage_end.map(format_naive),
                            i.usage_quantity,
                            i.blended_nanos,
                            i.unblended_nanos,
                            i.resource_id,
                            i.user,
                            i.tags
                        ])?;
                        stored.line_items += 1;
                    }
                    Ok(Parsed::Total(t)) => {
                        total.execute(params![
                            file_id,
                            t.line,
                            t.record_type,
                            t.invoice_id,
                            t.linked_account_id,
                            t.item_description,
                            t.blended_nanos,
                            t.unblended_nanos
                        ])?;
                        stored.totals += 1;
                    }
                    Ok(Parsed::Problem(p)) => {
                        if stored.problems < PROBLEMS_KEPT_PER_FILE as u64 {
                            problem.execute(params![file_id, p.line, p.reason, now])?;
                        }
                        stored.problems += 1;
                    }
                    Err(reason) => {
                        drop((item, total, problem));
                        tx.rollback()?;
                        self.reject_cost_file(file, &reason)?;
                        return Ok(StoredCostFile::rejected());
                    }
                }
            }
        }
        if let Some(more) = stored.problems.checked_sub(PROBLEMS_KEPT_PER_FILE as u64) {
            if more > 0 {
                tx.execute(
                    "INSERT INTO cost_ingest_problems (file_id, line, reason, detected_at)
                     VALUES (?1, NULL, ?2, ?3)",
                    params![file_id, more_problems_reason(more), now],
                )?;
            }
        }
        let status = if stored.problems == 0 {
            "ok"
        } else {
            "partial"
        };
        tx.execute(
            "UPDATE cost_files SET line_items = ?2, total_rows = ?3, problem_count = ?4, status = ?5
             WHERE id = ?1",
            params![file_id, stored.line_items, stored.totals, stored.problems, status],
        )?;
        tx.commit()
            .with_context(|| format!("committing {}", file.key))?;
        Ok(stored)
    }

    /// Records a billing file that could not be read at all, with the reason. The month keeps
    /// the line items of its previous version, if any; the file is not read again until it changes.
    pub fn reject_cost_file(&mut self, file: &CostFile, reason: &str) -> Result<()> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let (file_id, _) = record_file(&tx, file, &now)?;
        tx.execute(
            "UPDATE cost_files SET problem_count = 1, status = 'rejected' WHERE id = ?1",
            [file_id],
        )?;
        tx.execute(
            "DELETE FROM cost_ingest_problems WHERE file_id = ?1",
            [file_id],
        )?;
        tx.execute(
            "INSERT INTO cost_ingest_problems (file_id, line, reason, detected_at)
             VALUES (?1, NULL, ?2, ?3)",
            params![file_id, reason, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Spend per UTC hour, user and product for line items starting in `[from, to)`. The line
    /// items are read in `usage_start` order straight from the index that covers them and summed
    /// an hour at a time here: a GROUP BY on the hour would sort every line item of the window.
    pub fn hourly_costs(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<HourlyCost>> {
        let mut stmt = self.conn.prepare(HOURLY_COSTS_SQL)?;
        let mut rows = stmt.query(params![format_utc(from), format_utc(to)])?;
        let mut out = Vec::new();
        let mut names = Names::default();
        let mut hour: Option<String> = None;
        let mut sums: HashMap<(u32, u32), i64> = HashMap::new();
        while let Some(r) = rows.next()? {
            let start = r.get_ref(0)?.as_str()?;
            let this_hour = start
                .get(..13)
                .with_context(|| format!("a stored usage_start is not a time: {start}"))?;
            if hour.as_deref() != Some(this_hour) {
                if let Some(done) = hour.replace(this_hour.to_string()) {
                    flush_hour(&done, &mut sums, &names, &mut out)?;
                }
            }
            let user = names.id(r.get_ref(1)?.as_str_or_null()?);
            let product = names.id(r.get_ref(2)?.as_str_or_null()?);
            *sums.entry((user, product)).or_default() += r.get::<_, i64>(3)?;
        }
        if let Some(done) = hour {
            flush_hour(&done, &mut sums, &names, &mut out)?;
        }
        Ok(out)
    }

    /// Replaces every grant with `grants`, loaded from `source`; returns how many were replaced.
    pub fn replace_cost_grants(&mut self, grants: &[Grant], source: &str) -> Result<u64> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let replaced = tx.execute("DELETE FROM cost_grants", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO cost_grants (user, amount_nanos, starts_on, ends_on, note, source,
                     line, loaded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for g in grants {
                insert.execute(params![
                    g.user,
                    g.amount_nanos,
                    g.starts_on.to_string(),
                    g.ends_on.map(|d| d.to_string()),
                    g.note,
                    source,
                    g.line,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(replaced as u64)
    }

    /// Every grant, by user and start.
    pub fn cost_grants(&self) -> Result<Vec<Grant>> {
        let mut stmt = self.conn.prepare(COST_GRANTS_SQL)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let date = |s: &str| {
            s.parse()
                .with_context(|| format!("a stored grant date is not a date: {s}"))
        };
        let mut grants = Vec::new();
        for row in rows {
            let (user, amount_nanos, starts_on, ends_on, note, line) = row?;
            grants.push(Grant {
                user,
                amount_nanos,
                starts_on: date(&starts_on)?,
                ends_on: ends_on.as_deref().map(date).transpose()?,
                note,
                line: line as u64,
            });
        }
        Ok(grants)
    }

    /// A user's spend over line items starting in `[from, to)` (`to` open-ended when `None`).
    pub fn user_spend(
        &self,
        user: &str,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
    ) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(USER_SPEND_SQL)?
            .query_row(params![user, format_utc(from), to.map(format_utc)], |r| {
                r.get(0)
            })?)
    }

    /// Does any line item name `user`?
    pub fn user_has_line_items(&self, user: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM cost_line_items WHERE user = ?1)",
            [user],
            |r| r.get(0),
        )?)
    }

    /// Every account's check of `month` (YYYY-MM) against its invoice total.
    pub fn cost_month_checks(&self, month: &str) -> Result<Vec<MonthCheck>> {
        let mut stmt = self.conn.prepare(
            "SELECT account_id, month, line_items_nanos, rounding_nanos, invoice_total_nanos
             FROM cost_month_check WHERE month = ?1 ORDER BY account_id",
        )?;
        let rows = stmt.query_map([month], |r| {
            Ok(MonthCheck {
                account_id: r.get(0)?,
                month: r.get(1)?,
                line_items_nanos: r.get(2)?,
                rounding_nanos: r.get(3)?,
                invoice_total_nanos: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// Finds or creates the month's file row and clears the rows of its earlier version.
fn upsert_file(tx: &Transaction, f: &CostFile, now: &str) -> Result<(i64, bool)> {
    let (id, existed) = record_file(tx, f, now)?;
    if existed {
        for table in ["cost_line_items", "cost_totals", "cost_ingest_problems"] {
            tx.execute(&format!("DELETE FROM {table} WHERE file_id = ?1"), [id])?;
        }
        tx.execute(
            "UPDATE cost_files SET version = version + 1 WHERE id = ?1",
            [id],
        )?;
    }
    Ok((id, existed))
}

/// Points the month's file row at this version of the file (creating the row if the month is
/// new); returns its id and whether it existed.
fn record_file(tx: &Transaction, f: &CostFile, now: &str) -> Result<(i64, bool)> {
    let existing: Option<i64> = tx
        .query_row(
            "SELECT id FROM cost_files WHERE account_id = ?1 AND month = ?2",
            [&f.account_id, &f.month],
            |r| r.get(0),
        )
        .optional()?;
    tx.execute(
        "INSERT INTO cost_files (account_id, month, key, source, etag, size, last_modified,
             ingested_at, line_items, total_rows, problem_count, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0, 0, 0, 'ok')
         ON CONFLICT (account_id, month) DO UPDATE SET key = excluded.key,
             source = excluded.source, etag = excluded.etag, size = excluded.size,
             last_modified = excluded.last_modified, ingested_at = excluded.ingested_at",
        params![
            f.account_id,
            f.month,
            f.key,
            f.source,
            f.etag,
            f.size,
            f.last_modified.map(format_mtime),
            now
        ],
    )?;
    Ok(match existing {
        Some(id) => (id, true),
        None => (tx.last_insert_rowid(), false),
    })
}

/// Users and products seen while summing, as small numbers (0 for none), so that the sums per
/// hour are keyed without allocating a string per line item.
#[derive(Default)]
struct Names {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: Option<&str>) -> u32 {
        let Some(name) = name else { return 0 };
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        id
    }

    fn name(&self, id: u32) -> Option<String> {
        id.checked_sub(1).map(|i| self.names[i as usize].clone())
    }
}

/// Moves one hour's sums (`YYYY-MM-DDTHH`) into `out`, in user and product order.
fn flush_hour(
    hour: &str,
    sums: &mut HashMap<(u32, u32), i64>,
    names: &Names,
    out: &mut Vec<HourlyCost>,
) -> Result<()> {
    let at = NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .with_context(|| format!("a stored usage_start is not a time: {hour}"))?
        .and_utc();
    let mut hour_sums: Vec<((u32, u32), i64)> = sums.drain().collect();
    hour_sums.sort_unstable();
    for ((user, product), nanos) in hour_sums {
        out.push(HourlyCost {
            hour: at,
            user: names.name(user),
            product: names.name(product),
            nanos,
        });
    }
    Ok(())
}

fn format_naive(t: NaiveDateTime) -> String {
    format_utc(t.and_utc())
}
