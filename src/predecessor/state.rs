//! The Python exporter's state file (the predecessor): what it records, parsed. Pure.
//!
//! Forms accepted: one object per service key (`{"Postgres:PROD:pt-1": {...}}`) or the newest
//! version's flat inner object (the service key then comes from the file name or the settings);
//! monthly (`last_processed_month`, `success_contracts`, `error_contracts`) or hourly
//! (`last_processed_hour`). Timestamps are parsed leniently (`...37.123456+00:00Z` occurs).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::period::{parse_timestamp, Month};

/// What the predecessor recorded for one service key.
#[derive(Debug, Clone, PartialEq)]
pub struct PredecessorState {
    pub service_key: String,
    /// Monthly form: the last month it processed.
    pub last_processed_month: Option<Month>,
    /// Hourly form: the start of the last hour it processed.
    pub last_processed_hour: Option<DateTime<Utc>>,
    pub last_updated: Option<DateTime<Utc>>,
    /// Contracts it sent successfully, per month.
    pub successes: Vec<(Month, String)>,
    pub errors: Vec<PredecessorError>,
}

/// A contract whose month failed in the predecessor.
#[derive(Debug, Clone, PartialEq)]
pub struct PredecessorError {
    pub month: Month,
    pub contract_id: String,
    pub code: Option<String>,
    pub message: Option<String>,
    pub errors: Value,
    pub retry_count: Option<i64>,
    pub last_retry_time: Option<DateTime<Utc>>,
    /// The payload it tried to send, verbatim.
    pub payload: Option<Value>,
}

const INNER_KEYS: [&str; 5] = [
    "last_processed_month",
    "last_processed_hour",
    "success_contracts",
    "error_contracts",
    "last_updated",
];

/// Parses a state file. `flat_service_key` names the service key of a flat (inner-object) file.
pub fn parse_state(
    body: &[u8],
    flat_service_key: Option<&str>,
) -> Result<Vec<PredecessorState>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("state file is not valid JSON: {e}"))?;
    let Value::Object(top) = value else {
        return Err("state file is not a JSON object".into());
    };
    if top.keys().any(|k| INNER_KEYS.contains(&k.as_str())) {
        let key = flat_service_key.ok_or(
            "this state file holds one service key's state without naming it; pass --service-key \
             SERVICE:ENVIRONMENT:PLAN (or set SERVICE_NAME, ENVIRONMENT_TYPE and PLAN_ID)",
        )?;
        return Ok(vec![parse_inner(key, &top)?]);
    }
    top.iter()
        .map(|(key, inner)| match inner {
            Value::Object(inner) => parse_inner(key, inner),
            _ => Err(format!("{key}: expected an object")),
        })
        .collect()
}

/// The service key a flat file's name implies: `{SERVICE}-{ENV}-{PLAN}-export_state.json`, where
/// the plan id is `pt-...`.
pub fn service_key_from_file_name(name: &str) -> Option<String> {
    let base = name
        .rsplit('/')
        .next()?
        .strip_suffix("-export_state.json")?;
    let plan_at = base.rfind("-pt-")?;
    let (head, plan) = (&base[..plan_at], &base[plan_at + 1..]);
    let (service, env) = head.rsplit_once('-')?;
    (!service.is_empty() && !env.is_empty()).then(|| format!("{service}:{env}:{plan}"))
}

fn parse_inner(key: &str, o: &Map<String, Value>) -> Result<PredecessorState, String> {
    let text = |field: &str| o.get(field).and_then(Value::as_str);
    let timestamp = |field: &str| -> Result<Option<DateTime<Utc>>, String> {
        match text(field) {
            None => Ok(None),
            Some(t) => parse_timestamp(t)
                .map(Some)
                .ok_or_else(|| format!("{key}: {field} '{t}' is not a timestamp")),
        }
    };
    let month = |m: &str, field: &str| -> Result<Month, String> {
        m.parse().map_err(|e| format!("{key}: {field}: {e}"))
    };
    let mut state = PredecessorState {
        service_key: key.to_string(),
        last_processed_month: text("last_processed_month")
            .map(|m| month(m, "last_processed_month"))
            .transpose()?,
        last_processed_hour: timestamp("last_processed_hour")?,
        last_updated: timestamp("last_updated")?,
        successes: Vec::new(),
        errors: Vec::new(),
    };
    if let Some(Value::Object(by_month)) = o.get("success_contracts") {
        for (m, ids) in by_month {
            let m = month(m, "success_contracts")?;
            for id in ids.as_array().into_iter().flatten() {
                let id = id.as_str().ok_or_else(|| {
                    format!("{key}: success_contracts {m}: {id} is not a contract id")
                })?;
                state.successes.push((m, id.to_string()));
            }
        }
    }
    if let Some(Value::Object(by_month)) = o.get("error_contracts") {
        for (m, entries) in by_month {
            let m = month(m, "error_contracts")?;
            for e in entries.as_array().into_iter().flatten() {
                let contract_id =
                    e.get("contract_id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            format!("{key}: error_contracts {m}: an entry has no contract_id")
                        })?;
                let field = |f: &str| e.get(f).and_then(Value::as_str).map(str::to_string);
                state.errors.push(PredecessorError {
                    month: m,
                    contract_id: contract_id.to_string(),
                    code: field("code"),
                    message: field("message"),
                    errors: e.get("errors").cloned().unwrap_or(Value::Null),
                    retry_count: e.get("retry_count").and_then(Value::as_i64),
                    last_retry_time: field("last_retry_time").and_then(|t| parse_timestamp(&t)),
                    payload: e.get("payload").cloned(),
                });
            }
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONTHLY: &str = r#"{
      "Postgres:PROD:pt-HJSv20iWX0": {
        "last_processed_month": "2025-06",
        "last_updated": "2025-07-25T20:15:37.123456+00:00Z",
        "success_contracts": {"2025-06": ["ae641bd1", "bf752ce2"], "2025-05": ["ae641bd1"]},
        "error_contracts": {"2025-06": [{"contract_id": "ce751fd3", "errors": ["Some error"],
          "code": "ERROR_001", "message": "Error occurred", "retry_count": 3,
          "last_retry_time": "2025-07-25T20:15:37Z",
          "payload": {"request": [{"cloud": "aws", "contract_id": "ce751fd3", "dimension": "cpu_core_hours",
            "start_time": "2025-06-01T00:00:00Z", "end_time": "2025-06-30T23:59:59Z", "quantity": "720"}]}}]}
      }
    }"#;

    #[test]
    fn parses_the_per_service_key_monthly_form() {
        let states = parse_state(MONTHLY.as_bytes(), None).unwrap();
        assert_eq!(states.len(), 1);
        let s = &states[0];
        assert_eq!(s.service_key, "Postgres:PROD:pt-HJSv20iWX0");
        assert_eq!(s.last_processed_month, "2025-06".parse().ok());
        assert!(s.last_updated.is_some());
        assert_eq!(s.successes.len(), 3);
        assert_eq!(s.errors[0].contract_id, "ce751fd3");
        assert_eq!(s.errors[0].code.as_deref(), Some("ERROR_001"));
        assert_eq!(s.errors[0].retry_count, Some(3));
        assert!(s.errors[0].payload.is_some());
    }

    #[test]
    fn parses_the_flat_form_with_a_named_service_key() {
        let v: Value = serde_json::from_str(MONTHLY).unwrap();
        let inner = v["Postgres:PROD:pt-HJSv20iWX0"].to_string();
        assert!(parse_state(inner.as_bytes(), None)
            .unwrap_err()
            .contains("--service-key"));
        let states = parse_state(inner.as_bytes(), Some("pg:PROD:pt-1")).unwrap();
        assert_eq!(states[0].service_key, "pg:PROD:pt-1");
        assert_eq!(states[0].successes.len(), 3);
    }

    #[test]
    fn parses_the_hourly_form() {
        let body = br#"{"Postgres:PROD:pt-1": {"last_processed_hour": "2025-07-24T00:00:00Z",
            "last_updated": "2025-07-24T01:02:03.5+00:00Z"}}"#;
        let s = &parse_state(body, None).unwrap()[0];
        assert_eq!(
            s.last_processed_hour
                .map(crate::period::format_utc)
                .as_deref(),
            Some("2025-07-24T00:00:00Z")
        );
        assert!(s.successes.is_empty() && s.last_processed_month.is_none());
    }

    #[test]
    fn bad_state_is_refused_with_the_reason() {
        assert!(parse_state(b"", None)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_state(b"[]", None)
            .unwrap_err()
            .contains("not a JSON object"));
        let bad = br#"{"k:e:p": {"last_processed_month": "June"}}"#;
        assert!(parse_state(bad, None)
            .unwrap_err()
            .contains("last_processed_month"));
    }

    #[test]
    fn the_flat_file_name_names_the_service_key() {
        assert_eq!(
            service_key_from_file_name("clazar/Postgres-PROD-pt-HJSv20iWX0-export_state.json")
                .as_deref(),
            Some("Postgres:PROD:pt-HJSv20iWX0")
        );
        assert_eq!(service_key_from_file_name("metering_state.json"), None);
    }
}
