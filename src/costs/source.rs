//! Finding billing files in a folder or under `s3://bucket[/prefix]`, and opening the CSV inside.
//!
//! Memory stays bounded whatever the file's size: a local zip is read in place through its
//! central directory (the zip crate needs `Read + Seek` for that) and its CSV entry is
//! decompressed as a stream. An S3 object is first spooled to an anonymous temporary file (the
//! compressed object, not its content) and then read the same way. Spooling rather than reading
//! local file headers straight off the HTTP body keeps the central directory's checks: a
//! truncated upload is reported as such, and entries written with data descriptors still work.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use super::BillingFileName;
use crate::config::SourceSpec;
use crate::s3::{explain, Op};
use crate::source::ObjectMeta;

/// Where the billing bucket's name comes from, for messages.
const NAMED_BY: &str = "--source (or METERBOOK_COSTS_SOURCE)";

/// A billing file found by listing, before it is read.
#[derive(Debug, Clone)]
pub struct BillingObject {
    pub meta: ObjectMeta,
    pub name: BillingFileName,
}

/// Where billing files are listed and read.
pub enum BillingSource {
    Local(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

impl BillingSource {
    pub async fn open(spec: &SourceSpec, s3: &crate::s3::S3Settings) -> Result<BillingSource> {
        Ok(match spec {
            SourceSpec::Local(dir) => BillingSource::Local(dir.clone()),
            SourceSpec::S3 { bucket, prefix } => BillingSource::S3 {
                client: crate::s3::client(s3).await,
                bucket: bucket.clone(),
                prefix: prefix.clone(),
            },
        })
    }

    /// As stored in the ledger's `source` column.
    pub fn describe(&self) -> String {
        match self {
            BillingSource::Local(dir) => dir.display().to_string(),
            BillingSource::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Every billing file, sorted by key. Where a month exists both zipped and plain, the zip wins.
    pub async fn list(&self) -> Result<Vec<BillingObject>> {
        let metas = match self {
            BillingSource::Local(dir) => list_local(dir)?,
            BillingSource::S3 {
                client,
                bucket,
                prefix,
            } => list_s3(client, bucket, prefix).await?,
        };
        let mut found: Vec<BillingObject> = metas
            .into_iter()
            .filter_map(|meta| {
                BillingFileName::parse(&meta.key).map(|name| BillingObject { meta, name })
            })
            .collect();
        found.sort_by(|a, b| a.meta.key.cmp(&b.meta.key));
        let zipped: Vec<(String, String)> = found
            .iter()
            .filter(|o| o.name.zipped)
            .map(|o| (o.name.account_id.clone(), o.name.month.to_string()))
            .collect();
        found.retain(|o| {
            let shadowed = !o.name.zipped
                && zipped.contains(&(o.name.account_id.clone(), o.name.month.to_string()));
            if shadowed {
                tracing::warn!(
                    "{}: the .csv.zip of the same month is read instead",
                    o.meta.key
                );
            }
            !shadowed
        });
        Ok(found)
    }

    /// A readable, seekable file with the object's bytes: the file itself, or an S3 object
    /// spooled to an anonymous temporary file that disappears when closed.
    pub async fn fetch(&self, meta: &ObjectMeta) -> Result<File> {
        match self {
            BillingSource::Local(dir) => {
                let path = dir.join(&meta.key);
                File::open(&path).with_context(|| format!("opening {}", path.display()))
            }
            BillingSource::S3 { client, bucket, .. } => {
                let what = || format!("reading s3://{bucket}/{}", meta.key);
                let mut body = client
                    .get_object()
                    .bucket(bucket)
                    .key(&meta.key)
                    .send()
                    .await
                    .map_err(|e| explain(&e, Op::Get, bucket, &meta.key, NAMED_BY))?
                    .body;
                let mut spool = tempfile::tempfile().context("creating a temporary file")?;
                while let Some(chunk) = body.try_next().await.with_context(what)? {
                    spool
                        .write_all(&chunk)
                        .context("writing a temporary file")?;
                }
                spool.seek(SeekFrom::Start(0))?;
                Ok(spool)
            }
        }
    }
}

fn list_local(dir: &Path) -> Result<Vec<ObjectMeta>> {
    if !dir.is_dir() {
        return Err(crate::error::Fatal::Config(format!(
            "{} is not a folder; pass --source DIR or --source s3://BUCKET[/PREFIX]",
            dir.display()
        ))
        .into());
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if BillingFileName::parse(&key).is_none() {
            continue;
        }
        let md = entry
            .metadata()
            .with_context(|| format!("reading {}", entry.path().display()))?;
        out.push(ObjectMeta {
            key,
            size: md.len(),
            etag: None,
            last_modified: md.modified().ok().map(DateTime::<Utc>::from),
        });
    }
    Ok(out)
}

async fn list_s3(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<ObjectMeta>> {
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| explain(&e, Op::List, bucket, prefix, NAMED_BY))?;
        for obj in page.contents() {
            let Some(key) = obj.key() else { continue };
            if BillingFileName::parse(key).is_none() {
                continue;
            }
            out.push(ObjectMeta {
                key: key.to_string(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                etag: obj.e_tag().map(|e| e.trim_matches('"').to_string()),
                last_modified: obj
                    .last_modified()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())),
            });
        }
    }
    Ok(out)
}

/// Runs `read` over the CSV of a billing file: the first `.csv` entry of a zip, streamed, or the
/// file itself. `Err` says why there is no CSV to read (not a zip, truncated, no CSV inside).
pub fn with_csv<T>(
    file: File,
    zipped: bool,
    read: impl FnOnce(&mut dyn Read) -> T,
) -> std::result::Result<T, String> {
    if !zipped {
        let mut buffered = std::io::BufReader::with_capacity(1 << 16, file);
        return Ok(read(&mut buffered));
    }
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a readable zip archive (truncated?): {e}"))?;
    let index = (0..archive.len()).find(|&i| {
        archive.by_index_data(i).is_ok_and(|entry| {
            entry.is_file() && entry.name_raw().to_ascii_lowercase().ends_with(b".csv")
        })
    });
    let Some(index) = index else {
        return Err("the zip archive holds no .csv file".into());
    };
    let mut entry = archive
        .by_index(index)
        .map_err(|e| format!("opening the CSV inside the zip archive: {e}"))?;
    Ok(read(&mut entry))
}
