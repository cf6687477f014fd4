//! The ingest engine: list a source, skip what the ledger already has, read and parse the rest
//! concurrently, and store them in batches from one writer thread (one transaction per batch,
//! each file all-or-nothing). Memory is bounded by the channel sizes, not by the number of files.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::error::Fatal;
use crate::ledger::{FileVersion, Ledger, LedgerFile, MarkerRead, RunCounts, StoreOutcome};
use crate::period::format_utc;
use crate::progress::IngestProgress;
use crate::source::marker::parse_marker;
use crate::source::parse::{parse_usage_body, Problem};
use crate::source::s3::MonthFloors;
use crate::source::{classify_key, KeyKind, ObjectMeta, Scope, Source, MARKER_KEY};

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
        self.problems > 0 || self.unattributed_records > 0 || self.files_unreadable > 0
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        if self.files_new + self.files_replaced == 0 && self.files_unreadable == 0 {
            return format!(
                "nothing new: {} usage files in scope, all unchanged ({:.1}s)",
                self.files_seen,
                self.elapsed.as_secs_f64()
            );
        }
        let secs = self.elapsed.as_secs_f64().max(0.001);
        format!(
            "ingested {} new and {} replaced files ({} records, {:.0} records/s), {} unchanged, \
             {} unreadable; {} problems in {} files; {} unattributed records ({:.1}s)",
            self.files_new,
            self.files_replaced,
            self.records,
            self.records as f64 / secs,
            self.files_unchanged,
            self.files_unreadable,
            self.problems,
            self.files_with_problems,
            self.unattributed_records,
            secs
        )
    }
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
    let scope_text = match floors.is_empty() {
        true => scope.to_string(),
        false => format!("{scope} {RECENT_MONTHS}"),
    };
    let run_id = ledger.begin_ingest_run(&source_name, &scope_text)?;
    let marker = read_marker(source).await?;
    ledger.record_marker_read(&source_name, &marker)?;
    let reader = Ledger::open_for_reading(ledger_file)?;

    let (file_tx, file_rx) = crossbeam_channel::bounded::<FileVersion>(opts.batch_files.max(1));
    let batch_files = opts.batch_files.max(1);
    let writer = std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || write_batches(ledger, file_rx, batch_files))?;

    let (list_tx, mut list_rx) = tokio::sync::mpsc::channel::<Vec<ObjectMeta>>(16);
    let lister = {
        let (source, scope) = (source.clone(), scope.clone());
        tokio::spawn(async move { source.list(&scope, floors, list_tx).await })
    };

    let progress = IngestProgress::new(opts.progress);
    let mut summary = IngestSummary::default();
    let mut ignored = 0u64;
    let mut skipped = 0u64;
    let mut lookup_error: Option<anyhow::Error> = None;
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
    let name: std::sync::Arc<str> = source_name.as_str().into();
    let mut fetched = candidates
        .map(|(meta, kind, legacy)| {
            let name = name.clone();
            source.fetch(meta, move |meta, body| {
                file_version(&name, meta, kind, &body, legacy)
            })
        })
        .buffer_unordered(source.reads_in_flight(opts.concurrency));

    let mut failure: Option<anyhow::Error> = None;
    while let Some(read) = fetched.next().await {
        match read {
            Ok(version) => {
                progress.fetched(version.records.len());
                if file_tx.send(version).is_err() {
                    break; // the writer stopped; its error is reported below
                }
            }
            Err(e) if is_fatal(&e) => {
                failure = Some(e);
                break;
            }
            Err(e) => {
                tracing::warn!("{e:#}; will try again next run");
                summary.files_unreadable += 1;
            }
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
    let (ledger, w) = written?;
    summary.files_ignored = ignored;
    summary.files_new = w.new;
    summary.files_replaced = w.replaced;
    summary.files_unchanged = skipped + w.unchanged;
    summary.files_seen = summary.files_unchanged
        + summary.files_new
        + summary.files_replaced
        + summary.files_unreadable;
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
            records: summary.records,
            problems: summary.problems,
        },
    )?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Marks, in `ingest_runs.scope`, a run that listed only recent months; a run over every service
/// key and month has the scope `*:*:*`.
const RECENT_MONTHS: &str = "(recent months)";

/// Where listing starts for each service key. Without a month range an S3 listing starts at the
/// month before the newest one already ingested for that service key (a late rewrite of the
/// previous month is still seen), unless `--all-months` asks for everything or an ingest of this
/// source since the last complete listing did not finish cleanly (killed, stopped on an error, or
/// left files unread): then a newer month may be stored while an older one is not, and only a
/// complete listing finds what is missing.
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
    if ledger.unsettled_run_since_complete_listing(source_name, &Scope::default().to_string())? {
        tracing::info!(
            "an earlier ingest of {source_name} did not finish cleanly; listing every month"
        );
        return Ok(MonthFloors::new());
    }
    let floors: MonthFloors = ledger
        .newest_months(source_name)?
        .into_iter()
        .map(|(key, newest)| (key, newest.prev()))
        .collect();
    for (key, from) in &floors {
        tracing::info!("{key}: listing from {from} (the month before the newest ingested; --all-months lists every month)");
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

fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Fatal>().is_some())
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
            Some(service_key.to_string()),
            None,
            crate::source::parse::ParsedBody {
                records: Vec::new(),
                problems: vec![Problem::file(reason)],
            },
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

/// Problems are all stored; only the first few are logged, so a bad batch cannot flood the log.
const MAX_PROBLEMS_LOGGED: u64 = 20;

/// The writer thread: commits a batch when it is full or a moment after its first file.
fn write_batches(
    mut ledger: Ledger,
    rx: crossbeam_channel::Receiver<FileVersion>,
    batch_files: usize,
) -> Result<(Ledger, Written)> {
    const MAX_WAIT: Duration = Duration::from_millis(500);
    let mut w = Written::default();
    let mut batch = Vec::with_capacity(batch_files);
    while let Ok(first) = rx.recv() {
        let deadline = Instant::now() + MAX_WAIT;
        batch.push(first);
        while batch.len() < batch_files {
            match rx.recv_deadline(deadline) {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let outcomes = ledger.store_files(&batch)?;
        crate::failpoint::hit("during-ingest");
        for (file, outcome) in batch.drain(..).zip(outcomes) {
            match outcome {
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
            w.records += file.records.len() as u64;
            w.problems += file.problems.len() as u64;
            w.files_with_problems += u64::from(!file.problems.is_empty());
            w.unattributed += file
                .records
                .iter()
                .filter(|r| r.contract_id.is_none())
                .count() as u64;
            for p in &file.problems {
                w.problems_logged += 1;
                if w.problems_logged > MAX_PROBLEMS_LOGGED {
                    continue;
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
