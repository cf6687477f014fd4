//! Moving segments: uploading the ones a push spooled and the manifest that names them,
//! downloading and checking one segment, and assembling a generation in a new file from the
//! local ledger's segments and downloaded ones, checked against the manifest.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};

use super::manifest::{Manifest, Segment};
use super::pull::Downloaded;
use super::remote::{self, Condition, Refused, StateMeta};
use super::segments::{self, Assembled, Hash, Scan, Scanner, Spool};
use super::snapshot;
use super::state::{blocking, refused, refused_snapshot};
use super::StateLocation;
use crate::ledger::{check_snapshot, Ledger, LedgerFile, SnapshotFacts};

/// Downloads segment `index` of `m` and checks it (length and BLAKE3).
pub(super) async fn fetch_segment(
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
/// file is read back and checked against the manifest's checksum. Returns it with what was
/// downloaded.
pub(super) async fn assemble(
    client: &Client,
    loc: &StateLocation,
    ledger: &LedgerFile,
    m: &Arc<Manifest>,
    reuse: bool,
    concurrency: usize,
) -> Result<(snapshot::TempDb, Downloaded)> {
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
    let missing: Vec<usize> = (0..have.len()).filter(|i| !have[*i]).collect();
    let downloaded = Downloaded::of(m, &missing);
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
    Ok((temp, downloaded))
}

/// Checks an assembled file: `PRAGMA integrity_check` when it was downloaded whole, its schema
/// version, and that it holds what the manifest says.
pub(super) async fn check_assembled(
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

/// Uploads the spooled segments, `concurrency` at a time.
pub(super) async fn upload_segments(
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
pub(super) async fn write_manifest(
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

/// Every segment the state `previous` keeps (its own and the retained ones), by hash, with its
/// stored size.
pub(super) fn live_segments(previous: Option<&Manifest>) -> HashMap<String, u64> {
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
pub(super) fn named(
    scan: &Scan,
    spooled: &HashMap<Hash, u64>,
    live: &HashMap<String, u64>,
) -> Vec<Segment> {
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
