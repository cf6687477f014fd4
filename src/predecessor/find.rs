//! Where the predecessor's state file is, and reading it: the places its versions kept it (a key
//! per plan in the export bucket, `STATE_FILE_PATH`, `metering_state.json`), each a local file or
//! an S3 object.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{service_key_from_file_name, PredecessorLookup};
use crate::error::Fatal;
use crate::s3::{Op, S3ErrorKind, S3Settings};
use crate::source::ServiceKey;

/// Where the bucket of the predecessor's state comes from, for messages.
const NAMED_BY: &str = "--from (or S3_BUCKET_NAME, AWS_S3_BUCKET_NAME)";

/// The older versions' default state file (a local path, or a key in the export bucket).
const OLD_STATE_FILE: &str = "metering_state.json";

/// `SERVICE:ENVIRONMENT:PLAN` as the ledger stores it.
pub(super) fn parse_service_key(key: &str) -> Option<ServiceKey> {
    let mut parts = key.split(':');
    let (service, environment, plan) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next().is_none().then(|| ServiceKey {
        service: service.to_string(),
        environment: environment.to_string(),
        plan: plan.to_string(),
    })
}

/// The newest version's state for a plan: `clazar/{SERVICE}-{ENV}-{PLAN}-export_state.json` in
/// the export bucket.
pub(super) fn newest_place(bucket: &str, plan: &ServiceKey) -> Place {
    Place::S3 {
        bucket: bucket.to_string(),
        key: format!(
            "clazar/{}-{}-{}-export_state.json",
            plan.service, plan.environment, plan.plan
        ),
    }
}

/// Where the predecessor's state may be, in the order looked at: the newest version's key for
/// the plan in the export bucket, then `STATE_FILE_PATH`, then `metering_state.json` (each a
/// local file, an s3:// URL, or a key in the export bucket).
pub(super) fn default_places(lookup: &PredecessorLookup, plan: Option<&ServiceKey>) -> Vec<Place> {
    let bucket = lookup.bucket.as_deref();
    let mut places = Vec::new();
    if let (Some(bucket), Some(plan)) = (bucket, plan) {
        places.push(newest_place(bucket, plan));
    }
    let named = lookup
        .state_file
        .clone()
        .into_iter()
        .chain([OLD_STATE_FILE.to_string()]);
    for name in named {
        if let Ok(place) = Place::named(&name, bucket) {
            if !places.contains(&place) {
                places.push(place);
            }
        }
    }
    places
}

/// One place a state file may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Place {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

impl Place {
    /// `s3://BUCKET/KEY`, an existing local file, or else a key in the export bucket.
    pub(super) fn named(name: &str, bucket: Option<&str>) -> Result<Place> {
        if name.starts_with("s3://") {
            let (bucket, key) = crate::s3::parse_url(name)
                .filter(|(_, k)| !k.is_empty())
                .ok_or_else(|| Fatal::Config(format!("'{name}' does not name an S3 object")))?;
            return Ok(Place::S3 { bucket, key });
        }
        if std::path::Path::new(name).exists() {
            return Ok(Place::Local(PathBuf::from(name)));
        }
        match bucket {
            Some(bucket) => Ok(Place::S3 {
                bucket: bucket.to_string(),
                key: name.trim_start_matches('/').to_string(),
            }),
            None => Err(Fatal::Config(format!(
                "no state file {name}: not a local file, and no S3_BUCKET_NAME to look in"
            ))
            .into()),
        }
    }

    /// The service key the file's name implies (`{SERVICE}-{ENV}-{PLAN}-export_state.json`).
    pub(super) fn service_key(&self) -> Option<String> {
        service_key_from_file_name(&self.to_string())
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Local(path) => write!(f, "{}", path.display()),
            Place::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Reads places, with an S3 client made only when one is needed.
pub(super) struct Reader<'a> {
    settings: &'a S3Settings,
    client: Option<aws_sdk_s3::Client>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(settings: &'a S3Settings) -> Reader<'a> {
        Reader {
            settings,
            client: None,
        }
    }

    /// The first place that holds a file, with its body.
    pub(super) async fn first(&mut self, places: &[Place]) -> Result<Option<(Place, Vec<u8>)>> {
        for place in places {
            if let Some(body) = self.read(place).await? {
                return Ok(Some((place.clone(), body)));
            }
        }
        Ok(None)
    }

    /// The body, or `None` when there is no such file or object.
    pub(super) async fn read(&mut self, place: &Place) -> Result<Option<Vec<u8>>> {
        let (bucket, key) = match place {
            Place::Local(path) => {
                return match std::fs::read(path) {
                    Ok(body) => Ok(Some(body)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e).with_context(|| format!("reading {place}")),
                };
            }
            Place::S3 { bucket, key } => (bucket, key),
        };
        if self.client.is_none() {
            self.client = Some(crate::s3::client(self.settings).await);
        }
        let client = self.client.as_ref().expect("made above");
        let object = match client.get_object().bucket(bucket).key(key).send().await {
            Ok(object) => object,
            Err(e) => {
                return match crate::s3::explain(&e, Op::Get, bucket, key, NAMED_BY) {
                    e if e.kind == S3ErrorKind::NotFound => Ok(None),
                    e => Err(e.into()),
                }
            }
        };
        let body = object
            .body
            .collect()
            .await
            .with_context(|| format!("reading {place}"))?
            .into_bytes()
            .to_vec();
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(bucket: Option<&str>) -> PredecessorLookup {
        PredecessorLookup {
            s3: S3Settings {
                endpoint_url: None,
                region: None,
                force_path_style: false,
                checksums_when_required: false,
                max_attempts: 1,
                attempt_timeout: std::time::Duration::from_secs(1),
            },
            bucket: bucket.map(str::to_string),
            state_file: None,
        }
    }

    #[test]
    fn the_newest_versions_key_is_looked_at_first() {
        let plan = ServiceKey {
            service: "Postgres".into(),
            environment: "PROD".into(),
            plan: "pt-HJSv20iWX0".into(),
        };
        let places: Vec<String> = default_places(&lookup(Some("b")), Some(&plan))
            .iter()
            .map(Place::to_string)
            .collect();
        assert_eq!(
            places[0],
            "s3://b/clazar/Postgres-PROD-pt-HJSv20iWX0-export_state.json"
        );
        assert_eq!(places.last().unwrap(), "s3://b/metering_state.json");
        assert_eq!(
            default_places(&lookup(Some("b")), Some(&plan))[0]
                .service_key()
                .as_deref(),
            Some("Postgres:PROD:pt-HJSv20iWX0")
        );
        // Without a bucket there is nowhere on S3 to look.
        assert!(default_places(&lookup(None), Some(&plan))
            .iter()
            .all(|p| matches!(p, Place::Local(_))));
    }
}
