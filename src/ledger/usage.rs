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
    /// `blake3:<hex>` of the body.
    pub fingerprint: String,
    /// `sha256:<hex>` of the body, computed only when the ledger holds this key under a
    /// fingerprint from before BLAKE3 (see [`KnownFile::has_legacy_fingerprint`]).
    pub legacy_fingerprint: Option<String>,
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
    let (file_id, outcome) = match existing {
        Some((id, stored, _))
            if stored == f.fingerprint || Some(&stored) == f.legacy_fingerprint.as_ref() =>
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
            return Ok(StoreOutcome::Unchanged);
        }
        Some((id, _, period)) => {
            keep_replaced_version(tx, id, &period, now)?;
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
                f.records.len(),
                f.problems.len(),
                f.status()
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

/// The service key and hour a stored file's records sit under (NULL for a file whose path did
/// not say, which has no records).
type StoredPeriod = (Option<String>, Option<String>);

/// Moves the current version of a file into history (with its totals) and clears its rows. The
/// records sit in the file's stored service key and hour (the table is clustered by period), so
/// both statements read one hour's range.
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
    tx.prepare_cached("DELETE FROM ingest_problems WHERE file_id = ?1")?
        .execute([file_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{file_version, legacy_fingerprint};
    use crate::ledger::LedgerFile;
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

    /// A ledger written before V6 (records clustered by file, SHA-256 fingerprints) is migrated
    /// with its records, and its files are still recognised as unchanged or rewritten.
    #[test]
    fn a_ledger_from_before_v6_keeps_its_records_and_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        super::super::embedded::migrations::runner()
            .set_target(refinery::Target::Version(5))
            .run(&mut conn)
            .unwrap();
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
        assert_eq!(
            ledger.store_files(std::slice::from_ref(&same)).unwrap(),
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
            ledger.store_files(&[rewritten]).unwrap(),
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
}
