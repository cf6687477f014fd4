//! The ledger's durable state on S3. The SQLite file is the state: `push` uploads a checked,
//! compressed snapshot with a conditional write, `pull` downloads, verifies and installs one, and
//! the lease keeps runs on different hosts from overlapping.
//!
//! Layout on S3, for a state URL `s3://BUCKET/KEY`:
//! - `KEY`: the current state (zstd-compressed SQLite snapshot; metadata in [`remote::StateMeta`]);
//! - `KEY.generations/NNNNNNNNNNNNNNNNNNNN`: copies of the newest generations, for `sync restore`;
//! - `KEY.lease`: the lease (JSON, see [`lease::LeaseRecord`]).
//!
//! Locally, `LEDGER.sync.json` beside the ledger remembers which generation and ETag the ledger
//! was last pulled or pushed as ([`local::SyncRecord`]).

pub mod lease;
pub mod local;
pub mod remote;
pub mod snapshot;
pub mod state;

use std::fmt;

use anyhow::Result;

use crate::error::Fatal;

/// The state key under the export bucket when no state URL is given.
pub const DEFAULT_STATE_KEY: &str = "meterbook/state/ledger.sqlite";

/// Where the state lives on S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLocation {
    pub bucket: String,
    pub key: String,
}

impl StateLocation {
    /// From `--state-url`/`METERBOOK_STATE_URL`, else the export bucket (`S3_BUCKET_NAME`,
    /// `AWS_S3_BUCKET_NAME`) under [`DEFAULT_STATE_KEY`].
    pub fn resolve(url: Option<&str>) -> Result<StateLocation> {
        let url = url.map(str::trim).filter(|u| !u.is_empty());
        if let Some(url) = url {
            return match crate::s3::parse_url(url) {
                Some((bucket, key)) if !key.is_empty() && !key.ends_with('/') => {
                    Ok(StateLocation { bucket, key })
                }
                _ => Err(Fatal::Config(format!(
                    "state URL '{url}' must look like s3://BUCKET/KEY (an object key, not a folder)"
                ))
                .into()),
            };
        }
        match crate::config::export_bucket() {
            Some(bucket) => Ok(StateLocation {
                bucket,
                key: DEFAULT_STATE_KEY.to_string(),
            }),
            None => Err(Fatal::Config(
                "no state location: pass --state-url s3://BUCKET/KEY, or set METERBOOK_STATE_URL \
                 or S3_BUCKET_NAME"
                    .into(),
            )
            .into()),
        }
    }

    /// The key of the kept copy of generation `n`.
    pub fn generation_key(&self, n: u64) -> String {
        format!("{}{n:020}", self.generations_prefix())
    }

    /// The prefix under which generation copies live.
    pub fn generations_prefix(&self) -> String {
        format!("{}.generations/", self.key)
    }

    /// The key of the lease object.
    pub fn lease_key(&self) -> String {
        format!("{}.lease", self.key)
    }
}

impl fmt::Display for StateLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// This host's name, for holder ids and `pushed-by` metadata.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_urls_name_an_object() {
        let loc = StateLocation::resolve(Some("s3://b/state/ledger.sqlite")).unwrap();
        assert_eq!(loc.bucket, "b");
        assert_eq!(loc.key, "state/ledger.sqlite");
        assert_eq!(
            loc.generation_key(7),
            "state/ledger.sqlite.generations/00000000000000000007"
        );
        assert_eq!(loc.lease_key(), "state/ledger.sqlite.lease");
        for bad in ["s3://b", "s3://b/", "s3://b/folder/", "/tmp/x", "s3:///k"] {
            assert!(StateLocation::resolve(Some(bad)).is_err(), "{bad}");
        }
    }
}
