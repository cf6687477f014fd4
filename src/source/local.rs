//! A local folder laid out exactly like the export bucket: the quick start, tests and offline work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use walkdir::WalkDir;

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
    /// it returns false.
    pub fn list(&self, scope: &Scope, mut found: impl FnMut(ObjectMeta) -> bool) -> Result<()> {
        let base = self.root.join(EXPORT_PREFIX.trim_end_matches('/'));
        let walker = WalkDir::new(&base)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| !e.file_type().is_dir() || folder_in_scope(scope, e.path(), &base));
        for entry in walker {
            let entry = entry.with_context(|| format!("listing {}", base.display()))?;
            if !entry.file_type().is_file() || entry.path().extension().is_none_or(|x| x != "json")
            {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .expect("walked paths are under the root");
            let Some(key) = key_of(rel) else { continue };
            let md = entry
                .metadata()
                .with_context(|| format!("reading metadata of {}", entry.path().display()))?;
            let meta = ObjectMeta {
                key,
                size: md.len(),
                etag: None,
                last_modified: md.modified().ok().map(DateTime::<Utc>::from),
            };
            if !found(meta) {
                break;
            }
        }
        Ok(())
    }

    pub fn read(&self, key: &str) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.root.join(key))
    }
}

/// A `/`-separated key from a relative path; `None` for a name that is not UTF-8.
fn key_of(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Prunes folders by the scope: depth 1-3 are service, environment and plan; 4 and 5 year and
/// month. Folders whose names do not parse are kept so that their files are reported.
fn folder_in_scope(scope: &Scope, path: &Path, base: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(base) else {
        return true;
    };
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    let Some(last) = parts.last() else {
        return true;
    };
    match parts.len() {
        d @ 1..=3 => scope.admits_segment(d - 1, last),
        4 => last.parse().map_or(true, |y| scope.admits_year(y)),
        5 => format!("{}-{}", parts[3], last)
            .parse::<Month>()
            .map_or(true, |m| scope.admits_month(m)),
        _ => true,
    }
}
