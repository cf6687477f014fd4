//! `meterbook submit`, `history` and `resubmit` against the Clazar emulator over real HTTP on
//! 127.0.0.1: every outcome Clazar can give, retries, a crash between send and record, dry runs,
//! formulas, drift, and secrets that never leak.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::emulator::{Emulator, CLIENT_ID, SECRET};
use crate::util::{record, stderr_of, usage_key, TestEnv};

const SERVICE_KEY: &str = "pg:PROD:pt-1";

pub(crate) fn marker(env: &TestEnv, to: &str) {
    let body = json!({ SERVICE_KEY: {"last_processed_to": to, "last_updated_at": to} });
    env.write_usage(
        "omnistrate-metering/last_success_export.json",
        body.to_string().as_bytes(),
    );
}

/// Writes one usage file for `contract` in `hour` (YYYY/MM/DD/HH) with (dimension, value) records.
pub(crate) fn usage(
    env: &TestEnv,
    hour: &str,
    sub: &str,
    contract: &str,
    values: &[(&str, Value)],
) {
    let records: Vec<Value> = values
        .iter()
        .map(|(d, v)| record(Some(contract), d, v.clone()))
        .collect();
    env.write_usage(
        &usage_key("pt-1", hour, sub),
        Value::Array(records).to_string().as_bytes(),
    );
}

pub(crate) fn ingest(env: &TestEnv) {
    let out = env
        .cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
}

/// Two contracts in June 2025, a marker covering June, ingested.
fn june(env: &TestEnv) {
    usage(
        env,
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(2)), ("replica_hours", json!(1))],
    );
    usage(
        env,
        "2025/06/02/05",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(3)), ("replica_hours", json!(1))],
    );
    usage(
        env,
        "2025/06/01/00",
        "sub-b",
        "contract-b",
        &[("cpu_core_hours", json!(4))],
    );
    marker(env, "2025-06-30T23:59:59Z");
    ingest(env);
}

/// One contract with 2 CPU core hours in June 2025, a marker covering June, ingested.
fn one_contract(env: &TestEnv) {
    usage(
        env,
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(2))],
    );
    marker(env, "2025-06-30T23:59:59Z");
    ingest(env);
}

/// `meterbook <args>` pointed at the emulator, with credentials and fast retries.
pub(crate) fn meterbook(env: &TestEnv, emu: &Emulator, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = env.cmd();
    cmd.env("CLAZAR_CLIENT_ID", CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", SECRET)
        .env("METERBOOK_CLAZAR_BASE_URL", emu.url())
        .env("METERBOOK_CLAZAR_BACKOFF_MS", "10")
        .env("METERBOOK_CLAZAR_TIMEOUT", "5")
        .env("METERBOOK_LOG", "debug")
        .args(args);
    cmd
}

fn run(env: &TestEnv, emu: &Emulator, args: &[&str]) -> Output {
    let out = meterbook(env, emu, args).output().unwrap();
    assert_no_secrets(env, emu, &out);
    out
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// The client secret and every token the emulator issued appear nowhere: not in stdout, stderr,
/// nor in the ledger's files.
fn assert_no_secrets(env: &TestEnv, emu: &Emulator, out: &Output) {
    let mut secrets = emu.tokens();
    secrets.push(SECRET.to_string());
    let mut places = vec![
        ("stdout", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
    ];
    for suffix in ["", "-wal"] {
        let path = PathBuf::from(format!("{}{suffix}", env.ledger.display()));
        if let Ok(bytes) = std::fs::read(&path) {
            places.push(("ledger", bytes));
        }
    }
    for (place, bytes) in places {
        let text = String::from_utf8_lossy(&bytes);
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
    let db = env.db();
    let mut stmt = db
        .prepare("SELECT contract_id, dimension, status FROM submission_lines ORDER BY contract_id, dimension, id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The one value a query on the ledger returns.
fn one<T: rusqlite::types::FromSql>(env: &TestEnv, sql: &str) -> T {
    env.db()
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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

    let again = run(&env, &emu, &["submit"]);
    assert_eq!(code(&again), 0, "{}", stderr_of(&again));
    assert_eq!(emu.metering_requests(), 2, "nothing is sent twice");
    emu.assert_exactly_once();
}

#[test]
fn the_unique_index_refuses_a_second_accepted_or_in_flight_line() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    assert_eq!(code(&run(&env, &emu, &["submit"])), 0);
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
    let env = TestEnv::new();
    usage(
        &env,
        "2025/06/30/23",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(1))],
    );
    usage(
        &env,
        "2025/07/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(7))],
    );
    // One second short of June's end: nothing is complete.
    marker(&env, "2025-06-30T23:59:58Z");
    ingest(&env);
    let emu = Emulator::start(&env, &[]);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 0);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM pending_periods WHERE complete = 0"),
        2,
        "June and July wait, and say so"
    );

    // The marker inside July completes June only (never the month containing it).
    marker(&env, "2025-07-15T10:00:00Z");
    ingest(&env);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(
        emu.accepted_quantities(),
        [triple("contract-a", "cpu_core_hours", "1")]
    );
    assert_eq!(emu.accepted()[0]["start_time"], "2025-06-01T00:00:00Z");
}

#[test]
fn without_a_marker_nothing_is_sent_unless_a_grace_delay_is_opted_into() {
    let env = TestEnv::new();
    usage(
        &env,
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(1))],
    );
    ingest(&env);
    let emu = Emulator::start(&env, &[]);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("no completion marker"));
    assert_eq!(emu.metering_requests(), 0);

    let out = run(&env, &emu, &["submit", "--grace-without-marker", "6h"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.accepted().len(), 1);
}

#[test]
fn hourly_periods_are_submitted_up_to_the_marker_oldest_first_and_bounded() {
    let env = TestEnv::new();
    for h in ["00", "01", "02", "03"] {
        usage(
            &env,
            &format!("2025/06/01/{h}"),
            "sub-a",
            "contract-a",
            &[("cpu_core_hours", json!(1))],
        );
    }
    marker(&env, "2025-06-01T02:59:59Z");
    ingest(&env);
    let emu = Emulator::start(&env, &[]);
    let out = run(
        &env,
        &emu,
        &["submit", "--period", "hour", "--max-hours-per-run", "2"],
    );
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let out = run(&env, &emu, &["submit", "--period", "hour"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(
        emu.accepted().len(),
        3,
        "hour 03 is not covered by the marker"
    );
    // Monthly submission of June would overlap the hours already sent: nothing is sent.
    marker(&env, "2025-06-30T23:59:59Z");
    ingest(&env);
    run(&env, &emu, &["submit"]);
    assert_eq!(emu.metering_requests(), 3);
}

#[test]
fn a_duplicate_of_an_accepted_record_counts_as_accepted() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    // Another ledger (say, the predecessor) already sent contract-b's June.
    let other = TestEnv::new();
    june(&other);
    let mut cmd = meterbook(&other, &emu, &["submit"]);
    cmd.assert().success();
    assert_eq!(emu.accepted().len(), 3);

    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &["--dimension", "cpu_core_hours"]);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    assert!(
        lines(&env).contains(&triple("contract-a", "replica_hours", "warning")),
        "{:?}",
        lines(&env)
    );
    let failures = meterbook(&env, &emu, &["history", "--failures", "--format", "json"])
        .output()
        .unwrap();
    let rows: Value = serde_json::from_slice(&failures.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["dimension"], "replica_hours");
    assert_eq!(rows[0]["status"], "warning");

    // The operator registers the dimension; resubmit sends only what was not accepted.
    emu.config(json!({"dimensions": ["cpu_core_hours", "replica_hours"]}));
    let before = emu.metering_requests();
    let out = run(&env, &emu, &["resubmit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let out = run(&env, &emu, &["resubmit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), before + 1);
    emu.assert_exactly_once();
}

#[test]
fn an_unknown_contract_is_rejected_with_its_errors_and_does_not_block_others() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &["--unknown-contract", "contract-a"]);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    one_contract(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([
        {"kind": "status", "status": 503},
        {"kind": "rate_limit", "retry_after": 1},
        {"kind": "drop", "accept": false},
        {"kind": "status", "status": 500},
    ]));
    let started = Instant::now();
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([{"kind": "status", "status": 502, "times": 2}]));
    let out = run(
        &env,
        &emu,
        &["submit", "--max-retries", "1", "--clazar-concurrency", "1"],
    );
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    let transient = env.count("SELECT COUNT(*) FROM submission_lines WHERE status = 'transient'");
    assert!(transient >= 1, "{:?}", lines(&env));
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.accepted().len(), 3);
    emu.assert_exactly_once();
}

#[test]
fn another_4xx_is_rejected_without_retry() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([{"kind": "status", "status": 422}]));
    let out = run(&env, &emu, &["submit", "--clazar-concurrency", "1"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 2, "no retry of the 422");
    let (status, http): (String, i64) = pair(
        &env,
        "SELECT status, http_status FROM submissions WHERE status != 'answered'",
    );
    assert_eq!((status.as_str(), http), ("rejected", 422));
}

#[test]
fn an_unreadable_answer_is_a_failure_with_its_body_and_resubmit_finds_it_had_arrived() {
    let env = TestEnv::new();
    one_contract(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([{"kind": "malformed", "accept": true}]));
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    let body: String = one(
        &env,
        "SELECT response_body FROM submissions WHERE status = 'failed'",
    );
    assert!(body.contains("<html>"), "{body}");
    assert_eq!(
        lines(&env),
        [triple("contract-a", "cpu_core_hours", "failed")]
    );

    let out = run(&env, &emu, &["resubmit", "--contract", "contract-a"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    one_contract(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([{"kind": "slow", "ms": 3000, "accept": true}]));
    let out = run(&env, &emu, &["submit", "--clazar-timeout", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(
        lines(&env),
        [triple("contract-a", "cpu_core_hours", "duplicate")]
    );
    assert_eq!(emu.accepted().len(), 1);
}

#[test]
fn an_expired_token_is_renewed_once() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    emu.faults(json!([{"kind": "expire_token"}]));
    let out = run(&env, &emu, &["submit", "--clazar-concurrency", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    let stats = emu.stats();
    assert_eq!(stats["auth_requests"], 2);
    assert_eq!(stats["unauthorized"], 1);
    assert_eq!(emu.accepted().len(), 3);
}

#[test]
fn the_token_is_renewed_shortly_before_it_expires() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &["--token-ttl-secs", "1"]);
    // The first answer takes longer than the token lives: the second request needs a new one.
    emu.faults(json!([{"kind": "slow", "ms": 1200, "accept": true}]));
    let out = run(&env, &emu, &["submit", "--clazar-concurrency", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit", "--clazar-concurrency", "1"])
        .env("CLAZAR_CLIENT_SECRET", "wrong-secret")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("refused the credentials"));
    assert!(!stderr_of(&out).contains("wrong-secret"));
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submission_lines WHERE status = 'pending'"),
        3
    );
    assert_eq!(
        emu.stats()["auth_requests"],
        1,
        "the run stops at the first refusal"
    );
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.accepted().len(), 3);

    let missing = env.cmd().args(["submit"]).output().unwrap();
    assert_eq!(code(&missing), 2, "{}", stderr_of(&missing));
    assert!(stderr_of(&missing).contains("CLAZAR_CLIENT_SECRET"));
}

#[test]
fn a_crash_between_send_and_record_is_reconciled_by_the_next_run() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let crashed = meterbook(&env, &emu, &["submit", "--clazar-concurrency", "1"])
        .env("METERBOOK_FAILPOINT", "after-send")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the failpoint aborts");
    assert_eq!(emu.accepted().len(), 2, "the first request had arrived");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE status = 'sending'"),
        1
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM submissions WHERE status = 'pending'"),
        1
    );

    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("re-sending 1 submissions left in flight"));
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit"])
        .env("DRY_RUN", "true")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_no_secrets(&env, &emu, &out);
    let printed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
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
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    // 0.58 x 0.5 = 0.29 of cpu price: 0.29 / 0.01 is 28.999999999999996 in floating point.
    usage(
        &env,
        "2025/06/01/00",
        "sub-a",
        "contract-a",
        &[("cpu_core_hours", json!(0.58)), ("replica_hours", json!(7))],
    );
    marker(&env, "2025-06-30T23:59:59Z");
    ingest(&env);
    let emu = Emulator::start(
        &env,
        &["--dimension", "cents", "--dimension", "half_replicas"],
    );
    let out = meterbook(&env, &emu, &["submit"])
        .env("DIMENSION_cents", "cpu_core_hours_total_price / 0.01")
        .env("DIMENSION1_NAME", "half_replicas")
        .env("DIMENSION1_FORMULA", "replica_hours / 2")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(
        emu.accepted_quantities(),
        [
            triple("contract-a", "cents", "29"),
            triple("contract-a", "half_replicas", "3"),
        ]
    );
    let exact: f64 = one(
        &env,
        "SELECT exact_quantity FROM submission_lines WHERE dimension = 'half_replicas'",
    );
    assert_eq!(exact, 3.5);
}

/// The predecessor's formulas, as its Omnistrate deployment passes them (unused pairs blank), in a
/// dry run: Python's meaning, where evalexpr sent twice the amount for `//` and rounded halves up.
#[test]
fn a_dry_run_evaluates_the_predecessors_formulas_as_python_does() {
    let env = TestEnv::new();
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
        usage(&env, hour, contract, contract, &values);
    }
    marker(&env, "2025-06-30T23:59:59Z");
    ingest(&env);
    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit"])
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
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    let mut sent: Vec<(String, String, String)> = String::from_utf8(out.stdout)
        .unwrap()
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
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
        let out = meterbook(&env, &emu, &["submit"])
            .env("DIMENSION2_NAME", "billed")
            .env("DIMENSION2_FORMULA", formula)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{}", stderr_of(&out));
        let err = stderr_of(&out);
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let out = meterbook(&env, &emu, &["submit"])
        .env("DIMENSION_cpu", "cpu_hours * 2")
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("DIMENSION_cpu") && err.contains("unknown variable 'cpu_hours'"),
        "{err}"
    );
    assert_eq!(emu.metering_requests(), 0);
    assert_eq!(env.count("SELECT COUNT(*) FROM submissions"), 0);
}

#[test]
fn a_negative_result_is_a_recorded_failure_for_that_contract_only() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &["--dimension", "net"]);
    let out = meterbook(&env, &emu, &["submit"])
        .env("DIMENSION_net", "cpu_core_hours - 4.5")
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
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
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    let out = run(&env, &emu, &["submit", "--max-records-per-request", "1"]);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 3);
}

#[test]
fn usage_that_changes_after_submission_is_reported_as_drift_not_resent() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    assert_eq!(code(&run(&env, &emu, &["submit"])), 0);
    // A rewritten file: contract-b's hour now says 10 instead of 4.
    usage(
        &env,
        "2025/06/01/00",
        "sub-b",
        "contract-b",
        &[("cpu_core_hours", json!(10))],
    );
    ingest(&env);
    let out = run(&env, &emu, &["submit"]);
    assert_eq!(code(&out), 3, "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("drift"), "{}", stderr_of(&out));
    assert_eq!(emu.metering_requests(), 2, "drift is never re-sent");
    let difference: f64 = one(
        &env,
        "SELECT difference FROM submission_drift WHERE contract_id = 'contract-b'",
    );
    assert_eq!(difference, 6.0);
}

#[test]
fn history_filters_and_formats() {
    let env = TestEnv::new();
    june(&env);
    let emu = Emulator::start(&env, &[]);
    assert_eq!(code(&run(&env, &emu, &["submit"])), 0);
    let out = run(
        &env,
        &emu,
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
    );
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
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
        &emu,
        &["history", "--format", "csv", "--status", "rejected"],
    );
    assert_eq!(
        String::from_utf8(csv.stdout).unwrap().lines().count(),
        1,
        "only the header"
    );
}
