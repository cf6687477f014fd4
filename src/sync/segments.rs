//! The ledger file as segments: fixed-size, page-aligned slices of the file (the last one
//! shorter), each stored on S3 compressed under the BLAKE3 hash of its bytes. This module cuts a
//! stream of pages into segments and hashes them, derives the whole file's checksum and content
//! fingerprint from the segment hashes, compresses and verifies segments, and keeps the local
//! files a sync works with: the spool of compressed segments a push uploads, and the file a pull
//! assembles.
//!
//! The whole-file digests are BLAKE3 over a short header and the ordered segment hashes (a hash
//! tree of one level): `checksum` over the hashes of the bytes as they are, `content` with
//! SQLite's volatile header fields of page 1 zeroed first (the file change counter, schema
//! cookie, version fields), so that it tells whether the content changed, not whether SQLite
//! rewrote its counters. Both depend on the segment size, which the manifest records.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use tempfile::TempPath;

use super::snapshot::{io_error, read_in_pieces, temp_beside};

/// A segment's hash: BLAKE3 of its uncompressed bytes.
pub type Hash = blake3::Hash;

/// zstd level 3: per 512 KiB segment, SQLite pages of usage compress about 10:1 at several
/// hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

/// Header bytes of page 1 that SQLite changes without the content changing (file change counter,
/// schema cookie, version-valid-for and SQLite version numbers); the content fingerprint ignores
/// them.
const VOLATILE_HEADER: [std::ops::Range<usize>; 3] = [24..28, 40..44, 92..100];

/// The smallest and largest segment sizes: a multiple of every SQLite page size (at most 64 KiB),
/// and small enough to be held in memory a few at a time.
pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
pub const MAX_SEGMENT_SIZE: u64 = 64 << 20;

/// Checks a segment size: a power of two between [`MIN_SEGMENT_SIZE`] and [`MAX_SEGMENT_SIZE`],
/// so that segments always start and end on page boundaries.
pub fn check_segment_size(bytes: u64) -> std::result::Result<u64, String> {
    if bytes.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "a segment size must be a power of two from 64KiB to 64MiB (e.g. 256KiB, 1MiB), not \
             {bytes} bytes"
        ))
    }
}

/// The length of segment `index` of a file of `size` bytes.
pub fn segment_len(segment_size: u64, size: u64, index: usize) -> u64 {
    let start = index as u64 * segment_size;
    size.saturating_sub(start).min(segment_size)
}

/// How many segments a file of `size` bytes has.
pub fn segment_count(segment_size: u64, size: u64) -> usize {
    size.div_ceil(segment_size) as usize
}

/// A file's segment hashes and the digests derived from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub segment_size: u64,
    pub size: u64,
    pub hashes: Vec<Hash>,
    /// Over the bytes as they are: what an assembled file must match.
    pub checksum: String,
    /// With page 1's volatile header fields zeroed: whether the content changed.
    pub content: String,
}

/// BLAKE3 over `what`, the layout and the ordered segment hashes (the hash of the first segment
/// given separately, for the content fingerprint).
fn tree(what: &str, segment_size: u64, size: u64, first: Option<&Hash>, rest: &[Hash]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(format!("meterbook-state {what}\n").as_bytes());
    h.update(&segment_size.to_le_bytes());
    h.update(&size.to_le_bytes());
    for hash in first.into_iter().chain(rest) {
        h.update(hash.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The digests of a file with these segments; `first_content` is the hash of segment 0 with the
/// volatile header fields zeroed.
pub fn digests(
    segment_size: u64,
    size: u64,
    hashes: &[Hash],
    first_content: Option<&Hash>,
) -> (String, String) {
    let checksum = tree("checksum", segment_size, size, None, hashes);
    let content = tree(
        "content",
        segment_size,
        size,
        first_content,
        hashes.get(1..).unwrap_or_default(),
    );
    (checksum, content)
}

/// Zeroes the volatile header fields in `bytes`, a piece of the file starting at `offset`.
pub fn zero_volatile_header(bytes: &mut [u8], offset: u64) {
    for range in VOLATILE_HEADER {
        for i in range {
            if let Some(b) = (i as u64)
                .checked_sub(offset)
                .and_then(|j| bytes.get_mut(j as usize))
            {
                *b = 0;
            }
        }
    }
}

/// The hash of the first segment with page 1's volatile header fields zeroed.
pub fn first_content_hash(first: &[u8]) -> Hash {
    let mut head = first[..first.len().min(100)].to_vec();
    zero_volatile_header(&mut head, 0);
    let mut h = blake3::Hasher::new();
    h.update(&head);
    h.update(first.get(head.len()..).unwrap_or_default());
    h.finalize()
}

/// Cuts a stream of bytes (pages, or reads of a file) into segments, hashes each, and hands it
/// to a callback with its index and hash; [`Scanner::finish`] gives the [`Scan`].
pub struct Scanner<F: FnMut(usize, &[u8], &Hash) -> Result<()>> {
    segment_size: u64,
    buf: Vec<u8>,
    size: u64,
    hashes: Vec<Hash>,
    first_content: Option<Hash>,
    on_segment: F,
}

impl<F: FnMut(usize, &[u8], &Hash) -> Result<()>> Scanner<F> {
    pub fn new(segment_size: u64, on_segment: F) -> Scanner<F> {
        Scanner {
            segment_size,
            buf: Vec::with_capacity(segment_size as usize),
            size: 0,
            hashes: Vec::new(),
            first_content: None,
            on_segment,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let room = self.segment_size as usize - self.buf.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = later;
            if self.buf.len() == self.segment_size as usize {
                self.cut()?;
            }
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<()> {
        let hash = blake3::hash(&self.buf);
        if self.hashes.is_empty() {
            self.first_content = Some(first_content_hash(&self.buf));
        }
        (self.on_segment)(self.hashes.len(), &self.buf, &hash)?;
        self.size += self.buf.len() as u64;
        self.hashes.push(hash);
        self.buf.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Result<Scan> {
        if !self.buf.is_empty() {
            self.cut()?;
        }
        let (checksum, content) = digests(
            self.segment_size,
            self.size,
            &self.hashes,
            self.first_content.as_ref(),
        );
        Ok(Scan {
            segment_size: self.segment_size,
            size: self.size,
            hashes: self.hashes,
            checksum,
            content,
        })
    }
}

/// Scans a private file (one no other process writes) by reading it.
pub fn scan_file(
    path: &Path,
    segment_size: u64,
    on_segment: impl FnMut(usize, &[u8], &Hash) -> Result<()>,
) -> Result<Scan> {
    let mut scanner = Scanner::new(segment_size, on_segment);
    read_in_pieces(path, segment_size as usize, |piece| scanner.push(piece))?;
    scanner.finish()
}

/// Compresses a segment (one zstd frame, with zstd's own checksum).
pub fn compress(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    c.include_checksum(true)?;
    Ok(c.compress(bytes)?)
}

/// Why a downloaded segment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadSegment {
    #[error("it does not decompress ({0})")]
    Undecodable(String),
    #[error("it is {actual} bytes uncompressed, but the manifest says {expected}")]
    Length { expected: u64, actual: u64 },
    #[error("its BLAKE3 is {actual}, but the manifest says {expected}")]
    Hash { expected: String, actual: String },
}

/// Decompresses a stored segment and checks its length and hash against the manifest's.
pub fn unpack(
    stored: &[u8],
    len: u64,
    expected: &Hash,
) -> std::result::Result<Vec<u8>, BadSegment> {
    // One byte more than expected tells a longer segment from one of the right length.
    let bytes = zstd::bulk::decompress(stored, len as usize + 1)
        .map_err(|e| BadSegment::Undecodable(e.to_string()))?;
    if bytes.len() as u64 != len {
        return Err(BadSegment::Length {
            expected: len,
            actual: bytes.len() as u64,
        });
    }
    let actual = blake3::hash(&bytes);
    if actual != *expected {
        return Err(BadSegment::Hash {
            expected: expected.to_hex().to_string(),
            actual: actual.to_hex().to_string(),
        });
    }
    Ok(bytes)
}

/// Compressed segments written to a temporary file beside the ledger while its pages are read,
/// then uploaded from there: the read transaction ends before the network is used, and a disk
/// too full for the spool fails the push before anything is uploaded. Removed when dropped.
pub struct Spool {
    path: TempPath,
    file: File,
    len: u64,
    /// (hash, offset in the spool, stored length), in the order written.
    entries: Vec<(Hash, u64, u64)>,
}

impl Spool {
    pub fn beside(ledger: &Path) -> Result<Spool> {
        let path = temp_beside(ledger, "segments")?;
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Spool {
            path,
            file,
            len: 0,
            entries: Vec::new(),
        })
    }

    /// Compresses and appends a segment; returns its stored length.
    pub fn add(&mut self, hash: Hash, bytes: &[u8]) -> Result<u64> {
        let stored = compress(bytes)?;
        self.file
            .write_all(&stored)
            .map_err(|e| io_error(e, &self.path, "writing segments to"))?;
        self.entries.push((hash, self.len, stored.len() as u64));
        self.len += stored.len() as u64;
        Ok(stored.len() as u64)
    }

    /// Flushes the spool to disk; a full disk shows here at the latest.
    pub fn finish(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| io_error(e, &self.path, "writing segments to"))
    }

    /// The segments in the spool: (hash, stored length).
    pub fn entries(&self) -> impl Iterator<Item = (Hash, u64)> + '_ {
        self.entries.iter().map(|(h, _, len)| (*h, *len))
    }

    /// The bytes stored for entry `i`.
    pub fn read(&self, i: usize) -> Result<Vec<u8>> {
        let (_, offset, len) = self.entries[i];
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(buf)
    }

    /// Total stored bytes.
    pub fn stored_bytes(&self) -> u64 {
        self.len
    }
}

/// A new file being assembled from segments written in any order at their offsets; checked by
/// reading it back (see [`Assembled::verify`]).
pub struct Assembled {
    file: File,
    path: std::path::PathBuf,
}

impl Assembled {
    pub fn create(path: &Path) -> Result<Assembled> {
        let file = File::options()
            .read(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Assembled {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| io_error(e, &self.path, "assembling the state in"))
    }

    /// Syncs the file to disk, reads it back, and checks it against the manifest's digests.
    pub fn verify(self, segment_size: u64, checksum: &str, size: u64) -> Result<Option<String>> {
        self.file
            .sync_all()
            .map_err(|e| io_error(e, &self.path, "assembling the state in"))?;
        drop(self.file);
        let scan = scan_file(&self.path, segment_size, |_, _, _| Ok(()))?;
        Ok(if scan.size != size {
            Some(format!(
                "the assembled file is {} bytes, but the manifest says {size}",
                scan.size
            ))
        } else if scan.checksum != checksum {
            Some(format!(
                "the assembled file's checksum is {}, but the manifest says {checksum}",
                scan.checksum
            ))
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8], segment_size: u64) -> Scan {
        let mut s = Scanner::new(segment_size, |_, _, _| Ok(()));
        // Fed in odd pieces: the cuts do not depend on them.
        for piece in bytes.chunks(10_000) {
            s.push(piece).unwrap();
        }
        s.finish().unwrap()
    }

    #[test]
    fn segments_are_cut_at_fixed_offsets_and_hashed() {
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let s = scan(&bytes, 64 << 10);
        assert_eq!(s.size, 300_000);
        assert_eq!(s.hashes.len(), segment_count(64 << 10, 300_000));
        assert_eq!(s.hashes.len(), 5);
        assert_eq!(s.hashes[1], blake3::hash(&bytes[65_536..131_072]));
        assert_eq!(s.hashes[4], blake3::hash(&bytes[262_144..]));
        assert_eq!(segment_len(64 << 10, 300_000, 4), 300_000 - 262_144);
    }

    #[test]
    fn the_content_fingerprint_ignores_only_the_volatile_header_fields() {
        let mut bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let a = scan(&bytes, 64 << 10);
        bytes[25] ^= 0xff;
        bytes[42] ^= 0xff;
        bytes[99] ^= 0xff;
        let b = scan(&bytes, 64 << 10);
        assert_ne!(a.checksum, b.checksum);
        assert_eq!(a.content, b.content);
        bytes[100] ^= 0xff;
        assert_ne!(a.content, scan(&bytes, 64 << 10).content);
        bytes[150_000] ^= 0xff;
        let c = scan(&bytes, 64 << 10);
        assert_ne!(c.hashes[2], a.hashes[2]);
        assert_eq!(c.hashes[1], a.hashes[1]);
        // A different segment size is a different tree.
        assert_ne!(scan(&bytes, 128 << 10).checksum, c.checksum);
    }

    #[test]
    fn a_segment_is_used_only_with_its_length_and_hash() {
        let bytes = vec![7u8; 70_000];
        let hash = blake3::hash(&bytes);
        let stored = compress(&bytes).unwrap();
        assert!(stored.len() < 1000);
        assert_eq!(unpack(&stored, 70_000, &hash).unwrap(), bytes);
        assert!(matches!(
            unpack(&stored, 69_999, &hash),
            Err(BadSegment::Length { actual: 70_000, .. })
        ));
        assert!(matches!(
            unpack(&stored, 70_000, &blake3::hash(b"other")),
            Err(BadSegment::Hash { .. })
        ));
        assert!(matches!(
            unpack(b"not zstd", 70_000, &hash),
            Err(BadSegment::Undecodable(_))
        ));
    }

    #[test]
    fn segment_sizes_are_powers_of_two_in_range() {
        assert_eq!(check_segment_size(256 << 10), Ok(256 << 10));
        for bad in [0, 4096, 100_000, 128 << 20] {
            assert!(check_segment_size(bad).is_err(), "{bad}");
        }
    }
}
