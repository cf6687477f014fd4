//! The manifest: the state object of format 2, a small JSON document that says what the ledger
//! file of one generation is made of. Segments are named by their BLAKE3 hash and stored,
//! compressed, under `KEY.segments/<hash>`; they never change, and many generations share them.
//! The manifest is the only object that is overwritten (with a conditional write).
//!
//! Besides the segments of its own generation, a manifest lists the segments that only the
//! generations still kept for `sync restore` name (`retained`, with the newest generation naming
//! each): with it, a push knows every segment that must stay from the previous manifest alone, and
//! which ones the generation that stops being kept leaves to delete.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::remote::StateMeta;
use super::segments::{check_segment_size, digests, segment_count, Hash};

/// The state format this meterbook writes; it reads this one and format 1 (the whole ledger as
/// one zstd object, written by meterbook before segments).
pub const FORMAT: u32 = 2;

/// The compression of segments.
pub const COMPRESSION: &str = "zstd";

/// A manifest larger than this is refused before it is read whole (about 4 million segments).
pub const MAX_BYTES: usize = 256 << 20;

/// A segment: its hash and its stored (compressed) size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment(pub String, pub u64);

/// A segment only kept generations name: hash, stored size, and the newest generation naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained(pub String, pub u64, pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// The ledger's schema version (refinery), so that a newer one is refused before anything is
    /// downloaded.
    pub schema_version: i64,
    pub page_size: u32,
    /// The ledger file's size in bytes.
    pub size: u64,
    /// Every segment but the last is this long; the last holds the rest.
    pub segment_size: u64,
    /// BLAKE3 over the segment hashes of the bytes as they are (see `segments`).
    pub checksum: String,
    /// The same with page 1's volatile header fields zeroed: tells whether content changed.
    pub content: String,
    /// The fingerprint of the cost tables (see `ledger::carry_over`).
    pub cost_tables: String,
    pub compression: String,
    pub pushed_at: DateTime<Utc>,
    pub pushed_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    /// The newest generation whose push ran `PRAGMA integrity_check` on the ledger.
    pub integrity_checked: u64,
    /// The ledger file, in order.
    pub segments: Vec<Segment>,
    /// Segments the kept generations name and this one does not.
    pub retained: Vec<Retained>,
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadManifest {
    #[error("it is in format {found}, but this meterbook reads formats 1 to {FORMAT}; use a newer meterbook")]
    NewerFormat { found: u32 },
    #[error("it is not a manifest ({0})")]
    Unreadable(String),
}

impl Manifest {
    /// Parses and checks a manifest: a format this meterbook reads, a consistent layout, hashes
    /// that are hashes, and a checksum that is the one its segments give.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Manifest, BadManifest> {
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let unreadable = |e: String| BadManifest::Unreadable(e);
        let format: Format =
            serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
        if format.format > FORMAT {
            return Err(BadManifest::NewerFormat {
                found: format.format,
            });
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| unreadable(e.to_string()))?;
        check_segment_size(m.segment_size).map_err(unreadable)?;
        if m.format != FORMAT || m.compression != COMPRESSION {
            return Err(unreadable(format!(
                "format {} with compression '{}'",
                m.format, m.compression
            )));
        }
        if !m.page_size.is_power_of_two() || !(512..=65_536).contains(&m.page_size) {
            return Err(unreadable(format!("page size {}", m.page_size)));
        }
        if m.size % u64::from(m.page_size) != 0
            || m.segments.len() != segment_count(m.segment_size, m.size)
        {
            return Err(unreadable(format!(
                "{} segments of {} bytes do not make a file of {} bytes",
                m.segments.len(),
                m.segment_size,
                m.size
            )));
        }
        let hashes = m.hashes().map_err(unreadable)?;
        for Retained(hash, _, _) in &m.retained {
            Hash::from_hex(hash).map_err(|_| unreadable(format!("'{hash}' is not a hash")))?;
        }
        let (checksum, _) = digests(m.segment_size, m.size, &hashes, None);
        if checksum != m.checksum {
            return Err(unreadable(format!(
                "its checksum {} is not the one of its segments ({checksum})",
                m.checksum
            )));
        }
        Ok(m)
    }

    /// The segment hashes, in order.
    pub fn hashes(&self) -> std::result::Result<Vec<Hash>, String> {
        self.segments
            .iter()
            .map(|Segment(h, _)| Hash::from_hex(h).map_err(|_| format!("'{h}' is not a hash")))
            .collect()
    }

    /// The JSON document (what is uploaded): one line, about 75 bytes per segment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(self).expect("a manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The object metadata for this manifest, whose uploaded bytes are `bytes`.
    pub fn meta(&self, bytes: &[u8]) -> StateMeta {
        StateMeta {
            format: self.format,
            generation: self.generation,
            sha256: hex::encode(Sha256::digest(bytes)),
            content: self.content.clone(),
            schema_version: self.schema_version,
            compression: self.compression.clone(),
            size: self.size,
            pushed_at: self.pushed_at,
            pushed_by: self.pushed_by.clone(),
            restored_from: self.restored_from,
        }
    }

    /// Stored bytes of this generation's segments.
    pub fn stored(&self) -> u64 {
        self.segments.iter().map(|Segment(_, n)| n).sum()
    }

    /// Every segment that must stay while this manifest is the state: its own and the retained
    /// ones, with their stored sizes.
    pub fn live(&self) -> HashMap<&str, u64> {
        self.segments
            .iter()
            .map(|Segment(h, n)| (h.as_str(), *n))
            .chain(
                self.retained
                    .iter()
                    .map(|Retained(h, n, _)| (h.as_str(), *n)),
            )
            .collect()
    }

    /// What the next generation (`generation`, made of `segments`) retains of this one and
    /// what it leaves to delete, keeping what generations above `generation - keep` name.
    pub fn succession(
        &self,
        generation: u64,
        segments: &[Segment],
        keep: u64,
    ) -> (Vec<Retained>, Vec<String>) {
        let named: HashSet<&str> = segments.iter().map(|Segment(h, _)| h.as_str()).collect();
        let mut newest: HashMap<&str, (u64, u64)> = HashMap::new();
        let candidates = self
            .segments
            .iter()
            .map(|Segment(h, n)| (h, *n, self.generation))
            .chain(self.retained.iter().map(|Retained(h, n, g)| (h, *n, *g)));
        for (hash, stored, last) in candidates {
            if named.contains(hash.as_str()) {
                continue;
            }
            let entry = newest.entry(hash).or_insert((stored, last));
            entry.1 = entry.1.max(last);
        }
        let (mut retained, mut dropped) = (Vec::new(), Vec::new());
        for (hash, (stored, last)) in newest {
            if last + keep > generation {
                retained.push(Retained(hash.to_string(), stored, last));
            } else {
                dropped.push(hash.to_string());
            }
        }
        retained.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        dropped.sort();
        (retained, dropped)
    }
}

/// Parses a manifest body; anything wrong is said in terms of the object it came from.
pub fn read(bytes: &[u8], url: &str) -> Result<Manifest> {
    Manifest::parse(bytes).map_err(|e| match e {
        BadManifest::NewerFormat { .. } => crate::error::Fatal::Config(format!(
            "refusing the state {url}: {e}; the local ledger was left unchanged"
        ))
        .into(),
        BadManifest::Unreadable(_) => anyhow::anyhow!("refusing the state {url}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> String {
        blake3::hash(&[n]).to_hex().to_string()
    }

    fn manifest(generation: u64, segments: &[u8], retained: &[(u8, u64)]) -> Manifest {
        let segments: Vec<Segment> = segments.iter().map(|n| Segment(hash(*n), 10)).collect();
        let size = 64 << 10;
        let hashes: Vec<Hash> = segments
            .iter()
            .map(|s| Hash::from_hex(&s.0).unwrap())
            .collect();
        let size = size * hashes.len() as u64;
        let (checksum, content) = digests(64 << 10, size, &hashes, None);
        Manifest {
            format: FORMAT,
            generation,
            schema_version: 9,
            page_size: 4096,
            size,
            segment_size: 64 << 10,
            checksum,
            content,
            cost_tables: "c".into(),
            compression: COMPRESSION.into(),
            pushed_at: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            pushed_by: "host".into(),
            restored_from: None,
            integrity_checked: 1,
            segments,
            retained: retained
                .iter()
                .map(|(n, g)| Retained(hash(*n), 10, *g))
                .collect(),
        }
    }

    #[test]
    fn a_manifest_round_trips_and_a_changed_one_is_refused() {
        let m = manifest(3, &[1, 2, 3], &[(4, 2)]);
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
        assert_eq!(m.meta(&bytes).sha256, hex::encode(Sha256::digest(&bytes)));

        let mut other = m.clone();
        other.segments.swap(0, 1);
        let err = Manifest::parse(&other.to_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("is not the one of its segments"),
            "{err}"
        );
        let mut short = m.clone();
        short.size -= 1;
        assert!(Manifest::parse(&short.to_bytes()).is_err());
        let newer = br#"{"format": 3, "generation": 9}"#;
        assert_eq!(
            Manifest::parse(newer).unwrap_err().to_string(),
            "it is in format 3, but this meterbook reads formats 1 to 2; use a newer meterbook"
        );
    }

    #[test]
    fn segments_stay_while_a_kept_generation_names_them() {
        // Generation 5 is made of 1, 2, 3; generations 4 and 3 also named 4 and 5.
        let m = manifest(5, &[1, 2, 3], &[(4, 4), (5, 3)]);
        let next: Vec<Segment> = [1, 2, 6].iter().map(|n| Segment(hash(*n), 10)).collect();
        // Keeping 3 generations (4, 5, 6): 3 (named by 5) and 4 (by 4) stay, 5 (by 3) goes.
        let (retained, dropped) = m.succession(6, &next, 3);
        assert_eq!(
            retained,
            vec![Retained(hash(4), 10, 4), Retained(hash(3), 10, 5)]
        );
        assert_eq!(dropped, vec![hash(5)]);
        // Keeping only the newest: everything not in it goes.
        let (retained, mut dropped) = m.succession(6, &next, 1);
        assert!(retained.is_empty());
        dropped.sort();
        let mut expected = vec![hash(3), hash(4), hash(5)];
        expected.sort();
        assert_eq!(dropped, expected);
        // A segment named again is not retained: it is in the new generation.
        let again: Vec<Segment> = [4, 5, 3].iter().map(|n| Segment(hash(*n), 10)).collect();
        let (retained, dropped) = m.succession(6, &again, 3);
        assert_eq!(
            (retained.len(), dropped.len()),
            (2, 0),
            "{retained:?} {dropped:?}"
        );
    }
}
