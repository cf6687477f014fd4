//! `meterbook compact`: a fully submitted month's records give way to each file's totals, the
//! usage views give the same numbers, drift is still seen, and a rewritten file of a compacted
//! month replaces exactly its own contribution.

use crate::console::{crate_encode, get, Server};
use crate::util::TestEnv;

/// Every row of `sql` on the ledger, as text, sorted.
fn rows(env: &TestEnv, sql: &str) -> Vec<String> {
    let mut out = env.rows(sql, |r| {
        Ok((0..r.as_ref().column_count())
            .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
            .collect::<Vec<_>>()
            .join(" "))
    });
    out.sort();
    out
}

/// The usage views (`amount`, a sum of floating-point products, to 6 decimals: summed per file
/// first, it may differ in its last digits) and the drift.
const VIEWS: [&str; 4] = [
    "SELECT service_key, hour, contract_id, dimension, value, round(amount, 6), records, files
     FROM hourly_usage",
    "SELECT service_key, month, contract_id, dimension, value, round(amount, 6), records, files,
            hours FROM monthly_usage",
    "SELECT * FROM unattributed_usage",
    "SELECT * FROM submission_drift",
];

fn compact(env: &TestEnv, args: &[&str]) -> String {
    env.meterbook(["compact"]).args(args).expect_code(0).stdout
}

#[test]
fn a_compacted_month_gives_the_same_numbers_and_a_rewritten_file_replaces_its_own() {
    let env = TestEnv::new().with_emulator(&[]);
    env.generate(&[
        "--subscriptions",
        "4",
        "--month",
        "2025-06",
        "--hours",
        "48",
        "--marker-to",
        "2025-06-30T23:59:59Z",
    ]);
    env.ingest().expect_code(0);
    // A record without a contract, which compacting keeps per subscription and customer.
    let key = "omnistrate-metering/pg/PROD/pt-HJSv20iWX0/2025/06/01/03/sub-unattributed.json";
    env.write_usage(
        key,
        br#"[{"timestamp": "2025-06-01T03:00:00Z", "subscriptionId": "sub-u", "customerId": "cust-u",
             "dimension": "cpu_core_hours", "value": 7, "pricePerUnit": 0.5}]"#,
    );
    env.ingest().expect_code(3);
    // Nothing submitted yet: kept.
    let unsubmitted = compact(&env, &["--before", "2025-07", "--keep-months", "0"]);
    assert!(
        unsubmitted.contains("contracts with usage have no submission for it yet"),
        "{unsubmitted}"
    );
    env.meterbook(["submit"]).expect_code(0);
    let before: Vec<Vec<String>> = VIEWS.iter().map(|v| rows(&env, v)).collect();
    let records = env.count("SELECT COUNT(*) FROM usage_records");

    // Within the drift window: kept.
    let kept = compact(&env, &["--before", "2025-07", "--keep-months", "1200"]);
    assert!(kept.contains("within the drift window"), "{kept}");
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), records);

    let done = compact(&env, &["--before", "2025-07", "--keep-months", "0"]);
    assert!(
        done.contains("compacted pg:PROD:pt-HJSv20iWX0 2025-06"),
        "{done}"
    );
    assert_eq!(env.count("SELECT COUNT(*) FROM usage_records"), 0);
    assert!(env.count("SELECT COUNT(*) FROM compacted_usage") > 0);
    let after: Vec<Vec<String>> = VIEWS.iter().map(|v| rows(&env, v)).collect();
    assert!(
        after == before,
        "the views give other numbers after compacting"
    );
    assert!(!after[2].is_empty(), "unattributed usage is still shown");
    // What a compacted month cannot answer: the records themselves, per pod.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM hourly_usage_max_per_pod"),
        0
    );
    let again = compact(&env, &["--before", "2025-07", "--keep-months", "0"]);
    assert!(again.contains("nothing to compact"), "{again}");
    // The console still lists a contract's files in the compacted month.
    let (contract, its_key): (String, String) = env.rows(
        "SELECT c.contract_id, f.key FROM compacted_usage c JOIN usage_files f ON f.id = c.file_id
         WHERE c.contract_id IS NOT NULL ORDER BY c.contract_id, f.hour, f.key LIMIT 1",
        |r| Ok((r.get(0)?, r.get(1)?)),
    )[0]
    .clone();
    let server = Server::start(&env, None);
    let (status, _, page) = get(
        &format!(
            "{}/usage/files?service_key={}&contract={}&month=2025-06",
            server.url,
            crate_encode("pg:PROD:pt-HJSv20iWX0"),
            crate_encode(&contract)
        ),
        &[],
    )
    .expect("the console answers");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&its_key), "{its_key} not in {page}");
    server.stop();

    // A new file in the compacted month: kept as totals too.
    let late = "omnistrate-metering/pg/PROD/pt-HJSv20iWX0/2025/06/01/00/sub-late.json";
    env.write_usage(
        late,
        br#"[{"timestamp": "2025-06-01T00:00:00Z", "subscriptionId": "sub-l", "customerId": "cust-l",
             "externalPayerId": "contract-new", "dimension": "cpu_core_hours", "value": 5}]"#,
    );
    env.ingest().expect_code(0);
    // A file of the compacted month is rewritten: its contribution is replaced, not added.
    let changed = std::path::Path::new(&env.export()).join(key);
    std::fs::write(
        &changed,
        br#"[{"timestamp": "2025-06-01T03:00:00Z", "subscriptionId": "sub-u", "customerId": "cust-u",
             "dimension": "cpu_core_hours", "value": 9, "pricePerUnit": 0.5}]"#,
    )
    .unwrap();
    env.ingest().expect_code(3);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM usage_records"),
        0,
        "a compacted month stays totals"
    );
    assert_eq!(
        env.count(
            "SELECT value FROM unattributed_usage WHERE subscription_id = 'sub-u' AND month = '2025-06'"
        ),
        9,
        "the rewrite replaced 7 by 9"
    );
    assert_eq!(
        env.count(
            "SELECT value FROM usage_file_version_totals t JOIN usage_file_versions v ON v.id = t.version_id
             JOIN usage_files f ON f.id = v.file_id WHERE f.key LIKE '%/03/sub-unattributed.json'"
        ),
        7,
        "the replaced version's totals are its history"
    );
    assert_eq!(
        env.count("SELECT value FROM monthly_usage WHERE contract_id = 'contract-new'"),
        5
    );
    // A contract's usage changed after it was delivered is drift, seen in the compacted month.
    let first_contract: String = env.one("SELECT MIN(contract_id) FROM submissions");
    let its_file: String = env.one(&format!(
        "SELECT f.key FROM usage_files f JOIN compacted_usage c ON c.file_id = f.id
         WHERE c.contract_id = '{first_contract}' AND c.dimension = 'cpu_core_hours'
         ORDER BY f.key LIMIT 1"
    ));
    let path = std::path::Path::new(&env.export()).join(&its_file);
    let mut body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut added = 0;
    for r in body.as_array_mut().unwrap() {
        if r["dimension"] == "cpu_core_hours" {
            r["value"] = serde_json::json!(r["value"].as_i64().unwrap() + 100);
            added += 100;
        }
    }
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();
    env.ingest().expect_code(0);
    let drift = |what: &str| {
        env.count(&format!(
            "SELECT {what} FROM submission_drift WHERE contract_id = '{first_contract}'"
        ))
    };
    assert_eq!(drift("COUNT(*)"), 1);
    assert_eq!(drift("difference"), added);
    assert_eq!(drift("dimension = 'cpu_core_hours'"), 1);
}
