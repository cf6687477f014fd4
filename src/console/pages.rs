//! The console's pages, each read in one snapshot of the ledger: what it shows, and the queries
//! (from [`crate::ledger::console`]) that give its numbers, listed under "The SQL behind this".

use std::collections::HashMap;

use anyhow::Result;
use chrono::{Days, NaiveDate, Utc};
use chrono_tz::Tz;
use maud::{html, Markup};

use super::html::{
    badge, count, duration, number, pager, pretty_json, query_string, table, Col, FlagFn, Kind,
    Section,
};
use super::reader::Snapshot;
use crate::costs::money::format_dollars;
use crate::costs::report::{CostReport, Window};
use crate::ledger::console::{self as q, text, Param, Query, Rows};
use crate::ledger::{
    LineStatus, SqlValue, SubmissionFilter, COST_GRANTS_SQL, HOURLY_COSTS_SQL, USER_SPEND_SQL,
};
use crate::period::{format_utc, Month};

/// Rows per page of a long table.
pub const PAGE_SIZE: u64 = 100;

/// The query string of a request.
pub type Params = HashMap<String, String>;

/// A page's content, before the layout is put around it.
pub struct View {
    pub title: String,
    pub section: Section,
    pub content: Markup,
    pub queries: Vec<(&'static str, Query)>,
}

/// A request the console cannot answer as asked (HTTP 400), said in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Something that is not in the ledger (HTTP 404).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// A parameter, trimmed; `None` when missing or empty.
fn param<'a>(p: &'a Params, name: &str) -> Option<&'a str> {
    p.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn offset(p: &Params) -> Result<u64> {
    match param(p, "offset") {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| BadRequest(format!("offset {v:?} is not a row number")).into()),
    }
}

fn month_param(p: &Params) -> Result<Option<Month>> {
    param(p, "month")
        .map(|m| {
            m.parse::<Month>()
                .map_err(|_| BadRequest(format!("month {m:?} is not YYYY-MM")).into())
        })
        .transpose()
}

/// The first instants of `month` and of the month after, as the ledger writes hours.
fn month_bounds(month: Month) -> (String, String) {
    (format_utc(month.start()), format_utc(month.next().start()))
}

fn int(v: &SqlValue) -> i64 {
    match v {
        SqlValue::Integer(i) => *i,
        SqlValue::Real(r) => *r as i64,
        _ => 0,
    }
}

fn first_row(rows: &Rows) -> Option<usize> {
    (!rows.rows.is_empty()).then_some(0)
}

/// A `<dl>` of facts.
fn facts(items: &[(&str, Markup)]) -> Markup {
    html! {
        dl.facts {
            @for (k, v) in items { dt { (k) } dd { (v) } }
        }
    }
}

/// A page of one long table: its heading (and tabs), the query, its columns, which rows to mark,
/// and the link to another page of it (given the first row).
struct Listing<'a> {
    title: String,
    section: Section,
    head: Markup,
    label: &'static str,
    query: Query,
    cols: &'a [Col<'a>],
    flag: FlagFn<'a>,
    href: &'a dyn Fn(u64) -> String,
}

/// The page of `l`'s table that `?offset=` asks for, with its pager.
fn listing(s: &mut Snapshot<'_>, p: &Params, l: Listing<'_>) -> Result<View> {
    let page = s.page(&l.query, offset(p)?, PAGE_SIZE)?;
    let content = html! {
        (l.head)
        (table(&page.rows, l.cols, l.flag))
        (pager(&page, l.href))
    };
    Ok(View {
        title: l.title,
        section: l.section,
        content,
        queries: vec![(l.label, page.query)],
    })
}

fn contract_link(rows: &Rows, i: usize, month: &str) -> Option<String> {
    let contract = rows.get(i, "contract_id").to_string();
    if contract.is_empty() || month.is_empty() {
        return None;
    }
    Some(format!(
        "/usage/contract{}",
        query_string(&[
            ("service_key", &rows.get(i, "service_key").to_string()),
            ("contract", &contract),
            ("month", month),
        ])
    ))
}

// ---------------------------------------------------------------------------------------------

/// What needs an operator, counted with the queries the detail pages show (so an unchanged
/// ledger computes each aggregate once for both).
pub struct Attention {
    pub failed_lines: i64,
    pub warning_lines: i64,
    pub unanswered_lines: i64,
    pub record_problems: i64,
    pub path_problems: i64,
    pub drift_lines: i64,
    pub unattributed_records: i64,
    pub pending_periods: i64,
    pub pending_complete: i64,
    pub queries: Vec<(&'static str, Query)>,
}

impl Attention {
    pub fn read(s: &mut Snapshot<'_>) -> Result<Attention> {
        let counts_q = Query::cheap(q::ATTENTION, vec![]);
        let drift_q = Query::expensive(q::DRIFT, vec![]);
        let pending_q = Query::expensive(q::PENDING, vec![]);
        let unattributed_q = Query::expensive(q::UNATTRIBUTED, vec![]);
        let counts = s.rows(&counts_q)?;
        let c = |name: &str| first_row(&counts).map_or(0, |i| int(counts.get(i, name)));
        let drift = s.rows(&drift_q)?;
        let pending = s.rows(&pending_q)?;
        let unattributed = s.rows(&unattributed_q)?;
        let complete = pending.col("complete");
        let records = unattributed.col("records");
        Ok(Attention {
            failed_lines: c("failed_lines"),
            warning_lines: c("warning_lines"),
            unanswered_lines: c("unanswered_lines"),
            record_problems: c("record_problems"),
            path_problems: c("path_problems"),
            drift_lines: drift.rows.len() as i64,
            unattributed_records: unattributed.rows.iter().map(|r| int(&r[records])).sum(),
            pending_periods: pending.rows.len() as i64,
            pending_complete: pending
                .rows
                .iter()
                .filter(|r| int(&r[complete]) == 1)
                .count() as i64,
            queries: vec![
                ("Lines and problems needing attention", counts_q),
                ("Drift (counted: its rows)", drift_q),
                (
                    "Pending periods (counted: its rows, and those complete)",
                    pending_q,
                ),
                ("Unattributed usage (counted: its records)", unattributed_q),
            ],
        })
    }
}

/// What needs attention, per service key how far the export is and when it was last read, and
/// the last submission run.
pub fn overview(s: &mut Snapshot<'_>, _p: &Params) -> Result<View> {
    let keys_q = Query::cheap(q::SERVICE_KEYS, vec![]);
    let ingest_q = Query::cheap(q::LAST_INGEST, vec![]);
    let marker_q = Query::cheap(q::LAST_MARKER_READ, vec![]);
    let run_q = Query::cheap(q::LAST_SUBMISSION_RUN, vec![]);
    let keys = s.rows(&keys_q)?;
    let ingest = s.rows(&ingest_q)?;
    let marker = s.rows(&marker_q)?;
    let run = s.rows(&run_q)?;
    let a = Attention::read(s)?;
    let now = Utc::now();
    let lag = |rows: &Rows, i: usize| -> Markup {
        match crate::period::parse_timestamp(&rows.get(i, "last_processed_to").to_string()) {
            Some(to) => html! { (duration(now - to)) },
            None => html! { span.badge.warn { "no marker" } },
        }
    };
    let card = |n: i64, what: &str, href: &str, tone: &str| {
        html! {
            a class=(format!("card {}", if n > 0 { tone } else { "ok" })) href=(href) {
                div.n { (count(n)) }
                div.what { (what) }
            }
        }
    };
    let content = html! {
        h1 { "Overview" }
        p.subtitle { "What needs attention, how far each export is, and what the last runs did." }
        h2 { "Needs attention" }
        div.cards {
            (card(a.failed_lines, "lines failed or rejected by Clazar", "/submissions?attention=1&status=rejected", "bad"))
            (card(a.warning_lines, "lines with a warning", "/submissions?attention=1&status=warning", "warn"))
            (card(a.unanswered_lines, "lines without an answer after every retry", "/submissions?attention=1&status=transient", "warn"))
            (card(a.drift_lines, "drift: sent, then the usage changed", "/submissions/drift", "drift"))
            (card(a.record_problems + a.path_problems, "ingest problems", "/problems", "bad"))
            (card(a.unattributed_records, "usage records without a contract", "/problems/unattributed", "warn"))
            (card(a.pending_complete, "contract-months due to be sent", "/usage/pending", "info"))
            (card(a.pending_periods - a.pending_complete, "contract-months waiting for the export", "/usage/pending", "info"))
        }
        h2 { "Exports" }
        @if keys.rows.is_empty() {
            div.panel { p.empty { "No usage ingested yet: run " code { "meterbook ingest" } "." } }
        } @else {
            div.panel { table {
                thead { tr {
                    th { "Service key" } th.num { "Usage files" } th { "Newest hour" }
                    th { "Export complete to (marker)" } th { "Marker lag" } th { "Marker last seen" }
                } }
                tbody {
                    @for i in 0..keys.rows.len() {
                        tr {
                            td.id { (keys.get(i, "service_key").to_string()) }
                            td.num { (number(keys.get(i, "files"))) }
                            td { (keys.get(i, "newest_hour").to_string()) }
                            td { (keys.get(i, "last_processed_to").to_string()) }
                            td { (lag(&keys, i)) }
                            td { (keys.get(i, "marker_seen_at").to_string()) }
                        }
                    }
                }
            } }
        }
        div.grid2 {
            div {
                h2 { "Last ingest" }
                div.panel {
                    @if let Some(i) = first_row(&ingest) {
                        (facts(&[
                            ("Run", html! { (ingest.get(i, "id").to_string()) " · " (ingest.get(i, "scope").to_string()) }),
                            ("Source", html! { code { (ingest.get(i, "source").to_string()) } }),
                            ("Started", html! { (ingest.get(i, "started_at").to_string()) }),
                            ("Finished", match ingest.get(i, "finished_at") {
                                SqlValue::Null => html! { span.badge.warn { "not finished" } },
                                v => html! { (v.to_string()) },
                            }),
                            ("Files", html! {
                                (number(ingest.get(i, "files_seen"))) " seen: "
                                (number(ingest.get(i, "files_new"))) " new, "
                                (number(ingest.get(i, "files_replaced"))) " replaced, "
                                (number(ingest.get(i, "files_unchanged"))) " unchanged, "
                                (number(ingest.get(i, "files_too_large"))) " too large"
                            }),
                            ("Records", html! { (number(ingest.get(i, "records"))) }),
                            ("Problems", {
                                let n = int(ingest.get(i, "problems"));
                                html! { @if n > 0 { a href="/problems" { span.badge.bad { (count(n)) } } } @else { "none" } }
                            }),
                            ("Completion marker", match first_row(&marker) {
                                Some(m) => html! {
                                    (badge(&marker.get(m, "status").to_string())) " "
                                    (marker.get(m, "detail").to_string()) " · read " (marker.get(m, "read_at").to_string())
                                },
                                None => html! { "never read" },
                            }),
                        ]))
                    } @else {
                        p.empty { "No ingest has run." }
                    }
                }
            }
            div {
                h2 { "Last submission run" }
                div.panel {
                    @if let Some(i) = first_row(&run) {
                        (facts(&[
                            ("Run", html! { (run.get(i, "id").to_string()) " · " code { (run.get(i, "command").to_string()) } " · per " (run.get(i, "period_kind").to_string()) }),
                            ("Started", html! { (run.get(i, "started_at").to_string()) }),
                            ("Finished", match run.get(i, "finished_at") {
                                SqlValue::Null => html! { span.badge.warn { "not finished" } },
                                v => html! { (v.to_string()) },
                            }),
                            ("Submissions", html! { (number(run.get(i, "planned"))) " planned, " (number(run.get(i, "sent"))) " requests answered" }),
                            ("Lines", html! {
                                @if int(run.get(i, "lines")) == 0 { "none (nothing was due)" } @else {
                                (number(run.get(i, "lines"))) ": "
                                span.badge.ok { (number(run.get(i, "accepted"))) " accepted" } " "
                                @if int(run.get(i, "failed")) > 0 {
                                    a href="/submissions?attention=1" { span.badge.bad { (number(run.get(i, "failed"))) " failed" } } " "
                                }
                                @if int(run.get(i, "warnings")) > 0 {
                                    a href="/submissions?attention=1&status=warning" { span.badge.warn { (number(run.get(i, "warnings"))) " warnings" } } " "
                                }
                                @if int(run.get(i, "in_flight")) > 0 {
                                    span.badge.info { (number(run.get(i, "in_flight"))) " in flight" }
                                }
                                }
                            }),
                        ]))
                    } @else {
                        p.empty { "Nothing has been submitted." }
                    }
                }
            }
        }
    };
    let mut queries = a.queries;
    queries.extend([
        ("Exports per service key", keys_q),
        ("The last ingest", ingest_q),
        ("The last read of the completion marker", marker_q),
        ("The last submission run", run_q),
    ]);
    Ok(View {
        title: "Overview".into(),
        section: Section::Overview,
        content,
        queries,
    })
}

// ---------------------------------------------------------------------------------------------

fn usage_tabs(active: &str) -> Markup {
    html! {
        div.tabs {
            a href="/usage" class=[(active == "month").then_some("active")] { "Monthly usage" }
            a href="/usage/pending" class=[(active == "pending").then_some("active")] { "Not yet submitted" }
        }
    }
}

/// A month's usage per contract and dimension with what was sent for it.
pub fn usage(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let months_q = Query::cheap(q::MONTHS, vec![]);
    let months = s.rows(&months_q)?;
    let newest = months.rows.first().map(|r| r[0].to_string());
    let month = match month_param(p)? {
        Some(m) => m.to_string(),
        None => newest.unwrap_or_default(),
    };
    let mut queries = vec![("Months with usage", months_q)];
    let body = if month.is_empty() {
        html! { div.panel { p.empty { "No usage ingested yet." } } }
    } else {
        let usage_q = Query::expensive(q::MONTH_USAGE, vec![text(&month)]);
        let page = s.page(&usage_q, offset(p)?, PAGE_SIZE)?;
        queries.push(("Usage and what was sent (this page)", page.query.clone()));
        let to_contract = |rows: &Rows, i: usize| contract_link(rows, i, &month);
        let flag = |rows: &Rows, i: usize| {
            let st = rows.get(i, "sent_status").to_string();
            (st.contains("rejected") || st.contains("failed")).then_some("flag")
        };
        html! {
            (table(&page.rows, &[
                Col::new("Service key", "service_key", Kind::Id),
                Col::new("Contract", "contract_id", Kind::Id).link(&to_contract),
                Col::new("Dimension", "dimension", Kind::Text),
                Col::new("Usage", "value", Kind::Num),
                Col::new("Amount", "amount", Kind::Num),
                Col::new("Records", "records", Kind::Num),
                Col::new("Files", "files", Kind::Num),
                Col::new("Hours", "hours", Kind::Num),
                Col::new("Sent (accepted)", "sent_quantity", Kind::Num),
                Col::new("Status sent", "sent_status", Kind::Status),
            ], &flag))
            (pager(&page, &|o| format!("/usage{}", query_string(&[("month", &month), ("offset", &o.to_string())]))))
        }
    };
    let content = html! {
        h1 { "Usage" }
        p.subtitle { "Usage per contract and dimension (the " code { "monthly_usage_totals" } " view: " code { "monthly_usage" } "'s rows from the totals ingest keeps), beside the quantity Clazar accepted for it and the status of its lines (those not since retried). A contract opens its hours and files." }
        (usage_tabs("month"))
        form.filters method="get" action="/usage" {
            label { "Month"
                select name="month" {
                    @for r in &months.rows {
                        @let m = r[0].to_string();
                        option value=(m) selected[m == month] { (m) }
                    }
                }
            }
            button type="submit" { "Show" }
        }
        (body)
    };
    Ok(View {
        title: format!("Usage {month}"),
        section: Section::Usage,
        content,
        queries,
    })
}

/// Usage not yet planned for submission.
pub fn pending(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let to_contract =
        |rows: &Rows, i: usize| contract_link(rows, i, &rows.get(i, "month").to_string());
    listing(
        s,
        p,
        Listing {
            title: "Usage not yet submitted".into(),
            section: Section::Usage,
            head: html! {
                h1 { "Usage" }
                p.subtitle { "Contract-months with usage and no submission yet (the " code { "pending_periods" } " view). " em { "complete" } " ones are covered by Omnistrate's marker and are sent by the next " code { "meterbook submit" } " or " code { "run" } "; the others wait for the export." }
                (usage_tabs("pending"))
            },
            label: "Pending periods (this page)",
            query: Query::expensive(q::PENDING, vec![]),
            cols: &[
                Col::new("Service key", "service_key", Kind::Id),
                Col::new("Month", "month", Kind::Text),
                Col::new("Contract", "contract_id", Kind::Id).link(&to_contract),
                Col::new("Dimensions", "dimensions", Kind::Num),
                Col::new("Usage", "value", Kind::Num),
                Col::new("Export complete to", "last_processed_to", Kind::Time),
                Col::new("Complete", "complete", Kind::Num),
            ],
            flag: &|_, _| None,
            href: &|o| format!("/usage/pending?offset={o}"),
        },
    )
}

/// The contract, service key and month of a drill-down, and its hour range.
struct ContractScope {
    service_key: String,
    contract: String,
    month: Month,
}

impl ContractScope {
    fn from(p: &Params) -> Result<ContractScope> {
        let need = |name: &str| {
            param(p, name)
                .map(str::to_string)
                .ok_or_else(|| BadRequest(format!("the page needs ?{name}=")))
        };
        Ok(ContractScope {
            service_key: need("service_key")?,
            contract: need("contract")?,
            month: month_param(p)?.ok_or_else(|| BadRequest("the page needs ?month=".into()))?,
        })
    }

    fn params(&self) -> Vec<Param> {
        let (from, to) = month_bounds(self.month);
        vec![
            text(&self.service_key),
            text(&self.contract),
            text(from),
            text(to),
        ]
    }

    fn href(&self, path: &str, offset: u64) -> String {
        let o = offset.to_string();
        format!(
            "{path}{}",
            query_string(&[
                ("service_key", &self.service_key),
                ("contract", &self.contract),
                ("month", &self.month.to_string()),
                ("offset", if offset > 0 { &o } else { "" }),
            ])
        )
    }

    fn header(&self, active: &str) -> Markup {
        let month = self.month.to_string();
        html! {
            h1 { "Contract " span.mono { (self.contract) } }
            p.subtitle {
                "Service key " code { (self.service_key) } " · " (month) " · "
                a href=(format!("/usage{}", query_string(&[("month", &month)]))) { "all contracts" } " · "
                a href=(format!("/submissions{}", query_string(&[("contract", &self.contract), ("period", &month)]))) { "its submissions" }
            }
            div.tabs {
                a href=(self.href("/usage/contract", 0)) class=[(active == "hours").then_some("active")] { "Hours" }
                a href=(self.href("/usage/files", 0)) class=[(active == "files").then_some("active")] { "Files" }
            }
        }
    }
}

/// One contract's hours in a month.
pub fn contract_hours(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let scope = ContractScope::from(p)?;
    listing(
        s,
        p,
        Listing {
            title: format!("Contract {} hours", scope.contract),
            section: Section::Usage,
            head: scope.header("hours"),
            label: "The contract's hours (this page)",
            query: Query::cheap(q::CONTRACT_HOURS, scope.params()),
            cols: &[
                Col::new("Hour", "hour", Kind::Time),
                Col::new("Dimension", "dimension", Kind::Text),
                Col::new("Usage", "value", Kind::Num),
                Col::new("Amount", "amount", Kind::Num),
                Col::new("Records", "records", Kind::Num),
                Col::new("Files", "files", Kind::Num),
            ],
            flag: &|_, _| None,
            href: &|o| scope.href("/usage/contract", o),
        },
    )
}

/// The files holding one contract's records in a month.
pub fn contract_files(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let scope = ContractScope::from(p)?;
    listing(
        s,
        p,
        Listing {
            title: format!("Contract {} files", scope.contract),
            section: Section::Usage,
            head: scope.header("files"),
            label: "The contract's files (this page)",
            query: Query::cheap(q::CONTRACT_FILES, scope.params()),
            cols: &[
                Col::new("File", "key", Kind::Id),
                Col::new("Hour", "hour", Kind::Time),
                Col::new("Status", "status", Kind::Status),
                Col::new("Records", "record_count", Kind::Num),
                Col::new("Problems", "problem_count", Kind::Num),
                Col::new("Version", "version", Kind::Num),
                Col::new("Ingested", "ingested_at", Kind::Time),
            ],
            flag: &|rows, i| (rows.get(i, "status").to_string() != "ok").then_some("flag"),
            href: &|o| scope.href("/usage/files", o),
        },
    )
}

// ---------------------------------------------------------------------------------------------

fn submission_tabs(active: &str) -> Markup {
    html! {
        div.tabs {
            a href="/submissions" class=[(active == "history").then_some("active")] { "History" }
            a href="/submissions/drift" class=[(active == "drift").then_some("active")] { "Drift" }
        }
    }
}

/// Submission lines, filtered, those needing attention first.
pub fn submissions(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let status = param(p, "status")
        .map(|st| {
            LineStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == st)
                .ok_or_else(|| {
                    let all: Vec<&str> = LineStatus::ALL.iter().map(|s| s.as_str()).collect();
                    BadRequest(format!("status {st:?} is not one of {}", all.join(", ")))
                })
        })
        .transpose()?;
    let filter = SubmissionFilter {
        contract_id: param(p, "contract").map(str::to_string),
        period: param(p, "period").map(str::to_string),
        status,
    };
    let attention = param(p, "attention").is_some();
    let history_q = q::history(&filter, attention);
    let page = s.page(&history_q, offset(p)?, PAGE_SIZE)?;
    let contract = filter.contract_id.clone().unwrap_or_default();
    let period = filter.period.clone().unwrap_or_default();
    let status = filter.status.map_or("", LineStatus::as_str);
    let href = |o: u64| {
        let o = o.to_string();
        format!(
            "/submissions{}",
            query_string(&[
                ("contract", &contract),
                ("period", &period),
                ("status", status),
                ("attention", if attention { "1" } else { "" }),
                ("offset", &o),
            ])
        )
    };
    let to_line =
        |rows: &Rows, i: usize| Some(format!("/submissions/line?id={}", rows.get(i, "line_id")));
    let to_contract = |rows: &Rows, i: usize| {
        let period = rows.get(i, "period").to_string();
        contract_link(rows, i, period.get(..7).unwrap_or_default())
    };
    let flag = |rows: &Rows, i: usize| (int(rows.get(i, "needs_attention")) == 1).then_some("flag");
    let content = html! {
        h1 { "Submissions" }
        p.subtitle { "Every line sent to Clazar or planned (the " code { "submission_history" } " view), those that need an operator first (" code { "submission_failures" } "). A line opens its request and Clazar's answer." }
        (submission_tabs("history"))
        form.filters method="get" action="/submissions" {
            label { "Contract" input type="text" name="contract" value=(contract) placeholder="any"; }
            label { "Period" input type="text" name="period" value=(period) placeholder="YYYY-MM or hour"; }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for st in LineStatus::ALL.map(LineStatus::as_str) {
                        option value=(st) selected[st == status] { (st) }
                    }
                }
            }
            label { "Needs attention"
                select name="attention" {
                    option value="" { "all lines" }
                    option value="1" selected[attention] { "only those" }
                }
            }
            button type="submit" { "Filter" }
            a.button.plain href="/submissions" { "Clear" }
        }
        (table(&page.rows, &[
            Col::new("Line", "line_id", Kind::Num).link(&to_line),
            Col::new("Contract", "contract_id", Kind::Id).link(&to_contract),
            Col::new("Period", "period", Kind::Text),
            Col::new("Dimension", "dimension", Kind::Text),
            Col::new("Quantity", "quantity", Kind::Num),
            Col::new("Status", "status", Kind::Status),
            Col::new("Attempts", "attempts", Kind::Num),
            Col::new("HTTP", "http_status", Kind::Num),
            Col::new("Code", "code", Kind::Text),
            Col::new("Detail", "detail", Kind::Wrap),
            Col::new("Answered", "answered_at", Kind::Time),
        ], &flag))
        (pager(&page, &href))
    };
    Ok(View {
        title: "Submissions".into(),
        section: Section::Submissions,
        content,
        queries: vec![("Submission lines (this page)", page.query)],
    })
}

/// One line: what was sent, what Clazar answered, and the submission's other lines.
pub fn line(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let id: i64 = param(p, "id")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BadRequest("the page needs ?id= with a line number".into()))?;
    let line_q = Query::cheap(q::LINE, vec![Param::Int(id)]);
    let rows = s.rows(&line_q)?;
    let Some(i) = first_row(&rows) else {
        return Err(NotFound(format!("there is no submission line {id}")).into());
    };
    let v = |c: &str| rows.get(i, c);
    let siblings_q = Query::cheap(
        q::SUBMISSION_LINES,
        vec![Param::Int(int(v("submission_id")))],
    );
    let siblings = s.rows(&siblings_q)?;
    let to_line =
        |rows: &Rows, i: usize| Some(format!("/submissions/line?id={}", rows.get(i, "line_id")));
    let link_line = |v: &SqlValue| match v {
        SqlValue::Null => html! { "—" },
        v => {
            html! { a href=(format!("/submissions/line?id={}", v.to_string())) { "line " (v.to_string()) } }
        }
    };
    let status = v("status").to_string();
    let content = html! {
        h1 { "Line " (id) " " (badge(&status)) }
        p.subtitle {
            "Contract " code { (v("contract_id").to_string()) } " · " (v("period").to_string()) " · " (v("dimension").to_string())
            @if int(v("needs_attention")) == 1 { " · " span.badge.bad { "needs attention" } }
        }
        div.grid2 {
            div.panel {
                (facts(&[
                    ("Service key", html! { code { (v("service_key").to_string()) } }),
                    ("Quantity sent", html! { (number(v("quantity"))) }),
                    ("Before rounding", html! { (number(v("exact_quantity"))) }),
                    ("Window", html! { (v("start_time").to_string()) " – " (v("end_time").to_string()) }),
                    ("Marketplace", html! { (v("cloud").to_string()) }),
                    ("Submission", html! { (v("submission_id").to_string()) " (" (v("submission_status").to_string()) "), run " (v("run_id").to_string()) }),
                    ("Retries", html! { "of " (link_line(v("retry_of"))) " · retried by " (link_line(v("retried_by"))) }),
                ]))
            }
            div.panel {
                (facts(&[
                    ("Clazar's status", html! { (v("result_status").to_string()) }),
                    ("HTTP status", html! { (v("http_status").to_string()) }),
                    ("Code", html! { (v("code").to_string()) }),
                    ("Message", html! { (v("message").to_string()) }),
                    ("Error", html! { (v("error").to_string()) }),
                    ("Clazar id", html! { code { (v("clazar_id").to_string()) } }),
                    ("Attempts", html! { (v("attempts").to_string()) }),
                    ("Created · sent · answered", html! { (v("created_at").to_string()) " · " (v("sent_at").to_string()) " · " (v("answered_at").to_string()) }),
                ]))
            }
        }
        @if let SqlValue::Text(errors) = v("errors") {
            h2 { "Errors in Clazar's result" }
            pre.json #errors { (pretty_json(errors)) }
        }
        div.grid2 {
            div {
                h2 { "Request (the exact body sent)" }
                @match v("payload") {
                    SqlValue::Text(body) => pre.json #request { (pretty_json(body)) },
                    _ => div.panel { p.empty { "Nothing was sent (imported from the predecessor, or not sendable)." } },
                }
            }
            div {
                h2 { "Clazar's answer (the last response body)" }
                @match v("response_body") {
                    SqlValue::Text(body) => pre.json #answer { (pretty_json(body)) },
                    _ => div.panel { p.empty { "No answer recorded." } },
                }
            }
        }
        h2 { "Lines of this submission" }
        (table(&siblings, &[
            Col::new("Line", "line_id", Kind::Num).link(&to_line),
            Col::new("Dimension", "dimension", Kind::Text),
            Col::new("Quantity", "quantity", Kind::Num),
            Col::new("Status", "status", Kind::Status),
            Col::new("Detail", "detail", Kind::Wrap),
        ], &|rows, i| (rows.get(i, "line_id").to_string() == id.to_string()).then_some("flag-drift")))
    };
    Ok(View {
        title: format!("Line {id}"),
        section: Section::Submissions,
        content,
        queries: vec![("The line", line_q), ("Its submission's lines", siblings_q)],
    })
}

/// Delivered periods whose usage changed since.
pub fn drift(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let to_contract = |rows: &Rows, i: usize| {
        let period = rows.get(i, "period").to_string();
        contract_link(rows, i, period.get(..7).unwrap_or_default())
    };
    listing(
        s,
        p,
        Listing {
            title: "Drift".into(),
            section: Section::Submissions,
            head: html! {
                h1 { "Submissions" }
                p.subtitle { "Periods Clazar accepted whose usage in the ledger has changed since (the " code { "submission_drift" } " view): the base usage sent, the usage now, and the difference. Drift is never re-sent by itself; it needs an operator." }
                (submission_tabs("drift"))
            },
            label: "Drift (this page)",
            query: Query::expensive(q::DRIFT, vec![]),
            cols: &[
                Col::new("Service key", "service_key", Kind::Id),
                Col::new("Contract", "contract_id", Kind::Id).link(&to_contract),
                Col::new("Period", "period", Kind::Text),
                Col::new("Dimension", "dimension", Kind::Text),
                Col::new("Submission", "submission_id", Kind::Num),
                Col::new("Usage sent", "submitted_value", Kind::Num),
                Col::new("Usage now", "current_value", Kind::Num),
                Col::new("Difference", "difference", Kind::Num),
            ],
            flag: &|_, _| Some("flag-drift"),
            href: &|o| format!("/submissions/drift?offset={o}"),
        },
    )
}

// ---------------------------------------------------------------------------------------------

fn problem_tabs(active: &str) -> Markup {
    html! {
        div.tabs {
            a href="/problems" class=[(active == "files").then_some("active")] { "Files and records" }
            a href="/problems/paths" class=[(active == "paths").then_some("active")] { "Paths" }
            a href="/problems/unattributed" class=[(active == "unattributed").then_some("active")] { "Unattributed usage" }
        }
    }
}

/// Problems with usage files and their records.
pub fn problems(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    listing(
        s,
        p,
        Listing {
            title: "Problems".into(),
            section: Section::Problems,
            head: html! {
                h1 { "Problems" }
                p.subtitle { "What was wrong with the export, naming the file and the record (the " code { "usage_problems" } " view). Everything else in those files was ingested." }
                (problem_tabs("files"))
            },
            label: "Problems with files and records (this page)",
            query: Query::cheap(q::FILE_PROBLEMS, vec![]),
            cols: &[
                Col::new("File", "key", Kind::Id),
                Col::new("Hour", "hour", Kind::Time),
                Col::new("Record", "record_index", Kind::Num),
                Col::new("Problem", "reason", Kind::Wrap),
                Col::new("Record kept", "record_kept", Kind::Num),
                Col::new("File status", "file_status", Kind::Status),
                Col::new("Found", "detected_at", Kind::Time),
            ],
            flag: &|_, _| None,
            href: &|o| format!("/problems?offset={o}"),
        },
    )
}

/// Paths that could not be taken as usage files.
pub fn path_problems(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    listing(
        s,
        p,
        Listing {
            title: "Path problems".into(),
            section: Section::Problems,
            head: html! {
                h1 { "Problems" }
                p.subtitle { "Paths of a source that ingest could not take as usage files (the " code { "source_problems" } " table): tried again by every run." }
                (problem_tabs("paths"))
            },
            label: "Problems with paths (this page)",
            query: Query::cheap(q::PATH_PROBLEMS, vec![]),
            cols: &[
                Col::new("Source", "source", Kind::Id),
                Col::new("Path", "path", Kind::Id),
                Col::new("Problem", "reason", Kind::Wrap),
                Col::new("First seen", "first_seen_at", Kind::Time),
                Col::new("Last seen", "last_seen_at", Kind::Time),
            ],
            flag: &|_, _| None,
            href: &|o| format!("/problems/paths?offset={o}"),
        },
    )
}

/// Usage without a contract id.
pub fn unattributed(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    listing(
        s,
        p,
        Listing {
            title: "Unattributed usage".into(),
            section: Section::Problems,
            head: html! {
                h1 { "Problems" }
                p.subtitle { "Usage records without an " code { "externalPayerId" } " (the " code { "unattributed_usage" } " view): kept, never billed. Fix the tenant's External Payer ID in Omnistrate." }
                (problem_tabs("unattributed"))
            },
            label: "Unattributed usage (this page)",
            query: Query::expensive(q::UNATTRIBUTED, vec![]),
            cols: &[
                Col::new("Service key", "service_key", Kind::Id),
                Col::new("Month", "month", Kind::Text),
                Col::new("Subscription", "subscription_id", Kind::Id),
                Col::new("Customer", "customer_id", Kind::Id),
                Col::new("Dimension", "dimension", Kind::Text),
                Col::new("Usage", "value", Kind::Num),
                Col::new("Records", "records", Kind::Num),
                Col::new("Files", "files", Kind::Num),
                Col::new("Hours", "first_hour", Kind::Time),
                Col::new("Example file", "example_key", Kind::Id),
            ],
            flag: &|_, _| None,
            href: &|o| format!("/problems/unattributed?offset={o}"),
        },
    )
}

// ---------------------------------------------------------------------------------------------

/// The costs page's window: `days` local days ending with `to` (default: the last day with line
/// items), in time zone `tz` (default UTC).
pub struct CostWindow {
    pub window: Window,
    days: u64,
    tz: String,
}

impl CostWindow {
    /// `None` when the ledger has no line items.
    pub fn from(s: &mut Snapshot<'_>, p: &Params) -> Result<Option<CostWindow>> {
        let tz_name = param(p, "tz").unwrap_or("UTC").to_string();
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| BadRequest(format!("tz {tz_name:?} is not an IANA time zone")))?;
        let days: u64 = match param(p, "days") {
            None => 28,
            Some(d) => d
                .parse()
                .ok()
                .filter(|d| (1..=366).contains(d))
                .ok_or_else(|| BadRequest(format!("days {d:?} is not from 1 to 366")))?,
        };
        let last = match param(p, "to") {
            Some(t) => t
                .parse::<NaiveDate>()
                .map_err(|_| BadRequest(format!("to {t:?} is not YYYY-MM-DD")))?,
            None => {
                let rows = s.rows(&Query::cheap(q::LAST_COST_DAY, vec![]))?;
                match rows.rows.first().map(|r| r[0].to_string()) {
                    Some(day) if !day.is_empty() => day.parse()?,
                    _ => return Ok(None),
                }
            }
        };
        let first = last - Days::new(days - 1);
        Ok(Some(CostWindow {
            window: Window {
                tz,
                today: last + Days::new(1),
                first,
                last,
            },
            days,
            tz: tz_name,
        }))
    }

    fn query_string(&self) -> String {
        query_string(&[
            ("days", &self.days.to_string()),
            ("to", &self.window.last.to_string()),
            ("tz", &self.tz),
        ])
    }
}

fn money_table(id: &str, title: &str, rows: &[(String, i64)]) -> Markup {
    html! {
        div.panel id=(id) { table {
            thead { tr { th { (title) } th.num { "Spend" } } }
            tbody {
                @for (name, nanos) in rows {
                    tr { td { (name) } td.num { (format_dollars(*nanos)) } }
                }
                @if rows.is_empty() { tr { td.muted colspan="2" { "None in the window." } } }
            }
        } }
    }
}

/// Spend per user, product and day over a window, the plot, grants, and months against invoices.
pub fn costs(s: &mut Snapshot<'_>, p: &Params) -> Result<View> {
    let Some(cw) = CostWindow::from(s, p)? else {
        return Ok(View {
            title: "Costs".into(),
            section: Section::Costs,
            content: html! {
                h1 { "Costs" }
                div.panel { p.empty { "No AWS billing files in the ledger: load them with " code { "meterbook costs ingest --source ..." } "." } }
            },
            queries: vec![(
                "The newest day with line items",
                Query::cheap(q::LAST_COST_DAY, vec![]),
            )],
        });
    };
    let w = &cw.window;
    let report = CostReport::read(s.ledger(), w)?;
    let checks_q = Query::cheap(
        q::MONTH_CHECKS,
        vec![
            text(w.first.format("%Y-%m").to_string()),
            text(w.last.format("%Y-%m").to_string()),
        ],
    );
    let checks = s.rows(&checks_q)?;
    let (from, to) = w.utc_range();
    let hourly_q = Query::cheap(
        HOURLY_COSTS_SQL,
        vec![text(format_utc(from)), text(format_utc(to))],
    );
    let named = |v: &[crate::costs::report::NamedCost]| -> Vec<(String, i64)> {
        v.iter().map(|c| (c.name.clone(), c.nanos)).collect()
    };
    let flag_check = |rows: &Rows, i: usize| match rows.get(i, "difference") {
        SqlValue::Real(d) if *d != 0.0 => Some("flag"),
        SqlValue::Integer(d) if *d != 0 => Some("flag"),
        _ => None,
    };
    let content = html! {
        h1 { "Costs" }
        p.subtitle {
            "AWS spend from the detailed billing files, " (w.first) " to " (w.last) " (" (cw.days) " days, " (cw.tz) "). "
            "The same numbers as " code { "meterbook costs report --from " (w.first) " --to " (w.last) " --tz " (cw.tz) " --today " (w.today) }
        }
        form.filters method="get" action="/costs" {
            label { "Last day" input type="date" name="to" value=(w.last); }
            label { "Days" input type="number" name="days" min="1" max="366" value=(cw.days); }
            label { "Time zone" input type="text" name="tz" value=(cw.tz); }
            button type="submit" { "Show" }
        }
        div.cards {
            div.card.info { div.n { (format_dollars(report.window_total_nanos)) } div.what { "spent in the window" } }
            div.card.info { div.n { (format_dollars(report.yesterday.nanos)) } div.what { "on " (report.yesterday.day) " (the last day)" } }
            div.card.info { div.n { (format_dollars(report.yearly_run_rate_nanos)) } div.what { "yearly run rate at that day's spend" } }
            div.card.info { div.n { (format_dollars(report.month_to_date_nanos)) } div.what { "month to date" } }
        }
        h2 { "Daily spend per user" }
        div.plot { img src=(format!("/costs/plot.svg{}", cw.query_string())) alt="Daily spend per user over the window"; }
        div.grid3 {
            div { h2 { "Spend per user" } (money_table("users", "User", &named(&report.users))) }
            div { h2 { "Spend per product" } (money_table("products", "Product", &named(&report.products))) }
            div { h2 { "Spend per day" } (money_table("days", "Day", &report.days.iter().map(|d| (d.day.to_string(), d.nanos)).collect::<Vec<_>>())) }
        }
        h2 { "Grants" }
        div.panel #grants { table {
            thead { tr { th { "User" } th { "Grant period" } th.num { "Grant" } th.num { "Spent" } th.num { "Remaining" } th { "Outlook at the window's daily rate" } } }
            tbody {
                @for g in &report.grants {
                    tr class=[g.overspent().then_some("flag")] {
                        td { (g.user) }
                        td { (g.starts_on) " – " @if let Some(end) = g.ends_on { (end) } @else { "open" } }
                        td.num { (format_dollars(g.grant_nanos)) }
                        td.num { (format_dollars(g.spent_nanos)) }
                        td.num { (format_dollars(g.remaining_nanos)) }
                        td {
                            @if g.overspent() { span.badge.bad { "overspent" } }
                            @else if let Some(day) = g.runs_out_on { "runs out on " (day) }
                            @else { "lasts" }
                        }
                    }
                }
                @if report.grants.is_empty() { tr { td.muted colspan="6" { "No grants: load them with " code { "meterbook costs grants load FILE" } "." } } }
            }
        } }
        h2 { "Months against their invoices" }
        div #checks { (table(&checks, &[
            Col::new("Account", "account_id", Kind::Id),
            Col::new("Month", "month", Kind::Text),
            Col::new("Line items", "line_items", Kind::Num),
            Col::new("Rounding", "rounding", Kind::Num),
            Col::new("Invoice total", "invoice_total", Kind::Num),
            Col::new("Difference", "difference", Kind::Num),
            Col::new("File", "status", Kind::Status),
        ], &flag_check)) }
    };
    Ok(View {
        title: "Costs".into(),
        section: Section::Costs,
        content,
        queries: vec![
            (
                "Spend per hour, user and product (summed into local days by meterbook)",
                hourly_q,
            ),
            ("Grants", Query::cheap(COST_GRANTS_SQL, vec![])),
            (
                "A grant's spend (per grant: user, first instant, end)",
                Query::cheap(USER_SPEND_SQL, vec![]),
            ),
            ("Months against their invoices", checks_q),
        ],
    })
}

/// The plot of the costs page's window, as SVG.
pub fn costs_plot(s: &mut Snapshot<'_>, p: &Params) -> Result<Option<String>> {
    let Some(cw) = CostWindow::from(s, p)? else {
        return Ok(None);
    };
    let report = CostReport::read(s.ledger(), &cw.window)?;
    Ok(Some(crate::costs::plot::svg(&report)?))
}
