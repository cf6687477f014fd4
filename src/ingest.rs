//! The ingest engine: list a source, skip what the ledger already has, read and parse the rest
//! concurrently, and store them in batches from one writer thread (one transaction per batch,
//! each file all-or-nothing). Memory is bounded by the channel sizes, not by the number of files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::config::IngestSettings;
use crate::error::Outcome;
use crate::ledger::{
    FileVersion, HourTotals, Ledger, LedgerFile, MarkerRead, RunCounts, StoreOutcome,
};
use crate::period::{format_utc, Month};
use crate::progress::IngestProgress;
use crate::source::marker::parse_marker;
use crate::source::parse::{parse_usage_body, ParsedBody};
use crate::source::s3::{MonthFloors, MonthSelection};
use crate::source::{
    classify_key, KeyKind, ObjectMeta, PathProblem, ProblemSink, Scope, Source, TooLarge,
    MARKER_KEY,
};

/// How an ingest runs.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Reads in flight at once.
    pub concurrency: usize,
    /// Files per ledger transaction.
    pub batch_files: usize,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// List every month even where the ledger allows starting at a recent one (S3 only).
    pub all_months: bool,
    /// A usage file larger than this is a problem, not read.
    pub max_file_bytes: u64,
    /// Bytes of bodies read but not yet stored, across concurrent reads.
    pub max_bytes_in_flight: u64,
    /// S3 without a month range: list every month when the last complete listing is older.
    pub full_listing_every: chrono::Duration,
    /// `START_MONTH`: months before it are never submitted, so they never count as waiting to be.
    pub start_month: Option<Month>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Usage files in scope found by listing.
    pub files_seen: u64,
    /// Keys under the export that are not usage files (ignored).
    pub files_ignored: u64,
    pub files_new: u64,
    pub files_replaced: u64,
    /// Already in the ledger: skipped by listing metadata, or read and found identical.
    pub files_unchanged: u64,
    /// Could not be read (logged; tried again next run).
    pub files_unreadable: u64,
    /// Over the size limit: not read (a path problem each).
    pub files_too_large: u64,
    /// Paths that could not be taken as usage files (see `source_problems`), unreadable and
    /// too large files included.
    pub path_problems: u64,
    /// Files stored with at least one problem.
    pub files_with_problems: u64,
    pub records: u64,
    pub problems: u64,
    /// Records stored without a contract id.
    pub unattributed_records: u64,
    pub elapsed: Duration,
}

impl IngestSummary {
    pub fn needs_attention(&self) -> bool {
        self.problems > 0
            || self.unattributed_records > 0
            || self.files_unreadable > 0
            || self.path_problems > 0
    }

    /// Logs the summary line (a warning when something needs attention, with where to look) and
    /// says how the ingest went.
    pub fn report(&self) -> Outcome {
        if !self.needs_attention() {
            tracing::info!("{}", self.line());
            return Outcome::Success;
        }
        tracing::warn!("{}", self.line());
        if self.problems > 0 || self.path_problems > 0 {
            tracing::warn!("see: meterbook sql \"SELECT * FROM usage_problems\"");
        }
        if self.unattributed_records > 0 {
            tracing::warn!(
                "records without externalPayerId are not billed; see: meterbook sql \"SELECT * FROM unattributed_usage\""
            );
        }
        Outcome::NeedsAttention
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        if self.files_new + self.files_replaced == 0 && self.path_problems == 0 {
            return format!(
                "nothing new: {} usage files in scope, all unchanged ({:.1}s)",
                self.files_seen,
                self.elapsed.as_secs_f64()
            );
        }
        let secs = self.elapsed.as_secs_f64().max(0.001);
        format!(
            "ingested {} new and {} replaced files ({} records, {:.0} records/s), {} unchanged, \
             {} unreadable, {} too large; {} paths with problems; {} problems in {} files; \
             {} unattributed records ({:.1}s)",
            self.files_new,
            self.files_replaced,
            self.records,
            self.records as f64 / secs,
            self.files_unchanged,
            self.files_unreadable,
            self.files_too_large,
            self.path_problems,
            self.problems,
            self.files_with_problems,
            self.unattributed_records,
            secs
        )
    }
}

/// The whole ingest of `meterbook ingest` (and of `run`'s ingest step): opens the settings'
/// source and reads every usage file in scope into their ledger.
pub async fn run(settings: &IngestSettings) -> Result<IngestSummary> {
    let source = Source::open(&settings.source, &settings.s3).await?;
    tracing::info!(
        "ingesting {} ({}) into {}",
        source.describe(),
        settings.scope,
        settings.ledger.path.display()
    );
    ingest(
        &settings.ledger,
        &source,
        &settings.scope,
        &settings.options,
    )
    .await
}

/// Ingests every usage file of `source` in `scope` into the ledger.
pub async fn ingest(
    ledger_file: &LedgerFile,
    source: &Source,
    scope: &Scope,
    opts: &IngestOptions,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let mut ledger = Ledger::open_for_writing(ledger_file)?;
    let source_name = source.describe();
    let floors = listing_floors(&ledger, &source_name, source, scope, opts)?;
    let complete_listing = floors.is_empty();
    let scope_text = match complete_listing {
        true => scope.to_string(),
        false => format!("{scope} {RECENT_MONTHS}"),
    };
    let run_id = ledger.begin_ingest_run(&source_name, &scope_text)?;
    let marker = read_marker(source).await?;
    ledger.record_marker_read(&source_name, &marker)?;
    let reader = Ledger::open_for_reading(ledger_file)?;

    let (file_tx, file_rx) = crossbeam_channel::bounded::<Fetched>(opts.batch_files.max(1));
    let batch_files = opts.batch_files.max(1);
    let writer = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || write_batches(ledger, file_rx, batch_files))?;

    let problems = ProblemSink::default();
    let (list_tx, mut list_rx) = tokio::sync::mpsc::channel::<Vec<ObjectMeta>>(16);
    let lister = {
        let (source, scope, problems) = (source.clone(), scope.clone(), problems.clone());
        tokio::spawn(async move { source.list(&scope, floors, list_tx, problems).await })
    };
    let path_problem = |path: String, reason: String| {
        problems
            .lock()
            .expect("not poisoned")
            .push(PathProblem { path, reason })
    };

    let progress = IngestProgress::new(opts.progress);
    let mut summary = IngestSummary::default();
    let mut ignored = 0u64;
    let mut skipped = 0u64;
    let too_large = std::cell::Cell::new(0u64);
    let mut lookup_error: Option<anyhow::Error> = None;
    let max_file_bytes = opts.max_file_bytes;
    let listed = futures::stream::poll_fn(|cx| list_rx.poll_recv(cx));
    let candidates = listed.flat_map(|batch| {
        let in_scope: Vec<(ObjectMeta, KeyKind)> = batch
            .into_iter()
            .filter_map(|meta| {
                let kind = classify_key(&meta.key);
                let admitted = scope.admits(&kind);
                ignored += u64::from(!admitted);
                admitted.then_some((meta, kind))
            })
            .collect();
        progress.listed(in_scope.len());
        let mut wanted = Vec::new();
        let mut unchanged = 0;
        match reader.known_files(in_scope.iter().map(|(meta, _)| meta.key.as_str())) {
            Ok(known) => {
                for ((meta, kind), known) in in_scope.into_iter().zip(known) {
                    match known {
                        Some(k)
                            if k.matches(meta.etag.as_deref(), meta.size, meta.last_modified) =>
                        {
                            unchanged += 1;
                        }
                        _ if meta.size > max_file_bytes => {
                            too_large.set(too_large.get() + 1);
                            let why = TooLarge {
                                size: format!("{} bytes", meta.size),
                                limit: max_file_bytes,
                            };
                            path_problem(meta.key, why.to_string());
                        }
                        known => {
                            let legacy = known.is_some_and(|k| k.has_legacy_fingerprint());
                            wanted.push((meta, kind, legacy));
                        }
                    }
                }
            }
            Err(e) => {
                lookup_error.get_or_insert(e);
            }
        }
        skipped += unchanged as u64;
        progress.skipped(unchanged);
        futures::stream::iter(wanted)
    });
    // Bodies in flight (read, parsed, not yet stored) hold at most this many KiB between them.
    let budget_kib = kib(opts.max_bytes_in_flight.max(max_file_bytes)).min(u64::from(u32::MAX));
    let budget = Arc::new(tokio::sync::Semaphore::new(budget_kib as usize));
    let name: Arc<str> = source_name.as_str().into();
    let mut fetched = candidates
        .map(|(meta, kind, legacy)| {
            let name = name.clone();
            let budget = budget.clone();
            let key = meta.key.clone();
            async move {
                let permit = budget
                    .acquire_many_owned(kib(meta.size).min(budget_kib) as u32)
                    .await
                    .expect("never closed");
                let read = source
                    .fetch(meta, max_file_bytes, move |meta, body| {
                        file_version(&name, meta, kind, &body, legacy)
                    })
                    .await;
                (key, read.map(|version| Fetched { version, permit }))
            }
        })
        .buffer_unordered(source.reads_in_flight(opts.concurrency));

    let mut failure: Option<anyhow::Error> = None;
    while let Some((key, read)) = fetched.next().await {
        match read {
            Ok(f) => {
                progress.fetched(f.version.records.len());
                if file_tx.send(f).is_err() {
                    break; // the writer stopped; its error is reported below
                }
            }
            Err(e) if is_fatal(&e) => {
                failure = Some(e);
                break;
            }
            Err(e) => match e.downcast_ref::<TooLarge>() {
                Some(why) => {
                    too_large.set(too_large.get() + 1);
                    path_problem(key, why.to_string());
                }
                None => {
                    tracing::warn!("{e:#}; will try again next run");
                    summary.files_unreadable += 1;
                    path_problem(
                        key,
                        format!("could not be read ({e:#}); tried again next run"),
                    );
                }
            },
        }
    }
    drop(fetched);
    // Closed before the writer, so that the writer, closing last, removes the write-ahead log.
    drop(reader);
    progress.finish();
    drop(file_tx);
    let written = writer.join().expect("the ledger writer does not panic");
    if failure.is_none() {
        failure = lookup_error;
    }
    if failure.is_none() {
        failure = match lister.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.into()),
        };
    } else {
        lister.abort();
    }
    let (mut ledger, w) = written?;
    let problems = std::mem::take(&mut *problems.lock().expect("not poisoned"));
    for p in problems.kept.iter().take(MAX_PROBLEMS_LOGGED as usize) {
        tracing::warn!("{}: {}", p.path, p.reason);
    }
    // Only a listing of everything that finished can tell that a problem is gone.
    let settles = complete_listing && *scope == Scope::default() && failure.is_none();
    ledger.record_source_problems(run_id, &source_name, &problems, settles)?;
    summary.files_ignored = ignored;
    summary.files_new = w.new;
    summary.files_replaced = w.replaced;
    summary.files_unchanged = skipped + w.unchanged;
    summary.files_too_large = too_large.get();
    summary.files_seen = summary.files_unchanged
        + summary.files_new
        + summary.files_replaced
        + summary.files_unreadable
        + summary.files_too_large;
    summary.path_problems = problems.count();
    summary.records = w.records;
    summary.problems = w.problems;
    summary.files_with_problems = w.files_with_problems;
    summary.unattributed_records = w.unattributed;
    summary.elapsed = started.elapsed();
    ledger.finish_ingest_run(
        run_id,
        failure.is_none(),
        &RunCounts {
            files_seen: summary.files_seen,
            files_new: summary.files_new,
            files_replaced: summary.files_replaced,
            files_unchanged: summary.files_unchanged,
            files_too_large: summary.files_too_large,
            records: summary.records,
            problems: summary.problems,
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// A file read and parsed, with its share of the in-flight byte budget, given back once stored.
struct Fetched {
    version: FileVersion,
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// Bytes as whole KiB, rounded up (the budget's unit, so that a `u32` of permits covers TiB).
fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

/// Marks, in `ingest_runs.scope`, a run that listed only some months; a run over every month has
/// the scope alone (`*:*:*` for every service key).
const RECENT_MONTHS: &str = "(recent months)";

/// Which months an S3 listing covers for each service key already in the ledger, when no month
/// range is given. A re-run lists:
/// - every month from the earlier of the previous calendar month (UTC) and the newest month in
///   the ledger on (new usage, and the months Omnistrate still writes);
/// - every older month that is not yet fully submitted ([`Ledger::unsettled_months`]): a
///   rewrite there changes what will be sent.
///
/// Every month is listed instead (an empty map) for a source without a clean complete listing
/// within `--full-listing-every` (so a rewrite anywhere, even of a month already sent, is found
/// within that time and shows as drift), with `--all-months`, and when an ingest of this source
/// since the last complete listing did not finish cleanly (killed, stopped on an error, or left
/// files unread): then a newer month may be stored while an older one is not.
fn listing_floors(
    ledger: &Ledger,
    source_name: &str,
    source: &Source,
    scope: &Scope,
    opts: &IngestOptions,
) -> Result<MonthFloors> {
    if !source.lists_from_floors()
        || opts.all_months
        || scope.from_month.is_some()
        || scope.to_month.is_some()
    {
        return Ok(MonthFloors::new());
    }
    let complete = [scope.to_string(), Scope::default().to_string()];
    if ledger.unsettled_run_since_complete_listing(source_name, &complete)? {
        tracing::info!(
            "an earlier ingest of {source_name} did not finish cleanly; listing every month"
        );
        return Ok(MonthFloors::new());
    }
    let since = Utc::now() - opts.full_listing_every;
    if !ledger.complete_listing_since(source_name, &complete, since)? {
        tracing::info!(
            "no complete listing of {source_name} since {} (--full-listing-every); listing every month",
            format_utc(since)
        );
        return Ok(MonthFloors::new());
    }
    let previous = Month::of(Utc::now()).prev();
    let mut unsettled = ledger.unsettled_months(opts.start_month)?;
    let floors: MonthFloors = ledger
        .newest_months(source_name)?
        .into_iter()
        .map(|(key, newest)| {
            let from = newest.min(previous);
            let also = unsettled.remove(&key).unwrap_or_default();
            let also = also.into_iter().filter(|m| *m < from).collect();
            (key, MonthSelection { from, also })
        })
        .collect();
    for (key, months) in &floors {
        let older: Vec<String> = months.also.iter().map(Month::to_string).collect();
        tracing::info!(
            "{key}: listing from {}{} (not yet fully submitted, or recent; --all-months lists every month)",
            months.from,
            match older.is_empty() {
                true => String::new(),
                false => format!(" and {}", older.join(", ")),
            }
        );
    }
    Ok(floors)
}

/// Reads and parses the completion marker; only errors that must stop the run are returned.
async fn read_marker(source: &Source) -> Result<MarkerRead> {
    let read = match source.read_marker().await {
        Ok(Some(body)) => match parse_marker(&body) {
            Ok(marker) => MarkerRead::Parsed(marker),
            Err(why) => MarkerRead::Malformed(why),
        },
        Ok(None) => MarkerRead::Missing,
        Err(e) if is_fatal(&e) => return Err(e),
        Err(e) => MarkerRead::Unreadable(format!("{e:#}")),
    };
    match &read {
        MarkerRead::Parsed(m) => {
            for e in &m.entries {
                tracing::info!(
                    "{MARKER_KEY}: {} complete to {}",
                    e.service_key,
                    format_utc(e.last_processed_to)
                );
            }
            for p in &m.problems {
                tracing::warn!("{MARKER_KEY}: {p}");
            }
        }
        MarkerRead::Missing => {
            tracing::warn!("no completion marker {MARKER_KEY}; periods cannot be proven complete")
        }
        MarkerRead::Malformed(why) | MarkerRead::Unreadable(why) => {
            tracing::warn!("{MARKER_KEY}: {why}")
        }
    }
    Ok(read)
}

/// An error that asks something of the operator stops the ingest; any other leaves that file for
/// the next run.
fn is_fatal(e: &anyhow::Error) -> bool {
    crate::error::demand(e).is_some()
}

/// A body's content fingerprint as the ledger stores it: `blake3:<hex>`.
pub fn fingerprint(body: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(body).to_hex())
}

/// The fingerprint ledgers stored before migration V6: `sha256:<hex>`.
pub fn legacy_fingerprint(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

/// Hashes and parses one body into the version the ledger stores. `legacy` asks for the SHA-256
/// fingerprint too, for a file the ledger knows by one.
pub fn file_version(
    source: &str,
    meta: ObjectMeta,
    kind: KeyKind,
    body: &[u8],
    legacy: bool,
) -> FileVersion {
    let (service_key, hour, parsed) = match kind {
        KeyKind::Usage(u) => (
            Some(u.service_key.to_string()),
            Some(u.hour),
            parse_usage_body(body),
        ),
        KeyKind::BadLayout {
            service_key,
            reason,
        } => (
            service_key.unambiguous().then(|| service_key.to_string()),
            None,
            ParsedBody::rejected(reason),
        ),
        KeyKind::Other => unreachable!("only usage keys are fetched"),
    };
    FileVersion {
        key: meta.key,
        source: source.to_string(),
        service_key,
        hour,
        fingerprint: fingerprint(body),
        legacy_fingerprint: legacy.then(|| legacy_fingerprint(body)),
        etag: meta.etag,
        size: meta.size,
        last_modified: meta.last_modified,
        records: parsed.records,
        problems: parsed.problems,
        more_problems: parsed.more_problems,
    }
}

#[derive(Default)]
struct Written {
    new: u64,
    replaced: u64,
    unchanged: u64,
    records: u64,
    problems: u64,
    files_with_problems: u64,
    unattributed: u64,
    problems_logged: u64,
}

/// Problems are stored (the first of each file, see `PROBLEMS_KEPT_PER_FILE`); only the first
/// few of a run are logged, so a bad batch cannot flood the log.
const MAX_PROBLEMS_LOGGED: u64 = 20;

/// The writer thread: commits a batch when it is full or a moment after its first file.
fn write_batches(
    mut ledger: Ledger,
    rx: crossbeam_channel::Receiver<Fetched>,
    batch_files: usize,
) -> Result<(Ledger, Written)> {
    const MAX_WAIT: Duration = Duration::from_millis(500);
    let mut w = Written::default();
    let mut totals = HourTotals::default();
    let mut batch = Vec::with_capacity(batch_files);
    let mut permits = Vec::with_capacity(batch_files);
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + MAX_WAIT;
        batch.push(first.version);
        permits.push(first.permit);
        while batch.len() < batch_files {
            match rx.recv_deadline(deadline) {
                Ok(f) => {
                    batch.push(f.version);
                    permits.push(f.permit);
                }
                Err(_) => break,
            }
        }
        let stored = ledger.store_files(&batch, &mut totals)?;
        permits.clear();
        crate::failpoint::hit("during-ingest");
        for (file, s) in batch.drain(..).zip(stored) {
            match s.outcome {
                StoreOutcome::Unchanged => {
                    w.unchanged += 1;
                    continue;
                }
                StoreOutcome::New => w.new += 1,
                StoreOutcome::Replaced => {
                    tracing::info!("{} was rewritten; replaced its records", file.key);
                    w.replaced += 1
                }
            }
            w.records += s.records;
            w.problems += s.problems;
            w.files_with_problems += u64::from(s.problems > 0);
            w.unattributed += s.unattributed;
            for p in file.problems.iter().chain(&s.refused) {
                w.problems_logged += 1;
                if w.problems_logged > MAX_PROBLEMS_LOGGED {
                    break;
                }
                match p.record_index {
                    Some(i) => tracing::warn!("{}: record {i}: {}", file.key, p.reason),
                    None => tracing::warn!("{}: {}", file.key, p.reason),
                }
                if w.problems_logged == MAX_PROBLEMS_LOGGED {
                    tracing::warn!("further problems are not logged; all are in usage_problems");
                }
            }
        }
    }
    Ok((ledger, w))
}
