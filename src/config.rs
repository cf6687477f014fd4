//! Resolved, validated settings: what the raw command line ([`crate::cli`]) and the environment
//! mean, turned once into the typed settings each command hands to the library. The variables
//! meterbook reads directly (credentials, the predecessor's bucket and plan, formulas) are read
//! here, once, into an [`Environment`]; nothing else reads the environment (after
//! [`crate::env::unset_empty`] at start-up), and no command sees a raw flag.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use chrono::{Days, Utc};
use chrono_tz::Tz;

use crate::clazar::{ClazarSettings, Cloud};
use crate::cli::{
    ClazarArgs, CostsIngestArgs, CostsPlotArgs, CostsReportArgs, CostsWindowArgs, DoctorArgs,
    EmailArgs, GlobalArgs, ImportStateArgs, IngestArgs, QuantityArgs, ReportFormat, ResubmitArgs,
    RunArgs, S3Args, ScopeArgs, StateArgs, SubmitArgs,
};
use crate::costs::mail::MailSettings;
use crate::costs::report::Window;
use crate::daemon::Schedule;
use crate::dimensions::{Dimensions, Rounding, BASE_DIMENSIONS};
use crate::error::Fatal;
use crate::ingest::IngestOptions;
use crate::ledger::{LedgerFile, SubmissionFilter};
use crate::period::{Month, PeriodKind};
use crate::plan::PeriodRules;
use crate::predecessor::PredecessorLookup;
use crate::s3::S3Settings;
use crate::secret::Secret;
use crate::source::{Scope, ServiceKey};
use crate::sync::{plan_state_key, StateLocation, DEFAULT_STATE_KEY};

/// `START_MONTH` when it is not set: the predecessor's newest version's default, so that a
/// switched deployment bills exactly the months its predecessor would have.
pub const DEFAULT_START_MONTH: Month = Month {
    year: 2025,
    month: 1,
};

/// The variables meterbook reads that are not the environment form of a flag, read once.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The export bucket: the predecessor's `S3_BUCKET_NAME`, or its newest version's
    /// `AWS_S3_BUCKET_NAME`.
    pub export_bucket: Option<String>,
    /// The plan `SERVICE_NAME`, `ENVIRONMENT_TYPE` and `PLAN_ID` name, when all three are set: for
    /// commands without scope flags (sync, doctor, import-state).
    pub plan: Option<ServiceKey>,
    /// The older predecessor versions' `STATE_FILE_PATH`: where their state JSON was.
    pub predecessor_state_file: Option<String>,
    /// `CLAZAR_CLIENT_ID` and `CLAZAR_CLIENT_SECRET`.
    pub clazar_client_id: Option<String>,
    pub clazar_client_secret: Option<Secret>,
    /// `SMTP_USERNAME` and `SMTP_PASSWORD`.
    pub smtp_username: Option<String>,
    pub smtp_password: Option<Secret>,
    /// The formulas: every `DIMENSION*` variable, as set.
    pub dimension_vars: Vec<(String, String)>,
}

impl Environment {
    /// Reads the process environment.
    pub fn read() -> Environment {
        let raw = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let trimmed = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let plan = match (
            trimmed("SERVICE_NAME"),
            trimmed("ENVIRONMENT_TYPE"),
            trimmed("PLAN_ID"),
        ) {
            (Some(service), Some(environment), Some(plan)) => Some(ServiceKey {
                service,
                environment,
                plan,
            }),
            _ => None,
        };
        Environment {
            export_bucket: trimmed("S3_BUCKET_NAME").or_else(|| trimmed("AWS_S3_BUCKET_NAME")),
            plan,
            predecessor_state_file: trimmed("STATE_FILE_PATH"),
            clazar_client_id: trimmed("CLAZAR_CLIENT_ID"),
            clazar_client_secret: trimmed("CLAZAR_CLIENT_SECRET").map(Secret::new),
            smtp_username: raw("SMTP_USERNAME"),
            smtp_password: raw("SMTP_PASSWORD").map(Secret::new),
            dimension_vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, _)| k.starts_with("DIMENSION"))
                .collect(),
        }
    }

    /// Where the predecessor's state may be, for the export bucket `bucket`.
    fn predecessor(&self, s3: S3Settings, bucket: Option<String>) -> PredecessorLookup {
        PredecessorLookup {
            s3,
            bucket,
            state_file: self.predecessor_state_file.clone(),
        }
    }
}

/// Where usage files (or billing files) are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl SourceSpec {
    /// `s3://bucket[/prefix]` or a folder; without one, the predecessor's bucket variables.
    pub fn resolve(flag: Option<&str>, env: &Environment) -> Result<SourceSpec> {
        let from_env = || env.export_bucket.as_ref().map(|b| format!("s3://{b}"));
        let Some(spec) = flag.map(str::to_string).or_else(from_env) else {
            return Err(Fatal::Config(
                "no source: pass --source DIR or --source s3://BUCKET, or set S3_BUCKET_NAME"
                    .into(),
            )
            .into());
        };
        SourceSpec::parse(&spec)
    }

    pub fn parse(spec: &str) -> Result<SourceSpec> {
        match spec.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Fatal::Config(format!("'{spec}' names no bucket")).into());
                }
                let prefix = prefix.trim_matches('/');
                Ok(SourceSpec::S3 {
                    bucket: bucket.to_string(),
                    prefix: if prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{prefix}/")
                    },
                })
            }
            None => Ok(SourceSpec::Local(PathBuf::from(spec))),
        }
    }

    /// The bucket, for an S3 source.
    pub fn bucket(&self) -> Option<&str> {
        match self {
            SourceSpec::S3 { bucket, .. } => Some(bucket),
            SourceSpec::Local(_) => None,
        }
    }
}

impl GlobalArgs {
    /// The ledger and how long to wait for another process using it.
    pub fn ledger_file(&self) -> LedgerFile {
        LedgerFile::new(&self.ledger, self.busy_timeout)
    }
}

/// An optional flag's value, trimmed; blank is unset.
fn clean(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl S3Args {
    pub fn resolve(&self) -> S3Settings {
        S3Settings {
            endpoint_url: clean(&self.endpoint_url),
            region: clean(&self.region),
            force_path_style: self.path_style,
            checksums_when_required: self.checksums_when_required,
            max_attempts: self.max_attempts,
            attempt_timeout: self.attempt_timeout,
        }
    }
}

impl ScopeArgs {
    pub fn resolve(&self) -> Result<Scope> {
        if let (Some(from), Some(to)) = (self.from_month, self.to_month) {
            if from > to {
                return Err(
                    Fatal::Config(format!("--from-month {from} is after --to-month {to}")).into(),
                );
            }
        }
        for (name, v) in [
            ("SERVICE_NAME", &self.service),
            ("ENVIRONMENT_TYPE", &self.environment),
            ("PLAN_ID", &self.plan),
        ] {
            if clean(v).is_some_and(|s| s.contains(['/', ':'])) {
                return Err(Fatal::Config(format!(
                    "{name} must be one path segment without '/' or ':'"
                ))
                .into());
            }
        }
        Ok(Scope {
            service: clean(&self.service),
            environment: clean(&self.environment),
            plan: clean(&self.plan),
            from_month: self.from_month,
            to_month: self.to_month,
        })
    }

    /// `START_MONTH`, or [`DEFAULT_START_MONTH`].
    pub fn start_month(&self) -> Month {
        self.start_month.unwrap_or(DEFAULT_START_MONTH)
    }
}

/// `meterbook ingest`, and the ingest step of `run`.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub ledger: LedgerFile,
    pub source: SourceSpec,
    pub s3: S3Settings,
    pub scope: Scope,
    pub options: IngestOptions,
}

impl IngestSettings {
    pub fn resolve(
        global: &GlobalArgs,
        scope: &ScopeArgs,
        args: &IngestArgs,
        env: &Environment,
    ) -> Result<IngestSettings> {
        let scope_resolved = scope.resolve()?;
        Ok(IngestSettings {
            ledger: global.ledger_file(),
            source: SourceSpec::resolve(args.source.as_deref(), env)?,
            s3: global.s3.resolve(),
            scope: scope_resolved,
            options: IngestOptions {
                concurrency: args.concurrency,
                batch_files: args.batch_files,
                progress: !global.quiet,
                all_months: args.all_months,
                max_file_bytes: args.limits.max_file_bytes,
                max_bytes_in_flight: args.limits.max_bytes_in_flight,
                full_listing_every: args.limits.full_listing_every,
                start_month: Some(scope.start_month()),
            },
        })
    }
}

/// How quantities are computed: the formulas (`DIMENSION*` variables, parsed but not yet checked
/// against the ledger's dimensions), rounding, and how lines are grouped into requests.
#[derive(Debug, Clone)]
pub struct QuantitySettings {
    /// (dimension name, formula, the variable(s) it came from).
    pub formulas: Vec<(String, String, String)>,
    pub send_base_dimensions: bool,
    pub rounding: Rounding,
    /// At most this many records per request (0: no limit).
    pub max_records_per_request: usize,
}

impl QuantitySettings {
    fn resolve(args: &QuantityArgs, env: &Environment) -> Result<QuantitySettings> {
        Ok(QuantitySettings {
            formulas: formulas(env).map_err(Fatal::Config)?,
            send_base_dimensions: args.send_base_dimensions,
            rounding: args.rounding,
            max_records_per_request: args.max_records_per_request,
        })
    }

    /// The formulas compiled against the base dimensions (Omnistrate's four plus any the ledger
    /// holds). A bad one is a configuration error naming its variable.
    pub fn dimensions(&self, ledger_dimensions: &[String]) -> Result<Dimensions> {
        compile(
            &self.formulas,
            ledger_dimensions,
            self.send_base_dimensions,
            self.rounding,
        )
        .map_err(|e| Fatal::Config(e).into())
    }
}

/// The formulas of the `DIMENSION*` variables, or what is wrong with them.
fn formulas(env: &Environment) -> std::result::Result<Vec<(String, String, String)>, String> {
    let vars = env.dimension_vars.iter();
    Dimensions::from_vars(vars.map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|e| e.to_string())
}

fn compile(
    formulas: &[(String, String, String)],
    ledger_dimensions: &[String],
    send_base: bool,
    rounding: Rounding,
) -> std::result::Result<Dimensions, String> {
    let base: BTreeSet<String> = BASE_DIMENSIONS
        .iter()
        .map(|d| d.to_string())
        .chain(ledger_dimensions.iter().cloned())
        .collect();
    Dimensions::new(formulas.to_vec(), &base, send_base, rounding).map_err(|e| e.to_string())
}

impl ClazarArgs {
    /// Clazar's endpoints and credentials (from the environment only), or what is wrong with
    /// them: it matters only once something is sent, so the error is kept, not raised.
    fn resolve(&self, env: &Environment) -> std::result::Result<ClazarSettings, String> {
        let (metering_url, auth_url) = self.endpoints()?;
        let (Some(client_id), Some(client_secret)) = (
            env.clazar_client_id.clone(),
            env.clazar_client_secret.clone(),
        ) else {
            return Err(
                "CLAZAR_CLIENT_ID and CLAZAR_CLIENT_SECRET must be set in the environment".into(),
            );
        };
        Ok(ClazarSettings {
            metering_url,
            auth_url,
            client_id,
            client_secret,
            timeout: self.timeout,
            max_retries: self.max_retries,
            backoff: Duration::from_millis(self.backoff_ms),
            concurrency: self.concurrency,
        })
    }

    /// The metering and authentication URLs: from --clazar-base-url, else CLAZAR_API_URL (the
    /// metering endpoint, whose sibling `authenticate/` authenticates).
    fn endpoints(&self) -> std::result::Result<(String, String), String> {
        let bad = |what: &str, url: &str| format!("{what} '{url}' is not an http(s) URL");
        if let Some(base) = clean(&self.base_url) {
            if !base.starts_with("http://") && !base.starts_with("https://") {
                return Err(bad("--clazar-base-url", &base));
            }
            let base = base.trim_end_matches('/');
            return Ok((format!("{base}/metering/"), format!("{base}/authenticate/")));
        }
        let url = self.api_url.trim();
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(bad("CLAZAR_API_URL", url));
        }
        let Some(base) = url.trim_end_matches('/').strip_suffix("metering") else {
            return Err(format!(
                "CLAZAR_API_URL '{url}' does not end in /metering/, so the authentication endpoint \
                 cannot be derived; pass --clazar-base-url instead"
            ));
        };
        Ok((format!("{base}metering/"), format!("{base}authenticate/")))
    }
}

/// What a submission run plans.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Complete periods not submitted yet (`submit`, `run`), except for service keys whose
    /// predecessor state is there but was not imported.
    Due {
        rules: PeriodRules,
        scope: Scope,
        predecessor: Box<PredecessorLookup>,
    },
    /// Failed, rejected or warned lines the filter selects (`resubmit`).
    Retry(SubmissionFilter),
}

/// `meterbook submit` and `resubmit`, and the submit steps of `run`.
#[derive(Debug, Clone)]
pub struct SubmitSettings {
    pub ledger: LedgerFile,
    pub selection: Selection,
    pub quantity: QuantitySettings,
    pub cloud: Cloud,
    /// `DRY_RUN`: print the payloads, change and send nothing.
    pub dry_run: bool,
    /// How Clazar is reached, or why it cannot be (missing credentials, a bad URL): an error
    /// only once something is to be sent.
    pub clazar: std::result::Result<ClazarSettings, String>,
}

impl SubmitSettings {
    /// `submit` (and `run`, whose predecessor state is looked for in `predecessor_bucket`).
    pub fn resolve(
        global: &GlobalArgs,
        scope: &ScopeArgs,
        args: &SubmitArgs,
        predecessor_bucket: Option<String>,
        env: &Environment,
    ) -> Result<SubmitSettings> {
        let rules = PeriodRules {
            kind: args.period,
            start_month: Some(scope.start_month()),
            max_per_run: match args.period {
                PeriodKind::Month => args.max_months_per_run,
                PeriodKind::Hour => args.max_hours_per_run,
            },
            grace_without_marker: args.grace_without_marker,
        };
        Ok(SubmitSettings {
            ledger: global.ledger_file(),
            selection: Selection::Due {
                rules,
                scope: scope.resolve()?,
                predecessor: Box::new(env.predecessor(global.s3.resolve(), predecessor_bucket)),
            },
            quantity: QuantitySettings::resolve(&args.quantity, env)?,
            cloud: args.clazar.cloud,
            dry_run: args.quantity.dry_run,
            clazar: args.clazar.resolve(env),
        })
    }

    /// `resubmit`.
    pub fn resolve_retry(
        global: &GlobalArgs,
        args: &ResubmitArgs,
        env: &Environment,
    ) -> Result<SubmitSettings> {
        Ok(SubmitSettings {
            ledger: global.ledger_file(),
            selection: Selection::Retry(SubmissionFilter {
                contract_id: args.contract.clone(),
                period: args.period.clone(),
                status: None,
            }),
            quantity: QuantitySettings::resolve(&args.quantity, env)?,
            cloud: args.clazar.cloud,
            dry_run: args.quantity.dry_run,
            clazar: args.clazar.resolve(env),
        })
    }

    /// The period rules: those of the selection, or, for a retry (whose periods were complete
    /// when first planned), none that select anything.
    pub fn rules(&self) -> PeriodRules {
        match &self.selection {
            Selection::Due { rules, .. } => rules.clone(),
            Selection::Retry(_) => PeriodRules {
                kind: PeriodKind::Month,
                start_month: None,
                max_per_run: usize::MAX,
                grace_without_marker: None,
            },
        }
    }

    /// Clazar's settings, or the configuration error that there are none.
    pub fn clazar(&self) -> Result<&ClazarSettings> {
        self.clazar
            .as_ref()
            .map_err(|why| Fatal::Config(why.clone()).into())
    }
}

/// Where the ledger's state lives on S3, and how sync keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub location: StateLocation,
    /// For a run scoped to one plan without a state URL: the state shared by every plan, used
    /// while the plan's own does not exist and that one does (see [`crate::sync::locate`]).
    pub shared: Option<StateLocation>,
    /// Generations kept as copies for `sync restore`.
    pub keep_generations: u64,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// The segment size of the states this meterbook writes.
    pub segment_size: u64,
    /// Every how many generations a push runs `PRAGMA integrity_check` (and looks for segments
    /// no kept generation names).
    pub integrity_check_every: u64,
    /// Segment uploads or downloads at once.
    pub concurrency: usize,
    /// Segments younger than this are never deleted: a push under way may have just uploaded them
    /// (`--gc-grace-seconds`, else 1 hour or twice the lease, whichever is longer).
    pub gc_grace: Duration,
}

impl StateSettings {
    /// From `--state-url`/`METERBOOK_STATE_URL`, else the export bucket under
    /// [`plan_state_key`] for a run scoped to one plan, or [`DEFAULT_STATE_KEY`].
    pub fn resolve(
        args: &StateArgs,
        plan: Option<&ServiceKey>,
        env: &Environment,
    ) -> Result<StateSettings> {
        let (location, shared) = match clean(&args.state_url) {
            Some(url) => (state_url(&url)?, None),
            None => {
                let Some(bucket) = env.export_bucket.clone() else {
                    return Err(Fatal::Config(
                        "no state location: pass --state-url s3://BUCKET/KEY, or set \
                         METERBOOK_STATE_URL or S3_BUCKET_NAME"
                            .into(),
                    )
                    .into());
                };
                let at = |key: String| StateLocation {
                    bucket: bucket.clone(),
                    key,
                };
                match plan {
                    Some(plan) => (
                        at(plan_state_key(plan)),
                        Some(at(DEFAULT_STATE_KEY.to_string())),
                    ),
                    None => (at(DEFAULT_STATE_KEY.to_string()), None),
                }
            }
        };
        let lease = Duration::from_secs(args.lease_seconds);
        Ok(StateSettings {
            location,
            shared,
            keep_generations: args.keep_generations,
            lease,
            segment_size: args.segment_size,
            integrity_check_every: args.integrity_check_every,
            concurrency: args.sync_concurrency as usize,
            gc_grace: args
                .gc_grace_seconds
                .map(Duration::from_secs)
                .unwrap_or((2 * lease).max(Duration::from_secs(3600))),
        })
    }
}

/// `s3://BUCKET/KEY` naming an object.
fn state_url(url: &str) -> Result<StateLocation> {
    match crate::s3::parse_url(url) {
        Some((bucket, key)) if !key.is_empty() && !key.ends_with('/') => {
            Ok(StateLocation { bucket, key })
        }
        _ => Err(Fatal::Config(format!(
            "state URL '{url}' must look like s3://BUCKET/KEY (an object key, not a folder)"
        ))
        .into()),
    }
}

/// `meterbook sync`.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub ledger: LedgerFile,
    pub s3: S3Settings,
    pub state: StateSettings,
}

impl SyncSettings {
    pub fn resolve(
        global: &GlobalArgs,
        state: &StateArgs,
        env: &Environment,
    ) -> Result<SyncSettings> {
        Ok(SyncSettings {
            ledger: global.ledger_file(),
            s3: global.s3.resolve(),
            state: StateSettings::resolve(state, env.plan.as_ref(), env)?,
        })
    }
}

/// `meterbook run`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub ledger: LedgerFile,
    pub s3: S3Settings,
    pub ingest: IngestSettings,
    pub submit: SubmitSettings,
    pub state: StateSettings,
    /// Wait for another run's lease instead of exiting with code 4.
    pub wait_for_lease: bool,
    /// `None`: one cycle, then exit.
    pub schedule: Option<Schedule>,
    /// Where the health check listens while running on a schedule.
    pub health: SocketAddr,
}

impl RunSettings {
    pub fn resolve(global: &GlobalArgs, args: &RunArgs, env: &Environment) -> Result<RunSettings> {
        let schedule =
            Schedule::choose(args.every, args.processing_interval_seconds, args.cron_mode)?;
        let ingest = IngestSettings::resolve(global, &args.scope, &args.ingest, env)?;
        // The predecessor's state is in the export bucket (it had no prefix of its own).
        let bucket = ingest
            .source
            .bucket()
            .map(str::to_string)
            .or_else(|| env.export_bucket.clone());
        let submit = SubmitSettings::resolve(global, &args.scope, &args.submit, bucket, env)?;
        let plan = ingest.scope.service_key();
        Ok(RunSettings {
            ledger: global.ledger_file(),
            s3: global.s3.resolve(),
            state: StateSettings::resolve(&args.state, plan.as_ref(), env)?,
            ingest,
            submit,
            wait_for_lease: args.wait_for_lease,
            schedule,
            health: SocketAddr::new(args.healthcheck_bind, args.healthcheck_port),
        })
    }
}

/// `meterbook import-state`.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    pub ledger: LedgerFile,
    /// `--from`: where the state file is; `None` looks where the predecessor's versions kept it.
    pub from: Option<String>,
    /// `--service-key` for a state that does not name its service key.
    pub service_key: Option<String>,
    pub cloud: Cloud,
    /// The plan the environment names (the newest version's state file is per plan).
    pub plan: Option<ServiceKey>,
    pub lookup: PredecessorLookup,
}

impl ImportSettings {
    pub fn resolve(
        global: &GlobalArgs,
        args: &ImportStateArgs,
        env: &Environment,
    ) -> ImportSettings {
        ImportSettings {
            ledger: global.ledger_file(),
            from: args.from.as_deref().map(str::trim).map(str::to_string),
            service_key: args.service_key.clone(),
            cloud: args.cloud,
            plan: env.plan.clone(),
            lookup: env.predecessor(global.s3.resolve(), env.export_bucket.clone()),
        }
    }
}

/// `meterbook doctor`: every part resolved on its own, so that one check's broken setting
/// fails that check, not the others.
#[derive(Debug, Clone)]
pub struct DoctorSettings {
    pub ledger: LedgerFile,
    pub s3: S3Settings,
    pub source: std::result::Result<SourceSpec, String>,
    pub state: std::result::Result<StateSettings, String>,
    pub clazar: std::result::Result<ClazarSettings, String>,
    /// The formulas of the `DIMENSION*` variables.
    pub formulas: std::result::Result<Vec<(String, String, String)>, String>,
}

impl DoctorSettings {
    pub fn resolve(global: &GlobalArgs, args: &DoctorArgs, env: &Environment) -> DoctorSettings {
        let text = |e: anyhow::Error| format!("{e:#}");
        DoctorSettings {
            ledger: global.ledger_file(),
            s3: global.s3.resolve(),
            source: SourceSpec::resolve(args.source.as_deref(), env).map_err(text),
            state: StateSettings::resolve(&args.state, env.plan.as_ref(), env).map_err(text),
            clazar: args.clazar.resolve(env),
            formulas: formulas(env),
        }
    }

    /// The formulas compiled against the base dimensions and those of the ledger.
    pub fn dimensions(
        &self,
        ledger_dimensions: &[String],
    ) -> std::result::Result<Dimensions, String> {
        compile(
            self.formulas.as_ref().map_err(Clone::clone)?,
            ledger_dimensions,
            false,
            Rounding::Floor,
        )
    }
}

/// `meterbook costs ingest`.
#[derive(Debug, Clone)]
pub struct CostIngestSettings {
    pub ledger: LedgerFile,
    pub s3: S3Settings,
    pub source: SourceSpec,
    /// Tags whose first non-empty value names a line item's user, in order of preference.
    pub user_tags: Vec<String>,
    /// A billing file whose CSV is larger than this is rejected.
    pub max_csv_bytes: u64,
}

impl CostIngestSettings {
    pub fn resolve(global: &GlobalArgs, args: &CostsIngestArgs) -> Result<CostIngestSettings> {
        Ok(CostIngestSettings {
            user_tags: user_tags(&args.user_tags)?,
            source: SourceSpec::parse(&args.source)?,
            ledger: global.ledger_file(),
            s3: global.s3.resolve(),
            max_csv_bytes: args.max_csv_bytes,
        })
    }
}

fn user_tags(raw: &[String]) -> Result<Vec<String>> {
    let tags: Vec<String> = raw
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if tags.is_empty() {
        return Err(Fatal::Config("--user-tags names no tag".into()).into());
    }
    if let Some(bad) = tags.iter().find(|t| t.contains(['"', '\\'])) {
        return Err(
            Fatal::Config(format!("--user-tags: {bad:?} may not contain '\"' or '\\'")).into(),
        );
    }
    Ok(tags)
}

/// `meterbook costs report`.
#[derive(Debug, Clone)]
pub struct CostReportSettings {
    pub ledger: LedgerFile,
    pub window: Window,
    pub format: ReportFormat,
    /// Where to email the report; `None` sends nothing.
    pub mail: Option<MailSettings>,
    /// Attach the plot to the email.
    pub plot: bool,
}

impl CostReportSettings {
    pub fn resolve(
        global: &GlobalArgs,
        args: &CostsReportArgs,
        env: &Environment,
    ) -> Result<CostReportSettings> {
        Ok(CostReportSettings {
            window: window(&args.window)?,
            mail: (!args.email.email_to.is_empty())
                .then(|| mail_settings(&args.email, env))
                .transpose()?,
            ledger: global.ledger_file(),
            format: args.format,
            plot: !args.no_plot,
        })
    }
}

/// `meterbook costs plot`.
#[derive(Debug, Clone)]
pub struct CostPlotSettings {
    pub ledger: LedgerFile,
    pub window: Window,
    /// The PNG; the SVG is written beside it.
    pub png: PathBuf,
}

impl CostPlotSettings {
    pub fn resolve(global: &GlobalArgs, args: &CostsPlotArgs) -> Result<CostPlotSettings> {
        Ok(CostPlotSettings {
            window: window(&args.window)?,
            ledger: global.ledger_file(),
            png: args.out.clone(),
        })
    }
}

/// The local days a cost report or plot covers.
fn window(args: &CostsWindowArgs) -> Result<Window> {
    let tz: Tz = args.tz.trim().parse().map_err(|_| {
        Fatal::Config(format!(
            "--tz {:?} is not a time zone; use an IANA name such as America/Los_Angeles or UTC",
            args.tz
        ))
    })?;
    let today = args
        .today
        .unwrap_or_else(|| Utc::now().with_timezone(&tz).date_naive());
    let last = args.to.unwrap_or(today - Days::new(1));
    let first = match args.from {
        Some(from) => from,
        None if args.days == 0 => {
            return Err(Fatal::Config("--days must be at least 1".into()).into())
        }
        None => last - Days::new(u64::from(args.days) - 1),
    };
    if first > last {
        return Err(Fatal::Config(format!(
            "the window starts ({first}) after it ends ({last})"
        ))
        .into());
    }
    if (last - first).num_days() > 3660 {
        return Err(Fatal::Config("the window is longer than ten years".into()).into());
    }
    Ok(Window {
        tz,
        today,
        first,
        last,
    })
}

fn mail_settings(args: &EmailArgs, env: &Environment) -> Result<MailSettings> {
    let config = |m: String| anyhow::Error::from(Fatal::Config(m));
    let mailbox = |what: &str, s: &str| {
        s.trim()
            .parse()
            .map_err(|e| config(format!("{what} {s:?} is not an email address: {e}")))
    };
    let from = args.email_from.as_deref().ok_or_else(|| {
        config("--email-from (or METERBOOK_EMAIL_FROM) is needed to send email".into())
    })?;
    let host = args
        .smtp_host
        .clone()
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| config("--smtp-host (or SMTP_HOST) is needed to send email".into()))?;
    let credentials = match (&env.smtp_username, &env.smtp_password) {
        (Some(user), Some(password)) => Some((user.clone(), password.clone())),
        (None, None) => None,
        _ => {
            return Err(config(
                "set both SMTP_USERNAME and SMTP_PASSWORD, or neither".into(),
            ))
        }
    };
    Ok(MailSettings {
        host: host.trim().to_string(),
        port: args.smtp_port,
        security: args.smtp_security,
        from: mailbox("--email-from", from)?,
        to: args
            .email_to
            .iter()
            .filter(|t| !t.trim().is_empty())
            .map(|t| mailbox("--email-to", t))
            .collect::<Result<_>>()?,
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_specs_split_bucket_and_prefix() {
        assert_eq!(
            SourceSpec::parse("s3://bucket").unwrap(),
            SourceSpec::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            SourceSpec::parse("s3://bucket/exports/a/").unwrap(),
            SourceSpec::S3 {
                bucket: "bucket".into(),
                prefix: "exports/a/".into()
            }
        );
        assert!(SourceSpec::parse("s3:///x").is_err());
        assert_eq!(
            SourceSpec::parse("./sample").unwrap(),
            SourceSpec::Local("./sample".into())
        );
    }

    fn state_args(url: Option<&str>) -> StateArgs {
        StateArgs {
            state_url: url.map(str::to_string),
            keep_generations: 10,
            lease_seconds: 300,
            segment_size: 512 << 10,
            integrity_check_every: 24,
            sync_concurrency: 16,
            gc_grace_seconds: None,
        }
    }

    #[test]
    fn segments_stay_an_hour_or_two_leases_unless_the_grace_is_set() {
        let env = Environment::default();
        let grace = |lease_seconds, gc_grace_seconds| {
            let args = StateArgs {
                lease_seconds,
                gc_grace_seconds,
                ..state_args(Some("s3://b/k"))
            };
            StateSettings::resolve(&args, None, &env).unwrap().gc_grace
        };
        assert_eq!(grace(300, None), Duration::from_secs(3600));
        assert_eq!(grace(2400, None), Duration::from_secs(4800));
        assert_eq!(grace(2400, Some(60)), Duration::from_secs(60));
    }

    #[test]
    fn a_plan_has_a_state_of_its_own_with_the_shared_one_to_fall_back_on() {
        let plan = ServiceKey {
            service: "pg".into(),
            environment: "PROD".into(),
            plan: "pt-1".into(),
        };
        let env = Environment {
            export_bucket: Some("b".into()),
            ..Environment::default()
        };
        let s = StateSettings::resolve(&state_args(None), Some(&plan), &env).unwrap();
        assert_eq!(s.location.key, "meterbook/state/pg/PROD/pt-1/ledger.sqlite");
        assert_eq!(s.shared.unwrap().key, DEFAULT_STATE_KEY);
        let s = StateSettings::resolve(&state_args(None), None, &env).unwrap();
        assert_eq!(
            (s.location.key.as_str(), s.shared),
            (DEFAULT_STATE_KEY, None)
        );
        // A state URL wins over the plan's default, and has nothing to fall back on.
        let s = StateSettings::resolve(&state_args(Some("s3://b/k")), Some(&plan), &env).unwrap();
        assert_eq!((s.location.key.as_str(), s.shared), ("k", None));
        let nowhere = StateSettings::resolve(&state_args(None), None, &Environment::default());
        assert!(nowhere
            .unwrap_err()
            .to_string()
            .contains("no state location"));
    }

    #[test]
    fn state_urls_name_an_object() {
        let env = Environment::default();
        let resolve = |url| StateSettings::resolve(&state_args(Some(url)), None, &env);
        let loc = resolve("s3://b/state/ledger.sqlite").unwrap().location;
        assert_eq!(loc.bucket, "b");
        assert_eq!(loc.key, "state/ledger.sqlite");
        for bad in ["s3://b", "s3://b/", "s3://b/folder/", "/tmp/x", "s3:///k"] {
            assert!(resolve(bad).is_err(), "{bad}");
        }
    }
}
