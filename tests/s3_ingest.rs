//! `meterbook ingest --source s3://...` against the real S3-compatible server (moto) over HTTP:
//! pagination, incremental re-runs, rewrites, what is not a usage file, the completion marker,
//! permanent and transient errors (through `scripts/fault-proxy.py`), and a killed run.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::s3::endpoint;
use crate::util::{
    http, python_script, record, usage_key, usage_records, Running, TestCommand, TestEnv,
    MARKER_KEY,
};

/// `meterbook ingest --source <source>`.
fn ingest(env: &TestEnv, source: &str) -> TestCommand {
    env.meterbook(["ingest", "--source", source])
}

/// A usage file of one record: `value` CPU core hours of contract c-1.
fn cpu_hours_of_c1(value: i64) -> Vec<u8> {
    serde_json::to_vec(&json!([record(
        Some("c-1"),
        "cpu_core_hours",
        json!(value)
    )]))
    .unwrap()
}

/// `scripts/fault-proxy.py` in front of the test server; stopped when dropped.
pub(crate) struct FaultProxy {
    _process: Running,
    pub(crate) url: String,
    port: u16,
}

impl FaultProxy {
    pub(crate) fn start(args: &[&str]) -> FaultProxy {
        let process = python_script("scripts/fault-proxy.py")
            .args(["--upstream", &endpoint()])
            .args(args)
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = loop {
            let said = process.stdout_so_far();
            if let Some(line) = said.lines().next().filter(|_| said.contains('\n')) {
                break line
                    .strip_prefix("listening on ")
                    .unwrap_or_else(|| panic!("fault proxy said {line:?}"))
                    .to_string();
            }
            assert!(Instant::now() < deadline, "the fault proxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        FaultProxy {
            _process: process,
            url,
            port,
        }
    }

    fn stats(&self) -> serde_json::Value {
        let (code, body) = http(self.port, "GET", "/__fault-proxy/stats", None).unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The lines meterbook printed as its final error.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("meterbook:"))
        .collect()
}

/// Every stored file holds exactly `record_count` records.
fn assert_files_whole(env: &TestEnv) {
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM usage_files f
             WHERE f.record_count != (SELECT COUNT(*) FROM usage_records r WHERE r.file_id = f.id)"
        ),
        0,
        "a file is stored with a different number of records than it holds"
    );
}

#[test]
fn more_than_1000_keys_in_one_day_are_all_ingested_once_and_a_rerun_fetches_nothing() {
    let env = TestEnv::new().with_bucket("pages");
    // 46 subscriptions x 24 hours: 1,104 usage files in one day, more than one listing page.
    env.generate(&["--subscriptions", "46", "--hours", "24"]);
    let bucket = env.bucket();
    bucket.upload(&env.export(), "exports/acme/");
    let records = usage_records(&env.export()).len() as i64;
    let source = format!("{}/exports/acme", bucket.url());

    let out = ingest(&env, &source).expect_code(0);
    let stderr = out.stderr;
    assert!(stderr.contains("ingested 1104 new"), "{stderr}");
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1104);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    assert_files_whole(&env);
    // Keys are relative to the source root; ETag (without quotes), size and time are kept.
    let key = "omnistrate-metering/pg/PROD/pt-HJSv20iWX0/2025/06/01/00";
    let (stored_key, etag, size, modified): (String, String, i64, String) = env
        .db()
        .query_row(
            "SELECT key, etag, size, last_modified FROM usage_files
             WHERE key LIKE ?1 || '/%' ORDER BY key LIMIT 1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(etag, bucket.etag(&format!("exports/acme/{stored_key}")));
    let local = std::fs::metadata(env.export().join(&stored_key)).unwrap();
    assert_eq!(size as u64, local.len());
    assert!(modified.starts_with("20"), "{modified}");
    let stored_sources: Vec<String> = env.column("SELECT DISTINCT source FROM usage_files");
    assert_eq!(stored_sources, [source.as_str()]);

    // A re-run through a counting proxy: listings only, not one GET of a usage file.
    let proxy = FaultProxy::start(&[]);
    let out = ingest(&env, &source).s3_endpoint(&proxy.url).expect_code(0);
    let stderr = out.stderr;
    assert!(stderr.contains("nothing new: 1104 usage files"), "{stderr}");
    let stats = proxy.stats();
    let lists = stats["list_prefixes"].as_array().unwrap().len() as i64;
    // The marker, then listings: a few delimiter listings and the day's pages.
    assert_eq!(stats["requests"].as_i64().unwrap(), 1 + lists);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1104);
}

#[test]
fn listing_covers_only_the_months_in_scope_and_unsubmitted_months_by_default() {
    let env = TestEnv::new().with_bucket("months");
    let bucket = env.bucket();
    let body = cpu_hours_of_c1(2);
    for hour in ["2025/03/10/00", "2025/05/31/23", "2025/06/01/00"] {
        bucket.put(&usage_key("pt-1", hour, "sub-a"), &body);
    }
    let source = bucket.url();
    let proxy = FaultProxy::start(&[]);

    ingest(&env, &source)
        .s3_endpoint(&proxy.url)
        .args(["--from-month", "2025-05"])
        .expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 2);
    let listed: Vec<String> =
        serde_json::from_value(proxy.stats()["list_prefixes"].clone()).unwrap();
    assert!(
        listed.iter().all(|p| !p.contains("2025/03")),
        "March is out of scope but was listed: {listed:?}"
    );

    // No complete listing yet: the first run without a range lists every month.
    ingest(&env, &source).expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 3);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM ingest_runs WHERE scope = '*:*:*'"),
        1
    );

    // Then a re-run lists the months not yet submitted (all three here) and the recent ones, so
    // a late file in March, two months before the newest, is seen.
    bucket.put(&usage_key("pt-1", "2025/03/11/00", "sub-a"), &body);
    let proxy = FaultProxy::start(&[]);
    ingest(&env, &source).s3_endpoint(&proxy.url).expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 4);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM ingest_runs WHERE scope = '*:*:* (recent months)'"),
        1
    );
    let listed: Vec<String> =
        serde_json::from_value(proxy.stats()["list_prefixes"].clone()).unwrap();
    assert!(
        listed.iter().any(|p| p.contains("2025/03/")),
        "March was not listed: {listed:?}"
    );
}

/// Before, an object rewritten two months back kept its old content in the ledger, and no drift
/// was reported. Now a month already sent is not re-listed by every run, but by the complete
/// listing due once a day (`--full-listing-every`), and the rewrite then shows as drift.
#[test]
fn a_rewrite_of_a_month_already_sent_is_found_by_the_daily_full_listing_and_shown_as_drift() {
    let env = TestEnv::new().with_bucket("drift").with_emulator(&[]);
    let bucket = env.bucket();
    let march = usage_key("pt-1", "2025/03/10/00", "sub-a");
    bucket.put(&march, &cpu_hours_of_c1(2));
    bucket.put(
        &usage_key("pt-1", "2025/06/01/00", "sub-a"),
        &cpu_hours_of_c1(1),
    );
    bucket.put(
        MARKER_KEY,
        br#"{"pg:PROD:pt-1": {"last_processed_to": "2025-06-30T23:59:59Z"}}"#,
    );
    let source = bucket.url();
    ingest(&env, &source).expect_code(0);
    let emu = env.emulator();
    env.meterbook(["submit"]).expect_code(0);
    assert_eq!(emu.accepted().len(), 2);

    // March is sent: a re-run within the day does not list it.
    bucket.put(&march, &cpu_hours_of_c1(5));
    ingest(&env, &source).expect_code(0);
    assert_eq!(env.count("SELECT MAX(version) FROM usage_files"), 1);

    // A day later (the complete listing aged by a day), every month is listed again.
    env.db()
        .execute(
            "UPDATE ingest_runs SET started_at = '2000-01-01T00:00:00Z', finished_at = '2000-01-01T00:01:00Z'",
            [],
        )
        .unwrap();
    let out = ingest(&env, &source).expect_code(0);
    assert!(
        out.stderr.contains("no complete listing of"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count("SELECT version FROM usage_files WHERE key LIKE '%/03/10/00/%'"),
        2
    );
    let out = env.meterbook(["submit"]).expect_code(3);
    assert!(
        out.stderr.contains("drift: pg:PROD:pt-1 contract c-1"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count("SELECT difference FROM submission_drift WHERE period = '2025-03'"),
        3
    );
    assert_eq!(emu.accepted().len(), 2, "drift is never re-sent");
}

#[test]
fn odd_and_oversized_objects_are_problem_rows_and_the_rest_is_ingested() {
    let env = TestEnv::new().with_bucket("odd");
    let bucket = env.bucket();
    let small = cpu_hours_of_c1(2);
    let big: Vec<serde_json::Value> = (0..20)
        .map(|_| record(Some("c-2"), "cpu_core_hours", json!(1)))
        .collect();
    bucket.put(&usage_key("pt-1", "2025/06/01/00", "sub-a"), &small);
    let big_key = usage_key("pt-1", "2025/06/01/00", "sub-b");
    bucket.put(&big_key, &serde_json::to_vec(&big).unwrap());
    let colon = "omnistrate-metering/pg/PROD:x/pt-1/2025/06/01/00/sub-a.json";
    bucket.put(colon, &small);
    let out = ingest(&env, &bucket.url())
        .args(["--max-file-bytes", "2KiB"])
        .expect_code(3);
    let stderr = out.stderr;
    assert!(
        stderr.contains(&big_key) && stderr.contains("over the limit of 2048 bytes"),
        "{stderr}"
    );
    let reasons: Vec<(String, String)> = env
        .rows("SELECT key, reason FROM usage_problems ORDER BY key", |r| {
            Ok((r.get(0)?, r.get(1)?))
        });
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons
        .iter()
        .any(|(k, r)| k == colon && r.contains("hold ':'")));
    assert!(reasons.iter().any(|(k, _)| k == &big_key));
    assert_eq!(env.count("SELECT value FROM monthly_usage"), 2);
}

#[test]
fn a_rewritten_object_replaces_its_records_and_keeps_the_earlier_version() {
    let env = TestEnv::new().with_bucket("rewrite");
    let bucket = env.bucket();
    let key = usage_key("pt-1", "2025/06/01/00", "sub-a");
    let first = json!([record(Some("c-1"), "cpu_core_hours", json!(2))]);
    bucket.put(&key, &serde_json::to_vec(&first).unwrap());
    let source = bucket.url();
    ingest(&env, &source).expect_code(0);
    let first_etag = bucket.etag(&key);

    let second = json!([
        record(Some("c-1"), "cpu_core_hours", json!(3)),
        record(Some("c-1"), "replica_hours", json!(1))
    ]);
    bucket.put(&key, &serde_json::to_vec(&second).unwrap());
    let out = ingest(&env, &source).expect_code(0);
    assert!(
        out.stderr.contains("0 new and 1 replaced"),
        "{}",
        out.stderr
    );
    let db = env.db();
    let (etag, version, records): (String, i64, i64) = db
        .query_row(
            "SELECT etag, version, record_count FROM usage_files WHERE key = ?1",
            [&key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((etag, version, records), (bucket.etag(&key), 2, 2));
    let (old_etag, old_value): (String, f64) = db
        .query_row(
            "SELECT v.etag, t.value FROM usage_file_versions v
             JOIN usage_file_version_totals t ON t.version_id = v.id",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((old_etag, old_value), (first_etag, 2.0));
    assert_eq!(
        env.count("SELECT SUM(value) FROM usage_records WHERE dimension = 'cpu_core_hours'"),
        3
    );
}

#[test]
fn objects_that_are_not_usage_files_are_ignored() {
    let env = TestEnv::new().with_bucket("other");
    let bucket = env.bucket();
    let body = cpu_hours_of_c1(2);
    bucket.put(&usage_key("pt-1", "2025/06/01/00", "sub-a"), &body);
    for key in [
        "omnistrate-metering/pg/PROD/pt-1/2025/06/01/00/readme.txt",
        "omnistrate-metering/notes.json",
        "elsewhere/pg/PROD/pt-1/2025/06/01/00/sub-b.json",
        "top.json",
    ] {
        bucket.put(key, &body);
    }
    ingest(&env, &bucket.url()).expect_code(0);
    let keys: Vec<String> = env.column("SELECT key FROM usage_files");
    assert_eq!(keys, [usage_key("pt-1", "2025/06/01/00", "sub-a")]);
}

#[test]
fn an_empty_prefix_ingests_nothing_and_records_the_missing_marker() {
    let env = TestEnv::new().with_bucket("empty");
    let bucket = env.bucket();
    bucket.put(
        "other-prefix/omnistrate-metering/last_success_export.json",
        b"{}",
    );
    let out = ingest(&env, &format!("{}/nothing-here", bucket.url())).expect_code(0);
    let stderr = out.stderr;
    assert!(stderr.contains("nothing new: 0 usage files"), "{stderr}");
    assert!(stderr.contains("no completion marker"), "{stderr}");
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM export_marker_reads WHERE status = 'missing'"),
        1
    );
}

#[test]
fn a_malformed_marker_is_recorded_and_warned_about_and_ingest_goes_on() {
    let env = TestEnv::new().with_bucket("marker");
    let bucket = env.bucket();
    let body = cpu_hours_of_c1(2);
    bucket.put(&usage_key("pt-1", "2025/06/01/00", "sub-a"), &body);
    bucket.put(MARKER_KEY, b"{not json");
    let source = bucket.url();
    let out = ingest(&env, &source).expect_code(0);
    assert!(
        out.stderr.contains("last_success_export.json"),
        "{}",
        out.stderr
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM export_marker_reads WHERE status = 'malformed'"),
        1
    );

    let marker = json!({"pg:PROD:pt-1": {
        "last_processed_to": "2025-06-01T00:59:59Z",
        "last_updated_at": "2025-06-01T01:05:00Z"}});
    bucket.put(MARKER_KEY, &serde_json::to_vec(&marker).unwrap());
    ingest(&env, &source).expect_code(0);
    let to: String = env
        .one("SELECT last_processed_to FROM export_completion WHERE service_key = 'pg:PROD:pt-1'");
    assert_eq!(to, "2025-06-01T00:59:59Z");
}

#[test]
fn a_missing_bucket_ends_the_run_with_one_line_and_the_config_exit_code() {
    let env = TestEnv::new();
    let out = ingest(&env, "s3://mb-no-such-bucket-here")
        .s3_endpoint(&endpoint())
        .expect_code(2);
    let stderr = out.stderr;
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("bucket 'mb-no-such-bucket-here' does not exist")
            && errors[0].contains("check --source"),
        "{stderr}"
    );
}

#[test]
fn missing_credentials_end_the_run_with_one_line_and_the_config_exit_code() {
    let env = TestEnv::new().with_bucket("nocreds");
    let bucket = env.bucket();
    let out = ingest(&env, &bucket.url())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .expect_code(2);
    let stderr = out.stderr;
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains(&format!("s3://{}/", bucket.name))
            && errors[0].contains("no usable AWS credentials; set AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );
}

#[test]
fn permanent_errors_end_the_run_with_one_line_naming_what_to_check() {
    let cases = [
        (
            "403:AccessDenied",
            "access denied; check that the AWS credentials",
        ),
        ("403:InvalidAccessKeyId", "check AWS_ACCESS_KEY_ID"),
        ("403:SignatureDoesNotMatch", "check AWS_SECRET_ACCESS_KEY"),
        (
            "301:PermanentRedirect",
            "another region (eu-west-3); set --s3-region",
        ),
    ];
    for (answer, expected) in cases {
        let env = TestEnv::new().with_bucket("denied");
        let bucket = env.bucket();
        let proxy = FaultProxy::start(&["--answer", answer]);
        let out = ingest(&env, &bucket.url())
            .s3_endpoint(&proxy.url)
            .env("AWS_SECRET_ACCESS_KEY", "secret-that-must-not-be-printed")
            .expect_code(2);
        let stderr = out.stderr;
        let errors = error_lines(&stderr);
        assert_eq!(errors.len(), 1, "{answer}: {stderr}");
        assert!(
            errors[0].contains(&format!("s3://{}/", bucket.name)) && errors[0].contains(expected),
            "{answer}: {stderr}"
        );
        assert!(
            !stderr.contains("secret-that-must-not-be-printed"),
            "{stderr}"
        );
        // A permanent error is not retried.
        assert_eq!(proxy.stats()["requests"], 1, "{answer}");
    }
}

#[test]
fn transient_errors_are_retried_and_the_ingest_ends_complete_and_exactly_once() {
    let env = TestEnv::new().with_bucket("faults");
    env.generate(&["--subscriptions", "10", "--hours", "30"]);
    let bucket = env.bucket();
    bucket.upload(&env.export(), "");
    let records = usage_records(&env.export()).len() as i64;
    let proxy = FaultProxy::start(&[
        "--error-rate",
        "0.15",
        "--drop-rate",
        "0.05",
        "--stall-rate",
        "0.02",
        "--stall-secs",
        "3",
    ]);
    ingest(&env, &bucket.url())
        .s3_endpoint(&proxy.url)
        .args(["--s3-attempt-timeout", "1", "--concurrency", "16"])
        .expect_code(0);
    let faults = &proxy.stats()["faults"];
    for kind in ["error", "drop", "stall"] {
        assert!(
            faults[kind].as_i64().unwrap() > 0,
            "no {kind} injected: {faults}"
        );
    }
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 300);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    // Exactly once: no file stored twice, none replaced by a retried read.
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_file_versions"), 0);
    assert_files_whole(&env);
}

#[test]
fn a_killed_ingest_leaves_only_whole_files_and_the_next_run_completes_it() {
    let env = TestEnv::new().with_bucket("killed");
    env.generate(&["--subscriptions", "40", "--hours", "48"]);
    let bucket = env.bucket();
    bucket.upload(&env.export(), "");
    let records = usage_records(&env.export()).len() as i64;
    let source = bucket.url();

    let run = ingest(&env, &source)
        .args(["--concurrency", "2", "--batch-files", "50"])
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if env.ledger.exists()
            && rusqlite::Connection::open(&env.ledger)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM usage_files", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .is_ok_and(|n| n >= 100)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill(); // SIGKILL
    let stored = env.count("SELECT COUNT(*) FROM usage_files");
    assert!((100..1920).contains(&stored), "killed after {stored} files");
    assert_files_whole(&env);

    let out = ingest(&env, &source).expect_code(0);
    assert!(
        out.stderr
            .contains("did not finish cleanly; listing every month"),
        "{}",
        out.stderr
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_files"), 1920);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);
    assert_eq!(env.count("SELECT MAX(version) FROM usage_files"), 1);
    assert_files_whole(&env);
}
