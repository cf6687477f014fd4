//! The cost report: yesterday's spend and its yearly run rate, spend per user, product and day
//! over a window of local days, and the month's line items checked against the invoice total.
//! Days are the account managers' (any IANA time zone, daylight saving included): the ledger
//! gives spend per UTC hour and each hour is counted on the local day it starts in.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use chrono::{DateTime, Datelike, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::grants::Grant;
use super::money::{format_dollars, to_dollars};
use crate::error::Outcome;
use crate::ledger::{HourlyCost, Ledger, LedgerFile, MonthCheck};

/// The name used for spend without a user tag.
pub const UNTAGGED: &str = "(untagged)";

/// Which local days a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub tz: Tz,
    /// Today in `tz`; "yesterday" is the day before.
    pub today: NaiveDate,
    /// First and last day of the window, inclusive.
    pub first: NaiveDate,
    pub last: NaiveDate,
}

impl Window {
    pub fn yesterday(&self) -> NaiveDate {
        self.today - Days::new(1)
    }

    /// Every day of the window, in order.
    pub fn days(&self) -> impl Iterator<Item = NaiveDate> {
        let last = self.last;
        self.first.iter_days().take_while(move |d| *d <= last)
    }

    /// The UTC instants that bound yesterday, the window and yesterday's month so far.
    pub fn utc_range(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let yesterday = self.yesterday();
        let month_start = yesterday.with_day(1).unwrap_or(yesterday);
        let first = self.first.min(month_start);
        let last = self.last.max(yesterday);
        (
            local_midnight(self.tz, first),
            local_midnight(self.tz, last + Days::new(1)),
        )
    }
}

/// The instant a local day starts (the first valid local time if midnight is skipped).
pub fn local_midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut t = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    loop {
        if let Some(local) = tz.from_local_datetime(&t).earliest() {
            return local.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedCost {
    pub name: String,
    pub nanos: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayCost {
    pub day: NaiveDate,
    pub nanos: i64,
}

/// Everything the report says, before it is formatted.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub time_zone: String,
    pub yesterday: DayCost,
    /// Yesterday's spend times 365.
    pub yearly_run_rate_nanos: i64,
    pub window_first: NaiveDate,
    pub window_last: NaiveDate,
    pub window_total_nanos: i64,
    /// Largest first; untagged spend is [`UNTAGGED`].
    pub users: Vec<NamedCost>,
    pub products: Vec<NamedCost>,
    pub days: Vec<DayCost>,
    /// Per day and user, for plots.
    #[serde(skip)]
    pub user_days: BTreeMap<String, BTreeMap<NaiveDate, i64>>,
    /// Yesterday's local month, from its first day through yesterday.
    pub month_to_date_nanos: i64,
    /// The UTC billing month of yesterday, checked against the invoice total per account.
    pub month_checks: Vec<MonthCheck>,
    /// Each grant against its user's spend over the grant's local days.
    pub grants: Vec<GrantSpend>,
}

/// A grant and what its user has spent of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantSpend {
    pub user: String,
    pub starts_on: NaiveDate,
    /// Inclusive; `None` when open-ended.
    pub ends_on: Option<NaiveDate>,
    pub grant_nanos: i64,
    /// Over the grant's days so far (every line item ingested).
    pub spent_nanos: i64,
    /// Negative when overspent.
    pub remaining_nanos: i64,
    /// The user's average daily spend over the report's window.
    pub daily_rate_nanos: i64,
    /// At that rate, the day the remainder is used up, when that is within the grant.
    pub runs_out_on: Option<NaiveDate>,
}

impl GrantSpend {
    pub fn overspent(&self) -> bool {
        self.remaining_nanos < 0
    }
}

impl CostReport {
    /// The report of the window, from the ledger (opened for reading).
    pub fn from_ledger(ledger: &LedgerFile, window: &Window) -> Result<CostReport> {
        CostReport::read(&Ledger::open_for_reading(ledger)?, window)
    }

    /// The report of `window` from an open ledger: hourly spend, the invoice check of
    /// yesterday's month, and every grant against its user's spend.
    pub fn read(ledger: &Ledger, window: &Window) -> Result<CostReport> {
        let (from, to) = window.utc_range();
        let hours = ledger.hourly_costs(from, to)?;
        let month = window.yesterday().format("%Y-%m").to_string();
        let checks = ledger.cost_month_checks(&month)?;
        let mut report = CostReport::build(window, &hours, checks);
        for grant in ledger.cost_grants()? {
            let (from, to) = CostReport::grant_range(window, &grant);
            report.add_grant(&grant, ledger.user_spend(&grant.user, from, to)?);
        }
        Ok(report)
    }

    /// Says what needs attention: a month's line items that differ from its invoice total, an
    /// overspent grant.
    pub fn attention(&self) -> Outcome {
        let mut outcome = Outcome::Success;
        if self.has_invoice_difference() {
            tracing::warn!("a month's line items differ from its invoice total; see: meterbook sql \"SELECT * FROM cost_month_check\"");
            outcome = Outcome::NeedsAttention;
        }
        for g in self.grants.iter().filter(|g| g.overspent()) {
            tracing::warn!(
                "{} has spent more than the grant starting {}",
                g.user,
                g.starts_on
            );
            outcome = Outcome::NeedsAttention;
        }
        outcome
    }

    /// Buckets hourly spend into the window's local days.
    pub fn build(
        window: &Window,
        hours: &[HourlyCost],
        month_checks: Vec<MonthCheck>,
    ) -> CostReport {
        let yesterday = window.yesterday();
        let month_start = yesterday.with_day(1).unwrap_or(yesterday);
        let mut yesterday_nanos = 0;
        let mut month_to_date = 0;
        let mut users: BTreeMap<String, i64> = BTreeMap::new();
        let mut products: BTreeMap<String, i64> = BTreeMap::new();
        let mut days: BTreeMap<NaiveDate, i64> = window.days().map(|d| (d, 0)).collect();
        let mut user_days: BTreeMap<String, BTreeMap<NaiveDate, i64>> = BTreeMap::new();
        for h in hours {
            let day = h.hour.with_timezone(&window.tz).date_naive();
            if day == yesterday {
                yesterday_nanos += h.nanos;
            }
            if (month_start..=yesterday).contains(&day) {
                month_to_date += h.nanos;
            }
            if !(window.first..=window.last).contains(&day) {
                continue;
            }
            let user = h.user.clone().unwrap_or_else(|| UNTAGGED.to_string());
            *users.entry(user.clone()).or_default() += h.nanos;
            *products
                .entry(h.product.clone().unwrap_or_else(|| "(no product)".into()))
                .or_default() += h.nanos;
            *days.entry(day).or_default() += h.nanos;
            *user_days.entry(user).or_default().entry(day).or_default() += h.nanos;
        }
        CostReport {
            time_zone: window.tz.name().to_string(),
            yesterday: DayCost {
                day: yesterday,
                nanos: yesterday_nanos,
            },
            yearly_run_rate_nanos: yesterday_nanos.saturating_mul(365),
            window_first: window.first,
            window_last: window.last,
            window_total_nanos: days.values().sum(),
            users: largest_first(users),
            products: largest_first(products),
            days: days
                .into_iter()
                .map(|(day, nanos)| DayCost { day, nanos })
                .collect(),
            user_days,
            month_to_date_nanos: month_to_date,
            month_checks,
            grants: Vec::new(),
        }
    }

    /// The UTC instants that bound a grant's local days (`None`: open-ended).
    pub fn grant_range(window: &Window, grant: &Grant) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        (
            local_midnight(window.tz, grant.starts_on),
            grant
                .ends_on
                .map(|end| local_midnight(window.tz, end + Days::new(1))),
        )
    }

    /// Adds a grant with what its user spent over its days (see [`CostReport::grant_range`]);
    /// the rate it runs out at is the user's average over the window.
    pub fn add_grant(&mut self, grant: &Grant, spent_nanos: i64) {
        let window_days = self.days.len().max(1) as i64;
        let in_window = self
            .users
            .iter()
            .find(|u| u.name == grant.user)
            .map_or(0, |u| u.nanos);
        let daily_rate_nanos = in_window / window_days;
        let remaining_nanos = grant.amount_nanos - spent_nanos;
        let runs_out_on = (remaining_nanos > 0 && daily_rate_nanos > 0)
            .then(|| {
                let days = (remaining_nanos + daily_rate_nanos - 1) / daily_rate_nanos;
                self.yesterday
                    .day
                    .checked_add_days(Days::new(u64::try_from(days).ok()?))
            })
            .flatten()
            .filter(|day| grant.ends_on.is_none_or(|end| *day <= end));
        self.grants.push(GrantSpend {
            user: grant.user.clone(),
            starts_on: grant.starts_on,
            ends_on: grant.ends_on,
            grant_nanos: grant.amount_nanos,
            spent_nanos,
            remaining_nanos,
            daily_rate_nanos,
            runs_out_on,
        });
    }

    /// Has a user spent more than a grant?
    pub fn has_overspent_grant(&self) -> bool {
        self.grants.iter().any(GrantSpend::overspent)
    }

    /// One line: yesterday's spend and the yearly run rate (also the email subject).
    pub fn headline(&self) -> String {
        format!(
            "AWS spend yesterday ({}, {}): {}, yearly run rate {}",
            self.yesterday.day,
            self.time_zone,
            format_dollars(self.yesterday.nanos),
            format_dollars(self.yearly_run_rate_nanos)
        )
    }

    /// Does a month's sum of line items differ from its invoice total?
    pub fn has_invoice_difference(&self) -> bool {
        self.month_checks
            .iter()
            .any(|c| c.difference_nanos().is_some_and(|d| d != 0))
    }

    /// Plain text for a terminal or an email body.
    pub fn write_text(&self, out: &mut dyn Write) -> Result<()> {
        writeln!(out, "{}", self.headline())?;
        writeln!(out)?;
        writeln!(
            out,
            "Window {} to {} ({} days, {}): {}",
            self.window_first,
            self.window_last,
            self.days.len(),
            self.time_zone,
            format_dollars(self.window_total_nanos)
        )?;
        write_section(
            out,
            "Spend per user",
            self.users.iter().map(|c| (c.name.clone(), c.nanos)),
        )?;
        write_section(
            out,
            "Spend per product",
            self.products.iter().map(|c| (c.name.clone(), c.nanos)),
        )?;
        write_section(
            out,
            "Spend per day",
            self.days.iter().map(|d| (d.day.to_string(), d.nanos)),
        )?;
        self.write_grants(out)?;
        writeln!(out)?;
        writeln!(
            out,
            "Month to date ({} to {}): {}",
            self.yesterday.day.with_day(1).unwrap_or(self.yesterday.day),
            self.yesterday.day,
            format_dollars(self.month_to_date_nanos)
        )?;
        for c in &self.month_checks {
            let items = format_dollars(c.line_items_nanos + c.rounding_nanos);
            match (c.invoice_total_nanos, c.difference_nanos()) {
                (Some(total), Some(diff)) => writeln!(
                    out,
                    "Billing month {} (UTC), account {}: line items {items}, invoice total {}, difference {}{}",
                    c.month,
                    c.account_id,
                    format_dollars(total),
                    format_dollars(diff),
                    if diff == 0 { "" } else { "  <-- CHECK" }
                )?,
                _ => writeln!(
                    out,
                    "Billing month {} (UTC), account {}: line items {items}, no invoice total in the file yet",
                    c.month, c.account_id
                )?,
            }
        }
        Ok(())
    }

    /// The grants as a table; nothing when there are none.
    fn write_grants(&self, out: &mut dyn Write) -> Result<()> {
        if self.grants.is_empty() {
            return Ok(());
        }
        let mut rows = vec![[
            "user".to_string(),
            "grant period".into(),
            "grant".into(),
            "spent".into(),
            "used".into(),
            "remaining".into(),
            "at the window's daily rate".into(),
        ]];
        for g in &self.grants {
            let used = match g.grant_nanos {
                0 => "-".to_string(),
                total => format!("{:.1}%", 100.0 * g.spent_nanos as f64 / total as f64),
            };
            let outlook = if g.overspent() {
                "OVERSPENT".to_string()
            } else if let Some(day) = g.runs_out_on {
                format!("runs out {day}")
            } else if g.remaining_nanos == 0 {
                "used up".to_string()
            } else {
                "lasts the grant".to_string()
            };
            rows.push([
                g.user.clone(),
                format!(
                    "{} to {}",
                    g.starts_on,
                    g.ends_on.map_or("(open)".to_string(), |d| d.to_string())
                ),
                format_dollars(g.grant_nanos),
                format_dollars(g.spent_nanos),
                used,
                format_dollars(g.remaining_nanos),
                outlook,
            ]);
        }
        let widths: Vec<usize> = (0..7)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        writeln!(out)?;
        writeln!(out, "Spend against grants (days in {})", self.time_zone)?;
        for row in rows {
            let mut line = String::from(" ");
            for (c, cell) in row.iter().enumerate() {
                let w = widths[c];
                // Names and text left, money and percentages right.
                match c {
                    0 | 1 | 6 => line.push_str(&format!(" {cell:<w$}")),
                    _ => line.push_str(&format!(" {cell:>w$}")),
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    /// `section,name,cost` rows: yesterday, run_rate, user, product, day, month_to_date,
    /// invoice_difference per account, and grant_spent and grant_remaining per grant (named
    /// `user:start`).
    pub fn write_csv(&self, out: &mut dyn Write) -> Result<()> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record(["section", "name", "cost"])?;
        let mut row = |section: &str, name: &str, nanos: i64| {
            w.write_record([section, name, &dollars_text(nanos)])
        };
        row(
            "yesterday",
            &self.yesterday.day.to_string(),
            self.yesterday.nanos,
        )?;
        row("run_rate", "yearly", self.yearly_run_rate_nanos)?;
        for c in &self.users {
            row("user", &c.name, c.nanos)?;
        }
        for c in &self.products {
            row("product", &c.name, c.nanos)?;
        }
        for d in &self.days {
            row("day", &d.day.to_string(), d.nanos)?;
        }
        row(
            "month_to_date",
            &self.yesterday.day.format("%Y-%m").to_string(),
            self.month_to_date_nanos,
        )?;
        for c in &self.month_checks {
            if let Some(diff) = c.difference_nanos() {
                row(
                    "invoice_difference",
                    &format!("{}:{}", c.account_id, c.month),
                    diff,
                )?;
            }
        }
        for g in &self.grants {
            let name = format!("{}:{}", g.user, g.starts_on);
            row("grant_spent", &name, g.spent_nanos)?;
            row("grant_remaining", &name, g.remaining_nanos)?;
        }
        w.flush()?;
        Ok(())
    }

    /// The report as one JSON object; costs are dollars (`*_nanos` fields are exact integers).
    pub fn write_json(&self, out: &mut dyn Write) -> Result<()> {
        let mut value = serde_json::to_value(self)?;
        add_dollars(&mut value);
        value["headline"] = self.headline().into();
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        Ok(())
    }
}

/// Next to every `x_nanos` (or `nanos`) field, adds `x` (or `cost`) in dollars.
fn add_dollars(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let extra: Vec<(String, f64)> = map
                .iter()
                .filter_map(|(k, v)| {
                    let nanos = v.as_i64()?;
                    let name = match k.strip_suffix("_nanos") {
                        Some(stem) => stem.to_string(),
                        None if k == "nanos" => "cost".to_string(),
                        None => return None,
                    };
                    Some((name, to_dollars(nanos)))
                })
                .collect();
            map.values_mut().for_each(add_dollars);
            for (k, v) in extra {
                map.insert(k, v.into());
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(add_dollars),
        _ => {}
    }
}

/// Dollars with all nine decimals, exact.
fn dollars_text(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    format!("{sign}{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

fn largest_first(costs: BTreeMap<String, i64>) -> Vec<NamedCost> {
    let mut v: Vec<NamedCost> = costs
        .into_iter()
        .map(|(name, nanos)| NamedCost { name, nanos })
        .collect();
    v.sort_by(|a, b| b.nanos.cmp(&a.nanos).then_with(|| a.name.cmp(&b.name)));
    v
}

fn write_section(
    out: &mut dyn Write,
    title: &str,
    rows: impl Iterator<Item = (String, i64)>,
) -> Result<()> {
    let rows: Vec<(String, String)> = rows.map(|(n, c)| (n, format_dollars(c))).collect();
    let name_width = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let cost_width = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    writeln!(out)?;
    writeln!(out, "{title}")?;
    for (name, cost) in rows {
        writeln!(out, "  {name:<name_width$}  {cost:>cost_width$}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cost(at: &str, user: Option<&str>, dollars: i64) -> HourlyCost {
        HourlyCost {
            hour: hour(at),
            user: user.map(str::to_string),
            product: Some("Amazon EC2".into()),
            nanos: dollars * 1_000_000_000,
        }
    }

    fn window(tz: Tz, today: &str, days: u64) -> Window {
        let today: NaiveDate = today.parse().unwrap();
        Window {
            tz,
            today,
            first: today - Days::new(days),
            last: today - Days::new(1),
        }
    }

    #[test]
    fn local_days_follow_daylight_saving() {
        let la = chrono_tz::America::Los_Angeles;
        // Summer: PDT, UTC-7.
        assert_eq!(
            local_midnight(la, "2025-06-15".parse().unwrap()),
            hour("2025-06-15T07:00:00Z")
        );
        // Winter: PST, UTC-8.
        assert_eq!(
            local_midnight(la, "2025-12-15".parse().unwrap()),
            hour("2025-12-15T08:00:00Z")
        );
    }

    #[test]
    fn hours_count_on_the_local_day_they_start_in() {
        let w = window(chrono_tz::America::Los_Angeles, "2025-06-16", 2);
        let report = CostReport::build(
            &w,
            &[
                // 2025-06-15 06:00 UTC is 23:00 on the 14th in Los Angeles.
                cost("2025-06-15T06:00:00Z", Some("alice"), 1),
                cost("2025-06-15T07:00:00Z", Some("alice"), 2),
                cost("2025-06-16T06:00:00Z", None, 4),
                // 07:00 UTC on the 16th is the 16th locally: today, outside the window.
                cost("2025-06-16T07:00:00Z", Some("bob"), 8),
            ],
            Vec::new(),
        );
        assert_eq!(report.yesterday.day.to_string(), "2025-06-15");
        assert_eq!(report.yesterday.nanos, 6_000_000_000);
        assert_eq!(report.yearly_run_rate_nanos, 365 * 6_000_000_000);
        assert_eq!(
            report.days,
            vec![
                DayCost {
                    day: "2025-06-14".parse().unwrap(),
                    nanos: 1_000_000_000
                },
                DayCost {
                    day: "2025-06-15".parse().unwrap(),
                    nanos: 6_000_000_000
                },
            ]
        );
        assert_eq!(
            report.users[0],
            NamedCost {
                name: UNTAGGED.into(),
                nanos: 4_000_000_000
            }
        );
        assert_eq!(
            report.users[1],
            NamedCost {
                name: "alice".into(),
                nanos: 3_000_000_000
            }
        );
        assert_eq!(report.month_to_date_nanos, 7_000_000_000);
    }

    #[test]
    fn a_grant_runs_out_at_the_window_rate_unless_it_ends_first() {
        let w = window(chrono_tz::UTC, "2025-06-11", 10);
        // alice spends $10 a day over the 10-day window.
        let hours: Vec<HourlyCost> = (1..=10)
            .map(|d| cost(&format!("2025-06-{d:02}T12:00:00Z"), Some("alice"), 10))
            .collect();
        let mut report = CostReport::build(&w, &hours, Vec::new());
        let grant = |amount: i64, ends_on: Option<&str>| Grant {
            user: "alice".into(),
            amount_nanos: amount * 1_000_000_000,
            starts_on: "2025-06-01".parse().unwrap(),
            ends_on: ends_on.map(|d| d.parse().unwrap()),
            note: None,
            line: 2,
        };
        // $100 spent of $125: $25 left lasts 3 more days at $10 a day.
        report.add_grant(&grant(125, None), 100_000_000_000);
        // The same, but the grant ends before then.
        report.add_grant(&grant(125, Some("2025-06-12")), 100_000_000_000);
        // Overspent.
        report.add_grant(&grant(90, None), 100_000_000_000);
        let g = &report.grants;
        assert_eq!(g[0].daily_rate_nanos, 10_000_000_000);
        assert_eq!(g[0].remaining_nanos, 25_000_000_000);
        assert_eq!(g[0].runs_out_on, Some("2025-06-13".parse().unwrap()));
        assert_eq!(g[1].runs_out_on, None);
        assert!(g[2].overspent() && report.has_overspent_grant());
        let mut text = Vec::new();
        report.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("runs out 2025-06-13"), "{text}");
        assert!(text.contains("lasts the grant"), "{text}");
        assert!(text.contains("OVERSPENT"), "{text}");
    }

    #[test]
    fn csv_costs_keep_every_decimal() {
        assert_eq!(dollars_text(91_200_000), "0.091200000");
        assert_eq!(dollars_text(-1), "-0.000000001");
        assert_eq!(dollars_text(12_000_000_001), "12.000000001");
    }
}
