//! Reading Clazar's answers: what a delivery (results, a refusal, no answer after every retry, an
//! unreadable body) means for a submission and for each of its lines. Pure.

use std::collections::BTreeMap;

use crate::clazar::{Answer, Delivery, MeteringResult, ResultKind};
use crate::ledger::{LineStatus, LineUpdate, OutboxItem, SubmissionStatus, SubmissionUpdate};

/// What an answer means for a submission and each of its lines.
pub(super) fn interpret(item: &OutboxItem, d: &Delivery) -> SubmissionUpdate {
    let whole =
        |status: SubmissionStatus, http: Option<u16>, body: Option<String>, error: String| {
            SubmissionUpdate {
                status,
                attempts: d.attempts,
                http_status: http,
                response_body: body,
                error: Some(error),
                lines: Vec::new(),
            }
        };
    match &d.answer {
        Answer::Results {
            status,
            body,
            results,
        } => {
            let by_dimension: BTreeMap<&str, usize> = results
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.dimension.as_deref().map(|d| (d, i)))
                .collect();
            let lines = item
                .lines
                .iter()
                .enumerate()
                .map(|(pos, (line_id, dimension))| {
                    let at_position = results
                        .get(pos)
                        .filter(|r| r.dimension.as_deref().is_none_or(|d| d == dimension));
                    let result = at_position
                        .or_else(|| by_dimension.get(dimension.as_str()).map(|i| &results[*i]));
                    match result {
                        Some(r) => line_update(*line_id, r),
                        None => LineUpdate {
                            line_id: *line_id,
                            status: LineStatus::Failed,
                            clazar_id: None,
                            result_status: None,
                            code: None,
                            message: Some("no result for this record in Clazar's answer".into()),
                            errors: None,
                        },
                    }
                })
                .collect();
            SubmissionUpdate {
                status: SubmissionStatus::Answered,
                attempts: d.attempts,
                http_status: Some(*status),
                response_body: Some(body.clone()),
                error: None,
                lines,
            }
        }
        Answer::Transient {
            why, status, body, ..
        } => whole(
            SubmissionStatus::Transient,
            *status,
            body.clone(),
            format!(
                "no answer after {} attempts: {why}; the next run re-sends it",
                d.attempts
            ),
        ),
        Answer::Rejected { status, body } => whole(
            SubmissionStatus::Rejected,
            Some(*status),
            Some(body.clone()),
            format!("HTTP {status}: {}", snippet(body)),
        ),
        Answer::Unauthorized { body } => whole(
            SubmissionStatus::Rejected,
            Some(401),
            Some(body.clone()),
            format!("HTTP 401: {}", snippet(body)),
        ),
        Answer::Unreadable { status, body, why } => whole(
            SubmissionStatus::Failed,
            Some(*status),
            Some(body.clone()),
            format!("{why}; body: {}", snippet(body)),
        ),
    }
}

fn line_update(line_id: i64, r: &MeteringResult) -> LineUpdate {
    let errors = r.error_texts();
    let kind = r.kind();
    let message = match kind {
        ResultKind::Warning => Some(r.message.clone().unwrap_or_else(|| {
            format!(
                "status '{}' without errors (e.g. a dimension not registered for the listing)",
                r.status.as_deref().unwrap_or("none")
            )
        })),
        _ => r
            .message
            .clone()
            .or_else(|| (!errors.is_empty()).then(|| errors.join("; "))),
    };
    LineUpdate {
        line_id,
        status: match kind {
            ResultKind::Accepted => LineStatus::Accepted,
            ResultKind::Duplicate => LineStatus::Duplicate,
            ResultKind::Warning => LineStatus::Warning,
            ResultKind::Rejected => LineStatus::Rejected,
        },
        clazar_id: r.id.clone(),
        result_status: r.status.clone(),
        code: r.code_text(),
        message,
        errors: r.errors.as_ref().map(|e| e.to_string()),
    }
}

fn snippet(body: &str) -> String {
    let flat: String = body.chars().take(200).collect();
    flat.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clazar::classify_http;
    use crate::period::PeriodKind;

    fn item() -> OutboxItem {
        OutboxItem {
            id: 1,
            service_key: "pg:PROD:pt-1".into(),
            contract_id: "c1".into(),
            period_kind: PeriodKind::Month,
            period: "2025-06".into(),
            payload: "{}".into(),
            status: SubmissionStatus::Pending,
            attempts: 0,
            lines: vec![(10, "cpu".into()), (11, "mem".into()), (12, "disk".into())],
        }
    }

    fn delivered(status: u16, body: &str) -> Delivery {
        Delivery {
            answer: classify_http(status, None, body.as_bytes()),
            attempts: 1,
        }
    }

    #[test]
    fn results_are_matched_to_lines_by_dimension_when_out_of_order() {
        let body = r#"{"results": [
            {"dimension": "mem", "status": "fail"},
            {"dimension": "cpu", "status": "success", "id": "r1"}
        ]}"#;
        let u = interpret(&item(), &delivered(200, body));
        assert_eq!(u.status, SubmissionStatus::Answered);
        let got: Vec<(i64, LineStatus)> = u.lines.iter().map(|l| (l.line_id, l.status)).collect();
        assert_eq!(
            got,
            [
                (10, LineStatus::Accepted),
                (11, LineStatus::Warning),
                (12, LineStatus::Failed)
            ]
        );
        assert_eq!(u.lines[0].clazar_id.as_deref(), Some("r1"));
        assert!(u.lines[2].message.as_deref().unwrap().contains("no result"));
    }

    #[test]
    fn whole_request_outcomes_keep_status_and_body() {
        let u = interpret(&item(), &delivered(404, "not here"));
        assert_eq!(
            (u.status, u.http_status, u.response_body.as_deref()),
            (SubmissionStatus::Rejected, Some(404), Some("not here"))
        );
        let u = interpret(&item(), &delivered(200, "<html>"));
        assert_eq!(u.status, SubmissionStatus::Failed);
        assert!(u.error.unwrap().contains("<html>"));
        let u = interpret(&item(), &delivered(503, ""));
        assert_eq!(u.status, SubmissionStatus::Transient);
        assert!(u.lines.is_empty());
    }
}
