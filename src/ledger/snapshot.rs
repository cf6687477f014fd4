//! Consistent copies of the ledger for sync: `VACUUM INTO` a new file (one read transaction, so a
//! concurrent writer cannot tear the copy, and the live file is never uploaded), and the checks a
//! copy must pass before it is uploaded or installed: a SQLite database, `PRAGMA integrity_check`,
//! and a schema this meterbook knows.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::merge::cost_tables_fingerprint;
use super::{applied_schema_version, binary_schema_version, Ledger};

/// Why a snapshot file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotProblem {
    #[error("it is not a readable SQLite database ({0})")]
    NotSqlite(String),
    #[error("PRAGMA integrity_check failed: {0}")]
    Corrupt(String),
    #[error("it has schema version {found}, but this meterbook knows versions up to {known}; use a newer meterbook")]
    NewerSchema { found: i64, known: i64 },
}

/// The disk filled up while writing a file; the message says so plainly.
#[derive(Debug, thiserror::Error)]
#[error("no space left on the device while writing {path}; free some space and try again")]
pub struct DiskFull {
    pub path: String,
}

impl Ledger {
    /// Writes a consistent copy of the ledger to `dest`, which must not exist or be empty.
    pub fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let target = dest
            .to_str()
            .with_context(|| format!("snapshot path {} is not UTF-8", dest.display()))?;
        match self.conn.execute("VACUUM INTO ?1", [target]) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DiskFull => {
                Err(DiskFull {
                    path: dest.display().to_string(),
                }
                .into())
            }
            Err(e) => Err(e).with_context(|| {
                format!(
                    "copying ledger {} to {}",
                    self.path.display(),
                    dest.display()
                )
            }),
        }
    }
}

/// Empties the write-ahead log of the ledger at `path` into its main file, so that the file alone
/// is the whole ledger and can be replaced. Opens it without migrating (it is about to be replaced).
/// Fails when another process holds the ledger open; a ledger too damaged to open is left to the
/// caller to replace.
pub fn checkpoint(path: &Path) -> Result<()> {
    let Ok(conn) = Connection::open(path) else {
        return Ok(());
    };
    let busy: i64 = match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)) {
        Ok(busy) => busy,
        Err(e) => {
            tracing::warn!("could not checkpoint ledger {}: {e}", path.display());
            return Ok(());
        }
    };
    if busy != 0 {
        anyhow::bail!(
            "ledger {} is in use by another process; stop it and try again",
            path.display()
        );
    }
    Ok(())
}

/// What a checked snapshot holds, beyond its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub schema_version: i64,
    /// The fingerprint of its cost tables (see [`super::carry_over`]).
    pub cost_tables: String,
}

/// Checks a snapshot file and says what it holds.
pub fn check_snapshot(path: &Path) -> std::result::Result<SnapshotFacts, SnapshotProblem> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| SnapshotProblem::NotSqlite(e.to_string()))?;
    let mut stmt = conn
        .prepare("PRAGMA integrity_check")
        .map_err(|e| SnapshotProblem::NotSqlite(e.to_string()))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| SnapshotProblem::NotSqlite(e.to_string()))?;
    if lines != ["ok"] {
        return Err(SnapshotProblem::Corrupt(lines.join("; ")));
    }
    let found = applied_schema_version(&conn)
        .map_err(|e| SnapshotProblem::NotSqlite(e.to_string()))?
        .unwrap_or(0);
    let known = binary_schema_version();
    if found > known {
        return Err(SnapshotProblem::NewerSchema { found, known });
    }
    Ok(SnapshotFacts {
        schema_version: found,
        cost_tables: cost_tables_fingerprint(&conn, "main")
            .map_err(|e| SnapshotProblem::NotSqlite(format!("{e:#}")))?,
    })
}
