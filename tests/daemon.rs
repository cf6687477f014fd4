//! `meterbook run --every`: it keeps running through failed cycles, serves `GET /health` (503 with
//! the reason after repeated failures, 200 after a good cycle), and stops cleanly on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::s3::{endpoint, Bucket};
use crate::util::TestEnv;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /health: (status code, body), or None while nothing listens.
fn health(port: u16) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// Polls /health until `want` holds, up to a deadline.
fn wait_for(port: u16, what: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((code, body)) = health(port) {
            if want(code, &body) {
                return (code, body);
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start(env: &TestEnv, source_bucket: &str, emu: &Emulator, port: u16) -> Child {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("meterbook"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("METERBOOK_LEDGER", &env.ledger)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .env("S3_BUCKET_NAME", source_bucket)
        .args([
            "--s3-endpoint-url",
            &endpoint(),
            "--s3-path-style",
            "run",
            "--every",
            "1s",
        ])
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

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
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

#[test]
fn failing_cycles_turn_health_to_503_and_the_process_keeps_running() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let port = free_port();
    let mut child = start(&env, "no-such-bucket-for-meterbook", &emu, port);
    let (code, body) = wait_for(port, "503", |code, _| code == 503);
    assert_eq!(code, 503);
    assert!(body.contains("cycles failed in a row"), "{body}");
    assert!(child.try_wait().unwrap().is_none(), "it keeps running");
    let status = sigterm(&mut child);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn good_cycles_are_healthy_and_sigterm_stops_cleanly() {
    let env = TestEnv::new();
    let emu = Emulator::start(&env, &[]);
    let bucket = Bucket::new("daemon");
    env.generate(&[
        "--subscriptions",
        "1",
        "--hours",
        "2",
        "--month",
        "2025-06",
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    bucket.upload_tree(&env.export(), "");
    let port = free_port();
    let mut child = start(&env, &bucket.name, &emu, port);
    let (code, body) = wait_for(port, "two good cycles", |code, body| {
        code == 200 && !body.contains(" 0 cycles") && !body.contains(" 1 cycles")
    });
    assert_eq!(code, 200, "{body}");
    let status = sigterm(&mut child);
    assert_eq!(status.code(), Some(0));
    // Cycles after the first sent nothing more.
    emu.assert_exactly_once();
    assert_eq!(emu.accepted().len(), 4);
}
