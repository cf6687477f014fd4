//! `restore` makes a kept generation the state again, as a new generation (converting one of
//! format 1); `verify` downloads a generation into a temporary file and checks everything.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use chrono::Utc;

use super::local::{self, SyncRecord};
use super::manifest::{self, Manifest};
use super::pull::install;
use super::remote::{self, Condition, StateMeta};
use super::segments::{self, Spool};
use super::state::{
    blocking, check_ledger, current, fetch, has_local_changes, head, list, record_of, scan_ledger,
    Fetched,
};
use super::transfer::{
    assemble, check_assembled, live_segments, named, upload_segments, write_manifest,
};
use super::{gc, StateLocation};
use crate::config::StateSettings;
use crate::error::Fatal;
use crate::ledger::{LedgerFile, SnapshotFacts};

/// Refuses to replace a ledger that holds changes which are neither in the generation it was
/// synced as nor in the incoming state (content `incoming` at `segment_size`).
async fn guard_local(
    ledger: &LedgerFile,
    record: Option<&SyncRecord>,
    (incoming, segment_size): (&str, u64),
    discard_local: bool,
) -> Result<()> {
    check_ledger(ledger).await?;
    if discard_local {
        return Ok(());
    }
    let Some(scan) = scan_ledger(ledger, segment_size).await? else {
        return Ok(());
    };
    if !has_local_changes(ledger, record, &scan, incoming).await? {
        return Ok(());
    }
    let since = match record {
        Some(r) => format!("changed since it was synced as generation {}", r.generation),
        None => "never been pulled or pushed".to_string(),
    };
    Err(Fatal::Conflict(format!(
        "ledger {} has {since}, so replacing it would lose its changes; push them with \
         `meterbook sync push`, or pass --discard-local to drop them",
        ledger.path.display()
    ))
    .into())
}

/// Makes kept generation `wanted` the current state again, as a new generation, and installs it
/// as the local ledger. Works also when the state object itself was deleted or is damaged. A kept
/// generation of format 1 is converted: its segments are uploaded first.
pub async fn restore(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
    wanted: u64,
    discard_local: bool,
) -> Result<u64> {
    let ledger = ledger_file.path.as_path();
    let record = local::read(ledger, &loc.to_string())?;
    let kept = ensure_kept(client, loc, wanted).await?;
    // Whatever the state object is now, even one that fails its checks, is what is replaced.
    let existing = remote::head(client, &loc.bucket, &loc.key).await?;
    let existing_generation = existing
        .as_ref()
        .and_then(|c| StateMeta::from_metadata(&c.metadata).ok())
        .map_or(0, |m| m.generation);
    let previous = current(client, loc)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.manifest);
    let generation = [existing_generation, kept.last().copied().unwrap_or(0)]
        .into_iter()
        .chain(record.as_ref().map(|r| r.generation))
        .max()
        .unwrap_or(0)
        + 1;
    let (_, old_meta, fetched) = fetch(client, loc, &loc.generation_key(wanted), ledger).await?;
    let (file, mut m, spool) = match fetched {
        Fetched::Manifest(old) => {
            let old = Arc::new(old);
            let incoming = (old.content.as_str(), old.segment_size);
            guard_local(ledger_file, record.as_ref(), incoming, discard_local).await?;
            let (file, downloaded) =
                assemble(client, loc, ledger_file, &old, true, settings.concurrency).await?;
            let whole = downloaded.segments == old.segments.len();
            check_assembled(loc, &file, &old, whole).await?;
            (file, (*old).clone(), None)
        }
        Fetched::Snapshot(snapshot) => {
            let live = live_segments(previous.as_ref());
            let facts = (snapshot.path.path().to_path_buf(), snapshot.facts.clone());
            let (m, spool) = converted(facts, ledger, &old_meta, settings, live).await?;
            let incoming = (m.content.as_str(), m.segment_size);
            guard_local(ledger_file, record.as_ref(), incoming, discard_local).await?;
            (snapshot.path, m, Some(spool))
        }
    };
    let (retained, dropped) = previous
        .as_ref()
        .map(|p| p.succession(generation, &m.segments, settings.keep_generations))
        .unwrap_or_default();
    m.generation = generation;
    m.pushed_at = Utc::now();
    m.pushed_by = super::host_name();
    m.restored_from = Some(wanted);
    m.retained = retained;
    if let Some(spool) = &spool {
        upload_segments(client, loc, spool, settings.concurrency).await?;
    }
    let condition = match &existing {
        Some(c) => Condition::Replace(c.etag.clone()),
        None => Condition::Create,
    };
    let (written, meta) = write_manifest(client, loc, &m, &condition).await?;
    let etag = written.map_err(|_| {
        Fatal::Conflict(format!(
            "another host wrote {loc} while restoring; nothing was restored. Look with \
             `meterbook sync status` and try again"
        ))
    })?;
    install(file, ledger).await?;
    local::write(ledger, &record_of(loc, &m, &etag, &meta))?;
    gc::after_write(client, loc, &m, &etag, dropped, settings, false).await;
    Ok(generation)
}

/// The kept generations, refusing (exit code 2) when `wanted` is not one of them.
async fn ensure_kept(client: &Client, loc: &StateLocation, wanted: u64) -> Result<Vec<u64>> {
    let kept = remote::list_generations(client, loc).await?;
    if !kept.contains(&wanted) {
        return Err(Fatal::Config(format!(
            "generation {wanted} of {loc} is not kept; kept generations: {}",
            list(&kept)
        ))
        .into());
    }
    Ok(kept)
}

/// A format-1 snapshot as the manifest of the generation it was (`meta`), with its segments the
/// state does not have (`live`) spooled for upload.
async fn converted(
    snapshot: (std::path::PathBuf, SnapshotFacts),
    ledger: &Path,
    meta: &StateMeta,
    settings: &StateSettings,
    live: HashMap<String, u64>,
) -> Result<(Manifest, Spool)> {
    let (path, facts) = snapshot;
    let (segment_size, beside) = (settings.segment_size, ledger.to_path_buf());
    let live = Arc::new(live);
    let present = live.clone();
    let (scan, spool, spooled, page_size) = blocking(move || {
        let mut spool = Spool::beside(&beside)?;
        let mut spooled = HashMap::new();
        let scan = segments::scan_file(&path, segment_size, |_, bytes, hash| {
            if !spooled.contains_key(hash) && !present.contains_key(hash.to_hex().as_str()) {
                spooled.insert(*hash, spool.add(*hash, bytes)?);
            }
            Ok(())
        })?;
        spool.finish()?;
        Ok((scan, spool, spooled, page_size_of(&path)?))
    })
    .await?;
    let m = Manifest {
        format: manifest::FORMAT,
        generation: meta.generation,
        schema_version: facts.schema_version,
        page_size,
        size: scan.size,
        segment_size: scan.segment_size,
        segments: named(&scan, &spooled, &live),
        checksum: scan.checksum,
        content: scan.content,
        cost_tables: facts.cost_tables,
        compression: manifest::COMPRESSION.to_string(),
        pushed_at: meta.pushed_at,
        pushed_by: meta.pushed_by.clone(),
        restored_from: None,
        // Unpacking a format-1 state runs PRAGMA integrity_check.
        integrity_checked: meta.generation,
        retained: Vec::new(),
    };
    Ok((m, spool))
}

/// The page size in a SQLite file's header (bytes 16-17; 1 means 65536).
fn page_size_of(path: &Path) -> Result<u32> {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n => u32::from(n),
    })
}

/// What `verify` found: every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub generation: u64,
    pub format: u32,
    pub segments: usize,
    pub stored: u64,
    pub size: u64,
    pub schema_version: i64,
}

/// Downloads the current state (or kept generation `generation`) into a temporary file beside
/// the ledger, without using the ledger, and checks everything: every segment's hash, the whole
/// file's checksum, `PRAGMA integrity_check`, the schema version and the cost tables. Leaves
/// nothing behind.
pub async fn verify(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
    generation: Option<u64>,
) -> Result<Verified> {
    let key = match generation {
        Some(n) => {
            ensure_kept(client, loc, n).await?;
            loc.generation_key(n)
        }
        None => {
            if head(client, loc).await?.is_none() {
                return Err(Fatal::Config(format!("no state at {loc}; nothing to verify")).into());
            }
            loc.key.clone()
        }
    };
    let (info, meta, fetched) = fetch(client, loc, &key, &ledger_file.path).await?;
    Ok(match fetched {
        Fetched::Snapshot(s) => Verified {
            generation: meta.generation,
            format: 1,
            segments: 1,
            stored: info.size.max(0) as u64,
            size: s.fingerprints.size,
            schema_version: s.facts.schema_version,
        },
        Fetched::Manifest(m) => {
            let m = Arc::new(m);
            let (file, _) =
                assemble(client, loc, ledger_file, &m, false, settings.concurrency).await?;
            check_assembled(loc, &file, &m, true).await?;
            Verified {
                generation: m.generation,
                format: m.format,
                segments: m.segments.len(),
                stored: m.stored(),
                size: m.size,
                schema_version: m.schema_version,
            }
        }
    })
}
