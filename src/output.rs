//! Writing tabular results to stdout as a table, CSV or JSON. Data goes to stdout only.

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

struct TableSink<W: Write> {
    out: W,
    table: Table,
}

impl<W: Write> QueryResult for TableSink<W> {
    fn columns(&mut self, names: &[String]) -> Result<()> {
        self.table.load_preset(presets::UTF8_FULL_CONDENSED);
        self.table.set_header(names);
        Ok(())
    }
    fn row(&mut self, values: &[SqlValue]) -> Result<()> {
        self.table.add_row(values.iter().map(text));
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
