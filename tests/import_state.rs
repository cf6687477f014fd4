//! `meterbook import-state`: the Python exporter's state is taken over, so that `submit` never
//! re-sends what it sent, and what failed there can be re-sent.

use serde_json::json;

use crate::util::{TestEnv, SERVICE_KEY};

/// Writes 2 CPU core hours and 1 replica hour of `contract` (subscription sub-`contract`) in `hour`.
pub(crate) fn usage(env: &TestEnv, hour: &str, contract: &str) {
    let values = [("cpu_core_hours", json!(2)), ("replica_hours", json!(1))];
    env.write_hour(hour, &format!("sub-{contract}"), contract, &values);
}

fn pair(contract: &str, month: &str) -> (String, String) {
    (contract.to_string(), month.to_string())
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
    let env = TestEnv::new().with_emulator(&[]);
    for contract in ["A", "B", "C"] {
        usage(&env, "2025/06/10/00", contract);
    }
    usage(&env, "2025/07/10/00", "A");
    env.write_marker("2025-07-31T23:59:59Z");
    env.ingest().expect_code(0);
    let state = env.export().join("metering_state.json");
    std::fs::write(&state, MONTHLY_STATE).unwrap();
    let import = || env.meterbook(["import-state", "--from"]).arg(&state);

    let out = import().expect_code(3);
    assert!(
        out.stderr
            .contains("1 contract-months sent by the predecessor"),
        "{}",
        out.stderr
    );
    // Importing again records nothing new.
    let again = import().expect_code(0);
    assert!(
        again.stderr.contains("0 contract-months sent"),
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("2 already recorded"),
        "{}",
        again.stderr
    );

    let emu = env.emulator();
    let out = env.meterbook(["submit"]).expect_code(3);
    // Only July is sent: June was the predecessor's (A sent there, C failed there, B not in its state).
    assert_eq!(emu.contract_months(), [pair("A", "2025-07")]);
    assert!(
        out.stderr.contains("the predecessor processed this period"),
        "{}",
        out.stderr
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
    env.meterbook(["resubmit", "--contract", "C"])
        .expect_code(0);
    assert_eq!(
        emu.contract_months(),
        [pair("A", "2025-07"), pair("C", "2025-06")]
    );
    emu.assert_exactly_once();
    // Its failure (one line per dimension of its stored request) no longer needs attention.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_failures WHERE contract_id = 'C'"),
        0
    );
    // An imported month cannot be resubmitted.
    env.meterbook(["resubmit", "--contract", "A"])
        .expect_code(0);
    assert_eq!(emu.contract_months().len(), 2);
}

#[test]
fn the_hourly_form_covers_every_hour_up_to_the_last_processed_one() {
    let env = TestEnv::new().with_emulator(&[]);
    for h in ["00", "01", "02", "03"] {
        usage(&env, &format!("2025/06/01/{h}"), "A");
    }
    env.write_marker("2025-06-01T03:59:59Z");
    env.ingest().expect_code(0);
    let state = env.export().join("metering_state.json");
    std::fs::write(
        &state,
        r#"{"pg:PROD:pt-1": {"last_processed_hour": "2025-06-01T01:00:00Z", "last_updated": "2025-06-01T02:05:00.5+00:00Z"}}"#,
    )
    .unwrap();
    env.meterbook(["import-state", "--from"])
        .arg(&state)
        .expect_code(0);
    env.meterbook(["submit", "--period", "hour"]).expect_code(0);
    let mut hours: Vec<String> = env
        .emulator()
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
    let env = TestEnv::new().with_bucket("import");
    let v: serde_json::Value = serde_json::from_str(MONTHLY_STATE).unwrap();
    let key = "clazar/pg-PROD-pt-1-export_state.json";
    env.bucket().put(key, v[SERVICE_KEY].to_string().as_bytes());
    env.meterbook(["import-state", "--from", key])
        .env("S3_BUCKET_NAME", &env.bucket().name)
        .expect_code(3);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE service_key = 'pg:PROD:pt-1' AND status = 'imported'"),
        1
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM predecessor_coverage"), 1);
}

#[test]
fn a_corrupt_state_is_refused_and_nothing_is_imported() {
    let env = TestEnv::new();
    let state = env.path("metering_state.json");
    std::fs::write(
        &state,
        "{\"pg:PROD:pt-1\": {\"last_processed_month\": \"June\"}}",
    )
    .unwrap();
    let out = env
        .meterbook(["import-state", "--from"])
        .arg(&state)
        .expect_code(2);
    assert!(
        out.stderr.contains("nothing was imported"),
        "{}",
        out.stderr
    );
    assert!(!env.ledger.exists() || env.count("SELECT COUNT(*) FROM submissions") == 0);
}
