//! The console's view of the ledger: one read-only connection (opened with the same rules as
//! `meterbook sql`: never created, migrated or written), opened again when the file at the
//! ledger's path is replaced (`sync pull` renames a new file over it). Each request reads in one
//! read transaction, so its numbers agree with each other while other processes ingest or submit.
//!
//! The results of the queries marked expensive (the month's usage, pending periods, drift,
//! unattributed usage: a few milliseconds each since migration V11 keeps monthly totals) are kept
//! while SQLite's `data_version` on this connection says nothing was committed since (any commit
//! by any process changes it): a long table is paged from one result, and a changed ledger is
//! never shown from before the change.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::error::Fatal;
use crate::ledger::console::{Query, Rows};
use crate::ledger::{binary_schema_version, Ledger, LedgerFile};

/// Rows of expensive results kept at most (all entries together); a larger result is not kept.
const MAX_CACHED_ROWS: usize = 200_000;

pub struct Reader {
    file: LedgerFile,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: Option<Open>,
    /// Counts openings, so that results kept from an earlier connection are never taken for
    /// this one's (data_version is per connection).
    openings: u64,
    cache: Cache,
}

struct Open {
    ledger: Ledger,
    /// (device, inode) of the file it opened.
    identity: (u64, u64),
}

#[derive(Default)]
struct Cache {
    /// (opening, data_version) the entries were computed at.
    version: Option<(u64, i64)>,
    entries: HashMap<Query, Arc<Rows>>,
    rows: usize,
}

/// One request's consistent view of the ledger.
pub struct Snapshot<'a> {
    ledger: &'a Ledger,
    cache: &'a mut Cache,
    /// The ledger's file, for pages that say what they read.
    pub path: String,
}

/// Some rows of a query, and whether there are more.
#[derive(Debug, Clone)]
pub struct Page {
    pub rows: Rows,
    pub offset: u64,
    pub limit: u64,
    pub more: bool,
    /// How many rows the whole query has, when known without counting.
    pub total: Option<u64>,
    /// The statement that gives exactly these rows.
    pub query: Query,
}

impl Reader {
    pub fn new(file: LedgerFile) -> Reader {
        Reader {
            file,
            state: Mutex::default(),
        }
    }

    pub fn file(&self) -> &LedgerFile {
        &self.file
    }

    /// Runs `f` over one read transaction of the ledger. Requests take turns on the one
    /// connection (SQLite connections are not shared between threads).
    pub fn read<T>(&self, f: impl FnOnce(&mut Snapshot<'_>) -> Result<T>) -> Result<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let identity = identity(&self.file)?;
        if state.open.as_ref().map(|o| o.identity) != Some(identity) {
            // Closed first: the old connection's clean-up must not race the new one's opening.
            state.open = None;
            let ledger = Ledger::open_for_reading(&self.file)?;
            state.openings += 1;
            state.open = Some(Open { ledger, identity });
        }
        let State {
            open,
            openings,
            cache,
        } = &mut *state;
        let ledger = &open.as_ref().expect("opened above").ledger;
        let result = ledger.in_read_transaction(|ledger, data_version| {
            let known = binary_schema_version();
            let version = ledger.schema_version()?;
            if version != known {
                return Err(Fatal::Config(format!(
                    "ledger {} has schema version {version}, and this meterbook's console reads \
                     version {known} only; {}",
                    self.file.path.display(),
                    if version < known {
                        "any writing command (e.g. `meterbook ingest`) brings it up to date"
                    } else {
                        "use the meterbook that wrote it"
                    }
                ))
                .into());
            }
            let now = (*openings, data_version);
            if cache.version != Some(now) {
                cache.entries.clear();
                cache.rows = 0;
                cache.version = Some(now);
            }
            let mut snapshot = Snapshot {
                ledger,
                cache,
                path: self.file.path.display().to_string(),
            };
            f(&mut snapshot)
        });
        if result.is_err() {
            // A connection that failed is opened afresh next time (the file may have been
            // replaced by one this connection cannot read).
            state.open = None;
        }
        result
    }
}

fn identity(file: &LedgerFile) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(&file.path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::Error::from(Fatal::Config(format!(
            "no ledger at {}; run `meterbook ingest` or `meterbook sync pull` first, or pass \
             --ledger",
            file.path.display()
        ))),
        _ => anyhow::Error::from(e).context(format!("reading {}", file.path.display())),
    })?;
    Ok((meta.dev(), meta.ino()))
}

impl Snapshot<'_> {
    /// The whole result of `q`; an expensive one is kept for the next request while the ledger
    /// is unchanged.
    pub fn rows(&mut self, q: &Query) -> Result<Arc<Rows>> {
        if let Some(rows) = self.cache.entries.get(q) {
            return Ok(rows.clone());
        }
        let rows = Arc::new(self.ledger.console_rows(q)?);
        let cache = &mut *self.cache;
        if q.expensive && cache.rows + rows.rows.len() <= MAX_CACHED_ROWS {
            cache.rows += rows.rows.len();
            cache.entries.insert(q.clone(), rows.clone());
        }
        Ok(rows)
    }

    /// Rows `offset..offset + limit` of `q`: sliced from the kept result of an expensive query,
    /// else read with LIMIT and OFFSET.
    pub fn page(&mut self, q: &Query, offset: u64, limit: u64) -> Result<Page> {
        let query = q.page(offset, limit);
        if q.expensive {
            let all = self.rows(q)?;
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(all.rows.len());
            let to = from
                .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
                .min(all.rows.len());
            return Ok(Page {
                rows: Rows {
                    columns: all.columns.clone(),
                    rows: all.rows[from..to].to_vec(),
                },
                offset,
                limit,
                more: to < all.rows.len(),
                total: Some(all.rows.len() as u64),
                query,
            });
        }
        let mut rows = self
            .ledger
            .console_rows(&q.page(offset, limit.saturating_add(1)))
            .context("reading a page")?;
        let more = rows.rows.len() as u64 > limit;
        rows.rows
            .truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(Page {
            rows,
            offset,
            limit,
            more,
            total: None,
            query,
        })
    }

    /// The ledger itself, for reports built by the library (costs).
    pub fn ledger(&self) -> &Ledger {
        self.ledger
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ledger::console::Query;
    use crate::ledger::SqlValue;

    fn ledger_file(dir: &tempfile::TempDir, name: &str) -> LedgerFile {
        let file = LedgerFile::new(dir.path().join(name), Duration::from_secs(5));
        Ledger::open_for_writing(&file).unwrap();
        file
    }

    fn add_run(path: &std::path::Path, source: &str) {
        rusqlite::Connection::open(path)
            .unwrap()
            .execute(
                "INSERT INTO ingest_runs (source, scope, started_at) VALUES (?1, '*', 'now')",
                [source],
            )
            .unwrap();
    }

    fn sources(reader: &Reader) -> Vec<SqlValue> {
        let q = Query::expensive("SELECT source FROM ingest_runs ORDER BY id", vec![]);
        reader
            .read(|s| Ok(s.rows(&q)?.rows.iter().map(|r| r[0].clone()).collect()))
            .unwrap()
    }

    #[test]
    fn a_kept_result_is_never_shown_after_another_process_committed() {
        let dir = tempfile::tempdir().unwrap();
        let file = ledger_file(&dir, "ledger.sqlite");
        let reader = Reader::new(file.clone());
        add_run(&file.path, "a");
        assert_eq!(sources(&reader), [SqlValue::Text("a".into())]);
        add_run(&file.path, "b");
        assert_eq!(
            sources(&reader),
            [SqlValue::Text("a".into()), SqlValue::Text("b".into())]
        );
    }

    #[test]
    fn a_ledger_replaced_on_disk_is_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = ledger_file(&dir, "ledger.sqlite");
        let other = ledger_file(&dir, "other.sqlite");
        add_run(&file.path, "old");
        add_run(&other.path, "new");
        let reader = Reader::new(file.clone());
        assert_eq!(sources(&reader), [SqlValue::Text("old".into())]);
        std::fs::rename(&other.path, &file.path).unwrap();
        assert_eq!(sources(&reader), [SqlValue::Text("new".into())]);
    }

    #[test]
    fn a_page_of_a_kept_result_is_sliced_and_says_whether_more_follow() {
        let dir = tempfile::tempdir().unwrap();
        let file = ledger_file(&dir, "ledger.sqlite");
        for s in ["a", "b", "c"] {
            add_run(&file.path, s);
        }
        let reader = Reader::new(file);
        for expensive in [true, false] {
            let sql = "SELECT source FROM ingest_runs ORDER BY id";
            let q = match expensive {
                true => Query::expensive(sql, vec![]),
                false => Query::cheap(sql, vec![]),
            };
            let page = reader.read(|s| s.page(&q, 1, 1)).unwrap();
            assert_eq!(page.rows.rows, [[SqlValue::Text("b".into())]]);
            assert!(page.more);
            let last = reader.read(|s| s.page(&q, 2, 5)).unwrap();
            assert_eq!(last.rows.rows, [[SqlValue::Text("c".into())]]);
            assert!(!last.more);
            assert_eq!(last.query.display(), format!("{sql}\nLIMIT 5 OFFSET 2"));
        }
    }
}
