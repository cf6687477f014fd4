//! Switching a deployment of the Python exporter's newest version to meterbook with the same
//! environment: blank variables are unset, `LOG_LEVEL` and `START_MONTH` mean what they meant,
//! its state is found and must be imported before anything is sent for its plan, an imported
//! failure stops needing attention once re-sent, and deployments of different plans on one
//! bucket each have a state and a lease of their own.

use std::collections::BTreeSet;

use serde_json::json;

use crate::import_state::usage;
use crate::util::{compose_vars, scope_vars, usage_records, TestCommand, TestEnv};

fn pair(contract: &str, month: &str) -> (String, String) {
    (contract.to_string(), month.to_string())
}

#[test]
fn blank_variables_are_unset() {
    let env = TestEnv::new().with_emulator(&[]);
    usage(&env, "2025/06/10/00", "A");
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
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
    // DRY_RUN="" is false: the month is sent, with every default.
    let out = env.meterbook(["submit"]).envs(blank).expect_code(0);
    let emu = env.emulator();
    assert_eq!(emu.contract_months(), [pair("A", "2025-06")]);
    assert_eq!(emu.accepted()[0]["cloud"], "aws");
    assert!(
        out.stderr.contains("empty variables treated as unset: ") && out.stderr.contains("DRY_RUN"),
        "{}",
        out.stderr
    );
}

#[test]
fn log_level_sets_the_level_flags_and_meterbook_log_win() {
    let env = TestEnv::new();
    usage(&env, "2025/06/10/00", "A");
    env.write_marker("2025-06-30T23:59:59Z");
    let ingest = |vars: &[(&str, &str)], flags: &[&str], code: i32| {
        env.meterbook(flags)
            .args(["ingest", "--source"])
            .arg(env.export())
            .env_remove("METERBOOK_LOG")
            .envs(vars.iter().copied())
            .expect_code(code)
            .stderr
    };
    let err = ingest(&[("LOG_LEVEL", "WARNING")], &[], 0);
    assert!(!err.contains("INFO"), "{err}");
    for (vars, flags) in [
        (&[("LOG_LEVEL", "Info")][..], &[][..]),
        (&[("LOG_LEVEL", "error")], &["-v"]),
        (&[("LOG_LEVEL", "error"), ("METERBOOK_LOG", "info")], &[]),
    ] {
        let err = ingest(vars, flags, 0);
        assert!(err.contains("INFO"), "{vars:?} {flags:?}: {err}");
    }
    let err = ingest(&[("LOG_LEVEL", "verbose")], &[], 2);
    assert!(err.contains("verbose"), "{err}");
}

#[test]
fn start_month_defaults_to_2025_01_and_says_what_it_left_out() {
    let env = TestEnv::new().with_emulator(&[]);
    usage(&env, "2024/11/10/00", "A");
    usage(&env, "2024/12/10/00", "A");
    usage(&env, "2025/01/10/00", "A");
    env.write_marker("2025-01-31T23:59:59Z");
    env.ingest().expect_code(0);
    let err = env.meterbook(["submit"]).expect_code(0).stderr;
    let emu = env.emulator();
    assert_eq!(emu.contract_months(), [pair("A", "2025-01")]);
    assert!(
        err.contains(
            "pg:PROD:pt-1: usage in 2 months from 2024-11 to 2024-12 is not submitted: it is \
             before the start month 2025-01"
        ) && err.contains("START_MONTH=2024-11 or pass --start-month 2024-11"),
        "{err}"
    );
    // The way it says works.
    let out = env
        .meterbook(["submit"])
        .env("START_MONTH", "2024-11")
        .expect_code(0);
    assert!(!out.stderr.contains("not submitted"));
    assert_eq!(
        emu.contract_months(),
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

/// June usage of A and C, ingested, and the state above imported from `clazar/...` in the
/// test's bucket, found from the predecessor's variables alone.
fn imported_failure(env: &TestEnv) {
    usage(env, "2025/06/10/00", "A");
    usage(env, "2025/06/10/00", "C");
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    let bucket = env.bucket();
    bucket.put(
        "clazar/pg-PROD-pt-1-export_state.json",
        FAILED_WITHOUT_REQUEST.as_bytes(),
    );
    let out = env
        .meterbook(["import-state"])
        .env("AWS_S3_BUCKET_NAME", &bucket.name)
        .envs(scope_vars("pt-1"))
        .expect_code(3);
    assert!(
        out.stderr.contains(&format!(
            "imported from {}/clazar/pg-PROD-pt-1-export_state.json: 1 contract-months",
            bucket.url()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM submission_failures WHERE contract_id = 'C' AND dimension = '*'"
        ),
        1
    );
}

#[test]
fn import_state_finds_the_newest_versions_state_and_its_failure_clears_once_resubmitted() {
    let env = TestEnv::new().with_bucket("import").with_emulator(&[]);
    imported_failure(&env);
    let emu = env.emulator();
    // The failure needs attention, and nothing of June is sent by `submit`.
    env.meterbook(["submit"]).expect_code(3);
    assert!(emu.contract_months().is_empty());

    let out = env.meterbook(["resubmit"]).expect_code(0);
    assert!(!out.stderr.contains("no longer computed"), "{}", out.stderr);
    assert_eq!(emu.contract_months(), [pair("C", "2025-06")]);
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
    env.meterbook(["submit"]).expect_code(0);
}

#[test]
fn a_failure_resubmitted_by_an_older_meterbook_no_longer_needs_attention() {
    let env = TestEnv::new().with_bucket("import");
    imported_failure(&env);
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
    let records = usage_records(&env.export().join("omnistrate-metering/pg/PROD").join(plan));
    let contracts: BTreeSet<String> = records
        .iter()
        .map(|r| r["externalPayerId"].as_str().unwrap().to_string())
        .collect();
    contracts.into_iter().collect()
}

/// `meterbook args` on `host` with the predecessor's compose environment for `plan` on the
/// test's bucket.
fn as_predecessor(host: &TestEnv, plan: &str, args: &[&str]) -> TestCommand {
    host.meterbook(args)
        .envs(compose_vars(&host.bucket().name, plan))
        .env("METERBOOK_LEASE_SECONDS", "5")
}

#[test]
fn a_run_sends_nothing_for_a_plan_whose_predecessor_state_was_not_imported() {
    let host = TestEnv::new().with_bucket("switch").with_emulator(&[]);
    let contracts = two_months(&host, "pt-1", "1");
    let (bucket, emu) = (host.bucket(), host.emulator());
    bucket.upload(&host.export(), "");
    // The predecessor sent June for every contract.
    let state = json!({
        "last_processed_month": "2025-06",
        "last_updated": "2025-07-02T00:10:00.123456+00:00Z",
        "success_contracts": {"2025-06": contracts},
        "error_contracts": {},
    });
    let state_key = "clazar/pg-PROD-pt-1-export_state.json";
    bucket.put(state_key, state.to_string().as_bytes());

    let out = as_predecessor(&host, "pt-1", &["run"]).expect_code(3);
    assert_eq!(emu.metering_requests(), 0, "nothing may be sent");
    assert!(
        out.stderr.contains(&format!(
            "nothing is sent for pg:PROD:pt-1 until it is imported: `meterbook import-state \
             --from {}/{state_key}`",
            bucket.url()
        )),
        "{}",
        out.stderr
    );

    // What it says to do, with the same environment: pull, import, push.
    for args in [&["sync", "pull"][..], &["import-state"], &["sync", "push"]] {
        as_predecessor(&host, "pt-1", args).expect_code(0);
    }
    // A fresh host takes it from there: July only.
    as_predecessor(&host.another_host(), "pt-1", &["run"]).expect_code(0);
    let july: Vec<_> = contracts.iter().map(|c| pair(c, "2025-07")).collect();
    assert_eq!(emu.contract_months(), july);
    emu.assert_exactly_once();
}

#[test]
fn deployments_of_two_plans_on_one_bucket_run_at_once_with_states_of_their_own() {
    let env = TestEnv::new().with_bucket("plans").with_emulator(&[]);
    let mut contracts = two_months(&env, "pt-1", "1");
    contracts.extend(two_months(&env, "pt-2", "2"));
    let (bucket, emu) = (env.bucket(), env.emulator());
    bucket.upload(&env.export(), "");
    // A slow first answer keeps one run inside its lease while the other one works.
    emu.faults(json!([{"kind": "slow", "ms": 2000, "accept": true}]));
    let (a, b) = (env.another_host(), env.another_host());
    std::thread::scope(|s| {
        s.spawn(|| as_predecessor(&a, "pt-1", &["run"]).expect_code(0));
        s.spawn(|| as_predecessor(&b, "pt-2", &["run"]).expect_code(0));
    });
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
    assert_eq!(emu.contract_months(), expected);
}

#[test]
fn a_plan_keeps_the_shared_state_of_earlier_versions_until_it_is_moved() {
    let first = TestEnv::new().with_bucket("legacy").with_emulator(&[]);
    two_months(&first, "pt-1", "1");
    let (bucket, emu) = (first.bucket(), first.emulator());
    bucket.upload(&first.export(), "");
    let unscoped = |env: &TestEnv, args: &[&str]| {
        env.meterbook(args)
            .env("S3_BUCKET_NAME", &bucket.name)
            .expect_code(0)
    };
    // An earlier deployment, not scoped, kept its state at the shared default.
    unscoped(&first, &["run"]);
    let requests = emu.metering_requests();
    assert!(requests > 0);
    let shared = format!("{}/meterbook/state/ledger.sqlite", bucket.url());
    let own = format!(
        "{}/meterbook/state/pg/PROD/pt-1/ledger.sqlite",
        bucket.url()
    );

    // Now scoped to its plan, on a fresh host: it keeps that state (sending nothing again).
    let out = as_predecessor(&first.another_host(), "pt-1", &["run"]).expect_code(0);
    assert!(
        out.stderr.contains(&format!("using the state at {shared}")),
        "{}",
        out.stderr
    );
    assert_eq!(emu.metering_requests(), requests);
    assert!(!bucket.exists("meterbook/state/pg/PROD/pt-1/ledger.sqlite"));

    // Moved as the warning says, the plan's own state is used from then on.
    let mover = first.another_host();
    let moved = mover.path("move.sqlite");
    let moved = moved.to_str().unwrap();
    unscoped(
        &mover,
        &["--ledger", moved, "sync", "pull", "--state-url", &shared],
    );
    std::fs::remove_file(format!("{moved}.sync.json")).unwrap();
    unscoped(
        &mover,
        &["--ledger", moved, "sync", "push", "--state-url", &own],
    );
    let out = as_predecessor(&first.another_host(), "pt-1", &["run"]).expect_code(0);
    assert!(!out.stderr.contains("using the state at"), "{}", out.stderr);
    assert_eq!(emu.metering_requests(), requests);
    emu.assert_exactly_once();
}

#[test]
fn submit_sends_nothing_for_a_service_key_whose_local_predecessor_state_was_not_imported() {
    let env = TestEnv::new().with_emulator(&[]);
    usage(&env, "2025/06/10/00", "A");
    usage(&env, "2025/07/10/00", "A");
    env.write_marker("2025-07-31T23:59:59Z");
    env.ingest().expect_code(0);
    // The older monthly version's state file, in the working directory.
    std::fs::write(
        env.path("metering_state.json"),
        json!({"pg:PROD:pt-1": {"last_processed_month": "2025-06",
            "success_contracts": {"2025-06": ["A"]}}})
        .to_string(),
    )
    .unwrap();
    let emu = env.emulator();
    let out = env.meterbook(["submit"]).expect_code(3);
    assert_eq!(emu.metering_requests(), 0);
    assert!(
        out.stderr
            .contains("`meterbook import-state --from metering_state.json`"),
        "{}",
        out.stderr
    );
    // Imported (found without --from), the month after the predecessor's is sent.
    env.meterbook(["import-state"]).expect_code(0);
    env.meterbook(["submit"]).expect_code(0);
    assert_eq!(emu.contract_months(), [pair("A", "2025-07")]);
}
