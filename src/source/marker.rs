//! Omnistrate's completion marker, `omnistrate-metering/last_success_export.json`: per service key,
//! how far the export is complete. Parsing is pure and lenient about what it can be, strict about
//! what it must be: an entry without a parseable `last_processed_to` is reported, not guessed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::period::parse_timestamp;

/// One service key's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerEntry {
    pub service_key: String,
    pub last_processed_to: DateTime<Utc>,
    pub last_updated_at: Option<DateTime<Utc>>,
}

/// A parsed marker: the entries that could be read and what was wrong with the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marker {
    pub entries: Vec<MarkerEntry>,
    pub problems: Vec<String>,
}

/// Parses the marker body. `Err` when the body as a whole is unusable.
pub fn parse_marker(body: &[u8]) -> Result<Marker, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("marker is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("marker is not a JSON object keyed by SERVICE:ENVIRONMENT:PLAN".into());
    };
    let mut marker = Marker::default();
    for (service_key, entry) in map {
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| entry.get(*n).and_then(Value::as_str))
                .map(str::to_string)
        };
        // Older exporter versions wrote `lastSuccessfulExport`.
        let Some(to) = field(&["last_processed_to", "lastSuccessfulExport"]) else {
            marker
                .problems
                .push(format!("{service_key}: no last_processed_to"));
            continue;
        };
        let Some(last_processed_to) = parse_timestamp(&to) else {
            marker.problems.push(format!(
                "{service_key}: last_processed_to '{to}' is not a timestamp"
            ));
            continue;
        };
        marker.entries.push(MarkerEntry {
            service_key,
            last_processed_to,
            last_updated_at: field(&["last_updated_at"]).and_then(|t| parse_timestamp(&t)),
        });
    }
    Ok(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_reports_bad_ones() {
        let body = br#"{
            "pg:PROD:pt-1": {"last_processed_to": "2025-11-14T03:14:59Z", "last_updated_at": "2025-11-14T03:20:06Z"},
            "pg:DEV:pt-2": {"lastSuccessfulExport": "2025-11-01T00:00:00Z"},
            "pg:PROD:pt-3": {"last_processed_to": "soon"},
            "pg:PROD:pt-4": {}
        }"#;
        let m = parse_marker(body).unwrap();
        assert_eq!(m.entries.len(), 2);
        let entry = |k: &str| m.entries.iter().find(|e| e.service_key == k).unwrap();
        assert_eq!(
            entry("pg:PROD:pt-1").last_processed_to.to_rfc3339(),
            "2025-11-14T03:14:59+00:00"
        );
        assert_eq!(entry("pg:DEV:pt-2").last_updated_at, None);
        assert_eq!(m.problems.len(), 2);
        assert!(m
            .problems
            .iter()
            .any(|p| p.contains("pt-3") && p.contains("soon")));
        assert!(m.problems.iter().any(|p| p.contains("pt-4")));
    }

    #[test]
    fn an_unusable_body_is_an_error() {
        assert!(parse_marker(b"not json").is_err());
        assert!(parse_marker(b"[1,2]").is_err());
    }
}
