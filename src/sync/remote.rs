//! The state objects on S3: their metadata, and the few operations sync needs (head, get, download
//! to a file, conditional upload of the state, upload of segments, list and delete). Every upload
//! of the state is conditional; what a refused condition means is decided by the caller.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;

use super::snapshot::io_error;
use super::StateLocation;
use crate::s3::{Op, S3Error, S3ErrorKind};

/// What the state object's metadata records (S3 user metadata, `x-amz-meta-meterbook-*`): enough
/// to decide from a HEAD whether the state moved on and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMeta {
    /// 1: the object is the whole ledger, zstd-compressed (meterbook before segments; no
    /// `meterbook-format`); 2: the object is a manifest naming segments (see `manifest`).
    pub format: u32,
    pub generation: u64,
    /// SHA-256 of what the object holds, uncompressed: the snapshot (format 1) or the manifest
    /// (format 2).
    pub sha256: String,
    /// Content fingerprint of the ledger (format 1: see `snapshot::Fingerprints`; format 2: the
    /// manifest's `content`).
    pub content: String,
    pub schema_version: i64,
    pub compression: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    pub pushed_at: DateTime<Utc>,
    pub pushed_by: String,
    /// Set when this generation was made by `sync restore`.
    pub restored_from: Option<u64>,
}

const PREFIX: &str = "meterbook-";

impl StateMeta {
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = [
            ("format", self.format.to_string()),
            ("generation", self.generation.to_string()),
            ("sha256", self.sha256.clone()),
            ("content", self.content.clone()),
            ("schema-version", self.schema_version.to_string()),
            ("compression", self.compression.clone()),
            ("size", self.size.to_string()),
            ("pushed-at", crate::period::format_utc(self.pushed_at)),
            ("pushed-by", self.pushed_by.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v))
        .collect();
        if let Some(n) = self.restored_from {
            m.insert(format!("{PREFIX}restored-from"), n.to_string());
        }
        m
    }

    /// Parses the metadata; the error names the missing or bad field.
    pub fn from_metadata(m: &HashMap<String, String>) -> std::result::Result<StateMeta, String> {
        let field = |k: &str| {
            m.get(&format!("{PREFIX}{k}"))
                .map(String::as_str)
                .ok_or_else(|| format!("its metadata has no {PREFIX}{k}"))
        };
        let number = |k: &str| {
            field(k)?
                .parse::<u64>()
                .map_err(|_| format!("its metadata {PREFIX}{k} is not a number"))
        };
        let pushed_at = DateTime::parse_from_rfc3339(field("pushed-at")?)
            .map_err(|_| format!("its metadata {PREFIX}pushed-at is not a time"))?
            .with_timezone(&Utc);
        let format = match m.get(&format!("{PREFIX}format")) {
            None => 1,
            Some(v) => v
                .parse()
                .map_err(|_| format!("its metadata {PREFIX}format is not a number"))?,
        };
        Ok(StateMeta {
            format,
            generation: number("generation")?,
            sha256: field("sha256")?.to_string(),
            content: field("content")?.to_string(),
            schema_version: number("schema-version")? as i64,
            compression: field("compression")?.to_string(),
            size: number("size")?,
            pushed_at,
            pushed_by: field("pushed-by")?.to_string(),
            restored_from: m
                .get(&format!("{PREFIX}restored-from"))
                .and_then(|v| v.parse().ok()),
        })
    }
}

/// An object as S3 describes it.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub etag: String,
    pub metadata: HashMap<String, String>,
    /// Stored (compressed) size.
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
}

fn to_utc(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// The condition of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `If-None-Match: *`: only if no object exists.
    Create,
    /// `If-Match: ETAG`: only if the object is still this version.
    Replace(String),
}

/// Why a conditional upload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 412 (or 409, a concurrent conditional write): someone else wrote in between.
    Changed,
    /// 404 on `If-Match`: the object is gone.
    Gone,
}

/// Where the state's bucket comes from, for messages.
const NAMED_BY: &str = "--state-url (or METERBOOK_STATE_URL, S3_BUCKET_NAME)";

/// A failed request on the state's bucket, explained (see [`crate::s3::error`]).
pub fn explain<E>(err: &SdkError<E, HttpResponse>, op: Op, bucket: &str, key: &str) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    crate::s3::explain(err, op, bucket, key, NAMED_BY)
}

/// HEAD; `None` when there is no such object.
pub async fn head(client: &Client, bucket: &str, key: &str) -> Result<Option<ObjectInfo>> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some(ObjectInfo {
            etag: out.e_tag().unwrap_or_default().to_string(),
            metadata: out.metadata().cloned().unwrap_or_default(),
            size: out.content_length().unwrap_or(0),
            last_modified: to_utc(out.last_modified()),
        })),
        Err(e) => match explain(&e, Op::Head, bucket, key) {
            e if e.kind == S3ErrorKind::NotFound => Ok(None),
            e => Err(e.into()),
        },
    }
}

/// GET; `None` when there is no such object.
async fn get(client: &Client, bucket: &str, key: &str) -> Result<Option<GetObjectOutput>> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some(out)),
        Err(e) => match explain(&e, Op::Get, bucket, key) {
            e if e.kind == S3ErrorKind::NotFound => Ok(None),
            e => Err(e.into()),
        },
    }
}

fn info_of(out: &GetObjectOutput) -> ObjectInfo {
    ObjectInfo {
        etag: out.e_tag().unwrap_or_default().to_string(),
        metadata: out.metadata().cloned().unwrap_or_default(),
        size: out.content_length().unwrap_or(0),
        last_modified: to_utc(out.last_modified()),
    }
}

/// What a state object's body is, told by its first byte: a manifest is JSON (`{`), a format-1
/// state is a zstd frame.
pub enum StateBody {
    /// The manifest's bytes (at most `limit`).
    Manifest(Vec<u8>),
    /// Anything else, written to the destination file.
    Other,
}

/// GET a state object: a manifest into memory (refused beyond `limit` bytes), anything else into
/// `dest`; `None` when there is no such object.
pub async fn get_state(
    client: &Client,
    bucket: &str,
    key: &str,
    dest: &Path,
    limit: usize,
) -> Result<Option<(ObjectInfo, StateBody)>> {
    let Some(out) = get(client, bucket, key).await? else {
        return Ok(None);
    };
    let info = info_of(&out);
    let url = format!("s3://{bucket}/{key}");
    let mut body = out.body;
    let first = body
        .try_next()
        .await
        .with_context(|| format!("downloading {url}"))?
        .unwrap_or_default();
    if first.first() == Some(&b'{') {
        let mut bytes = first.to_vec();
        while let Some(chunk) = body
            .try_next()
            .await
            .with_context(|| format!("downloading {url}"))?
        {
            bytes.extend_from_slice(&chunk);
            anyhow::ensure!(
                bytes.len() <= limit,
                "{url} is not a meterbook state: it starts like a manifest, but is larger than \
                 {limit} bytes"
            );
        }
        return Ok(Some((info, StateBody::Manifest(bytes))));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .with_context(|| format!("creating {}", dest.display()))?;
    let copied = async {
        file.write_all(&first).await?;
        let mut rest = body.into_async_read();
        tokio::io::copy(&mut rest, &mut file).await?;
        file.flush().await?;
        file.sync_all().await
    };
    copied
        .await
        .map_err(|e| io_error(e, dest, &format!("downloading {url} into")))?;
    Ok(Some((info, StateBody::Other)))
}

/// GET a small object into memory; `None` when there is no such object.
pub async fn get_bytes(client: &Client, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
    let Some(out) = get(client, bucket, key).await? else {
        return Ok(None);
    };
    let bytes = out
        .body
        .collect()
        .await
        .with_context(|| format!("downloading s3://{bucket}/{key}"))?;
    Ok(Some(bytes.to_vec()))
}

/// PUT an immutable object (a segment), unconditionally: a segment's key is its content, so
/// writing it again changes nothing but its age, which keeps it from a concurrent clean-up.
pub async fn put(client: &Client, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| explain(&e, Op::Put, bucket, key))?;
    Ok(())
}

/// PUT a body with a condition. The outer error is a failure to talk to S3; the inner one says
/// why the condition refused the upload. Returns the new ETag.
pub async fn upload(
    client: &Client,
    bucket: &str,
    key: &str,
    body: ByteStream,
    metadata: HashMap<String, String>,
    condition: &Condition,
) -> Result<std::result::Result<String, Refused>> {
    let request = client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .set_metadata(Some(metadata));
    let request = match condition {
        Condition::Create => request.if_none_match("*"),
        Condition::Replace(etag) => request.if_match(etag),
    };
    match request.send().await {
        Ok(out) => Ok(Ok(out.e_tag().unwrap_or_default().to_string())),
        Err(e) => match explain(&e, Op::Put, bucket, key) {
            e if e.kind == S3ErrorKind::Conflict => Ok(Err(Refused::Changed)),
            e if e.kind == S3ErrorKind::NotFound && matches!(condition, Condition::Replace(_)) => {
                Ok(Err(Refused::Gone))
            }
            e => Err(e.into()),
        },
    }
}

/// A file as an upload body.
pub async fn file_body(file: &Path) -> Result<ByteStream> {
    ByteStream::from_path(file)
        .await
        .with_context(|| format!("reading {}", file.display()))
}

/// The generation numbers kept under the state's generations prefix, ascending.
pub async fn list_generations(client: &Client, loc: &StateLocation) -> Result<Vec<u64>> {
    let prefix = loc.generations_prefix();
    let mut found: Vec<u64> = list(client, &loc.bucket, &prefix)
        .await?
        .iter()
        .filter_map(|o| o.key.strip_prefix(&prefix)?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// An object found by a listing.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Every object under `prefix`.
pub async fn list(client: &Client, bucket: &str, prefix: &str) -> Result<Vec<Listed>> {
    let mut found = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| explain(&e, Op::List, bucket, prefix))?;
        for object in page.contents() {
            if let Some(key) = object.key() {
                found.push(Listed {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0),
                    last_modified: to_utc(object.last_modified()),
                });
            }
        }
    }
    Ok(found)
}

/// What a store that ignores conditional writes is told (by `doctor`, and by the push that would
/// create a state there).
pub const IGNORES_CONDITIONS: &str = "the store ignores conditional writes (If-None-Match, \
     If-Match): two hosts could overwrite each other's state, and the lease would exclude nothing";

/// A key for a short-lived probe object of `what` beside `key` (deleted by whoever writes it).
pub fn probe_key(key: &str, what: &str) -> String {
    format!("{key}.probe-{what}-{:08x}", rand::random::<u32>())
}

/// Whether the store refuses what conditional writes must refuse (a second `If-None-Match: *`,
/// a wrong `If-Match`), probed with an object of its own beside `key`, deleted afterwards.
pub async fn honours_conditions(client: &Client, bucket: &str, key: &str) -> Result<bool> {
    let probe = probe_key(key, "conditions");
    let put = |condition: Condition| {
        let probe = probe.clone();
        async move {
            let body = ByteStream::from_static(b"meterbook: a probe of conditional writes");
            upload(client, bucket, &probe, body, HashMap::new(), &condition).await
        }
    };
    let answers = (
        put(Condition::Create).await,
        put(Condition::Create).await,
        put(Condition::Replace("\"not-the-etag\"".into())).await,
    );
    if let Err(e) = delete(client, bucket, &probe).await {
        tracing::warn!("could not delete the probe object {probe}: {e:#}");
    }
    Ok(matches!(
        (answers.0?, answers.1?, answers.2?),
        (Ok(_), Err(Refused::Changed), Err(Refused::Changed))
    ))
}

/// DELETE (unconditional).
pub async fn delete(client: &Client, bucket: &str, key: &str) -> Result<()> {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| explain(&e, Op::Delete, bucket, key))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_names_what_is_missing() {
        let meta = StateMeta {
            format: 2,
            generation: 12,
            sha256: "ab".into(),
            content: "cd".into(),
            schema_version: 1,
            compression: "zstd".into(),
            size: 4096,
            pushed_at: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            pushed_by: "host-a".into(),
            restored_from: Some(9),
        };
        let mut m = meta.to_metadata();
        assert_eq!(StateMeta::from_metadata(&m), Ok(meta));
        // A state of meterbook before segments has no format: 1.
        m.remove("meterbook-format");
        assert_eq!(StateMeta::from_metadata(&m).unwrap().format, 1);
        m.remove("meterbook-sha256");
        assert_eq!(
            StateMeta::from_metadata(&m),
            Err("its metadata has no meterbook-sha256".to_string())
        );
    }
}
