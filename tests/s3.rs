//! The test S3 server (moto, started by `scripts/test`) as the tests use it: its endpoint, and a
//! fresh bucket per test with a client to fill and inspect it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use crate::util::files_under;

pub fn endpoint() -> String {
    std::env::var("METERBOOK_TEST_S3_ENDPOINT")
        .expect("METERBOOK_TEST_S3_ENDPOINT is set; run the tests with scripts/test")
}

/// A fresh bucket of its own on the test server, and a client to fill and inspect it.
pub struct Bucket {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    /// Made through [`crate::util::TestEnv::with_bucket`].
    pub(crate) fn new(label: &str) -> Bucket {
        static MADE: AtomicU32 = AtomicU32::new(0);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(endpoint())
            .force_path_style(true)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "mb-{}-{}-{}-{nanos}",
            label.replace('_', "-"),
            std::process::id(),
            MADE.fetch_add(1, Ordering::Relaxed)
        );
        rt.block_on(client.create_bucket().bucket(&name).send())
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e:?}"));
        Bucket { rt, client, name }
    }

    /// `s3://<the bucket>`.
    pub fn url(&self) -> String {
        format!("s3://{}", self.name)
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        self.put_with_metadata(key, body, HashMap::new());
    }

    pub fn put_with_metadata(&self, key: &str, body: &[u8], metadata: HashMap<String, String>) {
        self.put_many(vec![(key.to_string(), body.to_vec())], Some(metadata));
    }

    fn put_many(&self, objects: Vec<(String, Vec<u8>)>, metadata: Option<HashMap<String, String>>) {
        let (client, bucket, metadata) = (&self.client, &self.name, &metadata);
        self.rt.block_on(async {
            let puts = futures::stream::iter(objects).map(|(key, body)| async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(body))
                    .set_metadata(metadata.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("putting {key}: {e:?}"));
            });
            puts.buffer_unordered(32).collect::<Vec<()>>().await;
        });
    }

    /// Uploads every file under `dir` with its relative path after `prefix`.
    pub fn upload(&self, dir: &Path, prefix: &str) {
        let objects = files_under(dir)
            .into_iter()
            .map(|path| {
                let rel = path.strip_prefix(dir).unwrap().to_str().unwrap();
                (format!("{prefix}{rel}"), std::fs::read(&path).unwrap())
            })
            .collect();
        self.put_many(objects, None);
    }

    pub fn exists(&self, key: &str) -> bool {
        self.rt
            .block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .is_ok()
    }

    pub fn etag(&self, key: &str) -> String {
        let head = self
            .rt
            .block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
        head.e_tag().unwrap().trim_matches('"').to_string()
    }

    /// The user metadata of `key`.
    pub fn metadata(&self, key: &str) -> HashMap<String, String> {
        self.rt
            .block_on(self.client.head_object().bucket(&self.name).key(key).send())
            .unwrap_or_else(|e| panic!("head {key}: {e:?}"))
            .metadata()
            .cloned()
            .unwrap_or_default()
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.name)
                    .key(key)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("deleting {key}: {e:?}"));
    }

    /// The body of `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        self.rt.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            out.body.collect().await.unwrap().to_vec()
        })
    }

    /// Every key in the bucket.
    pub fn keys(&self) -> Vec<String> {
        self.keys_under("")
    }

    /// Every key under `prefix`, sorted (all listing pages).
    pub fn keys_under(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.rt.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .prefix(prefix)
                .into_paginator()
                .send();
            let mut keys = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.unwrap_or_else(|e| panic!("listing {prefix}: {e:?}"));
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_string)),
                );
            }
            keys
        });
        keys.sort();
        keys
    }
}
