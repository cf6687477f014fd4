//! The console's HTML: the page layout (navigation, "The SQL behind this"), tables, badges,
//! pagers and number formats. Written with maud, which escapes every value put into a page, so
//! usage data (contract ids, file names, Clazar's messages) is always shown as text.

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::reader::Page;
use crate::ledger::console::{Query, Rows};
use crate::ledger::SqlValue;

pub const CSS: &str = include_str!("../../assets/console/console.css");
pub const JS: &str = include_str!("../../assets/console/console.js");

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Usage,
    Submissions,
    Problems,
    Costs,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/", "Overview"),
    (Section::Usage, "/usage", "Usage"),
    (Section::Submissions, "/submissions", "Submissions"),
    (Section::Problems, "/problems", "Problems"),
    (Section::Costs, "/costs", "Costs"),
];

/// What every page has around its content.
pub struct Frame<'a> {
    pub title: &'a str,
    pub section: Option<Section>,
    /// Show the sign-out button (a token is required).
    pub signed_in: bool,
    /// The ledger read, and when.
    pub ledger: Option<&'a str>,
    pub read_at: DateTime<Utc>,
}

/// A whole page: header, navigation, the content, then the statements it ran.
pub fn page(frame: &Frame<'_>, content: Markup, queries: &[(&str, Query)]) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · meterbook" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "meterbook" span { "console" } }
                    nav {
                        @for (section, href, name) in SECTIONS {
                            a href=(href) class=[(frame.section == Some(section)).then_some("active")] { (name) }
                        }
                    }
                    @if frame.signed_in {
                        form method="post" action="/logout" { button type="submit" { "Sign out" } }
                    }
                }
                main {
                    (content)
                    @if !queries.is_empty() { (sql_block(queries)) }
                }
                footer {
                    @if let Some(ledger) = frame.ledger {
                        "Ledger " code { (ledger) } " · "
                    }
                    "read at " (frame.read_at.format("%Y-%m-%d %H:%M:%S UTC")) " · read-only"
                }
            }
        }
    }
}

/// "The SQL behind this": each statement as `meterbook sql` takes it, with a copy button.
fn sql_block(queries: &[(&str, Query)]) -> Markup {
    html! {
        section.sql id="sql" {
            details {
                summary { "The SQL behind this page (" (queries.len()) ")" }
                @for (i, (label, q)) in queries.iter().enumerate() {
                    div.q {
                        div.label {
                            span { (label) " — run it with " code { "meterbook sql \"…\"" } }
                            button.plain type="button" data-copy=(format!("sql-{i}")) { "Copy" }
                        }
                        pre id=(format!("sql-{i}")) { (q.display()) }
                    }
                }
            }
        }
    }
}

/// How a column is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// An id or key: monospace, breaks anywhere.
    Id,
    /// A number, right-aligned with thousands separators, exactly as stored.
    Num,
    /// A line or file status as a coloured badge.
    Status,
    /// A long text, wrapped.
    Wrap,
    /// A time, kept on one line.
    Time,
}

/// Builds a cell's link from its row (`None`: no link).
pub type LinkFn<'a> = &'a dyn Fn(&Rows, usize) -> Option<String>;

/// The class that marks a row (`None`: not marked).
pub type FlagFn<'a> = &'a dyn Fn(&Rows, usize) -> Option<&'static str>;

/// One column of a table: its header, the query's column it shows, and how.
pub struct Col<'a> {
    pub header: &'a str,
    pub column: &'a str,
    pub kind: Kind,
    /// Makes the cell a link to this URL (given the row).
    pub link: Option<LinkFn<'a>>,
}

impl<'a> Col<'a> {
    pub fn new(header: &'a str, column: &'a str, kind: Kind) -> Col<'a> {
        Col {
            header,
            column,
            kind,
            link: None,
        }
    }

    pub fn link(mut self, to: LinkFn<'a>) -> Col<'a> {
        self.link = Some(to);
        self
    }
}

/// A table of `rows`; `flag` marks rows to highlight (with a class).
pub fn table(rows: &Rows, cols: &[Col<'_>], flag: FlagFn<'_>) -> Markup {
    if rows.rows.is_empty() {
        return html! { div.panel { p.empty { "Nothing here." } } };
    }
    let indices: Vec<usize> = cols.iter().map(|c| rows.col(c.column)).collect();
    html! {
        div.panel {
            table {
                thead { tr {
                    @for c in cols {
                        th class=[(c.kind == Kind::Num).then_some("num")] { (c.header) }
                    }
                } }
                tbody {
                    @for i in 0..rows.rows.len() {
                        tr class=[flag(rows, i)] {
                            @for (c, &at) in cols.iter().zip(&indices) {
                                (cell(c, rows, i, &rows.rows[i][at]))
                            }
                        }
                    }
                }
            }
        }
    }
}

fn cell(c: &Col<'_>, rows: &Rows, i: usize, v: &SqlValue) -> Markup {
    let class = match c.kind {
        Kind::Num => Some("num"),
        Kind::Id => Some("id"),
        Kind::Wrap => Some("wrap"),
        Kind::Time => Some("time"),
        Kind::Text | Kind::Status => None,
    };
    let content = match c.kind {
        Kind::Num => html! { (number(v)) },
        Kind::Status => statuses(v),
        _ => html! { (v.to_string()) },
    };
    let href = c.link.and_then(|to| to(rows, i));
    html! {
        td class=[class] {
            @if let Some(href) = href { a href=(href) { (content) } } @else { (content) }
        }
    }
}

/// A number with thousands separators, every digit SQLite holds kept (a real is written as the
/// shortest decimal that reads back as the same double).
pub fn number(v: &SqlValue) -> String {
    let raw = match v {
        SqlValue::Integer(i) => i.to_string(),
        SqlValue::Real(r) => r.to_string(),
        other => return other.to_string(),
    };
    group_thousands(&raw)
}

fn group_thousands(raw: &str) -> String {
    let (sign, rest) = raw.strip_prefix('-').map_or(("", raw), |r| ("-", r));
    let (whole, fraction) = rest
        .split_once('.')
        .map_or((rest, None), |(w, f)| (w, Some(f)));
    if !whole.bytes().all(|b| b.is_ascii_digit()) {
        return raw.to_string();
    }
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match fraction {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// A count as a number with separators.
pub fn count(n: i64) -> String {
    group_thousands(&n.to_string())
}

/// The badge colour of a line, submission or file status.
pub fn tone(status: &str) -> &'static str {
    match status {
        "accepted" | "duplicate" | "imported" | "ok" | "answered" => "ok",
        "rejected" | "failed" => "bad",
        "warning" | "partial" | "transient" => "warn",
        "pending" | "sending" => "info",
        "drift" => "drift",
        _ => "",
    }
}

pub fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge {}", tone(status))) { (status) } }
}

/// One badge per status of a comma-separated list (as `group_concat` gives).
fn statuses(v: &SqlValue) -> Markup {
    let text = v.to_string();
    html! {
        @for (i, s) in text.split(',').filter(|s| !s.is_empty()).enumerate() {
            @if i > 0 { " " }
            (badge(s))
        }
    }
}

/// "rows 1–100 of 400" and links to the pages before and after; `href(offset)` builds a link.
pub fn pager(page: &Page, href: &dyn Fn(u64) -> String) -> Markup {
    let shown = page.rows.rows.len() as u64;
    let first = if shown == 0 { 0 } else { page.offset + 1 };
    let last = page.offset + shown;
    html! {
        div.pager {
            span {
                "Rows " (count(first as i64)) "–" (count(last as i64))
                @if let Some(total) = page.total { " of " (count(total as i64)) }
            }
            div.links {
                @if page.offset > 0 {
                    a.button.plain href=(href(page.offset.saturating_sub(page.limit))) { "← Previous" }
                }
                @if page.more {
                    a.button.plain href=(href(page.offset + page.limit)) { "Next →" }
                }
            }
        }
    }
}

/// A query string from (name, value) pairs, leaving out empty values.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a query string value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A duration as "3 d 4 h", "2 h 5 min", "40 s"; negative ones as "ahead by ...".
pub fn duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < 0 {
        return format!("ahead by {}", duration(-d));
    }
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Pretty-prints JSON text; anything else is shown as it is.
pub fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string())
}

/// A page for an error: what went wrong, in words (never a secret: errors name files and SQL).
pub fn error_page(frame: &Frame<'_>, title: &str, message: &str) -> Markup {
    page(
        frame,
        html! {
            h1 { (title) }
            div.error { (message) }
        },
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_every_digit_and_group_thousands() {
        assert_eq!(number(&SqlValue::Integer(1234567)), "1,234,567");
        assert_eq!(number(&SqlValue::Integer(-1000)), "-1,000");
        assert_eq!(number(&SqlValue::Real(12345.125)), "12,345.125");
        assert_eq!(number(&SqlValue::Real(0.1)), "0.1");
        assert_eq!(number(&SqlValue::Integer(999)), "999");
        assert_eq!(
            number(&SqlValue::Real(1e21)),
            "1,000,000,000,000,000,000,000"
        );
    }

    #[test]
    fn data_is_escaped_in_tables() {
        let rows = Rows {
            columns: vec!["c".into()],
            rows: vec![vec![SqlValue::Text("<script>alert(1)</script>".into())]],
        };
        let html = table(&rows, &[Col::new("C", "c", Kind::Id)], &|_, _| None).into_string();
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn query_strings_are_percent_encoded() {
        assert_eq!(
            query_string(&[("contract", "a&b c"), ("page", ""), ("month", "2025-06")]),
            "?contract=a%26b%20c&month=2025-06"
        );
    }
}
