//! `meterbook run` end to end against the S3 server and the Clazar emulator: the process is killed
//! at every step, and the next run (on the same host, then on a fresh one) still ends with every
//! amount accepted exactly once and every record in the ledger; two runs started at once.

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
        .args(["--lease-seconds", "3", "--clazar-base-url", &job.emu.url()])
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

fn crash_then_recover(failpoint: &str, extra: &[&str]) {
    let host = TestEnv::new();
    let job = job(&host);
    let out = run(&host, &job, Some(failpoint), extra);
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

    // The same host runs again (waiting for the dead run's lease to expire).
    let out = run(&host, &job, None, &["--wait-for-lease"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_all_accepted_once(&job);
    assert_eq!(records_in(&host), job.records);

    // A fresh host takes the state from S3: it has every record and sends nothing more.
    let other = TestEnv::new();
    let before = job.emu.metering_requests();
    let out = run(&other, &job, None, &["--wait-for-lease"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(job.emu.metering_requests(), before);
    assert_all_accepted_once(&job);
    assert_eq!(records_in(&other), job.records);
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
