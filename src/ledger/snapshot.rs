//! The ledger's pages for sync, and the checks a state must pass.
//!
//! - [`Ledger::read_pages`] reads every page through SQLite's `sqlite_dbpage` virtual table inside
//!   ONE read transaction, and the facts of that same snapshot (schema version, cost tables,
//!   optionally `PRAGMA integrity_check`). The pager serves each page as of the transaction's
//!   snapshot, whether it lives in the main file or in the write-ahead log, so another process
//!   writing meanwhile cannot tear the read, and nothing is copied or written.
//! - [`PageWrite`] replaces pages of the ledger in place through the same table inside ONE write
//!   transaction (`BEGIN IMMEDIATE`, committed with a full sync): either every changed page is
//!   the new one, or none is.
//! - [`check_snapshot`] checks a private copy: a SQLite database, `PRAGMA integrity_check` (when
//!   asked), and a schema this meterbook knows.
//! - `VACUUM INTO` ([`Ledger::snapshot_into`]) makes a private copy, for carrying local changes over.
//!
//! `sqlite_dbpage` needs SQLite compiled with `SQLITE_ENABLE_DBPAGE_VTAB`; the repository's
//! `.cargo/config.toml` sets it for rusqlite's bundled build (`LIBSQLITE3_FLAGS`).

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::merge::cost_tables_fingerprint;
use super::{applied_schema_version, binary_schema_version, Ledger, LedgerFile};

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

/// What a checked snapshot holds, beyond its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub schema_version: i64,
    /// The fingerprint of its cost tables (see [`super::carry_over`]).
    pub cost_tables: String,
}

/// What [`Ledger::read_pages`] read: the page geometry and the facts of the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagesRead {
    pub page_size: u32,
    pub page_count: u32,
    pub facts: SnapshotFacts,
}

/// The page SQLite never uses (it holds the lock bytes at offset 1 GiB): `sqlite_dbpage` reads it
/// as zeros and refuses to write it.
fn pending_byte_page(page_size: u32) -> u32 {
    (0x4000_0000 / page_size) + 1
}

const ALL_PAGES: &str = "SELECT data FROM sqlite_dbpage ORDER BY pgno";
const ONE_PAGE: &str = "SELECT data FROM sqlite_dbpage WHERE pgno = ?1";

/// Says what to do when `sqlite_dbpage` is missing: this SQLite was built without it.
fn dbpage_context(path: &Path) -> String {
    format!(
        "reading the pages of ledger {} (this needs SQLite's sqlite_dbpage table: build meterbook \
         with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB, as the repository's \
         .cargo/config.toml does)",
        path.display()
    )
}

/// Calls `each` with every page of the database on `conn`, in order, as the current transaction
/// sees it; returns the page size and count (0 and 0 for a database without pages).
fn each_page(
    conn: &Connection,
    path: &Path,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(u32, u32)> {
    let mut stmt = conn
        .prepare_cached(ALL_PAGES)
        .with_context(|| dbpage_context(path))?;
    let mut rows = stmt.query([]).with_context(|| dbpage_context(path))?;
    let (mut page_size, mut count) = (0u32, 0u32);
    while let Some(row) = rows.next().with_context(|| dbpage_context(path))? {
        let data = row.get_ref(0)?.as_blob()?;
        page_size = data.len() as u32;
        count += 1;
        each(data)?;
    }
    Ok((page_size, count))
}

/// The facts of the database on `conn` as the current transaction sees it, after
/// `PRAGMA integrity_check` when `integrity_check` is set.
fn facts(
    conn: &Connection,
    integrity_check: bool,
) -> std::result::Result<SnapshotFacts, SnapshotProblem> {
    let not_sqlite = |e: rusqlite::Error| SnapshotProblem::NotSqlite(e.to_string());
    if integrity_check {
        let mut stmt = conn.prepare("PRAGMA integrity_check").map_err(not_sqlite)?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(not_sqlite)?;
        if lines != ["ok"] {
            return Err(SnapshotProblem::Corrupt(lines.join("; ")));
        }
    }
    let found = applied_schema_version(conn)
        .map_err(|e| SnapshotProblem::NotSqlite(format!("{e:#}")))?
        .unwrap_or(0);
    let known = binary_schema_version();
    if found > known {
        return Err(SnapshotProblem::NewerSchema { found, known });
    }
    Ok(SnapshotFacts {
        schema_version: found,
        cost_tables: cost_tables_fingerprint(conn, "main")
            .map_err(|e| SnapshotProblem::NotSqlite(format!("{e:#}")))?,
    })
}

impl Ledger {
    /// Reads every page of the ledger, in order, and the facts of the same snapshot, inside one
    /// read transaction (see the module documentation); with `integrity_check`, that snapshot
    /// must also pass `PRAGMA integrity_check`. Nothing is written.
    pub fn read_pages(
        &self,
        integrity_check: bool,
        each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<PagesRead> {
        let path = self.path.as_path();
        self.conn.execute_batch("BEGIN")?;
        let read = (|| {
            let (page_size, page_count) = each_page(&self.conn, path, each)?;
            let facts = facts(&self.conn, integrity_check).map_err(|problem| {
                anyhow::anyhow!("ledger {} cannot be pushed: {problem}", path.display())
            })?;
            Ok(PagesRead {
                page_size,
                page_count,
                facts,
            })
        })();
        // A read transaction has nothing to commit; ending it lets checkpoints go on.
        self.conn.execute_batch("ROLLBACK")?;
        read
    }

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

/// The ledger with pages being replaced in place, in one write transaction: other writers wait
/// (up to their busy timeout) until it is committed or dropped; dropped uncommitted, nothing
/// changed. Opened without migrating: the pages it receives are another version of the ledger.
pub struct PageWrite {
    conn: Connection,
    path: std::path::PathBuf,
    page_size: u32,
    page_count: u32,
}

impl PageWrite {
    /// Opens the ledger (which must exist) and begins the write transaction.
    pub fn begin(file: &LedgerFile) -> Result<PageWrite> {
        let path = &file.path;
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .with_context(|| format!("opening ledger {}", path.display()))?;
        conn.busy_timeout(file.busy_timeout)?;
        // The commit is durable before the sync record names the new generation.
        conn.execute_batch("PRAGMA synchronous = FULL; BEGIN IMMEDIATE")
            .with_context(|| format!("beginning a write to ledger {}", path.display()))?;
        let (page_size, page_count): (u32, u32) = conn.query_row(
            "SELECT (SELECT page_size FROM pragma_page_size), (SELECT page_count FROM pragma_page_count)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(PageWrite {
            conn,
            path: path.clone(),
            page_size,
            page_count,
        })
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// Calls `each` with every page, in order, as this transaction sees them.
    pub fn read_all(&self, each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        each_page(&self.conn, &self.path, each).map(drop)
    }

    /// Calls `each` with pages `first..=last`, as this transaction sees them (written ones too).
    /// Only pages the ledger had when the transaction began can be read: SQLite shows pages
    /// appended by [`PageWrite::write_page`] once they are committed.
    pub fn read_range(
        &self,
        first: u32,
        last: u32,
        mut each: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare_cached(ONE_PAGE)
            .with_context(|| dbpage_context(&self.path))?;
        for pgno in first..=last {
            let data: Vec<u8> = stmt.query_row([pgno], |r| r.get(0))?;
            each(&data)?;
        }
        Ok(())
    }

    /// Replaces page `pgno` (or appends it, one past the end). The page SQLite never uses is
    /// skipped: it reads as zeros, as it must be.
    pub fn write_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        if pgno == pending_byte_page(self.page_size) {
            anyhow::ensure!(
                data.iter().all(|b| *b == 0),
                "page {pgno} of a state is SQLite's lock-byte page, but it is not empty"
            );
            return Ok(());
        }
        self.conn
            .prepare_cached("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")
            .with_context(|| dbpage_context(&self.path))?
            .execute(rusqlite::params![pgno, data])
            .with_context(|| format!("writing page {pgno} of ledger {}", self.path.display()))?;
        self.page_count = self.page_count.max(pgno);
        Ok(())
    }

    /// Drops every page after `page_count` when the transaction commits.
    pub fn truncate(&mut self, page_count: u32) -> Result<()> {
        if page_count < self.page_count {
            self.conn
                .execute(
                    "INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, NULL)",
                    [page_count + 1],
                )
                .with_context(|| format!("truncating ledger {}", self.path.display()))?;
            self.page_count = page_count;
        }
        Ok(())
    }

    /// Commits every page written (durably: `synchronous = FULL`).
    pub fn commit(self) -> Result<()> {
        match self.conn.execute_batch("COMMIT") {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::DiskFull => {
                Err(DiskFull {
                    path: self.path.display().to_string(),
                }
                .into())
            }
            other => other.with_context(|| format!("committing ledger {}", self.path.display())),
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

/// Checks a private snapshot file (`PRAGMA integrity_check` only with `integrity_check`) and says
/// what it holds.
pub fn check_snapshot(
    path: &Path,
    integrity_check: bool,
) -> std::result::Result<SnapshotFacts, SnapshotProblem> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| SnapshotProblem::NotSqlite(e.to_string()))?;
    facts(&conn, integrity_check)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ledger(path: &Path) -> LedgerFile {
        LedgerFile::new(path, Duration::from_secs(5))
    }

    #[test]
    fn sqlite_is_built_with_the_dbpage_table() {
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            options.iter().any(|o| o == "ENABLE_DBPAGE_VTAB"),
            "LIBSQLITE3_FLAGS from .cargo/config.toml was not honoured: {options:?}"
        );
    }

    #[test]
    fn pages_read_are_the_file_and_a_concurrent_writer_does_not_change_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite");
        let writer = Ledger::open_for_writing(&ledger(&path)).unwrap();
        writer
            .conn
            .execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(20000));")
            .unwrap();
        let reader = Ledger::open_for_reading(&ledger(&path)).unwrap();
        let mut pages = Vec::new();
        let mut first = true;
        let read = reader
            .read_pages(true, |page| {
                if first {
                    // Written while the read is under way: not in what it reads.
                    writer
                        .conn
                        .execute("INSERT INTO t VALUES (zeroblob(50000))", [])
                        .unwrap();
                    first = false;
                }
                pages.extend_from_slice(page);
                Ok(())
            })
            .unwrap();
        assert_eq!(read.page_size, 4096);
        assert_eq!(pages.len(), read.page_count as usize * 4096);
        // The bytes read are a database holding exactly the first row.
        let copy = dir.path().join("copy.sqlite");
        std::fs::write(&copy, &pages).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(check_snapshot(&copy, true).unwrap(), read.facts);
    }

    #[test]
    fn pages_written_in_place_replace_the_content_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.sqlite"), dir.path().join("b.sqlite"));
        for (path, rows) in [(&a, 3), (&b, 40)] {
            let l = Ledger::open_for_writing(&ledger(path)).unwrap();
            l.conn
                .execute_batch(&format!(
                    "CREATE TABLE t (x BLOB);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
                     INSERT INTO t SELECT zeroblob(3000) FROM n;"
                ))
                .unwrap();
        }
        let pages_of = |path: &Path| {
            let mut pages = Vec::new();
            Ledger::open_for_reading(&ledger(path))
                .unwrap()
                .read_pages(false, |p| {
                    pages.push(p.to_vec());
                    Ok(())
                })
                .unwrap();
            pages
        };
        let (small, large) = (pages_of(&a), pages_of(&b));
        let count = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };

        // Dropped before commit: nothing changed.
        let mut write = PageWrite::begin(&ledger(&a)).unwrap();
        for (i, page) in large.iter().enumerate() {
            write.write_page(i as u32 + 1, page).unwrap();
        }
        drop(write);
        assert_eq!(count(&a), 3);

        // Grown to the larger content, then shrunk back to the smaller one.
        let mut write = PageWrite::begin(&ledger(&a)).unwrap();
        for (i, page) in large.iter().enumerate() {
            write.write_page(i as u32 + 1, page).unwrap();
        }
        write.commit().unwrap();
        assert_eq!(count(&a), 40);
        let mut write = PageWrite::begin(&ledger(&a)).unwrap();
        assert_eq!(write.page_count() as usize, large.len());
        for (i, page) in small.iter().enumerate() {
            write.write_page(i as u32 + 1, page).unwrap();
        }
        write.truncate(small.len() as u32).unwrap();
        write.commit().unwrap();
        assert_eq!(count(&a), 3);
        assert_eq!(pages_of(&a).len(), small.len());
        assert_eq!(
            check_snapshot(&a, true).unwrap().schema_version,
            binary_schema_version()
        );
    }
}
