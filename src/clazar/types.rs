//! Clazar's metering request and response bodies, the marketplaces a record names, and how each
//! result is read: accepted, a duplicate of an accepted record, a warning, or rejected. Pure; the
//! emulator uses them too.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The marketplace of a contract (`CLAZAR_CLOUD`): the `cloud` of every record sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
}

impl Cloud {
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
            Cloud::Gcp => "gcp",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One metering record as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteringRecord {
    pub cloud: String,
    pub contract_id: String,
    pub dimension: String,
    pub start_time: String,
    pub end_time: String,
    /// A non-negative integer, as a string (AWS accepts integers only).
    pub quantity: String,
}

/// The body of `POST /metering/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteringRequest {
    pub request: Vec<MeteringRecord>,
}

/// One result of a metering answer. Every field is optional: what Clazar leaves out is not guessed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeteringResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// A list of strings, or of objects with a `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of a 200 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeteringResponse {
    pub results: Vec<MeteringResult>,
}

/// What one result means for its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Accepted,
    /// Clazar already has this record: it was accepted earlier (e.g. by a run that crashed).
    Duplicate,
    /// Not success, and no errors (e.g. a dimension not registered for the listing): needs attention.
    Warning,
    /// Errors: not accepted.
    Rejected,
}

impl MeteringResult {
    /// The error texts: strings as they are, objects by their `message` (else as JSON).
    pub fn error_texts(&self) -> Vec<String> {
        match &self.errors {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.iter().map(error_text).collect(),
            Some(other) => vec![error_text(other)],
        }
    }

    pub fn code_text(&self) -> Option<String> {
        match &self.code {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    }

    pub fn kind(&self) -> ResultKind {
        let errors = self.error_texts();
        let says_duplicate = errors
            .iter()
            .chain(self.message.iter())
            .any(|t| is_duplicate_message(t));
        let success = self
            .status
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("success"));
        if success && errors.is_empty() {
            ResultKind::Accepted
        } else if says_duplicate {
            ResultKind::Duplicate
        } else if !errors.is_empty() {
            ResultKind::Rejected
        } else {
            ResultKind::Warning
        }
    }
}

fn error_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message").or_else(|| o.get("detail")) {
            Some(Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Does a message say the record already exists? Clazar's wording is not documented: the
/// predecessor matched "already exists", a later test "same contract_id ... same hour".
pub fn is_duplicate_message(text: &str) -> bool {
    let t = text.to_ascii_lowercase().replace(['_', '-'], " ");
    t.contains("already exist")
        || t.contains("already been")
        || t.contains("duplicate")
        || (t.contains("same contract") && (t.contains("same hour") || t.contains("same period")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(v: Value) -> MeteringResult {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn results_are_classified() {
        assert_eq!(
            result(json!({"status": "success"})).kind(),
            ResultKind::Accepted
        );
        assert_eq!(
            result(json!({"status": "fail"})).kind(),
            ResultKind::Warning
        );
        assert_eq!(result(json!({})).kind(), ResultKind::Warning);
        let rejected = result(
            json!({"status": "fail", "errors": [{"message": "Invalid contract"}],
                                     "code": 400, "message": "Bad request"}),
        );
        assert_eq!(rejected.kind(), ResultKind::Rejected);
        assert_eq!(rejected.error_texts(), ["Invalid contract"]);
        assert_eq!(rejected.code_text().as_deref(), Some("400"));
        // Errors outweigh a success status.
        assert_eq!(
            result(json!({"status": "success", "errors": ["nope"]})).kind(),
            ResultKind::Rejected
        );
    }

    #[test]
    fn duplicates_are_recognised_in_any_known_wording() {
        for errors in [
            json!(["Metering record already exists"]),
            json!(["A record with the same contract_id and dimension exists for the same hour"]),
            json!([{"message": "Duplicate usage record"}]),
            json!("usage has ALREADY BEEN reported"),
        ] {
            let r = result(json!({"status": "fail", "errors": errors}));
            assert_eq!(r.kind(), ResultKind::Duplicate, "{errors}");
        }
        let by_message = result(json!({"status": "fail", "message": "Record already exists"}));
        assert_eq!(by_message.kind(), ResultKind::Duplicate);
    }
}
