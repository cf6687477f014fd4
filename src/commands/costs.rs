//! `meterbook costs`: ingest AWS detailed billing files, report spend (and email the report),
//! plot daily spend per user.

use std::fs::File;
use std::io::Write;

use anyhow::{Context, Result};

use crate::cli::{CostsArgs, CostsCommand, GlobalArgs, GrantsCommand, ReportFormat};
use crate::config::{CostIngestSettings, CostPlotSettings, CostReportSettings, Environment};
use crate::costs::grants::read_grants;
use crate::costs::mail::{self, Attachment};
use crate::costs::parse::BillingRows;
use crate::costs::plot::write_plots;
use crate::costs::report::{CostReport, Window};
use crate::costs::source::{with_csv, BillingObject, BillingSource};
use crate::error::{Fatal, Outcome};
use crate::ledger::{CostFile, Ledger, LedgerFile, StoredCostFile};

pub async fn run(global: &GlobalArgs, args: &CostsArgs, env: &Environment) -> Result<Outcome> {
    match &args.command {
        CostsCommand::Ingest(a) => ingest(&CostIngestSettings::resolve(global, a)?).await,
        CostsCommand::Report(a) => report(&CostReportSettings::resolve(global, a, env)?).await,
        CostsCommand::Plot(a) => plot(&CostPlotSettings::resolve(global, a)?),
        CostsCommand::Grants(GrantsCommand::Load { file }) => load_grants(global, file),
    }
}

/// Replaces the grants with a file's; warns of users no line item names (a misspelt user would
/// otherwise show a grant with nothing spent).
fn load_grants(global: &GlobalArgs, file: &std::path::Path) -> Result<Outcome> {
    let grants = read_grants(file).map_err(Fatal::Config)?;
    let mut ledger = Ledger::open_for_writing(&global.ledger_file())?;
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

/// Counts for the closing summary line.
#[derive(Debug, Default)]
struct IngestCounts {
    seen: u64,
    new: u64,
    replaced: u64,
    unchanged: u64,
    rejected: u64,
    line_items: u64,
    totals: u64,
    problems: u64,
}

async fn ingest(settings: &CostIngestSettings) -> Result<Outcome> {
    let tags = &settings.user_tags;
    let source = BillingSource::open(&settings.source, &settings.s3).await?;
    let mut ledger = Ledger::open_for_writing(&settings.ledger)?;
    let updated = ledger.set_cost_user_tags(tags)?;
    if updated > 0 {
        tracing::info!(
            "user tags are now {}: re-resolved the user of {updated} line items",
            tags.join(",")
        );
    }
    let objects = source.list().await?;
    if objects.is_empty() {
        tracing::warn!("no billing files in {}", source.describe());
    }
    let mut counts = IngestCounts::default();
    for object in objects {
        counts.seen += 1;
        let month = object.name.month.to_string();
        if let Some((key, known)) = ledger.known_cost_file(&object.name.account_id, &month)? {
            let meta = &object.meta;
            if key == meta.key && known.matches(meta.etag.as_deref(), meta.size, meta.last_modified)
            {
                counts.unchanged += 1;
                continue;
            }
        }
        let body = source.fetch(&object.meta).await?;
        let file = cost_file(&source, &object);
        let stored = tokio::task::block_in_place(|| {
            store(
                &mut ledger,
                &file,
                body,
                object.name.zipped,
                tags,
                settings.max_csv_bytes,
            )
        })?;
        tracing::info!(
            "{}: {} line items, {} total rows, {} problems{}",
            file.key,
            stored.line_items,
            stored.totals,
            stored.problems,
            if stored.rejected { " (rejected)" } else { "" }
        );
        match (stored.rejected, stored.replaced) {
            (true, _) => counts.rejected += 1,
            (false, true) => counts.replaced += 1,
            (false, false) => counts.new += 1,
        }
        counts.line_items += stored.line_items;
        counts.totals += stored.totals;
        counts.problems += stored.problems;
    }
    let c = &counts;
    let line = format!(
        "costs ingest: {} files ({} new, {} replaced, {} unchanged, {} rejected), {} line items, {} total rows, {} problems",
        c.seen, c.new, c.replaced, c.unchanged, c.rejected, c.line_items, c.totals, c.problems
    );
    if c.problems > 0 {
        tracing::warn!("{line}");
        tracing::warn!("see: meterbook sql \"SELECT * FROM cost_problems\"");
        Ok(Outcome::NeedsAttention)
    } else {
        tracing::info!("{line}");
        Ok(Outcome::Success)
    }
}

/// Streams one billing file into the ledger; a file with no readable CSV is recorded as rejected.
fn store(
    ledger: &mut Ledger,
    file: &CostFile,
    body: File,
    zipped: bool,
    tags: &[String],
    max_csv_bytes: u64,
) -> Result<StoredCostFile> {
    let read = with_csv(body, zipped, |input| {
        match BillingRows::new(input, tags, max_csv_bytes) {
            Ok(rows) => ledger.store_cost_file(file, rows),
            Err(reason) => reject(ledger, file, &reason),
        }
    });
    match read {
        Ok(stored) => stored,
        Err(reason) => reject(ledger, file, &reason),
    }
}

fn reject(ledger: &mut Ledger, file: &CostFile, reason: &str) -> Result<StoredCostFile> {
    tracing::warn!("{}: {reason}", file.key);
    ledger.reject_cost_file(file, reason)?;
    Ok(StoredCostFile::rejected())
}

fn cost_file(source: &BillingSource, object: &BillingObject) -> CostFile {
    CostFile {
        key: object.meta.key.clone(),
        source: source.describe(),
        account_id: object.name.account_id.clone(),
        month: object.name.month.to_string(),
        etag: object.meta.etag.clone(),
        size: object.meta.size,
        last_modified: object.meta.last_modified,
    }
}

async fn report(settings: &CostReportSettings) -> Result<Outcome> {
    let report = build_report(&settings.ledger, &settings.window)?;
    {
        let mut out = std::io::stdout().lock();
        match settings.format {
            ReportFormat::Text => report.write_text(&mut out)?,
            ReportFormat::Json => report.write_json(&mut out)?,
            ReportFormat::Csv => report.write_csv(&mut out)?,
        }
        out.flush()?;
    }
    if let Some(mail) = settings.mail.clone() {
        let mut body = Vec::new();
        report.write_text(&mut body)?;
        let body = String::from_utf8(body).context("the report is not UTF-8")?;
        let attachments = match settings.plot {
            true => vec![plot_attachment(&report)?],
            false => Vec::new(),
        };
        let subject = report.headline();
        let recipients = mail.to.len();
        tokio::task::spawn_blocking(move || mail::send(&mail, &subject, body, attachments))
            .await??;
        tracing::info!("emailed the report to {recipients} recipient(s)");
    }
    let mut outcome = Outcome::Success;
    if report.has_invoice_difference() {
        tracing::warn!("a month's line items differ from its invoice total; see: meterbook sql \"SELECT * FROM cost_month_check\"");
        outcome = Outcome::NeedsAttention;
    }
    for g in report.grants.iter().filter(|g| g.overspent()) {
        tracing::warn!(
            "{} has spent more than the grant starting {}",
            g.user,
            g.starts_on
        );
        outcome = Outcome::NeedsAttention;
    }
    Ok(outcome)
}

/// The window's plot as a PNG for the email, drawn in a temporary folder.
fn plot_attachment(report: &CostReport) -> Result<Attachment> {
    let dir = tempfile::tempdir().context("creating a temporary folder for the plot")?;
    let (png, svg) = (dir.path().join("plot.png"), dir.path().join("plot.svg"));
    write_plots(report, &png, &svg)?;
    Ok(Attachment {
        name: format!(
            "spend-per-user-{}-to-{}.png",
            report.window_first, report.window_last
        ),
        content_type: "image/png".into(),
        body: std::fs::read(&png).context("reading the plot back")?,
    })
}

fn plot(settings: &CostPlotSettings) -> Result<Outcome> {
    let report = build_report(&settings.ledger, &settings.window)?;
    let svg = settings.png.with_extension("svg");
    write_plots(&report, &settings.png, &svg)?;
    println!("{}", settings.png.display());
    println!("{}", svg.display());
    Ok(Outcome::Success)
}

fn build_report(ledger: &LedgerFile, window: &Window) -> Result<CostReport> {
    let ledger = Ledger::open_for_reading(ledger)?;
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
