//! `meterbook import-state`: take over from the Python exporter without re-sending a single month.
//! Reads its state JSON (a local file or an S3 object) and records what it sent and what failed.

use anyhow::{Context, Result};
use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::cli::{GlobalArgs, ImportStateArgs};
use crate::error::{Fatal, Outcome};
use crate::ledger::Ledger;
use crate::predecessor::{parse_state, service_key_from_file_name};

pub async fn run(global: &GlobalArgs, args: &ImportStateArgs) -> Result<Outcome> {
    let (source, body) = read_state(global, args).await?;
    let flat_key = args
        .service_key
        .clone()
        .or_else(|| service_key_from_file_name(&source))
        .or_else(|| {
            let part = |v: &str| std::env::var(v).ok().filter(|s| !s.trim().is_empty());
            Some(format!(
                "{}:{}:{}",
                part("SERVICE_NAME")?,
                part("ENVIRONMENT_TYPE")?,
                part("PLAN_ID")?
            ))
        });
    let states = parse_state(&body, flat_key.as_deref())
        .map_err(|why| Fatal::Config(format!("{source}: {why}; nothing was imported")))?;
    let mut ledger = Ledger::open_for_writing(&global.ledger_file())?;
    let counts = ledger.import_predecessor(&source, &states, &args.cloud)?;
    for s in &states {
        let last = match (s.last_processed_month, s.last_processed_hour) {
            (Some(m), _) => format!("month {m}"),
            (None, Some(h)) => format!("hour {}", crate::period::format_utc(h)),
            (None, None) => "nothing".to_string(),
        };
        tracing::info!(
            "{}: the predecessor processed through {last}: periods up to there are not planned again",
            s.service_key
        );
    }
    tracing::info!(
        "imported from {source}: {} contract-months sent by the predecessor (recorded as imported), \
         {} failed there (recorded as failed: see `meterbook history --failures`, re-send with \
         `meterbook resubmit`), {} already recorded",
        counts.imported,
        counts.failed,
        counts.already
    );
    Ok(if counts.failed > 0 {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    })
}

/// The state file's name and body, from a local path or `s3://bucket/key`; a bare key that is
/// not a local file is read from the export bucket (the monthly predecessor kept it there).
async fn read_state(global: &GlobalArgs, args: &ImportStateArgs) -> Result<(String, Vec<u8>)> {
    let from = args.from.trim();
    let url = if from.starts_with("s3://") {
        from.to_string()
    } else if std::path::Path::new(from).exists() {
        let body = std::fs::read(from).with_context(|| format!("reading {from}"))?;
        return Ok((from.to_string(), body));
    } else {
        let bucket = crate::config::export_bucket().ok_or_else(|| {
            Fatal::Config(format!(
                "no state file {from}: not a local file, and no S3_BUCKET_NAME to look in"
            ))
        })?;
        format!("s3://{bucket}/{}", from.trim_start_matches('/'))
    };
    let (bucket, key) = crate::s3::parse_url(&url)
        .filter(|(_, k)| !k.is_empty())
        .ok_or_else(|| Fatal::Config(format!("'{url}' does not name an S3 object")))?;
    let client = crate::s3::client(&global.s3.resolve()).await;
    let object = client
        .get_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| {
            let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
            Fatal::Config(format!(
                "reading the predecessor's state {url}: {}",
                if code.is_empty() {
                    e.to_string()
                } else {
                    code.to_string()
                }
            ))
        })?;
    let body = object
        .body
        .collect()
        .await
        .with_context(|| format!("reading {url}"))?
        .into_bytes()
        .to_vec();
    Ok((url, body))
}
