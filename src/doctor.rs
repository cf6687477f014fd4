//! What `meterbook doctor` checks: everything a run needs (credentials, the export, the marker,
//! the state and its conditional writes, the ledger, the lease, Clazar, the formulas), each check
//! a verdict with what to fix when it fails. The checks are a list ([`CHECKS`]); a new one is one
//! more entry.

use std::future::Future;
use std::pin::Pin;

use aws_sdk_s3::config::ProvideCredentials;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chrono::Utc;

use crate::config::{DoctorSettings, SourceSpec};
use crate::ledger::{binary_schema_version, Ledger};
use crate::s3::{Op, S3Error};
use crate::source::MARKER_KEY;
use crate::sync::remote;
use crate::sync::{lease, state, StateLocation};

/// What a check found.
pub enum Verdict {
    Ok(String),
    /// Works, but worth knowing.
    Warn(String),
    Fail {
        problem: String,
        fix: String,
    },
}

fn fail(problem: impl Into<String>, fix: impl Into<String>) -> Verdict {
    Verdict::Fail {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Where the export bucket's name comes from, for messages.
const EXPORT_NAMED_BY: &str = "--source (or S3_BUCKET_NAME)";

/// A failed S3 request: what happened, and what to check as its fix (the explanation's own, or
/// the check's when the answer does not say).
fn s3_fail(e: S3Error, fix: &str) -> Verdict {
    fail(
        format!("{}: {}", e.what, e.problem),
        e.check.unwrap_or_else(|| fix.to_string()),
    )
}

/// A failed step: an S3 request that failed is explained as such, anything else with `fix`.
fn step_fail(e: anyhow::Error, fix: &str) -> Verdict {
    match e.downcast::<S3Error>() {
        Ok(e) => s3_fail(e, fix),
        Err(e) => fail(format!("{e:#}"), fix),
    }
}

/// What the checks look at.
pub struct Setup {
    client: Client,
    settings: DoctorSettings,
    state: std::result::Result<StateLocation, String>,
}

type CheckFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// One check: a name and what it runs.
pub struct Check {
    pub name: &'static str,
    pub run: for<'a> fn(&'a Setup) -> CheckFuture<'a>,
}

/// Every check, in the order printed.
pub const CHECKS: &[Check] = &[
    Check {
        name: "s3 credentials",
        run: |s| Box::pin(credentials(s)),
    },
    Check {
        name: "export readable",
        run: |s| Box::pin(export_readable(s)),
    },
    Check {
        name: "completion marker",
        run: |s| Box::pin(completion_marker(s)),
    },
    Check {
        name: "state writable",
        run: |s| Box::pin(state_writable(s)),
    },
    Check {
        name: "conditional writes",
        run: |s| Box::pin(conditional_writes(s)),
    },
    Check {
        name: "state",
        run: |s| Box::pin(state_object(s)),
    },
    Check {
        name: "ledger schema",
        run: |s| Box::pin(ledger_schema(s)),
    },
    Check {
        name: "lease",
        run: |s| Box::pin(lease_state(s)),
    },
    Check {
        name: "clazar authentication",
        run: |s| Box::pin(clazar_authentication(s)),
    },
    Check {
        name: "formulas",
        run: |s| Box::pin(formulas(s)),
    },
];

impl Setup {
    /// What the checks look at: the settings, an S3 client, and where the state is (or why that
    /// cannot be known).
    pub async fn new(settings: DoctorSettings) -> Setup {
        let client = crate::s3::client(&settings.s3).await;
        let state = match &settings.state {
            Ok(state) => crate::sync::locate(&client, state)
                .await
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.clone()),
        };
        Setup {
            client,
            settings,
            state,
        }
    }
}

async fn credentials(s: &Setup) -> Verdict {
    let config = s.client.config();
    let region = config
        .region()
        .map_or("none".to_string(), |r| r.to_string());
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let Some(provider) = shared.credentials_provider() else {
        return fail(
            "no credentials provider",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role",
        );
    };
    match provider.provide_credentials().await {
        Ok(_) => Verdict::Ok(format!("found; region {region}")),
        Err(e) => fail(
            format!("none found ({e})"),
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role",
        ),
    }
}

fn export_location(s: &Setup) -> std::result::Result<(String, String), Verdict> {
    match &s.settings.source {
        Ok(SourceSpec::S3 { bucket, prefix }) => Ok((bucket.clone(), prefix.clone())),
        Ok(SourceSpec::Local(dir)) => Err(Verdict::Ok(format!(
            "source is the local folder {}; not an S3 export",
            dir.display()
        ))),
        Err(e) => Err(fail(
            e.clone(),
            "pass --source s3://BUCKET or set S3_BUCKET_NAME",
        )),
    }
}

async fn export_readable(s: &Setup) -> Verdict {
    let (bucket, prefix) = match export_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    let listed = s
        .client
        .list_objects_v2()
        .bucket(&bucket)
        .prefix(format!("{prefix}{}", crate::source::EXPORT_PREFIX))
        .max_keys(1)
        .send()
        .await;
    match listed {
        Ok(page) if page.key_count().unwrap_or(0) > 0 => {
            Verdict::Ok(format!("s3://{bucket}/{prefix} lists usage objects"))
        }
        Ok(_) => Verdict::Warn(format!(
            "s3://{bucket}/{prefix}{} is empty; check the bucket and prefix",
            crate::source::EXPORT_PREFIX
        )),
        Err(e) => s3_fail(
            crate::s3::explain(&e, Op::List, &bucket, &prefix, EXPORT_NAMED_BY),
            "check the bucket name, region and that the credentials may s3:ListBucket",
        ),
    }
}

async fn completion_marker(s: &Setup) -> Verdict {
    let (bucket, prefix) = match export_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    let key = format!("{prefix}{MARKER_KEY}");
    let url = format!("s3://{bucket}/{key}");
    let body = match s.client.get_object().bucket(&bucket).key(&key).send().await {
        Ok(out) => match out.body.collect().await {
            Ok(b) => b.into_bytes(),
            Err(e) => return fail(format!("reading {url}: {e}"), "try again"),
        },
        Err(e) => {
            return s3_fail(
                crate::s3::explain(&e, Op::Get, &bucket, &key, EXPORT_NAMED_BY),
                "Omnistrate writes it after each export run: check the bucket, prefix and \
                 s3:GetObject permission",
            )
        }
    };
    match parse_marker(&body) {
        Ok((keys, newest)) => Verdict::Ok(format!(
            "{url}: {keys} service key(s), newest last_processed_to {newest}"
        )),
        Err(problem) => fail(
            format!("{url}: {problem}"),
            "check that the object is Omnistrate's completion marker",
        ),
    }
}

/// The marker's service keys and its newest `last_processed_to`, or its first problem.
fn parse_marker(body: &[u8]) -> std::result::Result<(usize, String), String> {
    let marker = crate::source::marker::parse_marker(body)?;
    if let Some(problem) = marker.problems.first() {
        return Err(problem.clone());
    }
    let newest = marker
        .entries
        .iter()
        .map(|e| e.last_processed_to)
        .max()
        .ok_or("it names no service key")?;
    Ok((marker.entries.len(), crate::period::format_utc(newest)))
}

fn state_location(s: &Setup) -> std::result::Result<&StateLocation, Verdict> {
    s.state.as_ref().map_err(|e| {
        fail(
            e.clone(),
            "pass --state-url s3://BUCKET/KEY or set METERBOOK_STATE_URL or S3_BUCKET_NAME",
        )
    })
}

async fn state_writable(s: &Setup) -> Verdict {
    let loc = match state_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    let key = remote::probe_key(&loc.key, "write");
    let written = s
        .client
        .put_object()
        .bucket(&loc.bucket)
        .key(&key)
        .body(ByteStream::from_static(b"meterbook doctor"))
        .send()
        .await;
    if let Err(e) = written {
        return s3_fail(
            remote::explain(&e, Op::Put, &loc.bucket, &key),
            "allow s3:PutObject and s3:DeleteObject on the state location",
        );
    }
    match remote::delete(&s.client, &loc.bucket, &key).await {
        Ok(()) => Verdict::Ok(format!("can write and delete beside {loc}")),
        Err(e) => step_fail(
            e,
            "allow s3:DeleteObject on the state location (old generations are deleted)",
        ),
    }
}

async fn conditional_writes(s: &Setup) -> Verdict {
    let loc = match state_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    match remote::honours_conditions(&s.client, &loc.bucket, &loc.key).await {
        Ok(true) => Verdict::Ok("If-None-Match and If-Match are honoured".to_string()),
        Ok(false) => fail(
            remote::IGNORES_CONDITIONS,
            "use a store that honours conditional writes (AWS S3 does); do not run meterbook \
             on more than one host against this store",
        ),
        Err(e) => step_fail(e, "allow s3:PutObject on the state location"),
    }
}

async fn state_object(s: &Setup) -> Verdict {
    let loc = match state_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    match state::head(&s.client, loc).await {
        Ok(Some(r)) if r.meta.schema_version > binary_schema_version() => fail(
            format!(
                "{loc} generation {} has schema version {}, newer than this meterbook's {}",
                r.meta.generation,
                r.meta.schema_version,
                binary_schema_version()
            ),
            "use a newer meterbook",
        ),
        Ok(Some(r)) => Verdict::Ok(format!(
            "{loc} is generation {}, pushed {} by {}",
            r.meta.generation,
            crate::period::format_utc(r.meta.pushed_at),
            r.meta.pushed_by
        )),
        Ok(None) => Verdict::Ok(format!(
            "no state at {loc} yet; the first `meterbook sync push` creates it"
        )),
        Err(e) => step_fail(
            e,
            "restore a kept generation with `meterbook sync restore --generation N`",
        ),
    }
}

async fn ledger_schema(s: &Setup) -> Verdict {
    let known = binary_schema_version();
    if !s.settings.ledger.path.exists() {
        return Verdict::Ok(format!(
            "no ledger at {} yet; `meterbook sync pull` or `meterbook ingest` creates it",
            s.settings.ledger.path.display()
        ));
    }
    match Ledger::open_for_reading(&s.settings.ledger).and_then(|l| l.schema_version()) {
        Ok(v) => Verdict::Ok(format!(
            "{} is at schema version {v} (this meterbook knows up to {known})",
            s.settings.ledger.path.display()
        )),
        Err(e) => fail(
            format!("{e:#}"),
            "use a newer meterbook, or pull a good state with `meterbook sync pull --discard-local`",
        ),
    }
}

async fn lease_state(s: &Setup) -> Verdict {
    let loc = match state_location(s) {
        Ok(l) => l,
        Err(v) => return v,
    };
    let now = Utc::now();
    match lease::read(&s.client, loc).await {
        Ok(None) => Verdict::Ok("free (never taken)".to_string()),
        Ok(Some(c)) if c.record.is_free(now) => {
            Verdict::Ok(format!("free: {}", c.record.describe(now)))
        }
        Ok(Some(c))
            if lease::HolderProcess::current()
                .is_some_and(|here| c.record.holder_gone(&crate::sync::host_name(), &here)) =>
        {
            Verdict::Ok(format!(
                "{}; its process on this host is gone, so the next run takes it over at once",
                c.record.describe(now)
            ))
        }
        Ok(Some(c)) => Verdict::Warn(format!(
            "{}; a run is in progress, or a host died and the lease will expire",
            c.record.describe(now)
        )),
        Err(e) => step_fail(e, "delete the lease object if nothing else uses that key"),
    }
}

async fn clazar_authentication(s: &Setup) -> Verdict {
    let settings = match &s.settings.clazar {
        Ok(settings) => settings.clone(),
        Err(why) => {
            return fail(
                why.clone(),
                "set CLAZAR_CLIENT_ID and CLAZAR_CLIENT_SECRET in the environment, and \
                 CLAZAR_API_URL (or --clazar-base-url) when not using api.clazar.io",
            )
        }
    };
    let url = settings.auth_url.clone();
    let client = match crate::clazar::Client::new(settings) {
        Ok(c) => c,
        Err(e) => return fail(format!("{e:#}"), "check the Clazar settings"),
    };
    match client.check_credentials().await {
        Ok(()) => Verdict::Ok(format!("authenticated at {url}")),
        Err(e) => {
            let (problem, check) = e.explained();
            fail(problem, check)
        }
    }
}

async fn formulas(s: &Setup) -> Verdict {
    let mut in_ledger = Vec::new();
    if s.settings.ledger.path.exists() {
        if let Ok(ledger) = Ledger::open_for_reading(&s.settings.ledger) {
            in_ledger = ledger.dimensions_in_usage().unwrap_or_default();
        }
    }
    match s.settings.dimensions(&in_ledger) {
        Ok(d) if d.formulas.is_empty() => {
            Verdict::Ok("none defined: the base dimensions are sent as they are".into())
        }
        Ok(d) => Verdict::Ok(format!(
            "{} valid: {}",
            d.formulas.len(),
            d.formulas
                .iter()
                .map(|f| format!("{} = {}", f.name, f.source))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => fail(e, "fix the DIMENSION_* variable it names"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_gives_its_newest_time_or_says_what_is_wrong() {
        let marker = br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-11-14T03:14:59Z"},
                          "pg:PROD:pt-2": {"lastSuccessfulExport": "2025-11-15T00:00:00Z"}}"#;
        assert_eq!(
            parse_marker(marker),
            Ok((2, "2025-11-15T00:00:00Z".to_string()))
        );
        assert!(parse_marker(b"[]").is_err());
        assert!(
            parse_marker(br#"{"k": {"last_processed_to": "yesterday"}}"#)
                .unwrap_err()
                .contains("not a time")
        );
        assert!(parse_marker(b"{}").is_err());
    }
}
