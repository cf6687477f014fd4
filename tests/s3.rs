//! The test S3 server (moto, started by `scripts/test`) as the tests use it: its endpoint, and a
//! fresh bucket per test with a client to fill it.

use std::path::Path;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use crate::util::files_under;

pub fn endpoint() -> String {
    std::env::var("METERBOOK_TEST_S3_ENDPOINT")
        .expect("METERBOOK_TEST_S3_ENDPOINT is set; run the tests with scripts/test")
}

/// A fresh bucket of its own on the test server, and a client to fill it.
pub struct Bucket {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    pub fn new(label: &str) -> Bucket {
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
        let name = format!("mb-{label}-{}-{nanos}", std::process::id());
        rt.block_on(client.create_bucket().bucket(&name).send())
            .unwrap_or_else(|e| panic!("creating bucket {name}: {e:?}"));
        Bucket { rt, client, name }
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        self.put_many(vec![(key.to_string(), body.to_vec())]);
    }

    pub fn put_many(&self, objects: Vec<(String, Vec<u8>)>) {
        let client = &self.client;
        let bucket = &self.name;
        self.rt.block_on(async {
            let puts = futures::stream::iter(objects).map(|(key, body)| async move {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(body))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("putting {key}: {e:?}"));
            });
            puts.buffer_unordered(32).collect::<Vec<()>>().await;
        });
    }

    /// Uploads every file under `dir` with its relative path after `prefix`; returns the number
    /// of records in the usage files uploaded (read here, independently of meterbook).
    pub fn upload_tree(&self, dir: &Path, prefix: &str) -> i64 {
        let mut objects = Vec::new();
        let mut records = 0;
        for path in files_under(dir) {
            let body = std::fs::read(&path).unwrap();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if !rel.ends_with("last_success_export.json") {
                let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
                records += parsed.len() as i64;
            }
            objects.push((format!("{prefix}{rel}"), body));
        }
        self.put_many(objects);
        records
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
            .unwrap();
        head.e_tag().unwrap().trim_matches('"').to_string()
    }
}
