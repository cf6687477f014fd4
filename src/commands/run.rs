//! `meterbook run`: the whole job, safely, from any host: take the lease, pull the ledger from S3,
//! ingest what is new, plan what is due, push (so the planned submissions are durable on S3 before
//! the first request leaves), send, push again, give the lease back. With `--every`,
//! `PROCESSING_INTERVAL_SECONDS` or `CRON_MODE=true` it keeps doing so, serving the health check
//! and `/metrics` (each sync's duration and size is recorded for it).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::clazar::Client;
use crate::cli::{GlobalArgs, IngestArgs, RunArgs};
use crate::config::SourceSpec;
use crate::console::metrics::{Direction, RunMetrics, RunTelemetry};
use crate::daemon::{self, Schedule};
use crate::error::{FailureKind, Outcome, Step};
use crate::failpoint;
use crate::ledger::Ledger;
use crate::submit::{plan_submissions, send_outbox};
use crate::sync::state::{self, Pulled, Pushed};
use crate::sync::{lease, StateLocation};

pub async fn run(global: &GlobalArgs, args: &RunArgs) -> Result<Outcome> {
    let schedule = Schedule::choose(
        args.every.as_deref(),
        args.processing_interval_seconds,
        args.cron_mode,
    )?;
    let Some(schedule) = schedule else {
        return cycle(global, args, &RunMetrics::default()).await;
    };
    let health = SocketAddr::new(args.healthcheck_bind, args.healthcheck_port);
    tracing::info!("running on a schedule: {schedule:?}");
    let telemetry = Arc::new(RunTelemetry::new(global.ledger_file()));
    let metrics = telemetry.clone();
    daemon::run_forever(schedule, Some(health), telemetry, || {
        cycle(global, args, &metrics.run)
    })
    .await
}

/// One run under the lease. The lease is given back whatever happens in between.
async fn cycle(global: &GlobalArgs, args: &RunArgs, metrics: &RunMetrics) -> Result<Outcome> {
    let started = Instant::now();
    let client = crate::s3::client(&global.s3.resolve()).await;
    let plan = args.submit.scope.resolve()?.service_key();
    let loc = crate::sync::locate(&client, args.state.state_url.as_deref(), plan.as_ref())
        .await
        .context(Step::new(FailureKind::State, "finding the state on S3"))?;
    let duration = Duration::from_secs(args.state.lease_seconds);
    let taken = lease::acquire(&client, &loc, duration, args.wait_for_lease, true)
        .await
        .context(Step::new(FailureKind::State, "taking the lease"))?;
    tracing::info!("holding the lease as {}", taken.record().holder);
    let held = taken.keep_alive();
    let result = steps(global, args, &client, &loc, metrics).await;
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
    global: &GlobalArgs,
    args: &RunArgs,
    client: &aws_sdk_s3::Client,
    loc: &StateLocation,
    metrics: &RunMetrics,
) -> Result<Outcome> {
    let ledger_file = global.ledger_file();
    let mut pulled = Outcome::Success;
    let started = Instant::now();
    let result = state::pull(client, loc, &ledger_file, false)
        .await
        .context(Step::new(FailureKind::State, "pulling the ledger from S3"))?;
    let bytes = match &result {
        Pulled::Generation { size, .. } | Pulled::Merged { size, .. } => *size,
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

    let ingest_args = IngestArgs {
        source: args.source.clone(),
        scope: args.submit.scope.clone(),
        concurrency: args.concurrency,
        batch_files: args.batch_files,
        all_months: args.all_months,
        start_month: args.submit.start_month,
        limits: args.limits.clone(),
    };
    let ingested = pulled.and(
        super::ingest::run(global, &ingest_args)
            .await
            .context(Step::new(FailureKind::Export, "ingesting the export"))?,
    );

    let submit = &args.submit;
    let rules = submit.period_rules()?;
    let mut ledger = Ledger::open_for_writing(&ledger_file)?;
    let mut settings = super::submit::settings(
        &ledger,
        rules,
        submit.scope.resolve()?,
        &submit.quantity,
        &submit.clazar,
    )?;
    // The predecessor's state is in the export bucket (it had no prefix of its own).
    let bucket = match SourceSpec::resolve(args.source.as_deref())? {
        SourceSpec::S3 { bucket, .. } => Some(bucket),
        SourceSpec::Local(_) => crate::config::export_bucket(),
    };
    let held = super::submit::hold_back(
        &ledger,
        &global.s3.resolve(),
        bucket.as_deref(),
        &mut settings,
    )
    .await
    .context(Step::new(
        FailureKind::Export,
        "looking for the predecessor's state",
    ))?;
    let now = Utc::now();
    if submit.quantity.dry_run {
        let plan = crate::submit::compute_plan(&ledger, &settings, now)?;
        super::submit::report_waiting(&plan);
        tracing::info!("dry run: the ledger was not pushed to S3");
        let printed = super::submit::dry_run(&ledger, &plan.submissions)?;
        super::submit::report_left_out(&plan, &settings.rules);
        return Ok(ingested.and(printed).and(held));
    }
    let clazar = Client::new(submit.clazar.resolve()?)?;
    let run_id = ledger.begin_submission_run(
        "run",
        Some(submit.period),
        &super::submit::run_settings(&settings, &submit.clazar)?,
    )?;
    let plan = plan_submissions(&mut ledger, &settings, run_id, now)?;
    let no_marker = super::submit::report_waiting(&plan);
    tracing::info!("planned {} submissions", plan.submissions.len());
    drop(ledger);
    failpoint::hit("after-plan");

    // The outbox must be on S3 before any request leaves: a host that dies after sending is then
    // reconciled by whichever host runs next.
    push(client, loc, global, args, metrics).await?;

    let ledger = Mutex::new(Ledger::open_for_writing(&ledger_file)?);
    let sent = send_outbox(&ledger, &clazar, None, submit.clazar.concurrency)
        .await
        .context(Step::new(FailureKind::Clazar, "sending to Clazar"))?;
    let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
    ledger.finish_submission_run(run_id, plan.submissions.len() as u64, sent.requests)?;
    let submitted = super::submit::finish(&ledger, &sent)?;
    drop(ledger);

    push(client, loc, global, args, metrics).await?;
    super::submit::report_left_out(&plan, &settings.rules);
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
    global: &GlobalArgs,
    args: &RunArgs,
    metrics: &RunMetrics,
) -> Result<()> {
    let started = Instant::now();
    let pushed = state::push(
        client,
        loc,
        &global.ledger_file(),
        args.state.keep_generations,
    )
    .await
    .context(Step::new(FailureKind::State, "pushing the ledger to S3"))?;
    let bytes = match &pushed {
        Pushed::Generation { size, .. } => *size,
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
