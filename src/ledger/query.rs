//! Arbitrary read-only SQL over the ledger, streamed row by row to a sink.

use anyhow::{Context, Result};
use rusqlite::types::ValueRef;

use super::Ledger;

/// A value as SQLite returned it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<ValueRef<'_>> for SqlValue {
    fn from(v: ValueRef<'_>) -> SqlValue {
        match v {
            ValueRef::Null => SqlValue::Null,
            ValueRef::Integer(i) => SqlValue::Integer(i),
            ValueRef::Real(r) => SqlValue::Real(r),
            ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
        }
    }
}

/// Receives a query's column names, then each row.
pub trait QueryResult {
    fn columns(&mut self, names: &[String]) -> Result<()>;
    fn row(&mut self, values: &[SqlValue]) -> Result<()>;
    /// Called once after the last row.
    fn finish(&mut self) -> Result<()>;
}

impl Ledger {
    /// Runs one SQL statement and streams its result to `sink`. On a ledger opened with
    /// [`Ledger::open_read_only`], a write fails with SQLite's message and changes nothing.
    pub fn run_sql(&self, sql: &str, sink: &mut dyn QueryResult) -> Result<()> {
        self.stream(sql, &[], sink)
    }

    /// Runs `sql` with text parameters `?1`, `?2`, ... and streams its result to `sink`.
    pub(super) fn stream(
        &self,
        sql: &str,
        params: &[String],
        sink: &mut dyn QueryResult,
    ) -> Result<()> {
        let mut stmt = self.conn.prepare(sql).context("preparing the query")?;
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        sink.columns(&names)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params))
            .context("running the query")?;
        let mut values = Vec::with_capacity(names.len());
        while let Some(row) = rows.next().context("running the query")? {
            values.clear();
            for i in 0..names.len() {
                values.push(SqlValue::from(row.get_ref(i)?));
            }
            sink.row(&values)?;
        }
        sink.finish()
    }
}
