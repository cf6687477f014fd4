//! `meterbook health`: asks the health check of a `meterbook run` on this host (the one that loops,
//! serving `GET /health`) whether it is healthy. It is the container image's `HEALTHCHECK`, since
//! the image carries no HTTP client of its own: exit 0 on `200`, 1 otherwise, with the answer's one
//! line (which names a kind of failure, never an identifier) on stdout.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::HealthArgs;
use crate::error::Outcome;

pub async fn run(args: &HealthArgs) -> Result<Outcome> {
    let url = format!("http://127.0.0.1:{}/health", args.healthcheck_port);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout.max(1)))
        .build()?;
    let answer = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    println!("{}", body.trim_end());
    if status.is_success() {
        Ok(Outcome::Success)
    } else {
        anyhow::bail!("{url} answered {status}")
    }
}
