//! Writing tabular results to stdout as a table, CSV or JSON. Data goes to stdout only. CSV and
//! JSON carry values exactly; a table is for a terminal, so control characters in values (an
//! escape sequence in usage data would otherwise drive the terminal) are shown escaped.

use std::borrow::Cow;
use std::io::Write;

use anyhow::Result;
use comfy_table::{presets, Table};

use crate::ledger::{QueryResult, SqlValue};

/// Output format for tabular data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    /// Aligned columns for a terminal.
    #[default]
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of objects, one per row.
    Json,
}

/// A [`QueryResult`] sink that prints in the chosen format.
pub fn sink<'a, W: Write + 'a>(format: Format, out: W) -> Box<dyn QueryResult + 'a> {
    match format {
        Format::Table => Box::new(TableSink {
            out,
            table: Table::new(),
        }),
        Format::Csv => Box::new(CsvSink {
            out: csv::Writer::from_writer(out),
        }),
        Format::Json => Box::new(JsonSink {
            out,
            columns: Vec::new(),
            rows: 0,
        }),
    }
}

fn text(v: &SqlValue) -> String {
    match v {
        SqlValue::Null => String::new(),
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(r) => r.to_string(),
        SqlValue::Text(t) => t.clone(),
        SqlValue::Blob(b) => hex::encode(b),
    }
}

fn json(v: &SqlValue) -> serde_json::Value {
    match v {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Integer(i) => (*i).into(),
        SqlValue::Real(r) => serde_json::Number::from_f64(*r)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        SqlValue::Text(t) => t.clone().into(),
        SqlValue::Blob(b) => hex::encode(b).into(),
    }
}

/// `s` with control characters (C0, DEL, C1: escape sequences, newlines, tabs) and the Unicode
/// bidirectional overrides (which reorder what a terminal shows) written as Rust escapes:
/// `\u{1b}`, `\n`, `\t`, `\u{202e}`.
fn for_terminal(s: &str) -> Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

struct TableSink<W: Write> {
    out: W,
    table: Table,
}

impl<W: Write> QueryResult for TableSink<W> {
    fn columns(&mut self, names: &[String]) -> Result<()> {
        self.table.load_preset(presets::UTF8_FULL_CONDENSED);
        self.table.set_header(names.iter().map(|n| for_terminal(n)));
        Ok(())
    }
    fn row(&mut self, values: &[SqlValue]) -> Result<()> {
        self.table
            .add_row(values.iter().map(|v| for_terminal(&text(v)).into_owned()));
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        writeln!(self.out, "{}", self.table)?;
        Ok(self.out.flush()?)
    }
}

struct CsvSink<W: Write> {
    out: csv::Writer<W>,
}

impl<W: Write> QueryResult for CsvSink<W> {
    fn columns(&mut self, names: &[String]) -> Result<()> {
        self.out.write_record(names)?;
        Ok(())
    }
    fn row(&mut self, values: &[SqlValue]) -> Result<()> {
        self.out.write_record(values.iter().map(text))?;
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(self.out.flush()?)
    }
}

struct JsonSink<W: Write> {
    out: W,
    columns: Vec<String>,
    rows: u64,
}

impl<W: Write> QueryResult for JsonSink<W> {
    fn columns(&mut self, names: &[String]) -> Result<()> {
        self.columns = names.to_vec();
        Ok(())
    }
    fn row(&mut self, values: &[SqlValue]) -> Result<()> {
        let obj: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .cloned()
            .zip(values.iter().map(json))
            .collect();
        let sep = if self.rows == 0 { "[\n" } else { ",\n" };
        write!(self.out, "{sep}{}", serde_json::Value::Object(obj))?;
        self.rows += 1;
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        let close = if self.rows == 0 { "[]" } else { "\n]" };
        writeln!(self.out, "{close}")?;
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_shows_control_characters_escaped_and_leaves_other_text_alone() {
        assert_eq!(for_terminal("pg-0 café ✓"), "pg-0 café ✓");
        assert_eq!(
            for_terminal("\u{1b}[2J\u{1b}]0;owned\u{7}a\tb\nc\rd\u{9b}e\u{202e}f"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}a\\tb\\nc\\rd\\u{9b}e\\u{202e}f"
        );
    }
}
