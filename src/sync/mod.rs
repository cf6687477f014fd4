//! The ledger's durable state on S3. The SQLite file is the state, stored as immutable,
//! content-addressed segments named by a manifest: `push` uploads the segments S3 does not have
//! yet and then the manifest, with a conditional write; `pull` downloads the segments the local
//! ledger does not have, verifies them and the whole file, and installs it; the lease keeps runs
//! on different hosts from overlapping.
//!
//! Layout on S3, for a state URL `s3://BUCKET/KEY`:
//! - `KEY`: the current generation's manifest (JSON, see [`manifest::Manifest`]; metadata in
//!   [`remote::StateMeta`]); a state of meterbook before segments (format 1) is the whole ledger,
//!   zstd-compressed, and is read as before;
//! - `KEY.segments/<BLAKE3>`: the segments, zstd-compressed ([`segments`]);
//! - `KEY.generations/NNNNNNNNNNNNNNNNNNNN`: copies of the newest manifests, for `sync restore`;
//! - `KEY.lease`: the lease (JSON, see [`lease::LeaseRecord`]).
//!
//! Locally, `LEDGER.sync.json` beside the ledger remembers which generation and ETag the ledger
//! was last pulled or pushed as ([`local::SyncRecord`]).
//!
//! Without a state URL the state lives in the export bucket: one per plan when the run is scoped
//! to one (`SERVICE_NAME`, `ENVIRONMENT_TYPE`, `PLAN_ID`), so that deployments of different plans
//! on one bucket never wait for each other's lease; one for everything otherwise (the settings are
//! resolved in [`crate::config::StateSettings`]; [`locate`] falls back on a state made before
//! per-plan states).

pub mod gc;
pub mod lease;
pub mod local;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod remote;
pub mod restore;
pub mod segments;
pub mod snapshot;
pub mod state;
mod transfer;

use std::fmt;

use anyhow::Result;

use crate::config::StateSettings;
use crate::source::ServiceKey;

/// The state key under the export bucket when no state URL is given and the run is not scoped to
/// one plan (and, before per-plan states, for every run).
pub const DEFAULT_STATE_KEY: &str = "meterbook/state/ledger.sqlite";

/// The default state key of a run scoped to one plan.
pub fn plan_state_key(plan: &ServiceKey) -> String {
    format!(
        "meterbook/state/{}/{}/{}/ledger.sqlite",
        plan.service, plan.environment, plan.plan
    )
}

/// Where the state lives on S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLocation {
    pub bucket: String,
    pub key: String,
}

impl StateLocation {
    /// The key of the kept copy of generation `n`.
    pub fn generation_key(&self, n: u64) -> String {
        format!("{}{n:020}", self.generations_prefix())
    }

    /// The prefix under which generation copies live.
    pub fn generations_prefix(&self) -> String {
        format!("{}.generations/", self.key)
    }

    /// The prefix under which segments live.
    pub fn segments_prefix(&self) -> String {
        format!("{}.segments/", self.key)
    }

    /// The key of the segment with this hash (hex).
    pub fn segment_key(&self, hash: &str) -> String {
        format!("{}{hash}", self.segments_prefix())
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

/// Where the state is: the settings' location, except for a run scoped to one plan whose own
/// state does not exist yet while the state shared by every plan (of earlier versions) does. That
/// state holds the plan's history (what was sent), so the run keeps using it, and says how to give
/// the plan its own; starting an empty ledger instead would plan every month again.
pub async fn locate(
    client: &aws_sdk_s3::Client,
    settings: &StateSettings,
) -> Result<StateLocation> {
    let loc = &settings.location;
    let Some(shared) = &settings.shared else {
        return Ok(loc.clone());
    };
    if remote::head(client, &loc.bucket, &loc.key).await?.is_some()
        || remote::head(client, &shared.bucket, &shared.key)
            .await?
            .is_none()
    {
        return Ok(loc.clone());
    }
    tracing::warn!(
        "using the state at {shared}, which every deployment on this bucket shares (made before \
         each plan had its own): runs for other plans wait for its lease. To give this plan its \
         own state at {loc}, between runs: meterbook --ledger move.sqlite sync pull --state-url \
         {shared}; rm move.sqlite.sync.json; meterbook --ledger move.sqlite sync push --state-url \
         {loc}. To keep the shared one and silence this, set METERBOOK_STATE_URL={shared}"
    );
    Ok(shared.clone())
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
    fn a_plan_has_a_state_key_of_its_own() {
        let plan = ServiceKey {
            service: "pg".into(),
            environment: "PROD".into(),
            plan: "pt-1".into(),
        };
        assert_eq!(
            plan_state_key(&plan),
            "meterbook/state/pg/PROD/pt-1/ledger.sqlite"
        );
    }

    #[test]
    fn generations_and_the_lease_live_beside_the_state() {
        let loc = StateLocation {
            bucket: "b".into(),
            key: "state/ledger.sqlite".into(),
        };
        assert_eq!(
            loc.generation_key(7),
            "state/ledger.sqlite.generations/00000000000000000007"
        );
        assert_eq!(loc.lease_key(), "state/ledger.sqlite.lease");
        assert_eq!(loc.segment_key("ab"), "state/ledger.sqlite.segments/ab");
    }
}
