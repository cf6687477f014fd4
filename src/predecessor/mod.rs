//! Taking over from the predecessor (the Python exporter) without re-sending a single month: its
//! state file found ([`find`]) and parsed ([`state`]), what it sent and what failed recorded in the
//! ledger ([`import`]), and the guard that keeps `submit` and `run` from sending for a service key
//! whose predecessor state is there but was never imported ([`hold_back`]).
//!
//! Forms of the state file accepted: see [`state`].

pub mod find;
pub mod state;

use std::collections::BTreeMap;

use anyhow::Result;

use crate::config::ImportSettings;
use crate::error::{Fatal, Outcome};
use crate::ledger::{ImportCounts, Ledger};
use crate::s3::S3Settings;
use crate::source::{Scope, ServiceKey};
use find::{default_places, newest_place, parse_service_key, Place, Reader};
pub use state::{parse_state, service_key_from_file_name, PredecessorError, PredecessorState};

/// Where to look for the predecessor's state: its export bucket (the newest version kept its
/// state there, per plan), `STATE_FILE_PATH` (older versions), and how to reach S3.
#[derive(Debug, Clone)]
pub struct PredecessorLookup {
    pub s3: S3Settings,
    pub bucket: Option<String>,
    pub state_file: Option<String>,
}

/// What [`import`] recorded.
#[derive(Debug)]
pub struct Imported {
    /// Where the state file was.
    pub source: String,
    pub states: Vec<PredecessorState>,
    pub counts: ImportCounts,
}

/// `meterbook import-state`: finds the predecessor's state (where `--from` says, else where its
/// versions kept it), parses it whole, and records it in the ledger. A state that cannot be read
/// imports nothing.
pub async fn import(settings: &ImportSettings) -> Result<Imported> {
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
    Ok(Imported {
        source,
        states,
        counts,
    })
}

impl Imported {
    /// Logs what was imported; failures the predecessor recorded need attention.
    pub fn report(&self) -> Outcome {
        for s in &self.states {
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
        let c = &self.counts;
        tracing::info!(
            "imported from {}: {} contract-months sent by the predecessor (recorded as imported), \
             {} failed there (recorded as failed: see `meterbook history --failures`, re-send with \
             `meterbook resubmit`), {} already recorded",
            self.source,
            c.imported,
            c.failed,
            c.already
        );
        if c.failed > 0 {
            Outcome::NeedsAttention
        } else {
            Outcome::Success
        }
    }
}

/// Leaves out of `planning` every service key whose predecessor state is there but was not
/// imported, saying what to do for each; `NeedsAttention` when there is one.
pub async fn hold_back(
    ledger: &Ledger,
    lookup: &PredecessorLookup,
    planning: &mut crate::submit::Planning,
) -> Result<Outcome> {
    let held = guard(ledger, lookup, &planning.scope).await?;
    for why in held.values() {
        tracing::warn!("{why}");
    }
    planning.held_back = held.into_keys().collect();
    Ok(if planning.held_back.is_empty() {
        Outcome::Success
    } else {
        Outcome::NeedsAttention
    })
}

/// Service keys that `run` and `submit` must not send for, each with what to do: the ledger has
/// no history for them (nothing submitted, nothing imported) while the predecessor's state records
/// something for them, or cannot be read. Sending then could bill again what it billed.
async fn guard(
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
