//! One S3 client for everything meterbook reads and writes on S3 (the export bucket, the state,
//! billing files): aws-config's default credential chain, region from the usual settings, and
//! options for S3-compatible stores (endpoint, path-style addressing, checksums only when required).
//! [`error`] explains every failed request the same way.

pub mod error;

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};

pub use error::{explain, Op, S3Error, S3ErrorKind};

/// Resolved S3 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// A custom endpoint (S3-compatible store); `None` uses AWS_ENDPOINT_URL or AWS's own.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (`http://host/bucket/key`), which most S3-compatible stores need.
    pub force_path_style: bool,
    /// Ask for checksums only when an operation requires them (Garage, older Ceph).
    pub checksums_when_required: bool,
    /// Attempts per request (the first one included) for transient errors, with exponential
    /// backoff (the SDK's standard retry mode).
    pub max_attempts: u32,
    /// One attempt's time limit, up to the response headers.
    pub attempt_timeout: Duration,
}

/// Connecting takes a few milliseconds on a working network; anything long is a dead endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a client. Region falls back to us-east-1 when nothing else names one. Transient errors
/// (500, 503 SlowDown, timeouts, dropped connections) are retried with exponential backoff; a
/// whole operation may take every attempt's time limit plus the backoff between them.
pub async fn client(settings: &S3Settings) -> aws_sdk_s3::Client {
    let region = RegionProviderChain::first_try(settings.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new("us-east-1"));
    let attempts = settings.max_attempts.max(1);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(settings.attempt_timeout)
        .operation_timeout(settings.attempt_timeout * attempts + Duration::from_secs(60))
        .build();
    let retries = RetryConfig::standard()
        .with_max_attempts(attempts)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(10));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(retries)
        .timeout_config(timeouts);
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let shared = loader.load().await;
    let mut config =
        aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.force_path_style);
    if settings.checksums_when_required {
        config = config
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    aws_sdk_s3::Client::from_conf(config.build())
}

/// Splits `s3://bucket/key` into bucket and key (the key may be empty).
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket.to_string(), key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_s3_urls() {
        assert_eq!(
            parse_url("s3://b/k/x.json"),
            Some(("b".into(), "k/x.json".into()))
        );
        assert_eq!(parse_url("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_url("s3:///k"), None);
        assert_eq!(parse_url("/tmp/x"), None);
    }
}
