//! Opening the ledger file: what a file at the ledger's path is (nothing yet, a meterbook ledger at
//! some schema version, or something else that must be left alone), the lock that lets only one
//! process create or migrate a ledger at a time, migrating it (with refinery's errors said as what
//! to do), and the clean-up after a read-only connection (which must leave no `-wal`/`-shm` files
//! behind where there were none).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use refinery::error::Kind;
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

/// Brings the ledger at `path`, at schema version `from` (0 for a new one), up to this binary's
/// migrations, each in a transaction of its own. What refinery refuses or what fails is said as
/// what to do: an applied migration that differs from this binary's (edited after its release)
/// changes nothing and is a configuration error; a failed migration names itself, SQLite's
/// message and the version the ledger is left at.
pub(super) fn migrate(conn: &mut Connection, path: &Path, from: i64) -> Result<()> {
    let runner = embedded::migrations::runner();
    let ours = runner.get_migrations().to_vec();
    match runner.run(conn) {
        Ok(_) => Ok(()),
        Err(e) => Err(migration_error(&e, path, from, &ours)),
    }
}

fn migration_error(
    e: &refinery::Error,
    path: &Path,
    from: i64,
    ours: &[refinery::Migration],
) -> anyhow::Error {
    let ledger = path.display();
    let use_the_right_one = "nothing was changed; open it with the meterbook that migrated it, or \
         take the state with `meterbook sync pull --discard-local`. (To a meterbook developer: a \
         released migration must never change; restore it and put the change in a new migration)";
    match e.kind() {
        Kind::DivergentVersion(applied, here) => Fatal::Config(format!(
            "ledger {ledger} was migrated by a meterbook whose migration {} ({applied}) differs \
             from this one's ({here}); {use_the_right_one}",
            applied.version()
        ))
        .into(),
        Kind::MissingVersion(m) => Fatal::Config(format!(
            "ledger {ledger} and this meterbook disagree about migration {} ({m}): one has it and \
             the other does not; {use_the_right_one}",
            m.version()
        ))
        .into(),
        // Only a migration that failed to apply comes with a report (of those applied before it).
        Kind::Connection(_, sqlite) if e.report().is_some() => {
            let applied = e.report().map_or(&[][..], |r| r.applied_migrations());
            let left_at = applied
                .iter()
                .map(|m| i64::from(m.version()))
                .max()
                .unwrap_or(from)
                .max(from);
            let failed = ours
                .iter()
                .filter(|m| i64::from(m.version()) > left_at)
                .min_by_key(|m| m.version())
                .map_or_else(|| "?".to_string(), |m| m.to_string());
            MigrationFailed {
                message: format!(
                    "migrating ledger {ledger}: migration {failed} failed: {sqlite}; the ledger \
                     is left at schema version {left_at} (a migration is applied whole or not at \
                     all) and the next writing command tries again"
                ),
                busy: sqlite
                    .downcast_ref::<rusqlite::Error>()
                    .is_some_and(super::sqlite_busy),
            }
            .into()
        }
        _ => anyhow::anyhow!("migrating ledger {ledger}: {e}"),
    }
}

/// A migration that failed to apply.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct MigrationFailed {
    message: String,
    /// SQLite gave up waiting for another connection's lock.
    pub(super) busy: bool,
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::ledger::{binary_schema_version, Ledger};

    /// Every released migration, by version, name and SHA-256 of its SQL. A ledger records what
    /// it was migrated with; refinery refuses one whose applied migration differs from the
    /// binary's. Released migrations are therefore never edited: a schema change is a new
    /// migration. Add a line here when a migration is released (merged to main).
    const RELEASED: &[(i32, &str, &str)] = &[
        (
            1,
            "usage_ledger",
            "0639388dde9c129c3a2e4431ba3efce6f2e82d85119d398672b8201dd34eb2fd",
        ),
        (
            2,
            "export_markers",
            "b32667f60fec262fc59e654813ebf515b935d3c74d4f259a57165dc88f58662c",
        ),
        (
            3,
            "submissions",
            "720e4c3ccd71c500fa2998db73b2fe53f475b348d0adf579cf1cd0ab176744fa",
        ),
        (
            4,
            "cloud_costs",
            "7fb4d42fb67a8f7a6c4e041f2422a4d8b9734f8001a51ba98f355df07f8917a9",
        ),
        (
            5,
            "predecessor_imports",
            "bcca86593106e95f422236ecbaa3b2d73f63af57a33624e5c19214ae2d11c62e",
        ),
        (
            6,
            "records_clustered_by_period",
            "91250e1057981b9ce32e03b73006891c6b398e394d0fe9044b564df3d0e24303",
        ),
        (
            7,
            "cost_grants",
            "80ad0347e34868c8600eba19d9349263c159b0c95efe200aeb4988fe09af3497",
        ),
        (
            8,
            "bounded_usage_and_source_problems",
            "8808b799a9681d967512f6064d798f26e7db591678e12a9b72ae715ac2ad1121",
        ),
        (
            9,
            "imported_failures_cleared_by_resubmission",
            "645a6865591775b64c271541b370f3a3f036c748ff5577d3aa6c5d666759dada",
        ),
        (
            10,
            "compacted_usage",
            "6345980c916715d4eb46392d4dd0b5d01fae57750216b1b0b0fbc48e657aa510",
        ),
        (
            11,
            "maintained_month_totals",
            "6443a6a6aa577968fc7d786a2ec3b681f153ee9c2c4c8e5f4fd0c42ae91d4a73",
        ),
    ];

    #[test]
    fn released_migrations_are_never_edited() {
        let runner = embedded::migrations::runner();
        let ours = runner.get_migrations();
        for &(version, name, digest) in RELEASED {
            let m = ours
                .iter()
                .find(|m| m.version() == version)
                .unwrap_or_else(|| panic!("released migration V{version}__{name} was removed"));
            let sql = m.sql().expect("an embedded migration has its SQL");
            let found = hex::encode(Sha256::digest(sql.as_bytes()));
            assert!(
                m.name() == name && found == digest,
                "migrations/V{version}__{name}.sql was released and has changed (now V{version}__{} \
                 with SHA-256 {found}): ledgers migrated with it are refused as divergent. Undo the \
                 edit and put the change in a new migration (the next number).",
                m.name()
            );
        }
    }

    fn ledger_at(dir: &Path) -> LedgerFile {
        let file = LedgerFile::new(dir.join("l.sqlite"), Duration::from_secs(5));
        drop(Ledger::open_for_writing(&file).unwrap());
        file
    }

    /// The ledger made to look as if migrated up to `version` only, then changed by `sql`.
    fn rewind(file: &LedgerFile, version: i64, sql: &str) {
        let conn = Connection::open(&file.path).unwrap();
        conn.execute(
            "DELETE FROM refinery_schema_history WHERE version > ?1",
            [version],
        )
        .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    #[test]
    fn a_ledger_migrated_with_an_edited_migration_is_refused_naming_it_and_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = ledger_at(dir.path());
        // Migrated by a meterbook whose V3 differed, then not yet to the newest version.
        rewind(
            &file,
            binary_schema_version() - 1,
            "UPDATE refinery_schema_history SET checksum = '1' WHERE version = 3",
        );
        let before = std::fs::read(&file.path).unwrap();
        let err = Ledger::open_for_writing(&file).err().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("was migrated by a meterbook whose migration 3 (V3__submissions) differs from this one's")
                && text.contains("nothing was changed"),
            "{text}"
        );
        assert_eq!(
            crate::error::exit_code_for(&err),
            crate::error::exit::CONFIG
        );
        assert_eq!(std::fs::read(&file.path).unwrap(), before);
    }

    #[test]
    fn a_failed_migration_names_itself_sqlites_message_and_the_version_left_at() {
        let dir = tempfile::tempdir().unwrap();
        let file = ledger_at(dir.path());
        // The view V9 replaces is gone: its DROP VIEW fails.
        rewind(&file, 8, "DROP VIEW submission_failures");
        let err = Ledger::open_for_writing(&file).err().unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("migration V9__imported_failures_cleared_by_resubmission failed")
                && text.contains("no such view: submission_failures")
                && text.contains("the ledger is left at schema version 8"),
            "{text}"
        );
        assert_eq!(
            crate::error::exit_code_for(&err),
            crate::error::exit::FAILURE
        );
        let version: i64 = Connection::open(&file.path)
            .unwrap()
            .query_row(
                "SELECT MAX(version) FROM refinery_schema_history",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 8);
    }
}
