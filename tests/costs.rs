//! `meterbook costs`: billing files from S3 and folders into the ledger, views against the
//! generator's exact sums, rewritten months, bad input, the report in a time zone, the plot, and
//! the report emailed to an SMTP sink on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime, TimeZone};
use serde_json::Value;

use crate::util::{python_script, zip_of, TestEnv};

const ACCOUNT: &str = "123456789012";

fn billing_name(month: &str) -> String {
    format!("{ACCOUNT}-aws-billing-detailed-line-items-with-resources-and-tags-{month}.csv")
}

/// Runs `scripts/gen-billing.py` into `out` and returns its expected sums, one object per month.
pub(crate) fn generate(out: &Path, args: &[&str]) -> Vec<Value> {
    let expect = out.with_extension("expect.json");
    python_script("scripts/gen-billing.py")
        .arg("--out")
        .arg(out)
        .arg("--expect")
        .arg(&expect)
        .args(args)
        .expect_code(0);
    serde_json::from_slice(&std::fs::read(expect).unwrap()).unwrap()
}

/// Generates billing files into the test's billing folder and ingests them successfully.
fn ingested(env: &TestEnv, args: &[&str]) -> Vec<Value> {
    let expected = generate(&billing_dir(env), args);
    env.meterbook(["costs", "ingest", "--source"])
        .arg(billing_dir(env))
        .expect_code(0);
    expected
}

fn nanos_map(v: &Value) -> BTreeMap<String, i64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect()
}

/// `SELECT name, ROUND(cost * 1e9)` rows as a map of nano-dollars.
fn query_nanos(env: &TestEnv, sql: &str) -> BTreeMap<String, i64> {
    env.rows(sql, |r| Ok((r.get(0)?, r.get::<_, f64>(1)?)))
        .into_iter()
        .map(|(k, v): (String, f64)| (k, (v * 1e9).round() as i64))
        .collect()
}

pub(crate) fn billing_dir(env: &TestEnv) -> PathBuf {
    env.path("billing")
}

#[test]
fn s3_months_are_ingested_and_the_views_match_the_files() {
    let env = TestEnv::new().with_bucket("costs");
    let expected = generate(
        &billing_dir(&env),
        &[
            "--month", "2025-05", "--month", "2025-06", "--lines", "1500",
        ],
    );
    env.bucket().upload(&billing_dir(&env), "copydbr/");
    let source = format!("{}/copydbr", env.bucket().url());
    let ingest = || {
        env.meterbook(["costs", "ingest", "--source", &source])
            .expect_code(0)
    };
    ingest();

    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_files WHERE status = 'ok'"),
        2
    );
    for month in &expected {
        let m = month["month"].as_str().unwrap();
        assert_eq!(
            env.count(&format!(
                "SELECT COUNT(*) FROM cost_line_items i JOIN cost_files f ON f.id = i.file_id WHERE f.month = '{m}'"
            )),
            month["line_items"].as_i64().unwrap()
        );
        assert_eq!(
            query_nanos(
                &env,
                &format!("SELECT user, cost FROM user_costs WHERE month = '{m}'")
            ),
            nanos_map(&month["by_user"]),
            "spend per user in {m}"
        );
        assert_eq!(
            query_nanos(
                &env,
                &format!("SELECT product_name, cost FROM product_costs WHERE month = '{m}'")
            ),
            nanos_map(&month["by_product"]),
            "spend per product in {m}"
        );
        let check: Vec<(i64, i64)> = env.rows(
            &format!("SELECT invoice_total_nanos, ROUND(difference * 1e9) FROM cost_month_check WHERE month = '{m}'"),
            |r| Ok((r.get(0)?, r.get::<_, f64>(1)? as i64)),
        );
        assert_eq!(
            check,
            [(month["invoice_nanos"].as_i64().unwrap(), 0)],
            "invoice check of {m}"
        );
    }
    // Per UTC day, both months together; rows straddling month ends count on their start day.
    let mut by_day = BTreeMap::new();
    for month in &expected {
        by_day.extend(nanos_map(&month["by_day"]));
    }
    assert_eq!(
        query_nanos(&env, "SELECT day, cost FROM daily_costs"),
        by_day
    );
    // Total rows are kept apart from line items.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_line_items WHERE record_type IN ('InvoiceTotal', 'AccountTotal', 'StatementTotal', 'Rounding')"),
        0
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_totals WHERE record_type = 'InvoiceTotal'"),
        2
    );

    // A second run finds both unchanged and reads nothing.
    let again = ingest();
    assert!(again.stderr.contains("2 unchanged"), "{}", again.stderr);
    assert_eq!(env.count("SELECT MAX(version) FROM cost_files"), 1);

    // June is rewritten on S3: its line items are replaced, May is left alone.
    let rewritten = env.path("rewritten");
    let june = generate(
        &rewritten,
        &["--month", "2025-06", "--lines", "900", "--seed", "7"],
    );
    env.bucket().upload(&rewritten, "copydbr/");
    let third = ingest();
    assert!(
        third.stderr.contains("1 replaced, 1 unchanged"),
        "{}",
        third.stderr
    );
    assert_eq!(
        query_nanos(
            &env,
            "SELECT user, cost FROM user_costs WHERE month = '2025-06'"
        ),
        nanos_map(&june[0]["by_user"])
    );
    assert_eq!(
        query_nanos(
            &env,
            "SELECT user, cost FROM user_costs WHERE month = '2025-05'"
        ),
        nanos_map(&expected[0]["by_user"])
    );
}

#[test]
fn a_missing_billing_bucket_is_a_configuration_error_naming_it() {
    let env = TestEnv::new();
    let out = env
        .meterbook([
            "costs",
            "ingest",
            "--source",
            "s3://mb-no-such-billing-bucket",
        ])
        .s3_endpoint(&crate::s3::endpoint())
        .expect_code(2);
    assert!(
        out.stderr
            .contains("bucket 'mb-no-such-billing-bucket' does not exist; check --source"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_rewritten_month_replaces_its_line_items() {
    let env = TestEnv::new();
    ingested(
        &env,
        &[
            "--through",
            "2025-06-10",
            "--no-totals",
            "--plain",
            "--seed",
            "1",
        ],
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_month_check WHERE invoice_total IS NULL"),
        1
    );

    let full = ingested(&env, &["--plain", "--seed", "2", "--lines", "3000"]);
    assert_eq!(env.count("SELECT COUNT(*) FROM cost_files"), 1);
    assert_eq!(env.count("SELECT version FROM cost_files"), 2);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_line_items"),
        full[0]["line_items"].as_i64().unwrap()
    );
    assert_eq!(
        query_nanos(&env, "SELECT user, cost FROM user_costs"),
        nanos_map(&full[0]["by_user"])
    );
}

#[test]
fn bad_rows_and_unreadable_archives_become_problems_and_lose_nothing_else() {
    let env = TestEnv::new();
    let dir = billing_dir(&env);
    let expected = generate(&dir, &["--month", "2025-06", "--bad-rows"]);
    // A zip without a CSV, and a truncated archive, for two other months.
    let empty_zip = dir.join(format!("{}.zip", billing_name("2025-04")));
    std::fs::write(&empty_zip, zip_of("readme.txt", b"no billing here")).unwrap();
    let june = std::fs::read(dir.join(format!("{}.zip", billing_name("2025-06")))).unwrap();
    std::fs::write(
        dir.join(format!("{}.zip", billing_name("2025-03"))),
        &june[..june.len() / 2],
    )
    .unwrap();

    env.meterbook(["costs", "ingest", "--source"])
        .arg(&dir)
        .expect_code(3);

    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_line_items"),
        expected[0]["line_items"].as_i64().unwrap()
    );
    let problems: Vec<(String, Option<i64>, String)> = env.rows(
        "SELECT month, line, reason FROM cost_problems ORDER BY month, line",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    assert_eq!(problems.len(), 5, "{problems:?}");
    assert_eq!(problems[0].0, "2025-03");
    assert!(problems[0].2.contains("zip"), "{problems:?}");
    assert_eq!(
        problems[1],
        (
            "2025-04".into(),
            None,
            "the zip archive holds no .csv file".into()
        )
    );
    let june: Vec<&(String, Option<i64>, String)> = problems[2..].iter().collect();
    let bad_line = expected[0]["line_items"].as_i64().unwrap() + 2;
    assert_eq!(june[0].1, Some(bad_line));
    assert_eq!(june[0].2, "bad number in BlendedCost: \"12,34x\"");
    assert_eq!(june[1].1, Some(bad_line + 1));
    assert_eq!(
        june[1].2,
        "bad date in UsageStartDate: \"2025-06-31 25:00:00\""
    );
    assert_eq!(june[2].1, Some(bad_line + 2));
    assert!(june[2].2.starts_with("malformed row"), "{june:?}");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM cost_files WHERE status = 'rejected'"),
        2
    );
    assert_eq!(
        env.count("SELECT status = 'partial' FROM cost_files WHERE month = '2025-06'"),
        1
    );
}

/// Expected spend per local day and per user from the generator's hourly sums.
fn local_sums(
    expected: &[Value],
    tz: chrono_tz::Tz,
    first: NaiveDate,
    last: NaiveDate,
) -> (BTreeMap<NaiveDate, i64>, BTreeMap<String, i64>) {
    let mut days = BTreeMap::new();
    let mut users = BTreeMap::new();
    for month in expected {
        for (hour, per_user) in month["by_hour_user"].as_object().unwrap() {
            let utc = NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
                .unwrap()
                .and_utc();
            let day = tz.from_utc_datetime(&utc.naive_utc()).date_naive();
            if day < first || day > last {
                continue;
            }
            for (user, n) in nanos_map(per_user) {
                *days.entry(day).or_insert(0) += n;
                *users.entry(user).or_insert(0) += n;
            }
        }
    }
    (days, users)
}

/// The report in Los Angeles, as on 2025-06-20.
const REPORT_IN_LA: [&str; 6] = [
    "costs",
    "report",
    "--tz",
    "America/Los_Angeles",
    "--today",
    "2025-06-20",
];

#[test]
fn the_report_counts_days_in_the_managers_time_zone() {
    let env = TestEnv::new();
    let expected = ingested(&env, &["--month", "2025-06", "--lines", "2000"]);

    let report = env
        .meterbook(REPORT_IN_LA)
        .args(["--days", "7", "--format", "json"])
        .expect_code(0)
        .json();
    let first: NaiveDate = "2025-06-13".parse().unwrap();
    let last: NaiveDate = "2025-06-19".parse().unwrap();
    let (days, users) = local_sums(&expected, chrono_tz::America::Los_Angeles, first, last);
    let got_days: BTreeMap<NaiveDate, i64> = report["days"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["day"].as_str().unwrap().parse().unwrap(),
                d["nanos"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_days, days);
    let got_users: BTreeMap<String, i64> = report["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_string(),
                u["nanos"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got_users, users);
    assert_eq!(report["yesterday"]["day"], "2025-06-19");
    assert_eq!(report["yesterday"]["nanos"].as_i64().unwrap(), days[&last]);
    assert_eq!(
        report["yearly_run_rate_nanos"].as_i64().unwrap(),
        days[&last] * 365
    );
    // June is complete with an invoice total that matches.
    let check = &report["month_checks"][0];
    assert_eq!(check["invoice_total_nanos"], expected[0]["invoice_nanos"]);

    // Text: the headline first, and the invoice check.
    let text = env.meterbook(REPORT_IN_LA).expect_code(0).stdout;
    assert!(
        text.starts_with("AWS spend yesterday (2025-06-19, America/Los_Angeles): $"),
        "{text}"
    );
    assert!(text.contains("difference $0.00"), "{text}");
}

#[test]
fn the_plot_is_a_readable_png_and_an_svg() {
    let env = TestEnv::new();
    ingested(&env, &["--month", "2025-06", "--lines", "2000"]);
    let png = env.path("plots/spend.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    env.meterbook([
        "costs",
        "plot",
        "--tz",
        "America/Los_Angeles",
        "--today",
        "2025-06-29",
        "--out",
    ])
    .arg(&png)
    .expect_code(0);
    let image = image::open(&png).expect("the PNG decodes");
    assert_eq!((image.width(), image.height()), (1280, 720));
    assert!(
        std::fs::metadata(&png).unwrap().len() > 20_000,
        "the PNG is nearly empty"
    );
    let svg = std::fs::read_to_string(png.with_extension("svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("alice"),
        "the SVG names the users"
    );
}

/// A minimal SMTP server on 127.0.0.1 that accepts one message and returns the session.
fn smtp_sink() -> (u16, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut out = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut session = String::new();
        let mut reply = |s: &str| out.write_all(format!("{s}\r\n").as_bytes()).unwrap();
        reply("220 sink ESMTP");
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            session.push_str(&line);
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    reply("250 queued");
                }
                continue;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => reply("250-sink\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME"),
                "AUTH" => reply("235 ok"),
                "DATA" => {
                    in_data = true;
                    reply("354 go ahead");
                }
                "QUIT" => {
                    reply("221 bye");
                    break;
                }
                _ => reply("250 ok"),
            }
        }
        session
    });
    (port, handle)
}

#[test]
fn the_report_is_emailed_with_the_headline_as_subject() {
    let env = TestEnv::new();
    ingested(&env, &["--month", "2025-06", "--lines", "800"]);
    let (port, sink) = smtp_sink();
    let out = env
        .meterbook([
            "costs",
            "report",
            "--today",
            "2025-06-15",
            "--email-to",
            "managers@example.org",
            "--email-from",
            "meterbook@example.org",
            "--smtp-host",
            "127.0.0.1",
            "--smtp-security",
            "none",
            "--smtp-port",
            &port.to_string(),
        ])
        .env("SMTP_USERNAME", "reporter")
        .env("SMTP_PASSWORD", "s3cret-pass")
        .expect_code(0);
    let session = sink.join().unwrap();
    let headline = out.stdout.lines().next().unwrap().to_string();
    assert!(
        session.contains("AUTH "),
        "the credentials were used: {session}"
    );
    assert!(
        session.contains("RCPT TO:<managers@example.org>"),
        "{session}"
    );
    // Header lines may be folded.
    let unfolded = session.replace("\r\n ", " ");
    assert!(
        unfolded.contains(&format!("Subject: {headline}")),
        "{unfolded}"
    );
    assert!(
        unfolded.contains("Spend per user"),
        "the body is the report"
    );
    // The plot of the window is attached as a PNG that decodes.
    let (_, attachment) = session
        .split_once("Content-Disposition: attachment;")
        .expect("the message has an attachment");
    assert!(
        attachment.contains("spend-per-user-2025-05-18-to-2025-06-14.png"),
        "{attachment}"
    );
    assert!(
        attachment.contains("Content-Type: image/png"),
        "{attachment}"
    );
    let (_, encoded) = attachment.split_once("\r\n\r\n").unwrap();
    let encoded: String = encoded
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("the attachment is base64");
    let image = image::load_from_memory(&png).expect("the attachment is a PNG");
    assert_eq!((image.width(), image.height()), (1280, 720));
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert!(
        !printed.contains("s3cret-pass"),
        "the password never appears in output"
    );
}

#[test]
fn changing_the_user_tags_re_resolves_stored_users() {
    let env = TestEnv::new();
    let dir = billing_dir(&env);
    ingested(
        &env,
        &["--month", "2025-06", "--layout", "0", "--lines", "500"],
    );
    let decoys = "SELECT COUNT(*) FROM cost_line_items WHERE user LIKE 'not-%'";
    assert_eq!(env.count(decoys), 0);
    // Preferring user:Name first picks the generator's decoy values where they are set.
    env.meterbook([
        "costs",
        "ingest",
        "--user-tags",
        "user:Name,user:Owner",
        "--source",
    ])
    .arg(&dir)
    .expect_code(0);
    assert!(env.count(decoys) > 0);
    env.meterbook(["costs", "ingest", "--source"])
        .arg(&dir)
        .expect_code(0);
    assert_eq!(env.count(decoys), 0);
}

#[test]
fn the_report_is_not_sent_in_the_clear_when_the_server_offers_no_starttls() {
    let env = TestEnv::new();
    ingested(&env, &["--month", "2025-06", "--lines", "300"]);
    let (port, sink) = smtp_sink();
    let out = env
        .meterbook(["costs", "report", "--today", "2025-06-15"])
        .env("SMTP_USERNAME", "reporter")
        .env("SMTP_PASSWORD", "s3cret-pass")
        .args(["--email-to", "managers@example.org"])
        .args([
            "--email-from",
            "meterbook@example.org",
            "--smtp-host",
            "127.0.0.1",
        ])
        .args(["--smtp-port", &port.to_string()])
        .expect_code(1);
    let session = sink.join().unwrap();
    assert!(
        !session.contains("AUTH") && !session.contains("DATA"),
        "{session}"
    );
    assert!(!out.stderr.contains("s3cret-pass"));
}

/// Writes a grants CSV into the test folder.
pub(crate) fn grants_file(env: &TestEnv, name: &str, body: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn grants_are_reported_against_spend_over_their_local_days() {
    let env = TestEnv::new();
    let expected = ingested(&env, &["--month", "2025-06", "--lines", "2000"]);
    let la = chrono_tz::America::Los_Angeles;
    let day = |d: &str| d.parse::<NaiveDate>().unwrap();
    let (_, alice_days) = local_sums(&expected, la, day("2025-06-05"), day("2025-06-12"));
    let (_, bob_days) = local_sums(&expected, la, day("2025-06-10"), day("2025-06-30"));
    let (alice_spent, bob_spent) = (alice_days["alice"], bob_days["bob"]);
    assert!(
        alice_spent > 0 && bob_spent > 1_000_000,
        "the generator gave them spend"
    );

    // alice's grant is ample; bob's is a dollar, and open-ended; "zoe" has no spend at all.
    let file = grants_file(
        &env,
        "grants.csv",
        "user,amount,start,end,note\n\
         alice,\"$100,000.00\",2025-06-05,2025-06-12,lab\n\
         bob,1,2025-06-10,,\n\
         zoe,50,2025-06-01,2025-06-30,\n",
    );
    let out = env
        .meterbook(["costs", "grants", "load"])
        .arg(&file)
        .expect_code(3);
    assert!(
        out.stderr
            .contains("grant user \"zoe\": no line item names this user"),
        "{}",
        out.stderr
    );

    // bob has spent more than his dollar.
    let out = env
        .meterbook(REPORT_IN_LA)
        .args(["--format", "json"])
        .expect_code(3);
    assert!(out
        .stderr
        .contains("bob has spent more than the grant starting 2025-06-10"));
    let report = out.json();
    let grants = report["grants"].as_array().unwrap();
    let grant = |user: &str| grants.iter().find(|g| g["user"] == user).unwrap();
    assert_eq!(grant("alice")["spent_nanos"].as_i64().unwrap(), alice_spent);
    assert_eq!(
        grant("alice")["remaining_nanos"].as_i64().unwrap(),
        100_000_000_000_000 - alice_spent
    );
    assert_eq!(grant("bob")["spent_nanos"].as_i64().unwrap(), bob_spent);
    assert_eq!(
        grant("bob")["remaining_nanos"].as_i64().unwrap(),
        1_000_000_000 - bob_spent
    );
    assert_eq!(grant("zoe")["spent_nanos"].as_i64().unwrap(), 0);

    let text = env.meterbook(REPORT_IN_LA).expect_code(3).stdout;
    assert!(
        text.contains("Spend against grants (days in America/Los_Angeles)"),
        "{text}"
    );
    assert!(text.contains("OVERSPENT"), "{text}");

    // The view counts the same grants in UTC days.
    let (_, alice_utc) = local_sums(
        &expected,
        chrono_tz::UTC,
        day("2025-06-05"),
        day("2025-06-12"),
    );
    assert_eq!(
        env.count("SELECT spent_nanos FROM grant_spend WHERE user = 'alice'"),
        alice_utc["alice"]
    );
}

#[test]
fn a_grants_file_with_a_problem_loads_nothing_and_names_each_line() {
    let env = TestEnv::new();
    let good = grants_file(&env, "good.csv", "user,amount,start\nalice,10,2025-06-01\n");
    // 3: alice has no line items in this empty ledger.
    env.meterbook(["costs", "grants", "load"])
        .arg(&good)
        .expect_code(3);
    let bad = grants_file(
        &env,
        "bad.csv",
        "user,amount,start,end\nalice,20,2025-06-01,\nbob,ten,2025-06-01,\ncarol,5,2025-06-31,\n",
    );
    let err = env
        .meterbook(["costs", "grants", "load"])
        .arg(&bad)
        .expect_code(2)
        .stderr;
    assert!(
        err.contains("bad.csv: line 3: amount \"ten\" is not a number of dollars"),
        "{err}"
    );
    assert!(
        err.contains("bad.csv: line 4: start \"2025-06-31\" is not a date"),
        "{err}"
    );
    // The grants loaded before are untouched.
    assert_eq!(env.count("SELECT COUNT(*) FROM cost_grants"), 1);
    assert_eq!(
        env.count("SELECT amount_nanos FROM cost_grants"),
        10_000_000_000
    );
}
