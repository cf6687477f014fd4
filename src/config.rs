//! Resolved, validated settings: what the raw command line and environment mean.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::clazar::{ClazarSettings, Secret};
use crate::cli::{ClazarArgs, GlobalArgs, QuantityArgs, S3Args, ScopeArgs, SubmitArgs};
use crate::dimensions::{Dimensions, BASE_DIMENSIONS};
use crate::error::Fatal;
use crate::ledger::LedgerFile;
use crate::period::{Month, PeriodKind};
use crate::plan::PeriodRules;
use crate::s3::S3Settings;
use crate::source::{Scope, ServiceKey};

/// `START_MONTH` when it is not set: the predecessor's newest version's default, so that a
/// switched deployment bills exactly the months its predecessor would have.
pub const DEFAULT_START_MONTH: Month = Month {
    year: 2025,
    month: 1,
};

/// Where usage files are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// The export bucket named by the predecessor's variables (`S3_BUCKET_NAME`, or the newest
/// version's `AWS_S3_BUCKET_NAME`).
pub fn export_bucket() -> Option<String> {
    ["S3_BUCKET_NAME", "AWS_S3_BUCKET_NAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
}

/// The plan the predecessor's variables name (`SERVICE_NAME`, `ENVIRONMENT_TYPE`, `PLAN_ID`), when
/// all three are set: for commands without scope flags (sync, doctor, import-state).
pub fn plan_from_env() -> Option<ServiceKey> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Some(ServiceKey {
        service: var("SERVICE_NAME")?,
        environment: var("ENVIRONMENT_TYPE")?,
        plan: var("PLAN_ID")?,
    })
}

/// The older predecessor versions' `STATE_FILE_PATH`: where their state JSON was.
pub fn predecessor_state_file() -> Option<String> {
    std::env::var("STATE_FILE_PATH")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl SourceSpec {
    /// `s3://bucket[/prefix]` or a folder; without one, the predecessor's bucket variables.
    pub fn resolve(flag: Option<&str>) -> Result<SourceSpec> {
        let from_env = || export_bucket().map(|b| format!("s3://{b}"));
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
}

impl GlobalArgs {
    /// The ledger and how long to wait for another process using it.
    pub fn ledger_file(&self) -> LedgerFile {
        LedgerFile::new(&self.ledger, Duration::from_secs_f64(self.busy_timeout))
    }
}

impl S3Args {
    pub fn resolve(&self) -> S3Settings {
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let defaults = S3Settings::default();
        S3Settings {
            endpoint_url: clean(&self.endpoint_url),
            region: clean(&self.region),
            force_path_style: self.path_style,
            checksums_when_required: self.checksums_when_required,
            // Zero only from `S3Args::default()`; clap validates what a user passes.
            max_attempts: if self.max_attempts > 0 {
                self.max_attempts
            } else {
                defaults.max_attempts
            },
            attempt_timeout: if self.attempt_timeout > 0.0 {
                std::time::Duration::from_secs_f64(self.attempt_timeout)
            } else {
                defaults.attempt_timeout
            },
        }
    }
}

impl SubmitArgs {
    /// Which periods are due: kind, START_MONTH (default [`DEFAULT_START_MONTH`]), the per-run
    /// bound of that kind, the grace delay.
    pub fn period_rules(&self) -> Result<PeriodRules> {
        Ok(PeriodRules {
            kind: self.period,
            start_month: Some(self.start_month.unwrap_or(DEFAULT_START_MONTH)),
            max_per_run: match self.period {
                PeriodKind::Month => self.max_months_per_run,
                PeriodKind::Hour => self.max_hours_per_run,
            },
            grace_without_marker: self
                .grace_without_marker
                .as_deref()
                .map(parse_duration)
                .transpose()?,
        })
    }
}

impl ScopeArgs {
    pub fn resolve(&self) -> Result<Scope> {
        let clean = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
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
}

impl ClazarArgs {
    /// Clazar's endpoints and credentials. The credentials come from the environment only.
    pub fn resolve(&self) -> Result<ClazarSettings> {
        let (metering_url, auth_url) = self.endpoints()?;
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (Some(client_id), Some(secret)) =
            (var("CLAZAR_CLIENT_ID"), var("CLAZAR_CLIENT_SECRET"))
        else {
            return Err(Fatal::Config(
                "CLAZAR_CLIENT_ID and CLAZAR_CLIENT_SECRET must be set in the environment".into(),
            )
            .into());
        };
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return Err(Fatal::Config(
                "--clazar-timeout must be a positive number of seconds".into(),
            )
            .into());
        }
        Ok(ClazarSettings {
            metering_url,
            auth_url,
            client_id,
            client_secret: Secret::new(secret),
            timeout: Duration::from_secs_f64(self.timeout_secs),
            max_retries: self.max_retries,
            backoff: Duration::from_millis(self.backoff_ms),
        })
    }

    /// The metering and authentication URLs: from --clazar-base-url, else CLAZAR_API_URL (the
    /// metering endpoint, whose sibling `authenticate/` authenticates).
    pub fn endpoints(&self) -> Result<(String, String)> {
        let bad =
            |what: &str, url: &str| Fatal::Config(format!("{what} '{url}' is not an http(s) URL"));
        if let Some(base) = self
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|b| !b.is_empty())
        {
            if !base.starts_with("http://") && !base.starts_with("https://") {
                return Err(bad("--clazar-base-url", base).into());
            }
            let base = base.trim_end_matches('/');
            return Ok((format!("{base}/metering/"), format!("{base}/authenticate/")));
        }
        let url = self.api_url.trim();
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(bad("CLAZAR_API_URL", url).into());
        }
        let Some(base) = url.trim_end_matches('/').strip_suffix("metering") else {
            return Err(Fatal::Config(format!(
                "CLAZAR_API_URL '{url}' does not end in /metering/, so the authentication endpoint \
                 cannot be derived; pass --clazar-base-url instead"
            ))
            .into());
        };
        Ok((format!("{base}metering/"), format!("{base}authenticate/")))
    }

    pub fn cloud(&self) -> Result<String> {
        let cloud = self.cloud.trim().to_ascii_lowercase();
        match cloud.as_str() {
            "aws" | "azure" | "gcp" => Ok(cloud),
            other => Err(Fatal::Config(format!(
                "CLAZAR_CLOUD '{other}' is not one of aws, azure, gcp"
            ))
            .into()),
        }
    }
}

impl QuantityArgs {
    /// The formulas from the environment, validated against the base dimensions (Omnistrate's
    /// four plus any the ledger holds). A bad one is a configuration error naming its variable.
    pub fn dimensions(&self, ledger_dimensions: &[String]) -> Result<Dimensions> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let specs = Dimensions::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| Fatal::Config(e.to_string()))?;
        let base: BTreeSet<String> = BASE_DIMENSIONS
            .iter()
            .map(|d| d.to_string())
            .chain(ledger_dimensions.iter().cloned())
            .collect();
        Dimensions::new(specs, &base, self.send_base_dimensions, self.rounding)
            .map_err(|e| Fatal::Config(e.to_string()).into())
    }
}

/// A duration like `90s`, `30m`, `6h`, `2d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let s = s.trim();
    let bad = || {
        Fatal::Config(format!(
            "'{s}' is not a duration; use e.g. 90s, 30m, 6h or 2d"
        ))
    };
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = number.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(bad().into()),
    };
    Ok(chrono::Duration::seconds(secs))
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

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), chrono::Duration::seconds(90));
        assert_eq!(parse_duration("6h").unwrap(), chrono::Duration::hours(6));
        assert_eq!(parse_duration("2d").unwrap(), chrono::Duration::days(2));
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("h").is_err());
    }
}
