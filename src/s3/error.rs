//! What an S3 error means, said one way everywhere (the export, the state and lease, billing files,
//! the predecessor's state, `doctor`): [`explain`] classifies an SDK error as a setting, credential
//! or permission to fix ([`S3ErrorKind::Config`], exit code 2), a refused condition
//! ([`S3ErrorKind::Conflict`], exit code 4), a missing object ([`S3ErrorKind::NotFound`]) or a
//! failure the SDK's retries did not overcome ([`S3ErrorKind::Failed`], exit code 1), and words it
//! as one sentence naming the bucket or key, what happened and what to check. An [`S3Error`] in
//! an error's chain decides its exit code (see [`S3Error::demand`]).

use std::fmt;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::Demand;

/// What the failed request was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Get,
    Head,
    Put,
    Copy,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::List => "listing",
            Op::Get | Op::Head => "reading",
            Op::Put => "writing",
            Op::Copy => "copying to",
            Op::Delete => "deleting",
        }
    }

    /// The IAM permission the request needs.
    fn permission(self) -> &'static str {
        match self {
            Op::List => "s3:ListBucket",
            // Without s3:ListBucket, S3 answers a missing key with access denied too.
            Op::Get | Op::Head => "s3:GetObject (and s3:ListBucket on the bucket)",
            Op::Put => "s3:PutObject",
            Op::Copy => "s3:GetObject and s3:PutObject",
            Op::Delete => "s3:DeleteObject",
        }
    }
}

/// What kind of failure it is, which decides what the caller does and the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3ErrorKind {
    /// A setting, credentials or a permission the operator must fix: no such bucket, access
    /// denied, an unknown access key, a wrong secret, expired credentials, the bucket in another
    /// region, no credentials at all. Not retried; exit code 2.
    Config,
    /// A condition refused the write (412, or 409 for a concurrent conditional write): someone
    /// else wrote in between. Exit code 4.
    Conflict,
    /// No such object.
    NotFound,
    /// Anything else: no answer, or an error answer, after the retries the SDK makes for
    /// transient ones. The next run tries again; exit code 1.
    Failed,
}

/// A failed S3 request, explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub kind: S3ErrorKind,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// What was being done: `reading s3://bucket/key`.
    pub what: String,
    /// What happened.
    pub problem: String,
    /// What to check, when the answer says.
    pub check: Option<String>,
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.problem)?;
        match &self.check {
            Some(check) => write!(f, "; {check}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for S3Error {}

impl S3Error {
    /// What it asks of the operator: a setting to fix, or a conflict to resolve; the exit code
    /// follows (see [`crate::error::exit_code_for`]).
    pub fn demand(&self) -> Option<Demand> {
        match self.kind {
            S3ErrorKind::Config => Some(Demand::Config),
            S3ErrorKind::Conflict => Some(Demand::Conflict),
            S3ErrorKind::NotFound | S3ErrorKind::Failed => None,
        }
    }
}

/// Explains a failed request: `op` on `key` (or a prefix; empty for the bucket) in `bucket`,
/// whose name came from `named_by` (e.g. `--source (or S3_BUCKET_NAME)`).
pub fn explain<E>(
    err: &SdkError<E, HttpResponse>,
    op: Op,
    bucket: &str,
    key: &str,
    named_by: &str,
) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let region = err
        .raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .map(str::to_string);
    let code = err.code();
    let config = |problem: String, check: String| (S3ErrorKind::Config, problem, Some(check));
    let (kind, problem, check) = match (code, status) {
        (Some("NoSuchBucket"), _) => config(
            format!("bucket '{bucket}' does not exist"),
            format!("check {named_by} and --s3-endpoint-url"),
        ),
        (Some("AccessDenied" | "AllAccessDisabled"), _) | (None, Some(403)) => config(
            "access denied".into(),
            format!(
                "check that the AWS credentials in use (AWS_PROFILE, AWS_ACCESS_KEY_ID, or the \
                 instance role) may {} here",
                op.permission()
            ),
        ),
        (Some("InvalidAccessKeyId"), _) => config(
            "the AWS access key id is not known to this endpoint".into(),
            "check AWS_ACCESS_KEY_ID or AWS_PROFILE, and --s3-endpoint-url".into(),
        ),
        (Some("SignatureDoesNotMatch"), _) => config(
            "the request signature does not match".into(),
            "check AWS_SECRET_ACCESS_KEY (or the profile's secret) and --s3-region".into(),
        ),
        (Some("ExpiredToken" | "InvalidToken" | "TokenRefreshRequired"), _) => config(
            "the AWS session credentials are expired or invalid".into(),
            "refresh them (aws sso login, new AWS_SESSION_TOKEN)".into(),
        ),
        (
            Some(
                "PermanentRedirect"
                | "AuthorizationHeaderMalformed"
                | "IllegalLocationConstraintException",
            ),
            _,
        )
        | (None, Some(301)) => config(
            format!(
                "the bucket is in another region{}",
                region.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            "set --s3-region (or AWS_REGION)".into(),
        ),
        _ if credentials_failed(err) => config(
            "no usable AWS credentials".into(),
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE (run `aws sso login` \
             for SSO), or run with an instance or container role"
                .into(),
        ),
        (_, Some(412 | 409)) => (
            S3ErrorKind::Conflict,
            format!(
                "HTTP {}: a condition refused the write (it changed meanwhile)",
                status.unwrap_or_default()
            ),
            None,
        ),
        // HEAD answers have no body: a 404 there is `NotFound`, for a key or a bucket alike.
        (Some("NoSuchKey"), _) | (_, Some(404)) => {
            (S3ErrorKind::NotFound, "no such key".into(), None)
        }
        _ => (
            S3ErrorKind::Failed,
            failure(err, status),
            failed_check(status),
        ),
    };
    S3Error {
        kind,
        status,
        what: format!("{} s3://{bucket}/{key}", op.verb()),
        problem,
        check,
    }
}

/// An answer's status, code and message, or, without an answer, the chain of causes; said to be
/// after the retries when the SDK retries such failures.
fn failure<E>(err: &SdkError<E, HttpResponse>, status: Option<u16>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let said = match (status, err) {
        (Some(status), SdkError::ServiceError(e)) => {
            let meta = e.err().meta();
            format!(
                "HTTP {status} {}{}",
                meta.code().unwrap_or("error"),
                meta.message().map(|m| format!(": {m}")).unwrap_or_default()
            )
        }
        (Some(status), _) => format!("HTTP {status}"),
        (None, _) => {
            let mut line = err.to_string();
            let mut cause = std::error::Error::source(err);
            while let Some(c) = cause {
                line.push_str(&format!(": {c}"));
                cause = c.source();
            }
            line
        }
    };
    match status {
        Some(s) if s != 429 && s < 500 => said,
        _ => format!("{said} (after the attempts --s3-max-attempts allows)"),
    }
}

/// What to check after a failure that is not a setting: the endpoint and the network when nothing
/// answered, nothing when the store said what it did not like.
fn failed_check(status: Option<u16>) -> Option<String> {
    match status {
        None => Some(
            "check --s3-endpoint-url (or AWS_ENDPOINT_URL) and that this host can reach it \
             (network, proxy, firewall)"
                .into(),
        ),
        Some(s) if s == 429 || s >= 500 => {
            Some("the store is failing or busy; try again later".into())
        }
        Some(_) => None,
    }
}

/// Did the request fail because no credentials could be loaded (the default chain found none, or
/// a profile is broken)?
fn credentials_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if err.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        cause = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;

    use super::*;

    /// An error answer as the SDK hands it over: status, code, headers.
    fn answered(
        status: u16,
        code: Option<&str>,
        headers: &[(&str, &str)],
    ) -> SdkError<GetObjectError, HttpResponse> {
        let mut response = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(name.to_string(), value.to_string());
        }
        let mut meta = ErrorMetadata::builder().message("the store's words");
        if let Some(code) = code {
            meta = meta.code(code);
        }
        SdkError::service_error(GetObjectError::generic(meta.build()), response)
    }

    fn explained(status: u16, code: Option<&str>) -> S3Error {
        explain(
            &answered(status, code, &[]),
            Op::Get,
            "bkt",
            "a/b.json",
            "--source (or S3_BUCKET_NAME)",
        )
    }

    #[test]
    fn permanent_errors_are_configuration_naming_the_object_and_what_to_check() {
        let cases = [
            (
                404,
                Some("NoSuchBucket"),
                "bucket 'bkt' does not exist; check --source (or S3_BUCKET_NAME)",
            ),
            (
                403,
                Some("AccessDenied"),
                "access denied; check that the AWS credentials in use",
            ),
            (
                403,
                None,
                "may s3:GetObject (and s3:ListBucket on the bucket) here",
            ),
            (403, Some("InvalidAccessKeyId"), "check AWS_ACCESS_KEY_ID"),
            (
                403,
                Some("SignatureDoesNotMatch"),
                "check AWS_SECRET_ACCESS_KEY",
            ),
            (400, Some("ExpiredToken"), "expired or invalid"),
            (
                301,
                Some("PermanentRedirect"),
                "another region; set --s3-region",
            ),
        ];
        for (status, code, says) in cases {
            let e = explained(status, code);
            assert_eq!(e.kind, S3ErrorKind::Config, "{code:?}");
            let text = e.to_string();
            assert!(text.starts_with("reading s3://bkt/a/b.json: "), "{text}");
            assert!(text.contains(says), "{code:?}: {text}");
            // Under further context, as an ingest or a sync reports it.
            let err = anyhow::Error::new(e).context("ingesting the export");
            assert_eq!(
                crate::error::exit_code_for(&err),
                crate::error::exit::CONFIG
            );
        }
        let region = answered(301, None, &[("x-amz-bucket-region", "eu-west-3")]);
        let e = explain(&region, Op::List, "bkt", "", "--state-url");
        assert_eq!(e.to_string(), "listing s3://bkt/: the bucket is in another region (eu-west-3); set --s3-region (or AWS_REGION)");
    }

    #[test]
    fn a_refused_condition_is_a_conflict_and_a_missing_key_not_found() {
        let e = explained(412, Some("PreconditionFailed"));
        assert_eq!(e.kind, S3ErrorKind::Conflict);
        assert_eq!(
            crate::error::exit_code_for(&e.into()),
            crate::error::exit::CONFLICT
        );
        assert_eq!(
            explained(404, Some("NoSuchKey")).kind,
            S3ErrorKind::NotFound
        );
        assert_eq!(explained(404, None).kind, S3ErrorKind::NotFound);
        assert_eq!(explained(404, Some("NotFound")).kind, S3ErrorKind::NotFound);
    }

    #[test]
    fn other_failures_say_what_the_store_said_and_exit_1() {
        let e = explained(503, Some("SlowDown"));
        assert_eq!(e.kind, S3ErrorKind::Failed);
        assert_eq!(
            e.to_string(),
            "reading s3://bkt/a/b.json: HTTP 503 SlowDown: the store's words (after the attempts \
             --s3-max-attempts allows); the store is failing or busy; try again later"
        );
        assert_eq!(
            crate::error::exit_code_for(&e.into()),
            crate::error::exit::FAILURE
        );
        let e = explained(400, Some("InvalidArgument"));
        assert_eq!(e.kind, S3ErrorKind::Failed);
        assert!(e
            .to_string()
            .ends_with("HTTP 400 InvalidArgument: the store's words"));
    }
}
