//! The export bucket on S3 (or an S3-compatible store): listing only the prefixes in scope, and
//! reading objects. A permanent error (the operator must fix something) stops the run; any other
//! (the SDK has already retried it) leaves that object for the next run (see [`crate::s3::error`]).
//!
//! Listing descends the layout `omnistrate-metering/SERVICE/ENV/PLAN/YYYY/MM/DD/` with delimiter
//! listings, pruning service keys and months out of scope, and lists each day in full, several
//! days at once. Every ListObjectsV2 call follows continuation tokens until S3 says there are no
//! more (never inferring the end from a page's size).

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::mpsc::Sender;

use super::{ObjectMeta, Scope, TooLarge, EXPORT_PREFIX, MARKER_KEY};
use crate::period::Month;
use crate::s3::{Op, S3Error, S3ErrorKind};

/// Delimiter listings and day listings in flight at once.
const LIST_CONCURRENCY: usize = 16;
/// Reading a body can fail after the response headers arrived (a dropped connection, a stalled
/// stream), which the SDK does not retry; the whole request is tried again this often.
const BODY_ATTEMPTS: u32 = 3;

#[derive(Debug)]
pub struct S3Source {
    client: Client,
    bucket: String,
    /// Either empty or ending in `/`; keys in the ledger are relative to it.
    prefix: String,
}

/// Per service key (`SERVICE:ENV:PLAN`), which months to list; a service key without an entry
/// is listed in full.
pub type MonthFloors = HashMap<String, MonthSelection>;

/// Months to list: every month from `from` on, and the older months in `also`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthSelection {
    pub from: Month,
    pub also: std::collections::BTreeSet<Month>,
}

impl MonthSelection {
    pub fn admits(&self, m: Month) -> bool {
        m >= self.from || self.also.contains(&m)
    }

    pub fn admits_year(&self, year: i32) -> bool {
        year >= self.from.year || self.also.iter().any(|m| m.year == year)
    }
}

/// What the folders below a prefix are, by how many segments below `omnistrate-metering/` the
/// prefix is; below a month's days (the hours) everything is listed in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Service,
    Environment,
    Plan,
    Year,
    Month,
    Day,
}

fn children_level(depth: usize) -> Option<Level> {
    [
        Level::Service,
        Level::Environment,
        Level::Plan,
        Level::Year,
        Level::Month,
        Level::Day,
    ]
    .get(depth)
    .copied()
}

impl S3Source {
    pub fn new(client: Client, bucket: &str, prefix: &str) -> S3Source {
        S3Source {
            client,
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
            .trim_end_matches('/')
            .to_string()
    }

    /// Sends every object under the export layout that could be in `scope` (and, per service key,
    /// in a month at or after its floor) to `tx`, a page at a time.
    pub async fn list(
        self: Arc<Self>,
        scope: Scope,
        floors: MonthFloors,
        tx: Sender<Vec<ObjectMeta>>,
    ) -> Result<()> {
        let lister = Arc::new(Lister {
            source: self,
            scope,
            floors,
            tx,
            permits: tokio::sync::Semaphore::new(LIST_CONCURRENCY),
        });
        lister.descend(Vec::new()).await
    }

    /// Reads one object; the metadata returned is the GET's own, so that the ETag recorded is the
    /// one of the body read even when the object was rewritten after listing. A body over
    /// `max_bytes` (by its Content-Length, or as it streams in) is [`TooLarge`]: not read on.
    pub async fn fetch(&self, meta: &ObjectMeta, max_bytes: u64) -> Result<(ObjectMeta, Vec<u8>)> {
        let key = format!("{}{}", self.prefix, meta.key);
        let mut attempt = 1;
        loop {
            let resp = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.explain(&e, Op::Get, &key))?;
            let fresh = ObjectMeta {
                key: meta.key.clone(),
                size: resp.content_length().map_or(meta.size, |n| n.max(0) as u64),
                etag: resp.e_tag().map(unquote).or_else(|| meta.etag.clone()),
                last_modified: resp.last_modified().and_then(to_utc).or(meta.last_modified),
            };
            if fresh.size > max_bytes {
                return Err(TooLarge {
                    size: format!("{} bytes", fresh.size),
                    limit: max_bytes,
                }
                .into());
            }
            match read_body(resp.body, max_bytes).await {
                Ok(body) => return Ok((fresh, body)),
                Err(BodyError::TooLarge) => {
                    return Err(TooLarge {
                        size: format!("more than {max_bytes} bytes"),
                        limit: max_bytes,
                    }
                    .into())
                }
                Err(BodyError::Stream(e)) if attempt < BODY_ATTEMPTS => {
                    tracing::debug!("reading s3://{}/{key}: {e}; trying again", self.bucket);
                    attempt += 1;
                }
                Err(BodyError::Stream(e)) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading the body of s3://{}/{key}", self.bucket)))
                }
            }
        }
    }

    /// Reads the completion marker; `None` when there is none.
    pub async fn read_marker(&self, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let meta = ObjectMeta {
            key: MARKER_KEY.to_string(),
            size: 0,
            etag: None,
            last_modified: None,
        };
        match self.fetch(&meta, max_bytes).await {
            Ok((_, body)) => Ok(Some(body)),
            Err(e)
                if e.downcast_ref::<S3Error>()
                    .is_some_and(|e| e.kind == S3ErrorKind::NotFound) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A failed request, explained (see [`crate::s3::error`]).
    fn explain<E>(&self, e: &SdkError<E>, op: Op, key: &str) -> S3Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        crate::s3::explain(e, op, &self.bucket, key, "--source (or S3_BUCKET_NAME)")
    }
}

enum BodyError {
    TooLarge,
    Stream(aws_sdk_s3::primitives::ByteStreamError),
}

/// A response body, chunk by chunk, stopping past `max_bytes`.
async fn read_body(
    mut body: aws_sdk_s3::primitives::ByteStream,
    max_bytes: u64,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.try_next().await.map_err(BodyError::Stream)? {
        if (out.len() + chunk.len()) as u64 > max_bytes {
            return Err(BodyError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

fn to_utc(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

/// One listing walk: the source, what is in scope, and where results go.
struct Lister {
    source: Arc<S3Source>,
    scope: Scope,
    floors: MonthFloors,
    tx: Sender<Vec<ObjectMeta>>,
    permits: tokio::sync::Semaphore,
}

/// A page of a delimiter listing: objects at this level and the folders below it.
struct Page {
    objects: Vec<ObjectMeta>,
    folders: Vec<String>,
}

impl Lister {
    /// Lists the folder named by `segments` below `omnistrate-metering/`. Levels above the day are
    /// listed with a delimiter to discover folders in scope; a day is listed in full.
    fn descend(self: &Arc<Self>, segments: Vec<String>) -> BoxFuture<'static, Result<()>> {
        let this = self.clone();
        async move {
            let prefix = format!("{EXPORT_PREFIX}{}", folder_path(&segments));
            let Some(level) = children_level(segments.len()) else {
                return this.list_all(&prefix).await;
            };
            let children = match this.fixed_segment(level) {
                Some(fixed) => vec![fixed],
                None => {
                    let mut children = Vec::new();
                    for page in this.list_level(&prefix).await? {
                        this.send(page.objects).await;
                        children.extend(page.folders);
                    }
                    children
                }
            };
            futures::stream::iter(children)
                .filter(|child| futures::future::ready(this.wanted(level, &segments, child)))
                .map(|child| {
                    let mut below = segments.clone();
                    below.push(child);
                    this.descend(below)
                })
                .buffer_unordered(LIST_CONCURRENCY)
                .try_collect::<()>()
                .await
        }
        .boxed()
    }

    /// The folder name the scope fixes at a level, so that it needs no discovery.
    fn fixed_segment(&self, level: Level) -> Option<String> {
        match level {
            Level::Service => self.scope.service.clone(),
            Level::Environment => self.scope.environment.clone(),
            Level::Plan => self.scope.plan.clone(),
            _ => None,
        }
    }

    /// Is the folder `child` below `segments` (at `level`) worth listing? Folders whose names do
    /// not parse are listed so that their `.json` files are reported as layout problems.
    fn wanted(&self, level: Level, segments: &[String], child: &str) -> bool {
        match level {
            Level::Service => self.scope.admits_segment(0, child),
            Level::Environment => self.scope.admits_segment(1, child),
            Level::Plan => self.scope.admits_segment(2, child),
            Level::Year => child.parse::<i32>().map_or(true, |y| {
                self.scope.admits_year(y) && self.floor(segments).is_none_or(|f| f.admits_year(y))
            }),
            Level::Month => format!("{}-{child}", segments[3])
                .parse::<Month>()
                .map_or(true, |m| {
                    self.scope.admits_month(m) && self.floor(segments).is_none_or(|f| f.admits(m))
                }),
            Level::Day => true,
        }
    }

    fn floor(&self, segments: &[String]) -> Option<&MonthSelection> {
        let key = segments.get(..3)?.join(":");
        self.floors.get(&key)
    }

    /// One delimiter listing of `prefix` (below the source's prefix), every page.
    async fn list_level(&self, prefix: &str) -> Result<Vec<Page>> {
        let mut pages = Vec::new();
        self.pages(prefix, Some("/"), |page| {
            pages.push(page);
            futures::future::ready(Ok(()))
        })
        .await?;
        Ok(pages)
    }

    /// Every object under `prefix`, sent on as each page arrives.
    async fn list_all(&self, prefix: &str) -> Result<()> {
        self.pages(prefix, None, |page| async move {
            self.send(page.objects).await;
            Ok(())
        })
        .await
    }

    /// ListObjectsV2 over `prefix`, following continuation tokens until S3 returns none.
    async fn pages<F, Fut>(&self, prefix: &str, delimiter: Option<&str>, mut each: F) -> Result<()>
    where
        F: FnMut(Page) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let source = &self.source;
        let full_prefix = format!("{}{prefix}", source.prefix);
        let mut token: Option<String> = None;
        loop {
            let resp = {
                let _permit = self.permits.acquire().await?;
                source
                    .client
                    .list_objects_v2()
                    .bucket(&source.bucket)
                    .prefix(&full_prefix)
                    .set_delimiter(delimiter.map(str::to_string))
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| source.explain(&e, Op::List, &full_prefix))?
            };
            let objects = resp
                .contents()
                .iter()
                .filter_map(|o| {
                    Some(ObjectMeta {
                        key: o.key()?.strip_prefix(&source.prefix)?.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: o.e_tag().map(unquote),
                        last_modified: o.last_modified().and_then(to_utc),
                    })
                })
                .collect();
            let folders = resp
                .common_prefixes()
                .iter()
                .filter_map(|p| p.prefix()?.strip_prefix(&full_prefix))
                .map(|p| p.trim_end_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .collect();
            token = resp.next_continuation_token().map(str::to_string);
            each(Page { objects, folders }).await?;
            if token.is_none() {
                return Ok(());
            }
        }
    }

    /// Passes on one page's objects.
    async fn send(&self, objects: Vec<ObjectMeta>) {
        if !objects.is_empty() {
            // A closed channel means the ingest stopped early; its own error says why.
            let _ = self.tx.send(objects).await;
        }
    }
}

fn folder_path(segments: &[String]) -> String {
    segments.iter().map(|s| format!("{s}/")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_discovered_down_to_days_then_listed_in_full() {
        assert_eq!(children_level(0), Some(Level::Service));
        assert_eq!(children_level(3), Some(Level::Year));
        assert_eq!(children_level(5), Some(Level::Day));
        assert_eq!(children_level(6), None);
        assert_eq!(folder_path(&["pg".into(), "PROD".into()]), "pg/PROD/");
    }
}
