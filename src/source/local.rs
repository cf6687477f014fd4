//! A local folder laid out exactly like the export bucket: the quick start, tests and offline work.

use std::path::{Path, PathBuf};

use std::io::Read;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::{ObjectMeta, PathProblem, Scope, TooLarge, EXPORT_PREFIX};
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
    /// it returns false. What cannot be listed goes to `problem` with its path, and the walk goes
    /// on: a folder or entry that cannot be read, a name that is not UTF-8, a symbolic link (not
    /// followed: a link could count the same usage twice, and cannot loop), a `.json` that is not
    /// a regular file (reading a FIFO would never end).
    pub fn list(
        &self,
        scope: &Scope,
        mut found: impl FnMut(ObjectMeta) -> bool,
        mut problem: impl FnMut(PathProblem),
    ) -> Result<()> {
        let prefix = EXPORT_PREFIX.trim_end_matches('/');
        let mut walk = Walk {
            scope,
            found: &mut found,
            problem: &mut problem,
            segments: Vec::new(),
        };
        walk.folder(&self.root.join(prefix), prefix);
        Ok(())
    }

    /// Reads a file whole, or fails with [`TooLarge`] past `max_bytes` (it may have grown since
    /// it was listed) without reading on. An I/O error keeps its [`std::io::Error`] in the chain.
    pub fn read(&self, key: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let reading = || format!("reading {key}");
        let file = std::fs::File::open(self.root.join(key)).with_context(reading)?;
        let mut body = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut body)
            .with_context(reading)?;
        if body.len() as u64 > max_bytes {
            return Err(TooLarge {
                size: format!("more than {max_bytes} bytes"),
                limit: max_bytes,
            }
            .into());
        }
        Ok(body)
    }
}

/// One folder walk. Each folder is read once, its entries sorted by name; a file's metadata comes
/// from its folder entry (`fstatat`), without resolving its whole path again.
struct Walk<'a, F, P> {
    scope: &'a Scope,
    found: &'a mut F,
    problem: &'a mut P,
    /// Folder names below the export prefix down to the current folder.
    segments: Vec<String>,
}

impl<F: FnMut(ObjectMeta) -> bool, P: FnMut(PathProblem)> Walk<'_, F, P> {
    fn problem(&mut self, path: String, reason: String) {
        (self.problem)(PathProblem { path, reason });
    }

    /// Walks `dir`, whose key is `key`; false when `found` asked to stop.
    fn folder(&mut self, dir: &Path, key: &str) -> bool {
        let mut entries = Vec::new();
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) => {
                self.problem(key.to_string(), format!("folder cannot be listed: {e}"));
                return true;
            }
        };
        for entry in listing {
            match entry {
                Ok(entry) => match entry.file_name().into_string() {
                    Ok(name) => entries.push((name, entry)),
                    Err(name) => self.problem(
                        format!("{key}/{}", name.to_string_lossy()),
                        "name is not UTF-8, so it cannot be a key; not read".into(),
                    ),
                },
                Err(e) => self.problem(
                    key.to_string(),
                    format!("folder cannot be listed fully: {e}"),
                ),
            }
        }
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (name, entry) in entries {
            let entry_key = format!("{key}/{name}");
            let file_type = match entry.file_type() {
                Ok(t) => t,
                Err(e) => {
                    self.problem(entry_key, format!("cannot tell what this is: {e}"));
                    continue;
                }
            };
            let json = name.ends_with(".json");
            if file_type.is_dir() {
                self.segments.push(name);
                let go_on = !folder_in_scope(self.scope, &self.segments)
                    || self.folder(&entry.path(), &entry_key);
                self.segments.pop();
                if !go_on {
                    return false;
                }
            } else if file_type.is_symlink() {
                // A link to a file that is not a usage file is ignored like that file would be.
                let target = std::fs::metadata(entry.path());
                let wanted = match &target {
                    Ok(md) if md.is_dir() => {
                        self.segments.push(name.clone());
                        let in_scope = folder_in_scope(self.scope, &self.segments);
                        self.segments.pop();
                        in_scope
                    }
                    Ok(_) => json,
                    Err(_) => true,
                };
                if wanted {
                    let reason = match target {
                        Err(e) => {
                            format!("symbolic link whose target cannot be read ({e}); not followed")
                        }
                        Ok(_) => "symbolic link, not followed (a link could count the same usage \
                                  twice); put the file or folder itself here"
                            .into(),
                    };
                    self.problem(entry_key, reason);
                }
            } else if json && !file_type.is_file() {
                self.problem(
                    entry_key,
                    "not a regular file (a FIFO, socket or device); not read".into(),
                );
            } else if json {
                let md = match entry.metadata() {
                    Ok(md) => md,
                    Err(e) => {
                        self.problem(entry_key, format!("cannot read its metadata: {e}"));
                        continue;
                    }
                };
                let meta = ObjectMeta {
                    key: entry_key,
                    size: md.len(),
                    etag: None,
                    last_modified: md.modified().ok().map(DateTime::<Utc>::from),
                };
                if !(self.found)(meta) {
                    return false;
                }
            }
        }
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &Path, key: &str) -> (Vec<String>, Vec<PathProblem>) {
        let scope = Scope::default();
        let (mut found, mut problems) = (Vec::new(), Vec::new());
        let mut on_found = |m: ObjectMeta| {
            found.push(m.key);
            true
        };
        let mut on_problem = |p| problems.push(p);
        Walk {
            scope: &scope,
            found: &mut on_found,
            problem: &mut on_problem,
            segments: Vec::new(),
        }
        .folder(dir, key);
        (found, problems)
    }

    /// The error path of an unreadable folder, testable as root too (where permissions do not
    /// stop reads): a folder that cannot be listed is a problem naming it, and the walk goes on.
    #[test]
    fn a_folder_that_cannot_be_listed_is_a_problem_and_the_walk_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (found, problems) = walk(&dir.path().join("gone"), "omnistrate-metering/pg");
        assert!(found.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "omnistrate-metering/pg");
        assert!(
            problems[0].reason.contains("cannot be listed"),
            "{:?}",
            problems[0]
        );
    }

    #[test]
    fn links_and_special_files_are_problems_and_regular_files_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/sub.json"), b"[]").unwrap();
        std::fs::write(root.join("a/notes.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link-to-a")).unwrap();
        std::os::unix::fs::symlink(root.join("a/sub.json"), root.join("a/link.json")).unwrap();
        std::os::unix::fs::symlink(root.join("a/notes.txt"), root.join("a/link.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(root, root.join("a/loop")).unwrap();
        let fifo = std::ffi::CString::new(root.join("a/fifo.json").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let (found, problems) = walk(root, "x");
        assert_eq!(found, ["x/a/sub.json"]);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "x/a/fifo.json",
                "x/a/link.json",
                "x/a/loop",
                "x/dangling",
                "x/link-to-a"
            ]
        );
        assert!(problems[0].reason.contains("not a regular file"));
        assert!(problems[1].reason.contains("symbolic link, not followed"));
        assert!(problems[3].reason.contains("target cannot be read"));
    }
}
