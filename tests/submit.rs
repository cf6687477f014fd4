//! `meterbook submit`, `history` and `resubmit` against the Clazar emulator over real HTTP on
//! 127.0.0.1: every outcome Clazar can give, retries, a crash between send and record, dry runs,
//! formulas, drift, and secrets that never leak.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::emulator::SECRET;
use crate::util::{rows_as_text, Output, TestEnv, SERVICE_KEY};

/// A test environment with the emulator started with `args`, fast retries and debug logs.
fn with_fast_emulator(args: &[&str]) -> TestEnv {
    TestEnv::new().with_emulator(args).with_vars([
        ("METERBOOK_CLAZAR_BACKOFF_MS", "10"),
        ("METERBOOK_CLAZAR_TIMEOUT", "5"),
        ("METERBOOK_LOG", "debug"),
    ])
}

/// Two contracts in June 2025, a marker covering June, ingested.
pub(crate) fn june(env: &TestEnv) {
    let (cpu, replicas) = ("cpu_core_hours", "replica_hours");
    env.write_hour(
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[(cpu, json!(2)), (replicas, json!(1))],
    );
    env.write_hour(
        "2025/06/02/05",
        "sub-a",
        "contract-a",
        &[(cpu, json!(3)), (replicas, json!(1))],
    );
    env.write_hour("2025/06/01/00", "sub-b", "contract-b", &[(cpu, json!(4))]);
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
}

/// One contract with 2 CPU core hours in June 2025, a marker covering June, ingested.
fn one_contract(env: &TestEnv) {
    env.write_hour(
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(2))],
    );
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
}

/// `meterbook args`, which must exit with `code` and leak no secret.
fn run(env: &TestEnv, args: &[&str], code: i32) -> Output {
    let out = env.meterbook(args).expect_code(code);
    assert_no_secrets(env, &out);
    out
}

/// The client secret and every token the emulator issued appear nowhere: not in stdout, stderr,
/// nor in the ledger's files.
fn assert_no_secrets(env: &TestEnv, out: &Output) {
    let mut secrets = env.emulator().tokens();
    secrets.push(SECRET.to_string());
    let mut places = vec![
        ("stdout", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
    ];
    for suffix in ["", "-wal"] {
        let path = PathBuf::from(format!("{}{suffix}", env.ledger.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            places.push(("ledger", String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    for (place, text) in places {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a secret appears in the {place}"
            );
        }
    }
}

/// Line statuses per (contract, dimension), latest line last.
fn lines(env: &TestEnv) -> Vec<(String, String, String)> {
    env.rows(
        "SELECT contract_id, dimension, status FROM submission_lines ORDER BY contract_id, dimension, id",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

/// Two columns of the one row a query on the ledger returns.
fn pair<A: rusqlite::types::FromSql, B: rusqlite::types::FromSql>(
    env: &TestEnv,
    sql: &str,
) -> (A, B) {
    env.db()
        .query_row(sql, [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn triple(c: &str, d: &str, s: &str) -> (String, String, String) {
    (c.to_string(), d.to_string(), s.to_string())
}

#[test]
fn submits_each_amount_once_per_contract_and_a_second_run_sends_nothing() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    run(&env, &["submit"], 0);
    assert_eq!(
        emu.accepted_quantities(),
        [
            triple("contract-a", "cpu_core_hours", "5"),
            triple("contract-a", "replica_hours", "2"),
            triple("contract-b", "cpu_core_hours", "4"),
        ]
    );
    let first = emu.accepted()[0].clone();
    assert_eq!(first["start_time"], "2025-06-01T00:00:00Z");
    assert_eq!(first["end_time"], "2025-06-30T23:59:59Z");
    assert_eq!(first["cloud"], "aws");
    let stats = emu.stats();
    assert_eq!(stats["metering_requests"], 2, "one request per contract");
    assert_eq!(stats["auth_requests"], 1, "the token is cached");
    assert_eq!(
        lines(&env),
        [
            triple("contract-a", "cpu_core_hours", "accepted"),
            triple("contract-a", "replica_hours", "accepted"),
            triple("contract-b", "cpu_core_hours", "accepted"),
        ]
    );

    run(&env, &["submit"], 0);
    assert_eq!(emu.metering_requests(), 2, "nothing is sent twice");
    emu.assert_exactly_once();
}

#[test]
fn the_unique_index_refuses_a_second_accepted_or_in_flight_line() {
    let env = with_fast_emulator(&[]);
    june(&env);
    run(&env, &["submit"], 0);
    let db = env.db();
    let second = |status: &str, dimension: &str| {
        db.execute(
            "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind,
                 period, dimension, quantity, status, updated_at)
             VALUES (1, ?1, 'contract-a', 'month', '2025-06', ?2, 1, ?3, 'now')",
            rusqlite::params![SERVICE_KEY, dimension, status],
        )
    };
    for status in ["accepted", "pending", "sending", "duplicate", "imported"] {
        assert!(
            second(status, "cpu_core_hours").is_err(),
            "a second '{status}' line was allowed"
        );
    }
    // A failed attempt does not hold the key; an imported row covering every dimension does.
    assert!(second("failed", "cpu_core_hours").is_ok());
    db.execute(
        "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind,
             period, dimension, status, updated_at)
         VALUES (1, ?1, 'contract-c', 'month', '2025-05', '*', 'imported', 'now')",
        [SERVICE_KEY],
    )
    .unwrap();
    let blocked = db.execute(
        "INSERT INTO submission_lines (submission_id, service_key, contract_id, period_kind,
             period, dimension, quantity, status, updated_at)
         VALUES (1, ?1, 'contract-c', 'month', '2025-05', 'cpu_core_hours', 3, 'pending', 'now')",
        [SERVICE_KEY],
    );
    assert!(blocked.is_err(), "an imported month must block new lines");
}

#[test]
fn only_periods_the_marker_covers_entirely_are_submitted() {
    let env = with_fast_emulator(&[]);
    env.write_hour(
        "2025/06/30/23",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(1))],
    );
    env.write_hour(
        "2025/07/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(7))],
    );
    // One second short of June's end: nothing is complete.
    env.write_marker("2025-06-30T23:59:58Z");
    env.ingest().expect_code(0);
    let emu = env.emulator();
    run(&env, &["submit"], 0);
    assert_eq!(emu.metering_requests(), 0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pending_periods WHERE complete = 0"),
        2,
        "June and July wait, and say so"
    );

    // The marker inside July completes June only (never the month containing it).
    env.write_marker("2025-07-15T10:00:00Z");
    env.ingest().expect_code(0);
    run(&env, &["submit"], 0);
    assert_eq!(
        emu.accepted_quantities(),
        [triple("contract-a", "cpu_core_hours", "1")]
    );
    assert_eq!(emu.accepted()[0]["start_time"], "2025-06-01T00:00:00Z");
}

#[test]
fn without_a_marker_nothing_is_sent_unless_a_grace_delay_is_opted_into() {
    let env = with_fast_emulator(&[]);
    env.write_hour(
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(1))],
    );
    env.ingest().expect_code(0);
    let emu = env.emulator();
    let out = run(&env, &["submit"], 3);
    assert!(out.stderr.contains("no completion marker"));
    assert_eq!(emu.metering_requests(), 0);

    run(&env, &["submit", "--grace-without-marker", "6h"], 0);
    assert_eq!(emu.accepted().len(), 1);
}

#[test]
fn hourly_periods_are_submitted_up_to_the_marker_oldest_first_and_bounded() {
    let env = with_fast_emulator(&[]);
    for h in ["00", "01", "02", "03"] {
        env.write_hour(
            &format!("2025/06/01/{h}"),
            "sub-a",
            "contract-a",
            &[("cpu_core_hours", json!(1))],
        );
    }
    env.write_marker("2025-06-01T02:59:59Z");
    env.ingest().expect_code(0);
    let emu = env.emulator();
    run(
        &env,
        &["submit", "--period", "hour", "--max-hours-per-run", "2"],
        0,
    );
    let windows: Vec<(String, String)> = emu
        .accepted()
        .iter()
        .map(|r| {
            (
                r["start_time"].as_str().unwrap().to_string(),
                r["end_time"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        windows,
        [
            ("2025-06-01T00:00:00Z".into(), "2025-06-01T01:00:00Z".into()),
            ("2025-06-01T01:00:00Z".into(), "2025-06-01T02:00:00Z".into()),
        ]
    );
    run(&env, &["submit", "--period", "hour"], 0);
    assert_eq!(
        emu.accepted().len(),
        3,
        "hour 03 is not covered by the marker"
    );
    // Monthly submission of June would overlap the hours already sent: nothing is sent.
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    run(&env, &["submit"], 0);
    assert_eq!(emu.metering_requests(), 3);
}

#[test]
fn a_duplicate_of_an_accepted_record_counts_as_accepted() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    // Another ledger (say, the predecessor) already sent contract-b's June.
    let other = env.another_host();
    june(&other);
    other.meterbook(["submit"]).expect_code(0);
    assert_eq!(emu.accepted().len(), 3);

    run(&env, &["submit"], 0);
    assert_eq!(
        lines(&env),
        [
            triple("contract-a", "cpu_core_hours", "duplicate"),
            triple("contract-a", "replica_hours", "duplicate"),
            triple("contract-b", "cpu_core_hours", "duplicate"),
        ]
    );
    emu.assert_exactly_once();
}

#[test]
fn an_unregistered_dimension_is_a_warning_that_needs_attention_and_resubmit_sends_it() {
    let env = with_fast_emulator(&["--dimension", "cpu_core_hours"]);
    june(&env);
    let emu = env.emulator();
    run(&env, &["submit"], 3);
    assert!(
        lines(&env).contains(&triple("contract-a", "replica_hours", "warning")),
        "{:?}",
        lines(&env)
    );
    let rows = run(&env, &["history", "--failures", "--format", "json"], 0).json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["dimension"], "replica_hours");
    assert_eq!(rows[0]["status"], "warning");

    // The operator registers the dimension; resubmit sends only what was not accepted.
    emu.config(json!({"dimensions": ["cpu_core_hours", "replica_hours"]}));
    let before = emu.metering_requests();
    run(&env, &["resubmit"], 0);
    assert_eq!(emu.metering_requests(), before + 1);
    assert_eq!(
        emu.accepted_quantities(),
        [
            triple("contract-a", "cpu_core_hours", "5"),
            triple("contract-a", "replica_hours", "2"),
            triple("contract-b", "cpu_core_hours", "4"),
        ]
    );
    let linked = env.count(
        "SELECT COUNT(*) FROM submission_lines n JOIN submission_lines o ON n.retry_of = o.id
         WHERE n.status = 'accepted' AND o.status = 'warning' AND n.dimension = 'replica_hours'",
    );
    assert_eq!(linked, 1, "the new attempt is linked to the old one");
    // Nothing is left to resubmit, and accepted lines are never re-sent.
    run(&env, &["resubmit"], 0);
    assert_eq!(emu.metering_requests(), before + 1);
    emu.assert_exactly_once();
}

#[test]
fn an_unknown_contract_is_rejected_with_its_errors_and_does_not_block_others() {
    let env = with_fast_emulator(&["--unknown-contract", "contract-a"]);
    june(&env);
    let emu = env.emulator();
    run(&env, &["submit"], 3);
    assert_eq!(
        emu.accepted_quantities(),
        [triple("contract-b", "cpu_core_hours", "4")]
    );
    let (code_, errors): (String, String) = pair(&env, "SELECT code, errors FROM submission_lines WHERE contract_id = 'contract-a' AND status = 'rejected' LIMIT 1");
    assert_eq!(code_, "INVALID_CONTRACT");
    assert!(errors.contains("Invalid contract_id"), "{errors}");
}

#[test]
fn transient_failures_are_retried_with_backoff_honouring_retry_after() {
    let env = with_fast_emulator(&[]);
    one_contract(&env);
    let emu = env.emulator();
    emu.faults(json!([
        {"kind": "status", "status": 503},
        {"kind": "rate_limit", "retry_after": 1},
        {"kind": "drop", "accept": false},
        {"kind": "status", "status": 500},
    ]));
    let started = Instant::now();
    run(&env, &["submit"], 0);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(emu.metering_requests(), 5);
    assert_eq!(env.count("SELECT attempts FROM submissions"), 5);
    assert_eq!(
        lines(&env),
        [triple("contract-a", "cpu_core_hours", "accepted")]
    );
}

#[test]
fn without_an_answer_after_every_retry_the_next_run_sends_it_again() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    emu.faults(json!([{"kind": "status", "status": 502, "times": 2}]));
    run(
        &env,
        &["submit", "--max-retries", "1", "--clazar-concurrency", "1"],
        3,
    );
    let transient = env.count("SELECT COUNT(*) FROM submission_lines WHERE status = 'transient'");
    assert!(transient >= 1, "{:?}", lines(&env));
    run(&env, &["submit"], 0);
    assert_eq!(emu.accepted().len(), 3);
    emu.assert_exactly_once();
}

#[test]
fn another_4xx_is_rejected_without_retry() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    emu.faults(json!([{"kind": "status", "status": 422}]));
    run(&env, &["submit", "--clazar-concurrency", "1"], 3);
    assert_eq!(emu.metering_requests(), 2, "no retry of the 422");
    let (status, http): (String, i64) = pair(
        &env,
        "SELECT status, http_status FROM submissions WHERE status != 'answered'",
    );
    assert_eq!((status.as_str(), http), ("rejected", 422));
}

#[test]
fn an_unreadable_answer_is_a_failure_with_its_body_and_resubmit_finds_it_had_arrived() {
    let env = with_fast_emulator(&[]);
    one_contract(&env);
    let emu = env.emulator();
    emu.faults(json!([{"kind": "malformed", "accept": true}]));
    run(&env, &["submit"], 3);
    let body: String = env.one("SELECT response_body FROM submissions WHERE status = 'failed'");
    assert!(body.contains("<html>"), "{body}");
    assert_eq!(
        lines(&env),
        [triple("contract-a", "cpu_core_hours", "failed")]
    );

    run(&env, &["resubmit", "--contract", "contract-a"], 0);
    assert_eq!(
        lines(&env),
        [
            triple("contract-a", "cpu_core_hours", "failed"),
            triple("contract-a", "cpu_core_hours", "duplicate"),
        ]
    );
    assert_eq!(emu.accepted().len(), 1);
}

#[test]
fn a_slow_answer_times_out_and_the_retry_is_recognised_as_a_duplicate() {
    let env = with_fast_emulator(&[]);
    one_contract(&env);
    let emu = env.emulator();
    emu.faults(json!([{"kind": "slow", "ms": 3000, "accept": true}]));
    run(&env, &["submit", "--clazar-timeout", "1"], 0);
    assert_eq!(
        lines(&env),
        [triple("contract-a", "cpu_core_hours", "duplicate")]
    );
    assert_eq!(emu.accepted().len(), 1);
}

#[test]
fn an_expired_token_is_renewed_once() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    emu.faults(json!([{"kind": "expire_token"}]));
    run(&env, &["submit", "--clazar-concurrency", "1"], 0);
    let stats = emu.stats();
    assert_eq!(stats["auth_requests"], 2);
    assert_eq!(stats["unauthorized"], 1);
    assert_eq!(emu.accepted().len(), 3);
}

#[test]
fn the_token_is_renewed_shortly_before_it_expires() {
    let env = with_fast_emulator(&["--token-ttl-secs", "1"]);
    june(&env);
    let emu = env.emulator();
    // The first answer takes longer than the token lives: the second request needs a new one.
    emu.faults(json!([{"kind": "slow", "ms": 1200, "accept": true}]));
    run(&env, &["submit", "--clazar-concurrency", "1"], 0);
    let stats = emu.stats();
    assert_eq!(stats["auth_requests"], 2);
    assert_eq!(
        stats["unauthorized"], 0,
        "renewed before it expired, not after a 401"
    );
    assert_eq!(emu.accepted().len(), 3);
}

#[test]
fn refused_credentials_stop_the_run_with_a_configuration_error_and_keep_the_outbox() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    let out = env
        .meterbook(["submit", "--clazar-concurrency", "1"])
        .env("CLAZAR_CLIENT_SECRET", "wrong-secret")
        .expect_code(2);
    assert!(out.stderr.contains("refused the credentials"));
    assert!(!out.stderr.contains("wrong-secret"));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_lines WHERE status = 'pending'"),
        3
    );
    assert_eq!(
        emu.stats()["auth_requests"],
        1,
        "the run stops at the first refusal"
    );
    run(&env, &["submit"], 0);
    assert_eq!(emu.accepted().len(), 3);

    let missing = env
        .meterbook(["submit"])
        .env_remove("CLAZAR_CLIENT_ID")
        .env_remove("CLAZAR_CLIENT_SECRET")
        .expect_code(2);
    assert!(missing.stderr.contains("CLAZAR_CLIENT_SECRET"));
}

#[test]
fn a_crash_between_send_and_record_is_reconciled_by_the_next_run() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    // The failpoint aborts the process.
    env.meterbook(["submit", "--clazar-concurrency", "1"])
        .env("METERBOOK_FAILPOINT", "after-send")
        .expect_killed();
    assert_eq!(emu.accepted().len(), 2, "the first request had arrived");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE status = 'sending'"),
        1
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE status = 'pending'"),
        1
    );

    let out = run(&env, &["submit"], 0);
    assert!(out
        .stderr
        .contains("re-sending 1 submissions left in flight"));
    assert_eq!(
        lines(&env),
        [
            triple("contract-a", "cpu_core_hours", "duplicate"),
            triple("contract-a", "replica_hours", "duplicate"),
            triple("contract-b", "cpu_core_hours", "accepted"),
        ]
    );
    assert_eq!(emu.accepted().len(), 3);
    emu.assert_exactly_once();
}

#[test]
fn a_dry_run_prints_the_payloads_changes_nothing_and_calls_nothing() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    let out = env
        .meterbook(["submit"])
        .env("DRY_RUN", "true")
        .expect_code(0);
    assert_no_secrets(&env, &out);
    let printed: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 2);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions")
            + env.count("SELECT COUNT(*) FROM submission_runs"),
        0
    );
    let stats = emu.stats();
    assert_eq!(
        (
            stats["auth_requests"].as_u64(),
            stats["metering_requests"].as_u64()
        ),
        (Some(0), Some(0))
    );

    // A later real run sends exactly what the dry run printed.
    run(&env, &["submit"], 0);
    let mut sent: Vec<Value> = emu
        .accepted()
        .iter()
        .map(|r| {
            json!({"cloud": r["cloud"], "contract_id": r["contract_id"], "dimension": r["dimension"],
                   "start_time": r["start_time"], "end_time": r["end_time"], "quantity": r["quantity"]})
        })
        .collect();
    let mut planned: Vec<Value> = printed
        .iter()
        .flat_map(|p| p["request"].as_array().unwrap().clone())
        .collect();
    let key = |v: &Value| v.to_string();
    sent.sort_by_key(key);
    planned.sort_by_key(key);
    assert_eq!(sent, planned);
}

#[test]
fn formulas_give_exact_quantities_and_the_amount_before_rounding_is_kept() {
    let env = with_fast_emulator(&[
        "--dimension",
        "cents",
        "--dimension",
        "whole_cents",
        "--dimension",
        "half_replicas",
    ]);
    // 0.58 x 0.5 = 0.29 of cpu price: 0.29 / 0.01 is 28.999999999999996 in floating point, of
    // which the predecessor sent Python's int(), 28; round() in the formula makes it 29.
    env.write_hour(
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(0.58)), ("replica_hours", json!(7))],
    );
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    let emu = env.emulator();
    env.meterbook(["submit"])
        .env("DIMENSION_cents", "cpu_core_hours_total_price / 0.01")
        .env(
            "DIMENSION_whole_cents",
            "round(cpu_core_hours_total_price / 0.01)",
        )
        .env("DIMENSION1_NAME", "half_replicas")
        .env("DIMENSION1_FORMULA", "replica_hours / 2")
        .expect_code(0);
    assert_eq!(
        emu.accepted_quantities(),
        [
            triple("contract-a", "cents", "28"),
            triple("contract-a", "half_replicas", "3"),
            triple("contract-a", "whole_cents", "29"),
        ]
    );
    let exact: f64 =
        env.one("SELECT exact_quantity FROM submission_lines WHERE dimension = 'half_replicas'");
    assert_eq!(exact, 3.5);
}

/// The predecessor's formulas, as its Omnistrate deployment passes them (unused pairs blank), in a
/// dry run: Python's meaning, where evalexpr sent twice the amount for `//` and rounded halves up.
#[test]
fn a_dry_run_evaluates_the_predecessors_formulas_as_python_does() {
    let env = with_fast_emulator(&[]);
    let gib = 1_u64 << 30;
    // contract-a: 40 CPU core hours and 3 GiB-hours of memory; contract-b: 10 CPU core hours.
    for (hour, contract, cpu, memory) in [
        ("2025/06/01/00", "contract-a", 25, 3 * gib),
        ("2025/06/02/00", "contract-a", 15, 0),
        ("2025/06/01/00", "contract-b", 10, 0),
    ] {
        let values = [
            ("cpu_core_hours", json!(cpu)),
            ("memory_byte_hours", json!(memory)),
        ];
        env.write_hour(hour, contract, contract, &values);
    }
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    let out = env
        .meterbook(["submit"])
        .env("DRY_RUN", "true")
        .env("DIMENSION1_NAME", "half_cpu")
        .env("DIMENSION1_FORMULA", "cpu_core_hours // 2")
        .env("DIMENSION2_NAME", "quarter_cpu")
        .env("DIMENSION2_FORMULA", "round(cpu_core_hours / 4)")
        .env("DIMENSION3_NAME", "")
        .env("DIMENSION3_FORMULA", "")
        .env(
            "DIMENSION_memory_gib_hours",
            "memory_byte_hours / 1024 ** 3",
        )
        .expect_code(0);
    let mut sent: Vec<(String, String, String)> = out
        .stdout
        .lines()
        .flat_map(|l| {
            let body: Value = serde_json::from_str(l).unwrap();
            body["request"].as_array().unwrap().clone()
        })
        .map(|r| {
            triple(
                r["contract_id"].as_str().unwrap(),
                r["dimension"].as_str().unwrap(),
                r["quantity"].as_str().unwrap(),
            )
        })
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            // 40 // 2 is 20; round(40 / 4) is 10; 3 GiB-hours / 1024 ** 3 is 3.
            triple("contract-a", "half_cpu", "20"),
            triple("contract-a", "memory_gib_hours", "3"),
            triple("contract-a", "quarter_cpu", "10"),
            // round(10 / 4) = round(2.5) is 2 in Python (halves to even).
            triple("contract-b", "half_cpu", "5"),
            triple("contract-b", "memory_gib_hours", "0"),
            triple("contract-b", "quarter_cpu", "2"),
        ]
    );
}

#[test]
fn a_formula_python_would_read_differently_or_not_at_all_is_refused_naming_its_variable() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    for (formula, what) in [
        (
            "cpu_core_hours ^ 2",
            "the bitwise operator '^' (Python's power is '**')",
        ),
        ("(cpu_core_hours - 4) ** 0.5", "complex number"),
        (
            "cpu_core_hours if replica_hours else 0",
            "a conditional expression",
        ),
    ] {
        let out = env
            .meterbook(["submit"])
            .env("DIMENSION2_NAME", "billed")
            .env("DIMENSION2_FORMULA", formula)
            .expect_code(2);
        let err = out.stderr;
        assert!(
            err.contains("DIMENSION2_NAME/DIMENSION2_FORMULA") && err.contains(what),
            "{formula}: {err}"
        );
    }
    assert_eq!(emu.metering_requests(), 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM submissions"), 0);
}

#[test]
fn a_bad_formula_stops_the_run_before_anything_is_sent() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    let out = env
        .meterbook(["submit"])
        .env("DIMENSION_cpu", "cpu_hours * 2")
        .expect_code(2);
    let err = out.stderr;
    assert!(
        err.contains("DIMENSION_cpu") && err.contains("unknown variable 'cpu_hours'"),
        "{err}"
    );
    assert_eq!(emu.metering_requests(), 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM submissions"), 0);
}

#[test]
fn a_negative_result_is_a_recorded_failure_for_that_contract_only() {
    let env = with_fast_emulator(&["--dimension", "net"]);
    june(&env);
    let emu = env.emulator();
    env.meterbook(["submit"])
        .env("DIMENSION_net", "cpu_core_hours - 4.5")
        .expect_code(3);
    // contract-a: 5 - 4.5 = 0.5 -> 0; contract-b: 4 - 4.5 < 0 -> failed, nothing sent.
    assert_eq!(
        emu.accepted_quantities(),
        [triple("contract-a", "net", "0")]
    );
    let (status, message): (String, String) = pair(
        &env,
        "SELECT status, message FROM submission_lines WHERE contract_id = 'contract-b'",
    );
    assert_eq!(status, "failed");
    assert!(message.contains("negative"), "{message}");
}

#[test]
fn max_records_per_request_splits_a_contracts_lines() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    run(&env, &["submit", "--max-records-per-request", "1"], 0);
    assert_eq!(emu.metering_requests(), 3);
}

#[test]
fn usage_that_changes_after_submission_is_reported_as_drift_not_resent() {
    let env = with_fast_emulator(&[]);
    june(&env);
    let emu = env.emulator();
    run(&env, &["submit"], 0);
    // A rewritten file: contract-b's hour now says 10 instead of 4.
    env.write_hour(
        "2025/06/01/00",
        "sub-b",
        "contract-b",
        &[("cpu_core_hours", json!(10))],
    );
    env.ingest().expect_code(0);
    let out = run(&env, &["submit"], 3);
    assert!(out.stderr.contains("drift"), "{}", out.stderr);
    assert_eq!(emu.metering_requests(), 2, "drift is never re-sent");
    let difference: f64 =
        env.one("SELECT difference FROM submission_drift WHERE contract_id = 'contract-b'");
    assert_eq!(difference, 6.0);
}

#[test]
fn history_filters_and_formats() {
    let env = with_fast_emulator(&[]);
    june(&env);
    run(&env, &["submit"], 0);
    let out = run(
        &env,
        &[
            "history",
            "--contract",
            "contract-a",
            "--period",
            "2025-06",
            "--status",
            "accepted",
            "--format",
            "json",
        ],
        0,
    );
    let rows = out.json();
    let dims: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["dimension"].as_str().unwrap())
        .collect();
    assert_eq!(dims, ["cpu_core_hours", "replica_hours"]);
    assert_eq!(rows[0]["quantity"], 5);
    let csv = run(
        &env,
        &["history", "--format", "csv", "--status", "rejected"],
        0,
    );
    assert_eq!(csv.stdout.lines().count(), 1, "only the header");
}

#[test]
fn history_refuses_a_status_that_is_not_one() {
    let env = with_fast_emulator(&[]);
    june(&env);
    run(&env, &["submit"], 0);
    // A typo used to filter on a status no line can have, and print no rows without a word.
    let out = run(&env, &["history", "--status", "acepted"], 2);
    assert!(
        out.stderr.contains("invalid value 'acepted' for '--status"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn an_unreachable_clazar_is_explained_as_the_url_or_network_not_the_credentials() {
    let env = TestEnv::new().with_vars([
        ("CLAZAR_CLIENT_ID", "client-1"),
        ("CLAZAR_CLIENT_SECRET", "secret-1"),
    ]);
    june(&env);
    // A port nothing listens on: the connection is refused.
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let meterbook = |args: &[&str]| {
        env.meterbook(["--s3-endpoint-url", &nowhere, "--s3-max-attempts", "1"])
            .args(args)
            .args(["--clazar-base-url", &nowhere])
    };
    let out = meterbook(&["doctor"]).expect_code(2);
    let clazar = out
        .stdout
        .lines()
        .find(|l| l.contains("clazar authentication"))
        .unwrap();
    assert!(
        clazar.starts_with("FAIL")
            && clazar.contains("no answer from Clazar's authentication at")
            && clazar.contains(
                "fix: check CLAZAR_API_URL (or --clazar-base-url) and that this host can reach it"
            ),
        "{clazar}"
    );
    assert!(
        !clazar.contains("CLAZAR_CLIENT_SECRET") && !clazar.contains("Transient"),
        "{clazar}"
    );

    // submit records the requests as without an answer, to be re-sent, and says why.
    let out = meterbook(&["submit", "--max-retries", "0"]).expect_code(3);
    assert!(out.stderr.contains("could not connect"), "{}", out.stderr);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE status = 'transient'"),
        2
    );
}

/// The statement of `CREATE VIEW name AS ...;` in a migration: the view as it was defined there.
fn view_as_defined_in(migration: &str, name: &str) -> String {
    let path = format!("{}/migrations/{migration}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find(&format!("CREATE VIEW {name} AS"))
        .unwrap_or_else(|| panic!("{name} in {path}"));
    let body = &text[start + format!("CREATE VIEW {name} AS").len()..];
    body[..body.find(";\n").unwrap()].to_string()
}

/// `submission_drift` and `pending_periods` read a month's usage from the totals ingest keeps
/// (V11); they give exactly the rows their definitions over the records gave (V3's and V8's),
/// with integers, fractions summed in another order, hourly periods, rewrites and waiting months.
#[test]
fn drift_and_pending_over_the_kept_totals_are_those_over_the_records() {
    let env = with_fast_emulator(&[]);
    let cpu = "cpu_core_hours";
    june(&env);
    let tenths = [json!(0.1), json!(0.2), json!(0.3)];
    let c_hour = |values: &[Value]| {
        let v: Vec<(&str, Value)> = values.iter().map(|x| (cpu, x.clone())).collect();
        env.write_hour("2025/06/03/00", "sub-c", "contract-c", &v);
    };
    c_hour(&tenths);
    env.ingest().expect_code(0);
    run(&env, &["submit"], 0);
    // July by the hour for contract-d; contract-e's July waits for the export.
    for h in ["00", "01"] {
        env.write_hour(
            &format!("2025/07/01/{h}"),
            "sub-d",
            "contract-d",
            &[(cpu, json!(2))],
        );
    }
    env.write_hour("2025/07/01/02", "sub-e", "contract-e", &[(cpu, json!(1))]);
    env.write_marker("2025-07-01T01:59:59Z");
    env.ingest().expect_code(0);
    run(
        &env,
        &["submit", "--period", "hour", "--max-hours-per-run", "2"],
        0,
    );

    // Rewrites: contract-b's month and contract-d's first hour change; contract-c's values come
    // in another order (a float sum that may differ in its last digit, as before V11).
    env.write_hour("2025/06/01/00", "sub-b", "contract-b", &[(cpu, json!(10))]);
    env.write_hour(
        "2025/07/01/00",
        "sub-d",
        "contract-d",
        &[(cpu, json!(5)), ("replica_hours", json!(1))],
    );
    let mut reversed = tenths.to_vec();
    reversed.reverse();
    c_hour(&reversed);
    env.ingest().expect_code(0);

    let db = env.db();
    for (view, migration) in [
        ("submission_drift", "V3__submissions.sql"),
        (
            "pending_periods",
            "V8__bounded_usage_and_source_problems.sql",
        ),
    ] {
        let now =
            rows_as_text(&db, &format!("SELECT * FROM {view} ORDER BY 1, 2, 3, 4, 5")).unwrap();
        let defined = view_as_defined_in(migration, view);
        let before = rows_as_text(
            &db,
            &format!("SELECT * FROM ({defined}) ORDER BY 1, 2, 3, 4, 5"),
        )
        .unwrap();
        assert_eq!(now, before, "{view}");
        assert!(!now.is_empty(), "{view} has rows to compare");
    }
    let drift = rows_as_text(
        &db,
        "SELECT contract_id, period, dimension, difference FROM submission_drift ORDER BY 1, 2, 3",
    )
    .unwrap();
    assert!(drift.contains(&vec![
        "contract-b".into(),
        "2025-06".into(),
        cpu.into(),
        "6".into()
    ]));
    assert!(drift
        .iter()
        .any(|r| r[0] == "contract-d" && r[2] == "replica_hours"));
}
