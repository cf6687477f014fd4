//! `pull`: the local ledger becomes the current state, downloading only the segments it does not
//! have. Behind by a few segments, they are written into the ledger in one transaction;
//! otherwise (much changed, no ledger, a page size of its own, or local changes to carry over) a
//! new file is assembled, checked and installed. A pull over a ledger with changes not on S3
//! keeps what only this ledger knows (submissions, predecessor imports, cost tables changed here)
//! by carrying it over into the newer state, and drops what the state covers or any ingest
//! rebuilds ([`crate::ledger::carry_over`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use futures::{StreamExt, TryStreamExt};

use super::local::{self, SyncRecord};
use super::manifest::Manifest;
use super::remote::{ObjectInfo, StateMeta};
use super::segments::{self, Scanner};
use super::snapshot::{self, Snapshot};
use super::state::{
    blocking, check_ledger, copy_ledger, fetch, gone, has_local_changes, head, record_for,
    record_of, refused, refused_snapshot, unchanged_since, Fetched,
};
use super::transfer::{assemble, check_assembled, fetch_segment};
use super::StateLocation;
use crate::config::StateSettings;
use crate::ledger::{
    binary_schema_version, carry_over, empty_cost_tables, Carried, LedgerFile, PageWrite,
    SnapshotProblem,
};

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The local ledger is now this generation.
    Generation {
        generation: u64,
        size: u64,
        downloaded: Downloaded,
        /// The generation's segments (format 1: one object).
        segments: usize,
    },
    /// The local ledger had changes the state did not have: it is now this generation, plus
    /// what only the local ledger knew ([`Carried`] says what was kept and what dropped).
    Merged {
        generation: u64,
        size: u64,
        downloaded: Downloaded,
        carried: Carried,
    },
    /// The local ledger already is the current generation.
    UpToDate { generation: u64 },
    /// The local ledger is the current generation plus changes not yet pushed.
    LocalAhead { generation: u64 },
    /// There is no state yet (a first run); the local ledger was not touched.
    NoState,
}

/// What a pull downloaded: segments (format 1: the one object), and their stored (compressed)
/// bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Downloaded {
    pub segments: usize,
    pub bytes: u64,
}

impl Downloaded {
    /// Segments `indexes` of `m`.
    pub(super) fn of(m: &Manifest, indexes: &[usize]) -> Downloaded {
        Downloaded {
            segments: indexes.len(),
            bytes: indexes.iter().map(|&i| m.segments[i].1).sum(),
        }
    }
}

/// Makes the local ledger the current state: downloads what it does not have, verifies it and
/// installs it. When the local ledger has changes the state does not have (and `discard_local`
/// is not given), what only it knows is carried over into the state first ([`carry_over`]).
pub async fn pull(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
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
            check_ledger(ledger_file).await?;
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
    check_ledger(ledger_file).await?;
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

/// Pulls a format-2 state: in place when the local ledger has the same page size, no changes
/// of its own to keep, and at least half of the segments; otherwise into a new file.
#[allow(clippy::too_many_arguments)]
async fn pull_manifest(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
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
    let pulled_record = record_of(loc, &m, etag, meta);
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
                    "generation {} written into ledger {}: {} of {} segments downloaded ({} \
                     bytes)",
                    m.generation,
                    ledger.display(),
                    downloaded.segments,
                    m.segments.len(),
                    downloaded.bytes
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
    let (assembled, downloaded) =
        assemble(client, loc, ledger_file, &m, true, settings.concurrency).await?;
    let whole = downloaded.segments == m.segments.len();
    check_assembled(loc, &assembled, &m, whole).await?;
    tracing::info!(
        "generation {} assembled and verified: {} of {} segments downloaded ({} bytes){}",
        m.generation,
        downloaded.segments,
        m.segments.len(),
        downloaded.bytes,
        if whole { ", integrity checked" } else { "" }
    );
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
            downloaded,
            carried,
        },
    })
}

/// Carries the local copy's changes over into the state file.
pub(super) async fn carry_into(
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

pub(super) async fn install(file: snapshot::TempDb, ledger: &Path) -> Result<()> {
    let target = ledger.to_path_buf();
    blocking(move || snapshot::install(file, &target)).await
}

/// Pulls a format-1 state (the whole ledger in one object), downloaded and verified by [`fetch`].
async fn pull_snapshot(
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    settings: &StateSettings,
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
    let downloaded = Downloaded {
        segments: 1,
        bytes: info.size.max(0) as u64,
    };
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
            downloaded,
            segments: 1,
        },
        Some(carried) => Pulled::Merged {
            generation,
            size,
            downloaded,
            carried,
        },
    })
}

/// How a pull in place ended.
enum InPlace {
    /// The ledger is the state now, having downloaded these segments.
    Done { downloaded: Downloaded },
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
    settings: &StateSettings,
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
        return Ok(InPlace::Done {
            downloaded: Downloaded::default(),
        });
    }
    if missing.len() * 2 > wanted.len() {
        return Ok(InPlace::NotHere {
            local_changes: false,
        });
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Vec<u8>)>(settings.concurrency);
    let (expected, downloaded) = (
        missing.iter().copied().collect::<HashSet<usize>>(),
        Downloaded::of(m, &missing),
    );
    let (m2, what) = (m.clone(), format!("generation {} of {loc}", m.generation));
    let readable = write.page_count();
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
        // Read back what was written where pages were before (SQLite reads pages appended in
        // this transaction only once it is committed; those were checked as downloaded).
        for &i in &written {
            let first = i as u32 * per_segment + 1;
            let len = segments::segment_len(m2.segment_size, m2.size, i);
            let last = first + (len / u64::from(m2.page_size)) as u32 - 1;
            if last > readable {
                continue;
            }
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
    Ok(InPlace::Done { downloaded })
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
    if c.compactions_dropped > 0 {
        tracing::info!(
            "dropped the compaction of {} months done here that the state has not compacted: \
             the state's records of those months are kept (`meterbook compact` compacts them \
             again)",
            c.compactions_dropped
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
        if l.status == crate::ledger::SubmissionStatus::Pending {
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
