//! Switching a deployment of the Python exporter's newest version to meterbook with the same
//! environment: blank variables are unset, `LOG_LEVEL` and `START_MONTH` mean what they meant,
//! its state is found and must be imported before anything is sent for its plan, an imported
//! failure stops needing attention once re-sent, and deployments of different plans on one
//! bucket each have a state and a lease of their own.

use std::collections::BTreeSet;
use std::process::{Command, Output};

use serde_json::json;

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::import_state::{marker, meterbook, sent, usage};
use crate::s3::{endpoint, Bucket};
use crate::util::{compose_env, files_under, stderr_of, TestEnv};

/// `meterbook submit` against the emulator, with the Clazar credentials and `vars`.
fn submit(env: &TestEnv, emu: &Emulator, vars: &[(&str, &str)]) -> Output {
    env.cmd()
        .envs(vars.iter().copied())
        .env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .args(["submit", "--clazar-base-url", &emu.url()])
        .output()
        .unwrap()
}

/// The export tree ingested.
fn ingested(env: &TestEnv) {
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
}

fn pair(contract: &str, month: &str) -> (String, String) {
    (contract.to_string(), month.to_string())
}

#[test]
fn blank_variables_are_unset() {
    let env = TestEnv::new();
    usage(&env, "2025/06/10/00", "A");
    marker(&env, "2025-06-30T23:59:59Z");
    ingested(&env);
    let emu = Emulator::start(&env, &[]);
    let mut blank: Vec<(&str, &str)> = [
        "DRY_RUN",
        "START_MONTH",
        "MAX_MONTHS_PER_RUN",
        "MAX_HOURS_PER_RUN",
        "MAX_RETRIES",
        "CLAZAR_CLOUD",
        "CLAZAR_API_URL",
        "SERVICE_NAME",
        "ENVIRONMENT_TYPE",
        "PLAN_ID",
        "STATE_FILE_PATH",
        "DIMENSION1_NAME",
        "DIMENSION1_FORMULA",
        "METERBOOK_PERIOD",
        "METERBOOK_ROUNDING",
    ]
    .iter()
    .map(|name| (*name, ""))
    .collect();
    blank.push(("LOG_LEVEL", " "));
    let out = submit(&env, &emu, &blank);
    // DRY_RUN="" is false: the month is sent, with every default.
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(sent(&emu), [pair("A", "2025-06")]);
    assert_eq!(emu.accepted()[0]["cloud"], "aws");
    assert!(
        stderr_of(&out).contains("empty variables treated as unset: ")
            && stderr_of(&out).contains("DRY_RUN"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn log_level_sets_the_level_flags_and_meterbook_log_win() {
    let env = TestEnv::new();
    usage(&env, "2025/06/10/00", "A");
    marker(&env, "2025-06-30T23:59:59Z");
    let ingest = |vars: &[(&str, &str)], flags: &[&str]| {
        let mut cmd = env.cmd();
        cmd.env_remove("METERBOOK_LOG");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd
            .args(flags)
            .args(["ingest", "--source"])
            .arg(env.export())
            .output()
            .unwrap();
        (out.status.code(), stderr_of(&out))
    };
    let (code, err) = ingest(&[("LOG_LEVEL", "WARNING")], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("INFO"), "{err}");
    for (vars, flags) in [
        (&[("LOG_LEVEL", "Info")][..], &[][..]),
        (&[("LOG_LEVEL", "error")], &["-v"]),
        (&[("LOG_LEVEL", "error"), ("METERBOOK_LOG", "info")], &[]),
    ] {
        let (code, err) = ingest(vars, flags);
        assert_eq!(code, Some(0), "{err}");
        assert!(err.contains("INFO"), "{vars:?} {flags:?}: {err}");
    }
    let (code, err) = ingest(&[("LOG_LEVEL", "verbose")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("verbose"), "{err}");
}

#[test]
fn start_month_defaults_to_2025_01_and_says_what_it_left_out() {
    let env = TestEnv::new();
    usage(&env, "2024/11/10/00", "A");
    usage(&env, "2024/12/10/00", "A");
    usage(&env, "2025/01/10/00", "A");
    marker(&env, "2025-01-31T23:59:59Z");
    ingested(&env);
    let emu = Emulator::start(&env, &[]);
    let out = submit(&env, &emu, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(sent(&emu), [pair("A", "2025-01")]);
    let err = stderr_of(&out);
    assert!(
        err.contains(
            "pg:PROD:pt-1: usage in 2 months from 2024-11 to 2024-12 is not submitted: it is \
             before the start month 2025-01"
        ) && err.contains("START_MONTH=2024-11 or pass --start-month 2024-11"),
        "{err}"
    );
    // The way it says works.
    let out = submit(&env, &emu, &[("START_MONTH", "2024-11")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(!stderr_of(&out).contains("not submitted"));
    assert_eq!(
        sent(&emu),
        [
            pair("A", "2024-11"),
            pair("A", "2024-12"),
            pair("A", "2025-01")
        ]
    );
}

/// A predecessor state for plan pt-1 whose contract C failed in June without its request
/// (the predecessor kept no payload): imported as one failed line for every dimension ('*').
const FAILED_WITHOUT_REQUEST: &str = r#"{
  "last_processed_month": "2025-06",
  "last_updated": "2025-07-02T00:10:00Z",
  "success_contracts": {"2025-06": ["A"]},
  "error_contracts": {"2025-06": [{"contract_id": "C", "errors": ["Internal error"],
    "code": "ERR", "message": "failed", "retry_count": 5}]}
}"#;

/// June usage of A and C, ingested, and the state above imported from `clazar/...` in a bucket
/// found from the predecessor's variables alone.
fn imported_failure(env: &TestEnv) -> Bucket {
    usage(env, "2025/06/10/00", "A");
    usage(env, "2025/06/10/00", "C");
    marker(env, "2025-06-30T23:59:59Z");
    ingested(env);
    let bucket = Bucket::new("import");
    bucket.put(
        "clazar/pg-PROD-pt-1-export_state.json",
        FAILED_WITHOUT_REQUEST.as_bytes(),
    );
    let out = env
        .cmd()
        .env("AWS_S3_BUCKET_NAME", &bucket.name)
        .env("SERVICE_NAME", "pg")
        .env("ENVIRONMENT_TYPE", "PROD")
        .env("PLAN_ID", "pt-1")
        .args(["--s3-endpoint-url", &endpoint(), "--s3-path-style"])
        .arg("import-state")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            "imported from s3://{}/clazar/pg-PROD-pt-1-export_state.json: 1 contract-months",
            bucket.name
        )),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM submission_failures WHERE contract_id = 'C' AND dimension = '*'"
        ),
        1
    );
    bucket
}

#[test]
fn import_state_finds_the_newest_versions_state_and_its_failure_clears_once_resubmitted() {
    let env = TestEnv::new();
    let _bucket = imported_failure(&env);
    let emu = Emulator::start(&env, &[]);
    // The failure needs attention, and nothing of June is sent by `submit`.
    let out = submit(&env, &emu, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(sent(&emu).is_empty());

    let out = meterbook(&env, &emu, &["resubmit"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        !stderr_of(&out).contains("no longer computed"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(sent(&emu), [pair("C", "2025-06")]);
    emu.assert_exactly_once();
    // Every re-sent line says what it retried, and nothing needs attention any more.
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM submission_lines r JOIN submission_lines f ON r.retry_of = f.id
             WHERE f.dimension = '*' AND r.status = 'accepted'"
        ),
        2
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM submission_failures"), 0);
    let out = submit(&env, &emu, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
}

#[test]
fn a_failure_resubmitted_by_an_older_meterbook_no_longer_needs_attention() {
    let env = TestEnv::new();
    let _bucket = imported_failure(&env);
    // An earlier meterbook re-sent C's June without linking the lines to the '*' failure.
    let db = env.db();
    db.execute(
        "INSERT INTO submissions (service_key, contract_id, period_kind, period, start_time,
             end_time, cloud, status, created_at)
         VALUES ('pg:PROD:pt-1', 'C', 'month', '2025-06', '2025-06-01T00:00:00Z',
             '2025-06-30T23:59:59Z', 'aws', 'answered', 'now')",
        [],
    )
    .unwrap();
    db.execute(
        "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind,
             period, dimension, quantity, status, updated_at)
         VALUES (last_insert_rowid(), 'pg:PROD:pt-1', 'C', 'month', '2025-06', 'cpu_core_hours',
             2, 'accepted', 'now')",
        [],
    )
    .unwrap();
    assert_eq!(env.count("SELECT COUNT(*) FROM submission_failures"), 0);
}

/// Two months (June and July 2025, 2 subscriptions, 2 hours each) of `plan`, marked complete
/// through July, in the export tree; returns the contract ids (the seed chooses them).
fn two_months(env: &TestEnv, plan: &str, seed: &str) -> Vec<String> {
    for month in ["2025-06", "2025-07"] {
        env.generate(&[
            "--seed",
            seed,
            "--subscriptions",
            "2",
            "--hours",
            "2",
            "--month",
            month,
            "--plan",
            plan,
            "--marker-to",
            "2025-07-31T23:59:59Z",
        ]);
    }
    let mut contracts = BTreeSet::new();
    for path in files_under(&env.export().join("omnistrate-metering/pg/PROD").join(plan)) {
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for r in records {
            contracts.insert(r["externalPayerId"].as_str().unwrap().to_string());
        }
    }
    contracts.into_iter().collect()
}

/// `meterbook ARGS` with the predecessor's compose environment for `plan` on `bucket`.
fn as_predecessor(env: &TestEnv, bucket: &Bucket, plan: &str, emu: &Emulator) -> Command {
    let mut cmd = env.std_cmd();
    compose_env(&mut cmd, &bucket.name, plan);
    cmd.env("METERBOOK_S3_ENDPOINT_URL", endpoint())
        .env("METERBOOK_S3_PATH_STYLE", "true")
        .env("METERBOOK_CLAZAR_BASE_URL", emu.url())
        .env("METERBOOK_LEASE_SECONDS", "5");
    cmd
}

fn output(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().unwrap()
}

#[test]
fn a_run_sends_nothing_for_a_plan_whose_predecessor_state_was_not_imported() {
    let host = TestEnv::new();
    let contracts = two_months(&host, "pt-1", "1");
    let bucket = Bucket::new("switch");
    bucket.upload_tree(&host.export(), "");
    // The predecessor sent June for every contract.
    let state = json!({
        "last_processed_month": "2025-06",
        "last_updated": "2025-07-02T00:10:00.123456+00:00Z",
        "success_contracts": {"2025-06": contracts},
        "error_contracts": {},
    });
    let state_key = "clazar/pg-PROD-pt-1-export_state.json";
    bucket.put(state_key, state.to_string().as_bytes());
    let emu = Emulator::start(&host, &[]);

    let out = output(as_predecessor(&host, &bucket, "pt-1", &emu), &["run"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 0, "nothing may be sent");
    assert!(
        stderr_of(&out).contains(&format!(
            "nothing is sent for pg:PROD:pt-1 until it is imported: `meterbook import-state \
             --from s3://{}/{state_key}`",
            bucket.name
        )),
        "{}",
        stderr_of(&out)
    );

    // What it says to do, with the same environment: pull, import, push.
    for args in [&["sync", "pull"][..], &["import-state"], &["sync", "push"]] {
        let out = output(as_predecessor(&host, &bucket, "pt-1", &emu), args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr_of(&out));
    }
    // A fresh host takes it from there: July only.
    let other = TestEnv::new();
    let out = output(as_predecessor(&other, &bucket, "pt-1", &emu), &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let july: Vec<_> = contracts.iter().map(|c| pair(c, "2025-07")).collect();
    assert_eq!(sent(&emu), july);
    emu.assert_exactly_once();
}

#[test]
fn deployments_of_two_plans_on_one_bucket_run_at_once_with_states_of_their_own() {
    let env = TestEnv::new();
    let mut contracts = two_months(&env, "pt-1", "1");
    contracts.extend(two_months(&env, "pt-2", "2"));
    let bucket = Bucket::new("plans");
    bucket.upload_tree(&env.export(), "");
    let emu = Emulator::start(&env, &[]);
    // A slow first answer keeps one run inside its lease while the other one works.
    emu.faults(json!([{"kind": "slow", "ms": 2000, "accept": true}]));
    let (a, b) = (TestEnv::new(), TestEnv::new());
    let (out_a, out_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| output(as_predecessor(&a, &bucket, "pt-1", &emu), &["run"]));
        let tb = s.spawn(|| output(as_predecessor(&b, &bucket, "pt-2", &emu), &["run"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(out_a.status.code(), Some(0), "{}", stderr_of(&out_a));
    assert_eq!(out_b.status.code(), Some(0), "{}", stderr_of(&out_b));
    for plan in ["pt-1", "pt-2"] {
        let key = format!("meterbook/state/pg/PROD/{plan}/ledger.sqlite");
        assert!(bucket.exists(&key), "{key}");
    }
    assert!(!bucket.exists("meterbook/state/ledger.sqlite"));
    emu.assert_exactly_once();
    let mut expected: Vec<_> = contracts
        .iter()
        .flat_map(|c| [pair(c, "2025-06"), pair(c, "2025-07")])
        .collect();
    expected.sort();
    assert_eq!(sent(&emu), expected);
}

#[test]
fn a_plan_keeps_the_shared_state_of_earlier_versions_until_it_is_moved() {
    let first = TestEnv::new();
    two_months(&first, "pt-1", "1");
    let bucket = Bucket::new("legacy");
    bucket.upload_tree(&first.export(), "");
    let emu = Emulator::start(&first, &[]);
    let unscoped = |env: &TestEnv, args: &[&str]| {
        env.cmd()
            .env("CLAZAR_CLIENT_ID", CLIENT_ID)
            .env("CLAZAR_CLIENT_SECRET", SECRET)
            .env("S3_BUCKET_NAME", &bucket.name)
            .args(["--s3-endpoint-url", &endpoint(), "--s3-path-style"])
            .args(args)
            .output()
            .unwrap()
    };
    // An earlier deployment, not scoped, kept its state at the shared default.
    let out = unscoped(&first, &["run", "--clazar-base-url", &emu.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let requests = emu.metering_requests();
    assert!(requests > 0);
    let shared = format!("s3://{}/meterbook/state/ledger.sqlite", bucket.name);
    let own = format!(
        "s3://{}/meterbook/state/pg/PROD/pt-1/ledger.sqlite",
        bucket.name
    );

    // Now scoped to its plan, on a fresh host: it keeps that state (sending nothing again).
    let second = TestEnv::new();
    let out = output(as_predecessor(&second, &bucket, "pt-1", &emu), &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("using the state at {shared}")),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(emu.metering_requests(), requests);
    assert!(!bucket.exists("meterbook/state/pg/PROD/pt-1/ledger.sqlite"));

    // Moved as the warning says, the plan's own state is used from then on.
    let mover = TestEnv::new();
    let moved = mover.dir.path().join("move.sqlite");
    let moved = moved.to_str().unwrap();
    for args in [
        &["--ledger", moved, "sync", "pull", "--state-url", &shared][..],
        &["--ledger", moved, "sync", "push", "--state-url", &own],
    ] {
        if args.contains(&"push") {
            std::fs::remove_file(format!("{moved}.sync.json")).unwrap();
        }
        let out = unscoped(&mover, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr_of(&out));
    }
    let third = TestEnv::new();
    let out = output(as_predecessor(&third, &bucket, "pt-1", &emu), &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert!(
        !stderr_of(&out).contains("using the state at"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(emu.metering_requests(), requests);
    emu.assert_exactly_once();
}

#[test]
fn submit_sends_nothing_for_a_service_key_whose_local_predecessor_state_was_not_imported() {
    let env = TestEnv::new();
    usage(&env, "2025/06/10/00", "A");
    usage(&env, "2025/07/10/00", "A");
    marker(&env, "2025-07-31T23:59:59Z");
    ingested(&env);
    // The older monthly version's state file, in the working directory.
    std::fs::write(
        env.dir.path().join("metering_state.json"),
        json!({"pg:PROD:pt-1": {"last_processed_month": "2025-06",
            "success_contracts": {"2025-06": ["A"]}}})
        .to_string(),
    )
    .unwrap();
    let emu = Emulator::start(&env, &[]);
    let out = submit(&env, &emu, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 0);
    assert!(
        stderr_of(&out).contains("`meterbook import-state --from metering_state.json`"),
        "{}",
        stderr_of(&out)
    );
    // Imported (found without --from), the month after the predecessor's is sent.
    env.cmd().arg("import-state").assert().success();
    let out = submit(&env, &emu, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(sent(&emu), [pair("A", "2025-07")]);
}
