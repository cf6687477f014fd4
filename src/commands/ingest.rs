//! `meterbook ingest`: read usage files into the ledger and say what happened.

use std::sync::Arc;

use anyhow::Result;

use crate::cli::{GlobalArgs, IngestArgs};
use crate::config::{parse_duration, SourceSpec};
use crate::error::Outcome;
use crate::ingest::{ingest, IngestOptions};
use crate::s3::S3Settings;
use crate::source::local::LocalSource;
use crate::source::s3::S3Source;
use crate::source::Source;

pub async fn run(global: &GlobalArgs, args: &IngestArgs) -> Result<Outcome> {
    let scope = args.scope.resolve()?;
    let spec = SourceSpec::resolve(args.source.as_deref())?;
    let source = open_source(&spec, &global.s3.resolve()).await?;
    let opts = IngestOptions {
        concurrency: args.concurrency,
        batch_files: args.batch_files,
        progress: !global.quiet,
        all_months: args.all_months,
        max_file_bytes: args.limits.max_file_bytes,
        max_bytes_in_flight: args.limits.max_bytes_in_flight,
        full_listing_every: parse_duration(&args.limits.full_listing_every)?,
        start_month: Some(
            args.start_month
                .unwrap_or(crate::config::DEFAULT_START_MONTH),
        ),
    };
    tracing::info!(
        "ingesting {} ({scope}) into {}",
        source.describe(),
        global.ledger.display()
    );
    let summary = ingest(&global.ledger_file(), &source, &scope, &opts).await?;
    if summary.needs_attention() {
        tracing::warn!("{}", summary.line());
        if summary.problems > 0 || summary.path_problems > 0 {
            tracing::warn!("see: meterbook sql \"SELECT * FROM usage_problems\"");
        }
        if summary.unattributed_records > 0 {
            tracing::warn!(
                "records without externalPayerId are not billed; see: meterbook sql \"SELECT * FROM unattributed_usage\""
            );
        }
        Ok(Outcome::NeedsAttention)
    } else {
        tracing::info!("{}", summary.line());
        Ok(Outcome::Success)
    }
}

/// Opens the source a spec names.
pub async fn open_source(spec: &SourceSpec, s3: &S3Settings) -> Result<Source> {
    match spec {
        SourceSpec::Local(dir) => Ok(Source::Local(Arc::new(LocalSource::new(dir)?))),
        SourceSpec::S3 { bucket, prefix } => {
            let client = crate::s3::client(s3).await;
            Ok(Source::S3(Arc::new(S3Source::new(client, bucket, prefix))))
        }
    }
}
