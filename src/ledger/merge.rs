//! Carrying a ledger's local changes over into a newer state pulled from S3, so that a host whose
//! ledger changed after its last sync (a crashed run, a manual command) converges without an
//! operator. Every table is in one of three classes:
//!
//! - **from the export** ([`FROM_THE_EXPORT`]): usage files, records, problems, runs, markers,
//!   the totals of compacted months, and the monthly totals ingest keeps. Any ingest rebuilds them
//!   from Omnistrate's export, so local changes are dropped (and counted). Compacted totals are
//!   not rebuilt by an ingest, but they are the state's own files' records in another form
//!   (`compacted_usage` rows point at `usage_files` rows), so they must come from the same side
//!   as the files: a month compacted only here keeps the state's records (the same numbers;
//!   `compact` can run again), and a month compacted in the state stays compacted.
//! - **what was sent or imported** ([`SUBMISSION_TABLES`]): submissions, their lines, inputs and
//!   runs, predecessor imports. A local submission the state does not have (matched by content,
//!   not by row id: two hosts number their rows independently) is copied in with new ids, its
//!   references mapped, unless the state already holds an accepted or in-flight line for the same
//!   contract, period and dimension (the unique index decides; it is left out and reported).
//!   Local updates to submissions the state has (answers recorded after the state was pushed)
//!   are dropped: the state's request is re-sent by the next run and Clazar's duplicate answer
//!   reconciles it.
//! - **costs** ([`COST_TABLES`]): billing files and grants, changed only by `costs ingest` and
//!   `costs grants load`. A three-way decision on a fingerprint of their small tables: changed
//!   only here, the local tables replace the state's; changed on both sides, only one version can
//!   stay: the state's, which other hosts already have, and the local sources are named so that
//!   the operator can load them again (both commands rebuild from their files).

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::open::{inspect, Found};
use super::{binary_schema_version, embedded, SubmissionStatus};
use crate::period::PeriodKind;

/// Tables every ingest rebuilds from the export, and the compacted totals of those files (see the
/// module documentation).
const FROM_THE_EXPORT: [&str; 12] = [
    "usage_files",
    "usage_records",
    "ingest_problems",
    "usage_file_versions",
    "usage_file_version_totals",
    "ingest_runs",
    "export_markers",
    "export_marker_reads",
    "source_problems",
    "compacted_usage",
    "compacted_months",
    "usage_month_totals",
];

/// Tables that record what was sent to Clazar or imported from the predecessor.
const SUBMISSION_TABLES: [&str; 5] = [
    "submission_runs",
    "submissions",
    "submission_lines",
    "submission_inputs",
    "predecessor_imports",
];

/// Tables of `costs ingest` and `costs grants load`, parents first.
const COST_TABLES: [&str; 6] = [
    "cost_files",
    "cost_line_items",
    "cost_totals",
    "cost_ingest_problems",
    "cost_settings",
    "cost_grants",
];

/// The cost tables and columns the fingerprint reads: every change to the other tables changes
/// these too (a stored or rejected billing file rewrites its `cost_files` row; user tags are
/// `cost_settings`), and they stay small where `cost_line_items` does not. Columns are named, so
/// that a migration adding a column does not make every ledger look changed.
const COST_FINGERPRINT: [(&str, &str); 3] = [
    (
        "cost_files",
        "key, source, account_id, month, etag, size, last_modified, ingested_at, version, status",
    ),
    ("cost_settings", "name, value"),
    (
        "cost_grants",
        "user, amount_nanos, starts_on, ends_on, note, source, line, loaded_at",
    ),
];

/// A local submission that was not carried over: the state already holds that contract, period
/// and dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub service_key: String,
    pub contract_id: String,
    pub period_kind: PeriodKind,
    pub period: String,
    /// Its status here (`Pending` was never sent).
    pub status: SubmissionStatus,
}

/// What carrying local changes over did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    /// Local submissions the state did not have, copied in (with their lines and inputs).
    pub submissions: u64,
    pub lines: u64,
    /// Submission runs copied in with them.
    pub runs: u64,
    pub predecessor_imports: u64,
    /// The cost tables changed here and not in the state: the local ones replaced the state's.
    pub cost_tables: bool,
    /// The cost tables changed both here and in the state: the state's were kept, and the local
    /// ones were dropped.
    pub cost_tables_dropped: Option<DroppedCosts>,
    /// Local submissions left out (the state already holds their lines).
    pub left_out: Vec<LeftOut>,
    /// Local submissions the state also has, whose local status differs (answers recorded here
    /// after the state was pushed): the state's record is kept.
    pub updates_dropped: u64,
    /// Local usage files (or versions of them) the state does not have.
    pub usage_files_dropped: u64,
    /// Months compacted here and not in the state: the state keeps their records.
    pub compactions_dropped: u64,
}

/// Where the dropped local cost tables came from, to load them again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DroppedCosts {
    /// `costs ingest` sources (folders or S3 URLs).
    pub billing_sources: Vec<String>,
    /// `costs grants load` files.
    pub grants_files: Vec<String>,
}

impl Carried {
    /// Whether anything of the local ledger is now in the state (then it has unpushed changes).
    pub fn kept_anything(&self) -> bool {
        self.submissions + self.predecessor_imports > 0 || self.cost_tables
    }

    /// Whether an operator must act: local cost tables were dropped and must be loaded again.
    pub fn needs_attention(&self) -> bool {
        self.cost_tables_dropped.is_some()
    }
}

/// The fingerprint of an empty ledger's cost tables: the base of a ledger never synced.
pub fn empty_cost_tables() -> String {
    hex::encode(Sha256::new().finalize())
}

/// The fingerprint of the cost tables of the database `schema` on `conn` (missing tables, in an
/// older schema, count as empty).
pub(super) fn cost_tables_fingerprint(conn: &Connection, schema: &str) -> Result<String> {
    let mut hash = Sha256::new();
    for (table, columns) in COST_FINGERPRINT {
        let exists: Option<i64> = conn
            .query_row(
                &format!("SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?1"),
                [table],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_none() {
            continue;
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT {columns} FROM {schema}.{table} ORDER BY rowid"
        ))?;
        let columns = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            hash.update(table.as_bytes());
            for i in 0..columns {
                use rusqlite::types::ValueRef;
                match row.get_ref(i)? {
                    ValueRef::Null => hash.update([0]),
                    ValueRef::Integer(v) => {
                        hash.update([1]);
                        hash.update(v.to_le_bytes());
                    }
                    ValueRef::Real(v) => {
                        hash.update([2]);
                        hash.update(v.to_le_bytes());
                    }
                    ValueRef::Text(t) | ValueRef::Blob(t) => {
                        hash.update([3]);
                        hash.update((t.len() as u64).to_le_bytes());
                        hash.update(t);
                    }
                }
            }
        }
    }
    Ok(hex::encode(hash.finalize()))
}

/// Refuses a copy with a table this module does not classify: its local changes would otherwise
/// be dropped without a word. (The unit tests run this on a fresh ledger, so a migration that
/// adds a table without classifying it fails there, not here.)
fn check_classified(conn: &Connection) -> Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM main.sqlite_master WHERE type = 'table'")?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let known = |t: &str| {
        t == "refinery_schema_history"
            || FROM_THE_EXPORT.contains(&t)
            || SUBMISSION_TABLES.contains(&t)
            || COST_TABLES.contains(&t)
    };
    match tables.iter().find(|t| !known(t)) {
        Some(t) => anyhow::bail!(
            "cannot carry local changes over: this meterbook does not say what to do with table \
             '{t}' (a bug; nothing was changed)"
        ),
        None => Ok(()),
    }
}

/// Opens a private copy (a snapshot file no other process uses) and brings it to this binary's
/// schema, so that two copies have the same tables and columns.
fn open_copy(path: &Path) -> Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("opening the copy {}", path.display()))?;
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    let current = matches!(inspect(&conn, path)?, Found::Ledger(v) if v == binary_schema_version());
    if !current {
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("migrating the copy {}", path.display()))?;
    }
    Ok(conn)
}

/// Carries the changes of the local ledger copy `local` over into the state copy `state` (both
/// private snapshot files; `state` is changed in place), given the cost tables' fingerprint of
/// the generation the local ledger was last synced as (`base_cost_tables`).
pub fn carry_over(state: &Path, local: &Path, base_cost_tables: &str) -> Result<Carried> {
    drop(open_copy(local)?);
    let mut conn = open_copy(state)?;
    check_classified(&conn)?;
    let local_name = local
        .to_str()
        .with_context(|| format!("{} is not UTF-8", local.display()))?;
    conn.execute("ATTACH DATABASE ?1 AS local", [local_name])
        .with_context(|| format!("attaching {}", local.display()))?;
    let here = cost_tables_fingerprint(&conn, "local")?;
    let there = cost_tables_fingerprint(&conn, "main")?;
    let changed_here = here != base_cost_tables && here != there;
    let cost_tables = changed_here && there == base_cost_tables;
    let cost_tables_dropped = match changed_here && !cost_tables {
        true => Some(DroppedCosts {
            billing_sources: distinct(&conn, "SELECT DISTINCT source FROM local.cost_files")?,
            grants_files: distinct(&conn, "SELECT DISTINCT source FROM local.cost_grants")?,
        }),
        false => None,
    };
    let mut carried = Carried {
        usage_files_dropped: only_here(&conn, "usage_files", &["key", "fingerprint"])?,
        compactions_dropped: only_here(&conn, "compacted_months", &["service_key", "month"])?,
        cost_tables,
        cost_tables_dropped,
        ..Carried::default()
    };
    let mut tx = conn.transaction()?;
    match_rows(&tx)?;
    carried.updates_dropped = tx.query_row(
        "SELECT COUNT(*) FROM local.submissions l
         JOIN temp.submission_map s ON s.local_id = l.id
         JOIN main.submissions m ON m.id = s.state_id
         WHERE l.status != m.status OR l.attempts != m.attempts",
        [],
        |r| r.get(0),
    )?;
    carry_submissions(&mut tx, &mut carried)?;
    carried.predecessor_imports = tx.execute(
        "INSERT INTO main.predecessor_imports (source, service_key, period_kind, last_processed,
             processed_through, last_updated, successes, errors, imported_at)
         SELECT source, service_key, period_kind, last_processed, processed_through, last_updated,
                successes, errors, imported_at
         FROM local.predecessor_imports l
         WHERE NOT EXISTS (
             SELECT 1 FROM main.predecessor_imports m
             WHERE m.source = l.source AND m.service_key = l.service_key
               AND m.period_kind = l.period_kind AND m.last_processed = l.last_processed
               AND m.imported_at = l.imported_at)
         ORDER BY id",
        [],
    )? as u64;
    if cost_tables {
        for table in COST_TABLES.iter().rev() {
            tx.execute(&format!("DELETE FROM main.{table}"), [])?;
        }
        for table in COST_TABLES {
            tx.execute(
                &format!("INSERT INTO main.{table} SELECT * FROM local.{table}"),
                [],
            )?;
        }
    }
    tx.commit().context("committing the carried-over changes")?;
    conn.execute("DETACH DATABASE local", [])?;
    Ok(carried)
}

/// How many rows of the local `table` the state has no row with the same `columns` for.
fn only_here(conn: &Connection, table: &str, columns: &[&str]) -> Result<u64> {
    let same: Vec<String> = columns.iter().map(|c| format!("m.{c} = l.{c}")).collect();
    Ok(conn.query_row(
        &format!(
            "SELECT COUNT(*) FROM local.{table} l
             WHERE NOT EXISTS (SELECT 1 FROM main.{table} m WHERE {})",
            same.join(" AND ")
        ),
        [],
        |r| r.get(0),
    )?)
}

fn distinct(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let values = stmt.query_map([], |r| r.get(0))?;
    Ok(values.collect::<rusqlite::Result<_>>()?)
}

/// Maps the local runs, submissions and lines to the state's, by content: a run by its command,
/// start and settings; a submission by its service key, contract, period, creation time and
/// exact body; a line by its submission and dimension.
fn match_rows(tx: &Connection) -> Result<()> {
    tx.execute_batch(
        "CREATE TEMP TABLE run_map (local_id INTEGER PRIMARY KEY, state_id INTEGER);
         INSERT INTO temp.run_map
         SELECT l.id, (SELECT m.id FROM main.submission_runs m
                       WHERE m.command = l.command AND m.started_at = l.started_at
                         AND m.settings IS l.settings
                       ORDER BY m.id LIMIT 1)
         FROM local.submission_runs l;

         CREATE TEMP TABLE submission_map (local_id INTEGER PRIMARY KEY, state_id INTEGER);
         INSERT INTO temp.submission_map
         SELECT l.id, (SELECT m.id FROM main.submissions m
                       WHERE m.service_key = l.service_key AND m.contract_id = l.contract_id
                         AND m.period_kind = l.period_kind AND m.period = l.period
                         AND m.created_at = l.created_at AND m.payload IS l.payload
                       ORDER BY m.id LIMIT 1)
         FROM local.submissions l;

         CREATE TEMP TABLE line_map (local_id INTEGER PRIMARY KEY, state_id INTEGER);
         INSERT INTO temp.line_map
         SELECT l.id, (SELECT m.id FROM main.submission_lines m
                       WHERE m.submission_id = s.state_id AND m.dimension = l.dimension
                       ORDER BY m.id LIMIT 1)
         FROM local.submission_lines l
         JOIN temp.submission_map s ON s.local_id = l.submission_id
         WHERE s.state_id IS NOT NULL;",
    )?;
    Ok(())
}

/// Copies every local submission the state does not have, oldest first (a resubmission refers
/// to an earlier one), each with its lines and inputs in a savepoint: one refused by the unique
/// index (the state holds that contract, period and dimension) is left out whole.
fn carry_submissions(tx: &mut rusqlite::Transaction, carried: &mut Carried) -> Result<()> {
    let missing: Vec<(i64, Option<i64>)> = tx
        .prepare(
            "SELECT l.id, l.run_id FROM local.submissions l
             JOIN temp.submission_map s ON s.local_id = l.id
             WHERE s.state_id IS NULL ORDER BY l.id",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (local_id, run_id) in missing {
        let savepoint = tx.savepoint()?;
        let new_run = carry_run(&savepoint, run_id)?;
        match copy_submission(&savepoint, local_id)? {
            Some(lines) => {
                savepoint.commit()?;
                carried.submissions += 1;
                carried.lines += lines;
                carried.runs += u64::from(new_run);
            }
            None => {
                drop(savepoint); // rolls back this submission (and its run) only
                carried.left_out.push(tx.query_row(
                    "SELECT service_key, contract_id, period_kind, period, status
                     FROM local.submissions WHERE id = ?1",
                    [local_id],
                    |r| {
                        Ok(LeftOut {
                            service_key: r.get(0)?,
                            contract_id: r.get(1)?,
                            period_kind: r.get(2)?,
                            period: r.get(3)?,
                            status: r.get(4)?,
                        })
                    },
                )?);
            }
        }
    }
    Ok(())
}

/// Copies a local run the state does not have yet; true when it was copied.
fn carry_run(tx: &Connection, run_id: Option<i64>) -> Result<bool> {
    let Some(run_id) = run_id else {
        return Ok(false);
    };
    let unmatched: Option<i64> = tx
        .query_row(
            "SELECT local_id FROM temp.run_map WHERE local_id = ?1 AND state_id IS NULL",
            [run_id],
            |r| r.get(0),
        )
        .optional()?;
    if unmatched.is_none() {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO main.submission_runs (command, period_kind, settings, started_at,
             finished_at, planned, sent)
         SELECT command, period_kind, settings, started_at, finished_at, planned, sent
         FROM local.submission_runs WHERE id = ?1",
        [run_id],
    )?;
    tx.execute(
        "UPDATE temp.run_map SET state_id = ?2 WHERE local_id = ?1",
        params![run_id, tx.last_insert_rowid()],
    )?;
    Ok(true)
}

/// Copies one local submission with its lines and inputs under new ids; returns its line count,
/// or `None` when the state holds one of its lines already (the unique index or the trigger on
/// imported lines refused it).
fn copy_submission(tx: &Connection, local_id: i64) -> Result<Option<u64>> {
    tx.execute(
        "INSERT INTO main.submissions (run_id, service_key, contract_id, period_kind, period,
             start_time, end_time, cloud, payload, status, attempts, http_status, response_body,
             error, retry_of, created_at, sent_at, answered_at)
         SELECT (SELECT state_id FROM temp.run_map WHERE local_id = l.run_id), service_key,
                contract_id, period_kind, period, start_time, end_time, cloud, payload, status,
                attempts, http_status, response_body, error,
                (SELECT state_id FROM temp.submission_map WHERE local_id = l.retry_of),
                created_at, sent_at, answered_at
         FROM local.submissions l WHERE l.id = ?1",
        [local_id],
    )?;
    let state_id = tx.last_insert_rowid();
    tx.execute(
        "UPDATE temp.submission_map SET state_id = ?2 WHERE local_id = ?1",
        params![local_id, state_id],
    )?;
    let lines: Vec<i64> = tx
        .prepare("SELECT id FROM local.submission_lines WHERE submission_id = ?1 ORDER BY id")?
        .query_map([local_id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for line in &lines {
        let inserted = tx.execute(
            "INSERT INTO main.submission_lines (submission_id, service_key, contract_id,
                 period_kind, period, dimension, exact_quantity, quantity, status, clazar_id,
                 result_status, code, message, errors, retry_of, updated_at)
             SELECT ?2, service_key, contract_id, period_kind, period, dimension, exact_quantity,
                    quantity, status, clazar_id, result_status, code, message, errors,
                    (SELECT state_id FROM temp.line_map WHERE local_id = l.retry_of), updated_at
             FROM local.submission_lines l WHERE l.id = ?1",
            params![line, state_id],
        );
        match inserted {
            Err(rusqlite::Error::SqliteFailure(e, _)) if held_elsewhere(e.extended_code) => {
                return Ok(None)
            }
            other => other?,
        };
        tx.execute(
            "INSERT INTO temp.line_map (local_id, state_id) VALUES (?1, ?2)",
            params![line, tx.last_insert_rowid()],
        )?;
    }
    tx.execute(
        "INSERT INTO main.submission_inputs (submission_id, dimension, value, amount)
         SELECT ?2, dimension, value, amount FROM local.submission_inputs WHERE submission_id = ?1",
        params![local_id, state_id],
    )?;
    Ok(Some(lines.len() as u64))
}

/// A line refused because the state holds that contract, period and dimension already.
fn held_elsewhere(extended_code: std::ffi::c_int) -> bool {
    extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        || extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::NaiveDate;

    use super::*;
    use crate::costs::grants::Grant;
    use crate::ledger::{
        Ledger, LedgerFile, LineStatus, LineUpdate, NewLine, NewSubmission, SqlValue,
        SubmissionUpdate,
    };
    use crate::period::Period;

    fn open(path: &Path) -> Ledger {
        Ledger::open_for_writing(&LedgerFile::new(path, Duration::from_secs(5))).unwrap()
    }

    /// A planned submission of one line in a run of its own, created at `at` (with the body, the
    /// row's identity across hosts).
    fn planned(ledger: &mut Ledger, contract: &str, quantity: i64, at: &str) -> i64 {
        let run = ledger.begin_submission_run("submit", None, "{}").unwrap();
        let sub = NewSubmission {
            service_key: "pg:PROD:pt-1".into(),
            contract_id: contract.into(),
            period: Period::parse(PeriodKind::Month, "2025-06").unwrap(),
            cloud: crate::clazar::Cloud::Aws,
            payload: Some(format!("{{\"{contract}\": {quantity}}}")),
            status: SubmissionStatus::Pending,
            error: None,
            retry_of: None,
            inputs: [(
                "cpu_core_hours".to_string(),
                crate::dimensions::DimensionSum {
                    value: crate::source::parse::Quantity::Int(quantity),
                    amount: Some(1.0),
                },
            )]
            .into(),
            lines: vec![NewLine {
                dimension: "cpu_core_hours".into(),
                exact_quantity: Some(quantity as f64),
                quantity: Some(quantity),
                status: LineStatus::Pending,
                message: None,
                retry_of: None,
            }],
        };
        let id = ledger.insert_submissions(run, &[sub]).unwrap()[0];
        ledger
            .conn
            .execute_batch(&format!(
                "UPDATE submissions SET created_at = '{at}' WHERE id = {id};
                 UPDATE submission_runs SET started_at = '{at}' WHERE id = {run};"
            ))
            .unwrap();
        id
    }

    /// Records Clazar's answer: `accepted`, or `rejected` for the whole request.
    fn answer(ledger: &mut Ledger, id: i64, line_status: LineStatus) {
        let line_id: i64 = ledger
            .conn
            .query_row(
                "SELECT id FROM submission_lines WHERE submission_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        let accepted = line_status == LineStatus::Accepted;
        let update = SubmissionUpdate {
            status: if accepted {
                SubmissionStatus::Answered
            } else {
                SubmissionStatus::Rejected
            },
            attempts: 1,
            http_status: Some(if accepted { 200 } else { 400 }),
            response_body: Some("{}".into()),
            error: None,
            lines: match accepted {
                true => vec![LineUpdate {
                    line_id,
                    status: LineStatus::Accepted,
                    clazar_id: None,
                    result_status: None,
                    code: None,
                    message: None,
                    errors: None,
                }],
                false => Vec::new(),
            },
        };
        ledger.record_answer(id, &update).unwrap();
    }

    fn rows(ledger: &Ledger, sql: &str) -> Vec<String> {
        let mut stmt = ledger.conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            Ok((0..n)
                .map(|i| format!("{:?}", SqlValue::from(r.get_ref(i).unwrap())))
                .collect::<Vec<_>>()
                .join(" "))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    fn copy(from: &Path, to: &Path) {
        open(from)
            .conn
            .execute("VACUUM INTO ?1", [to.to_str().unwrap()])
            .unwrap();
    }

    fn cost_fingerprint(path: &Path) -> String {
        cost_tables_fingerprint(&open(path).conn, "main").unwrap()
    }

    #[test]
    fn every_table_of_a_fresh_ledger_is_classified() {
        let dir = tempfile::tempdir().unwrap();
        check_classified(&open(&dir.path().join("l.sqlite")).conn).unwrap();
    }

    #[test]
    fn a_month_compacted_only_here_gives_way_to_the_states_records() {
        let dir = tempfile::tempdir().unwrap();
        let (state, local) = (
            dir.path().join("state.sqlite"),
            dir.path().join("local.sqlite"),
        );
        let compacted = |path: &Path, month: &str| {
            open(path)
                .conn
                .execute(
                    "INSERT INTO compacted_months (service_key, month, files, records, compacted_at)
                     VALUES ('pg:PROD:pt-1', ?1, 1, 1, '2025-09-01T00:00:00Z')",
                    [month],
                )
                .unwrap();
        };
        compacted(&state, "2025-05");
        compacted(&local, "2025-05");
        compacted(&local, "2025-06");
        let carried = carry_over(&state, &local, &empty_cost_tables()).unwrap();
        assert_eq!(carried.compactions_dropped, 1);
        assert!(!carried.kept_anything());
        assert_eq!(
            rows(&open(&state), "SELECT month FROM compacted_months"),
            ["Text(\"2025-05\")"]
        );
    }

    #[test]
    fn local_submissions_the_state_lacks_are_carried_over_under_new_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (base, state, local) = (
            dir.path().join("base.sqlite"),
            dir.path().join("state.sqlite"),
            dir.path().join("local.sqlite"),
        );
        {
            let mut l = open(&base);
            let first = planned(&mut l, "c-1", 1, "2025-07-01T00:00:00Z");
            answer(&mut l, first, LineStatus::Accepted);
        }
        copy(&base, &state);
        copy(&base, &local);
        let base_costs = cost_fingerprint(&base);
        {
            // Another host sent c-2 and pushed: its rows take ids 2 on the state.
            let mut s = open(&state);
            let theirs = planned(&mut s, "c-2", 2, "2025-07-02T00:00:00Z");
            answer(&mut s, theirs, LineStatus::Accepted);
        }
        {
            let mut l = open(&local);
            // This host: an answer to the pushed c-1 recorded after the push (covered) ...
            answer(&mut l, 1, LineStatus::Rejected);
            // ... c-3 sent by a manual submit never pushed (also id 2 here), then re-sent ...
            let mine = planned(&mut l, "c-3", 3, "2025-07-03T00:00:00Z");
            answer(&mut l, mine, LineStatus::Rejected);
            let retry = planned(&mut l, "c-3", 3, "2025-07-04T00:00:00Z");
            l.conn
                .execute_batch(&format!(
                    "UPDATE submissions SET retry_of = {mine} WHERE id = {retry};
                     UPDATE submission_lines SET retry_of = {mine} WHERE submission_id = {retry};"
                ))
                .unwrap();
            answer(&mut l, retry, LineStatus::Accepted);
            // ... c-2 planned here too but never sent (the state holds it) ...
            planned(&mut l, "c-2", 2, "2025-07-05T00:00:00Z");
            // ... and grants loaded here.
            let grant = Grant {
                user: "ada".into(),
                amount_nanos: 5,
                starts_on: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap(),
                ends_on: None,
                note: None,
                line: 2,
            };
            l.replace_cost_grants(&[grant], "grants.csv").unwrap();
        }

        let carried = carry_over(&state, &local, &base_costs).unwrap();
        assert_eq!(carried.submissions, 2);
        assert_eq!(carried.lines, 2);
        assert_eq!(carried.runs, 2);
        assert_eq!(carried.updates_dropped, 1);
        assert!(carried.cost_tables);
        assert_eq!(carried.cost_tables_dropped, None);
        assert_eq!(carried.left_out.len(), 1);
        assert_eq!(
            (
                carried.left_out[0].contract_id.as_str(),
                carried.left_out[0].status.as_str()
            ),
            ("c-2", "pending")
        );

        let s = open(&state);
        assert_eq!(
            rows(
                &s,
                "SELECT id, contract_id, status, retry_of, created_at FROM submissions ORDER BY id"
            ),
            [
                "Integer(1) Text(\"c-1\") Text(\"answered\") Null Text(\"2025-07-01T00:00:00Z\")",
                "Integer(2) Text(\"c-2\") Text(\"answered\") Null Text(\"2025-07-02T00:00:00Z\")",
                "Integer(3) Text(\"c-3\") Text(\"rejected\") Null Text(\"2025-07-03T00:00:00Z\")",
                "Integer(4) Text(\"c-3\") Text(\"answered\") Integer(3) Text(\"2025-07-04T00:00:00Z\")",
            ]
        );
        assert_eq!(
            rows(
                &s,
                "SELECT l.submission_id, l.contract_id, l.status, l.retry_of, i.value
                 FROM submission_lines l JOIN submission_inputs i USING (submission_id)
                 ORDER BY l.id"
            ),
            [
                "Integer(1) Text(\"c-1\") Text(\"accepted\") Null Integer(1)",
                "Integer(2) Text(\"c-2\") Text(\"accepted\") Null Integer(2)",
                "Integer(3) Text(\"c-3\") Text(\"rejected\") Null Integer(3)",
                "Integer(4) Text(\"c-3\") Text(\"accepted\") Integer(3) Integer(3)",
            ]
        );
        // Each carried submission points at a run of its own on the state.
        assert_eq!(
            rows(
                &s,
                "SELECT COUNT(DISTINCT run_id) FROM submissions WHERE id > 2
                 AND run_id IN (SELECT id FROM submission_runs WHERE id > 2)"
            ),
            ["Integer(2)"]
        );
        assert_eq!(rows(&s, "SELECT user FROM cost_grants"), ["Text(\"ada\")"]);
    }

    #[test]
    fn cost_tables_changed_on_both_sides_keep_the_states_and_name_the_local_sources() {
        let dir = tempfile::tempdir().unwrap();
        let (state, local) = (
            dir.path().join("state.sqlite"),
            dir.path().join("local.sqlite"),
        );
        let grant = |user: &str| Grant {
            user: user.into(),
            amount_nanos: 5,
            starts_on: NaiveDate::from_ymd_opt(2025, 6, 1).unwrap(),
            ends_on: None,
            note: None,
            line: 2,
        };
        open(&state)
            .replace_cost_grants(&[grant("ada")], "a.csv")
            .unwrap();
        open(&local)
            .replace_cost_grants(&[grant("bob")], "b.csv")
            .unwrap();
        let carried = carry_over(&state, &local, &empty_cost_tables()).unwrap();
        assert!(!carried.cost_tables);
        assert_eq!(
            carried.cost_tables_dropped,
            Some(DroppedCosts {
                billing_sources: Vec::new(),
                grants_files: vec!["b.csv".into()],
            })
        );
        assert_eq!(
            rows(&open(&state), "SELECT user FROM cost_grants"),
            ["Text(\"ada\")"]
        );
    }
}
