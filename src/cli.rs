//! Command-line definitions (clap derive): the raw flags, each with its environment variable and
//! default (flags override environment variables, which override defaults), and the parsers that
//! give values their types (sizes, durations, seconds, months, enums). `config.rs` turns these
//! into the validated settings the commands hand to the library.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::clazar::Cloud;
use crate::dimensions::Rounding;
use crate::ledger::LineStatus;
use crate::output::Format;
use crate::period::{Month, PeriodKind};

/// meterbook: a usage ledger for Omnistrate exports, reported to Clazar exactly once.
#[derive(Debug, Parser)]
#[command(name = "meterbook", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The ledger file (SQLite). Created and migrated by the first command that writes it.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_LEDGER",
        default_value = "meterbook.sqlite"
    )]
    pub ledger: PathBuf,

    /// Seconds a command waits for another process writing (or creating, or migrating) the same
    /// ledger before it gives up.
    #[arg(
        long = "busy-timeout",
        global = true,
        env = "METERBOOK_BUSY_TIMEOUT",
        default_value = "60",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub busy_timeout: Duration,

    /// More log output (-v debug, -vv trace). METERBOOK_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// The log level, as the predecessor reads LOG_LEVEL (any case); -v, -q and METERBOOK_LOG win.
    #[arg(long, global = true, env = "LOG_LEVEL", value_enum, ignore_case = true)]
    pub log_level: Option<LogLevel>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// `LOG_LEVEL`: the predecessor's level names (Python's logging).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    #[value(alias = "warn")]
    Warning,
    #[value(alias = "critical")]
    Error,
}

impl LogLevel {
    /// The tracing filter for this level.
    pub fn filter(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How to reach S3 or an S3-compatible store. Credentials come from aws-config's default chain
/// (environment, profile, SSO, instance and container roles), never from flags.
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// S3 endpoint for S3-compatible stores, e.g. http://127.0.0.1:9000 (AWS_ENDPOINT_URL is also read).
    #[arg(
        long = "s3-endpoint-url",
        global = true,
        env = "METERBOOK_S3_ENDPOINT_URL"
    )]
    pub endpoint_url: Option<String>,

    /// AWS region (otherwise AWS_REGION, AWS_DEFAULT_REGION, the profile, or us-east-1).
    #[arg(long = "s3-region", global = true, env = "METERBOOK_S3_REGION")]
    pub region: Option<String>,

    /// Use path-style addressing (http://host/bucket/key), which most S3-compatible stores need.
    #[arg(long = "s3-path-style", global = true, env = "METERBOOK_S3_PATH_STYLE")]
    pub path_style: bool,

    /// Send and check checksums only when an operation requires them (for Garage, older Ceph).
    #[arg(
        long = "s3-checksums-when-required",
        global = true,
        env = "METERBOOK_S3_CHECKSUMS_WHEN_REQUIRED"
    )]
    pub checksums_when_required: bool,

    /// Attempts per S3 request for transient errors (500, 503 SlowDown, timeouts, dropped
    /// connections), with exponential backoff.
    #[arg(
        long = "s3-max-attempts",
        global = true,
        env = "METERBOOK_S3_MAX_ATTEMPTS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=100)
    )]
    pub max_attempts: u32,

    /// Seconds one S3 request attempt may take up to the response headers before it is retried.
    #[arg(
        long = "s3-attempt-timeout",
        global = true,
        env = "METERBOOK_S3_ATTEMPT_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub attempt_timeout: Duration,
}

/// A number of seconds (fractions allowed) above zero and below a day.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 86_400.0 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "'{s}' is not a number of seconds between 0 and 86400"
        )),
    }
}

/// A duration like `90s`, `30m`, `6h`, `2d` (a bare number is seconds), at most 100 years.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let t = s.trim();
    let bad = || format!("'{s}' is not a duration; use e.g. 90s, 30m, 6h or 2d");
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_secs)
        .filter(|secs| *secs <= 100 * 366 * 86400)
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(bad)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read usage files from a folder or S3 into the ledger.
    Ingest(IngestCommand),
    /// Run one read-only SQL statement against the ledger.
    Sql(SqlArgs),
    /// AWS detailed billing files: ingest them, report and plot spend, email the report.
    Costs(CostsArgs),
    /// Keep the ledger on S3: pull, push, status, restore, and the lease.
    Sync(SyncArgs),
    /// Check everything a run needs, one line per check with what to fix.
    Doctor(DoctorArgs),
    /// The whole job under a lease: pull the ledger from S3, ingest, submit, push it back.
    Run(Box<RunArgs>),
    /// Take over the Python exporter's state file so that nothing it sent is sent again.
    ImportState(ImportStateArgs),
    /// Send complete periods' usage to Clazar, each amount exactly once.
    Submit(SubmitCommand),
    /// List submissions and their answers.
    History(HistoryArgs),
    /// Re-send failed, rejected or warned submissions, recomputed with the current formulas.
    Resubmit(ResubmitArgs),
    /// Replace the records of old, fully submitted months by each file's totals.
    Compact(CompactArgs),
    /// Ask a running `meterbook run`'s health check whether it is healthy (exit 0) or not (exit 1):
    /// the container image's HEALTHCHECK.
    Health(HealthArgs),
    /// Serve a read-only web console over the ledger, and Prometheus metrics at /metrics.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Compact the months before this one (YYYY-MM) that are fully submitted.
    #[arg(long, env = "METERBOOK_COMPACT_BEFORE", value_name = "YYYY-MM")]
    pub before: Month,

    /// The drift window: this many months before the current one are never compacted.
    #[arg(
        long,
        env = "METERBOOK_COMPACT_KEEP_MONTHS",
        default_value_t = 3,
        value_name = "N"
    )]
    pub keep_months: u32,

    /// Rewrite the ledger file without its free pages afterwards (SQLite's VACUUM): the file
    /// shrinks, and the next push uploads every segment once.
    #[arg(long)]
    pub vacuum: bool,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The health check's port, as `run` serves it.
    #[arg(long, env = "HEALTHCHECK_PORT", default_value_t = 8080)]
    pub healthcheck_port: u16,

    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on; other than a loopback address, set a token.
    #[arg(
        long,
        env = "METERBOOK_LISTEN",
        default_value = "127.0.0.1:8787",
        value_name = "ADDR"
    )]
    pub listen: std::net::SocketAddr,

    /// Require this token on every request (Authorization: Bearer, or the sign-in form). Prefer
    /// the environment variable: a flag shows in the process list.
    #[arg(long, env = "METERBOOK_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportStateArgs {
    /// The predecessor's state JSON: a local file, s3://BUCKET/KEY, or a key in the export bucket
    /// (S3_BUCKET_NAME), e.g. clazar/Postgres-PROD-pt-HJSv20iWX0-export_state.json. Default: the
    /// newest version's clazar/SERVICE_NAME-ENVIRONMENT_TYPE-PLAN_ID-export_state.json in the
    /// export bucket, then STATE_FILE_PATH, then metering_state.json (a local file or a key).
    #[arg(long)]
    pub from: Option<String>,

    /// SERVICE:ENVIRONMENT:PLAN of a state file that holds one service key's state without naming
    /// it (default: from the file name, else SERVICE_NAME, ENVIRONMENT_TYPE and PLAN_ID).
    #[arg(long)]
    pub service_key: Option<String>,

    /// The marketplace recorded on the imported rows.
    #[arg(long, env = "CLAZAR_CLOUD", value_enum, ignore_case = true, default_value_t = Cloud::Aws)]
    pub cloud: Cloud,
}

/// `meterbook run`: everything of `ingest` and `submit` over one scope, the state, and the schedule.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,

    #[command(flatten)]
    pub ingest: IngestArgs,

    #[command(flatten)]
    pub submit: SubmitArgs,

    #[command(flatten)]
    pub state: StateArgs,

    /// When another run holds the lease, wait for it instead of exiting with code 4.
    #[arg(long, env = "METERBOOK_WAIT_FOR_LEASE")]
    pub wait_for_lease: bool,

    /// Keep running: a cycle every DURATION (e.g. 1h, 15m), until SIGTERM or SIGINT.
    #[arg(long, env = "METERBOOK_EVERY", value_name = "DURATION", value_parser = parse_duration)]
    pub every: Option<chrono::Duration>,

    /// Keep running: a cycle every SECONDS (the predecessor's PROCESSING_INTERVAL_SECONDS);
    /// --every wins when both are set.
    #[arg(
        long,
        env = "PROCESSING_INTERVAL_SECONDS",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub processing_interval_seconds: Option<u64>,

    /// Keep running: a cycle on the first day of each month at 00:10 UTC (the predecessor's older
    /// mode); an interval (--every, PROCESSING_INTERVAL_SECONDS) wins when both are set.
    #[arg(
        long,
        env = "CRON_MODE",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub cron_mode: bool,

    /// Port of the health check (GET or HEAD /health and /health/) while running on a schedule.
    #[arg(long, env = "HEALTHCHECK_PORT", default_value_t = 8080)]
    pub healthcheck_port: u16,

    /// Address the health check listens on (e.g. 127.0.0.1 to keep it on this host).
    #[arg(long, env = "METERBOOK_HEALTHCHECK_BIND", default_value = "0.0.0.0")]
    pub healthcheck_bind: std::net::IpAddr,
}

/// Which service key and months a command covers.
#[derive(Debug, Args, Clone)]
pub struct ScopeArgs {
    /// Only this service (path segment SERVICE_NAME).
    #[arg(long, env = "SERVICE_NAME")]
    pub service: Option<String>,

    /// Only this environment type (path segment ENVIRONMENT_TYPE), e.g. PROD.
    #[arg(long, env = "ENVIRONMENT_TYPE")]
    pub environment: Option<String>,

    /// Only this plan (product tier id, path segment PLAN_ID), e.g. pt-HJSv20iWX0.
    #[arg(long, env = "PLAN_ID")]
    pub plan: Option<String>,

    /// First month to include, YYYY-MM.
    #[arg(long, value_name = "YYYY-MM")]
    pub from_month: Option<Month>,

    /// Last month to include, YYYY-MM.
    #[arg(long, value_name = "YYYY-MM")]
    pub to_month: Option<Month>,

    /// Nothing before this month is submitted, YYYY-MM (default 2025-01, the predecessor's newest
    /// default); an S3 ingest does not re-list earlier months as waiting to be submitted.
    #[arg(long, env = "START_MONTH", value_name = "YYYY-MM")]
    pub start_month: Option<Month>,
}

/// `meterbook ingest`.
#[derive(Debug, Args)]
pub struct IngestCommand {
    #[command(flatten)]
    pub scope: ScopeArgs,

    #[command(flatten)]
    pub ingest: IngestArgs,
}

/// How usage files are read into the ledger (`ingest`, and the ingest step of `run`).
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Where the export is: a folder laid out like the bucket, or s3://BUCKET[/PREFIX].
    /// Defaults to s3://$S3_BUCKET_NAME (or $AWS_S3_BUCKET_NAME).
    #[arg(long, env = "METERBOOK_SOURCE")]
    pub source: Option<String>,

    /// How many objects to read at once from S3 (from a folder: at most twice the CPUs).
    #[arg(long, env = "METERBOOK_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Files per ledger transaction (each file is always all-or-nothing).
    #[arg(long, default_value_t = 1000)]
    pub batch_files: usize,

    /// On S3 without --from-month/--to-month, list every month, not only those not yet fully
    /// submitted and the recent ones.
    #[arg(long, env = "METERBOOK_ALL_MONTHS")]
    pub all_months: bool,

    #[command(flatten)]
    pub limits: IngestLimitArgs,
}

/// What an ingest may take: file sizes, memory, and how stale a partial S3 listing may be.
#[derive(Debug, Args, Clone)]
pub struct IngestLimitArgs {
    /// A usage file larger than this is a problem row and is not read (bytes, or with KiB, MiB,
    /// GiB).
    #[arg(
        long,
        env = "METERBOOK_MAX_FILE_BYTES",
        default_value = "64MiB",
        value_name = "BYTES",
        value_parser = parse_bytes
    )]
    pub max_file_bytes: u64,

    /// Bodies read but not yet stored, across all concurrent reads, in bytes at most (raised to
    /// --max-file-bytes if lower).
    #[arg(
        long,
        env = "METERBOOK_MAX_BYTES_IN_FLIGHT",
        default_value = "128MiB",
        value_name = "BYTES",
        value_parser = parse_bytes
    )]
    pub max_bytes_in_flight: u64,

    /// On S3 without a month range, list every month when the last complete listing of the
    /// source is older than this (e.g. 1d, 6h; 0 lists every month every run).
    #[arg(
        long,
        env = "METERBOOK_FULL_LISTING_EVERY",
        default_value = "1d",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub full_listing_every: chrono::Duration,
}

/// A size in bytes: a number, optionally followed by KiB, MiB, GiB or TiB.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "kib" | "k" => 10,
        "mib" | "m" => 20,
        "gib" | "g" => 30,
        "tib" | "t" => 40,
        _ => {
            return Err(format!(
                "'{s}' is not a size; use e.g. 65536, 64MiB or 2GiB"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size above zero; use e.g. 65536, 64MiB or 2GiB"))
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement, e.g. "SELECT * FROM monthly_usage".
    pub query: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Where the ledger's state lives on S3, and how sync keeps it.
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// The state object: s3://BUCKET/KEY. Defaults to
    /// s3://$S3_BUCKET_NAME/meterbook/state/ledger.sqlite (or $AWS_S3_BUCKET_NAME), or, for one
    /// plan (SERVICE_NAME, ENVIRONMENT_TYPE and PLAN_ID all set),
    /// .../meterbook/state/SERVICE/ENVIRONMENT/PLAN/ledger.sqlite.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_STATE_URL",
        value_name = "S3_URL"
    )]
    pub state_url: Option<String>,

    /// How many generations to keep as copies on S3 for `sync restore` (at least 1).
    #[arg(
        long,
        global = true,
        env = "METERBOOK_KEEP_GENERATIONS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keep_generations: u64,

    /// How long a lease lasts without renewal, in seconds (renewed every third of it).
    #[arg(
        long,
        global = true,
        env = "METERBOOK_LEASE_SECONDS",
        default_value_t = 300,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub lease_seconds: u64,

    /// The size of the segments a new state is cut into (a power of two from 64KiB to 64MiB; a
    /// state pushed with another size is cut again, once).
    #[arg(
        long,
        global = true,
        env = "METERBOOK_SEGMENT_SIZE",
        default_value = "512KiB",
        value_name = "SIZE",
        value_parser = parse_segment_size
    )]
    pub segment_size: u64,

    /// Every how many generations a push runs PRAGMA integrity_check on the ledger (and deletes
    /// segments no kept generation names); a new state is always checked.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_INTEGRITY_CHECK_EVERY",
        default_value_t = 24,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub integrity_check_every: u64,

    /// How many segments sync uploads or downloads at once.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_SYNC_CONCURRENCY",
        default_value_t = 16,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..=256)
    )]
    pub sync_concurrency: u64,

    /// Segments younger than this are never deleted (a push under way may have just uploaded
    /// them); default: 1 hour, or twice the lease if that is longer.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_GC_GRACE_SECONDS",
        value_name = "SECONDS"
    )]
    pub gc_grace_seconds: Option<u64>,
}

/// A segment size: a size (see [`parse_bytes`]) that sync can cut states into.
fn parse_segment_size(s: &str) -> Result<u64, String> {
    crate::sync::segments::check_segment_size(parse_bytes(s)?)
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub state: StateArgs,

    #[command(subcommand)]
    pub action: SyncAction,
}

#[derive(Debug, Subcommand)]
pub enum SyncAction {
    /// Download the state, verify it, and replace the local ledger with it, keeping what only the
    /// local ledger knows (submissions, predecessor imports, cost tables changed here).
    Pull {
        /// Take the state as it is, dropping every local change that is not on S3.
        #[arg(long)]
        discard_local: bool,
    },
    /// Upload the ledger's new segments and then the next generation's manifest (conditional
    /// write).
    Push,
    /// Show the local and the remote generation, and whether the ledger has unpushed changes.
    Status,
    /// Download the current state (or a kept generation) into a temporary file, check every
    /// segment, the whole file and PRAGMA integrity_check, and report; the ledger is not touched.
    Verify {
        /// A kept generation instead of the current state (see `sync status`).
        #[arg(long)]
        generation: Option<u64>,
    },
    /// Make a kept generation the current state again (as a new generation), and pull it.
    Restore {
        /// The generation to bring back (see `sync status`).
        #[arg(long)]
        generation: u64,
        /// Replace a local ledger even if it has changes that are not on S3.
        #[arg(long)]
        discard_local: bool,
    },
    /// The lease that keeps runs on different hosts from overlapping.
    #[command(subcommand)]
    Lease(LeaseAction),
}

#[derive(Debug, Subcommand)]
pub enum LeaseAction {
    /// Take the lease. Without --hold it stays taken until it expires (or is released), even
    /// after this command has ended.
    Acquire {
        /// Wait until the lease is free instead of failing with exit code 4.
        #[arg(long)]
        wait: bool,
        /// Hold the lease this many seconds (renewing it), then release it.
        #[arg(long, value_name = "SECONDS")]
        hold: Option<u64>,
    },
    /// Give back the lease, whoever holds it (for a holder known to be gone).
    Release,
    /// Show who holds the lease and until when.
    Show,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The export: s3://BUCKET[/PREFIX]. Defaults to s3://$S3_BUCKET_NAME (or $AWS_S3_BUCKET_NAME).
    #[arg(long, env = "METERBOOK_SOURCE")]
    pub source: Option<String>,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub clazar: ClazarArgs,
}

/// How to reach Clazar. The credentials come from the environment only (`CLAZAR_CLIENT_ID`,
/// `CLAZAR_CLIENT_SECRET`), never from flags.
#[derive(Debug, Args, Clone)]
pub struct ClazarArgs {
    /// Clazar's metering endpoint (authentication is at the sibling path `authenticate/`).
    #[arg(
        long = "clazar-api-url",
        env = "CLAZAR_API_URL",
        default_value = "https://api.clazar.io/metering/"
    )]
    pub api_url: String,

    /// Clazar's base URL, e.g. http://127.0.0.1:8088: metering at BASE/metering/, authentication
    /// at BASE/authenticate/. Overrides CLAZAR_API_URL.
    #[arg(long = "clazar-base-url", env = "METERBOOK_CLAZAR_BASE_URL")]
    pub base_url: Option<String>,

    /// The marketplace of every record.
    #[arg(
        long = "cloud",
        env = "CLAZAR_CLOUD",
        value_enum,
        ignore_case = true,
        default_value_t = Cloud::Aws
    )]
    pub cloud: Cloud,

    /// Retries of a request after transient failures (HTTP 5xx, 429, network).
    #[arg(long, env = "MAX_RETRIES", default_value_t = 5)]
    pub max_retries: u32,

    /// Seconds before a request to Clazar is abandoned (and retried).
    #[arg(
        long = "clazar-timeout",
        env = "METERBOOK_CLAZAR_TIMEOUT",
        default_value = "30",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub timeout: Duration,

    /// The first retry delay in milliseconds; it doubles per retry, with jitter.
    #[arg(
        long = "clazar-backoff-ms",
        env = "METERBOOK_CLAZAR_BACKOFF_MS",
        default_value_t = 500
    )]
    pub backoff_ms: u64,

    /// Requests in flight at once, each for a different contract (a contract's periods are sent
    /// one after another, oldest first).
    #[arg(
        id = "clazar_concurrency",
        long = "clazar-concurrency",
        env = "METERBOOK_CLAZAR_CONCURRENCY",
        default_value_t = 8,
        value_name = "N"
    )]
    pub concurrency: usize,
}

/// How quantities are computed. Formulas come from `DIMENSION_<name>` and
/// `DIMENSION<n>_NAME`/`DIMENSION<n>_FORMULA` environment variables.
#[derive(Debug, Args, Clone)]
pub struct QuantityArgs {
    /// Also send the base dimensions when formulas are defined (without formulas they are always sent).
    #[arg(
        long,
        env = "METERBOOK_SEND_BASE_DIMENSIONS",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub send_base_dimensions: bool,

    /// How an amount becomes the whole number sent.
    #[arg(long, env = "METERBOOK_ROUNDING", value_enum, default_value_t = Rounding::Floor)]
    pub rounding: Rounding,

    /// Records per request at most; a contract's lines are split, never mixed with another's (0: no limit).
    #[arg(long, env = "METERBOOK_MAX_RECORDS_PER_REQUEST", default_value_t = 0)]
    pub max_records_per_request: usize,

    /// Print the payloads that would be sent; change nothing and call nothing (DRY_RUN=true|1|yes).
    #[arg(
        long,
        env = "DRY_RUN",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub dry_run: bool,
}

/// `meterbook submit`.
#[derive(Debug, Args)]
pub struct SubmitCommand {
    #[command(flatten)]
    pub scope: ScopeArgs,

    #[command(flatten)]
    pub submit: SubmitArgs,
}

/// How complete periods become Clazar requests (`submit`, and the submit steps of `run`).
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Submit per month or per hour.
    #[arg(long, env = "METERBOOK_PERIOD", value_enum, default_value_t = PeriodKind::Month)]
    pub period: PeriodKind,

    /// Months per run at most (per service key).
    #[arg(long, env = "MAX_MONTHS_PER_RUN", default_value_t = 12)]
    pub max_months_per_run: usize,

    /// Hours per run at most (per service key), with --period hour.
    #[arg(long, env = "MAX_HOURS_PER_RUN", default_value_t = 24)]
    pub max_hours_per_run: usize,

    /// Opt-in for service keys whose completion marker was never seen: a period counts as complete
    /// this long after its end (e.g. 6h, 90m, 2d). Without it such periods wait.
    #[arg(
        long,
        env = "METERBOOK_GRACE_WITHOUT_MARKER",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub grace_without_marker: Option<chrono::Duration>,

    #[command(flatten)]
    pub quantity: QuantityArgs,

    #[command(flatten)]
    pub clazar: ClazarArgs,
}

#[derive(Debug, Args)]
pub struct ResubmitArgs {
    /// Only this contract.
    #[arg(long)]
    pub contract: Option<String>,

    /// Only this period: a month (YYYY-MM, also matching its hours) or an hour (YYYY-MM-DDTHH:00:00Z).
    #[arg(long)]
    pub period: Option<String>,

    #[command(flatten)]
    pub quantity: QuantityArgs,

    #[command(flatten)]
    pub clazar: ClazarArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this contract.
    #[arg(long)]
    pub contract: Option<String>,

    /// Only this period: a month (YYYY-MM, also matching its hours) or an hour.
    #[arg(long)]
    pub period: Option<String>,

    /// Only lines with this status.
    #[arg(long, value_enum)]
    pub status: Option<LineStatus>,

    /// Only what needs attention (the submission_failures view).
    #[arg(long)]
    pub failures: bool,

    /// Every column (ids, exact amounts, HTTP status, times) in full; by default a table shows
    /// contract, period, dimension, quantity, status, attempts and a short detail within 120
    /// columns. CSV and JSON always carry every column.
    #[arg(long)]
    pub wide: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct CostsArgs {
    #[command(subcommand)]
    pub command: CostsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CostsCommand {
    /// Read AWS detailed billing files from a folder or S3 into the ledger.
    Ingest(CostsIngestArgs),
    /// Yesterday's spend, spend per user, product and day, and the month against the invoice.
    Report(CostsReportArgs),
    /// Plot daily spend per user over the window as PNG and SVG.
    Plot(CostsPlotArgs),
    /// Grants: how much each user may spend over which days (shown by the report).
    #[command(subcommand)]
    Grants(GrantsCommand),
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Replace every grant with those of a CSV file: columns user, amount (dollars), start
    /// (YYYY-MM-DD) and optionally end (inclusive) and note, matched by header name. A file with
    /// any problem loads nothing.
    Load {
        /// The CSV file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct CostsIngestArgs {
    /// A folder or s3://BUCKET[/PREFIX] holding
    /// {AccountId}-aws-billing-detailed-line-items-with-resources-and-tags-YYYY-MM.csv[.zip].
    #[arg(long, env = "METERBOOK_COSTS_SOURCE")]
    pub source: String,

    /// Tags whose first non-empty value names a line item's user, in order of preference.
    #[arg(
        long,
        env = "METERBOOK_COSTS_USER_TAGS",
        value_delimiter = ',',
        default_value = "user:Owner,user:Project,user:ProjectName,user:Name"
    )]
    pub user_tags: Vec<String>,

    /// A billing file whose CSV (uncompressed) is larger than this is rejected; reading stops
    /// there (bytes, or with KiB, MiB, GiB, TiB).
    #[arg(
        long,
        env = "METERBOOK_COSTS_MAX_CSV_BYTES",
        default_value = "64GiB",
        value_name = "BYTES",
        value_parser = parse_bytes
    )]
    pub max_csv_bytes: u64,
}

/// Which local days a cost report or plot covers.
#[derive(Debug, Args, Clone)]
pub struct CostsWindowArgs {
    /// Days in the window, ending with --to.
    #[arg(long, default_value_t = 28)]
    pub days: u32,

    /// First day of the window (YYYY-MM-DD, local), instead of counting --days back.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: Option<chrono::NaiveDate>,

    /// Last day of the window, inclusive (YYYY-MM-DD, local). Default: yesterday.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub to: Option<chrono::NaiveDate>,

    /// The account managers' time zone (IANA name, e.g. America/Los_Angeles); days are theirs.
    #[arg(long, env = "METERBOOK_COSTS_TZ", default_value = "UTC")]
    pub tz: String,

    /// Report as if today were this day (YYYY-MM-DD, local). Default: today.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub today: Option<chrono::NaiveDate>,
}

/// Output format of the cost report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ReportFormat {
    /// Plain text for a terminal or an email body.
    #[default]
    Text,
    /// One JSON object.
    Json,
    /// section,name,cost rows.
    Csv,
}

#[derive(Debug, Args)]
pub struct CostsReportArgs {
    #[command(flatten)]
    pub window: CostsWindowArgs,

    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    #[command(flatten)]
    pub email: EmailArgs,

    /// Do not attach the plot of daily spend per user (PNG) to the email.
    #[arg(long)]
    pub no_plot: bool,
}

/// Emailing the report. The SMTP username and password come from SMTP_USERNAME and
/// SMTP_PASSWORD in the environment only.
#[derive(Debug, Args, Clone)]
pub struct EmailArgs {
    /// Also email the text report to these addresses (comma-separated); the subject is the headline.
    #[arg(long = "email-to", env = "METERBOOK_EMAIL_TO", value_delimiter = ',')]
    pub email_to: Vec<String>,

    /// The sender address.
    #[arg(long = "email-from", env = "METERBOOK_EMAIL_FROM")]
    pub email_from: Option<String>,

    /// The SMTP server.
    #[arg(long = "smtp-host", env = "SMTP_HOST")]
    pub smtp_host: Option<String>,

    /// The SMTP port (default: 587 for starttls, 465 for tls, 25 for none).
    #[arg(long = "smtp-port", env = "SMTP_PORT")]
    pub smtp_port: Option<u16>,

    /// How the connection is secured.
    #[arg(
        long = "smtp-security",
        env = "SMTP_SECURITY",
        value_enum,
        default_value_t
    )]
    pub smtp_security: crate::costs::mail::SmtpSecurity,
}

#[derive(Debug, Args)]
pub struct CostsPlotArgs {
    #[command(flatten)]
    pub window: CostsWindowArgs,

    /// The PNG to write; the SVG is written beside it with the same name.
    #[arg(long, default_value = "costs.png")]
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_are_read_with_their_unit_and_checked() {
        assert_eq!(parse_segment_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_segment_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_segment_size("1m"), Ok(1 << 20));
        assert_eq!(parse_segment_size("65536"), Ok(64 << 10));
        for bad in [
            "",
            "1GiB",
            "100KiB",
            "32KiB",
            "256 KB",
            "-1MiB",
            "99999999999999999999MiB",
        ] {
            assert!(parse_segment_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(chrono::Duration::seconds(90)));
        assert_eq!(parse_duration("6h"), Ok(chrono::Duration::hours(6)));
        assert_eq!(parse_duration("2d"), Ok(chrono::Duration::days(2)));
        assert_eq!(parse_duration("0"), Ok(chrono::Duration::zero()));
        for bad in ["6 hours", "h", "soon", "-1h", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        // Duplicate ids or names (e.g. two flattened argument groups) fail here, not at run time.
        Cli::command().debug_assert();
    }
}
