//! `meterbook sql`: read-only queries in three formats.

use serde_json::json;

use crate::util::{record, stderr_of, usage_key, TestEnv};

fn env_with_usage() -> TestEnv {
    let env = TestEnv::new();
    let body = json!([
        record(Some("c1"), "cpu_core_hours", json!(2)),
        record(Some("c1"), "memory_byte_hours", json!(10737418240u64)),
    ]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        body.to_string().as_bytes(),
    );
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    env
}

#[test]
fn prints_json_csv_and_table() {
    let env = env_with_usage();
    let q = "SELECT contract_id, dimension, value FROM monthly_usage ORDER BY dimension";
    let out = env
        .cmd()
        .args(["sql", "--format", "json", q])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        json!([
            {"contract_id": "c1", "dimension": "cpu_core_hours", "value": 2},
            {"contract_id": "c1", "dimension": "memory_byte_hours", "value": 10737418240u64},
        ])
    );

    let out = env
        .cmd()
        .args(["sql", "--format", "csv", q])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "contract_id,dimension,value\nc1,cpu_core_hours,2\nc1,memory_byte_hours,10737418240\n"
    );

    let out = env.cmd().args(["sql", q]).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("contract_id") && table.contains("10737418240"),
        "{table}"
    );

    let out = env
        .cmd()
        .args([
            "sql",
            "--format",
            "json",
            "SELECT * FROM usage_files WHERE 0",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "[]");
}

#[test]
fn a_write_fails_with_sqlites_message_and_changes_nothing() {
    let env = env_with_usage();
    for statement in [
        "DELETE FROM usage_records",
        "UPDATE usage_records SET value = 0",
        "DROP VIEW monthly_usage",
        "CREATE TABLE x (y)",
    ] {
        let out = env.cmd().args(["sql", statement]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{statement}");
        assert!(
            stderr_of(&out).contains("readonly"),
            "{statement}: {}",
            stderr_of(&out)
        );
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 2);
    assert_eq!(env.count("SELECT COUNT(*) FROM monthly_usage"), 2);
}

#[test]
fn a_bad_query_prints_the_error_and_fails() {
    let env = env_with_usage();
    let out = env.cmd().args(["sql", "SELEC 1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("syntax error"),
        "{}",
        stderr_of(&out)
    );
    let out = env
        .cmd()
        .args(["sql", "SELECT nope FROM usage_files"])
        .output()
        .unwrap();
    assert!(
        stderr_of(&out).contains("no such column: nope"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_missing_ledger_is_a_configuration_error() {
    let env = TestEnv::new();
    let out = env.cmd().args(["sql", "SELECT 1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("no ledger at"),
        "{}",
        stderr_of(&out)
    );
}
