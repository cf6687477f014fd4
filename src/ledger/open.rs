//! Opening the ledger file: what a file at the ledger's path is (nothing yet, a meterbook ledger at
//! some schema version, or something else that must be left alone), the lock that lets only one
//! process create or migrate a ledger at a time, and the clean-up after a read-only connection
//! (which must leave no `-wal`/`-shm` files behind where there were none).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::embedded;
use crate::error::Fatal;

/// Where the ledger is, and how long to wait for another process using it.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerFile {
    pub path: PathBuf,
    /// How long a write waits for another process's write to finish (SQLite's busy timeout), and
    /// a creation or migration for another process's.
    pub busy_timeout: Duration,
}

impl LedgerFile {
    pub fn new(path: impl Into<PathBuf>, busy_timeout: Duration) -> LedgerFile {
        LedgerFile {
            path: path.into(),
            busy_timeout,
        }
    }
}

/// What a file at the ledger's path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Found {
    /// An empty file, or a SQLite database without tables: a ledger yet to be created.
    Nothing,
    /// A meterbook ledger at this schema version.
    Ledger(i64),
}

/// `path` with `suffix` appended to its file name (`ledger.sqlite-wal`, ...).
pub(super) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The advice every refusal of a file ends with.
fn left_alone(path: &Path) -> String {
    format!(
        "meterbook left {} as it is; pass the ledger's path with --ledger (or METERBOOK_LEDGER), or \
         a new path to start a ledger",
        path.display()
    )
}

/// Says what the database on `conn` is, and refuses (as a configuration error, exit code 2)
/// anything that is not a meterbook ledger this binary can use: a file that is not SQLite, a
/// SQLite database of another program, a ledger from a newer meterbook. Reads only.
pub(super) fn inspect(conn: &Connection, path: &Path) -> Result<Found> {
    let tables: Vec<String> = match table_names(conn) {
        Ok(t) => t,
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            return Err(Fatal::Config(format!(
                "{} is not a SQLite database; {}",
                path.display(),
                left_alone(path)
            ))
            .into())
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the schema of ledger {}", path.display()))
        }
    };
    if tables.is_empty() {
        return Ok(Found::Nothing);
    }
    if !tables.iter().any(|t| t == "refinery_schema_history") {
        return Err(Fatal::Config(format!(
            "{} is a SQLite database, but not a meterbook ledger (it has tables such as {}, and no \
             refinery_schema_history); {}",
            path.display(),
            tables
                .iter()
                .take(3)
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", "),
            left_alone(path)
        ))
        .into());
    }
    let applied = applied_migrations(conn)
        .with_context(|| format!("reading the schema version of ledger {}", path.display()))?;
    let known = super::binary_schema_version();
    let version = applied.iter().map(|(v, _)| *v).max().unwrap_or(0);
    if version > known {
        return Err(Fatal::Config(format!(
            "ledger {} has schema version {version}, but this meterbook knows versions up to \
             {known}; use a newer meterbook (the ledger was left unchanged)",
            path.display()
        ))
        .into());
    }
    let runner = embedded::migrations::runner();
    let ours = runner.get_migrations();
    for (v, name) in &applied {
        if !ours
            .iter()
            .any(|m| i64::from(m.version()) == *v && m.name() == name)
        {
            return Err(Fatal::Config(format!(
                "{} is not a meterbook ledger: its migration {v} is '{name}', which is not one of \
                 meterbook's; {}",
                path.display(),
                left_alone(path)
            ))
            .into());
        }
    }
    Ok(Found::Ledger(version))
}

fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    let names = stmt.query_map([], |r| r.get(0))?;
    names.collect()
}

/// The (version, name) of every migration recorded in the ledger.
fn applied_migrations(conn: &Connection) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare("SELECT version, name FROM refinery_schema_history")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// An exclusive lock on `LEDGER.migration.lock` (flock), held while a ledger is created or
/// migrated, so that two processes starting on a new or older ledger at once do not both
/// migrate it: the second waits and then finds it up to date. The file is left in place (a lock
/// file removed while others wait on it would let two holders in).
pub(super) struct MigrationLock {
    _file: File,
}

impl MigrationLock {
    pub(super) fn acquire(ledger: &LedgerFile) -> Result<MigrationLock> {
        let path = sidecar(&ledger.path, ".migration.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        let deadline = Instant::now() + ledger.busy_timeout;
        loop {
            // SAFETY: flock(2) on a descriptor owned by `file`, which outlives the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(MigrationLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err).with_context(|| format!("locking {}", path.display()));
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "another meterbook process has been creating or migrating ledger {} for \
                     longer than the busy timeout ({}s, --busy-timeout); try again when it is done",
                    ledger.path.display(),
                    ledger.busy_timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Held beside a read-only connection that found no write-ahead log: SQLite creates `-wal` and
/// `-shm` files for it (a WAL database needs them even to be read) but a read-only connection
/// never removes them. Once that connection is closed, a read-write connection is opened and
/// closed without writing: when it is the last one on the ledger, SQLite checkpoints the empty
/// log and deletes both files itself; when another process still has the ledger open, they are
/// that process's, and are left to it.
pub(super) struct ReaderSidecars {
    path: PathBuf,
}

impl ReaderSidecars {
    /// `Some` when the ledger at `path` has no write-ahead log yet.
    pub(super) fn before_open(path: &Path) -> Option<ReaderSidecars> {
        (!sidecar(path, "-wal").exists()).then(|| ReaderSidecars {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ReaderSidecars {
    fn drop(&mut self) {
        if !sidecar(&self.path, "-wal").exists() && !sidecar(&self.path, "-shm").exists() {
            return;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let Ok(conn) = Connection::open_with_flags(&self.path, flags) else {
            return;
        };
        let joined = conn
            .execute_batch("PRAGMA query_only = ON")
            .and_then(|()| conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(())));
        if let Err(e) = joined.and_then(|()| conn.close().map_err(|(_, e)| e)) {
            tracing::debug!(
                "could not remove the -wal and -shm files of {}: {e}",
                self.path.display()
            );
        }
    }
}
