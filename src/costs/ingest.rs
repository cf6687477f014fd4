//! Reading billing files into the ledger: list the source, skip files the ledger has unchanged
//! (same key, and ETag or size and modification time), and stream each other file's CSV into
//! line items, total rows and problems, one transaction per file. Memory stays flat whatever the
//! file's size (see [`super::source`] and [`super::parse`]).

use std::fs::File;

use anyhow::Result;

use super::parse::BillingRows;
use super::source::{with_csv, BillingObject, BillingSource};
use crate::config::CostIngestSettings;
use crate::error::Outcome;
use crate::ledger::{CostFile, Ledger, StoredCostFile};

/// What a cost ingest did, for the closing summary line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestCounts {
    pub seen: u64,
    pub new: u64,
    pub replaced: u64,
    pub unchanged: u64,
    pub rejected: u64,
    pub line_items: u64,
    pub totals: u64,
    pub problems: u64,
}

impl IngestCounts {
    /// Logs the summary line (a warning, with where to look, when there were problems) and says
    /// how the ingest went.
    pub fn report(&self) -> Outcome {
        let c = self;
        let line = format!(
            "costs ingest: {} files ({} new, {} replaced, {} unchanged, {} rejected), {} line items, {} total rows, {} problems",
            c.seen, c.new, c.replaced, c.unchanged, c.rejected, c.line_items, c.totals, c.problems
        );
        if c.problems > 0 {
            tracing::warn!("{line}");
            tracing::warn!("see: meterbook sql \"SELECT * FROM cost_problems\"");
            Outcome::NeedsAttention
        } else {
            tracing::info!("{line}");
            Outcome::Success
        }
    }
}

/// `meterbook costs ingest`: lists the settings' source and stores every new or changed billing
/// file in their ledger, each in one transaction; a file with no readable CSV is recorded as
/// rejected, and the others are still read.
pub async fn run(settings: &CostIngestSettings) -> Result<IngestCounts> {
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
    Ok(counts)
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
