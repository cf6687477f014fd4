//! `meterbook sync`: pull, push, status, verify and restore of the ledger's state on S3, and the
//! lease. Results go to stdout, one line each (`status`: one `name: value` line per fact).

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;

use crate::cli::{GlobalArgs, LeaseAction, SyncAction, SyncArgs};
use crate::config::{Environment, SyncSettings};
use crate::error::Outcome;
use crate::period::format_utc;
use crate::sync::pull::{pull, Pulled};
use crate::sync::push::{push, Pushed};
use crate::sync::restore::{restore, verify};
use crate::sync::state;
use crate::sync::{lease, StateLocation};

pub async fn run(global: &GlobalArgs, args: &SyncArgs, env: &Environment) -> Result<Outcome> {
    let settings = SyncSettings::resolve(global, &args.state, env)?;
    let client = crate::s3::client(&settings.s3).await;
    let loc = crate::sync::locate(&client, &settings.state).await?;
    let ledger_file = &settings.ledger;
    let ledger = &ledger_file.path;
    let state_settings = &settings.state;
    let mut out = std::io::stdout().lock();
    let mut outcome = Outcome::Success;
    match &args.action {
        SyncAction::Push => match push(&client, &loc, ledger_file, state_settings).await? {
            Pushed::Generation {
                generation,
                size,
                uploaded,
                uploaded_bytes,
                segments,
                stored,
            } => writeln!(
                out,
                "pushed generation {generation} to {loc} ({uploaded} new segments, {} uploaded; \
                 {segments} segments, {} stored, {} uncompressed)",
                mb(uploaded_bytes),
                mb(stored),
                mb(size)
            )?,
            Pushed::UpToDate { generation } => writeln!(
                out,
                "nothing to push: {loc} already holds this ledger as generation {generation}"
            )?,
        },
        SyncAction::Pull { discard_local } => {
            match pull(&client, &loc, ledger_file, state_settings, *discard_local).await? {
                Pulled::Generation {
                    generation,
                    size,
                    downloaded,
                    segments,
                } => writeln!(
                    out,
                    "pulled generation {generation} from {loc} into {} ({}; {} of {segments} \
                     segments downloaded: {})",
                    ledger.display(),
                    mb(size),
                    downloaded.segments,
                    mb(downloaded.bytes)
                )?,
                Pulled::Merged {
                    generation,
                    size,
                    carried,
                    ..
                } => {
                    outcome = match carried.needs_attention() {
                        true => Outcome::NeedsAttention,
                        false => Outcome::Success,
                    };
                    let kept = match carried.kept_anything() {
                        true => format!(
                            ", keeping {} submissions, {} predecessor imports{} recorded only \
                             here (push them with `meterbook sync push`)",
                            carried.submissions,
                            carried.predecessor_imports,
                            if carried.cost_tables {
                                " and the cost tables"
                            } else {
                                ""
                            }
                        ),
                        false => String::new(),
                    };
                    writeln!(
                        out,
                        "pulled generation {generation} from {loc} into {} ({}){kept}",
                        ledger.display(),
                        mb(size)
                    )?
                }
                Pulled::UpToDate { generation } => {
                    writeln!(out, "up to date: generation {generation} of {loc}")?
                }
                Pulled::LocalAhead { generation } => writeln!(
                    out,
                    "nothing to pull: {loc} is still generation {generation}, and {} has changes \
                     on top of it (push them with `meterbook sync push`)",
                    ledger.display()
                )?,
                Pulled::NoState => writeln!(
                    out,
                    "no state at {loc} yet; nothing pulled (the first `meterbook sync push` creates it)"
                )?,
            }
        }
        SyncAction::Restore {
            generation,
            discard_local,
        } => {
            let new = restore(
                &client,
                &loc,
                ledger_file,
                state_settings,
                *generation,
                *discard_local,
            )
            .await?;
            writeln!(
                out,
                "restored generation {generation} of {loc} as generation {new}, and pulled it into {}",
                ledger.display()
            )?
        }
        SyncAction::Verify { generation } => {
            let v = verify(&client, &loc, ledger_file, state_settings, *generation).await?;
            writeln!(
                out,
                "verified generation {} of {loc}: format {}, {} segments ({} stored), {} \
                 uncompressed, schema version {}; every segment's hash, the whole file's \
                 checksum and PRAGMA integrity_check are ok",
                v.generation,
                v.format,
                v.segments,
                mb(v.stored),
                mb(v.size),
                v.schema_version
            )?
        }
        SyncAction::Status => print_status(
            &mut out,
            &loc,
            ledger,
            &state::status(&client, &loc, ledger_file).await?,
        )?,
        SyncAction::Lease(action) => {
            lease_action(&mut out, &client, &loc, action, settings.state.lease).await?
        }
    }
    Ok(outcome)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn print_status(
    out: &mut impl Write,
    loc: &StateLocation,
    ledger: &std::path::Path,
    status: &state::Status,
) -> Result<()> {
    writeln!(out, "state: {loc}")?;
    match &status.remote {
        Some(r) => {
            let m = &r.meta;
            writeln!(out, "remote generation: {}", m.generation)?;
            writeln!(out, "remote etag: {}", r.info.etag)?;
            writeln!(out, "remote sha256: {}", m.sha256)?;
            writeln!(out, "remote schema version: {}", m.schema_version)?;
            writeln!(
                out,
                "remote pushed: {} by {}",
                format_utc(m.pushed_at),
                m.pushed_by
            )?;
            if let Some(n) = m.restored_from {
                writeln!(out, "remote restored from generation: {n}")?;
            }
            writeln!(out, "remote format: {}", m.format)?;
            match &status.manifest {
                Some(manifest) => {
                    writeln!(
                        out,
                        "remote size: {} stored ({}) in {} segments of {} KiB, {} uncompressed",
                        mb(manifest.stored()),
                        m.compression,
                        manifest.segments.len(),
                        manifest.segment_size >> 10,
                        mb(m.size)
                    )?;
                    writeln!(
                        out,
                        "remote retained for kept generations: {} segments, {}",
                        manifest.retained.len(),
                        mb(manifest.retained.iter().map(|r| r.1).sum())
                    )?;
                    writeln!(
                        out,
                        "remote integrity checked: generation {}",
                        manifest.integrity_checked
                    )?;
                }
                None => writeln!(
                    out,
                    "remote size: {} stored ({}), {} uncompressed",
                    mb(r.info.size.max(0) as u64),
                    m.compression,
                    mb(m.size)
                )?,
            }
        }
        None => writeln!(out, "remote generation: none (no state yet)")?,
    }
    writeln!(out, "kept generations: {}", state::list(&status.kept))?;
    writeln!(out, "local ledger: {}", ledger.display())?;
    match &status.record {
        Some(r) => {
            writeln!(out, "local generation: {}", r.generation)?;
            writeln!(out, "local etag: {}", r.etag)?;
            writeln!(out, "local sha256: {}", r.sha256)?;
            writeln!(out, "local synced: {}", format_utc(r.synced_at))?;
        }
        None => writeln!(out, "local generation: none (never pulled or pushed)")?,
    }
    let unpushed = match status.unpushed {
        None => "no local ledger",
        Some(true) => "yes",
        Some(false) => "no",
    };
    writeln!(out, "unpushed changes: {unpushed}")?;
    let behind = match (&status.remote, &status.record) {
        (Some(r), Some(l)) => r.info.etag != l.etag,
        (Some(_), None) => true,
        _ => false,
    };
    writeln!(
        out,
        "remote has newer generation: {}",
        if behind { "yes" } else { "no" }
    )?;
    Ok(())
}

async fn lease_action(
    out: &mut impl Write,
    client: &aws_sdk_s3::Client,
    loc: &StateLocation,
    action: &LeaseAction,
    duration: Duration,
) -> Result<()> {
    match action {
        LeaseAction::Acquire { wait, hold } => {
            let taken = lease::acquire(client, loc, duration, *wait, hold.is_some()).await?;
            let record = taken.record().clone();
            writeln!(
                out,
                "acquired the lease s3://{}/{} as {} until {}",
                loc.bucket,
                loc.lease_key(),
                record.holder,
                format_utc(record.expires_at)
            )?;
            out.flush()?;
            if let Some(seconds) = hold {
                let held = taken.keep_alive();
                tokio::time::sleep(Duration::from_secs(*seconds)).await;
                held.release().await?;
                writeln!(out, "released the lease held by {}", record.holder)?;
            }
        }
        LeaseAction::Release => match lease::release_any(client, loc).await? {
            Some(record) => writeln!(out, "released the lease {}", record.describe(Utc::now()))?,
            None => writeln!(out, "the lease is not held; nothing to release")?,
        },
        LeaseAction::Show => match lease::read(client, loc).await? {
            Some(current) => writeln!(out, "lease: {}", current.record.describe(Utc::now()))?,
            None => writeln!(out, "lease: none (never taken)")?,
        },
    }
    Ok(())
}
