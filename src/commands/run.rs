//! `meterbook run`: the whole job, safely, from any host: take the lease, pull the ledger from S3,
//! ingest what is new, plan what is due, push (so the planned submissions are durable on S3 before
//! the first request leaves), send, push again, give the lease back. With `--every`,
//! `PROCESSING_INTERVAL_SECONDS` or `CRON_MODE=true` it keeps doing so, serving the health check.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::Utc;

use crate::clazar::Client;
use crate::cli::{GlobalArgs, RunArgs};
use crate::config::{Environment, RunSettings};
use crate::daemon;
use crate::error::{FailureKind, Outcome, Step};
use crate::failpoint;
use crate::ledger::Ledger;
use crate::submit::{plan_submissions, send_outbox};
use crate::sync::state::{self, Pulled, Pushed};
use crate::sync::{lease, StateLocation};

pub async fn run(global: &GlobalArgs, args: &RunArgs, env: &Environment) -> Result<Outcome> {
    let settings = RunSettings::resolve(global, args, env)?;
    let Some(schedule) = settings.schedule else {
        return cycle(&settings).await;
    };
    tracing::info!("running on a schedule: {schedule:?}");
    daemon::run_forever(schedule, Some(settings.health), || cycle(&settings)).await
}

/// One run under the lease. The lease is given back whatever happens in between.
async fn cycle(settings: &RunSettings) -> Result<Outcome> {
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
    let result = steps(settings, &client, &loc).await;
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
) -> Result<Outcome> {
    let ledger_file = &settings.ledger;
    let mut pulled = Outcome::Success;
    match state::pull(client, loc, ledger_file, false)
        .await
        .context(Step::new(FailureKind::State, "pulling the ledger from S3"))?
    {
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

    let submit = &settings.submit;
    let mut ledger = Ledger::open_for_writing(ledger_file)?;
    let mut planning = super::submit::planning(&ledger, submit)?;
    let held = super::submit::hold_back(&ledger, submit, &mut planning)
        .await
        .context(Step::new(
            FailureKind::Export,
            "looking for the predecessor's state",
        ))?;
    let now = Utc::now();
    if submit.dry_run {
        let plan = crate::submit::compute_plan(&ledger, &planning, now)?;
        super::submit::report_waiting(&plan);
        tracing::info!("dry run: the ledger was not pushed to S3");
        let printed = super::submit::dry_run(&ledger, &plan.submissions)?;
        super::submit::report_left_out(&plan, &planning.rules);
        return Ok(ingested.and(printed).and(held));
    }
    let clazar_settings = submit.clazar()?;
    let clazar = Client::new(clazar_settings.clone())?;
    let run_id = ledger.begin_submission_run(
        "run",
        Some(planning.rules.kind),
        &super::submit::run_settings(&planning, clazar_settings)?,
    )?;
    let plan = plan_submissions(&mut ledger, &planning, run_id, now)?;
    let no_marker = super::submit::report_waiting(&plan);
    tracing::info!("planned {} submissions", plan.submissions.len());
    drop(ledger);
    failpoint::hit("after-plan");

    // The outbox must be on S3 before any request leaves: a host that dies after sending is then
    // reconciled by whichever host runs next.
    push(client, loc, settings).await?;

    let ledger = Mutex::new(Ledger::open_for_writing(ledger_file)?);
    let sent = send_outbox(&ledger, &clazar, None, clazar_settings.concurrency)
        .await
        .context(Step::new(FailureKind::Clazar, "sending to Clazar"))?;
    let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
    ledger.finish_submission_run(run_id, plan.submissions.len() as u64, sent.requests)?;
    let submitted = super::submit::finish(&ledger, &sent)?;
    drop(ledger);

    push(client, loc, settings).await?;
    super::submit::report_left_out(&plan, &planning.rules);
    let marker = if no_marker {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    };
    Ok(ingested.and(submitted).and(marker).and(held))
}

async fn push(
    client: &aws_sdk_s3::Client,
    loc: &StateLocation,
    settings: &RunSettings,
) -> Result<()> {
    match state::push(
        client,
        loc,
        &settings.ledger,
        settings.state.keep_generations,
    )
    .await
    .context(Step::new(FailureKind::State, "pushing the ledger to S3"))?
    {
        Pushed::Generation { generation, .. } => tracing::info!("pushed generation {generation}"),
        Pushed::UpToDate { generation } => {
            tracing::info!("S3 already holds this ledger as generation {generation}")
        }
    }
    Ok(())
}
