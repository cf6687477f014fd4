//! Writing tabular results to stdout as a table, CSV or JSON. Data goes to stdout only. CSV and
//! JSON carry values exactly; a table is for a terminal, so control characters in values (an
//! escape sequence in usage data would otherwise drive the terminal) are shown escaped.

use std::borrow::Cow;
use std::io::Write;

use anyhow::Result;
use comfy_table::{presets, ContentArrangement, Table};

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

/// How a column of a fitted table is shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Shown in full.
    Keep,
    /// At most this many characters, keeping both ends (ids: both ends tell them apart).
    Middle(usize),
    /// At most this many characters, keeping the start (names, messages).
    End(usize),
}

/// A [`QueryResult`] sink that prints in the chosen format.
pub fn sink<'a, W: Write + 'a>(format: Format, out: W) -> Box<dyn QueryResult + 'a> {
    match format {
        Format::Table => Box::new(TableSink {
            out,
            table: Table::new(),
            fits: Vec::new(),
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

/// A table no wider than `width` characters: each column shortened as `fits` says (an ellipsis
/// marks what was left out), and wrapped if that is not enough.
pub fn fitted_table<'a, W: Write + 'a>(
    out: W,
    width: u16,
    fits: Vec<Fit>,
) -> Box<dyn QueryResult + 'a> {
    let mut table = Table::new();
    table
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width);
    Box::new(TableSink { out, table, fits })
}

/// `s` shortened as `fit` says.
fn shorten(s: &str, fit: Fit) -> Cow<'_, str> {
    let len = s.chars().count();
    match fit {
        Fit::Middle(max) if len > max && max > 1 => {
            let tail = (max - 1) / 2;
            let head = max - 1 - tail;
            let start: String = s.chars().take(head).collect();
            let end: String = s.chars().skip(len - tail).collect();
            Cow::Owned(format!("{start}…{end}"))
        }
        Fit::End(max) if len > max && max > 1 => {
            let start: String = s.chars().take(max - 1).collect();
            Cow::Owned(format!("{start}…"))
        }
        _ => Cow::Borrowed(s),
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
    /// How to shorten each column (none: every value in full).
    fits: Vec<Fit>,
}

impl<W: Write> QueryResult for TableSink<W> {
    fn columns(&mut self, names: &[String]) -> Result<()> {
        self.table.load_preset(presets::UTF8_FULL_CONDENSED);
        self.table.set_header(names.iter().map(|n| for_terminal(n)));
        Ok(())
    }
    fn row(&mut self, values: &[SqlValue]) -> Result<()> {
        let fits = &self.fits;
        self.table.add_row(values.iter().enumerate().map(|(i, v)| {
            let shown = for_terminal(&v.to_string()).into_owned();
            let fit = fits.get(i).copied().unwrap_or(Fit::Keep);
            shorten(&shown, fit).into_owned()
        }));
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
        self.out
            .write_record(values.iter().map(SqlValue::to_string))?;
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
    fn long_values_are_shortened_keeping_the_end_that_tells_them_apart() {
        let id = "0675295f-8812-2e14-0fc0-55310b43b6dd";
        assert_eq!(shorten(id, Fit::Middle(19)), "0675295f-…10b43b6dd");
        assert_eq!(shorten(id, Fit::Middle(19)).chars().count(), 19);
        assert_eq!(shorten("short", Fit::Middle(19)), "short");
        assert_eq!(
            shorten("Invalid contract_id: contract not found", Fit::End(20)),
            "Invalid contract_id…"
        );
        assert_eq!(shorten(id, Fit::Keep), id);
    }

    #[test]
    fn a_table_shows_control_characters_escaped_and_leaves_other_text_alone() {
        assert_eq!(for_terminal("pg-0 café ✓"), "pg-0 café ✓");
        assert_eq!(
            for_terminal("\u{1b}[2J\u{1b}]0;owned\u{7}a\tb\nc\rd\u{9b}e\u{202e}f"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}a\\tb\\nc\\rd\\u{9b}e\\u{202e}f"
        );
    }
}
