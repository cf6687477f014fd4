//! Resolved, validated settings: what the raw command line and environment mean.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::{S3Args, ScopeArgs};
use crate::error::Fatal;
use crate::s3::S3Settings;
use crate::source::Scope;

/// Where usage files are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl SourceSpec {
    /// `s3://bucket[/prefix]` or a folder; without one, the predecessor's bucket variables.
    pub fn resolve(flag: Option<&str>) -> Result<SourceSpec> {
        let from_env = || {
            ["S3_BUCKET_NAME", "AWS_S3_BUCKET_NAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|b| !b.trim().is_empty()))
                .map(|b| format!("s3://{}", b.trim()))
        };
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
}
