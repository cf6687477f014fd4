//! Usage files and records: storing a batch of file versions, replacing rewritten files while
//! keeping their history, and the lookups that let ingest skip what it already has.

use std::collections::HashMap;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, Transaction};

use super::Ledger;
use crate::period::{format_utc, parse_timestamp, Month};
use crate::source::parse::{Problem, Quantity, UsageRecord};

/// One version of one usage file, as read and parsed, ready to be stored.
#[derive(Debug, Clone)]
pub struct FileVersion {
    pub key: String,
    pub source: String,
    /// `SERVICE:ENV:PLAN`, when the path says.
    pub service_key: Option<String>,
    /// The usage hour from the path; `None` when it does not parse (then there are no records).
    pub hour: Option<DateTime<Utc>>,
    pub sha256: String,
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<DateTime<Utc>>,
    pub records: Vec<UsageRecord>,
    pub problems: Vec<Problem>,
}

impl FileVersion {
    fn status(&self) -> &'static str {
        match (self.problems.is_empty(), self.records.is_empty()) {
            (true, _) => "ok",
            (false, true) => "rejected",
            (false, false) => "partial",
        }
    }
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

/// What the ledger knows of a key, for deciding whether to read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFile {
    pub etag: Option<String>,
    pub size: u64,
    pub last_modified: Option<String>,
}

impl KnownFile {
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
    pub records: u64,
    pub problems: u64,
}

/// Modification times keep sub-second precision so that a quick rewrite is still noticed.
pub(super) fn format_mtime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl Ledger {
    pub fn known_file(&self, key: &str) -> Result<Option<KnownFile>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT etag, size, last_modified FROM usage_files WHERE key = ?1")?;
        Ok(stmt
            .query_row([key], |r| {
                Ok(KnownFile {
                    etag: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    last_modified: r.get(2)?,
                })
            })
            .optional()?)
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
    /// `finished_at` is NULL, or with files left unread) since the last clean run with scope
    /// `complete_scope`, i.e. one that listed every service key and month?
    pub fn unsettled_run_since_complete_listing(
        &self,
        source: &str,
        complete_scope: &str,
    ) -> Result<bool> {
        Ok(self.conn.query_row(
            "WITH runs AS (
                 SELECT id, scope, finished_at IS NOT NULL
                     AND files_seen = files_new + files_replaced + files_unchanged AS clean
                 FROM ingest_runs WHERE source = ?1)
             SELECT EXISTS (
                 SELECT 1 FROM runs WHERE NOT clean AND id > COALESCE(
                     (SELECT MAX(id) FROM runs WHERE clean AND scope = ?2), 0))",
            params![source, complete_scope],
            |r| r.get(0),
        )?)
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
                 files_replaced = ?5, files_unchanged = ?6, records = ?7, problems = ?8
             WHERE id = ?1",
            params![
                run_id,
                finished.then(|| format_utc(Utc::now())),
                c.files_seen,
                c.files_new,
                c.files_replaced,
                c.files_unchanged,
                c.records,
                c.problems
            ],
        )?;
        Ok(())
    }

    /// Stores a batch of file versions in one transaction: each file's records go in all
    /// together or not at all.
    pub fn store_files(&mut self, files: &[FileVersion]) -> Result<Vec<StoreOutcome>> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(files.len());
        for file in files {
            let outcome =
                store_file(&tx, file, &now).with_context(|| format!("storing {}", file.key))?;
            outcomes.push(outcome);
        }
        tx.commit().context("committing ingested files")?;
        Ok(outcomes)
    }
}

fn store_file(tx: &Transaction, f: &FileVersion, now: &str) -> Result<StoreOutcome> {
    let existing: Option<(i64, String)> = tx
        .prepare_cached("SELECT id, sha256 FROM usage_files WHERE key = ?1")?
        .query_row([&f.key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let hour = f.hour.map(format_utc);
    let last_modified = f.last_modified.map(format_mtime);
    let (file_id, outcome) = match existing {
        Some((id, sha)) if sha == f.sha256 => {
            tx.prepare_cached(
                "UPDATE usage_files SET etag = ?2, last_modified = ?3, size = ?4, source = ?5
                 WHERE id = ?1",
            )?
            .execute(params![id, f.etag, last_modified, f.size, f.source])?;
            return Ok(StoreOutcome::Unchanged);
        }
        Some((id, _)) => {
            keep_replaced_version(tx, id, now)?;
            tx.prepare_cached(
                "UPDATE usage_files SET source = ?2, service_key = ?3, hour = ?4, sha256 = ?5,
                     etag = ?6, size = ?7, last_modified = ?8, ingested_at = ?9,
                     record_count = ?10, problem_count = ?11, status = ?12, version = version + 1
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                f.source,
                f.service_key,
                hour,
                f.sha256,
                f.etag,
                f.size,
                last_modified,
                now,
                f.records.len(),
                f.problems.len(),
                f.status()
            ])?;
            (id, StoreOutcome::Replaced)
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO usage_files (key, source, service_key, hour, sha256, etag, size,
                     last_modified, ingested_at, record_count, problem_count, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                f.key,
                f.source,
                f.service_key,
                hour,
                f.sha256,
                f.etag,
                f.size,
                last_modified,
                now,
                f.records.len(),
                f.problems.len(),
                f.status()
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
        for r in &f.records {
            let value: rusqlite::types::Value = match r.value {
                Quantity::Int(i) => i.into(),
                Quantity::Real(x) => x.into(),
            };
            insert.execute(params![
                file_id,
                r.record_index,
                service_key,
                hour,
                r.contract_id,
                r.dimension,
                value,
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
    }
    let mut problem = tx.prepare_cached(
        "INSERT INTO ingest_problems (file_id, record_index, reason, record_kept, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for p in &f.problems {
        problem.execute(params![
            file_id,
            p.record_index,
            p.reason,
            p.record_kept,
            now
        ])?;
    }
    Ok(outcome)
}

/// Moves the current version of a file into history (with its totals) and clears its rows.
fn keep_replaced_version(tx: &Transaction, file_id: i64, now: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO usage_file_versions (file_id, version, sha256, etag, size, record_count,
             ingested_at, replaced_at)
         SELECT id, version, sha256, etag, size, record_count, ingested_at, ?2
         FROM usage_files WHERE id = ?1",
    )?
    .execute(params![file_id, now])?;
    let version_id = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO usage_file_version_totals (version_id, contract_id, dimension, records, value, amount)
         SELECT ?2, contract_id, dimension, COUNT(*), SUM(value), SUM(value * price_per_unit)
         FROM usage_records WHERE file_id = ?1
         GROUP BY contract_id, dimension",
    )?
    .execute(params![file_id, version_id])?;
    tx.prepare_cached("DELETE FROM usage_records WHERE file_id = ?1")?
        .execute([file_id])?;
    tx.prepare_cached("DELETE FROM ingest_problems WHERE file_id = ?1")?
        .execute([file_id])?;
    Ok(())
}
