//! `meterbook ingest` from a local folder: files and records as rows, idempotence, rewrites,
//! bad input, unattributed records, scope, and schema versions.

use serde_json::json;

use crate::util::{
    files_under, record, usage_files, usage_key, usage_records, usage_sums, TestEnv, MARKER_KEY,
};

#[test]
fn ingests_every_file_and_monthly_usage_matches_the_files() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "3", "--hours", "30"]);
    env.ingest().expect_code(0);

    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_files WHERE status = 'ok'"),
        90
    );
    let expected = usage_sums(&env.export());
    let rows: Vec<(String, String, f64, i64)> = env.rows(
        "SELECT contract_id, dimension, value, hours FROM monthly_usage WHERE month = '2025-06'",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    );
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
    env.ingest().expect_code(0);
    let records = env.count("SELECT COUNT(*) FROM usage_records");
    let out = env.ingest().expect_code(0);
    assert!(
        out.stderr.contains("nothing new: 10 usage files"),
        "{}",
        out.stderr
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
    env.ingest().expect_code(0);

    let v2 = json!([record(Some("c1"), "cpu_core_hours", json!(50))]);
    env.write_usage(&key, v2.to_string().as_bytes());
    let out = env.ingest().expect_code(0);
    assert!(out.stderr.contains("1 replaced"), "{}", out.stderr);

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

    let out = env.ingest().expect_code(3);
    assert!(
        out.stderr.contains("9 problems in 6 files"),
        "{}",
        out.stderr
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

    let problems = env.usage_problems();
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
    let out = env.ingest().expect_code(3);
    assert!(
        out.stderr.contains("2 unattributed records"),
        "{}",
        out.stderr
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
    env.ingest()
        .args(["--from-month", "2025-06", "--to-month", "2025-07"])
        .env("PLAN_ID", "pt-1")
        .expect_code(0);
    let keys: Vec<String> = env.column("SELECT key FROM usage_files ORDER BY key");
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
    env.write_usage(MARKER_KEY, b"{}");
    env.write_usage("omnistrate-metering/readme.json", b"{}");
    env.ingest().expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1);
}

#[test]
fn a_ledger_from_a_newer_meterbook_is_refused_and_left_unchanged() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "1", "--hours", "2"]);
    env.ingest().expect_code(0);
    env.db()
        .execute(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
             VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
            [],
        )
        .unwrap();
    let before = std::fs::read(&env.ledger).unwrap();
    let err = env.ingest().expect_code(2).stderr;
    assert!(err.contains("schema version 999"), "{err}");
    assert!(err.contains("knows versions up to"), "{err}");
    assert_eq!(std::fs::read(&env.ledger).unwrap(), before);

    env.meterbook(["sql", "SELECT 1"]).expect_code(2);
}

#[test]
fn the_completion_marker_is_recorded_with_history() {
    let env = TestEnv::new();
    let marker = MARKER_KEY;
    env.write_usage(
        marker,
        br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-06-30T23:59:59Z", "last_updated_at": "2025-07-01T00:05:00Z"}}"#,
    );
    env.ingest().expect_code(0);
    env.write_usage(
        marker,
        br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-07-31T23:59:59Z", "last_updated_at": "2025-08-01T00:05:00Z"}}"#,
    );
    env.ingest().expect_code(0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM export_markers WHERE service_key = 'pg:PROD:pt-1'"),
        2
    );
    let latest: String = env.one("SELECT last_processed_to FROM export_completion");
    assert_eq!(latest, "2025-07-31T23:59:59Z");

    // A malformed marker is recorded and warned about; ingest still runs.
    env.write_usage(marker, b"{not json");
    let body = json!([record(Some("c1"), "cpu_core_hours", json!(1))]);
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        body.to_string().as_bytes(),
    );
    let out = env.ingest().expect_code(0);
    assert!(
        out.stderr.contains("marker is not valid JSON"),
        "{}",
        out.stderr
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1);

    std::fs::remove_file(env.export().join(marker)).unwrap();
    let out = env.ingest().expect_code(0);
    assert!(
        out.stderr.contains("no completion marker"),
        "{}",
        out.stderr
    );
    let statuses: Vec<String> = env.column("SELECT status FROM export_marker_reads ORDER BY id");
    assert_eq!(statuses, ["ok", "ok", "malformed", "missing"]);
    // The last good value still stands.
    assert_eq!(env.count("SELECT COUNT(*) FROM export_completion"), 1);
}

/// Copies the files of `from` (an export tree) whose key passes `keep` into `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, keep: impl Fn(&str) -> bool) {
    for file in files_under(from) {
        let key = file
            .strip_prefix(from)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if keep(&key) {
            let target = to.join(&key);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(&file, target).unwrap();
        }
    }
}

/// Usage files and records in an export tree, counted independently of meterbook.
fn files_and_records(export: &std::path::Path) -> (i64, i64) {
    (
        usage_files(export).len() as i64,
        usage_records(export).len() as i64,
    )
}

/// Runs `meterbook ingest` into `ledger` from each folder at once, in small transactions; every
/// one must end with exit code 0.
fn ingest_at_once(env: &TestEnv, ledger: &std::path::Path, sources: &[std::path::PathBuf]) {
    let running: Vec<_> = sources
        .iter()
        .map(|source| {
            env.meterbook(["--ledger"])
                .arg(ledger)
                .args(["ingest", "--batch-files", "3", "--source"])
                .arg(source)
                .spawn()
        })
        .collect();
    for run in running {
        run.expect_code(0);
    }
}

#[test]
fn concurrent_ingests_of_overlapping_trees_both_finish_and_store_every_file_once() {
    let env = TestEnv::new();
    env.generate(&["--subscriptions", "4", "--hours", "96"]);
    let dir = env.dir.path();
    let first_days = |key: &str| !key.contains("/2025/06/03/") && !key.contains("/2025/06/04/");
    let up_to_day_3 = |key: &str| !key.contains("/2025/06/04/");
    copy_tree(&env.export(), &dir.join("a"), first_days);
    copy_tree(&env.export(), &dir.join("b"), up_to_day_3);
    copy_tree(&env.export(), &dir.join("c"), |_| true);
    copy_tree(&env.export(), &dir.join("d"), |_| true);

    // A new ledger: all create and migrate it at once (one does, the others wait for it). A
    // few times over, as the processes may happen not to meet.
    let (files, records) = files_and_records(&dir.join("b"));
    for round in 0..3 {
        let ledger = dir.join(format!("new-{round}.sqlite"));
        let sources = [dir.join("a"), dir.join("b"), dir.join("a"), dir.join("b")];
        ingest_at_once(&env, &ledger, &sources);
        let db = rusqlite::Connection::open(&ledger).unwrap();
        let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(count("SELECT COUNT(*) FROM usage_files"), files);
        assert_eq!(count("SELECT COUNT(*) FROM usage_records"), records);
    }
    ingest_at_once(&env, &env.ledger, &[dir.join("a"), dir.join("b")]);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), files);

    // An existing ledger: both store the same new files; each file once.
    ingest_at_once(&env, &env.ledger, &[dir.join("c"), dir.join("d")]);
    let (files, records) = files_and_records(&env.export());
    assert_eq!(
        env.count("SELECT COUNT(DISTINCT key) FROM usage_files"),
        files
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), files);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_file_versions"), 0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM ingest_runs WHERE finished_at IS NULL"),
        0
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM ingest_runs"), 4);
    let expected = usage_sums(&env.export());
    let sum: f64 = expected.values().sum();
    let stored: f64 = env
        .db()
        .query_row("SELECT SUM(value) FROM monthly_usage", [], |r| r.get(0))
        .unwrap();
    assert!((sum - stored).abs() < 1e-6 * sum, "{sum} vs {stored}");
}

#[test]
fn an_ingest_and_a_submit_at_once_both_finish() {
    let env = TestEnv::new().with_emulator(&[]);
    let dir = env.dir.path();
    env.generate(&[
        "--subscriptions",
        "20",
        "--hours",
        "24",
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    copy_tree(&env.export(), &dir.join("june"), |_| true);
    env.generate(&[
        "--subscriptions",
        "20",
        "--month",
        "2025-07",
        "--hours",
        "120",
    ]);
    copy_tree(&env.export(), &dir.join("all"), |_| true);
    // June is complete and ingested; July arrives while June is submitted.
    ingest_at_once(&env, &env.ledger, &[dir.join("june")]);
    let submit = env.meterbook(["submit"]).spawn();
    ingest_at_once(&env, &env.ledger, &[dir.join("all")]);
    submit.expect_code(0);
    let emu = env.emulator();
    emu.assert_exactly_once();
    let (files, records) = files_and_records(&env.export());
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), files);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM ingest_runs WHERE finished_at IS NULL"),
        0
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_lines WHERE status = 'accepted'"),
        emu.accepted().len() as i64
    );
}
