//! What happens after a generation is written: its manifest is copied to `KEY.generations/N` for
//! `sync restore`, the copies of generations no longer kept are deleted, and then the segments
//! that only those generations named. Every `integrity_check_every` generations a sweep also
//! deletes the segments no kept manifest names at all (left by a push that stopped between its
//! segments and its manifest, by one that lost the race for the state, or by a clean-up that
//! stopped half-way), reading every kept manifest first.
//!
//! A segment is deleted only when it is older than the grace period (`StateSettings::gc_grace`), as
//! S3 last saw it written, looked at again just before it is deleted: a push under way on another
//! host may have just uploaded it, or uploaded it again, before its manifest names it. Failures
//! only warn: the generation itself is written, and what was not deleted now is later.

use std::collections::HashSet;

use anyhow::Result;
use aws_sdk_s3::Client;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use super::manifest::{Manifest, Retained, Segment};
use super::remote;
use super::StateLocation;
use crate::config::StateSettings;

/// Keeps generation `m` (written with ETag `etag`), drops what is no longer kept: the copies of
/// old generations and the segments `dropped` (only they named); with `sweep`, also every segment
/// no kept manifest names.
pub async fn after_write(
    client: &Client,
    loc: &StateLocation,
    m: &Manifest,
    etag: &str,
    dropped: Vec<String>,
    settings: &StateSettings,
    sweep: bool,
) {
    let keep = settings.keep_generations;
    let pruned = match keep_generation(client, loc, m.generation, etag, keep).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(
                "could not keep generation {} as a copy: {e:#}",
                m.generation
            );
            false
        }
    };
    // A copy that could not be deleted still names its segments: they stay until a sweep has
    // read it.
    if pruned && !dropped.is_empty() {
        match delete_old(client, loc, dropped, settings).await {
            Ok((n, bytes)) if n > 0 => tracing::info!(
                "deleted {n} segments ({bytes} bytes) that only generations no longer kept named"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("could not delete old segments: {e:#}"),
        }
    }
    if sweep {
        match sweep_unnamed(client, loc, m, settings).await {
            Ok((n, bytes)) if n > 0 => {
                tracing::info!("deleted {n} segments ({bytes} bytes) that no kept generation names")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("could not look for segments no generation names: {e:#}"),
        }
    }
}

/// Copies the state (only if it is still version `etag`) to its generation's key and deletes the
/// copies older than the newest `keep`.
async fn keep_generation(
    client: &Client,
    loc: &StateLocation,
    generation: u64,
    etag: &str,
    keep: u64,
) -> Result<()> {
    let key = loc.generation_key(generation);
    client
        .copy_object()
        .bucket(&loc.bucket)
        .key(&key)
        .copy_source(format!("{}/{}", loc.bucket, loc.key))
        .copy_source_if_match(etag)
        .send()
        .await
        .map_err(|e| remote::explain(&e, crate::s3::Op::Copy, &loc.bucket, &key))?;
    for old in remote::list_generations(client, loc).await? {
        if old + keep <= generation {
            remote::delete(client, &loc.bucket, &loc.generation_key(old)).await?;
        }
    }
    Ok(())
}

/// Deletes each segment of `hashes` that is older than the grace period; returns how many were
/// deleted, and their stored bytes.
async fn delete_old(
    client: &Client,
    loc: &StateLocation,
    hashes: Vec<String>,
    settings: &StateSettings,
) -> Result<(usize, u64)> {
    let grace = chrono::Duration::from_std(settings.gc_grace)?;
    let deleted: Vec<Option<u64>> = futures::stream::iter(hashes)
        .map(|hash| async move {
            let key = loc.segment_key(&hash);
            let Some(info) = remote::head(client, &loc.bucket, &key).await? else {
                return Ok(None);
            };
            if info.last_modified.is_none_or(|t| t + grace > Utc::now()) {
                return Ok(None);
            }
            remote::delete(client, &loc.bucket, &key).await?;
            crate::failpoint::hit("during-gc");
            anyhow::Ok(Some(info.size.max(0) as u64))
        })
        .buffer_unordered(settings.concurrency)
        .try_collect()
        .await?;
    let deleted: Vec<u64> = deleted.into_iter().flatten().collect();
    Ok((deleted.len(), deleted.iter().sum()))
}

/// Deletes the segments older than the grace period that neither `m` nor any kept copy names.
async fn sweep_unnamed(
    client: &Client,
    loc: &StateLocation,
    m: &Manifest,
    settings: &StateSettings,
) -> Result<(usize, u64)> {
    let mut named: HashSet<String> = m.live().keys().map(|h| h.to_string()).collect();
    for generation in remote::list_generations(client, loc).await? {
        let key = loc.generation_key(generation);
        let Some(bytes) = remote::get_bytes(client, &loc.bucket, &key).await? else {
            continue;
        };
        // A copy of format 1 is the whole ledger and names no segments.
        if bytes.first() != Some(&b'{') {
            continue;
        }
        let kept = Manifest::parse(&bytes)
            .map_err(|e| anyhow::anyhow!("s3://{}/{key}: {e}", loc.bucket))?;
        named.extend(kept.segments.into_iter().map(|Segment(h, _)| h));
        named.extend(kept.retained.into_iter().map(|Retained(h, _, _)| h));
    }
    let grace = chrono::Duration::from_std(settings.gc_grace)?;
    let prefix = loc.segments_prefix();
    let unnamed: Vec<String> = remote::list(client, &loc.bucket, &prefix)
        .await?
        .into_iter()
        .filter(|o| o.last_modified.is_some_and(|t| t + grace <= Utc::now()))
        .filter_map(|o| o.key.strip_prefix(&prefix).map(str::to_string))
        .filter(|hash| !named.contains(hash))
        .collect();
    delete_old(client, loc, unnamed, settings).await
}
