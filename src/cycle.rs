//! One cycle of `meterbook run`, the whole job under the lease, safe from any host: take the lease,
//! pull the ledger from S3, ingest what is new, plan what is due, push (so the planned submissions
//! are durable on S3 before the first request leaves; skipped when nothing is to be sent), send,
//! push again, give the lease back. A crash at any step loses nothing and sends nothing twice (see
//! the README's `meterbook run`). Each sync's duration and size is recorded for `/metrics`.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::RunSettings;
use crate::console::metrics::{Direction, RunMetrics};
use crate::error::{FailureKind, Outcome, Step};
use crate::failpoint;
use crate::submit::Prepared;
use crate::sync::pull::{self, Pulled};
use crate::sync::push::{self, Pushed};
use crate::sync::{lease, StateLocation};

/// One run under the lease. The lease is given back whatever happens in between.
pub async fn run(settings: &RunSettings, metrics: &RunMetrics) -> Result<Outcome> {
    let started = Instant::now();
    let client = crate::s3::client(&settings.s3).await;
    let loc = crate::sync::locate(&client, &settings.state)
        .await
        .context(Step::new(FailureKind::State, "finding the state on S3"))?;
    let taken = lease::acquire(
        &client,
        &loc,
        settings.state.lease,
        settings.wait_for_lease,
        true,
    )
    .await
    .context(Step::new(FailureKind::State, "taking the lease"))?;
    tracing::info!("holding the lease as {}", taken.record().holder);
    let held = taken.keep_alive();
    let result = steps(settings, &client, &loc, metrics).await;
    if let Err(e) = held.release().await {
        tracing::warn!("could not give back the lease (it expires by itself): {e:#}");
    }
    let outcome = result?;
    tracing::info!(
        "run finished in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        match outcome {
            Outcome::Success => "all done",
            Outcome::NeedsAttention => "something needs attention (see the warnings above)",
        }
    );
    Ok(outcome)
}

async fn steps(
    settings: &RunSettings,
    client: &aws_sdk_s3::Client,
    loc: &StateLocation,
    metrics: &RunMetrics,
) -> Result<Outcome> {
    let ledger_file = &settings.ledger;
    let mut pulled = Outcome::Success;
    let started = Instant::now();
    let result = pull::pull(client, loc, ledger_file, &settings.state, false)
        .await
        .context(Step::new(FailureKind::State, "pulling the ledger from S3"))?;
    let bytes = match &result {
        Pulled::Generation { downloaded, .. } | Pulled::Merged { downloaded, .. } => {
            downloaded.bytes
        }
        _ => 0,
    };
    metrics.sync(Direction::Pull, started.elapsed(), bytes);
    match result {
        Pulled::Generation { generation, .. } => tracing::info!("pulled generation {generation}"),
        Pulled::Merged {
            generation,
            carried,
            ..
        } => {
            tracing::info!("pulled generation {generation} over this ledger's own changes");
            if carried.needs_attention() {
                pulled = Outcome::NeedsAttention;
            }
        }
        Pulled::UpToDate { generation } => tracing::info!("ledger is generation {generation}"),
        Pulled::LocalAhead { generation } => tracing::info!(
            "ledger is generation {generation} plus local changes from an unfinished run; keeping them"
        ),
        Pulled::NoState => tracing::info!("no state on S3 yet; this run creates it"),
    }

    let ingested = pulled.and(
        crate::ingest::run(&settings.ingest)
            .await
            .context(Step::new(FailureKind::Export, "ingesting the export"))?
            .report(),
    );

    let planned = match crate::submit::prepare(&settings.submit, "run").await? {
        Prepared::Printed(printed) => {
            tracing::info!("dry run: the ledger was not pushed to S3");
            return Ok(ingested.and(printed));
        }
        Prepared::Planned(planned) => planned,
    };
    failpoint::hit("after-plan");

    // The outbox must be on S3 before any request leaves: a host that dies after sending is then
    // reconciled by whichever host runs next. With nothing to send, one push at the end does.
    if !planned.sends_nothing() {
        push(client, loc, settings, metrics).await?;
    }
    let submitted = planned.send(&settings.ledger).await?;
    push(client, loc, settings, metrics).await?;
    Ok(ingested.and(submitted))
}

async fn push(
    client: &aws_sdk_s3::Client,
    loc: &StateLocation,
    settings: &RunSettings,
    metrics: &RunMetrics,
) -> Result<()> {
    let started = Instant::now();
    let pushed = push::push(client, loc, &settings.ledger, &settings.state)
        .await
        .context(Step::new(FailureKind::State, "pushing the ledger to S3"))?;
    let bytes = match &pushed {
        Pushed::Generation { uploaded_bytes, .. } => *uploaded_bytes,
        Pushed::UpToDate { .. } => 0,
    };
    metrics.sync(Direction::Push, started.elapsed(), bytes);
    match pushed {
        Pushed::Generation { generation, .. } => tracing::info!("pushed generation {generation}"),
        Pushed::UpToDate { generation } => {
            tracing::info!("S3 already holds this ledger as generation {generation}")
        }
    }
    Ok(())
}
