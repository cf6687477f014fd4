//! `meterbook sql` and the other reading commands: queries in three formats, statements that
//! would write refused, and ledgers read as they are: never created, migrated or changed, no file
//! left behind; files that are not ledgers refused by every command and left as they were.

use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;

use crate::util::{file_digests, record, usage_key, TestEnv};

mod embedded {
    refinery::embed_migrations!("migrations");
}

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
    env.ingest().expect_code(0);
    env
}

#[test]
fn prints_json_csv_and_table() {
    let env = env_with_usage();
    let q = "SELECT contract_id, dimension, value FROM monthly_usage ORDER BY dimension";
    let out = env.meterbook(["sql", "--format", "json", q]).expect_code(0);
    assert_eq!(
        out.json(),
        json!([
            {"contract_id": "c1", "dimension": "cpu_core_hours", "value": 2},
            {"contract_id": "c1", "dimension": "memory_byte_hours", "value": 10737418240u64},
        ])
    );

    let out = env.meterbook(["sql", "--format", "csv", q]).expect_code(0);
    assert_eq!(
        out.stdout,
        "contract_id,dimension,value\nc1,cpu_core_hours,2\nc1,memory_byte_hours,10737418240\n"
    );

    let table = env.meterbook(["sql", q]).expect_code(0).stdout;
    assert!(
        table.contains("contract_id") && table.contains("10737418240"),
        "{table}"
    );

    let empty = "SELECT * FROM usage_files WHERE 0";
    let out = env
        .meterbook(["sql", "--format", "json", empty])
        .expect_code(0);
    assert_eq!(out.stdout.trim(), "[]");
}

#[test]
fn a_statement_that_would_write_is_refused_and_changes_nothing() {
    let env = env_with_usage();
    let before = file_digests(env.dir.path());
    let copy = env.path("copy.sqlite");
    let other = env.path("other.sqlite");
    Connection::open(&other)
        .unwrap()
        .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
        .unwrap();
    let before_other = file_digests(env.dir.path());
    assert_ne!(before, before_other);
    for statement in [
        "DELETE FROM usage_records".to_string(),
        "UPDATE usage_records SET value = 0".to_string(),
        "DROP VIEW monthly_usage".to_string(),
        "CREATE TABLE x (y)".to_string(),
        "CREATE TEMP TABLE x (y)".to_string(),
        format!("VACUUM INTO '{}'", copy.display()),
        format!("ATTACH '{}' AS other", other.display()),
        format!("ATTACH 'file:{}?mode=rwc' AS copy", copy.display()),
        "PRAGMA user_version = 7".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        "PRAGMA wal_checkpoint(TRUNCATE)".to_string(),
    ] {
        let out = env.meterbook(["sql", &statement]).expect_code(1);
        assert!(
            out.stderr.contains("refusing the statement"),
            "{statement}: {}",
            out.stderr
        );
        assert_eq!(file_digests(env.dir.path()), before_other, "{statement}");
    }
    assert!(!copy.exists());
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 2);
    assert_eq!(env.count("SELECT COUNT(*) FROM monthly_usage"), 2);

    // Pragmas that only read are statements like any other.
    let out = env
        .meterbook(["sql", "--format", "csv", "PRAGMA table_info(ingest_runs)"])
        .expect_code(0);
    assert!(out.stdout.contains("finished_at"));
}

#[test]
fn reading_commands_change_no_file_and_leave_none_behind() {
    let env = env_with_usage();
    // The last writer to close removes the write-ahead log: the ledger is one file at rest.
    let before = file_digests(env.dir.path());
    assert!(before.contains_key("ledger.sqlite"), "{before:?}");
    assert!(!before.contains_key("ledger.sqlite-wal"), "{before:?}");
    std::fs::create_dir(env.path("plots")).unwrap();
    // Each with its exit code: doctor finds no S3 there (2).
    let commands: [(&[&str], i32); 7] = [
        (&["sql", "SELECT * FROM monthly_usage"], 0),
        (
            &["sql", "--format", "json", "SELECT * FROM usage_problems"],
            0,
        ),
        (&["history"], 0),
        (&["history", "--failures", "--format", "csv"], 0),
        (&["costs", "report", "--today", "2025-07-01"], 0),
        (
            &[
                "costs",
                "plot",
                "--today",
                "2025-07-01",
                "--out",
                "plots/p.png",
            ],
            0,
        ),
        (&["doctor", "--s3-max-attempts", "1"], 2),
    ];
    for (args, code) in commands {
        let out = env
            .meterbook(args)
            .s3_endpoint("http://127.0.0.1:1")
            .expect_code(code);
        assert_eq!(
            file_digests(env.dir.path()),
            before,
            "{args:?}: {}",
            out.stderr
        );
        if args[0] == "doctor" {
            let schema = out.stdout.lines().find(|l| l.contains("ledger schema"));
            assert!(schema.unwrap().starts_with("ok "), "{}", out.stdout);
        }
    }
}

/// A ledger as meterbook left it at schema version 5, with one ingest run.
fn ledger_at_version_5(env: &TestEnv) {
    let mut conn = Connection::open(&env.ledger).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(5))
        .run(&mut conn)
        .unwrap();
    conn.execute(
        "INSERT INTO ingest_runs (source, scope, started_at) VALUES ('x', '*:*:*', '2025-07-01')",
        [],
    )
    .unwrap();
}

#[test]
fn an_older_ledger_is_read_as_it_is_with_a_warning_and_migrated_only_by_a_writer() {
    let env = TestEnv::new();
    ledger_at_version_5(&env);
    let before = file_digests(env.dir.path());
    let version = "SELECT MAX(version) FROM refinery_schema_history";
    for args in [
        &["sql", "--format", "csv", version][..],
        &["sql", "SELECT COUNT(*) FROM ingest_runs"],
        &["history"],
    ] {
        let err = env.meterbook(args).expect_code(0).stderr;
        assert!(err.contains("has schema version 5"), "{args:?}: {err}");
        assert!(err.contains("read as it is"), "{args:?}: {err}");
        assert_eq!(file_digests(env.dir.path()), before, "{args:?}");
    }
    // Tables added since are simply missing, and the error says which.
    let out = env
        .meterbook(["sql", "SELECT * FROM cost_grants"])
        .expect_code(1);
    assert!(out.stderr.contains("no such table: cost_grants"));

    // A writing command brings it up to date, keeping its rows.
    env.write_usage(&usage_key("pt-1", "2025/06/01/00", "sub-1"), b"[]");
    let out = env.ingest().expect_code(0);
    assert!(out.stderr.contains("migrating ledger"), "{}", out.stderr);
    let latest = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| i64::from(m.version()))
        .max()
        .unwrap();
    assert_eq!(env.count(version), latest);
    assert_eq!(env.count("SELECT COUNT(*) FROM ingest_runs"), 2);
}

#[test]
fn a_file_that_is_not_a_ledger_is_refused_by_every_command_and_left_as_it_is() {
    let env = TestEnv::new();
    env.write_usage(&usage_key("pt-1", "2025/06/01/00", "sub-1"), b"[]");
    let grants = env.path("grants.csv");
    std::fs::write(&grants, "user,amount,start\nalice,10,2025-06-01\n").unwrap();
    let export = env.export().display().to_string();
    let grants = grants.display().to_string();
    let commands: [&[&str]; 7] = [
        &["sql", "SELECT 1"],
        &["history"],
        &["ingest", "--source", &export],
        &["submit", "--period", "month"],
        &["costs", "grants", "load", &grants],
        &["costs", "report"],
        &["sync", "push", "--state-url", "s3://nowhere/state"],
    ];
    // Another program's SQLite database (in WAL mode), and a file that is not SQLite at all.
    let conn = Connection::open(&env.ledger).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO customers (name) VALUES ('ada');",
    )
    .unwrap();
    drop(conn);
    let foreign = std::fs::read(&env.ledger).unwrap();
    let text = "id,name\n1,ada\n".repeat(200).into_bytes();
    for (file, says) in [
        (foreign, "is a SQLite database, but not a meterbook ledger"),
        (text, "is not a SQLite database"),
    ] {
        std::fs::write(&env.ledger, file).unwrap();
        let before = file_digests(env.dir.path());
        for args in commands {
            // Nothing listens at the S3 endpoint: the ledger is refused before S3 is asked.
            let err = env
                .meterbook(args)
                .s3_endpoint("http://127.0.0.1:1")
                .env("CLAZAR_CLIENT_ID", "id")
                .env("CLAZAR_CLIENT_SECRET", "secret")
                .expect_code(2)
                .stderr;
            assert!(err.contains(says), "{args:?}: {err}");
            assert!(err.contains("left"), "{args:?}: {err}");
            assert_eq!(file_digests(env.dir.path()), before, "{args:?}");
        }
    }
}

#[test]
fn control_characters_are_escaped_in_a_table_and_exact_in_csv_and_json() {
    let env = TestEnv::new();
    let mut r = record(Some("c1"), "cpu_core_hours", json!(2));
    r["podName"] = json!("pg-0\u{1b}[2J\u{1b}]0;owned\u{7}\nnext\tcell");
    env.write_usage(
        &usage_key("pt-1", "2025/06/01/00", "sub-1"),
        json!([r]).to_string().as_bytes(),
    );
    env.ingest().expect_code(0);
    let q = "SELECT pod_name FROM usage_records";
    let table = env.meterbook(["sql", q]).expect_code(0).stdout;
    assert!(
        !table.contains('\u{1b}') && !table.contains('\u{7}'),
        "{table:?}"
    );
    assert!(
        table.contains("pg-0\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\nnext\\tcell"),
        "{table}"
    );
    let out = env.meterbook(["sql", "--format", "json", q]).expect_code(0);
    assert_eq!(
        out.json(),
        json!([{"pod_name": "pg-0\u{1b}[2J\u{1b}]0;owned\u{7}\nnext\tcell"}])
    );
    let out = env.meterbook(["sql", "--format", "csv", q]).expect_code(0);
    assert_eq!(
        out.stdout,
        "pod_name\n\"pg-0\u{1b}[2J\u{1b}]0;owned\u{7}\nnext\tcell\"\n"
    );
}

#[test]
fn a_bad_query_prints_the_error_and_fails() {
    let env = env_with_usage();
    let out = env.meterbook(["sql", "SELEC 1"]).expect_code(1);
    assert!(out.stderr.contains("syntax error"), "{}", out.stderr);
    let out = env
        .meterbook(["sql", "SELECT nope FROM usage_files"])
        .expect_code(1);
    assert!(
        out.stderr.contains("no such column: nope"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_ledger_is_a_configuration_error_and_no_file_is_created() {
    let env = TestEnv::new();
    for args in [
        &["sql", "SELECT 1"][..],
        &["history"],
        &["costs", "report"],
        &["costs", "plot"],
    ] {
        let out = env.meterbook(args).expect_code(2);
        assert!(
            out.stderr.contains("no ledger at"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(file_digests(env.dir.path()).is_empty(), "{args:?}");
    }
}

#[test]
fn a_writer_waits_for_another_processs_write_up_to_the_busy_timeout() {
    let env = env_with_usage();
    env.write_usage(&usage_key("pt-1", "2025/06/01/01", "sub-1"), b"[]");
    let holder = env.db();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let ingest = |timeout: &str, code: i32| {
        env.meterbook(["--busy-timeout", timeout, "ingest", "--source"])
            .arg(env.export())
            .timeout(Duration::from_secs(60))
            .expect_code(code)
    };
    let err = ingest("0.5", 1).stderr;
    assert!(err.contains("database is locked"), "{err}");
    assert!(
        err.contains("busy for longer than the busy timeout (0.5s)"),
        "{err}"
    );
    holder.execute_batch("COMMIT").unwrap();
    drop(holder);
    ingest("30", 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 2);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM ingest_runs WHERE finished_at IS NULL"),
        0
    );
}
