//! `meterbook import-state`: take over from the Python exporter without re-sending a single month.
//! Reads its state JSON (a local file or an S3 object, found where its versions kept it) and
//! records what it sent and what failed. [`predecessor_guard`] keeps `run` and `submit` from
//! sending for a service key whose predecessor state is there but was never imported.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::{GlobalArgs, ImportStateArgs};
use crate::config::{Environment, ImportSettings};
use crate::error::{Fatal, Outcome};
use crate::ledger::Ledger;
use crate::predecessor::{
    parse_state, service_key_from_file_name, PredecessorLookup, PredecessorState,
};
use crate::s3::S3Settings;
use crate::source::{Scope, ServiceKey};
use crate::sync::remote;

/// The older versions' default state file (a local path, or a key in the export bucket).
const OLD_STATE_FILE: &str = "metering_state.json";

pub async fn run(
    global: &GlobalArgs,
    args: &ImportStateArgs,
    env: &Environment,
) -> Result<Outcome> {
    let settings = ImportSettings::resolve(global, args, env);
    let lookup = &settings.lookup;
    let (plan, bucket) = (&settings.plan, &lookup.bucket);
    let places = match settings.from.as_deref() {
        Some(from) => vec![Place::named(from, bucket.as_deref())?],
        None => default_places(lookup, plan.as_ref()),
    };
    let mut reader = Reader::new(&lookup.s3);
    let Some((place, body)) = reader.first(&places).await? else {
        let looked: Vec<String> = places.iter().map(Place::to_string).collect();
        return Err(Fatal::Config(format!(
            "no predecessor state at {}{}",
            looked.join(", "),
            if settings.from.is_some() {
                ""
            } else if plan.is_none() || bucket.is_none() {
                "; pass --from PATH|s3://BUCKET/KEY (or set AWS_S3_BUCKET_NAME, SERVICE_NAME, \
                 ENVIRONMENT_TYPE and PLAN_ID to look for the newest version's \
                 clazar/SERVICE-ENVIRONMENT-PLAN-export_state.json)"
            } else {
                "; pass --from PATH|s3://BUCKET/KEY"
            }
        ))
        .into());
    };
    let source = place.to_string();
    let flat_key = settings
        .service_key
        .clone()
        .or_else(|| place.service_key())
        .or_else(|| plan.as_ref().map(ServiceKey::to_string));
    let states = parse_state(&body, flat_key.as_deref())
        .map_err(|why| Fatal::Config(format!("{source}: {why}; nothing was imported")))?;
    let mut ledger = Ledger::open_for_writing(&settings.ledger)?;
    let counts = ledger.import_predecessor(&source, &states, settings.cloud.as_str())?;
    for s in &states {
        let last = match (s.last_processed_month, s.last_processed_hour) {
            (Some(m), _) => format!("month {m}"),
            (None, Some(h)) => format!("hour {}", crate::period::format_utc(h)),
            (None, None) => "nothing".to_string(),
        };
        tracing::info!(
            "{}: the predecessor processed through {last}: periods up to there are not planned again",
            s.service_key
        );
    }
    tracing::info!(
        "imported from {source}: {} contract-months sent by the predecessor (recorded as imported), \
         {} failed there (recorded as failed: see `meterbook history --failures`, re-send with \
         `meterbook resubmit`), {} already recorded",
        counts.imported,
        counts.failed,
        counts.already
    );
    Ok(if counts.failed > 0 {
        Outcome::NeedsAttention
    } else {
        Outcome::Success
    })
}

/// Service keys that `run` and `submit` must not send for, each with what to do: the ledger has
/// no history for them (nothing submitted, nothing imported) while the predecessor's state records
/// something for them, or cannot be read. Sending then could bill again what it billed.
pub(crate) async fn predecessor_guard(
    ledger: &Ledger,
    lookup: &PredecessorLookup,
    scope: &Scope,
) -> Result<BTreeMap<String, String>> {
    let mut held = BTreeMap::new();
    let mut reader = Reader::new(&lookup.s3);
    let bucket = lookup.bucket.as_deref();
    for key in ledger.service_keys_without_history()? {
        let Some(plan) = parse_service_key(&key).filter(|k| scope.admits_service_key(k)) else {
            continue;
        };
        let newest = bucket.map(|b| newest_place(b, &plan));
        for place in default_places(lookup, Some(&plan)) {
            let Some(body) = reader.read(&place).await? else {
                continue;
            };
            // A flat state names no service key: the newest version's is the plan's by its key;
            // an older one's by its file name, or the run's scope.
            let flat_key = if newest.as_ref() == Some(&place) {
                Some(key.clone())
            } else {
                place
                    .service_key()
                    .or_else(|| scope.service_key().map(|k| k.to_string()))
            };
            let covers = match parse_state(&body, flat_key.as_deref()) {
                Ok(states) => states.iter().any(|s| s.service_key == key && !is_empty(s)),
                Err(why) => {
                    held.insert(
                        key.clone(),
                        format!(
                            "{key}: the Python exporter's state {place} cannot be read ({why}), so \
                             what it sent is unknown; nothing is sent for {key} until it is fixed \
                             and imported with `meterbook import-state --from {place}`"
                        ),
                    );
                    break;
                }
            };
            if covers {
                held.insert(
                    key.clone(),
                    format!(
                        "{key}: the Python exporter's state {place} records what it sent, but this \
                         ledger has no history for {key}; nothing is sent for {key} until it is \
                         imported: `meterbook import-state --from {place}` (for a ledger kept on S3 \
                         by `meterbook run`: `meterbook sync pull`, then import-state, then \
                         `meterbook sync push`, with the run's environment)"
                    ),
                );
                break;
            }
        }
    }
    Ok(held)
}

/// Did the predecessor record anything for this service key?
fn is_empty(s: &PredecessorState) -> bool {
    s.last_processed_month.is_none()
        && s.last_processed_hour.is_none()
        && s.successes.is_empty()
        && s.errors.is_empty()
}

/// `SERVICE:ENVIRONMENT:PLAN` as the ledger stores it.
fn parse_service_key(key: &str) -> Option<ServiceKey> {
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
fn newest_place(bucket: &str, plan: &ServiceKey) -> Place {
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
fn default_places(lookup: &PredecessorLookup, plan: Option<&ServiceKey>) -> Vec<Place> {
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
enum Place {
    Local(PathBuf),
    S3 { bucket: String, key: String },
}

impl Place {
    /// `s3://BUCKET/KEY`, an existing local file, or else a key in the export bucket.
    fn named(name: &str, bucket: Option<&str>) -> Result<Place> {
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
    fn service_key(&self) -> Option<String> {
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
struct Reader<'a> {
    settings: &'a S3Settings,
    client: Option<aws_sdk_s3::Client>,
}

impl<'a> Reader<'a> {
    fn new(settings: &'a S3Settings) -> Reader<'a> {
        Reader {
            settings,
            client: None,
        }
    }

    /// The first place that holds a file, with its body.
    async fn first(&mut self, places: &[Place]) -> Result<Option<(Place, Vec<u8>)>> {
        for place in places {
            if let Some(body) = self.read(place).await? {
                return Ok(Some((place.clone(), body)));
            }
        }
        Ok(None)
    }

    /// The body, or `None` when there is no such file or object.
    async fn read(&mut self, place: &Place) -> Result<Option<Vec<u8>>> {
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
            Err(e) if remote::status_of(&e) == Some(404) => return Ok(None),
            Err(e) if remote::status_of(&e).is_some() => {
                return Err(Fatal::Config(format!(
                    "reading the predecessor's state {place}: {}; meterbook needs s3:GetObject \
                     there (and s3:ListBucket on the bucket)",
                    remote::describe(&e)
                ))
                .into())
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "reading the predecessor's state {place}: {}",
                    remote::describe(&e)
                ))
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
