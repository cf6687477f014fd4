//! Where usage comes from: the export layout (which keys are usage files, for which service key and
//! hour), the scope of a run, and the sources themselves (a local folder laid out like the bucket,
//! or the bucket).

pub mod local;
pub mod marker;
pub mod parse;
pub mod s3;

use std::fmt;

use chrono::{DateTime, Datelike, TimeZone, Utc};

use crate::config::SourceSpec;
use crate::period::Month;
use crate::s3::S3Settings;
use crate::source::parse::keep_or_count;

/// Every usage file and the completion marker live under this prefix.
pub const EXPORT_PREFIX: &str = "omnistrate-metering/";
/// Omnistrate's completion marker.
pub const MARKER_KEY: &str = "omnistrate-metering/last_success_export.json";

/// `SERVICE:ENVIRONMENT:PLAN`, the unit Omnistrate exports and marks complete.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub service: String,
    pub environment: String,
    pub plan: String,
}

impl ServiceKey {
    /// The key prefix under which this service key's files live, ending in `/`.
    pub fn prefix(&self) -> String {
        format!(
            "{EXPORT_PREFIX}{}/{}/{}/",
            self.service, self.environment, self.plan
        )
    }

    /// Does `SERVICE:ENVIRONMENT:PLAN` name only these three segments? A segment holding `:`
    /// would make two different folders (`a:b/c/d` and `a/b:c/d`) one service key.
    pub fn unambiguous(&self) -> bool {
        [&self.service, &self.environment, &self.plan]
            .iter()
            .all(|s| !s.contains(':'))
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.service, self.environment, self.plan)
    }
}

/// Where a usage file's records belong: its service key and usage hour (from the path, in UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageKey {
    pub service_key: ServiceKey,
    pub hour: DateTime<Utc>,
}

/// What a key in the export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A usage file in the export layout.
    Usage(UsageKey),
    /// A `.json` under a service key's prefix whose path does not follow the layout.
    BadLayout {
        service_key: ServiceKey,
        reason: String,
    },
    /// Anything else: not a usage file, ignored.
    Other,
}

/// Classifies an object key relative to the source root.
pub fn classify_key(key: &str) -> KeyKind {
    let Some(rest) = key.strip_prefix(EXPORT_PREFIX) else {
        return KeyKind::Other;
    };
    if !key.ends_with(".json") || key == MARKER_KEY {
        return KeyKind::Other;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() < 4 || parts[..3].iter().any(|p| p.is_empty()) {
        return KeyKind::Other;
    }
    let service_key = ServiceKey {
        service: parts[0].to_string(),
        environment: parts[1].to_string(),
        plan: parts[2].to_string(),
    };
    if !service_key.unambiguous() {
        return KeyKind::BadLayout {
            reason: format!(
                "folder names '{}' hold ':', which separates SERVICE:ENVIRONMENT:PLAN; \
                 such a service key would be ambiguous",
                parts[..3].join("/")
            ),
            service_key,
        };
    }
    if parts.len() != 8 || parts[7] == ".json" {
        return KeyKind::BadLayout {
            service_key,
            reason: format!(
                "path does not follow {EXPORT_PREFIX}SERVICE/ENVIRONMENT/PLAN/YYYY/MM/DD/HH/SUBSCRIPTION.json"
            ),
        };
    }
    match parse_hour(&parts[3..7]) {
        Some(hour) if (MIN_YEAR..=MAX_YEAR).contains(&hour.year()) => {
            KeyKind::Usage(UsageKey { service_key, hour })
        }
        Some(_) => KeyKind::BadLayout {
            service_key,
            reason: format!(
                "hour folder '{}' is outside the years {MIN_YEAR} to {MAX_YEAR} that periods can hold",
                parts[3..7].join("/")
            ),
        },
        None => KeyKind::BadLayout {
            service_key,
            reason: format!(
                "hour folder '{}' is not a valid UTC hour YYYY/MM/DD/HH",
                parts[3..7].join("/")
            ),
        },
    }
}

/// Usage hours are taken from these years: months start in 1970 (Unix time, and what `Month`
/// parses), and the month after the last one must still have a four-digit year, since periods
/// are compared as text.
const MIN_YEAR: i32 = 1970;
const MAX_YEAR: i32 = 9998;

fn parse_hour(parts: &[&str]) -> Option<DateTime<Utc>> {
    let widths = [4, 2, 2, 2];
    let mut numbers = [0u32; 4];
    for ((part, width), n) in parts.iter().zip(widths).zip(numbers.iter_mut()) {
        if part.len() != width || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *n = part.parse().ok()?;
    }
    let [y, m, d, h] = numbers;
    Utc.with_ymd_and_hms(y as i32, m, d, h, 0, 0).single()
}

/// Which service keys and months a run covers. Empty fields mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub service: Option<String>,
    pub environment: Option<String>,
    pub plan: Option<String>,
    pub from_month: Option<Month>,
    pub to_month: Option<Month>,
}

impl Scope {
    /// Does a service key path segment at `depth` (0 service, 1 environment, 2 plan) match?
    pub fn admits_segment(&self, depth: usize, segment: &str) -> bool {
        let wanted = match depth {
            0 => &self.service,
            1 => &self.environment,
            2 => &self.plan,
            _ => return true,
        };
        wanted.as_deref().is_none_or(|w| w == segment)
    }

    pub fn admits_service_key(&self, key: &ServiceKey) -> bool {
        self.admits_segment(0, &key.service)
            && self.admits_segment(1, &key.environment)
            && self.admits_segment(2, &key.plan)
    }

    pub fn admits_month(&self, month: Month) -> bool {
        self.from_month.is_none_or(|f| month >= f) && self.to_month.is_none_or(|t| month <= t)
    }

    /// Could any month of `year` be in scope?
    pub fn admits_year(&self, year: i32) -> bool {
        self.from_month.is_none_or(|f| year >= f.year)
            && self.to_month.is_none_or(|t| year <= t.year)
    }

    /// Is this key in scope? Keys that are not usage files never are.
    pub fn admits(&self, kind: &KeyKind) -> bool {
        match kind {
            KeyKind::Usage(u) => {
                self.admits_service_key(&u.service_key) && self.admits_month(Month::of(u.hour))
            }
            KeyKind::BadLayout { service_key, .. } => self.admits_service_key(service_key),
            KeyKind::Other => false,
        }
    }

    /// The service key, when all three parts are fixed.
    pub fn service_key(&self) -> Option<ServiceKey> {
        Some(ServiceKey {
            service: self.service.clone()?,
            environment: self.environment.clone()?,
            plan: self.plan.clone()?,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |p: &Option<String>| p.clone().unwrap_or_else(|| "*".into());
        write!(
            f,
            "{}:{}:{}",
            part(&self.service),
            part(&self.environment),
            part(&self.plan)
        )?;
        match (self.from_month, self.to_month) {
            (None, None) => Ok(()),
            (from, to) => write!(
                f,
                " months {}..{}",
                from.map(|m| m.to_string()).unwrap_or_default(),
                to.map(|m| m.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// A path under a source that could not be taken as a usage file, and why (it is not a file row:
/// a folder, a link, a file that could not be read or is over the size limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathProblem {
    /// Relative to the source root, `/`-separated.
    pub path: String,
    pub reason: String,
}

/// The path problems of one run: the first [`PROBLEMS_KEPT_PER_FILE`] kept, the rest counted.
#[derive(Debug, Default)]
pub struct PathProblems {
    pub kept: Vec<PathProblem>,
    pub more: u64,
}

impl PathProblems {
    pub fn push(&mut self, p: PathProblem) {
        keep_or_count(&mut self.kept, &mut self.more, p);
    }

    pub fn count(&self) -> u64 {
        self.kept.len() as u64 + self.more
    }
}

/// Where a listing running on another thread reports path problems.
pub type ProblemSink = std::sync::Arc<std::sync::Mutex<PathProblems>>;

/// A file over the size limit: not read (or not read further).
#[derive(Debug, thiserror::Error)]
#[error("{size}, over the limit of {limit} bytes (--max-file-bytes); not read")]
pub struct TooLarge {
    /// What is known of its size, in words ("70000000 bytes", "more than 67108864 bytes").
    pub size: String,
    pub limit: u64,
}

/// An object (or file) found by listing, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Relative to the source root, `/`-separated.
    pub key: String,
    pub size: u64,
    /// S3's ETag (quotes removed); `None` for local files.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_key_gives_service_key_and_hour() {
        let kind =
            classify_key("omnistrate-metering/pg/PROD/pt-HJSv20iWX0/2025/07/23/21/sub-I8Q.json");
        let KeyKind::Usage(u) = kind else {
            panic!("expected a usage key, got {kind:?}")
        };
        assert_eq!(u.service_key.to_string(), "pg:PROD:pt-HJSv20iWX0");
        assert_eq!(crate::period::format_utc(u.hour), "2025-07-23T21:00:00Z");
    }

    #[test]
    fn non_usage_keys_are_other() {
        for key in [
            "omnistrate-metering/last_success_export.json",
            "omnistrate-metering/pg/PROD/pt-1/2025/07/23/21/readme.txt",
            "elsewhere/pg/PROD/pt-1/2025/07/23/21/sub.json",
            "omnistrate-metering/notes.json",
        ] {
            assert_eq!(classify_key(key), KeyKind::Other, "{key}");
        }
    }

    #[test]
    fn a_bad_hour_folder_is_a_layout_problem() {
        for key in [
            "omnistrate-metering/pg/PROD/pt-1/2025/07/23/24/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/2025/02/30/01/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/2025/7/23/01/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/2025/07/23/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/1969/12/31/23/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/0000/01/01/00/sub.json",
            "omnistrate-metering/pg/PROD/pt-1/9999/12/31/23/sub.json",
            "omnistrate-metering/pg:PROD/x/pt-1/2025/07/23/01/sub.json",
            "omnistrate-metering/pg/PROD:x/pt-1/2025/07/23/01/sub.json",
        ] {
            assert!(
                matches!(classify_key(key), KeyKind::BadLayout { .. }),
                "{key}"
            );
        }
        let KeyKind::BadLayout { reason, .. } =
            classify_key("omnistrate-metering/pg/PROD/pt-1/1969/12/31/23/sub.json")
        else {
            unreachable!()
        };
        assert!(
            reason.contains("outside the years 1970 to 9998"),
            "{reason}"
        );
    }

    #[test]
    fn scope_filters_service_key_and_months() {
        let scope = Scope {
            plan: Some("pt-1".into()),
            from_month: Some("2025-06".parse().unwrap()),
            to_month: Some("2025-07".parse().unwrap()),
            ..Scope::default()
        };
        let key = |p: &str| classify_key(p);
        assert!(scope.admits(&key(
            "omnistrate-metering/pg/PROD/pt-1/2025/07/31/23/s.json"
        )));
        assert!(!scope.admits(&key(
            "omnistrate-metering/pg/PROD/pt-1/2025/08/01/00/s.json"
        )));
        assert!(!scope.admits(&key(
            "omnistrate-metering/pg/PROD/pt-2/2025/07/01/00/s.json"
        )));
        assert!(scope.admits_year(2025) && !scope.admits_year(2024));
    }
}

/// The completion marker is read whole; a few hundred bytes per service key.
const MARKER_MAX_BYTES: u64 = 16 << 20;

/// Files of a folder walk passed on at once: one hand-over between threads per batch, not per file.
const LIST_BATCH: usize = 512;

/// A place usage files are read from. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Source {
    Local(std::sync::Arc<local::LocalSource>),
    S3(std::sync::Arc<s3::S3Source>),
}

impl Source {
    /// Opens the source a spec names (an S3 source with a client made from `s3`).
    pub async fn open(spec: &SourceSpec, s3: &S3Settings) -> anyhow::Result<Source> {
        match spec {
            SourceSpec::Local(dir) => Ok(Source::Local(std::sync::Arc::new(
                local::LocalSource::new(dir)?,
            ))),
            SourceSpec::S3 { bucket, prefix } => {
                let client = crate::s3::client(s3).await;
                Ok(Source::S3(std::sync::Arc::new(s3::S3Source::new(
                    client, bucket, prefix,
                ))))
            }
        }
    }

    /// Where the files come from, as stored in the ledger's `source` column.
    pub fn describe(&self) -> String {
        match self {
            Source::Local(l) => l.root().display().to_string(),
            Source::S3(s) => s.describe(),
        }
    }

    /// How many reads to keep in flight when `requested` are asked for. A local read is work for
    /// this machine's CPUs (read, hash, parse on the blocking pool): more than two per CPU only
    /// adds threads, switching and memory. An S3 read mostly waits on the network.
    pub fn reads_in_flight(&self, requested: usize) -> usize {
        let wanted = match self {
            Source::Local(_) => {
                let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
                requested.min(2 * cpus)
            }
            Source::S3(_) => requested,
        };
        wanted.max(1)
    }

    /// Does listing honour [`s3::MonthFloors`]? A folder walk is cheap and always complete; an S3
    /// listing costs a request per 1,000 keys, so it starts at each service key's floor.
    pub fn lists_from_floors(&self) -> bool {
        matches!(self, Source::S3(_))
    }

    /// Sends every object that could be in `scope` to `tx`, in batches (an S3 page, or up to
    /// [`LIST_BATCH`] files of a folder walk), then returns.
    pub async fn list(
        &self,
        scope: &Scope,
        floors: s3::MonthFloors,
        tx: tokio::sync::mpsc::Sender<Vec<ObjectMeta>>,
        problems: ProblemSink,
    ) -> anyhow::Result<()> {
        match self {
            Source::Local(l) => {
                let (l, scope) = (l.clone(), scope.clone());
                tokio::task::spawn_blocking(move || {
                    let mut batch = Vec::with_capacity(LIST_BATCH);
                    l.list(
                        &scope,
                        |m| {
                            batch.push(m);
                            batch.len() < LIST_BATCH
                                || tx
                                    .blocking_send(std::mem::replace(
                                        &mut batch,
                                        Vec::with_capacity(LIST_BATCH),
                                    ))
                                    .is_ok()
                        },
                        |p| problems.lock().expect("not poisoned").push(p),
                    )?;
                    if !batch.is_empty() {
                        let _ = tx.blocking_send(batch);
                    }
                    Ok(())
                })
                .await?
            }
            Source::S3(s) => s.clone().list(scope.clone(), floors, tx).await,
        }
    }

    /// Reads the completion marker; `None` when there is none.
    pub async fn read_marker(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Source::Local(l) => {
                let l = l.clone();
                match tokio::task::spawn_blocking(move || l.read(MARKER_KEY, MARKER_MAX_BYTES))
                    .await?
                {
                    Ok(body) => Ok(Some(body)),
                    Err(e)
                        if e.downcast_ref::<std::io::Error>()
                            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Source::S3(s) => s.read_marker(MARKER_MAX_BYTES).await,
        }
    }

    /// Reads one object's body and hands it, with its metadata as of the read, to `process` on
    /// the blocking pool, so that hashing and parsing never hold up the task driving the reads. A
    /// local file is read and processed in one hand-over. Errors that must stop the run are
    /// [`crate::error::Fatal`].
    /// A body over `max_bytes` is not read on: the error is [`TooLarge`].
    pub async fn fetch<T: Send + 'static>(
        &self,
        meta: ObjectMeta,
        max_bytes: u64,
        process: impl FnOnce(ObjectMeta, Vec<u8>) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        match self {
            Source::Local(l) => {
                let l = l.clone();
                tokio::task::spawn_blocking(move || {
                    let body = l.read(&meta.key, max_bytes)?;
                    Ok(process(meta, body))
                })
                .await?
            }
            Source::S3(s) => {
                let (meta, body) = s.fetch(&meta, max_bytes).await?;
                Ok(tokio::task::spawn_blocking(move || process(meta, body)).await?)
            }
        }
    }
}
