//! `meterbook run` end to end against the S3 server and the Clazar emulator: the process is killed
//! at every step (between a push's segments and its manifest, and while it deletes old segments,
//! too), and the next run (on the same host, or first on another host and then on the
//! crashed one) still ends with every amount accepted exactly once and every record in the
//! ledger, without an operator; a dead run's lease is taken over at once on its host; what a
//! host recorded by hand and never pushed is kept; two runs started at once.

use std::collections::BTreeMap;

use crate::emulator::{Emulator, SECRET};
use crate::util::{usage_records, usage_sums, TestCommand, TestEnv};

/// An export on S3 (3 subscriptions, 6 hours of June 2025, marked complete) and an emulator.
struct Job {
    /// The first host; [`TestEnv::another_host`] makes the others.
    host: TestEnv,
    records: i64,
    /// (contract, dimension) -> quantity, computed from the files here.
    expected: BTreeMap<(String, String), String>,
}

impl Job {
    fn emu(&self) -> &Emulator {
        self.host.emulator()
    }
}

fn job() -> Job {
    let host = TestEnv::new().with_bucket("run").with_emulator(&[]);
    host.generate(&[
        "--subscriptions",
        "3",
        "--hours",
        "6",
        "--month",
        "2025-06",
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    host.bucket().upload(&host.export(), "");
    let records = usage_records(&host.export()).len() as i64;
    let expected = usage_sums(&host.export())
        .into_iter()
        .map(|(k, v)| (k, format!("{}", v.floor() as u64)))
        .collect();
    Job {
        host,
        records,
        expected,
    }
}

/// `meterbook run` on `host` against the job's bucket, state and emulator.
fn run(host: &TestEnv, failpoint: Option<&str>, extra: &[&str]) -> TestCommand {
    let bucket = host.bucket().url();
    let cmd = host
        .meterbook(["run", "--source", &bucket])
        .args([
            "--state-url",
            &format!("{bucket}/meterbook/state/ledger.sqlite"),
        ])
        // A lease far longer than any test: only a takeover can free a dead run's lease in time.
        .args(["--lease-seconds", "300"])
        .args(extra);
    match failpoint {
        Some(f) => cmd.env("METERBOOK_FAILPOINT", f),
        None => cmd,
    }
}

/// Every amount accepted exactly once, with the quantity the files add up to.
fn assert_all_accepted_once(job: &Job) {
    job.emu().assert_exactly_once();
    let accepted: BTreeMap<(String, String), String> = job
        .emu()
        .accepted_quantities()
        .into_iter()
        .map(|(c, d, q)| ((c, d), q))
        .collect();
    assert_eq!(accepted, job.expected);
    assert_eq!(job.emu().accepted().len(), job.expected.len());
}

fn records_in(env: &TestEnv) -> i64 {
    env.count("SELECT COUNT(*) FROM usage_records")
}

/// Runs on `host` with `failpoint`, which must kill the run there.
fn killed_run(host: &TestEnv, job: &Job, failpoint: &str, extra: &[&str]) {
    let out = run(host, Some(failpoint), extra).expect_killed();
    assert!(
        out.stderr.contains(&format!("failpoint {failpoint}")),
        "{}",
        out.stderr
    );
    job.emu().assert_exactly_once();
}

/// A run that must end with exit code 0 and every amount accepted exactly once; the first run
/// after a crash takes the dead run's lease over at once.
fn recovering_run(host: &TestEnv, job: &Job, takes_over: bool) {
    let out = run(host, None, &[]).expect_code(0);
    assert_eq!(
        out.stderr.contains("taking over the lease at once"),
        takes_over,
        "{}",
        out.stderr
    );
    assert_all_accepted_once(job);
    assert_eq!(records_in(host), job.records);
}

/// A fresh host takes the state from S3: it has every record and sends nothing more.
fn a_fresh_host_finds_everything_done(job: &Job) -> TestEnv {
    let fresh = job.host.another_host();
    let before = job.emu().metering_requests();
    run(&fresh, None, &[]).expect_code(0);
    assert_eq!(job.emu().metering_requests(), before);
    assert_all_accepted_once(job);
    assert_eq!(records_in(&fresh), job.records);
    fresh
}

/// Kills a run at `failpoint`, then (1) the same host runs again, and (2), with another job,
/// another host runs first and then the crashed one: every host converges by itself.
fn crash_then_recover(failpoint: &str, extra: &[&str]) {
    let job = job();
    let host = &job.host;
    killed_run(host, &job, failpoint, extra);
    recovering_run(host, &job, true);
    let _ = a_fresh_host_finds_everything_done(&job);

    let job = self::job();
    let (host, second) = (&job.host, job.host.another_host());
    killed_run(host, &job, failpoint, extra);
    recovering_run(&second, &job, true);
    recovering_run(host, &job, false);
    let _ = a_fresh_host_finds_everything_done(&job);
}

#[test]
fn a_run_ingests_submits_and_pushes_and_the_next_sends_nothing() {
    let job = job();
    run(&job.host, None, &[]).expect_code(0);
    assert_all_accepted_once(&job);
    assert_eq!(records_in(&job.host), job.records);
    let requests = job.emu().metering_requests();
    let out = run(&job.host.another_host(), None, &[]).expect_code(0);
    assert_eq!(job.emu().metering_requests(), requests);
    assert!(!out.stderr.contains(SECRET));
}

/// The generation of the job's state on S3.
fn remote_generation(host: &TestEnv) -> u64 {
    let key = "meterbook/state/ledger.sqlite";
    let manifest: serde_json::Value = serde_json::from_slice(&host.bucket().get(key)).unwrap();
    manifest["generation"].as_u64().unwrap()
}

#[test]
fn a_run_with_something_to_send_pushes_before_and_after_sending_and_an_idle_run_once() {
    let job = job();
    run(&job.host, None, &[]).expect_code(0);
    assert_eq!(
        remote_generation(&job.host),
        2,
        "the outbox, then the answers"
    );
    assert_all_accepted_once(&job);
    let out = run(&job.host, None, &[]).expect_code(0);
    assert_eq!(
        remote_generation(&job.host),
        3,
        "nothing to send: one push\n{}",
        out.stderr
    );
    assert_all_accepted_once(&job);
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
fn killed_between_the_segments_and_the_manifest() {
    crash_then_recover("after-segments:1", &[]);
}

#[test]
fn killed_while_deleting_segments_no_kept_generation_names() {
    crash_then_recover(
        "during-gc:1",
        &["--keep-generations", "1", "--gc-grace-seconds", "0"],
    );
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
    let job = job();
    let (a, b) = (&job.host, job.host.another_host());
    // A slow first answer keeps the winner inside its lease while the other one starts.
    job.emu()
        .faults(serde_json::json!([{"kind": "slow", "ms": 2000, "accept": true}]));
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| run(a, None, &[]).expect_one_of(&[0, 4]));
        let tb = s.spawn(|| run(&b, None, &[]).expect_one_of(&[0, 4]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut codes = [out_a.code, out_b.code];
    codes.sort();
    assert_eq!(
        codes,
        [Some(0), Some(4)],
        "a: {}\nb: {}",
        out_a.stderr,
        out_b.stderr
    );
    let loser = if out_a.code == Some(4) {
        &out_a
    } else {
        &out_b
    };
    assert!(
        loser.stderr.contains("another run holds the lease"),
        "{}",
        loser.stderr
    );
    assert_all_accepted_once(&job);
}

#[test]
fn a_submission_sent_by_hand_and_never_pushed_is_kept_after_another_host_pushed() {
    let job = job();
    // By hand, outside `run` (no lease, no sync).
    let host = &job.host;
    host.meterbook(["ingest", "--source", &host.bucket().url()])
        .expect_code(0);
    host.meterbook(["submit"]).expect_code(0);
    assert_all_accepted_once(&job);
    let grants = host.path("grants.csv");
    std::fs::write(&grants, "user,amount,start\nada,10,2025-06-01\n").unwrap();
    host.meterbook(["costs", "grants", "load"])
        .arg(&grants)
        .expect_code(3);

    // Another host runs (with nothing due) and pushes a state that knows none of this.
    let second = host.another_host();
    run(&second, None, &["--start-month", "2025-07"]).expect_code(0);
    assert_eq!(
        second.count("SELECT COUNT(*) FROM submissions"),
        0,
        "the other host planned nothing"
    );

    // This host's next run keeps what it sent, sends nothing again, and pushes it.
    let requests = job.emu().metering_requests();
    let err = run(host, None, &[]).expect_code(0).stderr;
    assert!(err.contains("kept 3 submissions"), "{err}");
    assert!(err.contains("kept the cost tables changed here"), "{err}");
    assert_eq!(job.emu().metering_requests(), requests);
    assert_all_accepted_once(&job);

    // Every other host now knows it: a fresh one sends nothing and has the same lines.
    let fresh = a_fresh_host_finds_everything_done(&job);
    let accepted = "SELECT COUNT(*) FROM submission_lines WHERE status = 'accepted'";
    assert_eq!(fresh.count(accepted), job.expected.len() as i64);
    assert_eq!(fresh.count(accepted), host.count(accepted));
    assert_eq!(fresh.count("SELECT COUNT(*) FROM cost_grants"), 1);
}
