//! An operator's read-only SQL over the ledger (checked to be read-only), and the ledger's own
//! queries, streamed row by row to a sink.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::Statement;

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

/// The value as text: NULL as nothing, a blob in hex, a real as the shortest decimal that reads
/// back as the same double.
impl std::fmt::Display for SqlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlValue::Null => Ok(()),
            SqlValue::Integer(i) => write!(f, "{i}"),
            SqlValue::Real(r) => write!(f, "{r}"),
            SqlValue::Text(t) => f.write_str(t),
            SqlValue::Blob(b) => f.write_str(&hex::encode(b)),
        }
    }
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
    /// Runs one statement of an operator's and streams its result to `sink`, if it only reads.
    /// SQLite itself says so (`sqlite3_stmt_readonly`: false for any statement that writes,
    /// including `VACUUM INTO` and pragmas that change the file), and an authorizer refuses
    /// `ATTACH`/`DETACH`, which SQLite counts as reading but which would open other files. A
    /// ledger opened for reading is read-only as well, so a write fails even past both checks.
    pub fn run_sql(&self, sql: &str, sink: &mut dyn QueryResult) -> Result<()> {
        let attached = Arc::new(AtomicBool::new(false));
        let seen = attached.clone();
        self.conn
            .authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
                AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
                    seen.store(true, Ordering::Relaxed);
                    Authorization::Deny
                }
                _ => Authorization::Allow,
            }));
        let prepared = self.conn.prepare(sql);
        self.conn
            .authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
        if attached.load(Ordering::Relaxed) {
            anyhow::bail!(
                "refusing the statement: meterbook sql reads the ledger only, and ATTACH or \
                 DETACH would open other database files"
            );
        }
        let stmt = prepared.context("preparing the query")?;
        if !stmt.readonly() {
            anyhow::bail!(
                "refusing the statement: meterbook sql runs read-only statements only, and \
                 SQLite says this one would write (nothing was changed)"
            );
        }
        stream_rows(stmt, &[], sink)
    }

    /// Runs `sql` with text parameters `?1`, `?2`, ... and streams its result to `sink`.
    pub(super) fn stream(
        &self,
        sql: &str,
        params: &[String],
        sink: &mut dyn QueryResult,
    ) -> Result<()> {
        let stmt = self.conn.prepare(sql).context("preparing the query")?;
        stream_rows(stmt, params, sink)
    }
}

fn stream_rows(
    mut stmt: Statement<'_>,
    params: &[String],
    sink: &mut dyn QueryResult,
) -> Result<()> {
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
