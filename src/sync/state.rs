//! The state's history as a chain of generations, each written only if the state is still the
//! one the ledger was synced with: reading the state object (its description, and its manifest or
//! format-1 snapshot), how the local ledger compares with the generation its sync record names, the errors every step shares, and `status`. The steps themselves are in
//! [`super::push`], [`super::pull`] and [`super::restore`]; nothing installs a state that failed
//! a check, or replaces a file that is not a meterbook ledger.

use std::path::Path;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use chrono::Utc;
use sha2::Digest;

use super::local::{self, SyncRecord};
use super::manifest::{self, Manifest};
use super::remote::{self, ObjectInfo, StateBody, StateMeta};
use super::segments::{Scan, Scanner};
use super::snapshot::{self, Refusal, Snapshot};
use super::StateLocation;
use crate::error::Fatal;
use crate::ledger::{Ledger, LedgerFile, SnapshotProblem};
use crate::period::format_utc;

/// The state object with its parsed metadata.
#[derive(Debug, Clone)]
pub struct RemoteState {
    pub info: ObjectInfo,
    pub meta: StateMeta,
}

/// Reads the state's description; `None` when there is no state object. A state of a format
/// newer than this meterbook's is refused here, before anything else is read.
pub async fn head(client: &Client, loc: &StateLocation) -> Result<Option<RemoteState>> {
    let Some(info) = remote::head(client, &loc.bucket, &loc.key).await? else {
        return Ok(None);
    };
    let meta = StateMeta::from_metadata(&info.metadata).map_err(|p| not_a_state(loc, &p))?;
    if meta.format > manifest::FORMAT {
        return Err(Fatal::Config(format!(
            "refusing the state {loc}: {}; the local ledger was left unchanged",
            manifest::BadManifest::NewerFormat { found: meta.format }
        ))
        .into());
    }
    Ok(Some(RemoteState { info, meta }))
}

pub(super) fn not_a_state(loc: &StateLocation, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing the state {loc}: it is not a meterbook state ({problem}); the local ledger was \
         left unchanged. Bring back a kept generation with `meterbook sync restore --generation N` \
         (see `meterbook sync status`)"
    )
}

pub(super) fn refused(
    what: &str,
    refusal: impl std::fmt::Display,
    newer_schema: bool,
) -> anyhow::Error {
    let message = format!(
        "refusing {what}: {refusal}; the local ledger was left unchanged. Bring back a kept \
         generation with `meterbook sync restore --generation N` (see `meterbook sync status`)"
    );
    match newer_schema {
        true => Fatal::Config(message).into(),
        false => anyhow::anyhow!(message),
    }
}

pub(super) fn refused_snapshot(what: &str, problem: SnapshotProblem) -> anyhow::Error {
    let newer = matches!(problem, SnapshotProblem::NewerSchema { .. });
    refused(what, problem, newer)
}

pub(super) fn gone(loc: &StateLocation, ledger: &Path, record: &SyncRecord) -> anyhow::Error {
    Fatal::Conflict(format!(
        "the state {loc} is gone, but ledger {} was synced as its generation {} (see {}). If it \
         was deleted by mistake, bring it back with `meterbook sync restore --generation N` (kept \
         generations: `meterbook sync status`); to start the state afresh from this ledger, \
         delete {} and push",
        ledger.display(),
        record.generation,
        local::record_path(ledger).display(),
        local::record_path(ledger).display(),
    ))
    .into()
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a background task")?
}

/// The ledger's pages, read in one transaction and cut into segments of `segment_size`; `None`
/// when there is no ledger.
pub(super) async fn scan_ledger(ledger: &LedgerFile, segment_size: u64) -> Result<Option<Scan>> {
    if !ledger.path.exists() {
        return Ok(None);
    }
    let file = ledger.clone();
    let scan = blocking(move || {
        let ledger = Ledger::open_for_reading(&file)?;
        let mut scanner = Scanner::new(segment_size, |_, _, _| Ok(()));
        ledger.read_pages(false, |page| scanner.push(page))?;
        scanner.finish()
    })
    .await?;
    Ok(Some(scan))
}

/// A checked copy of the ledger (`VACUUM INTO`), taken without changing it.
pub(super) async fn copy_ledger(ledger: &LedgerFile) -> Result<Snapshot> {
    let file = ledger.clone();
    blocking(move || snapshot::take(&Ledger::open_for_reading(&file)?)).await
}

/// Whether the ledger's content is still what `record` says it was synced as. `scan` is a scan
/// of the ledger already made, used when it has the record's segment size. A record of
/// meterbook before segments (no segment size) is compared as it fingerprinted: on a copy.
pub(super) async fn unchanged_since(
    ledger: &LedgerFile,
    record: &SyncRecord,
    scan: Option<&Scan>,
) -> Result<bool> {
    let Some(size) = record.segment_size else {
        return Ok(copy_ledger(ledger).await?.fingerprints.content == record.content);
    };
    let scanned;
    let scan = match scan.filter(|s| s.segment_size == size) {
        Some(s) => s,
        None => match scan_ledger(ledger, size).await? {
            Some(s) => {
                scanned = s;
                &scanned
            }
            None => return Ok(false),
        },
    };
    Ok(scan.content == record.content)
}

/// Refuses, before S3 is asked or anything replaces it, a file at the ledger's path that is not a
/// meterbook ledger this meterbook can use (see [`Ledger::open_for_reading`]): it is left as it is.
pub(super) async fn check_ledger(ledger: &LedgerFile) -> Result<()> {
    if ledger.path.exists() {
        let file = ledger.clone();
        blocking(move || Ledger::open_for_reading(&file).map(drop)).await?;
    }
    Ok(())
}

/// What the ledger is once it holds generation `generation` (ETag `etag`, metadata `meta`),
/// whose content fingerprint, at `segment_size`, is `content`.
pub(super) fn record_for(
    loc: &StateLocation,
    (generation, etag, meta): (u64, &str, &StateMeta),
    (content, segment_size): (&str, u64),
    cost_tables: &str,
) -> SyncRecord {
    SyncRecord {
        state_url: loc.to_string(),
        generation,
        etag: etag.to_string(),
        sha256: meta.sha256.clone(),
        content: content.to_string(),
        segment_size: Some(segment_size),
        cost_tables: Some(cost_tables.to_string()),
        synced_at: Utc::now(),
    }
}

/// What the ledger is once it holds the generation of manifest `m` (ETag `etag`, metadata `meta`).
pub(super) fn record_of(
    loc: &StateLocation,
    m: &Manifest,
    etag: &str,
    meta: &StateMeta,
) -> SyncRecord {
    record_for(
        loc,
        (m.generation, etag, meta),
        (&m.content, m.segment_size),
        &m.cost_tables,
    )
}

/// A state object read from S3.
pub(super) enum Fetched {
    /// Format 2: the manifest, checked against the object's metadata.
    Manifest(Manifest),
    /// Format 1: the snapshot, downloaded beside the ledger and verified.
    Snapshot(Snapshot),
}

/// Reads the state object (or a kept copy) at `key`. A format-1 snapshot is downloaded beside
/// the ledger, unpacked and verified (SHA-256, `PRAGMA integrity_check`, schema version).
pub(super) async fn fetch(
    client: &Client,
    loc: &StateLocation,
    key: &str,
    ledger: &Path,
) -> Result<(ObjectInfo, StateMeta, Fetched)> {
    let url = format!("s3://{}/{key}", loc.bucket);
    let download = snapshot::temp_beside(ledger, "download")?;
    let Some((info, body)) =
        remote::get_state(client, &loc.bucket, key, &download, manifest::MAX_BYTES).await?
    else {
        anyhow::bail!("{url} disappeared while it was being read; try again");
    };
    let meta = StateMeta::from_metadata(&info.metadata).map_err(|p| not_a_state(loc, &p))?;
    let fetched = match body {
        StateBody::Manifest(bytes) => Fetched::Manifest(checked_manifest(&url, &bytes, &meta)?),
        StateBody::Other => {
            let (compression, sha, beside) = (
                meta.compression.clone(),
                meta.sha256.clone(),
                ledger.to_path_buf(),
            );
            let unpacked =
                blocking(move || snapshot::unpack(&download, &compression, &sha, &beside)).await?;
            match unpacked {
                Ok(s) => Fetched::Snapshot(s),
                Err(Refusal::Snapshot(problem)) => {
                    return Err(refused_snapshot(&format!("the state {url}"), problem))
                }
                Err(refusal) => return Err(refused(&format!("the state {url}"), refusal, false)),
            }
        }
    };
    Ok((info, meta, fetched))
}

/// Parses a manifest downloaded from `url`, checked against its object's metadata.
pub(super) fn checked_manifest(url: &str, bytes: &[u8], meta: &StateMeta) -> Result<Manifest> {
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    if sha != meta.sha256 {
        let problem = Refusal::Checksum {
            expected: meta.sha256.clone(),
            actual: sha,
        };
        return Err(refused(&format!("the state {url}"), problem, false));
    }
    let m = manifest::read(bytes, url)?;
    if m.generation != meta.generation {
        return Err(refused(
            &format!("the state {url}"),
            format!(
                "its metadata says generation {}, its manifest {}",
                meta.generation, m.generation
            ),
            false,
        ));
    }
    Ok(m)
}

/// The state as a push finds it: its description and, in format 2, its manifest.
pub(super) struct Current {
    pub info: ObjectInfo,
    pub meta: StateMeta,
    pub manifest: Option<Manifest>,
}

/// The state and, when its metadata says format 2, its manifest.
pub(super) async fn current(client: &Client, loc: &StateLocation) -> Result<Option<Current>> {
    let Some(RemoteState { info, meta }) = head(client, loc).await? else {
        return Ok(None);
    };
    if meta.format == 1 {
        return Ok(Some(Current {
            info,
            meta,
            manifest: None,
        }));
    }
    if info.size > manifest::MAX_BYTES as i64 {
        return Err(not_a_state(loc, "it is too large for a manifest"));
    }
    let Some(bytes) = remote::get_bytes(client, &loc.bucket, &loc.key).await? else {
        anyhow::bail!("{loc} disappeared while it was being read; try again");
    };
    let manifest = checked_manifest(&loc.to_string(), &bytes, &meta)?;
    Ok(Some(Current {
        info,
        meta,
        manifest: Some(manifest),
    }))
}

pub(super) fn moved_on(
    loc: &StateLocation,
    ledger: &Path,
    current: &StateMeta,
    synced: &str,
) -> anyhow::Error {
    Fatal::Conflict(format!(
        "the state {loc} is at generation {} (pushed by {} at {}), but ledger {} {synced}: \
         another host wrote in between, so nothing was uploaded and the local ledger was kept \
         as it is. Take the newer state with `meterbook sync pull` (it keeps this ledger's \
         submissions, predecessor imports and cost changes, and drops what any ingest reads \
         again from the export), then push again; `meterbook run` does both by itself",
        current.generation,
        current.pushed_by,
        format_utc(current.pushed_at),
        ledger.display()
    ))
    .into()
}

/// Whether the ledger holds changes that are neither in the generation it was synced as
/// (`record`) nor in the incoming state (content `incoming` at `scan`'s segment size).
pub(super) async fn has_local_changes(
    ledger: &LedgerFile,
    record: Option<&SyncRecord>,
    scan: &Scan,
    incoming: &str,
) -> Result<bool> {
    if scan.content == incoming {
        return Ok(false);
    }
    Ok(match record {
        Some(r) => !unchanged_since(ledger, r, Some(scan)).await?,
        None => true,
    })
}

/// Local and remote, side by side.
#[derive(Debug)]
pub struct Status {
    pub remote: Option<RemoteState>,
    /// The current manifest (format 2).
    pub manifest: Option<Manifest>,
    pub record: Option<SyncRecord>,
    /// Whether the ledger has changes not in the generation it was synced as (`None`: no ledger).
    pub unpushed: Option<bool>,
    pub kept: Vec<u64>,
}

pub async fn status(client: &Client, loc: &StateLocation, ledger: &LedgerFile) -> Result<Status> {
    let record = local::read(&ledger.path, &loc.to_string())?;
    let unpushed = match (ledger.path.exists(), &record) {
        (false, _) => None,
        (true, None) => Some(true),
        (true, Some(r)) => Some(!unchanged_since(ledger, r, None).await?),
    };
    let remote = head(client, loc).await?;
    let manifest = match &remote {
        Some(r) if r.meta.format == manifest::FORMAT => {
            current(client, loc).await?.and_then(|c| c.manifest)
        }
        _ => None,
    };
    Ok(Status {
        remote,
        manifest,
        record,
        unpushed,
        kept: remote::list_generations(client, loc).await?,
    })
}

/// Generation numbers as a short list.
pub fn list(generations: &[u64]) -> String {
    if generations.is_empty() {
        return "none".to_string();
    }
    generations
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
