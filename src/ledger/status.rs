//! The ledger's vocabulary as types: where a submission and each of its lines stand, and the kind
//! of period, each stored as the text its column's `CHECK` list allows (and read back the same
//! way, refusing anything else). A test compares every enum with its `CHECK` list in the schema.

use std::fmt;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use crate::period::PeriodKind;

/// Where a submission (one request body) stands: `submissions.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubmissionStatus {
    /// Written, not yet sent.
    Pending,
    /// May have left: the next run re-sends it (a duplicate answer means it arrived).
    Sending,
    /// No answer after every retry (5xx, 429, network): the next run re-sends it.
    Transient,
    /// Clazar answered; each line says how.
    Answered,
    /// An HTTP 4xx for the whole request.
    Rejected,
    /// Not sendable (formula), or the answer could not be read.
    Failed,
    /// Recorded by the predecessor, imported.
    Imported,
}

/// Where one line (contract, dimension, period) of a submission stands: `submission_lines.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum LineStatus {
    Pending,
    Sending,
    Transient,
    /// Clazar said success.
    Accepted,
    /// Clazar already has this record: accepted earlier.
    Duplicate,
    /// Accepted by the predecessor (quantity unknown).
    Imported,
    /// A status other than success, without errors (e.g. an unregistered dimension).
    Warning,
    /// Errors in the result, or an HTTP 4xx.
    Rejected,
    /// A formula failure, an unreadable answer, or no result for this line.
    Failed,
}

impl SubmissionStatus {
    pub const ALL: [SubmissionStatus; 7] = [
        SubmissionStatus::Pending,
        SubmissionStatus::Sending,
        SubmissionStatus::Transient,
        SubmissionStatus::Answered,
        SubmissionStatus::Rejected,
        SubmissionStatus::Failed,
        SubmissionStatus::Imported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubmissionStatus::Pending => "pending",
            SubmissionStatus::Sending => "sending",
            SubmissionStatus::Transient => "transient",
            SubmissionStatus::Answered => "answered",
            SubmissionStatus::Rejected => "rejected",
            SubmissionStatus::Failed => "failed",
            SubmissionStatus::Imported => "imported",
        }
    }

    /// The status every line takes when the whole request shares one fate; `None` for
    /// `Answered`, where each line has its own.
    pub fn of_every_line(self) -> Option<LineStatus> {
        match self {
            SubmissionStatus::Pending => Some(LineStatus::Pending),
            SubmissionStatus::Sending => Some(LineStatus::Sending),
            SubmissionStatus::Transient => Some(LineStatus::Transient),
            SubmissionStatus::Rejected => Some(LineStatus::Rejected),
            SubmissionStatus::Failed => Some(LineStatus::Failed),
            SubmissionStatus::Imported => Some(LineStatus::Imported),
            SubmissionStatus::Answered => None,
        }
    }
}

impl LineStatus {
    pub const ALL: [LineStatus; 9] = [
        LineStatus::Pending,
        LineStatus::Sending,
        LineStatus::Transient,
        LineStatus::Accepted,
        LineStatus::Duplicate,
        LineStatus::Imported,
        LineStatus::Warning,
        LineStatus::Rejected,
        LineStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LineStatus::Pending => "pending",
            LineStatus::Sending => "sending",
            LineStatus::Transient => "transient",
            LineStatus::Accepted => "accepted",
            LineStatus::Duplicate => "duplicate",
            LineStatus::Imported => "imported",
            LineStatus::Warning => "warning",
            LineStatus::Rejected => "rejected",
            LineStatus::Failed => "failed",
        }
    }

    /// Whether a line in this status holds its (service key, contract, period, dimension):
    /// accepted, or in flight. The unique index `submission_lines_once` allows one such line.
    pub fn holds(self) -> bool {
        match self {
            LineStatus::Pending
            | LineStatus::Sending
            | LineStatus::Transient
            | LineStatus::Accepted
            | LineStatus::Duplicate
            | LineStatus::Imported => true,
            LineStatus::Warning | LineStatus::Rejected | LineStatus::Failed => false,
        }
    }

    /// The amount arrived (now or earlier): nothing about this line needs an operator.
    pub fn delivered(self) -> bool {
        matches!(self, LineStatus::Accepted | LineStatus::Duplicate)
    }
}

/// The holding statuses as a SQL list: `'pending', 'sending', ...`.
pub(super) fn holding_sql_list() -> String {
    LineStatus::ALL
        .iter()
        .filter(|s| s.holds())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ToSql` and `FromSql` from `as_str` and `ALL`: stored as the text the schema allows, and read
/// back only as one of them.
macro_rules! stored_as_text {
    ($type:ty, $what:literal) => {
        impl ToSql for $type {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $type {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                <$type>::ALL
                    .into_iter()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| {
                        FromSqlError::Other(format!("'{text}' is not a {}", $what).into())
                    })
            }
        }
    };
}

stored_as_text!(SubmissionStatus, "submission status");
stored_as_text!(LineStatus, "line status");
stored_as_text!(PeriodKind, "period kind");

impl fmt::Display for SubmissionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for LineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::ledger::{Ledger, LedgerFile};

    /// Every `CHECK (column IN (...))` list in the schema of a fresh ledger, by table and column.
    fn check_lists() -> Vec<(String, String, BTreeSet<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let file = LedgerFile::new(dir.path().join("l.sqlite"), Duration::from_secs(5));
        let ledger = Ledger::open_for_writing(&file).unwrap();
        let mut stmt = ledger
            .conn
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND sql IS NOT NULL")
            .unwrap();
        let tables: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut lists = Vec::new();
        for (table, sql) in tables {
            // SQLite keeps a table's SQL as written, comments included.
            let sql: String = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join(" ");
            let mut rest = sql.as_str();
            while let Some(at) = rest.find("CHECK (") {
                let after = &rest[at + "CHECK (".len()..];
                let end = after.find(')').expect("a CHECK list ends");
                if let Some((column, values)) = after[..end].split_once(" IN (") {
                    let values = values
                        .split(',')
                        .map(|v| v.trim().trim_matches('\'').to_string())
                        .collect();
                    lists.push((table.clone(), column.trim().to_string(), values));
                }
                rest = &after[end..];
            }
        }
        lists
    }

    fn allowed(
        lists: &[(String, String, BTreeSet<String>)],
        table: &str,
        column: &str,
    ) -> BTreeSet<String> {
        lists
            .iter()
            .find(|(t, c, _)| t == table && c == column)
            .unwrap_or_else(|| panic!("no CHECK list for {table}.{column}"))
            .2
            .clone()
    }

    #[test]
    fn the_enums_are_the_check_lists_of_the_schema() {
        let lists = check_lists();
        let texts = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let submission = SubmissionStatus::ALL.map(SubmissionStatus::as_str);
        let line = LineStatus::ALL.map(LineStatus::as_str);
        let kind = PeriodKind::ALL.map(PeriodKind::as_str);
        assert_eq!(allowed(&lists, "submissions", "status"), texts(&submission));
        assert_eq!(allowed(&lists, "submission_lines", "status"), texts(&line));
        for table in ["submissions", "submission_lines", "predecessor_imports"] {
            assert_eq!(
                allowed(&lists, table, "period_kind"),
                texts(&kind),
                "{table}"
            );
        }
    }

    #[test]
    fn the_holding_statuses_are_those_of_the_unique_index() {
        let dir = tempfile::tempdir().unwrap();
        let file = LedgerFile::new(dir.path().join("l.sqlite"), Duration::from_secs(5));
        let ledger = Ledger::open_for_writing(&file).unwrap();
        let sql: String = ledger
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'submission_lines_once'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            sql.contains(&format!("status IN ({})", holding_sql_list())),
            "{sql}"
        );
    }

    #[test]
    fn statuses_round_trip_through_sqlite_and_unknown_text_is_refused() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for s in LineStatus::ALL {
            let back: LineStatus = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        for s in SubmissionStatus::ALL {
            let back: SubmissionStatus = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        let typo = conn.query_row("SELECT 'acepted'", [], |r| r.get::<_, LineStatus>(0));
        assert!(typo
            .unwrap_err()
            .to_string()
            .contains("'acepted' is not a line status"));
    }
}
