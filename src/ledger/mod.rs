//! The ledger: one SQLite file, the only place that speaks SQL. Opening it for writing creates and
//! migrates it (refinery, migrations embedded from `migrations/`); opening it for reading changes
//! nothing. Both refuse a file that is not a meterbook ledger, or a ledger from a newer meterbook.

mod compact;
pub mod console;
mod costs;
mod markers;
mod merge;
mod month_totals;
mod open;
mod predecessor;
mod query;
mod snapshot;
mod status;
mod submissions;
mod usage;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::error::Fatal;

pub use compact::MonthCompaction;
pub use costs::{
    CostFile, HourlyCost, MonthCheck, StoredCostFile, COST_GRANTS_SQL, HOURLY_COSTS_SQL,
    USER_SPEND_SQL,
};
pub use markers::MarkerRead;
pub use merge::{carry_over, empty_cost_tables, Carried, DroppedCosts, LeftOut};
pub use month_totals::MONTH_TOTALS_DIFFERENCES;
pub use open::LedgerFile;
use open::{inspect, migrate, Found, MigrationFailed, MigrationLock, ReaderSidecars};
pub use predecessor::ImportCounts;
pub use query::{QueryResult, SqlValue};
pub use snapshot::{
    check_snapshot, checkpoint, DiskFull, PageWrite, PagesRead, SnapshotFacts, SnapshotProblem,
};
pub use status::{LineStatus, SubmissionStatus};
pub use submissions::{
    DriftRow, LineUpdate, NewLine, NewSubmission, OutboxItem, RetryCandidate, SubmissionFilter,
    SubmissionUpdate,
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

/// An open ledger: for writing (created and migrated as needed) or for reading (as it is).
pub struct Ledger {
    conn: Connection,
    path: PathBuf,
    /// Declared after `conn`, so that it runs once the connection is closed.
    _sidecars: Option<ReaderSidecars>,
}

impl Ledger {
    /// Opens the ledger to write it: creates it when there is none yet (or the file is empty),
    /// and brings an older schema up to date, one process at a time. Every transaction is
    /// `BEGIN IMMEDIATE` and waits up to the busy timeout for another process's write, so that
    /// concurrent writers queue instead of failing. A file that is not a meterbook ledger, or a
    /// ledger from a newer meterbook, is refused before anything is written to it.
    pub fn open_for_writing(file: &LedgerFile) -> Result<Ledger> {
        let path = &file.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating folder {}", parent.display()))?;
        }
        let known = binary_schema_version();
        let found = match path.exists() {
            true => Ledger::open_read_only(file)?.found()?,
            false => Found::Nothing,
        };
        let lock = match found {
            Found::Ledger(v) if v == known => None,
            _ => Some(MigrationLock::acquire(file)?),
        };
        let mut conn =
            Connection::open(path).with_context(|| format!("opening ledger {}", path.display()))?;
        conn.busy_timeout(file.busy_timeout)?;
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -32000;",
        )
        .with_context(|| format!("setting up ledger {}", path.display()))?;
        if lock.is_some() {
            // Another process may have created or migrated it while this one waited.
            let from = match inspect(&conn, path)? {
                Found::Ledger(v) if v == known => None,
                Found::Ledger(v) => Some(v),
                Found::Nothing => Some(0),
            };
            if let Some(from) = from {
                match from {
                    0 => tracing::info!("creating ledger {}", path.display()),
                    v => tracing::info!(
                        "migrating ledger {} from schema version {v} to {known}",
                        path.display()
                    ),
                }
                migrate(&mut conn, path, from)?;
            }
        }
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            _sidecars: None,
        })
    }

    /// Opens an existing ledger to read it, as it is: read-only (SQLite refuses any write), never
    /// created, migrated or otherwise changed, and leaving no new files behind. A ledger with an
    /// older schema is read as it is, with a warning (tables and views added since are missing).
    pub fn open_for_reading(file: &LedgerFile) -> Result<Ledger> {
        let ledger = Ledger::open_read_only(file)?;
        let known = binary_schema_version();
        match ledger.found()? {
            Found::Ledger(v) if v < known => tracing::warn!(
                "ledger {} has schema version {v}, older than this meterbook's {known}: it is \
                 read as it is (tables and views added since are missing); any writing command, \
                 e.g. `meterbook ingest`, brings it up to date",
                ledger.path.display()
            ),
            Found::Nothing => tracing::warn!(
                "ledger {} is empty: it has no tables yet; any writing command, e.g. `meterbook \
                 ingest`, creates them",
                ledger.path.display()
            ),
            Found::Ledger(_) => {}
        }
        Ok(ledger)
    }

    fn open_read_only(file: &LedgerFile) -> Result<Ledger> {
        let path = &file.path;
        if !path.exists() {
            return Err(Fatal::Config(format!(
                "no ledger at {}; run `meterbook ingest` or `meterbook sync pull` first, or pass \
                 --ledger",
                path.display()
            ))
            .into());
        }
        let sidecars = ReaderSidecars::before_open(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening ledger {} read-only", path.display()))?;
        conn.busy_timeout(file.busy_timeout)?;
        Ok(Ledger {
            conn,
            path: path.to_path_buf(),
            _sidecars: sidecars,
        })
    }

    fn found(&self) -> Result<Found> {
        inspect(&self.conn, &self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the ledger is at (0 for an empty file).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(applied_schema_version(&self.conn)?.unwrap_or(0))
    }
}

/// Whether SQLite gave up waiting (for the busy timeout) for another connection's lock.
pub fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(sqlite_busy)
            || c.downcast_ref::<MigrationFailed>().is_some_and(|m| m.busy)
    })
}

fn sqlite_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy)
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
