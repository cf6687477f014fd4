//! Local files of a sync: private copies of the ledger (`VACUUM INTO`, for carrying local changes
//! over, and to fingerprint a ledger the way format 1 did), the format-1 state (one zstd-compressed
//! snapshot: unpacked and verified), and installing a checked file in place of the ledger (write
//! beside, fsync, rename, fsync the folder). Temporary files live beside the ledger (same file
//! system, so the final rename is atomic) and are removed when dropped, on every path: a temporary
//! SQLite file with the journal and log files SQLite may have left beside it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tempfile::TempPath;

use super::segments::zero_volatile_header;
use crate::ledger::{check_snapshot, checkpoint, DiskFull, Ledger, SnapshotFacts, SnapshotProblem};

/// The compression of a format-1 state.
pub const COMPRESSION: &str = "zstd";

/// Two digests of a snapshot file, from one read: format 1's checksum and content fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprints {
    /// SHA-256 of the bytes: what a format-1 state's metadata records.
    pub sha256: String,
    /// SHA-256 with the volatile header fields zeroed: equal for copies of the same content (a
    /// format-1 sync record's `content`).
    pub content: String,
    pub size: u64,
}

/// A temporary SQLite file. Dropped, it is removed together with the `-journal`, `-wal` and
/// `-shm` files SQLite may have left beside it (a copy that failed half-way leaves a journal).
pub struct TempDb(Option<TempPath>);

impl TempDb {
    pub fn path(&self) -> &Path {
        self.0.as_deref().expect("a temporary file until persisted")
    }

    /// Renames it to `to`. The empty `-wal` and `-shm` files a read-only connection to it may
    /// have left under its temporary name are removed.
    fn persist(mut self, to: &Path) -> Result<()> {
        let temp = self.0.take().expect("a temporary file until persisted");
        let from = temp.to_path_buf();
        temp.persist(to)
            .with_context(|| format!("replacing ledger {}", to.display()))?;
        remove_sidecars(&from);
        Ok(())
    }
}

/// Removes the `-journal`, `-wal` and `-shm` files SQLite may have left beside `path`.
fn remove_sidecars(path: &Path) {
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut side = path.as_os_str().to_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            remove_sidecars(&path);
        }
    }
}

/// A checked snapshot in a temporary file.
pub struct Snapshot {
    pub path: TempDb,
    pub fingerprints: Fingerprints,
    pub facts: SnapshotFacts,
}

/// Copies the ledger with `VACUUM INTO` to a temporary file beside it and checks the copy.
pub fn take(ledger: &Ledger) -> Result<Snapshot> {
    let path = TempDb(Some(temp_beside(ledger.path(), "snapshot")?));
    ledger.snapshot_into(path.path())?;
    let facts = check_snapshot(path.path(), true).map_err(|problem| {
        anyhow::anyhow!(
            "the copy of ledger {} failed its check: {problem}; nothing was changed",
            ledger.path().display()
        )
    })?;
    let fingerprints = fingerprint(path.path())?;
    Ok(Snapshot {
        path,
        fingerprints,
        facts,
    })
}

/// Reads a file once and returns its digests.
pub fn fingerprint(path: &Path) -> Result<Fingerprints> {
    let mut raw = Sha256::new();
    let mut content = Sha256::new();
    let mut size = 0u64;
    read_in_pieces(path, 1 << 20, |piece| {
        raw.update(piece);
        if size < 100 {
            let mut head = piece.to_vec();
            zero_volatile_header(&mut head, size);
            content.update(&head);
        } else {
            content.update(piece);
        }
        size += piece.len() as u64;
        Ok(())
    })?;
    Ok(Fingerprints {
        sha256: hex::encode(raw.finalize()),
        content: hex::encode(content.finalize()),
        size,
    })
}

/// Reads a file from its start, handing it to `each` in pieces of at most `piece` bytes.
pub fn read_in_pieces(
    path: &Path,
    piece: usize,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; piece];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n])?;
    }
}

/// Why a downloaded state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("its compression '{0}' is unknown to this meterbook")]
    UnknownCompression(String),
    #[error("it does not decompress ({0})")]
    Undecodable(String),
    #[error("its SHA-256 is {actual}, but its metadata says {expected}")]
    Checksum { expected: String, actual: String },
    #[error("{0}")]
    Snapshot(#[from] SnapshotProblem),
}

/// Decompresses a downloaded format-1 state into a temporary file beside `beside`, and checks it
/// against its recorded SHA-256, with `PRAGMA integrity_check` and for its schema version. The outer
/// error is a local failure (disk); the inner one is a refusal of the state itself.
pub fn unpack(
    compressed: &Path,
    compression: &str,
    expected_sha256: &str,
    beside: &Path,
) -> Result<std::result::Result<Snapshot, Refusal>> {
    if compression != COMPRESSION {
        return Ok(Err(Refusal::UnknownCompression(compression.to_string())));
    }
    let out = TempDb(Some(temp_beside(beside, "pulled")?));
    let input =
        File::open(compressed).with_context(|| format!("reading {}", compressed.display()))?;
    let file =
        File::create(out.path()).with_context(|| format!("creating {}", out.path().display()))?;
    let mut writer = BufWriter::new(file);
    let decoded = zstd::Decoder::new(input).and_then(|mut d| std::io::copy(&mut d, &mut writer));
    if let Err(e) = decoded {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return Err(io_error(e, out.path(), "unpacking the state into"));
        }
        return Ok(Err(Refusal::Undecodable(e.to_string())));
    }
    let file = writer
        .into_inner()
        .map_err(|e| io_error(e.into_error(), out.path(), "unpacking the state into"))?;
    file.sync_all()
        .map_err(|e| io_error(e, out.path(), "unpacking the state into"))?;
    let fingerprints = fingerprint(out.path())?;
    if fingerprints.sha256 != expected_sha256 {
        return Ok(Err(Refusal::Checksum {
            expected: expected_sha256.to_string(),
            actual: fingerprints.sha256,
        }));
    }
    Ok(match check_snapshot(out.path(), true) {
        Ok(facts) => Ok(Snapshot {
            path: out,
            fingerprints,
            facts,
        }),
        Err(problem) => Err(problem.into()),
    })
}

/// A temporary SQLite file beside `ledger`, for a file being assembled or unpacked.
pub fn temp_db_beside(ledger: &Path, what: &str) -> Result<TempDb> {
    Ok(TempDb(Some(temp_beside(ledger, what)?)))
}

/// Replaces the ledger with a checked snapshot: empties the old ledger's write-ahead log first
/// (a stale log must never be replayed onto the new file), renames, removes the old `-wal` and
/// `-shm` files, and syncs the folder.
pub fn install(snapshot: TempDb, ledger: &Path) -> Result<()> {
    if ledger.exists() {
        checkpoint(ledger)?;
    }
    File::open(snapshot.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", snapshot.path().display()))?;
    snapshot.persist(ledger)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = ledger.as_os_str().to_os_string();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", Path::new(&side).display()))
            }
            _ => {}
        }
    }
    sync_parent(ledger)
}

/// Writes a small file atomically: beside, fsync, rename, fsync the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_beside(path, "tmp")?;
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    written.map_err(|e| io_error(e, &tmp, "writing"))?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    sync_parent(path)
}

/// An empty temporary file beside `path`, named after it (creating the folder if needed).
pub fn temp_beside(path: &Path, what: &str) -> Result<TempPath> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_error(e, dir, "creating folder"))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let file = tempfile::Builder::new()
        .prefix(&format!(".{name}.{what}-"))
        .tempfile_in(dir)
        .map_err(|e| io_error(e, dir, "creating a temporary file in"))?;
    Ok(file.into_temp_path())
}

/// Maps "no space left" to [`DiskFull`], anything else to an I/O error naming the file.
pub fn io_error(e: std::io::Error, path: &Path, doing: &str) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        return DiskFull {
            path: path.display().to_string(),
        }
        .into();
    }
    anyhow::Error::new(e).context(format!("{doing} {}", path.display()))
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_fingerprint_ignores_only_the_volatile_header_fields() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let mut bytes: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        bytes[25] ^= 0xff;
        bytes[42] ^= 0xff;
        bytes[99] ^= 0xff;
        std::fs::write(&b, &bytes).unwrap();
        let (fa, fb) = (fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        assert_ne!(fa.sha256, fb.sha256);
        assert_eq!(fa.content, fb.content);
        bytes[200] ^= 0xff;
        std::fs::write(&b, &bytes).unwrap();
        assert_ne!(fa.content, fingerprint(&b).unwrap().content);
        assert_eq!(fa.size, 300);
    }
}
