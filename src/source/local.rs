//! A local folder laid out exactly like the export bucket: the quick start, tests and offline work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::{ObjectMeta, Scope, EXPORT_PREFIX};
use crate::error::Fatal;
use crate::period::Month;

#[derive(Debug, Clone)]
pub struct LocalSource {
    /// The folder that holds `omnistrate-metering/`.
    root: PathBuf,
}

impl LocalSource {
    /// Accepts the folder that holds `omnistrate-metering/`, or that folder itself.
    pub fn new(dir: &Path) -> Result<LocalSource> {
        let dir = dir
            .canonicalize()
            .map_err(|e| Fatal::Config(format!("source folder {}: {e}", dir.display())))?;
        let prefix = EXPORT_PREFIX.trim_end_matches('/');
        let root = if dir.join(prefix).is_dir() {
            dir
        } else if dir.file_name().is_some_and(|n| n == prefix) {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        } else {
            return Err(Fatal::Config(format!(
                "source folder {} has no {prefix}/ folder; point --source at the folder that holds it",
                dir.display()
            ))
            .into());
        };
        Ok(LocalSource { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Lists every `.json` file under the export prefix that could be in `scope`, in key order,
    /// pruning folders of other service keys and months. Calls `found` for each; stops early when
    /// it returns false. Names that are not UTF-8 are skipped (they cannot be keys).
    pub fn list(&self, scope: &Scope, mut found: impl FnMut(ObjectMeta) -> bool) -> Result<()> {
        let prefix = EXPORT_PREFIX.trim_end_matches('/');
        let mut walk = Walk {
            scope,
            found: &mut found,
            segments: Vec::new(),
        };
        walk.folder(&self.root.join(prefix), prefix)?;
        Ok(())
    }

    pub fn read(&self, key: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.root.join(key))
    }
}

/// One folder walk. Each folder is read once, its entries sorted by name; a file's metadata comes
/// from its folder entry (`fstatat`), without resolving its whole path again.
struct Walk<'a, F> {
    scope: &'a Scope,
    found: &'a mut F,
    /// Folder names below the export prefix down to the current folder.
    segments: Vec<String>,
}

impl<F: FnMut(ObjectMeta) -> bool> Walk<'_, F> {
    /// Walks `dir`, whose key is `key`; false when `found` asked to stop.
    fn folder(&mut self, dir: &Path, key: &str) -> Result<bool> {
        let listing = || format!("listing {}", dir.display());
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(listing)? {
            let entry = entry.with_context(listing)?;
            if let Ok(name) = entry.file_name().into_string() {
                entries.push((name, entry));
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            let file_type = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            let entry_key = format!("{key}/{name}");
            if file_type.is_dir() {
                self.segments.push(name);
                let go_on = !folder_in_scope(self.scope, &self.segments)
                    || self.folder(&entry.path(), &entry_key)?;
                self.segments.pop();
                if !go_on {
                    return Ok(false);
                }
            } else if file_type.is_file() && name.ends_with(".json") {
                let md = entry
                    .metadata()
                    .with_context(|| format!("reading metadata of {}", entry.path().display()))?;
                let meta = ObjectMeta {
                    key: entry_key,
                    size: md.len(),
                    etag: None,
                    last_modified: md.modified().ok().map(DateTime::<Utc>::from),
                };
                if !(self.found)(meta) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Prunes folders by the scope: `segments` are the folder names below the export prefix; depth
/// 1-3 are service, environment and plan, 4 and 5 year and month. Folders whose names do not
/// parse are kept so that their files are reported.
fn folder_in_scope(scope: &Scope, segments: &[String]) -> bool {
    let Some(last) = segments.last() else {
        return true;
    };
    match segments.len() {
        d @ 1..=3 => scope.admits_segment(d - 1, last),
        4 => last.parse().map_or(true, |y| scope.admits_year(y)),
        5 => format!("{}-{}", segments[3], last)
            .parse::<Month>()
            .map_or(true, |m| scope.admits_month(m)),
        _ => true,
    }
}
