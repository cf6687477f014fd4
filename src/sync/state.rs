//! Pull, push, restore and status: the state's history as a chain of generations, each uploaded
//! only if the state is still the one this ledger was synced with. A pull over a ledger with
//! changes not on S3 keeps what only this ledger knows (submissions, predecessor imports, cost
//! tables changed here) by carrying it over into the newer state, and drops what the state
//! covers or any ingest rebuilds ([`crate::ledger::carry_over`]). Nothing here installs a state
//! that failed a check, or replaces a file that is not a meterbook ledger.

use std::path::Path;

use anyhow::{Context, Result};
use aws_sdk_s3::Client;
use chrono::Utc;

use super::local::{self, SyncRecord};
use super::remote::{self, Condition, ObjectInfo, Refused, StateMeta};
use super::snapshot::{self, Fingerprints, Refusal, Snapshot};
use super::StateLocation;
use crate::error::Fatal;
use crate::ledger::{carry_over, empty_cost_tables, Carried, Ledger, LedgerFile, SnapshotProblem};
use crate::period::format_utc;

/// The state object with its parsed metadata.
#[derive(Debug, Clone)]
pub struct RemoteState {
    pub info: ObjectInfo,
    pub meta: StateMeta,
}

/// Reads the state's description; `None` when there is no state object.
pub async fn head(client: &Client, loc: &StateLocation) -> Result<Option<RemoteState>> {
    let Some(info) = remote::head(client, &loc.bucket, &loc.key).await? else {
        return Ok(None);
    };
    let meta = StateMeta::from_metadata(&info.metadata).map_err(|p| not_a_state(loc, &p))?;
    Ok(Some(RemoteState { info, meta }))
}

fn not_a_state(loc: &StateLocation, problem: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "refusing the state {loc}: it is not a meterbook state ({problem}); the local ledger was \
         left unchanged. Bring back a kept generation with `meterbook sync restore --generation N` \
         (see `meterbook sync status`)"
    )
}

fn refused(what: &str, refusal: Refusal) -> anyhow::Error {
    let message = format!(
        "refusing {what}: {refusal}; the local ledger was left unchanged. Bring back a kept \
         generation with `meterbook sync restore --generation N` (see `meterbook sync status`)"
    );
    match refusal {
        Refusal::Snapshot(SnapshotProblem::NewerSchema { .. }) => Fatal::Config(message).into(),
        _ => anyhow::anyhow!(message),
    }
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

/// A checked snapshot of the ledger, taken without changing it; `None` when there is no ledger.
async fn take_snapshot(ledger: &LedgerFile) -> Result<Option<Snapshot>> {
    if !ledger.path.exists() {
        return Ok(None);
    }
    let file = ledger.clone();
    let taken = blocking(move || snapshot::take(&Ledger::open_for_reading(&file)?)).await?;
    Ok(Some(taken))
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

/// The fingerprints of the ledger's current content, or `None` when there is no ledger.
pub async fn local_content(ledger: &LedgerFile) -> Result<Option<Fingerprints>> {
    Ok(take_snapshot(ledger).await?.map(|s| s.fingerprints))
}

/// Refuses to replace a ledger that holds changes which are neither in the generation it was
/// synced as nor in the incoming state.
async fn guard_local(
    ledger: &LedgerFile,
    record: Option<&SyncRecord>,
    incoming_content: &str,
    discard_local: bool,
) -> Result<()> {
    if discard_local {
        return check_replaceable(ledger).await;
    }
    let Some(local) = local_content(ledger).await? else {
        return Ok(());
    };
    if local.content == incoming_content || record.is_some_and(|r| r.content == local.content) {
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

/// What the ledger is once it is `snapshot`'s content as generation `generation` (ETag `etag`).
fn record_for(loc: &StateLocation, generation: u64, etag: &str, snapshot: &Snapshot) -> SyncRecord {
    SyncRecord {
        state_url: loc.to_string(),
        generation,
        etag: etag.to_string(),
        sha256: snapshot.fingerprints.sha256.clone(),
        content: snapshot.fingerprints.content.clone(),
        cost_tables: Some(snapshot.facts.cost_tables.clone()),
        synced_at: Utc::now(),
    }
}

/// What `push` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// A new generation is the state.
    Generation {
        generation: u64,
        size: u64,
        stored: u64,
    },
    /// The state already holds this ledger's content.
    UpToDate { generation: u64 },
}

/// Uploads a checked snapshot as the next generation, conditional on the state still being the
/// generation this ledger was synced as (or on there being no state yet).
pub async fn push(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    keep: u64,
) -> Result<Pushed> {
    let ledger = ledger_file.path.as_path();
    let started = std::time::Instant::now();
    let Some(snapshot) = take_snapshot(ledger_file).await? else {
        return Err(Fatal::Config(format!(
            "no ledger at {}; nothing to push",
            ledger.display()
        ))
        .into());
    };
    let record = local::read(ledger, &loc.to_string())?;
    tracing::info!(
        "snapshot of {} checked: {} bytes in {:.1}s",
        ledger.display(),
        snapshot.fingerprints.size,
        started.elapsed().as_secs_f64()
    );
    let prints = snapshot.fingerprints.clone();
    let (condition, generation) = match (head(client, loc).await?, &record) {
        (None, Some(r)) => return Err(gone(loc, ledger, r)),
        (None, None) => (Condition::Create, 1),
        (Some(current), Some(r)) if r.etag == current.info.etag => {
            if r.content == prints.content {
                return Ok(Pushed::UpToDate {
                    generation: r.generation,
                });
            }
            (
                Condition::Replace(current.info.etag),
                current.meta.generation + 1,
            )
        }
        (Some(current), _) if current.meta.content == prints.content => {
            // Already there (e.g. pushed before a crash lost the sidecar): adopt it.
            let generation = current.meta.generation;
            local::write(
                ledger,
                &record_for(loc, generation, &current.info.etag, &snapshot),
            )?;
            return Ok(Pushed::UpToDate { generation });
        }
        (Some(current), r) => {
            let synced = match r {
                Some(r) => format!("was synced as generation {}", r.generation),
                None => "was never pulled from it".to_string(),
            };
            return Err(moved_on(loc, ledger, &current.meta, &synced));
        }
    };
    let meta = StateMeta {
        generation,
        sha256: prints.sha256.clone(),
        content: prints.content.clone(),
        schema_version: snapshot.facts.schema_version,
        compression: snapshot::COMPRESSION.to_string(),
        size: prints.size,
        pushed_at: Utc::now(),
        pushed_by: super::host_name(),
        restored_from: None,
    };
    crate::failpoint::hit("before-upload");
    let (uploaded, stored) = upload_snapshot(client, loc, &snapshot, &meta, &condition).await?;
    let etag = match uploaded {
        Ok(etag) => etag,
        Err(Refused::Gone) => {
            return Err(match &record {
                Some(r) => gone(loc, ledger, r),
                None => anyhow::anyhow!("{loc} disappeared during the push; try again"),
            })
        }
        Err(Refused::Changed) => {
            let current = head(client, loc).await.ok().flatten();
            let synced = match &record {
                Some(r) => format!("was synced as generation {}", r.generation),
                None => "found no state when this push began".to_string(),
            };
            return Err(match current {
                Some(c) => moved_on(loc, ledger, &c.meta, &synced),
                None => Fatal::Conflict(format!(
                    "another host wrote {loc} while this push was under way; ledger {} was kept \
                     as it is. Look with `meterbook sync status`",
                    ledger.display()
                ))
                .into(),
            });
        }
    };
    crate::failpoint::hit("after-upload");
    local::write(ledger, &record_for(loc, generation, &etag, &snapshot))?;
    keep_generation(client, loc, generation, &etag, keep).await;
    Ok(Pushed::Generation {
        generation,
        size: prints.size,
        stored,
    })
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

/// Compresses a snapshot and uploads it as the state with `condition`; returns what the
/// condition decided and the stored size.
async fn upload_snapshot(
    client: &Client,
    loc: &StateLocation,
    snapshot: &Snapshot,
    meta: &StateMeta,
    condition: &Condition,
) -> Result<(std::result::Result<String, Refused>, u64)> {
    let started = std::time::Instant::now();
    let snapshot_path = snapshot.path.path().to_path_buf();
    let compressed = blocking(move || snapshot::compress(&snapshot_path)).await?;
    let stored = std::fs::metadata(&compressed)?.len();
    tracing::info!(
        "compressed to {stored} bytes in {:.1}s; uploading generation {}",
        started.elapsed().as_secs_f64(),
        meta.generation
    );
    let body = remote::file_body(&compressed).await?;
    let uploaded = remote::upload(
        client,
        &loc.bucket,
        &loc.key,
        body,
        meta.to_metadata(),
        condition,
    )
    .await?;
    Ok((uploaded, stored))
}

/// Copies the new generation to its own key (only if the state is still that version) and
/// deletes copies older than the newest `keep`. Failures only warn: the state itself is pushed.
async fn keep_generation(
    client: &Client,
    loc: &StateLocation,
    generation: u64,
    etag: &str,
    keep: u64,
) {
    let copied = client
        .copy_object()
        .bucket(&loc.bucket)
        .key(loc.generation_key(generation))
        .copy_source(format!("{}/{}", loc.bucket, loc.key))
        .copy_source_if_match(etag)
        .send()
        .await;
    if let Err(e) = copied {
        let key = loc.generation_key(generation);
        tracing::warn!(
            "could not keep a copy of generation {generation}: {}",
            remote::explain(&e, crate::s3::Op::Copy, &loc.bucket, &key)
        );
        return;
    }
    let pruned = async {
        for old in remote::list_generations(client, loc).await? {
            if old + keep <= generation {
                remote::delete(client, &loc.bucket, &loc.generation_key(old)).await?;
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = pruned.await {
        tracing::warn!("could not delete old generations: {e:#}");
    }
}

/// What `pull` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The local ledger is now this generation.
    Generation { generation: u64, size: u64 },
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

/// Downloads the state, verifies it and installs it as the local ledger. When the local ledger
/// has changes the state does not have (and `discard_local` is not given), what only it knows is
/// carried over into the state first ([`carry_over`]).
pub async fn pull(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
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
        if let Some(local) = local_content(ledger_file).await? {
            return Ok(if local.content == r.content {
                Pulled::UpToDate {
                    generation: r.generation,
                }
            } else {
                Pulled::LocalAhead {
                    generation: r.generation,
                }
            });
        }
    }
    // The state has moved on, or this ledger was never synced with it.
    let local = match discard_local {
        true => {
            check_replaceable(ledger_file).await?;
            None
        }
        false => take_snapshot(ledger_file).await?,
    };
    let local_changes = local.filter(|l| {
        let content = &l.fingerprints.content;
        *content != current.meta.content && record.as_ref().is_none_or(|r| r.content != *content)
    });
    let started = std::time::Instant::now();
    let (snapshot, info, meta) = fetch(client, loc, &loc.key, ledger).await?;
    tracing::info!(
        "generation {} downloaded and verified: {} bytes stored, {} uncompressed, in {:.1}s",
        meta.generation,
        info.size,
        snapshot.fingerprints.size,
        started.elapsed().as_secs_f64()
    );
    let generation = meta.generation;
    let size = snapshot.fingerprints.size;
    let pulled = record_for(loc, generation, &info.etag, &snapshot);
    let (snapshot, carried) = match local_changes {
        None => (snapshot, None),
        Some(local) => {
            let base = record
                .as_ref()
                .and_then(|r| r.cost_tables.clone())
                .unwrap_or_else(empty_cost_tables);
            let (snapshot, carried) = blocking(move || {
                let carried = carry_over(snapshot.path.path(), local.path.path(), &base)?;
                Ok((snapshot, carried))
            })
            .await?;
            report_carried(&carried);
            (snapshot, Some(carried))
        }
    };
    let target = ledger.to_path_buf();
    blocking(move || snapshot::install(snapshot.path, &target)).await?;
    local::write(ledger, &pulled)?;
    Ok(match carried {
        None => Pulled::Generation { generation, size },
        Some(carried) => Pulled::Merged {
            generation,
            size,
            carried,
        },
    })
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

/// Downloads an object of the state's history beside the ledger and verifies it. A missing
/// object is an error.
async fn fetch(
    client: &Client,
    loc: &StateLocation,
    key: &str,
    ledger: &Path,
) -> Result<(Snapshot, ObjectInfo, StateMeta)> {
    let url = format!("s3://{}/{key}", loc.bucket);
    let download = snapshot::temp_beside(ledger, "download")?;
    let Some(info) = remote::download(client, &loc.bucket, key, &download).await? else {
        anyhow::bail!("{url} disappeared while it was being read; try again");
    };
    let meta = StateMeta::from_metadata(&info.metadata).map_err(|p| not_a_state(loc, &p))?;
    let (compression, sha, beside) = (
        meta.compression.clone(),
        meta.sha256.clone(),
        ledger.to_path_buf(),
    );
    let unpacked =
        blocking(move || snapshot::unpack(&download, &compression, &sha, &beside)).await?;
    let snapshot = unpacked.map_err(|refusal| refused(&format!("the state {url}"), refusal))?;
    Ok((snapshot, info, meta))
}

/// Makes kept generation `wanted` the current state again, as a new generation, and installs it
/// as the local ledger. Works also when the state object itself was deleted.
pub async fn restore(
    client: &Client,
    loc: &StateLocation,
    ledger_file: &LedgerFile,
    wanted: u64,
    keep: u64,
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
    let current = remote::head(client, &loc.bucket, &loc.key).await?;
    let current_generation = current
        .as_ref()
        .and_then(|c| StateMeta::from_metadata(&c.metadata).ok())
        .map_or(0, |m| m.generation);
    let (snapshot, _, old) = fetch(client, loc, &loc.generation_key(wanted), ledger).await?;
    guard_local(ledger_file, record.as_ref(), &old.content, discard_local).await?;
    let generation = [current_generation, kept.last().copied().unwrap_or(0)]
        .into_iter()
        .chain(record.as_ref().map(|r| r.generation))
        .max()
        .unwrap_or(0)
        + 1;
    let meta = StateMeta {
        generation,
        pushed_at: Utc::now(),
        pushed_by: super::host_name(),
        restored_from: Some(wanted),
        ..old
    };
    let condition = match &current {
        Some(c) => Condition::Replace(c.etag.clone()),
        None => Condition::Create,
    };
    let (uploaded, _) = upload_snapshot(client, loc, &snapshot, &meta, &condition).await?;
    let etag = uploaded.map_err(|_| {
        Fatal::Conflict(format!(
            "another host wrote {loc} while restoring; nothing was restored. Look with \
                 `meterbook sync status` and try again"
        ))
    })?;
    let restored = record_for(loc, generation, &etag, &snapshot);
    let target = ledger.to_path_buf();
    blocking(move || snapshot::install(snapshot.path, &target)).await?;
    local::write(ledger, &restored)?;
    keep_generation(client, loc, generation, &etag, keep).await;
    Ok(generation)
}

/// Local and remote, side by side.
#[derive(Debug)]
pub struct Status {
    pub remote: Option<RemoteState>,
    pub record: Option<SyncRecord>,
    pub local: Option<Fingerprints>,
    pub kept: Vec<u64>,
}

impl Status {
    /// Whether the local ledger holds changes not in the generation it was synced as.
    pub fn unpushed_changes(&self) -> Option<bool> {
        let local = self.local.as_ref()?;
        Some(
            self.record
                .as_ref()
                .is_none_or(|r| r.content != local.content),
        )
    }
}

pub async fn status(client: &Client, loc: &StateLocation, ledger: &LedgerFile) -> Result<Status> {
    Ok(Status {
        remote: head(client, loc).await?,
        record: local::read(&ledger.path, &loc.to_string())?,
        local: local_content(ledger).await?,
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
