//! `meterbook run` on a schedule: it keeps running through failed cycles, answers the health check
//! (GET and HEAD, `/health` and `/health/`: 503 after repeated failures with only the kind of
//! failure, 200 after a good cycle), and stops on SIGTERM with the last cycle's exit code. The
//! predecessor's container environment, unchanged, runs it that way.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::s3::{endpoint, Bucket};
use crate::util::{compose_env, files_under, TestEnv};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange: (status code, body), or None while nothing listens.
pub(crate) fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls GET /health until `want` holds, up to a deadline.
pub(crate) fn wait_for(port: u16, what: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((code, body)) = http(port, "GET", "/health") {
            if want(code, &body) {
                return (code, body);
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number of cycles a healthy answer reports ("ok: N cycles run, ...").
pub(crate) fn cycles(body: &str) -> u64 {
    body.strip_prefix("ok: ")
        .and_then(|b| b.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `meterbook run --every 1s` against `source_bucket` on the S3 server at `s3`, its health check
/// on 127.0.0.1:`port`.
pub(crate) fn start(
    env: &TestEnv,
    s3: &str,
    source_bucket: &str,
    emu: &Emulator,
    port: u16,
    secret: &str,
) -> Child {
    let mut cmd = env.std_cmd();
    cmd.env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", secret)
        .env("S3_BUCKET_NAME", source_bucket)
        .args(["--s3-endpoint-url", s3, "--s3-path-style"])
        .args(["--s3-max-attempts", "2", "run", "--every", "1s"])
        .args([
            "--healthcheck-port",
            &port.to_string(),
            "--healthcheck-bind",
            "127.0.0.1",
        ])
        .args(["--clazar-base-url", &emu.url(), "--lease-seconds", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap()
}

pub(crate) fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on a child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One month of usage (1 subscription, 2 hours of June 2025, marked complete) in a fresh bucket.
pub(crate) fn june_bucket(env: &TestEnv, plan: &str) -> Bucket {
    env.generate(&[
        "--subscriptions",
        "1",
        "--hours",
        "2",
        "--month",
        "2025-06",
        "--plan",
        plan,
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    let bucket = Bucket::new("daemon");
    bucket.upload_tree(&env.export(), "");
    bucket
}

#[test]
fn an_unreachable_s3_turns_health_to_503_and_sigterm_exits_with_the_failure() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let port = free_port();
    // Nothing listens there: every cycle fails to take the lease.
    let s3 = format!("http://127.0.0.1:{}", free_port());
    let mut child = start(&env, &s3, "export-bucket", &emu, port, SECRET);
    let (_, body) = wait_for(port, "503", |code, _| code == 503);
    // The kind of failure (the lease and state on S3), never the error's text.
    assert_eq!(body, "unhealthy: the last 3 failed (state)\n");
    assert!(child.try_wait().unwrap().is_none(), "it keeps running");
    assert_eq!(sigterm(&mut child).code(), Some(1));
}

#[test]
fn refused_credentials_are_reported_as_a_config_failure_without_naming_anything() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let bucket = june_bucket(&env, "pt-HJSv20iWX0");
    let port = free_port();
    let mut child = start(
        &env,
        &endpoint(),
        &bucket.name,
        &emu,
        port,
        "not-the-secret",
    );
    let (_, body) = wait_for(port, "503", |code, _| code == 503);
    assert_eq!(body, "unhealthy: the last 3 failed (config)\n");
    // The error itself names the client id, the authentication URL and the bucket: the health
    // check (on 0.0.0.0 by default) must not.
    for secret in [
        CLIENT_ID,
        bucket.name.as_str(),
        &emu.url(),
        "127.0.0.1",
        "s3://",
    ] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    assert_eq!(sigterm(&mut child).code(), Some(2), "the last cycle's code");
    assert!(emu.accepted().is_empty());
}

#[test]
fn good_cycles_are_healthy_and_sigterm_stops_cleanly() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let bucket = june_bucket(&env, "pt-HJSv20iWX0");
    let port = free_port();
    let mut child = start(&env, &endpoint(), &bucket.name, &emu, port, SECRET);
    let (code, body) = wait_for(port, "two good cycles", |code, body| {
        code == 200 && cycles(body) >= 2
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with(", the last one succeeded\n"), "{body}");
    assert_eq!(sigterm(&mut child).code(), Some(0));
    // Cycles after the first sent nothing more.
    emu.assert_exactly_once();
    assert_eq!(emu.accepted().len(), 4);
}

/// The quantities the predecessor's DIMENSION1 (`cpu_core_hours`) gives per contract, summed
/// here from the generated files.
fn cpu_core_hours(env: &TestEnv) -> BTreeMap<String, String> {
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    for path in files_under(&env.export().join("omnistrate-metering")) {
        if path.ends_with("last_success_export.json") {
            continue;
        }
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for r in records
            .iter()
            .filter(|r| r["dimension"] == "cpu_core_hours")
        {
            *sums
                .entry(r["externalPayerId"].as_str().unwrap().to_string())
                .or_default() += r["value"].as_f64().unwrap();
        }
    }
    sums.into_iter()
        .map(|(c, v)| (c, format!("{}", v.floor() as u64)))
        .collect()
}

#[test]
fn the_predecessors_container_environment_loops_and_answers_health_checks() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let plan = "pt-HJSv20iWX0";
    let bucket = june_bucket(&env, plan);
    let port = free_port();
    // `meterbook run` with no flags: only the compose file's environment (blank variables
    // included), PROCESSING_INTERVAL_SECONDS, and where this test's S3 and Clazar are.
    let mut cmd: Command = env.std_cmd();
    compose_env(&mut cmd, &bucket.name, plan);
    cmd.env("PROCESSING_INTERVAL_SECONDS", "1")
        .env("HEALTHCHECK_PORT", port.to_string())
        .env("METERBOOK_HEALTHCHECK_BIND", "127.0.0.1")
        .env("METERBOOK_S3_ENDPOINT_URL", endpoint())
        .env("METERBOOK_S3_PATH_STYLE", "true")
        .env("METERBOOK_CLAZAR_BASE_URL", emu.url())
        .env("METERBOOK_LEASE_SECONDS", "5")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let (_, body) = wait_for(port, "two good cycles", |code, body| {
        code == 200 && cycles(body) >= 2
    });
    assert!(body.ends_with(", the last one succeeded\n"), "{body}");
    for path in ["/health", "/health/"] {
        let (code, body) = http(port, "GET", path).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        assert!(body.starts_with("ok: "), "GET {path}: {body}");
        let (code, body) = http(port, "HEAD", path).unwrap();
        assert_eq!((code, body.as_str()), (200, ""), "HEAD {path}");
    }
    assert_eq!(http(port, "GET", "/metrics").unwrap().0, 404);
    assert_eq!(sigterm(&mut child).code(), Some(0));
    // DIMENSION1 only (formulas replace the base dimensions), each contract's month once.
    emu.assert_exactly_once();
    let sent: BTreeMap<String, String> = emu
        .accepted_quantities()
        .into_iter()
        .map(|(contract, dimension, quantity)| {
            assert_eq!(dimension, "cpu_core_hours");
            (contract, quantity)
        })
        .collect();
    assert_eq!(sent, cpu_core_hours(&env));
    assert!(bucket.exists(&format!("meterbook/state/pg/PROD/{plan}/ledger.sqlite")));
}
