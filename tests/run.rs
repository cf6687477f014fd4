//! `meterbook run` end to end against the S3 server and the Clazar emulator: the process is killed
//! at every step, and the next run (on the same host, or first on another host and then on the
//! crashed one) still ends with every amount accepted exactly once and every record in the
//! ledger, without an operator; a dead run's lease is taken over at once on its host; what a
//! host recorded by hand and never pushed is kept; two runs started at once.

use std::collections::BTreeMap;
use std::process::Output;

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::s3::{endpoint, Bucket};
use crate::util::{files_under, stderr_of, TestEnv};

/// An export on S3 (3 subscriptions, 6 hours of June 2025, marked complete) and an emulator.
struct Job {
    bucket: Bucket,
    emu: Emulator,
    records: i64,
    /// (contract, dimension) -> quantity, computed from the files here.
    expected: BTreeMap<(String, String), String>,
}

fn job(env: &TestEnv) -> Job {
    env.generate(&[
        "--subscriptions",
        "3",
        "--hours",
        "6",
        "--month",
        "2025-06",
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    let bucket = Bucket::new("run");
    let records = bucket.upload_tree(&env.export(), "");
    let mut sums: BTreeMap<(String, String), f64> = BTreeMap::new();
    for entry in files_under(&env.export().join("omnistrate-metering")) {
        if entry.ends_with("last_success_export.json") {
            continue;
        }
        let body: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        for r in body {
            let key = (
                r["externalPayerId"].as_str().unwrap().to_string(),
                r["dimension"].as_str().unwrap().to_string(),
            );
            *sums.entry(key).or_default() += r["value"].as_f64().unwrap();
        }
    }
    let expected = sums
        .into_iter()
        .map(|(k, v)| (k, format!("{}", v.floor() as u64)))
        .collect();
    let emu = Emulator::start(env, &[]);
    Job {
        bucket,
        emu,
        records,
        expected,
    }
}

/// `meterbook run` on the host `env` against the job's bucket, state and emulator.
fn run(env: &TestEnv, job: &Job, failpoint: Option<&str>, extra: &[&str]) -> Output {
    let mut cmd = env.cmd();
    cmd.env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .args(["--s3-endpoint-url", &endpoint(), "--s3-path-style", "run"])
        .args(["--source", &format!("s3://{}", job.bucket.name)])
        .args([
            "--state-url",
            &format!("s3://{}/meterbook/state/ledger.sqlite", job.bucket.name),
        ])
        // A lease far longer than any test: only a takeover can free a dead run's lease in time.
        .args([
            "--lease-seconds",
            "300",
            "--clazar-base-url",
            &job.emu.url(),
        ])
        .args(extra);
    if let Some(f) = failpoint {
        cmd.env("METERBOOK_FAILPOINT", f);
    }
    cmd.output().unwrap()
}

/// Every amount accepted exactly once, with the quantity the files add up to.
fn assert_all_accepted_once(job: &Job) {
    job.emu.assert_exactly_once();
    let accepted: BTreeMap<(String, String), String> = job
        .emu
        .accepted_quantities()
        .into_iter()
        .map(|(c, d, q)| ((c, d), q))
        .collect();
    assert_eq!(accepted, job.expected);
    assert_eq!(job.emu.accepted().len(), job.expected.len());
}

fn records_in(env: &TestEnv) -> i64 {
    env.count("SELECT COUNT(*) FROM usage_records")
}

/// Runs on `host` with `failpoint`, which must kill the run there.
fn killed_run(host: &TestEnv, job: &Job, failpoint: &str, extra: &[&str]) {
    let out = run(host, job, Some(failpoint), extra);
    assert_eq!(
        out.status.code(),
        None,
        "the failpoint {failpoint} should have killed the run: {}",
        stderr_of(&out)
    );
    assert!(
        stderr_of(&out).contains(&format!("failpoint {failpoint}")),
        "{}",
        stderr_of(&out)
    );
    job.emu.assert_exactly_once();
}

/// A run that must end with exit code 0 and every amount accepted exactly once; the first run
/// after a crash takes the dead run's lease over at once.
fn recovering_run(host: &TestEnv, job: &Job, takes_over: bool) {
    let out = run(host, job, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out).contains("taking over the lease at once"),
        takes_over,
        "{}",
        stderr_of(&out)
    );
    assert_all_accepted_once(job);
    assert_eq!(records_in(host), job.records);
}

/// A fresh host takes the state from S3: it has every record and sends nothing more.
fn a_fresh_host_finds_everything_done(job: &Job) -> TestEnv {
    let fresh = TestEnv::new();
    let before = job.emu.metering_requests();
    let out = run(&fresh, job, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(job.emu.metering_requests(), before);
    assert_all_accepted_once(job);
    assert_eq!(records_in(&fresh), job.records);
    fresh
}

/// Kills a run at `failpoint`, then (1) the same host runs again, and (2), with another job,
/// another host runs first and then the crashed one: every host converges by itself.
fn crash_then_recover(failpoint: &str, extra: &[&str]) {
    let host = TestEnv::new();
    let job = job(&host);
    killed_run(&host, &job, failpoint, extra);
    recovering_run(&host, &job, true);
    let _ = a_fresh_host_finds_everything_done(&job);

    let (host, second) = (TestEnv::new(), TestEnv::new());
    let job = self::job(&host);
    killed_run(&host, &job, failpoint, extra);
    recovering_run(&second, &job, true);
    recovering_run(&host, &job, false);
    let _ = a_fresh_host_finds_everything_done(&job);
}

#[test]
fn a_run_ingests_submits_and_pushes_and_the_next_sends_nothing() {
    let host = TestEnv::new();
    let job = job(&host);
    let out = run(&host, &job, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_all_accepted_once(&job);
    assert_eq!(records_in(&host), job.records);
    let requests = job.emu.metering_requests();
    let out = run(&TestEnv::new(), &job, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(job.emu.metering_requests(), requests);
    assert!(!stderr_of(&out).contains(SECRET));
}

#[test]
fn killed_during_ingest() {
    crash_then_recover("during-ingest", &["--batch-files", "2"]);
}

#[test]
fn killed_after_planning() {
    crash_then_recover("after-plan", &[]);
}

#[test]
fn killed_before_the_upload_that_precedes_sending() {
    crash_then_recover("before-upload:1", &[]);
}

#[test]
fn killed_after_the_upload_that_precedes_sending() {
    crash_then_recover("after-upload:1", &[]);
}

#[test]
fn killed_after_sending_before_recording_the_answer() {
    crash_then_recover("after-send", &[]);
}

#[test]
fn killed_before_the_final_upload() {
    crash_then_recover("before-upload:2", &[]);
}

#[test]
fn killed_after_the_final_upload() {
    crash_then_recover("after-upload:2", &[]);
}

#[test]
fn two_runs_at_once_one_works_the_other_stops_cleanly() {
    let (a, b) = (TestEnv::new(), TestEnv::new());
    let job = job(&a);
    // A slow first answer keeps the winner inside its lease while the other one starts.
    job.emu
        .faults(serde_json::json!([{"kind": "slow", "ms": 2000, "accept": true}]));
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| run(&a, &job, None, &[]));
        let tb = s.spawn(|| run(&b, &job, None, &[]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut codes = [out_a.status.code(), out_b.status.code()];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(4)],
        "a: {}\nb: {}",
        stderr_of(&out_a),
        stderr_of(&out_b)
    );
    let loser = if out_a.status.code() == Some(4) {
        &out_a
    } else {
        &out_b
    };
    assert!(
        stderr_of(loser).contains("another run holds the lease"),
        "{}",
        stderr_of(loser)
    );
    assert_all_accepted_once(&job);
}

/// `meterbook` on `host` against the test S3 server, outside `run` (no lease, no sync).
fn by_hand(host: &TestEnv, args: &[&str]) -> Output {
    host.cmd()
        .env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .args(["--s3-endpoint-url", &endpoint(), "--s3-path-style"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_submission_sent_by_hand_and_never_pushed_is_kept_after_another_host_pushed() {
    let host = TestEnv::new();
    let job = job(&host);
    let source = format!("s3://{}", job.bucket.name);
    let out = by_hand(&host, &["ingest", "--source", &source]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = by_hand(&host, &["submit", "--clazar-base-url", &job.emu.url()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_all_accepted_once(&job);
    let grants = host.dir.path().join("grants.csv");
    std::fs::write(&grants, "user,amount,start\nada,10,2025-06-01\n").unwrap();
    let grants = grants.display().to_string();
    let out = by_hand(&host, &["costs", "grants", "load", &grants]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));

    // Another host runs (with nothing due) and pushes a state that knows none of this.
    let second = TestEnv::new();
    let out = run(&second, &job, None, &["--start-month", "2025-07"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        second.count("SELECT COUNT(*) FROM submissions"),
        0,
        "the other host planned nothing"
    );

    // This host's next run keeps what it sent, sends nothing again, and pushes it.
    let requests = job.emu.metering_requests();
    let out = run(&host, &job, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("kept 3 submissions"), "{err}");
    assert!(err.contains("kept the cost tables changed here"), "{err}");
    assert_eq!(job.emu.metering_requests(), requests);
    assert_all_accepted_once(&job);

    // Every other host now knows it: a fresh one sends nothing and has the same lines.
    let fresh = a_fresh_host_finds_everything_done(&job);
    let accepted = "SELECT COUNT(*) FROM submission_lines WHERE status = 'accepted'";
    assert_eq!(fresh.count(accepted), job.expected.len() as i64);
    assert_eq!(fresh.count(accepted), host.count(accepted));
    assert_eq!(fresh.count("SELECT COUNT(*) FROM cost_grants"), 1);
}
