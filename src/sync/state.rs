//! Pull, push, restore, verify and status: the state's history as a chain of generations, each
//! written only if the state is still the one this ledger was synced with. A push uploads the
//! segments the state does not have yet, then the manifest (conditionally); a pull downloads
//! only the segments the local ledger does not have, and either writes them into the ledger in
//! one transaction or assembles a new file and installs it. A pull over a ledger with changes not
//! on S3 keeps what only this ledger knows (submissions, predecessor imports, cost tables changed
//! here) by carrying it over into the newer state, and drops what the state covers or any ingest
//! rebuilds ([`crate::ledger::carry_over`]). Nothing here installs a state that failed a check,
//! or replaces a file that is not a meterbook ledger.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use sha2::Digest;

use super::local::{self, SyncRecord};
use super::manifest::{self, Manifest, Segment};
use super::remote::{self, Condition, ObjectInfo, Refused, StateBody, StateMeta};
use super::segments::{self, Assembled, Hash, Scan, Scanner, Spool};
use super::snapshot::{self, Refusal, Snapshot};
use super::{gc, StateLocation};
use crate::error::Fatal;
use crate::ledger::{
    binary_schema_version, carry_over, check_snapshot, empty_cost_tables, Carried, Ledger,
    LedgerFile, PageWrite, SnapshotFacts, SnapshotProblem,
};
use crate::period::format_utc;

/// How sync moves the state (resolved from the `sync` and `run` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// How many generations stay restorable.
    pub keep_generations: u64,
    /// The segment size of the states this meterbook writes.
    pub segment_size: u64,
    /// Every how many generations a push runs `PRAGMA integrity_check` (and looks for segments
    /// no kept generation names).
    pub integrity_check_every: u64,
    /// Segment uploads or downloads at once.
    pub concurrency: usize,
    /// Segments younger than this are never deleted: a push under way may have just uploaded them.
    pub gc_grace: Duration,
}

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

fn not_a_state(loc: &StateLocation, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing the state {loc}: it is not a meterbook state ({problem}); the local ledger was \
         left unchanged. Bring back a kept generation with `meterbook sync restore --generation N` \
         (see `meterbook sync status`)"
    )
}

fn refused(what: &str, refusal: impl std::fmt::Display, newer_schema: bool) -> anyhow::Error {
    let message = format!(
        "refusing {what}: {refusal}; the local ledger was left unchanged. Bring back a kept \
         generation with `meterbook sync restore --generation N` (see `meterbook sync status`)"
    );
    match newer_schema {
        true => Fatal::Config(message).into(),
        false => anyhow::anyhow!(message),
    }
}

fn refused_snapshot(what: &str, problem: SnapshotProblem) -> anyhow::Error {
    let newer = matches!(problem, SnapshotProblem::NewerSchema { .. });
    refused(what, problem, newer)
}

fn gone(loc: &StateLocation, ledger: &Path, record: &SyncRecord) -> anyhow::Error {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a background task")?
}

/// The ledger's pages, read in one transaction and cut into segments of `segment_size`; `None`
/// when there is no ledger.
async fn scan_ledger(ledger: &LedgerFile, segment_size: u64) -> Result<Option<Scan>> {
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
async fn copy_ledger(ledger: &LedgerFile) -> Result<Snapshot> {
    let file = ledger.clone();
    blocking(move || snapshot::take(&Ledger::open_for_reading(&file)?)).await
}

/// Whether the ledger's content is still what `record` says it was synced as. `scan` is a scan
/// of the ledger already made, used when it has the record's segment size. A record of
/// meterbook before segments (no segment size) is compared as it fingerprinted: on a copy.
async fn unchanged_since(
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

/// Refuses, before anything replaces it, a file at the ledger's path that is not a meterbook
/// ledger this meterbook can use (see [`Ledger::open_for_reading`]): it is left as it is.
async fn check_replaceable(ledger: &LedgerFile) -> Result<()> {
    if ledger.path.exists() {
        let file = ledger.clone();
        blocking(move || Ledger::open_for_reading(&file).map(drop)).await?;
    }
    Ok(())
}

/// What the ledger is once it holds generation `generation` (ETag `etag`, metadata `meta`),
/// whose content fingerprint, at `segment_size`, is `content`.
fn record_for(
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

/// A state object read from S3.
enum Fetched {
    /// Format 2: the manifest, checked against the object's metadata.
    Manifest(Manifest),
    /// Format 1: the snapshot, downloaded beside the ledger and verified.
    Snapshot(Snapshot),
}

/// Reads the state object (or a kept copy) at `key`. A format-1 snapshot is downloaded beside
/// the ledger, unpacked and verified (SHA-256, `PRAGMA integrity_check`, schema version).
async fn fetch(
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
fn checked_manifest(url: &str, bytes: &[u8], meta: &StateMeta) -> Result<Manifest> {
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

/// Downloads segment `index` of `m` and checks it (length and BLAKE3).
async fn fetch_segment(
    client: &Client,
    loc: &StateLocation,
    m: &Manifest,
    index: usize,
) -> Result<(usize, Vec<u8>)> {
    let Segment(hash, _) = &m.segments[index];
    let key = loc.segment_key(hash);
    let what = format!(
        "generation {} of {loc}: its segment {index} (s3://{}/{key})",
        m.generation, loc.bucket
    );
    let stored = remote::get_bytes(client, &loc.bucket, &key)
        .await?
        .ok_or_else(|| refused(&what, "it is missing", false))?;
    let len = segments::segment_len(m.segment_size, m.size, index);
    let expected = Hash::from_hex(hash).context("a checked manifest")?;
    let bytes = blocking(move || Ok(segments::unpack(&stored, len, &expected)))
        .await?
        .map_err(|bad| refused(&what, bad, false))?;
    Ok((index, bytes))
}

/// Assembles generation `m` in a new file beside the ledger: the segments the local ledger has
/// (when `reuse`) are copied from it, the others downloaded, `concurrency` at a time; then the
/// file is read back and checked against the manifest's checksum. Returns it with the number of
/// segments reused.
async fn assemble(
    client: &Client,
    loc: &StateLocation,
    ledger: &LedgerFile,
    m: &Arc<Manifest>,
    reuse: bool,
    concurrency: usize,
) -> Result<(snapshot::TempDb, usize)> {
    let temp = snapshot::temp_db_beside(&ledger.path, "pulled")?;
    let out = Arc::new(Assembled::create(temp.path())?);
    let wanted = m.hashes().map_err(anyhow::Error::msg)?;
    let mut have = vec![false; wanted.len()];
    if reuse && ledger.path.exists() {
        let (file, m, out) = (ledger.clone(), m.clone(), out.clone());
        have = blocking(move || {
            let mut at: HashMap<Hash, Vec<usize>> = HashMap::new();
            for (i, h) in wanted.iter().enumerate() {
                at.entry(*h).or_default().push(i);
            }
            let mut have = vec![false; wanted.len()];
            let ledger = Ledger::open_for_reading(&file)?;
            let mut scanner = Scanner::new(m.segment_size, |_, bytes, hash| {
                for &i in at.get(hash).map(Vec::as_slice).unwrap_or_default() {
                    if !have[i]
                        && segments::segment_len(m.segment_size, m.size, i) == bytes.len() as u64
                    {
                        out.write(i as u64 * m.segment_size, bytes)?;
                        have[i] = true;
                    }
                }
                Ok(())
            });
            ledger.read_pages(false, |page| scanner.push(page))?;
            scanner.finish()?;
            Ok(have)
        })
        .await?;
    }
    let reused = have.iter().filter(|h| **h).count();
    let missing: Vec<usize> = (0..have.len()).filter(|i| !have[*i]).collect();
    futures::stream::iter(missing)
        .map(|i| {
            let out = out.clone();
            async move {
                let (i, bytes) = fetch_segment(client, loc, m, i).await?;
                let offset = i as u64 * m.segment_size;
                blocking(move || out.write(offset, &bytes)).await
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let out = Arc::try_unwrap(out).map_err(|_| anyhow::anyhow!("segments still being written"))?;
    let (segment_size, checksum, size) = (m.segment_size, m.checksum.clone(), m.size);
    if let Some(problem) = blocking(move || out.verify(segment_size, &checksum, size)).await? {
        return Err(refused(
            &format!("generation {} of {loc}", m.generation),
            problem,
            false,
        ));
    }
    Ok((temp, reused))
}

/// Checks an assembled file: `PRAGMA integrity_check` when it was downloaded whole, its schema
/// version, and that it holds what the manifest says.
async fn check_assembled(
    loc: &StateLocation,
    file: &snapshot::TempDb,
    m: &Manifest,
    integrity_check: bool,
) -> Result<SnapshotFacts> {
    let path = file.path().to_path_buf();
    let what = format!("generation {} of {loc}", m.generation);
    let facts = blocking(move || Ok(check_snapshot(&path, integrity_check)))
        .await?
        .map_err(|problem| refused_snapshot(&what, problem))?;
    if facts.schema_version != m.schema_version || facts.cost_tables != m.cost_tables {
        return Err(refused(
            &what,
            "its schema version or cost tables are not what its manifest says",
            false,
        ));
    }
    Ok(facts)
}

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A new generation is the state.
    Generation {
        generation: u64,
        /// The ledger's size.
        size: u64,
        /// Segments uploaded by this push, and their stored bytes.
        uploaded: usize,
        uploaded_bytes: u64,
        /// The generation's segments and their stored bytes.
        segments: usize,
        stored: u64,
    },
    /// The state already holds this ledger's content.
    UpToDate { generation: u64 },
}

/// The state as a push finds it: its description and, in format 2, its manifest.
struct Current {
    info: ObjectInfo,
    meta: StateMeta,
    manifest: Option<Manifest>,
}

/// The state and, when its metadata says format 2, its manifest.
async fn current(client: &Client, loc: &StateLocation) -> Result<Option<Current>> {
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

/// Uploads the next generation: the segments of the ledger that the state does not have, then
/// the manifest, conditional on the state still being the generation this ledger was synced as
/// (or on there being no state yet). Every `integrity_check_every` generations (and for a new
/// state) the ledger must pass `PRAGMA integrity_check` first.
pub async fn push(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &SyncSettings,
) -> Result<Pushed> {
    let ledger = ledger_file.path.as_path();
    let started = std::time::Instant::now();
    if !ledger.exists() {
        return Err(Fatal::Config(format!(
            "no ledger at {}; nothing to push",
            ledger.display()
        ))
        .into());
    }
    let record = local::read(ledger, &loc.to_string())?;
    let current = current(client, loc).await?;
    let previous = current.as_ref().and_then(|c| c.manifest.as_ref());
    let generation = current.as_ref().map_or(1, |c| c.meta.generation + 1);
    let integrity_check = previous.is_none_or(|p| {
        generation - p.integrity_checked.min(generation) >= settings.integrity_check_every
    });

    // Read the ledger once: hash every segment, and spool the ones the state does not have.
    let live = Arc::new(live_segments(previous));
    let (file, segment_size, present) = (ledger_file.clone(), settings.segment_size, live.clone());
    let (scan, read, spool, spooled) = blocking(move || {
        let mut spool = Spool::beside(&file.path)?;
        let mut spooled: HashMap<Hash, u64> = HashMap::new();
        let l = Ledger::open_for_reading(&file)?;
        let mut scanner = Scanner::new(segment_size, |_, bytes, hash| {
            if !spooled.contains_key(hash) && !present.contains_key(hash.to_hex().as_str()) {
                let stored = spool.add(*hash, bytes)?;
                spooled.insert(*hash, stored);
            }
            Ok(())
        });
        let read = l.read_pages(integrity_check, |page| scanner.push(page))?;
        let scan = scanner.finish()?;
        spool.finish()?;
        anyhow::ensure!(
            read.page_count > 0,
            "ledger {} is empty; nothing to push",
            file.path.display()
        );
        Ok((scan, read, spool, spooled))
    })
    .await?;
    tracing::info!(
        "read ledger {}: {} bytes in {} segments{}, {} of them new ({} bytes compressed), in {:.1}s",
        ledger.display(),
        scan.size,
        scan.hashes.len(),
        if integrity_check { ", integrity checked" } else { "" },
        spooled.len(),
        spool.stored_bytes(),
        started.elapsed().as_secs_f64()
    );

    let condition = match (&current, &record) {
        (None, Some(r)) => return Err(gone(loc, ledger, r)),
        (None, None) => Condition::Create,
        (Some(c), Some(r)) if r.etag == c.info.etag => {
            if unchanged_since(ledger_file, r, Some(&scan)).await? {
                return Ok(Pushed::UpToDate {
                    generation: r.generation,
                });
            }
            Condition::Replace(c.info.etag.clone())
        }
        (Some(c), _)
            if previous.is_some_and(|p| {
                p.segment_size == scan.segment_size && p.content == scan.content
            }) =>
        {
            // Already there (e.g. pushed before a crash lost the sidecar): adopt it.
            local::write(
                ledger,
                &record_for(
                    loc,
                    (c.meta.generation, &c.info.etag, &c.meta),
                    (&scan.content, scan.segment_size),
                    &read.facts.cost_tables,
                ),
            )?;
            return Ok(Pushed::UpToDate {
                generation: c.meta.generation,
            });
        }
        (Some(c), r) => {
            let synced = match r {
                Some(r) => format!("was synced as generation {}", r.generation),
                None => "was never pulled from it".to_string(),
            };
            return Err(moved_on(loc, ledger, &c.meta, &synced));
        }
    };

    let segments = named(&scan, &spooled, &live);
    let (retained, dropped) = previous
        .map(|p| p.succession(generation, &segments, settings.keep_generations))
        .unwrap_or_default();
    let m = Manifest {
        format: manifest::FORMAT,
        generation,
        schema_version: read.facts.schema_version,
        page_size: read.page_size,
        size: scan.size,
        segment_size: scan.segment_size,
        checksum: scan.checksum.clone(),
        content: scan.content.clone(),
        cost_tables: read.facts.cost_tables.clone(),
        compression: manifest::COMPRESSION.to_string(),
        pushed_at: Utc::now(),
        pushed_by: super::host_name(),
        restored_from: None,
        integrity_checked: match (integrity_check, previous) {
            (false, Some(p)) => p.integrity_checked,
            _ => generation,
        },
        segments,
        retained,
    };

    crate::failpoint::hit("before-upload");
    upload_segments(client, loc, &spool, settings.concurrency).await?;
    crate::failpoint::hit("after-segments");
    let (written, meta) = write_manifest(client, loc, &m, &condition).await?;
    let etag = match written {
        Ok(etag) => etag,
        Err(refusal) => {
            let now = head(client, loc).await.ok().flatten();
            let now = now.as_ref().map(|c| &c.meta);
            return Err(push_refused(refusal, loc, ledger, record.as_ref(), now));
        }
    };
    crate::failpoint::hit("after-upload");
    local::write(
        ledger,
        &record_for(
            loc,
            (generation, &etag, &meta),
            (&m.content, m.segment_size),
            &m.cost_tables,
        ),
    )?;
    gc::after_write(client, loc, &m, &etag, dropped, settings, integrity_check).await;
    Ok(Pushed::Generation {
        generation,
        size: m.size,
        uploaded: spooled.len(),
        uploaded_bytes: spool.stored_bytes(),
        segments: m.segments.len(),
        stored: m.stored(),
    })
}

/// Every segment the state `previous` keeps (its own and the retained ones), by hash, with its
/// stored size.
fn live_segments(previous: Option<&Manifest>) -> HashMap<String, u64> {
    previous
        .map(|p| {
            p.live()
                .into_iter()
                .map(|(h, n)| (h.to_string(), n))
                .collect()
        })
        .unwrap_or_default()
}

/// The segments of a scanned file, with their stored sizes (spooled now, or already on S3).
fn named(scan: &Scan, spooled: &HashMap<Hash, u64>, live: &HashMap<String, u64>) -> Vec<Segment> {
    scan.hashes
        .iter()
        .map(|h| {
            let hex = h.to_hex().to_string();
            let stored = spooled
                .get(h)
                .or_else(|| live.get(&hex))
                .copied()
                .unwrap_or(0);
            Segment(hex, stored)
        })
        .collect()
}

/// Uploads the spooled segments, `concurrency` at a time.
async fn upload_segments(
    client: &Client,
    loc: &StateLocation,
    spool: &Spool,
    concurrency: usize,
) -> Result<()> {
    let entries: Vec<(usize, Hash)> = spool.entries().map(|(h, _)| h).enumerate().collect();
    futures::stream::iter(entries)
        .map(|(i, hash)| async move {
            let body = spool.read(i)?;
            remote::put(client, &loc.bucket, &loc.segment_key(&hash.to_hex()), body).await
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Writes a manifest as the state with `condition`; returns its ETag (or why the condition
/// refused it) and its metadata.
async fn write_manifest(
    client: &Client,
    loc: &StateLocation,
    m: &Manifest,
    condition: &Condition,
) -> Result<(std::result::Result<String, Refused>, StateMeta)> {
    let bytes = m.to_bytes();
    let meta = m.meta(&bytes);
    let uploaded = remote::upload(
        client,
        &loc.bucket,
        &loc.key,
        bytes.into(),
        meta.to_metadata(),
        condition,
    )
    .await?;
    Ok((uploaded, meta))
}

/// The error of a push whose manifest the condition refused.
fn push_refused(
    refusal: Refused,
    loc: &StateLocation,
    ledger: &Path,
    record: Option<&SyncRecord>,
    current: Option<&StateMeta>,
) -> anyhow::Error {
    match refusal {
        Refused::Gone => match record {
            Some(r) => gone(loc, ledger, r),
            None => anyhow::anyhow!("{loc} disappeared during the push; try again"),
        },
        Refused::Changed => {
            let synced = match record {
                Some(r) => format!("was synced as generation {}", r.generation),
                None => "found no state when this push began".to_string(),
            };
            match current {
                Some(c) => moved_on(loc, ledger, c, &synced),
                None => Fatal::Conflict(format!(
                    "another host changed the state {loc} while this push was under way; ledger \
                     {} was kept as it is. Look with `meterbook sync status`",
                    ledger.display()
                ))
                .into(),
            }
        }
    }
}

fn moved_on(
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

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The local ledger is now this generation.
    Generation {
        generation: u64,
        size: u64,
        /// Segments downloaded, of the generation's segments (format 2).
        downloaded: usize,
        segments: usize,
    },
    /// The local ledger had changes the state did not have: it is now this generation, plus
    /// what only the local ledger knew ([`Carried`] says what was kept and what dropped).
    Merged {
        generation: u64,
        size: u64,
        carried: Carried,
    },
    /// The local ledger already is the current generation.
    UpToDate { generation: u64 },
    /// The local ledger is the current generation plus changes not yet pushed.
    LocalAhead { generation: u64 },
    /// There is no state yet (a first run); the local ledger was not touched.
    NoState,
}

/// Makes the local ledger the current state: downloads what it does not have, verifies it and
/// installs it. When the local ledger has changes the state does not have (and `discard_local`
/// is not given), what only it knows is carried over into the state first ([`carry_over`]).
pub async fn pull(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &SyncSettings,
    discard_local: bool,
) -> Result<Pulled> {
    let ledger = ledger_file.path.as_path();
    let record = local::read(ledger, &loc.to_string())?;
    let Some(current) = head(client, loc).await? else {
        return match &record {
            Some(r) => Err(gone(loc, ledger, r)),
            None => Ok(Pulled::NoState),
        };
    };
    if let Some(r) = record.as_ref().filter(|r| r.etag == current.info.etag) {
        if ledger.exists() {
            check_replaceable(ledger_file).await?;
            if unchanged_since(ledger_file, r, None).await? {
                return Ok(Pulled::UpToDate {
                    generation: r.generation,
                });
            }
            if !discard_local {
                return Ok(Pulled::LocalAhead {
                    generation: r.generation,
                });
            }
        }
    }
    // The state has moved on, this ledger was never synced with it, or its changes are dropped.
    check_replaceable(ledger_file).await?;
    let started = std::time::Instant::now();
    let (info, meta, fetched) = fetch(client, loc, &loc.key, ledger).await?;
    match fetched {
        Fetched::Snapshot(snapshot) => {
            pull_snapshot(
                loc,
                ledger_file,
                settings,
                record,
                (info, meta),
                snapshot,
                discard_local,
            )
            .await
        }
        Fetched::Manifest(m) => {
            let pulled = pull_manifest(
                client,
                loc,
                ledger_file,
                settings,
                record.as_ref(),
                (&info.etag, &meta),
                Arc::new(m),
                discard_local,
            )
            .await?;
            tracing::info!(
                "generation {} pulled in {:.1}s",
                meta.generation,
                started.elapsed().as_secs_f64()
            );
            Ok(pulled)
        }
    }
}

/// Whether the ledger holds changes that are neither in the generation it was synced as
/// (`record`) nor in the incoming state (content `incoming` at `scan`'s segment size).
async fn has_local_changes(
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

/// Pulls a format-2 state: in place when the local ledger has the same page size, no changes
/// of its own to keep, and at least half of the segments; otherwise into a new file.
#[allow(clippy::too_many_arguments)]
async fn pull_manifest(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &SyncSettings,
    record: Option<&SyncRecord>,
    (etag, meta): (&str, &StateMeta),
    m: Arc<Manifest>,
    discard_local: bool,
) -> Result<Pulled> {
    let ledger = ledger_file.path.as_path();
    let known = binary_schema_version();
    if m.schema_version > known {
        return Err(refused_snapshot(
            &format!("the state {loc}"),
            SnapshotProblem::NewerSchema {
                found: m.schema_version,
                known,
            },
        ));
    }
    let pulled_record = record_for(
        loc,
        (m.generation, etag, meta),
        (&m.content, m.segment_size),
        &m.cost_tables,
    );
    let mut local_changes = false;
    if ledger.exists() {
        match in_place(
            client,
            loc,
            ledger_file,
            record,
            &m,
            discard_local,
            settings,
        )
        .await?
        {
            InPlace::Done { downloaded } => {
                local::write(ledger, &pulled_record)?;
                tracing::info!(
                    "generation {} written into ledger {}: {downloaded} of {} segments downloaded",
                    m.generation,
                    ledger.display(),
                    m.segments.len()
                );
                return Ok(Pulled::Generation {
                    generation: m.generation,
                    size: m.size,
                    downloaded,
                    segments: m.segments.len(),
                });
            }
            InPlace::NotHere { local_changes: c } => local_changes = c,
        }
    }
    let local = match local_changes {
        true => Some(copy_ledger(ledger_file).await?),
        false => None,
    };
    let (assembled, reused) =
        assemble(client, loc, ledger_file, &m, true, settings.concurrency).await?;
    check_assembled(loc, &assembled, &m, reused == 0).await?;
    tracing::info!(
        "generation {} assembled and verified: {} of {} segments downloaded{}",
        m.generation,
        m.segments.len() - reused,
        m.segments.len(),
        if reused == 0 {
            ", integrity checked"
        } else {
            ""
        }
    );
    let downloaded = m.segments.len() - reused;
    let (assembled, carried) = match local {
        None => (assembled, None),
        Some(local) => {
            let base = record
                .and_then(|r| r.cost_tables.clone())
                .unwrap_or_else(empty_cost_tables);
            let (assembled, carried) = carry_into(assembled, local, base).await?;
            (assembled, Some(carried))
        }
    };
    install(assembled, ledger).await?;
    local::write(ledger, &pulled_record)?;
    Ok(match carried {
        None => Pulled::Generation {
            generation: m.generation,
            size: m.size,
            downloaded,
            segments: m.segments.len(),
        },
        Some(carried) => Pulled::Merged {
            generation: m.generation,
            size: m.size,
            carried,
        },
    })
}

/// Carries the local copy's changes over into the state file.
async fn carry_into(
    state: snapshot::TempDb,
    local: Snapshot,
    base: String,
) -> Result<(snapshot::TempDb, Carried)> {
    let (state, carried) = blocking(move || {
        let carried = carry_over(state.path(), local.path.path(), &base)?;
        Ok((state, carried))
    })
    .await?;
    report_carried(&carried);
    Ok((state, carried))
}

async fn install(file: snapshot::TempDb, ledger: &Path) -> Result<()> {
    let target = ledger.to_path_buf();
    blocking(move || snapshot::install(file, &target)).await
}

/// Pulls a format-1 state (the whole ledger in one object), downloaded and verified by [`fetch`].
async fn pull_snapshot(
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &SyncSettings,
    record: Option<SyncRecord>,
    (info, meta): (ObjectInfo, StateMeta),
    snapshot: Snapshot,
    discard_local: bool,
) -> Result<Pulled> {
    let ledger = ledger_file.path.as_path();
    let local = match discard_local || !ledger.exists() {
        true => None,
        false => Some(copy_ledger(ledger_file).await?),
    };
    let local_changes = local.filter(|l| {
        let content = &l.fingerprints.content;
        *content != meta.content && record.as_ref().is_none_or(|r| r.content != *content)
    });
    let generation = meta.generation;
    let size = snapshot.fingerprints.size;
    let (path, segment_size) = (snapshot.path.path().to_path_buf(), settings.segment_size);
    let scan = blocking(move || segments::scan_file(&path, segment_size, |_, _, _| Ok(()))).await?;
    let pulled = record_for(
        loc,
        (generation, &info.etag, &meta),
        (&scan.content, scan.segment_size),
        &snapshot.facts.cost_tables,
    );
    let (file, carried) = match local_changes {
        None => (snapshot.path, None),
        Some(local) => {
            let base = record
                .as_ref()
                .and_then(|r| r.cost_tables.clone())
                .unwrap_or_else(empty_cost_tables);
            let (file, carried) = carry_into(snapshot.path, local, base).await?;
            (file, Some(carried))
        }
    };
    install(file, ledger).await?;
    local::write(ledger, &pulled)?;
    Ok(match carried {
        None => Pulled::Generation {
            generation,
            size,
            downloaded: 1,
            segments: 1,
        },
        Some(carried) => Pulled::Merged {
            generation,
            size,
            carried,
        },
    })
}

/// How a pull in place ended.
enum InPlace {
    /// The ledger is the state now, having downloaded this many segments.
    Done { downloaded: usize },
    /// The state goes into a new file instead; `local_changes` when the ledger has changes of its
    /// own to carry over.
    NotHere { local_changes: bool },
}

/// Writes the segments of `m` the ledger does not have into it, in one transaction that other
/// writers wait for: read every page (the ledger as it is now, with nobody writing), download
/// what differs (`concurrency` at a time), write it page by page, cut the file to size, read
/// the written segments back and check their hashes, commit. Declines (and changes nothing)
/// when the ledger has changes to keep, when the page size differs, or when more than half of
/// the segments would be downloaded (a new file is then cheaper than the write-ahead log).
async fn in_place(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    record: Option<&SyncRecord>,
    m: &Arc<Manifest>,
    discard_local: bool,
    settings: &SyncSettings,
) -> Result<InPlace> {
    let (file, segment_size) = (ledger_file.clone(), m.segment_size);
    let (mut write, local) = blocking(move || {
        let write = PageWrite::begin(&file)?;
        let mut scanner = Scanner::new(segment_size, |_, _, _| Ok(()));
        write.read_all(|page| scanner.push(page))?;
        Ok((write, scanner.finish()?))
    })
    .await?;
    if !discard_local && has_local_changes(ledger_file, record, &local, &m.content).await? {
        return Ok(InPlace::NotHere {
            local_changes: true,
        });
    }
    if write.page_size() != m.page_size {
        return Ok(InPlace::NotHere {
            local_changes: false,
        });
    }
    let wanted = m.hashes().map_err(anyhow::Error::msg)?;
    let missing: Vec<usize> = (0..wanted.len())
        .filter(|i| local.hashes.get(*i) != Some(&wanted[*i]))
        .collect();
    let pages = (m.size / u64::from(m.page_size)) as u32;
    if missing.is_empty() && write.page_count() == pages {
        return Ok(InPlace::Done { downloaded: 0 });
    }
    if missing.len() * 2 > wanted.len() {
        return Ok(InPlace::NotHere {
            local_changes: false,
        });
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(settings.concurrency);
    let (expected, count) = (
        missing.iter().copied().collect::<HashSet<usize>>(),
        missing.len(),
    );
    let (m2, what) = (m.clone(), format!("generation {} of {loc}", m.generation));
    let writer = tokio::task::spawn_blocking(move || -> Result<()> {
        let per_segment = (m2.segment_size / u64::from(m2.page_size)) as u32;
        let mut written = HashSet::new();
        while let Some((i, bytes)) = rx.blocking_recv() {
            let first = i as u32 * per_segment + 1;
            for (k, page) in bytes.chunks(m2.page_size as usize).enumerate() {
                write.write_page(first + k as u32, page)?;
            }
            written.insert(i);
        }
        anyhow::ensure!(written == expected, "not every segment arrived");
        write.truncate(pages)?;
        // Read back what was written: the whole file is then the manifest's segments.
        for &i in &written {
            let first = i as u32 * per_segment + 1;
            let len = segments::segment_len(m2.segment_size, m2.size, i);
            let last = first + (len / u64::from(m2.page_size)) as u32 - 1;
            let mut h = blake3::Hasher::new();
            write.read_range(first, last, |page| {
                h.update(page);
                Ok(())
            })?;
            if h.finalize() != wanted[i] {
                return Err(refused(
                    &what,
                    format!("segment {i} reads back wrong"),
                    false,
                ));
            }
        }
        anyhow::ensure!(
            write.page_count() == pages,
            "the ledger has {} pages, not {pages}",
            write.page_count()
        );
        write.commit()
    });
    let sent = futures::stream::iter(missing)
        .map(|i| fetch_segment(client, loc, m, i))
        .buffer_unordered(settings.concurrency)
        .try_for_each(|segment| {
            let tx = tx.clone();
            async move { tx.send(segment).await.context("writing segments") }
        })
        .await;
    drop(tx);
    let written = writer.await.context("a background task")?;
    sent?;
    written?;
    Ok(InPlace::Done { downloaded: count })
}

/// Says what a pull kept of the local ledger and what it dropped.
fn report_carried(c: &Carried) {
    if c.usage_files_dropped > 0 {
        tracing::info!(
            "dropped {} usage files ingested here that the state does not have: any ingest \
             reads them again from the export",
            c.usage_files_dropped
        );
    }
    if c.updates_dropped > 0 {
        tracing::info!(
            "dropped what was recorded here about {} submissions after the state was pushed \
             (answers of a run that did not push them): the state's record is kept; the next \
             run re-sends what is still in flight there, and Clazar's duplicate answer confirms \
             what had arrived",
            c.updates_dropped
        );
    }
    for l in &c.left_out {
        let what = format!(
            "{} contract {} {} {}",
            l.service_key, l.contract_id, l.period_kind, l.period
        );
        if l.status == "pending" {
            tracing::info!(
                "dropped the submission of {what} planned here and never sent: the state already \
                 holds that period"
            );
        } else {
            tracing::warn!(
                "left out the submission of {what} recorded here as {}: the state already holds \
                 an accepted or in-flight line for that period (Clazar refuses a second one as a \
                 duplicate); the state's record is kept",
                l.status
            );
        }
    }
    if c.submissions > 0 {
        tracing::warn!(
            "kept {} submissions ({} lines, {} runs) recorded here that the state did not have \
             (e.g. a `meterbook submit` that was not pushed): they are now in the ledger, and \
             the next push uploads them",
            c.submissions,
            c.lines,
            c.runs
        );
    }
    if c.predecessor_imports > 0 {
        tracing::warn!(
            "kept {} predecessor imports recorded here that the state did not have; the next \
             push uploads them",
            c.predecessor_imports
        );
    }
    if c.cost_tables {
        tracing::warn!(
            "kept the cost tables changed here (`costs ingest`, `costs grants load`), which the \
             state had not changed; the next push uploads them"
        );
    }
    if let Some(dropped) = &c.cost_tables_dropped {
        let mut again: Vec<String> = dropped
            .billing_sources
            .iter()
            .map(|s| format!("`meterbook costs ingest --source {s}`"))
            .collect();
        again.extend(
            dropped
                .grants_files
                .iter()
                .map(|f| format!("`meterbook costs grants load {f}`")),
        );
        tracing::warn!(
            "the cost tables were changed both here and in the state (`costs ingest` or `costs \
             grants load` on two hosts), and only one version can be kept: the state's, which \
             other hosts already have. This host's cost changes were dropped; to bring them \
             back, run here again: {}",
            match again.is_empty() {
                true => "the cost commands run here".to_string(),
                false => again.join(", "),
            }
        );
    }
}

/// Refuses to replace a ledger that holds changes which are neither in the generation it was
/// synced as nor in the incoming state (content `incoming` at `segment_size`).
async fn guard_local(
    ledger: &LedgerFile,
    record: Option<&SyncRecord>,
    (incoming, segment_size): (&str, u64),
    discard_local: bool,
) -> Result<()> {
    check_replaceable(ledger).await?;
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
    settings: &SyncSettings,
    wanted: u64,
    discard_local: bool,
) -> Result<u64> {
    let ledger = ledger_file.path.as_path();
    let record = local::read(ledger, &loc.to_string())?;
    let kept = remote::list_generations(client, loc).await?;
    if !kept.contains(&wanted) {
        return Err(Fatal::Config(format!(
            "generation {wanted} of {loc} is not kept; kept generations: {}",
            list(&kept)
        ))
        .into());
    }
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
            let (file, reused) =
                assemble(client, loc, ledger_file, &old, true, settings.concurrency).await?;
            check_assembled(loc, &file, &old, reused == 0).await?;
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
    local::write(
        ledger,
        &record_for(
            loc,
            (generation, &etag, &meta),
            (&m.content, m.segment_size),
            &m.cost_tables,
        ),
    )?;
    gc::after_write(client, loc, &m, &etag, dropped, settings, false).await;
    Ok(generation)
}

/// A format-1 snapshot as the manifest of the generation it was (`meta`), with its segments the
/// state does not have (`live`) spooled for upload.
async fn converted(
    snapshot: (std::path::PathBuf, SnapshotFacts),
    ledger: &Path,
    meta: &StateMeta,
    settings: &SyncSettings,
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
    settings: &SyncSettings,
    generation: Option<u64>,
) -> Result<Verified> {
    let key = match generation {
        Some(n) => {
            let kept = remote::list_generations(client, loc).await?;
            if !kept.contains(&n) {
                return Err(Fatal::Config(format!(
                    "generation {n} of {loc} is not kept; kept generations: {}",
                    list(&kept)
                ))
                .into());
            }
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
