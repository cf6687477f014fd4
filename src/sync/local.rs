//! What this host knows about the ledger's place in the state's history: the sidecar file
//! `LEDGER.sync.json`, written (atomically) after every pull, push and restore. Its ETag is the
//! condition of the next upload; its content fingerprint tells whether the ledger has changed
//! since, and its cost tables' fingerprint which side changed them when both moved on.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::snapshot::write_atomically;
use crate::error::Fatal;

/// The ledger as it was when it last matched a generation on S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The state URL this ledger belongs to.
    pub state_url: String,
    pub generation: u64,
    /// The ETag of that generation's state object: the `If-Match` of the next push.
    pub etag: String,
    /// The state object's `meterbook-sha256` (of the manifest; in format 1, of the snapshot).
    pub sha256: String,
    /// Content fingerprint: the manifest's `content` at `segment_size` (see
    /// [`super::segments::Scan`]); in records of meterbook before segments, format 1's (see
    /// [`super::snapshot::Fingerprints`]).
    pub content: String,
    /// The segment size `content` was computed at; absent in records of meterbook before segments.
    #[serde(default)]
    pub segment_size: Option<u64>,
    /// Fingerprint of that generation's cost tables, to tell later which side changed them
    /// (see [`crate::ledger::carry_over`]); absent in records of older meterbooks.
    #[serde(default)]
    pub cost_tables: Option<String>,
    pub synced_at: DateTime<Utc>,
}

/// The sidecar's path for a ledger.
pub fn record_path(ledger: &Path) -> PathBuf {
    let mut name = ledger.file_name().unwrap_or_default().to_os_string();
    name.push(".sync.json");
    ledger.with_file_name(name)
}

/// Reads the sidecar; `None` when the ledger was never pulled or pushed. A record for another
/// state URL is refused, so one ledger is never pushed over another's state by accident.
pub fn read(ledger: &Path, state_url: &str) -> Result<Option<SyncRecord>> {
    let path = record_path(ledger);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let record: SyncRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a meterbook sync record", path.display()))?;
    if record.state_url != state_url {
        return Err(Fatal::Config(format!(
            "ledger {} belongs to state {}, not {state_url} (see {}); pass the right --state-url or \
             --ledger",
            ledger.display(),
            record.state_url,
            path.display()
        ))
        .into());
    }
    Ok(Some(record))
}

/// Replaces the sidecar.
pub fn write(ledger: &Path, record: &SyncRecord) -> Result<()> {
    let path = record_path(ledger);
    let body = serde_json::to_vec_pretty(record)?;
    write_atomically(&path, &body)
}
