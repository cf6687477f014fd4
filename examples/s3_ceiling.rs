//! The server's ceiling for `scripts/bench-s3`: the plainest fast client, fetching every object
//! under a prefix and discarding the bodies. It pipelines like meterbook (GETs start as listing
//! pages arrive) but does nothing with a body, so its rate is what the server can serve.
//!
//!   cargo run --release --example s3_ceiling -- ENDPOINT BUCKET PREFIX CONCURRENCY
//!
//! Prints one line: `objects=N bytes=B secs=S objects_per_sec=R`.

use std::time::Instant;

use aws_sdk_s3::config::{BehaviorVersion, Region};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, bucket, prefix, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: s3_ceiling ENDPOINT BUCKET PREFIX CONCURRENCY");
    };
    let concurrency: usize = concurrency.parse()?;
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);

    let started = Instant::now();
    let pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    let pages = futures::stream::unfold(pages, |mut pages| async move {
        pages.next().await.map(|page| (page, pages))
    });
    let keys = pages
        .map_ok(|page| {
            let keys: Vec<String> = page
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            futures::stream::iter(keys.into_iter().map(Ok::<_, anyhow::Error>))
        })
        .map_err(anyhow::Error::from)
        .try_flatten();
    let (objects, bytes) = keys
        .map_ok(|key| {
            let client = client.clone();
            async move {
                let resp = client.get_object().bucket(bucket).key(&key).send().await?;
                Ok::<_, anyhow::Error>(resp.body.collect().await?.into_bytes().len())
            }
        })
        .try_buffer_unordered(concurrency)
        .try_fold((0u64, 0u64), |(n, b), len| async move {
            Ok((n + 1, b + len as u64))
        })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "objects={objects} bytes={bytes} secs={secs:.2} objects_per_sec={:.0}",
        objects as f64 / secs
    );
    Ok(())
}
