//! `push`: the ledger's pages are read once, in one read transaction; the segments the state does
//! not have are spooled, uploaded, and then the next generation's manifest is written, only if
//! the state is still the generation this ledger was synced as (or there is none yet).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use aws_sdk_s3::Client;
use chrono::Utc;

use super::local::{self, SyncRecord};
use super::manifest::{self, Manifest};
use super::remote::{self, Condition, Refused, StateMeta};
use super::segments::{Hash, Scanner, Spool};
use super::state::{
    blocking, check_ledger, current, gone, head, moved_on, record_for, record_of, unchanged_since,
};
use super::transfer::{live_segments, named, upload_segments, write_manifest};
use super::{gc, StateLocation};
use crate::config::StateSettings;
use crate::error::Fatal;
use crate::ledger::{Ledger, LedgerFile};

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

/// Uploads the next generation: the segments of the ledger that the state does not have, then
/// the manifest, conditional on the state still being the generation this ledger was synced as
/// (or on there being no state yet). Every `integrity_check_every` generations (and for a new
/// state) the ledger must pass `PRAGMA integrity_check` first.
pub async fn push(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
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
    check_ledger(ledger_file).await?;
    let record = local::read(ledger, &loc.to_string())?;
    let current = current(client, loc).await?;
    // A new state relies on the store's conditional writes from its first generation on: a store
    // that ignores them is refused before anything is written (once per state: 4 requests).
    if current.is_none()
        && record.is_none()
        && !remote::honours_conditions(client, &loc.bucket, &loc.key).await?
    {
        return Err(Fatal::Config(format!(
            "cannot create the state {loc}: {}; use a store that honours them (AWS S3 does)",
            remote::IGNORES_CONDITIONS
        ))
        .into());
    }
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
    local::write(ledger, &record_of(loc, &m, &etag, &meta))?;
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
