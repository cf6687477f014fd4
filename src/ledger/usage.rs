//! Usage files and records: storing a batch of file versions, replacing rewritten files while
//! keeping their history, and the lookups that let ingest skip what it already has. Storing
//! keeps every hour's total per contract and dimension at most [`MAX_VALUE`] (see
//! [`HourTotals`]), so that no sum the views or `submit` take can overflow.

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
// Looked up per record: a fast hash, seeded per process (keys come from usage files).
use foldhash::{HashMap as FastMap, HashSet as FastSet};
use rusqlite::{params, OptionalExtension, Transaction};

use super::month_totals::{self, MonthTotals};
use super::Ledger;
use crate::period::{format_utc, parse_timestamp, Month};
use crate::source::parse::{Problem, UsageRecord, MAX_VALUE, PROBLEMS_KEPT_PER_FILE};
use crate::source::PathProblems;

/// One version of one usage file, as read and parsed, ready to be stored.
#[derive(Debug, Clone)]
pub struct FileVersion {
    pub key: String,
    pub source: String,
    /// `SERVICE:ENV:PLAN`, when the path says.
    pub service_key: Option<String>,
    /// The usage hour from the path; `None` when it does not parse (then there are no records).
    pub hour: Option<DateTime<Utc>>,
    /// `blake3:<hex>` of the body.
    pub fingerprint: String,
    /// `sha256:<hex>` of the body, computed only when the ledger holds this key under a
    /// fingerprint from before BLAKE3 (see [`KnownFile::has_legacy_fingerprint`]).
    pub legacy_fingerprint: Option<String>,
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    pub records: Vec<UsageRecord>,
    /// The first problems found (at most [`PROBLEMS_KEPT_PER_FILE`]).
    pub problems: Vec<Problem>,
    /// Problems found beyond those kept.
    pub more_problems: u64,
}

/// What storing a file version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    New,
    /// The key was known with other content: the old records were replaced and kept as history.
    Replaced,
    /// Same content as stored; only its metadata (ETag, modification time) was refreshed.
    Unchanged,
}

/// What was stored of one file version.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub outcome: StoreOutcome,
    pub records: u64,
    /// Problems of the file, counted whether kept as rows or not.
    pub problems: u64,
    /// Records stored without a contract id.
    pub unattributed: u64,
    /// Records refused because their hour's total would pass [`MAX_VALUE`] (they are problems).
    pub refused: Vec<Problem>,
}

/// Stored totals of usage hours touched by this run: per `(service key, hour)`, the total value
/// per contract (or none) and dimension. A record whose group would pass [`MAX_VALUE`] is refused.
/// An hour is loaded with one query of its stored records the first time it is touched (a new
/// hour has none, so ingesting a new month reads nothing back); the least recently used hours are
/// dropped beyond [`MAX_CACHED_TOTALS`] groups, and loaded again when touched again.
#[derive(Debug, Default)]
pub struct HourTotals {
    hours: FastMap<(String, String), CachedHour>,
    groups: usize,
    tick: u64,
}

#[derive(Debug)]
struct CachedHour {
    used: u64,
    /// Per contract (or none), per dimension; looked up without building a key per record.
    totals: FastMap<Option<String>, FastMap<String, f64>>,
    groups: usize,
}

/// What [`HourTotals::admit`] took of a file's records.
#[derive(Debug, Default)]
struct Admitted<'r> {
    /// The records to store, in file order.
    records: Vec<&'r UsageRecord>,
    /// Problems for the others.
    refused: Vec<Problem>,
    /// Contracts and dimensions of these records that the hour had no records of before.
    new_in_hour: FastSet<(&'r str, &'r str)>,
}

/// Groups kept in [`HourTotals`] at most: a few megabytes.
const MAX_CACHED_TOTALS: usize = 100_000;

impl HourTotals {
    /// Forgets an hour whose stored records changed other than through [`HourTotals::admit`].
    fn forget(&mut self, service_key: &str, hour: &str) {
        if let Some(h) = self
            .hours
            .remove(&(service_key.to_string(), hour.to_string()))
        {
            self.groups -= h.groups;
        }
    }

    /// Splits `records` into those that keep every group of the hour within [`MAX_VALUE`] (the
    /// totals now count them) and problems for the others, in file order.
    /// Also says which contracts and dimensions had no records in the hour before.
    fn admit<'r>(
        &mut self,
        tx: &Transaction,
        service_key: &str,
        hour: &str,
        records: &'r [UsageRecord],
    ) -> Result<Admitted<'r>> {
        let mut out = Admitted::default();
        if records.is_empty() {
            return Ok(out);
        }
        let cached = self.hour(tx, service_key, hour)?;
        let mut new_groups = 0;
        out.records.reserve(records.len());
        for r in records {
            let dimensions = match cached.totals.get_mut(&r.contract_id) {
                Some(d) => d,
                None => cached.totals.entry(r.contract_id.clone()).or_default(),
            };
            let total = dimensions.get(r.dimension.as_str()).copied().unwrap_or(0.0);
            let after = total + r.value.as_f64();
            if after > MAX_VALUE as f64 {
                out.refused.push(Problem {
                    record_index: Some(r.record_index),
                    reason: format!(
                        "value {} of contract {} dimension {} would bring the hour's total to \
                         {after:.0}, above the largest total taken, 2^52 = {MAX_VALUE}; not stored",
                        r.value,
                        r.contract_id.as_deref().unwrap_or("(none)"),
                        r.dimension
                    ),
                    record_kept: false,
                });
                continue;
            }
            match dimensions.get_mut(r.dimension.as_str()) {
                Some(t) => *t = after,
                None => {
                    dimensions.insert(r.dimension.clone(), after);
                    cached.groups += 1;
                    new_groups += 1;
                    if let Some(contract) = &r.contract_id {
                        out.new_in_hour
                            .insert((contract.as_str(), r.dimension.as_str()));
                    }
                }
            }
            out.records.push(r);
        }
        self.groups += new_groups;
        self.evict();
        Ok(out)
    }

    /// Whether the hour's stored records include some of `contract` and `dimension`.
    fn holds(
        &mut self,
        tx: &Transaction,
        service_key: &str,
        hour: &str,
        contract: &str,
        dimension: &str,
    ) -> Result<bool> {
        let holds = self
            .hour(tx, service_key, hour)?
            .totals
            .get(&Some(contract.to_string()))
            .is_some_and(|d| d.contains_key(dimension));
        self.evict();
        Ok(holds)
    }

    /// The hour's cached totals, loaded from the ledger if they are not kept.
    fn hour(&mut self, tx: &Transaction, service_key: &str, hour: &str) -> Result<&mut CachedHour> {
        self.tick += 1;
        let key = (service_key.to_string(), hour.to_string());
        let cached = match self.hours.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let loaded = load_hour_totals(tx, service_key, hour)?;
                self.groups += loaded.groups;
                e.insert(loaded)
            }
        };
        cached.used = self.tick;
        Ok(cached)
    }

    /// Drops the least recently used hours until at most half the budget is used.
    fn evict(&mut self) {
        if self.groups <= MAX_CACHED_TOTALS {
            return;
        }
        let mut by_use: Vec<((String, String), u64)> = self
            .hours
            .iter()
            .map(|(k, h)| (k.clone(), h.used))
            .collect();
        by_use.sort_unstable_by_key(|(_, used)| *used);
        for (key, _) in by_use {
            if self.groups <= MAX_CACHED_TOTALS / 2 {
                break;
            }
            if let Some(h) = self.hours.remove(&key) {
                self.groups -= h.groups;
            }
        }
    }
}

/// One hour's stored totals per contract and dimension. `TOTAL` (a double) rather than `SUM`,
/// which would fail on a ledger holding records from before the bound.
fn load_hour_totals(tx: &Transaction, service_key: &str, hour: &str) -> Result<CachedHour> {
    let mut stmt = tx.prepare_cached(
        "SELECT contract_id, dimension, TOTAL(value) FROM (
             SELECT contract_id, dimension, value FROM usage_records
             WHERE service_key = ?1 AND hour = ?2
             UNION ALL
             SELECT contract_id, dimension, value FROM compacted_usage
             WHERE service_key = ?1 AND hour = ?2)
         GROUP BY contract_id, dimension",
    )?;
    let mut rows = stmt.query([service_key, hour])?;
    let mut hour = CachedHour {
        used: 0,
        totals: FastMap::default(),
        groups: 0,
    };
    while let Some(r) = rows.next()? {
        let contract: Option<String> = r.get(0)?;
        hour.totals
            .entry(contract)
            .or_default()
            .insert(r.get(1)?, r.get(2)?);
        hour.groups += 1;
    }
    Ok(hour)
}

/// What the ledger knows of a key, for deciding whether to read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    /// The stored content fingerprint, where the caller needs it.
    pub fingerprint: Option<String>,
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<String>,
}

impl KnownFile {
    /// Was this file stored with a SHA-256 fingerprint (before migration V6)? Then a re-read
    /// must hash its body with SHA-256 too, to tell whether it changed.
    pub fn has_legacy_fingerprint(&self) -> bool {
        self.fingerprint
            .as_deref()
            .is_some_and(|f| f.starts_with("sha256:"))
    }

    /// Is a listed object the version already stored? S3 objects compare by ETag; local files by
    /// size and modification time.
    pub fn matches(
        &self,
        etag: Option<&str>,
        size: u64,
        last_modified: Option<DateTime<Utc>>,
    ) -> bool {
        match etag {
            Some(e) => self.etag.as_deref() == Some(e),
            None => {
                self.size == size
                    && last_modified.map(format_mtime).as_deref() == self.last_modified.as_deref()
            }
        }
    }
}

/// Counts for an `ingest_runs` row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub files_seen: u64,
    pub files_new: u64,
    pub files_replaced: u64,
    pub files_unchanged: u64,
    pub files_too_large: u64,
    pub records: u64,
    pub problems: u64,
}

/// Modification times keep sub-second precision so that a quick rewrite is still noticed.
pub(super) fn format_mtime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Ledger {
    /// What the ledger knows of each key, looked up in one read transaction (a transaction per
    /// lookup would take and release SQLite's file locks once per key).
    pub fn known_files<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<Vec<Option<KnownFile>>> {
        let tx = self.conn.unchecked_transaction()?;
        let mut stmt = tx.prepare_cached(
            "SELECT fingerprint, etag, size, last_modified FROM usage_files WHERE key = ?1",
        )?;
        let mut known = Vec::new();
        for key in keys {
            known.push(
                stmt.query_row([key], |r| {
                    Ok(KnownFile {
                        fingerprint: r.get(0)?,
                        etag: r.get(1)?,
                        size: r.get::<_, i64>(2)? as u64,
                        last_modified: r.get(3)?,
                    })
                })
                .optional()?,
            );
        }
        drop(stmt);
        tx.commit()?;
        Ok(known)
    }

    /// The newest month with usage files per service key (`SERVICE:ENV:PLAN`) from `source`.
    pub fn newest_months(&self, source: &str) -> Result<HashMap<String, Month>> {
        let mut stmt = self.conn.prepare(
            "SELECT service_key, MAX(hour) FROM usage_files
             WHERE source = ?1 AND service_key IS NOT NULL AND hour IS NOT NULL
             GROUP BY service_key",
        )?;
        let rows = stmt.query_map([source], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut newest = HashMap::new();
        for row in rows {
            let (key, hour) = row?;
            if let Some(month) = parse_timestamp(&hour).map(Month::of) {
                newest.insert(key, month);
            }
        }
        Ok(newest)
    }

    /// Has an ingest of `source` failed to finish cleanly (killed or stopped on an error, so
    /// `finished_at` is NULL, or with files left unread) since the last clean run with one of the
    /// `complete_scopes`, i.e. one that listed every month of the service keys in question?
    pub fn unsettled_run_since_complete_listing(
        &self,
        source: &str,
        complete_scopes: &[String; 2],
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "WITH runs AS (
                 SELECT id, scope, finished_at IS NOT NULL
                     AND files_seen = files_new + files_replaced + files_unchanged
                         + files_too_large AS clean
                 FROM ingest_runs WHERE source = ?1)
             SELECT EXISTS (
                 SELECT 1 FROM runs WHERE NOT clean AND id > COALESCE(
                     (SELECT MAX(id) FROM runs WHERE clean AND scope IN (?2, ?3)), 0))",
            params![source, complete_scopes[0], complete_scopes[1]],
            |r| r.get(0),
        )?)
    }

    /// Did a clean run with one of the `complete_scopes` start at or after `since`?
    pub fn complete_listing_since(
        &self,
        source: &str,
        complete_scopes: &[String; 2],
        since: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM ingest_runs
                 WHERE source = ?1 AND scope IN (?2, ?3) AND started_at >= ?4
                   AND finished_at IS NOT NULL
                   AND files_seen = files_new + files_replaced + files_unchanged + files_too_large)",
            params![
                source,
                complete_scopes[0],
                complete_scopes[1],
                format_utc(since)
            ],
            |r| r.get(0),
        )?)
    }

    /// Per service key, the months not yet fully submitted: months with attributed usage where
    /// some contract has an hour covered by no delivered or imported line (of the month, or of
    /// that hour), or with a line that needs an operator (`submission_failures`). Months before
    /// `start_month` and months the predecessor was responsible for are never submitted by
    /// meterbook, so they never count. Reads every attributed record once.
    pub fn unsettled_months(
        &self,
        start_month: Option<Month>,
    ) -> Result<HashMap<String, std::collections::BTreeSet<Month>>> {
        let mut stmt = self.conn.prepare(
            "WITH used AS (
                 SELECT service_key, hour, substr(hour, 1, 7) AS month, contract_id
                 FROM usage_records WHERE contract_id IS NOT NULL
                 GROUP BY service_key, hour, contract_id),
             months AS (
                 SELECT service_key, month FROM used u
                 WHERE NOT EXISTS (
                     SELECT 1 FROM submission_lines l
                     WHERE l.service_key = u.service_key AND l.contract_id = u.contract_id
                       AND l.status IN ('accepted', 'duplicate', 'imported')
                       AND ((l.period_kind = 'month' AND l.period = u.month)
                            OR (l.period_kind = 'hour' AND l.period = u.hour)))
                 UNION
                 SELECT service_key, substr(period, 1, 7) FROM submission_failures)
             SELECT DISTINCT m.service_key, m.month FROM months m
             WHERE m.month >= ?1
               AND NOT EXISTS (
                   SELECT 1 FROM predecessor_coverage p
                   WHERE p.service_key = m.service_key
                     AND p.processed_through >= strftime('%Y-%m-%dT%H:%M:%SZ', m.month || '-01', '+1 month'))",
        )?;
        let from = start_month.map_or_else(String::new, |m| m.to_string());
        let rows = stmt.query_map([from], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out: HashMap<String, std::collections::BTreeSet<Month>> = HashMap::new();
        for row in rows {
            let (key, month) = row?;
            if let Ok(month) = month.parse() {
                out.entry(key).or_default().insert(month);
            }
        }
        Ok(out)
    }

    pub fn begin_ingest_run(&self, source: &str, scope: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO ingest_runs (source, scope, started_at) VALUES (?1, ?2, ?3)",
            params![source, scope, format_utc(Utc::now())],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a run's counts; `finished_at` stays NULL for a run that stopped on an error.
    pub fn finish_ingest_run(&self, run_id: i64, finished: bool, c: &RunCounts) -> Result<()> {
        self.conn.execute(
            "UPDATE ingest_runs SET finished_at = ?2, files_seen = ?3, files_new = ?4,
                 files_replaced = ?5, files_unchanged = ?6, records = ?7, problems = ?8,
                 files_too_large = ?9
             WHERE id = ?1",
            params![
                run_id,
                finished.then(|| format_utc(Utc::now())),
                c.files_seen,
                c.files_new,
                c.files_replaced,
                c.files_unchanged,
                c.records,
                c.problems,
                c.files_too_large
            ],
        )?;
        Ok(())
    }

    /// Records the path problems a run found (one row per source and path, updated when seen
    /// again). `settles`: the run listed the whole source and finished, so the problems it did
    /// not find again are gone.
    pub fn record_source_problems(
        &mut self,
        run_id: i64,
        source: &str,
        problems: &PathProblems,
        settles: bool,
    ) -> Result<()> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO source_problems (source, path, reason, run_id, first_seen_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (source, path) DO UPDATE SET reason = excluded.reason,
                     run_id = excluded.run_id, last_seen_at = excluded.last_seen_at",
            )?;
            for p in &problems.kept {
                upsert.execute(params![source, p.path, p.reason, run_id, now])?;
            }
            if problems.more > 0 {
                let path = "(more paths)";
                let reason = format!(
                    "... and {} more paths with problems: only the first {PROBLEMS_KEPT_PER_FILE} \
                     of a run are recorded",
                    problems.more
                );
                upsert.execute(params![source, path, reason, run_id, now])?;
            }
        }
        if settles {
            tx.execute(
                "DELETE FROM source_problems WHERE source = ?1 AND run_id < ?2",
                params![source, run_id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a batch of file versions in one transaction: each file's records go in all
    /// together or not at all, except records refused by the hour's bound (see [`HourTotals`]).
    /// `totals` carries the hours' totals from batch to batch of one run.
    pub fn store_files(
        &mut self,
        files: &[FileVersion],
        totals: &mut HourTotals,
    ) -> Result<Vec<Stored>> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let path_problems: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM source_problems)", [], |r| {
                r.get(0)
            })?;
        let mut stored = Vec::with_capacity(files.len());
        let mut month_totals = MonthTotals::default();
        for file in files {
            let s = store_file(&tx, file, &now, totals, &mut month_totals, path_problems)
                .with_context(|| format!("storing {}", file.key))?;
            stored.push(s);
        }
        month_totals.apply(&tx)?;
        if let Err(e) = tx.commit() {
            // Totals of uncommitted records must not outlive them.
            *totals = HourTotals::default();
            return Err(e).context("committing ingested files");
        }
        Ok(stored)
    }
}

fn store_file(
    tx: &Transaction,
    f: &FileVersion,
    now: &str,
    totals: &mut HourTotals,
    month_totals: &mut MonthTotals,
    path_problems: bool,
) -> Result<Stored> {
    let existing: Option<(i64, String, StoredPeriod)> = tx
        .prepare_cached(
            "SELECT id, fingerprint, service_key, hour FROM usage_files WHERE key = ?1",
        )?
        .query_row([&f.key], |r| {
            Ok((r.get(0)?, r.get(1)?, (r.get(2)?, r.get(3)?)))
        })
        .optional()?;
    let hour = f.hour.map(format_utc);
    let last_modified = f.last_modified.map(format_mtime);
    match &existing {
        Some((id, stored, _))
            if *stored == f.fingerprint || Some(stored) == f.legacy_fingerprint.as_ref() =>
        {
            tx.prepare_cached(
                "UPDATE usage_files SET etag = ?2, last_modified = ?3, size = ?4, source = ?5,
                     fingerprint = ?6
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                f.etag,
                last_modified,
                f.size,
                f.source,
                f.fingerprint
            ])?;
            return Ok(Stored {
                outcome: StoreOutcome::Unchanged,
                records: 0,
                problems: 0,
                unattributed: 0,
                refused: Vec::new(),
            });
        }
        _ => {}
    }
    if let Some((id, _, period)) = &existing {
        let left = match period {
            (Some(service_key), Some(hour)) => {
                month_totals::stored_contributions(tx, *id, service_key, hour)?
            }
            _ => Vec::new(),
        };
        keep_replaced_version(tx, *id, period, now)?;
        if let (Some(service_key), Some(hour)) = period {
            totals.forget(service_key, hour);
            for (contract, dimension, c) in &left {
                let hour_left = !totals.holds(tx, service_key, hour, contract, dimension)?;
                month_totals.remove(service_key, hour, (contract, dimension), c, hour_left);
            }
        }
    }
    // A path problem of an earlier run (unreadable, too large) is over now that it is stored.
    if path_problems {
        tx.prepare_cached("DELETE FROM source_problems WHERE source = ?1 AND path = ?2")?
            .execute(params![f.source, f.key])?;
    }
    let Admitted {
        records,
        refused,
        new_in_hour,
    } = match (&f.service_key, &hour) {
        (Some(service_key), Some(hour)) => totals.admit(tx, service_key, hour, &f.records)?,
        _ => Admitted::default(),
    };
    let problem_count = f.problems.len() as u64 + f.more_problems + refused.len() as u64;
    let status = match (problem_count, records.is_empty()) {
        (0, _) => "ok",
        (_, true) => "rejected",
        (_, false) => "partial",
    };
    let (file_id, outcome) = match existing {
        Some((id, _, _)) => {
            tx.prepare_cached(
                "UPDATE usage_files SET source = ?2, service_key = ?3, hour = ?4, fingerprint = ?5,
                     etag = ?6, size = ?7, last_modified = ?8, ingested_at = ?9,
                     record_count = ?10, problem_count = ?11, status = ?12, version = version + 1
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                f.source,
                f.service_key,
                hour,
                f.fingerprint,
                f.etag,
                f.size,
                last_modified,
                now,
                records.len(),
                problem_count,
                status
            ])?;
            (id, StoreOutcome::Replaced)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO usage_files (key, source, service_key, hour, fingerprint, etag, size,
                     last_modified, ingested_at, record_count, problem_count, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                f.key,
                f.source,
                f.service_key,
                hour,
                f.fingerprint,
                f.etag,
                f.size,
                last_modified,
                now,
                records.len(),
                problem_count,
                status
            ])?;
            (tx.last_insert_rowid(), StoreOutcome::New)
        }
    };
    if let (Some(service_key), Some(hour)) = (&f.service_key, &hour) {
        let mut insert = tx.prepare_cached(
            "INSERT INTO usage_records (file_id, record_index, service_key, hour, contract_id,
                 dimension, value, price_per_unit, subscription_id, customer_id, instance_id,
                 pod_name, host_name, instance_type, timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for r in &records {
            insert.execute(params![
                file_id,
                r.record_index,
                service_key,
                hour,
                r.contract_id,
                r.dimension,
                r.value,
                r.price_per_unit,
                r.subscription_id,
                r.customer_id,
                r.instance_id,
                r.pod_name,
                r.host_name,
                r.instance_type,
                r.timestamp
            ])?;
        }
        let added = month_totals::contributions(records.iter().map(|r| {
            let contract = r.contract_id.as_deref();
            (contract, r.dimension.as_str(), r.value, r.price_per_unit)
        }));
        for (group, c) in added {
            month_totals.add(service_key, hour, group, &c, new_in_hour.contains(&group));
        }
        super::compact::keep_as_totals_if_compacted(tx, file_id, service_key, hour)?;
    }
    let mut problem = tx.prepare_cached(
        "INSERT INTO ingest_problems (file_id, record_index, reason, record_kept, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let kept = f
        .problems
        .iter()
        .chain(&refused)
        .take(PROBLEMS_KEPT_PER_FILE);
    for p in kept {
        problem.execute(params![
            file_id,
            p.record_index,
            p.reason,
            p.record_kept,
            now
        ])?;
    }
    if let Some(more) = problem_count.checked_sub(PROBLEMS_KEPT_PER_FILE as u64) {
        if more > 0 {
            problem.execute(params![
                file_id,
                Option::<i64>::None,
                more_problems_reason(more),
                false,
                now
            ])?;
        }
    }
    Ok(Stored {
        outcome,
        records: records.len() as u64,
        problems: problem_count,
        unattributed: records.iter().filter(|r| r.contract_id.is_none()).count() as u64,
        refused,
    })
}

/// The closing problem row of a file with more problems than are kept.
pub fn more_problems_reason(more: u64) -> String {
    format!(
        "... and {more} more problems in this file: only the first {PROBLEMS_KEPT_PER_FILE} are \
         stored (problem_count has them all)"
    )
}

/// The service key and hour a stored file's records sit under (NULL for a file whose path did
/// not say, which has no records).
type StoredPeriod = (Option<String>, Option<String>);

/// Moves the current version of a file into history (with its totals) and clears its rows (its
/// records, or its totals in a compacted month). The records sit in the file's stored service key
/// and hour (the table is clustered by period), so both statements read one hour's range.
fn keep_replaced_version(
    tx: &Transaction,
    file_id: i64,
    (service_key, hour): &StoredPeriod,
    now: &str,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO usage_file_versions (file_id, version, fingerprint, etag, size,
             record_count, ingested_at, replaced_at)
         SELECT id, version, fingerprint, etag, size, record_count, ingested_at, ?2
         FROM usage_files WHERE id = ?1",
    )?
    .execute(params![file_id, now])?;
    let version_id = tx.last_insert_rowid();
    if let (Some(service_key), Some(hour)) = (service_key, hour) {
        tx.prepare_cached(
            "INSERT INTO usage_file_version_totals (version_id, contract_id, dimension, records, value, amount)
             SELECT ?4, contract_id, dimension, COUNT(*), SUM(value), SUM(value * price_per_unit)
             FROM usage_records WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1
             GROUP BY contract_id, dimension",
        )?
        .execute(params![file_id, service_key, hour, version_id])?;
        tx.prepare_cached(
            "DELETE FROM usage_records WHERE service_key = ?2 AND hour = ?3 AND file_id = ?1",
        )?
        .execute(params![file_id, service_key, hour])?;
    }
    super::compact::keep_replaced_totals(tx, file_id, version_id)?;
    tx.prepare_cached("DELETE FROM ingest_problems WHERE file_id = ?1")?
        .execute([file_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{file_version, legacy_fingerprint};
    use crate::ledger::LedgerFile;
    use crate::ledger::MONTH_TOTALS_DIFFERENCES;
    use crate::source::{classify_key, ObjectMeta};
    use std::time::Duration;

    const KEY: &str = "omnistrate-metering/pg/PROD/pt-1/2025/07/01/00/sub-1.json";
    const BODY: &[u8] =
        br#"[{"externalPayerId":"c-1","dimension":"cpu_core_hours","value":8,"pricePerUnit":0.5},
        {"externalPayerId":"c-1","dimension":"replica_hours","value":1},
        {"dimension":"cpu_core_hours","value":4}]"#;

    fn version(body: &[u8], legacy: bool) -> FileVersion {
        let meta = ObjectMeta {
            key: KEY.into(),
            size: body.len() as u64,
            etag: None,
            last_modified: None,
        };
        file_version("test", meta, classify_key(KEY), body, legacy)
    }

    fn count(ledger: &Ledger, sql: &str) -> i64 {
        ledger.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A ledger file migrated up to `version` only, as an older meterbook left it.
    fn ledger_at_version(path: &std::path::Path, version: i32) -> rusqlite::Connection {
        let mut conn = rusqlite::Connection::open(path).unwrap();
        super::super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(version))
            .run(&mut conn)
            .unwrap();
        conn
    }

    /// A ledger written before V6 (records clustered by file, SHA-256 fingerprints) is migrated
    /// with its records, and its files are still recognised as unchanged or rewritten.
    #[test]
    fn a_ledger_from_before_v6_keeps_its_records_and_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let conn = ledger_at_version(&path, 5);
        let sha = legacy_fingerprint(BODY).replace("sha256:", "");
        conn.execute_batch(&format!(
            "INSERT INTO usage_files (id, key, source, service_key, hour, sha256, size,
                 ingested_at, record_count, problem_count, status)
             VALUES (7, '{KEY}', 'test', 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', '{sha}', 1,
                 '2025-07-01T01:00:00Z', 3, 0, 'ok');
             INSERT INTO usage_records (file_id, record_index, service_key, hour, contract_id,
                 dimension, value, price_per_unit)
             VALUES (7, 0, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'c-1', 'cpu_core_hours', 8, 0.5),
                    (7, 1, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'c-1', 'replica_hours', 1, NULL),
                    (7, 2, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', NULL, 'cpu_core_hours', 4, NULL);"
        ))
        .unwrap();
        drop(conn);

        let mut ledger =
            Ledger::open_for_writing(&LedgerFile::new(&path, Duration::from_secs(5))).unwrap();
        assert_eq!(
            count(
                &ledger,
                "SELECT SUM(value) FROM usage_records WHERE file_id = 7"
            ),
            13
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT SUM(value) FROM monthly_usage WHERE month = '2025-07'"
            ),
            9
        );
        assert_eq!(count(&ledger, "SELECT value FROM unattributed_usage"), 4);
        let known = ledger.known_files([KEY]).unwrap().remove(0).unwrap();
        assert_eq!(known.fingerprint, Some(format!("sha256:{sha}")));
        assert!(known.has_legacy_fingerprint());

        // The same body read again is unchanged, and from now on known by its BLAKE3 fingerprint.
        let same = version(BODY, true);
        let mut totals = HourTotals::default();
        let outcome = |s: Vec<Stored>| s.into_iter().map(|s| s.outcome).collect::<Vec<_>>();
        assert_eq!(
            outcome(
                ledger
                    .store_files(std::slice::from_ref(&same), &mut totals)
                    .unwrap()
            ),
            [StoreOutcome::Unchanged]
        );
        let known = ledger.known_files([KEY]).unwrap().remove(0).unwrap();
        assert_eq!(
            known.fingerprint.as_deref(),
            Some(same.fingerprint.as_str())
        );
        assert!(same.fingerprint.starts_with("blake3:"));

        // A rewritten body replaces the records and keeps the old version's totals.
        let rewritten = version(
            br#"[{"externalPayerId":"c-1","dimension":"cpu_core_hours","value":3}]"#,
            false,
        );
        assert_eq!(
            outcome(ledger.store_files(&[rewritten], &mut totals).unwrap()),
            [StoreOutcome::Replaced]
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT SUM(value) FROM usage_records WHERE file_id = 7"
            ),
            3
        );
        assert_eq!(
            count(&ledger, "SELECT SUM(value) FROM usage_file_version_totals"),
            13
        );
    }

    /// One hour's total per contract and dimension stays within 2^52 across files and batches;
    /// the records past it are problems, the rest of each file and the other contracts are kept,
    /// and a replaced file's hour is counted again without its old records.
    #[test]
    fn an_hours_total_stays_within_the_bound_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open_for_writing(&LedgerFile::new(
            dir.path().join("l.sqlite"),
            Duration::from_secs(5),
        ))
        .unwrap();
        let file = |sub: &str, body: String| {
            let key = KEY.replace("sub-1", sub);
            let meta = ObjectMeta {
                key: key.clone(),
                size: body.len() as u64,
                etag: None,
                last_modified: None,
            };
            file_version("test", meta, classify_key(&key), body.as_bytes(), false)
        };
        let big = MAX_VALUE - 10;
        let a = file(
            "a",
            format!(
                r#"[{{"externalPayerId":"A","dimension":"d","value":{big}}},
                   {{"externalPayerId":"B","dimension":"d","value":{big}}}]"#
            ),
        );
        let b = file(
            "b",
            r#"[{"externalPayerId":"A","dimension":"d","value":11},
               {"externalPayerId":"A","dimension":"d","value":10},
               {"externalPayerId":"A","dimension":"e","value":11}]"#
                .to_string(),
        );
        let mut totals = HourTotals::default();
        ledger.store_files(&[a], &mut totals).unwrap();
        // A fresh cache (a later run) loads the hour from the ledger.
        let stored = ledger
            .store_files(std::slice::from_ref(&b), &mut HourTotals::default())
            .unwrap();
        assert_eq!((stored[0].records, stored[0].problems), (2, 1));
        assert_eq!(stored[0].refused[0].record_index, Some(0));
        assert!(stored[0].refused[0].reason.contains("2^52"));
        assert_eq!(
            count(
                &ledger,
                "SELECT value FROM hourly_usage WHERE contract_id = 'A' AND dimension = 'd'"
            ),
            MAX_VALUE
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT status = 'partial' FROM usage_files WHERE key LIKE '%/b.json'"
            ),
            1
        );
        // Rewriting a.json with less usage makes room for b's record when b is read again.
        let a2 = file(
            "a",
            r#"[{"externalPayerId":"A","dimension":"d","value":1}]"#.into(),
        );
        let mut b2 = b;
        b2.fingerprint.push('x');
        let stored = ledger.store_files(&[a2, b2], &mut totals).unwrap();
        assert_eq!(stored[1].problems, 0);
        assert_eq!(
            count(
                &ledger,
                "SELECT value FROM hourly_usage WHERE contract_id = 'A' AND dimension = 'd'"
            ),
            22
        );
    }

    /// A ledger at schema 7 holding an overflowing pair (the hostile tester's file) is made safe
    /// by V8: the record past the bound becomes a problem, every view answers, the rest is kept.
    #[test]
    fn a_ledger_with_an_overflowing_hour_is_repaired_by_v8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let conn = ledger_at_version(&path, 7);
        conn.execute_batch(&format!(
            "INSERT INTO usage_files (id, key, source, service_key, hour, fingerprint, size,
                 ingested_at, record_count, problem_count, status)
             VALUES (7, '{KEY}', 'test', 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'blake3:x', 1,
                 '2025-07-01T01:00:00Z', 3, 0, 'ok');
             INSERT INTO usage_records (file_id, record_index, service_key, hour, contract_id,
                 dimension, value)
             VALUES (7, 0, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'A', 'cpu', 9223372036854775807),
                    (7, 1, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'A', 'cpu', 1),
                    (7, 2, 'pg:PROD:pt-1', '2025-07-01T00:00:00Z', 'B', 'cpu', 5);"
        ))
        .unwrap();
        assert!(conn
            .query_row("SELECT SUM(value) FROM monthly_usage", [], |r| r
                .get::<_, i64>(0))
            .is_err());
        drop(conn);

        let ledger =
            Ledger::open_for_writing(&LedgerFile::new(&path, Duration::from_secs(5))).unwrap();
        for view in [
            "hourly_usage",
            "monthly_usage",
            "pending_periods",
            "submission_drift",
            "unattributed_usage",
            "hourly_usage_max_per_pod",
            "usage_problems",
        ] {
            ledger
                .conn
                .prepare(&format!("SELECT * FROM {view}"))
                .unwrap()
                .query_map([], |_| Ok(()))
                .unwrap()
                .collect::<rusqlite::Result<Vec<()>>>()
                .unwrap_or_else(|e| panic!("{view}: {e}"));
        }
        assert_eq!(
            count(
                &ledger,
                "SELECT value FROM monthly_usage WHERE contract_id = 'A'"
            ),
            1
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT value FROM monthly_usage WHERE contract_id = 'B'"
            ),
            5
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT record_count * 10 + problem_count FROM usage_files WHERE status = 'partial'"
            ),
            21
        );
        assert_eq!(
            count(
                &ledger,
                "SELECT record_index FROM usage_problems WHERE reason LIKE '%2^52%'"
            ),
            0
        );
    }

    /// The monthly totals ingest keeps equal their definition after every batch of new, rewritten,
    /// unchanged and partly refused files (random, replayable with METERBOOK_TOTALS_SEED).
    #[test]
    fn monthly_totals_follow_every_stored_and_replaced_file() {
        let seed: u64 = std::env::var("METERBOOK_TOTALS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        let mut state = seed | 1;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open_for_writing(&LedgerFile::new(
            dir.path().join("l.sqlite"),
            Duration::from_secs(5),
        ))
        .unwrap();
        let mut totals = HourTotals::default();
        let mut versions: HashMap<String, u32> = HashMap::new();
        let recomputed_before = month_totals::RECOMPUTED.load(std::sync::atomic::Ordering::SeqCst);
        for batch in 0..40 {
            let mut files = Vec::new();
            for _ in 0..1 + next(8) {
                // Hours across two months, a few subscriptions: rewrites and shared hours.
                let key = format!(
                    "omnistrate-metering/pg/PROD/pt-1/2025/0{}/0{}/0{}/sub-{}.json",
                    6 + next(2),
                    1 + next(2),
                    next(3),
                    next(4)
                );
                let mut records = Vec::new();
                for _ in 0..next(6) {
                    let contract = match next(5) {
                        0 => String::new(),
                        n => format!(r#""externalPayerId":"C{}","#, n % 3),
                    };
                    let value = match next(6) {
                        0 => format!("{}.5", next(100)),
                        1 => format!("{}.0", next(100)),
                        2 => format!("{}", MAX_VALUE - next(3) as i64),
                        _ => format!("{}", next(1000)),
                    };
                    let price = match next(3) {
                        0 => format!(r#","pricePerUnit":0.{}"#, 1 + next(9)),
                        _ => String::new(),
                    };
                    records.push(format!(
                        r#"{{{contract}"dimension":"d{}","value":{value}{price}}}"#,
                        next(2)
                    ));
                }
                // The same key again with the same content (unchanged) or new content.
                let version = versions.entry(key.clone()).or_insert(0);
                if next(4) != 0 {
                    *version += 1;
                }
                let body = format!("[{}]", records.join(","));
                let meta = ObjectMeta {
                    key: key.clone(),
                    size: body.len() as u64,
                    etag: None,
                    last_modified: None,
                };
                let mut f = file_version("test", meta, classify_key(&key), body.as_bytes(), false);
                f.fingerprint = format!("v{version}");
                files.push(f);
            }
            if next(5) == 0 {
                // A later run: the hours are loaded from the ledger again.
                totals = HourTotals::default();
            }
            ledger.store_files(&files, &mut totals).unwrap();
            let mut stmt = ledger.conn.prepare(MONTH_TOTALS_DIFFERENCES).unwrap();
            let differences: Vec<String> = stmt
                .query_map([], |r| {
                    Ok((0..20)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join(" "))
                })
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert!(
                differences.is_empty(),
                "seed {seed}, batch {batch}: {differences:#?}"
            );
        }
        // Integer values give monthly_usage's very rows.
        let integer_rows_differ = count(
            &ledger,
            "SELECT COUNT(*) FROM (
                 SELECT service_key, month, contract_id, dimension, value, records, files, hours
                 FROM monthly_usage_totals t
                 WHERE NOT EXISTS (SELECT 1 FROM usage_month_totals u
                                   WHERE u.service_key = t.service_key AND u.month = t.month
                                     AND u.contract_id = t.contract_id
                                     AND u.dimension = t.dimension AND u.real_files > 0)
                 EXCEPT
                 SELECT service_key, month, contract_id, dimension, value, records, files, hours
                 FROM monthly_usage)",
        );
        assert_eq!(integer_rows_differ, 0, "seed {seed}");
        assert!(count(&ledger, "SELECT COUNT(*) FROM usage_month_totals") > 0);
        assert_eq!(
            month_totals::RECOMPUTED.load(std::sync::atomic::Ordering::SeqCst),
            recomputed_before,
            "seed {seed}: kept right without computing a row again"
        );

        // A row changed by hand is computed again the next time a file touches it.
        let (month, contract, dimension): (String, String, String) = ledger
            .conn
            .query_row(
                "SELECT month, contract_id, dimension FROM usage_month_totals LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        ledger
            .conn
            .execute_batch("UPDATE usage_month_totals SET files = 0, hours = 7")
            .unwrap();
        let key = format!(
            "omnistrate-metering/pg/PROD/pt-1/{}/01/00/sub-9.json",
            month.replace('-', "/")
        );
        let body =
            format!(r#"[{{"externalPayerId":"{contract}","dimension":"{dimension}","value":0}}]"#);
        let meta = ObjectMeta {
            key: key.clone(),
            size: body.len() as u64,
            etag: None,
            last_modified: None,
        };
        let f = file_version("test", meta, classify_key(&key), body.as_bytes(), false);
        ledger.store_files(&[f], &mut totals).unwrap();
        assert_eq!(
            month_totals::RECOMPUTED.load(std::sync::atomic::Ordering::SeqCst),
            recomputed_before + 1
        );
        let differing: i64 = ledger
            .conn
            .query_row(
                &format!(
                    "SELECT COUNT(*) FROM ({MONTH_TOTALS_DIFFERENCES})
                     WHERE month = ?1 AND contract_id = ?2 AND dimension = ?3"
                ),
                [&month, &contract, &dimension],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(differing, 0, "the row is right again");
    }
}
