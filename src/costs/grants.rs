//! Grants: how much each user (grantee) may spend over which days, from a CSV file the account
//! managers keep. Columns are matched by header name: `user`, `amount`, `start`, and optionally
//! `end` (inclusive; empty for an open-ended grant) and `note`. Every problem is reported with its
//! line, and a file with any problem loads nothing: half a set of grants would misstate them all.
//! [`load`] replaces the ledger's grants with a file's.

use std::path::Path;

use chrono::NaiveDate;

use super::money::parse_nanos;
use crate::error::{Fatal, Outcome};
use crate::ledger::{Ledger, LedgerFile};

/// One grant as read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: String,
    pub amount_nanos: i64,
    pub starts_on: NaiveDate,
    /// Inclusive; `None` when open-ended.
    pub ends_on: Option<NaiveDate>,
    pub note: Option<String>,
    /// Line in the file, the header being line 1.
    pub line: u64,
}

/// Replaces the grants with a file's; warns of users no line item names (a misspelt user would
/// otherwise show a grant with nothing spent).
pub fn load(ledger: &LedgerFile, file: &Path) -> anyhow::Result<Outcome> {
    let grants = read_grants(file).map_err(Fatal::Config)?;
    let mut ledger = Ledger::open_for_writing(ledger)?;
    let replaced = ledger.replace_cost_grants(&grants, &file.display().to_string())?;
    let mut users: Vec<&str> = grants.iter().map(|g| g.user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let mut unknown = 0;
    for user in &users {
        if !ledger.user_has_line_items(user)? {
            unknown += 1;
            tracing::warn!(
                "grant user {user:?}: no line item names this user; check the spelling against \
                 meterbook sql \"SELECT DISTINCT user FROM cost_line_items\""
            );
        }
    }
    tracing::info!(
        "loaded {} grants for {} users from {} (replacing {replaced})",
        grants.len(),
        users.len(),
        file.display()
    );
    Ok(if unknown > 0 {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    })
}

/// At most this many problems are listed in the error.
const MAX_PROBLEMS_SHOWN: usize = 20;

/// Reads every grant of `path`, or says what is wrong with it, line by line.
pub fn read_grants(path: &Path) -> Result<Vec<Grant>, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("grants file {name}: {e}"))?;
    parse_grants(file).map_err(|problems| {
        let shown: Vec<String> = problems
            .iter()
            .take(MAX_PROBLEMS_SHOWN)
            .map(|p| format!("  {name}: {p}"))
            .collect();
        let more = problems.len().saturating_sub(MAX_PROBLEMS_SHOWN);
        format!(
            "grants file {name} has {} problem(s); nothing was loaded:\n{}{}",
            problems.len(),
            shown.join("\n"),
            if more > 0 {
                format!("\n  ... and {more} more")
            } else {
                String::new()
            }
        )
    })
}

/// Parses grants from CSV; on any problem, every problem found (each naming its line).
pub fn parse_grants(input: impl std::io::Read) -> Result<Vec<Grant>, Vec<String>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| vec![format!("line 1: the header does not read as CSV: {e}")])?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(user), Some(amount), Some(start)) =
        (column("user"), column("amount"), column("start"))
    else {
        return Err(vec![format!(
            "line 1: the header needs the columns user, amount and start (and may have end and \
             note); found: {}",
            headers.iter().collect::<Vec<_>>().join(",")
        )]);
    };
    let (end, note) = (column("end"), column("note"));
    let mut grants = Vec::new();
    let mut problems = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                problems.push(format!("line {line}: not CSV: {e}"));
                continue;
            }
        };
        if row.iter().all(str::is_empty) {
            continue;
        }
        let field = |i: Option<usize>| i.and_then(|i| row.get(i)).unwrap_or("");
        let mut problem = |what: String| problems.push(format!("line {line}: {what}"));
        let user = field(Some(user)).to_string();
        if user.is_empty() {
            problem("user is empty".into());
        }
        let amount_text = field(Some(amount));
        let amount_nanos = match parse_nanos(&amount_text.replace([',', '$'], "")) {
            Some(n) if n >= 0 => Some(n),
            Some(_) => {
                problem(format!("amount {amount_text:?} is negative"));
                None
            }
            None => {
                problem(format!("amount {amount_text:?} is not a number of dollars"));
                None
            }
        };
        let date = |what: &str, text: &str, problem: &mut dyn FnMut(String)| {
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| problem(format!("{what} {text:?} is not a date YYYY-MM-DD")))
                .ok()
        };
        let starts_on = date("start", field(Some(start)), &mut problem);
        let ends_on = match field(end) {
            "" => Some(None),
            text => date("end", text, &mut problem).map(Some),
        };
        if let (Some(s), Some(Some(e))) = (starts_on, ends_on) {
            if e < s {
                problem(format!("end {e} is before start {s}"));
                continue;
            }
        }
        if let (false, Some(amount_nanos), Some(starts_on), Some(ends_on)) =
            (user.is_empty(), amount_nanos, starts_on, ends_on)
        {
            let note = Some(field(note).to_string()).filter(|n| !n.is_empty());
            grants.push(Grant {
                user,
                amount_nanos,
                starts_on,
                ends_on,
                note,
                line,
            });
        }
    }
    if problems.is_empty() {
        Ok(grants)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_read_by_header_name() {
        let csv = "note,Start,user,amount,end\n\
                   first year,2025-01-01,alice,\"$10,000.50\",2025-12-31\n\
                   ,2025-06-01,bob,2500,\n";
        let grants = parse_grants(csv.as_bytes()).unwrap();
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[0].user, "alice");
        assert_eq!(grants[0].amount_nanos, 10_000_500_000_000);
        assert_eq!(grants[0].ends_on, Some("2025-12-31".parse().unwrap()));
        assert_eq!(grants[0].note.as_deref(), Some("first year"));
        assert_eq!(grants[0].line, 2);
        assert_eq!(grants[1].ends_on, None);
        assert_eq!(grants[1].note, None);
    }

    #[test]
    fn every_problem_names_its_line_and_nothing_is_loaded() {
        let csv = "user,amount,start,end\n\
                   alice,lots,2025-01-01,\n\
                   ,10,2025-01-01,\n\
                   carol,10,2025-13-01,\n\
                   dave,10,2025-02-01,2025-01-01\n\
                   erin,-5,2025-01-01,\n\
                   frank,10,2025-01-01,\n";
        let problems = parse_grants(csv.as_bytes()).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "line 2: amount \"lots\" is not a number of dollars",
                "line 3: user is empty",
                "line 4: start \"2025-13-01\" is not a date YYYY-MM-DD",
                "line 5: end 2025-01-01 is before start 2025-02-01",
                "line 6: amount \"-5\" is negative",
            ]
        );
    }

    #[test]
    fn a_header_without_the_needed_columns_is_refused() {
        let problems = parse_grants("name,budget\nalice,10\n".as_bytes()).unwrap_err();
        assert!(
            problems[0].starts_with("line 1: the header needs"),
            "{problems:?}"
        );
    }
}
