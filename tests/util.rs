//! The test harness: a temporary workspace with a clean environment, the binary, and helpers to
//! write export trees and read the ledger directly (with rusqlite, not through meterbook).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use assert_cmd::Command;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub struct TestEnv {
    pub dir: TempDir,
    pub ledger: PathBuf,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ledger = dir.path().join("ledger.sqlite");
        TestEnv { dir, ledger }
    }

    /// The export tree root used by [`TestEnv::write_usage`] and [`TestEnv::generate`].
    pub fn export(&self) -> PathBuf {
        self.dir.path().join("export")
    }

    /// `meterbook` with a cleaned environment: only PATH, a HOME of its own, the ledger, and
    /// dummy AWS credentials, so that a developer's own variables cannot leak in.
    pub fn cmd(&self) -> Command {
        Command::from_std(self.std_cmd())
    }

    /// [`TestEnv::cmd`] as a `std::process::Command`, for processes a test runs concurrently.
    pub fn std_cmd(&self) -> StdCommand {
        let mut cmd = StdCommand::new(assert_cmd::cargo::cargo_bin("meterbook"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("METERBOOK_LEDGER", &self.ledger)
            .env("METERBOOK_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .current_dir(self.dir.path());
        cmd
    }

    /// `meterbook ingest` of the export tree.
    pub fn ingest(&self) -> std::process::Output {
        self.cmd()
            .args(["ingest", "--source"])
            .arg(self.export())
            .output()
            .unwrap()
    }

    /// Writes one file under the export tree.
    pub fn write_usage(&self, key: &str, body: &[u8]) -> PathBuf {
        let path = self.export().join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        path
    }

    /// Runs `scripts/gen-export.py` into the export tree.
    pub fn generate(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-export.py");
        let status = StdCommand::new("python3")
            .arg(script)
            .arg("--out")
            .arg(self.export())
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(status.success(), "gen-export.py failed");
    }

    /// The ledger, opened directly.
    pub fn db(&self) -> Connection {
        Connection::open(&self.ledger).expect("the ledger opens")
    }

    /// One integer from a query on the ledger.
    pub fn count(&self, sql: &str) -> i64 {
        self.db()
            .query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// The environment the predecessor's newest version gets from its Omnistrate compose file
/// (`omnistrate-compose.yaml`), as an operator fills it in for one plan: every variable is passed,
/// and the ones left blank arrive as empty strings. One custom dimension, as the compose file
/// requires (`DIMENSION1_*`); the test's own settings (S3 endpoint, Clazar emulator) come on top.
pub fn compose_env(cmd: &mut StdCommand, bucket: &str, plan: &str) {
    for (name, value) in [
        ("SERVICE_NAME", "pg"),
        ("ENVIRONMENT_TYPE", "PROD"),
        ("PLAN_ID", plan),
        ("CLAZAR_CLIENT_ID", crate::emulator::CLIENT_ID),
        ("CLAZAR_CLIENT_SECRET", crate::emulator::SECRET),
        ("CLAZAR_CLOUD", "aws"),
        ("AWS_S3_BUCKET_NAME", bucket),
        ("AWS_REGION", "us-east-1"),
        ("DIMENSION1_NAME", "cpu_core_hours"),
        ("DIMENSION1_FORMULA", "cpu_core_hours"),
        ("DIMENSION2_NAME", ""),
        ("DIMENSION2_FORMULA", ""),
        ("DIMENSION3_NAME", ""),
        ("DIMENSION3_FORMULA", ""),
        ("START_MONTH", ""),
        ("DRY_RUN", ""),
        ("LOG_LEVEL", ""),
    ] {
        cmd.env(name, value);
    }
}

/// A usage record as JSON, with the fields tests vary.
pub fn record(
    contract: Option<&str>,
    dimension: &str,
    value: serde_json::Value,
) -> serde_json::Value {
    let mut r = serde_json::json!({
        "timestamp": "2025-06-01T01:02:03Z",
        "subscriptionId": "sub-test",
        "customerId": "user-test",
        "instanceId": "instance-test",
        "podName": "pg-0",
        "hostName": "ip-10-0-0-1",
        "instanceType": "t4g.small",
        "dimension": dimension,
        "value": value,
        "pricePerUnit": 0.5,
    });
    if let Some(c) = contract {
        r["externalPayerId"] = c.into();
    }
    r
}

/// The key of a usage file in the export layout.
pub fn usage_key(plan: &str, hour: &str, subscription: &str) -> String {
    format!("omnistrate-metering/pg/PROD/{plan}/{hour}/{subscription}.json")
}

pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file under `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A zip archive holding one file `name` with `body`, deflated.
pub fn zip_of(name: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(
            name,
            zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated),
        )
        .unwrap();
        zip.write_all(body).unwrap();
        zip.finish().unwrap();
    }
    buf.into_inner()
}

/// Every file directly in `dir` (not below) with the SHA-256 of its bytes: two equal listings
/// mean no file was changed, created or removed there.
pub fn file_digests(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                hex::encode(Sha256::digest(std::fs::read(&p).unwrap())),
            )
        })
        .collect()
}
