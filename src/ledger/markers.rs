//! Omnistrate's completion markers as read by each ingest, with history: which service keys are
//! exported up to when. Submission gates on [`Ledger::export_complete_to`].

use anyhow::Result;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::Ledger;
use crate::period::{format_utc, parse_timestamp};
use crate::source::marker::Marker;

/// The outcome of reading the marker object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkerRead {
    Parsed(Marker),
    Missing,
    Malformed(String),
    Unreadable(String),
}

impl Ledger {
    /// Records a marker read, and each entry's values (a repeated value only refreshes when it
    /// was last seen).
    pub fn record_marker_read(&mut self, source: &str, read: &MarkerRead) -> Result<()> {
        let now = format_utc(Utc::now());
        let tx = self.conn.transaction()?;
        let (status, detail) = match read {
            MarkerRead::Parsed(m) if m.problems.is_empty() => {
                ("ok", format!("{} service keys", m.entries.len()))
            }
            MarkerRead::Parsed(m) => ("malformed", m.problems.join("; ")),
            MarkerRead::Missing => ("missing", "no marker object".to_string()),
            MarkerRead::Malformed(why) => ("malformed", why.clone()),
            MarkerRead::Unreadable(why) => ("unreadable", why.clone()),
        };
        tx.execute(
            "INSERT INTO export_marker_reads (source, read_at, status, detail) VALUES (?1, ?2, ?3, ?4)",
            params![source, now, status, detail],
        )?;
        if let MarkerRead::Parsed(marker) = read {
            for e in &marker.entries {
                let to = format_utc(e.last_processed_to);
                let updated = e.last_updated_at.map(format_utc);
                let refreshed = tx.execute(
                    "UPDATE export_markers SET last_seen_at = ?4, source = ?5
                     WHERE service_key = ?1 AND last_processed_to = ?2 AND last_updated_at IS ?3",
                    params![e.service_key, to, updated, now, source],
                )?;
                if refreshed == 0 {
                    tx.execute(
                        "INSERT INTO export_markers (service_key, last_processed_to, last_updated_at,
                             source, first_seen_at, last_seen_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                        params![e.service_key, to, updated, source, now],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// How far the export of `service_key` is complete, by the marker seen most recently;
    /// `None` when no marker ever named it.
    pub fn export_complete_to(&self, service_key: &str) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT last_processed_to FROM export_completion WHERE service_key = ?1",
                [service_key],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text.as_deref().and_then(parse_timestamp))
    }
}
