//! `meterbook run` on a schedule: it keeps running through failed cycles, answers the health check
//! (GET and HEAD, `/health` and `/health/`: 503 after repeated failures with only the kind of
//! failure, 200 after a good cycle), and stops on SIGTERM with the last cycle's exit code. The
//! predecessor's container environment, unchanged, runs it that way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::emulator::CLIENT_ID;
use crate::util::{compose_vars, http, usage_sums, Running, TestCommand, TestEnv};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls GET /health until `want` holds, up to a deadline.
pub(crate) fn wait_for(port: u16, what: &str, want: impl Fn(u16, &str) -> bool) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((code, body)) = http(port, "GET", "/health", None) {
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

/// `meterbook run --every 1s` against `source_bucket`, its health check on 127.0.0.1:`port`.
pub(crate) fn run_every_second(env: &TestEnv, source_bucket: &str, port: u16) -> TestCommand {
    env.meterbook(["--s3-max-attempts", "2", "run", "--every", "1s"])
        .args(["--healthcheck-port", &port.to_string()])
        .args(["--healthcheck-bind", "127.0.0.1", "--lease-seconds", "5"])
        .env("S3_BUCKET_NAME", source_bucket)
}

/// Stops `run` with SIGTERM; it must exit with `code` within 30 s.
pub(crate) fn sigterm(run: Running, code: i32) {
    run.sigterm(Duration::from_secs(30)).expect_code(code);
}

/// One month of usage (1 subscription, 2 hours of June 2025, marked complete) in the test's
/// bucket.
pub(crate) fn june_in_bucket(env: &TestEnv, plan: &str) {
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
    env.bucket().upload(&env.export(), "");
}

#[test]
fn an_unreachable_s3_turns_health_to_503_and_sigterm_exits_with_the_failure() {
    let env = TestEnv::new().with_emulator(&[]);
    let port = free_port();
    // Nothing listens there: every cycle fails to take the lease.
    let s3 = format!("http://127.0.0.1:{}", free_port());
    let mut run = run_every_second(&env, "export-bucket", port)
        .s3_endpoint(&s3)
        .spawn();
    let (_, body) = wait_for(port, "503", |code, _| code == 503);
    // The kind of failure (the lease and state on S3), never the error's text.
    assert_eq!(body, "unhealthy: the last 3 failed (state)\n");
    assert!(run.is_running(), "it keeps running");
    sigterm(run, 1);
}

#[test]
fn refused_credentials_are_reported_as_a_config_failure_without_naming_anything() {
    let env = TestEnv::new().with_bucket("daemon").with_emulator(&[]);
    let (bucket, emu) = (env.bucket(), env.emulator());
    june_in_bucket(&env, "pt-HJSv20iWX0");
    let port = free_port();
    let run = run_every_second(&env, &bucket.name, port)
        .env("CLAZAR_CLIENT_SECRET", "not-the-secret")
        .spawn();
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
    // The last cycle's code.
    sigterm(run, 2);
    assert!(emu.accepted().is_empty());
}

#[test]
fn good_cycles_are_healthy_and_sigterm_stops_cleanly() {
    let env = TestEnv::new().with_bucket("daemon").with_emulator(&[]);
    june_in_bucket(&env, "pt-HJSv20iWX0");
    let port = free_port();
    let run = run_every_second(&env, &env.bucket().name, port).spawn();
    let (code, body) = wait_for(port, "two good cycles", |code, body| {
        code == 200 && cycles(body) >= 2
    });
    assert_eq!(code, 200, "{body}");
    assert!(body.ends_with(", the last one succeeded\n"), "{body}");
    sigterm(run, 0);
    // Cycles after the first sent nothing more.
    let emu = env.emulator();
    emu.assert_exactly_once();
    assert_eq!(emu.accepted().len(), 4);
}

/// The quantities the predecessor's DIMENSION1 (`cpu_core_hours`) gives per contract, summed
/// here from the generated files.
fn cpu_core_hours(env: &TestEnv) -> BTreeMap<String, String> {
    usage_sums(&env.export())
        .into_iter()
        .filter(|((_, dimension), _)| dimension == "cpu_core_hours")
        .map(|((contract, _), v)| (contract, format!("{}", v.floor() as u64)))
        .collect()
}

#[test]
fn the_predecessors_container_environment_loops_and_answers_health_checks() {
    let env = TestEnv::new().with_bucket("daemon").with_emulator(&[]);
    let (bucket, emu) = (env.bucket(), env.emulator());
    let plan = "pt-HJSv20iWX0";
    june_in_bucket(&env, plan);
    let port = free_port();
    // `meterbook run` with no flags: only the compose file's environment (blank variables
    // included), PROCESSING_INTERVAL_SECONDS, and where this test's S3 and Clazar are.
    let run = env
        .meterbook(["run"])
        .envs(compose_vars(&bucket.name, plan))
        .env("PROCESSING_INTERVAL_SECONDS", "1")
        .env("HEALTHCHECK_PORT", port.to_string())
        .env("METERBOOK_HEALTHCHECK_BIND", "127.0.0.1")
        .env("METERBOOK_LEASE_SECONDS", "5")
        .spawn();
    let (_, body) = wait_for(port, "two good cycles", |code, body| {
        code == 200 && cycles(body) >= 2
    });
    assert!(body.ends_with(", the last one succeeded\n"), "{body}");
    for path in ["/health", "/health/"] {
        let (code, body) = http(port, "GET", path, None).unwrap();
        assert_eq!(code, 200, "GET {path}: {body}");
        assert!(body.starts_with("ok: "), "GET {path}: {body}");
        let (code, body) = http(port, "HEAD", path, None).unwrap();
        assert_eq!((code, body.as_str()), (200, ""), "HEAD {path}");
    }
    // The health port serves the health check and the run's metrics, nothing else.
    let (code, body) = http(port, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("meterbook_cycles_total"), "{body}");
    assert_eq!(http(port, "GET", "/ledger", None).unwrap().0, 404);
    sigterm(run, 0);
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
