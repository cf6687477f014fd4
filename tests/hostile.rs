//! Hostile input never blocks billing: values whose sums overflow, unreadable and odd paths,
//! files over the size limit, files of nothing but problems, billing-file bombs. Each test shows
//! the bad input as rows naming it, and everything else ingested (or submitted) as usual.

use std::panic::AssertUnwindSafe;

use serde_json::{json, Value};

use crate::util::{record, usage_key, zip_of, Output, TestCommand, TestEnv};

/// The reason of the one problem whose key ends with `suffix`.
fn reason_for(problems: &[(String, Option<i64>, String)], suffix: &str) -> String {
    let found: Vec<_> = problems.iter().filter(|p| p.0.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "one problem for {suffix} in {problems:#?}");
    found[0].2.clone()
}

/// The scenario: one file holds 9223372036854775807 and 1 cpu-hours for contract A. Before,
/// it was ingested with exit 0, then every usage view failed with "integer overflow" and submit
/// sent nothing for any contract.
#[test]
fn an_overflowing_pair_of_records_is_refused_and_every_contract_is_still_submitted() {
    let env = TestEnv::new().with_emulator(&[]);
    let bad = usage_key("pt-1", "2025/06/01/00", "sub-a");
    env.write_records(
        &bad,
        &[
            record(Some("contract-a"), "cpu_core_hours", json!(i64::MAX)),
            record(Some("contract-a"), "cpu_core_hours", json!(1)),
            record(Some("contract-a"), "replica_hours", json!(3)),
        ],
    );
    env.write_records(
        &usage_key("pt-1", "2025/06/02/00", "sub-a"),
        &[record(Some("contract-a"), "cpu_core_hours", json!(7))],
    );
    env.write_records(
        &usage_key("pt-1", "2025/06/01/00", "sub-b"),
        &[record(Some("contract-b"), "cpu_core_hours", json!(4))],
    );
    env.write_marker("2025-06-30T23:59:59Z");

    let stderr = env.ingest().expect_code(3).stderr;
    assert!(
        stderr.contains(&format!("{bad}: record 0: value 9223372036854775807"))
            && stderr.contains("2^52"),
        "{stderr}"
    );
    let p = env.usage_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].0.as_str(), p[0].1), (bad.as_str(), Some(0)));
    assert_eq!(
        env.count(
            "SELECT status = 'partial' FROM usage_files WHERE key LIKE '%06/01/00/sub-a.json'"
        ),
        1
    );

    // Every usage view answers, through meterbook's own sql command.
    for view in [
        "hourly_usage",
        "monthly_usage",
        "hourly_usage_max_per_pod",
        "unattributed_usage",
        "usage_problems",
        "pending_periods",
        "submission_drift",
    ] {
        env.meterbook(["sql", &format!("SELECT * FROM {view}")])
            .expect_code(0);
    }

    env.meterbook(["submit"]).expect_code(0);
    let q = |c: &str, d: &str, n: &str| (c.to_string(), d.to_string(), n.to_string());
    assert_eq!(
        env.emulator().accepted_quantities(),
        [
            q("contract-a", "cpu_core_hours", "8"),
            q("contract-a", "replica_hours", "3"),
            q("contract-b", "cpu_core_hours", "4"),
        ]
    );
}

#[test]
fn odd_paths_are_problem_rows_naming_them_and_everything_else_is_ingested() {
    let env = TestEnv::new();
    let good = [record(Some("c-1"), "cpu_core_hours", json!(2))];
    env.write_records(&usage_key("pt-1", "2025/06/01/00", "sub-a"), &good);
    let elsewhere = env.path("elsewhere");
    std::fs::create_dir_all(elsewhere.join("00")).unwrap();
    std::fs::write(
        elsewhere.join("00/sub-x.json"),
        serde_json::to_vec(&good).unwrap(),
    )
    .unwrap();
    let day = env
        .export()
        .join("omnistrate-metering/pg/PROD/pt-1/2025/06/01");
    // A linked file, a linked hour folder (which would count its files twice), a FIFO.
    std::os::unix::fs::symlink(elsewhere.join("00/sub-x.json"), day.join("00/link.json")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("00"), day.join("01")).unwrap();
    let fifo = std::ffi::CString::new(day.join("00/fifo.json").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A year before 1970, and folder names that would merge two service keys.
    env.write_records(&usage_key("pt-1", "1969/12/31/23", "sub-a"), &good);
    env.write_records(
        "omnistrate-metering/pg:PROD/x/pt-1/2025/06/01/00/sub-a.json",
        &good,
    );
    env.write_records(
        "omnistrate-metering/pg/PROD:x/pt-1/2025/06/01/00/sub-a.json",
        &good,
    );

    env.ingest().expect_code(3);
    let p = env.usage_problems();
    assert!(reason_for(&p, "00/link.json").contains("symbolic link, not followed"));
    assert!(reason_for(&p, "2025/06/01/01").contains("symbolic link, not followed"));
    assert!(reason_for(&p, "00/fifo.json").contains("not a regular file"));
    assert!(reason_for(&p, "1969/12/31/23/sub-a.json").contains("outside the years 1970"));
    let colons: Vec<_> = p.iter().filter(|p| p.2.contains("hold ':'")).collect();
    assert_eq!(colons.len(), 2, "{p:#?}");
    // No service key was made of a folder name with ':'.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_files WHERE service_key LIKE '%:%:%:%'"),
        0
    );
    // The one good file is all that was stored as usage.
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 1);
    assert_eq!(env.count("SELECT value FROM monthly_usage"), 2);

    // Once the links and the FIFO are gone, a run that walks the whole source drops their rows;
    // the files' own problems stay with them.
    for name in ["00/link.json", "01", "00/fifo.json"] {
        std::fs::remove_file(day.join(name)).unwrap();
    }
    env.ingest().expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM source_problems"), 0);
    assert_eq!(env.usage_problems().len(), 3);
}

/// `meterbook ingest`, which must exit with `code`, as a user whom permissions bind. As root (CI
/// runs as root) chmod 000 does not stop reads, so the run is made as `nobody` through `setpriv`;
/// without it the test is skipped (`None`), and the walker's handling of a folder that cannot be
/// listed is still covered by the unit test
/// `source::local::tests::a_folder_that_cannot_be_listed_is_a_problem_and_the_walk_goes_on`.
fn ingest_unprivileged(env: &TestEnv, code: i32) -> Option<Output> {
    if unsafe { libc::geteuid() } != 0 {
        return Some(env.ingest().expect_code(code));
    }
    use std::os::unix::fs::PermissionsExt;
    let as_nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    let usable = TestCommand::new("setpriv")
        .args(as_nobody)
        .args([env!("CARGO_BIN_EXE_meterbook"), "--version"])
        .succeeds();
    if !usable {
        eprintln!("skipped: running as root (chmod 000 does not stop reads) without setpriv");
        return None;
    }
    // The user nobody writes the ledger in the test's folder and reads the export.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    Some(env.ingest().via("setpriv", as_nobody).expect_code(code))
}

#[test]
fn an_unreadable_folder_and_file_are_problem_rows_and_the_rest_is_ingested() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let good = [record(Some("c-1"), "cpu_core_hours", json!(2))];
    for sub in ["sub-a", "sub-b"] {
        env.write_records(&usage_key("pt-1", "2025/06/01/00", sub), &good);
    }
    env.write_records(&usage_key("pt-1", "2025/06/02/00", "sub-a"), &good);
    let day = env
        .export()
        .join("omnistrate-metering/pg/PROD/pt-1/2025/06/02");
    let file = env
        .export()
        .join(usage_key("pt-1", "2025/06/01/00", "sub-b"));
    std::fs::set_permissions(&day, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| ingest_unprivileged(&env, 3)));
    // Readable again before any failure is reported, so that the folder can be removed.
    std::fs::set_permissions(&day, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let Some(_) = out.unwrap_or_else(|panic| std::panic::resume_unwind(panic)) else {
        return;
    };
    let p = env.usage_problems();
    assert!(reason_for(&p, "2025/06/02").contains("cannot be listed"));
    assert!(reason_for(&p, "00/sub-b.json").contains("could not be read"));
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 1);

    // Readable again: both are ingested and their problem rows are gone.
    env.ingest().expect_code(0);
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 3);
    assert_eq!(env.usage_problems().len(), 0);
}

#[test]
fn a_file_over_the_size_limit_is_a_problem_row_and_is_read_once_the_limit_allows() {
    let env = TestEnv::new();
    let small = [record(Some("c-1"), "cpu_core_hours", json!(2))];
    env.write_records(&usage_key("pt-1", "2025/06/01/00", "sub-a"), &small);
    let big: Vec<Value> = (0..40)
        .map(|_| record(Some("c-2"), "cpu_core_hours", json!(1)))
        .collect();
    let big_key = usage_key("pt-1", "2025/06/01/00", "sub-b");
    env.write_records(&big_key, &big);

    env.ingest()
        .args(["--max-file-bytes", "4KiB"])
        .expect_code(3);
    let p = env.usage_problems();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, big_key);
    assert!(p[0].2.contains("over the limit of 4096 bytes"), "{p:?}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_files WHERE key LIKE '%sub-b.json'"),
        0
    );
    assert_eq!(env.count("SELECT value FROM monthly_usage"), 2);
    assert_eq!(
        env.count("SELECT files_too_large FROM ingest_runs ORDER BY id DESC LIMIT 1"),
        1
    );

    env.ingest().expect_code(0);
    assert_eq!(env.usage_problems().len(), 0);
    assert_eq!(
        env.count("SELECT value FROM monthly_usage WHERE contract_id = 'c-2'"),
        40
    );
}

/// A file of nothing but bad records keeps the first 1,000 problems and counts the rest.
#[test]
fn problems_per_file_are_capped_and_counted() {
    let env = TestEnv::new();
    let zeros = format!("[{}0]", "0,".repeat(2999));
    let bad_key = usage_key("pt-1", "2025/06/01/00", "sub-a");
    env.write_usage(&bad_key, zeros.as_bytes());
    env.write_records(
        &usage_key("pt-1", "2025/06/01/00", "sub-b"),
        &[record(Some("c-1"), "cpu_core_hours", json!(2))],
    );
    let out = env.ingest().expect_code(3);
    assert!(
        out.stderr.contains("3000 problems in 1 files"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.count("SELECT problem_count FROM usage_files WHERE key LIKE '%sub-a.json'"),
        3000
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM ingest_problems"), 1001);
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM usage_problems
             WHERE record_index IS NULL AND reason LIKE '... and 2000 more problems%'"
        ),
        1
    );
    assert_eq!(env.count("SELECT value FROM monthly_usage"), 2);
}

const BILLING_HEADER: &str = "InvoiceID,PayerAccountId,LinkedAccountId,RecordType,ProductName,UsageStartDate,UsageEndDate,UsageQuantity,BlendedCost,UnBlendedCost,ResourceId,user:Owner\n";

fn billing_file(dir: &std::path::Path, month: &str, csv: &[u8]) {
    let name = format!(
        "123456789012-aws-billing-detailed-line-items-with-resources-and-tags-{month}.csv.zip"
    );
    std::fs::write(dir.join(name), zip_of("billing.csv", csv)).unwrap();
}

/// Before, a small zip of a header and millions of lines of `0` left a problem row per line (a
/// ledger of hundreds of MB), and a zip of gigabytes without a newline was read into memory.
#[test]
fn billing_bombs_end_as_a_few_problem_rows_and_other_months_are_intact() {
    let env = TestEnv::new();
    let dir = env.path("billing");
    std::fs::create_dir_all(&dir).unwrap();
    let good = format!(
        "{BILLING_HEADER}1,111,222,LineItem,EC2,2025-06-01 00:00:00,2025-06-01 01:00:00,1,0.5,0.5,i-1,alice\n"
    );
    billing_file(&dir, "2025-06", good.as_bytes());
    let mut zeros = BILLING_HEADER.as_bytes().to_vec();
    zeros.extend(b"0\n".repeat(200_000));
    billing_file(&dir, "2025-05", &zeros);
    let mut endless = BILLING_HEADER.as_bytes().to_vec();
    endless.extend(vec![b'0'; 8 << 20]);
    billing_file(&dir, "2025-04", &endless);

    env.meterbook(["costs", "ingest", "--source"])
        .arg(&dir)
        .expect_code(3);
    assert_eq!(
        env.count("SELECT problem_count FROM cost_files WHERE month = '2025-05'"),
        200_000
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_problems WHERE month = '2025-05'"),
        1001
    );
    let endless_reason: String =
        env.one("SELECT reason FROM cost_problems WHERE month = '2025-04'");
    assert!(
        endless_reason.contains("longer than 1048576 bytes"),
        "{endless_reason}"
    );
    assert_eq!(
        env.count("SELECT status = 'rejected' FROM cost_files WHERE month = '2025-04'"),
        1
    );
    assert_eq!(
        env.count("SELECT blended_nanos FROM cost_line_items"),
        500_000_000
    );
    // The ledger stays small: well under a megabyte of problems for 200,000 bad lines.
    let size = std::fs::metadata(&env.ledger).unwrap().len()
        + std::fs::metadata(format!("{}-wal", env.ledger.display())).map_or(0, |m| m.len());
    assert!(size < 4 << 20, "ledger of {size} bytes");
}
