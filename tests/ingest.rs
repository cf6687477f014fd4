//! `meterbook ingest` from a local folder: files and records as rows, idempotence, rewrites,
//! bad input, unattributed records, scope, and schema versions.

use std::collections::BTreeMap;

use serde_json::json;

use crate::util::{files_under, record, stderr_of, usage_key, TestEnv};

/// Sums every record of every generated file, independently of meterbook.
fn expected_monthly(env: &TestEnv) -> BTreeMap<(String, String), f64> {
    let mut sums = BTreeMap::new();
    for entry in files_under(&env.export().join("omnistrate-metering")) {
        if entry.file_name().unwrap() == "last_success_export.json" {
            continue;
        }
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        for r in records {
            let key = (
                r["externalPayerId"].as_str().unwrap().to_string(),
                r["dimension"].as_str().unwrap().to_string(),
            );
            *sums.entry(key).or_insert(0.0) += r["value"].as_f64().unwrap();
        }
    }
    sums
}

#[test]
fn ingests_every_file_and_monthly_usage_matches_the_files() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "3", "--hours", "30"]);
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();

    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_files WHERE status = 'ok'"),
        90
    );
    let expected = expected_monthly(&env);
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT contract_id, dimension, value, hours FROM monthly_usage WHERE month = '2025-06'")
        .unwrap();
    let rows: Vec<(String, String, f64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), expected.len());
    for (contract, dimension, value, hours) in rows {
        assert_eq!(expected[&(contract, dimension)], value);
        assert_eq!(hours, 30);
    }
    // Every record carries its hour from the path and its identity fields.
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM usage_records r JOIN usage_files f ON f.id = r.file_id
             WHERE r.hour != f.hour OR r.subscription_id IS NULL OR r.pod_name IS NULL"
        ),
        0
    );
}

#[test]
fn a_second_ingest_adds_nothing_and_says_so() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "2", "--hours", "5"]);
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    let records = env.count("SELECT COUNT(*) FROM usage_records");
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr_of(&out).contains("nothing new: 10 usage files"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    assert_eq!(
        env.count("SELECT files_new FROM ingest_runs ORDER BY id DESC LIMIT 1"),
        0
    );
    assert_eq!(
        env.count("SELECT files_unchanged FROM ingest_runs ORDER BY id DESC LIMIT 1"),
        10
    );
}

#[test]
fn a_rewritten_file_replaces_its_records_and_keeps_history() {
    let env = TestEnv::new();
    let key = usage_key("pt-1", "2025/06/01/00", "sub-1");
    let v1 = json!([
        record(Some("c1"), "cpu_core_hours", json!(2)),
        record(Some("c1"), "replica_hours", json!(1))
    ]);
    env.write_usage(&key, v1.to_string().as_bytes());
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();

    let v2 = json!([record(Some("c1"), "cpu_core_hours", json!(50))]);
    env.write_usage(&key, v2.to_string().as_bytes());
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("1 replaced"),
        "{}",
        stderr_of(&out)
    );

    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 1);
    assert_eq!(
        env.count("SELECT value FROM monthly_usage WHERE dimension = 'cpu_core_hours'"),
        50
    );
    assert_eq!(env.count("SELECT version FROM usage_files"), 2);
    assert_eq!(
        env.count("SELECT record_count FROM usage_file_versions WHERE version = 1"),
        2
    );
    assert_eq!(
        env.count(
            "SELECT value FROM usage_file_version_totals t JOIN usage_file_versions v ON v.id = t.version_id
             WHERE v.version = 1 AND t.dimension = 'cpu_core_hours'"
        ),
        2
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_file_versions WHERE replaced_at IS NOT NULL"),
        1
    );
}

#[test]
fn bad_input_becomes_problem_rows_and_loses_nothing_else() {
    let env = TestEnv::new();
    let good = json!([record(Some("c1"), "cpu_core_hours", json!(3))]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "good"),
        good.to_string().as_bytes(),
    );
    let mixed = json!([
        record(Some("c1"), "cpu_core_hours", json!(4)),
        {"externalPayerId": "c1", "value": 1},
        {"externalPayerId": "c1", "dimension": "cpu_core_hours"},
        record(Some("c1"), "cpu_core_hours", json!(-1)),
        record(Some("c1"), "cpu_core_hours", json!("12")),
        record(Some("c1"), "replica_hours", json!(1)),
    ]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/01", "mixed"),
        mixed.to_string().as_bytes(),
    );
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/02", "invalid"),
        b"[{\"dimension\": ",
    );
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/03", "object"),
        b"{\"records\": []}",
    );
    env.write_usage(&usage_key("pt-1", "2025/06/01/04", "empty"), b"");
    env.write_usage(&usage_key("pt-1", "2025/06/01/05", "latin1"), b"[\xe9]");
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/99", "badhour"),
        good.to_string().as_bytes(),
    );

    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("9 problems in 6 files"),
        "{}",
        stderr_of(&out)
    );

    // The good file and the good records of the mixed file are all there.
    assert_eq!(
        env.count("SELECT value FROM monthly_usage WHERE dimension = 'cpu_core_hours'"),
        7
    );
    assert_eq!(
        env.count("SELECT value FROM monthly_usage WHERE dimension = 'replica_hours'"),
        1
    );

    let problems: Vec<(String, Option<i64>, String)> = env
        .db()
        .prepare("SELECT key, record_index, reason FROM usage_problems ORDER BY key, record_index")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let find = |file: &str, index: Option<i64>| {
        problems
            .iter()
            .find(|(k, i, _)| k.ends_with(file) && *i == index)
            .map(|(_, _, reason)| reason.clone())
            .unwrap_or_else(|| panic!("no problem for {file} {index:?} in {problems:#?}"))
    };
    assert!(find("mixed.json", Some(1)).contains("no dimension"));
    assert!(find("mixed.json", Some(2)).contains("no value"));
    assert!(find("mixed.json", Some(3)).contains("negative"));
    assert!(find("mixed.json", Some(4)).contains("not a number"));
    assert!(find("invalid.json", None).contains("invalid JSON"));
    assert!(find("object.json", None).contains("not a JSON array"));
    assert!(find("empty.json", None).contains("empty body"));
    assert!(find("latin1.json", None).contains("not UTF-8"));
    assert!(find("badhour.json", None).contains("not a valid UTC hour"));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_files WHERE status = 'rejected'"),
        5
    );
    assert_eq!(
        env.count("SELECT status = 'partial' FROM usage_files WHERE key LIKE '%mixed.json'"),
        1
    );
}

#[test]
fn records_without_a_contract_are_kept_and_shown() {
    let env = TestEnv::new();
    let body = json!([
        record(None, "cpu_core_hours", json!(2)),
        record(Some("  "), "cpu_core_hours", json!(3)),
        record(Some("c1"), "cpu_core_hours", json!(5)),
    ]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        body.to_string().as_bytes(),
    );
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr_of(&out).contains("2 unattributed records"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(env.count("SELECT value FROM unattributed_usage"), 5);
    assert_eq!(env.count("SELECT records FROM unattributed_usage"), 2);
    assert_eq!(env.count("SELECT value FROM monthly_usage"), 5);
}

#[test]
fn scope_narrows_to_one_service_key_and_a_range_of_months() {
    let env = TestEnv::new();
    for (plan, hour) in [
        ("pt-1", "2025/05/31/23"),
        ("pt-1", "2025/06/15/00"),
        ("pt-1", "2025/07/01/00"),
        ("pt-1", "2025/08/01/00"),
        ("pt-2", "2025/06/15/00"),
    ] {
        let body = json!([record(Some("c1"), "cpu_core_hours", json!(1))]);
        env.write_usage(&usage_key(plan, hour, "sub-1"), body.to_string().as_bytes());
    }
    env.cmd()
        .env("PLAN_ID", "pt-1")
        .args([
            "ingest",
            "--from-month",
            "2025-06",
            "--to-month",
            "2025-07",
            "--source",
        ])
        .arg(env.export())
        .assert()
        .success();
    let keys: Vec<String> = env
        .db()
        .prepare("SELECT key FROM usage_files ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        keys,
        [
            usage_key("pt-1", "2025/06/15/00", "sub-1"),
            usage_key("pt-1", "2025/07/01/00", "sub-1")
        ]
    );
}

#[test]
fn files_that_are_not_usage_files_are_ignored() {
    let env = TestEnv::new();
    let body = json!([record(Some("c1"), "cpu_core_hours", json!(1))]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        body.to_string().as_bytes(),
    );
    env.write_usage(
        "omnistrate-metering/pg/PROD/pt-1/2025/06/01/00/notes.txt",
        b"hello",
    );
    env.write_usage("omnistrate-metering/last_success_export.json", b"{}");
    env.write_usage("omnistrate-metering/readme.json", b"{}");
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1);
}

#[test]
fn a_ledger_from_a_newer_meterbook_is_refused_and_left_unchanged() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "1", "--hours", "2"]);
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    env.db()
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
            [],
        )
        .unwrap();
    let before = std::fs::read(&env.ledger).unwrap();
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("schema version 999"), "{err}");
    assert!(err.contains("knows versions up to"), "{err}");
    assert_eq!(std::fs::read(&env.ledger).unwrap(), before);

    let out = env.cmd().args(["sql", "SELECT 1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_completion_marker_is_recorded_with_history() {
    let env = TestEnv::new();
    let marker = "omnistrate-metering/last_success_export.json";
    env.write_usage(
        marker,
        br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-06-30T23:59:59Z", "last_updated_at": "2025-07-01T00:05:00Z"}}"#,
    );
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    env.write_usage(
        marker,
        br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-07-31T23:59:59Z", "last_updated_at": "2025-08-01T00:05:00Z"}}"#,
    );
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
    assert_eq!(
        env.count("SELECT COUNT(*) FROM export_markers WHERE service_key = 'pg:PROD:pt-1'"),
        2
    );
    let latest: String = env
        .db()
        .query_row("SELECT last_processed_to FROM export_completion", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(latest, "2025-07-31T23:59:59Z");

    // A malformed marker is recorded and warned about; ingest still runs.
    env.write_usage(marker, b"{not json");
    let body = json!([record(Some("c1"), "cpu_core_hours", json!(1))]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        body.to_string().as_bytes(),
    );
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("marker is not valid JSON"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1);

    std::fs::remove_file(env.export().join(marker)).unwrap();
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr_of(&out).contains("no completion marker"),
        "{}",
        stderr_of(&out)
    );
    let statuses: Vec<String> = env
        .db()
        .prepare("SELECT status FROM export_marker_reads ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(statuses, ["ok", "ok", "malformed", "missing"]);
    // The last good value still stands.
    assert_eq!(env.count("SELECT COUNT(*) FROM export_completion"), 1);
}
