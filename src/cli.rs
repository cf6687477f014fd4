//! Command-line definitions (clap derive). Flags override environment variables, which override
//! defaults; `config.rs` turns these raw values into validated settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;
use crate::period::Month;

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
    /// The ledger file (SQLite). Created and migrated on first use.
    #[arg(
        long,
        global = true,
        env = "METERBOOK_LEDGER",
        default_value = "meterbook.sqlite"
    )]
    pub ledger: PathBuf,

    /// More log output (-v debug, -vv trace). METERBOOK_LOG=<filter> overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach S3 or an S3-compatible store. Credentials come from aws-config's default chain
/// (environment, profile, SSO, instance and container roles), never from flags.
#[derive(Debug, Args, Clone, Default)]
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read usage files from a folder or S3 into the ledger.
    Ingest(IngestArgs),
    /// Run one read-only SQL statement against the ledger.
    Sql(SqlArgs),
    /// AWS detailed billing files: ingest them, report and plot spend, email the report.
    Costs(CostsArgs),
}

/// Which service key and months a command covers.
#[derive(Debug, Args, Clone, Default)]
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
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Where the export is: a folder laid out like the bucket, or s3://BUCKET[/PREFIX].
    /// Defaults to s3://$S3_BUCKET_NAME (or $AWS_S3_BUCKET_NAME).
    #[arg(long, env = "METERBOOK_SOURCE")]
    pub source: Option<String>,

    #[command(flatten)]
    pub scope: ScopeArgs,

    /// How many files to read at once.
    #[arg(long, env = "METERBOOK_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// Files per ledger transaction (each file is always all-or-nothing).
    #[arg(long, default_value_t = 1000)]
    pub batch_files: usize,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement, e.g. "SELECT * FROM monthly_usage".
    pub query: String,

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
