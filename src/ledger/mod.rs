//! The ledger: one SQLite file, the only place that speaks SQL. Opening it creates and migrates it
//! (refinery, migrations embedded from `migrations/`), and refuses a ledger from a newer meterbook.

mod costs;
mod markers;
mod predecessor;
mod query;
mod snapshot;
mod submissions;
mod usage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::error::Fatal;

pub use costs::{CostFile, HourlyCost, MonthCheck, StoredCostFile};
pub use markers::MarkerRead;
pub use predecessor::ImportCounts;
pub use query::{QueryResult, SqlValue};
pub use snapshot::{check_snapshot, checkpoint, DiskFull, SnapshotProblem};
pub use submissions::{
    DriftRow, LineUpdate, NewLine, NewSubmission, OutboxItem, RetryCandidate, SubmissionFilter,
    SubmissionUpdate, HOLDING_STATUSES,
};
pub use usage::{FileVersion, HourTotals, KnownFile, RunCounts, StoreOutcome, Stored};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The newest schema version this binary knows.
pub fn binary_schema_version() -> i64 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap_or(0)
}

/// An open, migrated ledger.
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) and migrates the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating folder {}", parent.display()))?;
        }
        let mut conn =
            Connection::open(path).with_context(|| format!("opening ledger {}", path.display()))?;
        check_schema_version(&conn, path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -32000;",
        )
        .with_context(|| format!("setting up ledger {}", path.display()))?;
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("migrating ledger {}", path.display()))?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing ledger read-only: any write fails with SQLite's own error.
    pub fn open_read_only(path: &Path) -> Result<Ledger> {
        if !path.exists() {
            return Err(Fatal::Config(format!(
                "no ledger at {}; run `meterbook ingest` first or pass --ledger",
                path.display()
            ))
            .into());
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening ledger {} read-only", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        check_schema_version(&conn, path)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the ledger is at (0 for an empty file).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(applied_schema_version(&self.conn)?.unwrap_or(0))
    }
}

fn applied_schema_version(conn: &Connection) -> Result<Option<i64>> {
    let has_history: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refinery_schema_history'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_history.is_none() {
        return Ok(None);
    }
    Ok(conn.query_row(
        "SELECT MAX(version) FROM refinery_schema_history",
        [],
        |r| r.get(0),
    )?)
}

/// Refuses a ledger migrated by a newer meterbook, before anything is changed.
fn check_schema_version(conn: &Connection, path: &Path) -> Result<()> {
    let applied = applied_schema_version(conn)
        .with_context(|| format!("reading the schema version of ledger {}", path.display()))?;
    let known = binary_schema_version();
    match applied {
        Some(v) if v > known => Err(Fatal::Config(format!(
            "ledger {} has schema version {v}, but this meterbook knows versions up to {known}; \
             use a newer meterbook (the ledger was left unchanged)",
            path.display()
        ))
        .into()),
        _ => Ok(()),
    }
}
