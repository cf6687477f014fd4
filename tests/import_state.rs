//! `meterbook import-state`: the Python exporter's state is taken over, so that `submit` never
//! re-sends what it sent, and what failed there can be re-sent.

use std::process::Output;

use serde_json::json;

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::s3::{endpoint, Bucket};
use crate::util::{record, stderr_of, usage_key, TestEnv};

const KEY: &str = "pg:PROD:pt-1";

pub(crate) fn usage(env: &TestEnv, hour: &str, contract: &str) {
    let body = json!([
        record(Some(contract), "cpu_core_hours", json!(2)),
        record(Some(contract), "replica_hours", json!(1)),
    ]);
    env.write_usage(
        &usage_key("pt-1", hour, &format!("sub-{contract}")),
        body.to_string().as_bytes(),
    );
}

pub(crate) fn marker(env: &TestEnv, to: &str) {
    env.write_usage(
        "omnistrate-metering/last_success_export.json",
        json!({ KEY: {"last_processed_to": to, "last_updated_at": to} })
            .to_string()
            .as_bytes(),
    );
}

pub(crate) fn meterbook(env: &TestEnv, emu: &Emulator, args: &[&str]) -> Output {
    env.cmd()
        .env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .args(args)
        .args(["--clazar-base-url", &emu.url()])
        .output()
        .unwrap()
}

pub(crate) fn sent(emu: &Emulator) -> Vec<(String, String)> {
    let mut v: Vec<_> = emu
        .accepted()
        .iter()
        .map(|r| {
            (
                r["contract_id"].as_str().unwrap().to_string(),
                r["start_time"].as_str().unwrap()[..7].to_string(),
            )
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

const MONTHLY_STATE: &str = r#"{
  "pg:PROD:pt-1": {
    "last_processed_month": "2025-06",
    "last_updated": "2025-07-25T20:15:37.123456+00:00Z",
    "success_contracts": {"2025-06": ["A"]},
    "error_contracts": {"2025-06": [{"contract_id": "C", "errors": ["Some error"], "code": "ERROR_001",
      "message": "Error occurred", "retry_count": 5, "last_retry_time": "2025-07-25T20:15:37Z",
      "payload": {"request": [{"cloud": "aws", "contract_id": "C", "dimension": "cpu_core_hours",
        "start_time": "2025-06-01T00:00:00Z", "end_time": "2025-06-30T23:59:59Z", "quantity": "2"}]}}]}
  }
}"#;

#[test]
fn what_the_predecessor_sent_is_never_sent_again_and_its_failures_can_be_resubmitted() {
    let env = TestEnv::new();
    for contract in ["A", "B", "C"] {
        usage(&env, "2025/06/10/00", contract);
    }
    usage(&env, "2025/07/10/00", "A");
    marker(&env, "2025-07-31T23:59:59Z");
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    let state = env.export().join("metering_state.json");
    std::fs::write(&state, MONTHLY_STATE).unwrap();

    let out = env
        .cmd()
        .args(["import-state", "--from"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("1 contract-months sent by the predecessor"),
        "{}",
        stderr_of(&out)
    );
    // Importing again records nothing new.
    let again = env
        .cmd()
        .args(["import-state", "--from"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        stderr_of(&again).contains("0 contract-months sent"),
        "{}",
        stderr_of(&again)
    );
    assert!(
        stderr_of(&again).contains("2 already recorded"),
        "{}",
        stderr_of(&again)
    );

    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    // Only July is sent: June was the predecessor's (A sent there, C failed there, B not in its state).
    assert_eq!(sent(&emu), [("A".to_string(), "2025-07".to_string())]);
    assert!(
        stderr_of(&out).contains("the predecessor processed this period"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_history WHERE contract_id = 'A' AND period = '2025-06' AND status = 'imported'"),
        1
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_failures WHERE contract_id = 'C' AND period = '2025-06'"),
        1
    );

    // The operator re-sends what failed in the predecessor.
    let out = meterbook(&env, &emu, &["resubmit", "--contract", "C"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(
        sent(&emu),
        [
            ("A".to_string(), "2025-07".to_string()),
            ("C".to_string(), "2025-06".to_string())
        ]
    );
    emu.assert_exactly_once();
    // Its failure (one line per dimension of its stored request) no longer needs attention.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_failures WHERE contract_id = 'C'"),
        0
    );
    // An imported month cannot be resubmitted.
    let out = meterbook(&env, &emu, &["resubmit", "--contract", "A"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(sent(&emu).len(), 2);
}

#[test]
fn the_hourly_form_covers_every_hour_up_to_the_last_processed_one() {
    let env = TestEnv::new();
    for h in ["00", "01", "02", "03"] {
        usage(&env, &format!("2025/06/01/{h}"), "A");
    }
    marker(&env, "2025-06-01T03:59:59Z");
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    let state = env.export().join("metering_state.json");
    std::fs::write(
        &state,
        r#"{"pg:PROD:pt-1": {"last_processed_hour": "2025-06-01T01:00:00Z", "last_updated": "2025-06-01T02:05:00.5+00:00Z"}}"#,
    )
    .unwrap();
    env.cmd()
        .args(["import-state", "--from"])
        .arg(&state)
        .assert()
        .success();
    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit", "--period", "hour"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let mut hours: Vec<String> = emu
        .accepted()
        .iter()
        .map(|r| r["start_time"].as_str().unwrap().to_string())
        .collect();
    hours.sort();
    hours.dedup();
    assert_eq!(hours, ["2025-06-01T02:00:00Z", "2025-06-01T03:00:00Z"]);
}

#[test]
fn a_flat_state_on_s3_is_read_with_the_service_key_from_its_name() {
    let env = TestEnv::new();
    let bucket = Bucket::new("import");
    let v: serde_json::Value = serde_json::from_str(MONTHLY_STATE).unwrap();
    let key = "clazar/pg-PROD-pt-1-export_state.json";
    bucket.put(key, v[KEY].to_string().as_bytes());
    let out = env
        .cmd()
        .env("S3_BUCKET_NAME", &bucket.name)
        .args([
            "--s3-endpoint-url",
            &endpoint(),
            "--s3-path-style",
            "import-state",
            "--from",
            key,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE service_key = 'pg:PROD:pt-1' AND status = 'imported'"),
        1
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM predecessor_coverage"), 1);
}

#[test]
fn a_corrupt_state_is_refused_and_nothing_is_imported() {
    let env = TestEnv::new();
    let state = env.dir.path().join("metering_state.json");
    std::fs::write(
        &state,
        "{\"pg:PROD:pt-1\": {\"last_processed_month\": \"June\"}}",
    )
    .unwrap();
    let out = env
        .cmd()
        .args(["import-state", "--from"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("nothing was imported"),
        "{}",
        stderr_of(&out)
    );
    assert!(!env.ledger.exists() || env.count("SELECT COUNT(*) FROM submissions") == 0);
}
