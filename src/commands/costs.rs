//! `meterbook costs`: ingest AWS detailed billing files, report spend (and email the report),
//! plot daily spend per user.

use std::fs::File;
use std::io::Write;

use anyhow::{Context, Result};
use chrono::{Days, Utc};
use chrono_tz::Tz;

use crate::cli::{
    CostsArgs, CostsCommand, CostsIngestArgs, CostsPlotArgs, CostsReportArgs, CostsWindowArgs,
    EmailArgs, GlobalArgs, GrantsCommand, ReportFormat,
};
use crate::config::SourceSpec;
use crate::costs::grants::read_grants;
use crate::costs::mail::{self, Attachment, MailSettings};
use crate::costs::parse::BillingRows;
use crate::costs::plot::write_plots;
use crate::costs::report::{CostReport, Window};
use crate::costs::source::{with_csv, BillingObject, BillingSource};
use crate::error::{Fatal, Outcome};
use crate::ledger::{CostFile, Ledger, StoredCostFile};

pub async fn run(global: &GlobalArgs, args: &CostsArgs) -> Result<Outcome> {
    match &args.command {
        CostsCommand::Ingest(a) => ingest(global, a).await,
        CostsCommand::Report(a) => report(global, a).await,
        CostsCommand::Plot(a) => plot(global, a),
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

async fn ingest(global: &GlobalArgs, args: &CostsIngestArgs) -> Result<Outcome> {
    let tags = user_tags(&args.user_tags)?;
    let source =
        BillingSource::open(&SourceSpec::parse(&args.source)?, &global.s3.resolve()).await?;
    let mut ledger = Ledger::open_for_writing(&global.ledger_file())?;
    let updated = ledger.set_cost_user_tags(&tags)?;
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
                &tags,
                args.max_csv_bytes,
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

fn user_tags(raw: &[String]) -> Result<Vec<String>> {
    let tags: Vec<String> = raw
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if tags.is_empty() {
        return Err(Fatal::Config("--user-tags names no tag".into()).into());
    }
    if let Some(bad) = tags.iter().find(|t| t.contains(['"', '\\'])) {
        return Err(
            Fatal::Config(format!("--user-tags: {bad:?} may not contain '\"' or '\\'")).into(),
        );
    }
    Ok(tags)
}

async fn report(global: &GlobalArgs, args: &CostsReportArgs) -> Result<Outcome> {
    let window = resolve_window(&args.window)?;
    let mail = (!args.email.email_to.is_empty())
        .then(|| mail_settings(&args.email))
        .transpose()?;
    let report = build_report(global, &window)?;
    {
        let mut out = std::io::stdout().lock();
        match args.format {
            ReportFormat::Text => report.write_text(&mut out)?,
            ReportFormat::Json => report.write_json(&mut out)?,
            ReportFormat::Csv => report.write_csv(&mut out)?,
        }
        out.flush()?;
    }
    if let Some(settings) = mail {
        let mut body = Vec::new();
        report.write_text(&mut body)?;
        let body = String::from_utf8(body).context("the report is not UTF-8")?;
        let attachments = match args.no_plot {
            true => Vec::new(),
            false => vec![plot_attachment(&report)?],
        };
        let subject = report.headline();
        let recipients = settings.to.len();
        tokio::task::spawn_blocking(move || mail::send(&settings, &subject, body, attachments))
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

fn plot(global: &GlobalArgs, args: &CostsPlotArgs) -> Result<Outcome> {
    let window = resolve_window(&args.window)?;
    let report = build_report(global, &window)?;
    let svg = args.out.with_extension("svg");
    write_plots(&report, &args.out, &svg)?;
    println!("{}", args.out.display());
    println!("{}", svg.display());
    Ok(Outcome::Success)
}

fn build_report(global: &GlobalArgs, window: &Window) -> Result<CostReport> {
    CostReport::from_ledger(&Ledger::open_for_reading(&global.ledger_file())?, window)
}

fn resolve_window(args: &CostsWindowArgs) -> Result<Window> {
    let tz: Tz = args.tz.trim().parse().map_err(|_| {
        Fatal::Config(format!(
            "--tz {:?} is not a time zone; use an IANA name such as America/Los_Angeles or UTC",
            args.tz
        ))
    })?;
    let today = args
        .today
        .unwrap_or_else(|| Utc::now().with_timezone(&tz).date_naive());
    let last = args.to.unwrap_or(today - Days::new(1));
    let first = match args.from {
        Some(from) => from,
        None if args.days == 0 => {
            return Err(Fatal::Config("--days must be at least 1".into()).into())
        }
        None => last - Days::new(u64::from(args.days) - 1),
    };
    if first > last {
        return Err(Fatal::Config(format!(
            "the window starts ({first}) after it ends ({last})"
        ))
        .into());
    }
    if (last - first).num_days() > 3660 {
        return Err(Fatal::Config("the window is longer than ten years".into()).into());
    }
    Ok(Window {
        tz,
        today,
        first,
        last,
    })
}

fn mail_settings(args: &EmailArgs) -> Result<MailSettings> {
    let config = |m: String| anyhow::Error::from(Fatal::Config(m));
    let mailbox = |what: &str, s: &str| {
        s.trim()
            .parse()
            .map_err(|e| config(format!("{what} {s:?} is not an email address: {e}")))
    };
    let from = args.email_from.as_deref().ok_or_else(|| {
        config("--email-from (or METERBOOK_EMAIL_FROM) is needed to send email".into())
    })?;
    let host = args
        .smtp_host
        .clone()
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| config("--smtp-host (or SMTP_HOST) is needed to send email".into()))?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let credentials = match (env("SMTP_USERNAME"), env("SMTP_PASSWORD")) {
        (Some(user), Some(password)) => Some((user, password)),
        (None, None) => None,
        _ => {
            return Err(config(
                "set both SMTP_USERNAME and SMTP_PASSWORD, or neither".into(),
            ))
        }
    };
    Ok(MailSettings {
        host: host.trim().to_string(),
        port: args.smtp_port,
        security: args.smtp_security,
        from: mailbox("--email-from", from)?,
        to: args
            .email_to
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| mailbox("--email-to", t))
            .collect::<Result<_>>()?,
        credentials,
    })
}
