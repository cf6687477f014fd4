//! `meterbook serve` driven in a real browser (Debian's headless Chromium through chromedriver):
//! a ledger built by the real commands (ingest, submit to the Clazar emulator with one rejected
//! contract and one drifted period, costs and grants), each page loaded, links followed, a filter
//! applied, and the numbers on the pages compared with the ledger's own, read here with rusqlite.
//! Hostile usage data is shown as text; a token guards every request; `/metrics` on `serve` and on
//! a scheduled `run` says what the ledger says. A screenshot of each page is written to
//! `<target>/screenshots/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::costs::{billing_dir, generate, grants_file};
use crate::daemon::{cycles, free_port, june_in_bucket, run_every_second, sigterm, wait_for};
use crate::submit::june;
use crate::util::{file_digests, http, record, rows_as_text, usage_key, Output, Running, TestEnv};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "console-token-7f3a9c1e5b";

/// Every page of the console on [`full_ledger`] (and the plot and the metrics).
const PAGES: &[&str] = &[
    "/",
    "/usage",
    "/usage/pending",
    "/usage/contract?service_key=pg%3APROD%3Apt-1&contract=contract-a&month=2025-06",
    "/usage/files?service_key=pg%3APROD%3Apt-1&contract=contract-a&month=2025-06",
    "/submissions",
    "/submissions/line?id=1",
    "/submissions/drift",
    "/problems",
    "/problems/paths",
    "/problems/unattributed",
    "/costs",
    "/costs/plot.svg",
    "/metrics",
];

// ---------------------------------------------------------------------------------------------
// The ledger

/// June 2025 for three contracts: `contract-a` is rejected by Clazar, `contract-b` is accepted and
/// then its usage rewritten (drift), `contract-c` is accepted; one file has an unattributed
/// record and a bad one. Then a month of AWS billing files and two grants.
fn full_ledger() -> TestEnv {
    let env = TestEnv::new().with_emulator(&["--unknown-contract", "contract-a"]);
    june(&env);
    env.write_hour(
        "2025/06/03/07",
        "sub-c",
        "contract-c",
        &[("cpu_core_hours", json!(1.5)), ("replica_hours", json!(24))],
    );
    env.write_records(
        &usage_key("pt-1", "2025/06/04/00", "sub-d"),
        &[
            record(None, "cpu_core_hours", json!(7)),
            record(Some("contract-c"), "cpu_core_hours", json!("lots")),
        ],
    );
    env.ingest().expect_code(3);
    env.meterbook(["submit"]).expect_code(3);
    // contract-b's hour is rewritten after Clazar accepted it: 10 instead of 4.
    env.write_hour(
        "2025/06/01/00",
        "sub-b",
        "contract-b",
        &[("cpu_core_hours", json!(10))],
    );
    env.ingest().expect_one_of(&[0, 3]);
    env.meterbook(["submit"]).expect_code(3);
    generate(&billing_dir(&env), &["--month", "2025-06"]);
    env.meterbook(["costs", "ingest", "--source"])
        .arg(billing_dir(&env))
        .expect_code(0);
    let grants = grants_file(
        &env,
        "grants.csv",
        "user,amount,start,end\nalice,100,2025-06-01,2025-06-30\nbob,50,2025-06-01,\n",
    );
    env.meterbook(["costs", "grants", "load"])
        .arg(grants)
        .expect_code(0);
    env
}

/// Rows of a query on the ledger, every value as text (NULL as "").
fn db_rows(env: &TestEnv, sql: &str) -> Vec<Vec<String>> {
    rows_as_text(&env.db(), sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A number as the console shows it ("1,234.5"), read back.
fn num(shown: &str) -> f64 {
    let clean: String = shown.chars().filter(|c| *c != ',').collect();
    clean
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{shown:?} is not a number"))
}

/// Dollars as the console shows them ("$1,234.56"), in cents.
fn cents(shown: &str) -> i64 {
    let clean: String = shown
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    clean
        .parse()
        .unwrap_or_else(|_| panic!("{shown:?} is not dollars"))
}

/// Nano-dollars rounded to cents, half away from zero.
fn nanos_to_cents(nanos: i64) -> i64 {
    let sign = nanos.signum();
    (nanos.abs() + 5_000_000) / 10_000_000 * sign
}

// ---------------------------------------------------------------------------------------------
// The server and the browser

/// `meterbook serve` on a free port (killed when dropped, unless stopped).
pub(crate) struct Server {
    running: Running,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(env: &TestEnv, token: Option<&str>) -> Server {
        Server::listening(env, "127.0.0.1:0", token)
    }

    /// Started on `listen`, once it has printed the address it serves.
    fn listening(env: &TestEnv, listen: &str, token: Option<&str>) -> Server {
        let mut cmd = env.meterbook(["serve", "--listen", listen]);
        if let Some(t) = token {
            cmd = cmd.env("METERBOOK_SERVE_TOKEN", t);
        }
        let mut running = cmd.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Some(line) = running.stdout_so_far().lines().next() {
                break line.trim().trim_end_matches('/').to_string();
            }
            if !running.is_running() {
                let out = running.expect_one_of(&[0, 1, 2, 3, 4]);
                panic!("serve ended before serving: {out:?}");
            }
            assert!(Instant::now() < deadline, "serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(url.starts_with("http://"), "{url}");
        Server { running, url }
    }

    /// Stops it with SIGTERM; it ends with exit code 0.
    pub(crate) fn stop(self) -> Output {
        self.running.sigterm(Duration::from_secs(30)).expect_code(0)
    }
}

/// Where screenshots go: `<target>/screenshots/` (the test binary is in `<target>/debug/deps`).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Headless Chromium through chromedriver, with a profile of its own; stopped when dropped.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    _profile: tempfile::TempDir,
    base: String,
}

impl Browser {
    fn start(base: &str) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: the console's browser tests need headless Chromium; run \
                 scripts/install-browser (CI does)"
            );
        }
        let port = free_port();
        let driver = StdCommand::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = format!("http://127.0.0.1:{port}/status");
        while get(&status, &[]).is_none_or(|(_, _, body)| !body.contains("\"ready\":true")) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1360,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        });
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime.block_on(async {
            // chromedriver is plain HTTP on 127.0.0.1: no TLS.
            let mut builder = ClientBuilder::new(HttpConnector::new());
            builder.capabilities(caps.as_object().unwrap().clone());
            builder
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
                .expect("a Chromium session")
        });
        Browser {
            runtime,
            client: Some(client),
            driver,
            _profile: profile,
            base: base.to_string(),
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(self.c().goto(&url)).unwrap();
    }

    fn path(&self) -> String {
        let url = self.runtime.block_on(self.c().current_url()).unwrap();
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// The element `css` finds.
    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.runtime
            .block_on(self.c().find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("{css}: {e}"))
    }

    fn text(&self, css: &str) -> String {
        self.runtime.block_on(self.find(css).text()).unwrap()
    }

    /// Clicks what `css` finds and waits until the page it leads to has loaded (a new document,
    /// complete).
    fn click(&self, css: &str) {
        self.js("window.meterbookTestOldPage = true;");
        self.runtime.block_on(self.find(css).click()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.js(
            "return window.meterbookTestOldPage === undefined && document.readyState === 'complete';",
        ) != json!(true)
        {
            assert!(Instant::now() < deadline, "clicking {css} led nowhere");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Each row of the first table under `css` as (class, cell texts).
    fn table(&self, css: &str) -> Vec<(String, Vec<String>)> {
        let script = format!(
            "const t = document.querySelector({}); if (!t) return null;
             return Array.from(t.querySelectorAll('tbody tr')).map(tr =>
               [tr.className, Array.from(tr.cells).map(td => td.innerText.trim())]);",
            json!(format!("{css} table"))
        );
        let v = self.js(&script);
        let rows: Vec<(String, Vec<String>)> =
            serde_json::from_value(v).unwrap_or_else(|e| panic!("no table under {css}: {e}"));
        rows
    }

    /// The header cells of the first table under `css`.
    fn headers(&self, css: &str) -> Vec<String> {
        let script = format!(
            "return Array.from(document.querySelectorAll({})).map(th => th.innerText.trim());",
            json!(format!("{css} table thead th"))
        );
        serde_json::from_value(self.js(&script)).unwrap()
    }

    /// Column `header` of the first table under `css`, by row.
    fn column(&self, css: &str, header: &str) -> Vec<String> {
        let at = self
            .headers(css)
            .iter()
            .position(|h| h == header)
            .unwrap_or_else(|| panic!("no column {header:?} in {:?}", self.headers(css)));
        self.table(css)
            .into_iter()
            .map(|(_, c)| c[at].clone())
            .collect()
    }

    fn js(&self, script: &str) -> Value {
        self.runtime
            .block_on(self.c().execute(script, vec![]))
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    fn alert(&self) -> Option<String> {
        self.runtime.block_on(self.c().get_alert_text()).ok()
    }

    /// Writes a screenshot of the whole page to `<target>/screenshots/<name>.png`.
    fn screenshot(&self, name: &str) {
        let height = self
            .js("return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight;")
            .as_f64()
            .unwrap_or(900.0)
            .clamp(600.0, 3000.0);
        self.runtime.block_on(async {
            self.c().set_window_size(1360, height as u32).await.unwrap();
            let png = self.c().screenshot().await.unwrap();
            std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
            self.c().set_window_size(1360, 900).await.unwrap();
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn every_page_shows_the_ledgers_numbers_in_a_real_browser() {
    let env = full_ledger();
    let server = Server::start(&env, None);
    let b = Browser::start(&server.url);

    // Overview: the attention counts are the views' counts, and each links to its detail.
    b.goto("/");
    let card = |href: &str| num(&b.text(&format!("a.card[href='{href}'] .n")));
    let failed = db_rows(
        &env,
        "SELECT COUNT(*) FROM submission_failures WHERE status IN ('failed', 'rejected')",
    );
    assert_eq!(
        card("/submissions?attention=1&status=rejected"),
        num(&failed[0][0])
    );
    assert!(num(&failed[0][0]) >= 1.0, "contract-a was rejected");
    let drift = db_rows(&env, "SELECT COUNT(*) FROM submission_drift");
    assert_eq!(card("/submissions/drift"), num(&drift[0][0]));
    assert_eq!(num(&drift[0][0]), 1.0);
    let unattributed = db_rows(&env, "SELECT SUM(records) FROM unattributed_usage");
    assert_eq!(card("/problems/unattributed"), num(&unattributed[0][0]));
    let exports = b.table("main");
    assert_eq!(exports[0].1[0], "pg:PROD:pt-1");
    assert_eq!(exports[0].1[3], "2025-06-30T23:59:59Z");
    b.screenshot("overview");

    // Usage: monthly_usage's numbers, the accepted quantities beside them, the rejection flagged.
    b.click("header nav a[href='/usage']");
    assert_eq!(b.path(), "/usage");
    let usage = b.table("main");
    let expected = db_rows(
        &env,
        "SELECT contract_id, dimension, value FROM monthly_usage WHERE month = '2025-06'
         ORDER BY contract_id, dimension",
    );
    let shown: Vec<Vec<String>> = usage
        .iter()
        .map(|(_, c)| vec![c[1].clone(), c[2].clone(), c[3].clone()])
        .collect();
    assert_eq!(shown.len(), expected.len(), "{shown:?}");
    for (s, e) in shown.iter().zip(&expected) {
        assert_eq!((&s[0], &s[1]), (&e[0], &e[1]));
        assert_eq!(num(&s[2]), num(&e[2]), "{s:?} against {e:?}");
    }
    let accepted: BTreeMap<(String, String), String> = db_rows(
        &env,
        "SELECT contract_id, dimension, SUM(quantity) FROM submission_lines
         WHERE status IN ('accepted', 'duplicate') GROUP BY contract_id, dimension",
    )
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
    .collect();
    for (class, c) in &usage {
        match accepted.get(&(c[1].clone(), c[2].clone())) {
            Some(q) => assert_eq!(num(&c[8]), num(q), "{c:?}"),
            None => assert_eq!(c[8], "", "{c:?}"),
        }
        let rejected = c[1] == "contract-a";
        assert_eq!(class == "flag", rejected, "{c:?}");
        assert_eq!(c[9].contains("rejected"), rejected, "{c:?}");
    }
    // The SQL behind the page gives the same rows through `meterbook sql`.
    let sql = b.js("return document.getElementById('sql-1').textContent;");
    let out = env
        .meterbook(["sql", "--format", "json", sql.as_str().unwrap()])
        .expect_code(0);
    assert_eq!(out.json().as_array().unwrap().len(), usage.len());
    b.js("document.querySelector('#sql details').open = true;");
    b.screenshot("usage");

    // A contract's hours sum to its month; its files are the ledger's.
    b.click("main table a[href*='contract=contract-c']");
    assert!(b.path().starts_with("/usage/contract?"), "{}", b.path());
    let hours = b.table("main");
    let cpu: f64 = hours
        .iter()
        .filter(|(_, c)| c[1] == "cpu_core_hours")
        .map(|(_, c)| num(&c[2]))
        .sum();
    let month = db_rows(
        &env,
        "SELECT value FROM monthly_usage WHERE contract_id = 'contract-c' AND dimension = 'cpu_core_hours'",
    );
    assert_eq!(cpu, num(&month[0][0]));
    b.screenshot("contract");
    b.click("div.tabs a:nth-child(2)");
    let files = b.column("main", "File");
    let expected: Vec<String> = db_rows(
        &env,
        "SELECT DISTINCT f.key FROM usage_files f JOIN usage_records r ON r.file_id = f.id
         WHERE r.contract_id = 'contract-c' ORDER BY f.hour, f.key",
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(files, expected);

    // Submissions: the rejected lines first; a status filter applied through the form.
    b.goto("/submissions");
    let history = b.table("main");
    let lines = db_rows(&env, "SELECT COUNT(*) FROM submission_lines");
    assert_eq!(history.len() as f64, num(&lines[0][0]));
    assert_eq!(history[0].0, "flag", "needing attention first: {history:?}");
    assert_eq!(history[0].1[1], "contract-a");
    let select = b.find("select[name=status]");
    b.runtime
        .block_on(select.select_by_value("rejected"))
        .unwrap();
    b.click("form.filters button[type=submit]");
    assert!(b.path().contains("status=rejected"), "{}", b.path());
    let rejected = b.table("main");
    let expected = db_rows(
        &env,
        "SELECT COUNT(*) FROM submission_lines WHERE status = 'rejected'",
    );
    assert_eq!(rejected.len() as f64, num(&expected[0][0]));
    assert!(rejected.iter().all(|(_, c)| c[5] == "rejected"));
    b.screenshot("submissions");

    // A line: its exact request and Clazar's answer.
    b.click("main table a[href^='/submissions/line']");
    assert!(b.path().starts_with("/submissions/line?id="));
    let payload = b.text("pre#request");
    let line_id: String = b.path().rsplit('=').next().unwrap().to_string();
    let stored = db_rows(
        &env,
        &format!(
            "SELECT s.payload, s.response_body FROM submission_lines l
             JOIN submissions s ON s.id = l.submission_id WHERE l.id = {line_id}"
        ),
    );
    let sent: Value = serde_json::from_str(&stored[0][0]).unwrap();
    let shown: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(shown, sent);
    let answer = b.text("pre#answer");
    let stored_answer: Value = serde_json::from_str(&stored[0][1]).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        stored_answer
    );
    assert!(answer.contains("INVALID_CONTRACT"), "{answer}");
    b.screenshot("line");

    // Drift: the period sent as 4 whose usage is now 10.
    b.goto("/");
    b.click("a.card[href='/submissions/drift']");
    let drift = b.table("main");
    assert_eq!(drift.len(), 1);
    let (class, c) = &drift[0];
    assert_eq!(class, "flag-drift");
    assert_eq!(c[1], "contract-b");
    assert_eq!((num(&c[5]), num(&c[6]), num(&c[7])), (4.0, 10.0, 6.0));
    b.screenshot("drift");

    // Problems name the file and the record; unattributed usage is counted.
    b.click("header nav a[href='/problems']");
    let problems = b.table("main");
    let expected = db_rows(
        &env,
        "SELECT f.key, p.record_index FROM ingest_problems p JOIN usage_files f ON f.id = p.file_id ORDER BY p.id DESC",
    );
    assert_eq!(problems.len(), expected.len());
    for ((_, c), e) in problems.iter().zip(&expected) {
        assert_eq!((&c[0], &c[2]), (&e[0], &e[1]));
    }
    b.screenshot("problems");
    b.click("div.tabs a[href='/problems/unattributed']");
    let records = b.column("main", "Records");
    assert_eq!(num(&records[0]), num(&unattributed[0][0]));

    // Costs: spend per user over June (UTC) is the ledger's, the plot is drawn, the grants shown.
    b.goto("/costs?to=2025-06-30&days=30&tz=UTC");
    let per_user: BTreeMap<String, i64> = b
        .table("#users")
        .into_iter()
        .map(|(_, c)| (c[0].clone(), cents(&c[1])))
        .collect();
    let expected: BTreeMap<String, i64> = db_rows(
        &env,
        "SELECT COALESCE(user, '(untagged)'), SUM(blended_nanos) FROM cost_line_items
         WHERE usage_start >= '2025-06-01T00:00:00Z' AND usage_start < '2025-07-01T00:00:00Z'
         GROUP BY 1",
    )
    .into_iter()
    .map(|r| (r[0].clone(), nanos_to_cents(r[1].parse().unwrap())))
    .collect();
    assert_eq!(per_user, expected);
    let plot = b.js(
        "const i = document.querySelector('div.plot img'); return i.complete && i.naturalWidth;",
    );
    assert!(plot.as_u64().unwrap_or(0) > 0, "the plot loads: {plot}");
    // alice's grant (June) against her June spend; bob's open grant against all of his.
    let grants = b.table("#grants");
    let spent = |user: &str, to: &str| {
        let r = db_rows(
            &env,
            &format!(
                "SELECT SUM(blended_nanos) FROM cost_line_items WHERE user = '{user}'
                 AND usage_start >= '2025-06-01T00:00:00Z' AND usage_start < '{to}'"
            ),
        );
        nanos_to_cents(r[0][0].parse().unwrap())
    };
    assert_eq!(grants.len(), 2);
    assert_eq!(grants[0].1[0], "alice");
    assert_eq!(
        cents(&grants[0].1[3]),
        spent("alice", "2025-07-01T00:00:00Z")
    );
    assert_eq!(grants[1].1[0], "bob");
    assert_eq!(cents(&grants[1].1[3]), spent("bob", "9999-12-31T00:00:00Z"));
    assert_eq!(grants[1].0, "flag", "bob spent more than his $50");
    b.screenshot("costs");
    assert!(b.alert().is_none());
    drop(b);
    let out = server.stop();
    assert!(!out.stderr.contains("ERROR"), "{}", out.stderr);
}

#[test]
fn usage_data_is_shown_as_text_and_never_runs_as_script() {
    let hostile = "<script>alert(1)</script>";
    let file = "<img src=x onerror=alert(2)>";
    let env = TestEnv::new().with_emulator(&["--unknown-contract", hostile]);
    env.write_hour(
        "2025/06/01/00",
        file,
        hostile,
        &[("cpu_core_hours", json!(2))],
    );
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    env.meterbook(["submit"]).expect_code(3);
    let server = Server::start(&env, None);
    let b = Browser::start(&server.url);
    let month = "2025-06";
    for path in [
        "/".to_string(),
        "/usage".to_string(),
        format!(
            "/usage/files?service_key=pg%3APROD%3Apt-1&contract={}&month={month}",
            crate_encode(hostile)
        ),
        "/submissions".to_string(),
        "/submissions/line?id=1".to_string(),
    ] {
        b.goto(&path);
        assert_eq!(b.alert(), None, "a script ran on {path}");
        let scripts = b.js("return Array.from(document.scripts).map(s => s.src);");
        assert_eq!(
            scripts,
            json!([format!("{}/static/console.js", server.url)]),
            "{path}"
        );
        let images = b.js("return document.images.length;");
        assert_eq!(images, json!(0), "an element was injected on {path}");
    }
    // The data is there, as text.
    let main_text = || {
        b.js("return document.querySelector('main').innerText;")
            .as_str()
            .unwrap()
            .to_string()
    };
    for path in ["/usage", "/submissions", "/submissions/line?id=1"] {
        b.goto(path);
        assert!(main_text().contains(hostile), "{path}: {}", main_text());
    }
    b.goto(&format!(
        "/usage/files?service_key=pg%3APROD%3Apt-1&contract={}&month={month}",
        crate_encode(hostile)
    ));
    let files = b.column("main", "File");
    assert_eq!(files, [usage_key("pt-1", "2025/06/01/00", file)]);
    b.screenshot("hostile");
}

/// Percent-encodes a query value (the test's own, not the console's).
pub(crate) fn crate_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `url` with `headers`, redirects not followed: (status, headers, body), or `None` when
/// nothing answers.
pub(crate) fn get(
    url: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, reqwest::header::HeaderMap, String)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut request = client.get(url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let r = request.timeout(Duration::from_secs(30)).send().await.ok()?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        Some((status, headers, r.text().await.ok()?))
    })
}

#[test]
fn with_a_token_every_request_needs_it_and_the_token_is_never_shown() {
    let env = full_ledger();
    let server = Server::start(&env, Some(TOKEN));
    for path in PAGES.iter().chain(&["/nothing"]) {
        let (status, _, body) = get(&format!("{}{path}", server.url), &[]).unwrap();
        assert_eq!(status, 401, "{path}: {body}");
        let wrong = [("authorization", "Bearer wrong-token-0000000")];
        let (status, _, _) = get(&format!("{}{path}", server.url), &wrong).unwrap();
        assert_eq!(status, 401, "{path}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (status, headers, body) =
        get(&format!("{}/", server.url), &[("authorization", &bearer)]).unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains(TOKEN));
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(headers[header], value);
    }
    assert!(headers["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'self'"));

    // A browser is sent to the sign-in form, refused a wrong token, let in by the right one.
    let b = Browser::start(&server.url);
    b.goto("/usage");
    assert_eq!(b.path(), "/login?next=%2Fusage");
    b.screenshot("login");
    let sign_in = |token: &str| {
        let input = b.find("input[name=token]");
        b.runtime.block_on(input.clear()).unwrap();
        b.runtime.block_on(input.send_keys(token)).unwrap();
        b.click("form button[type=submit]");
    };
    sign_in("not-the-token-at-all");
    assert!(b.text("div.error").contains("not the token"));
    sign_in(TOKEN);
    assert_eq!(b.path(), "/usage");
    assert_eq!(b.js("return document.cookie;"), json!(""), "HttpOnly");
    let source = b.runtime.block_on(b.c().source()).unwrap();
    assert!(!source.contains(TOKEN));
    b.click("header form button");
    b.goto("/");
    assert!(b.path().starts_with("/login"));
    drop(b);
    let out = server.stop();
    assert!(!out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN));
}

#[test]
fn a_non_loopback_address_without_a_token_is_warned_about() {
    let env = full_ledger();
    let port = free_port();
    let out = Server::listening(&env, &format!("0.0.0.0:{port}"), None).stop();
    assert!(
        out.stderr.contains("WARN") && out.stderr.contains("without a token"),
        "{}",
        out.stderr
    );
}

#[test]
fn serve_refuses_a_missing_ledger_and_creates_nothing() {
    let env = TestEnv::new();
    let out = env
        .meterbook(["serve", "--listen", "127.0.0.1:0"])
        .expect_code(2);
    assert!(out.stderr.contains("no ledger at"), "{}", out.stderr);
    assert!(!env.ledger.exists());
}

/// `name{labels} value` lines of a metrics text, by name and labels.
fn metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect()
}

#[test]
fn metrics_are_the_ledgers_numbers() {
    let env = full_ledger();
    let server = Server::start(&env, None);
    let (status, headers, body) = get(&format!("{}/metrics", server.url), &[]).unwrap();
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let m = metrics(&body);
    for row in db_rows(
        &env,
        "SELECT status, COUNT(*) FROM submission_lines GROUP BY status",
    ) {
        assert_eq!(
            m[&format!("meterbook_submission_lines{{status=\"{}\"}}", row[0])],
            num(&row[1])
        );
    }
    let drift = db_rows(&env, "SELECT COUNT(*) FROM submission_drift");
    assert_eq!(m["meterbook_drift_lines"], num(&drift[0][0]));
    let failed = db_rows(
        &env,
        "SELECT COUNT(*) FROM submission_failures WHERE status IN ('failed', 'rejected')",
    );
    assert_eq!(
        m["meterbook_submission_lines_needing_attention{reason=\"failed\"}"],
        num(&failed[0][0])
    );
    let problems = db_rows(&env, "SELECT COUNT(*) FROM ingest_problems");
    assert_eq!(
        m["meterbook_ingest_problems{kind=\"record\"}"],
        num(&problems[0][0])
    );
    // 2025-06-30T23:59:59Z
    assert_eq!(
        m["meterbook_export_marker_timestamp_seconds{service_key=\"pg:PROD:pt-1\"}"],
        1751327999.0
    );
    let records = db_rows(&env, "SELECT COUNT(*) FROM usage_records");
    let shown: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("meterbook_usage_records{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(shown, num(&records[0][0]));
}

#[test]
fn a_scheduled_run_serves_its_cycles_syncs_and_the_ledger_as_metrics() {
    let env = TestEnv::new().with_bucket("console").with_emulator(&[]);
    june_in_bucket(&env, "pt-HJSv20iWX0");
    let port = free_port();
    let run = run_every_second(&env, &env.bucket().name, port).spawn();
    wait_for(port, "two good cycles", |code, body| {
        code == 200 && cycles(body) >= 2
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let (code, body) = http(port, "GET", "/metrics", None).expect("metrics answer");
        assert_eq!(code, 200, "{body}");
        let m = metrics(&body);
        if m.contains_key("meterbook_submission_lines{status=\"accepted\"}") {
            break m;
        }
        assert!(Instant::now() < deadline, "no ledger numbers: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(m["meterbook_cycles_total{outcome=\"success\"}"] >= 2.0);
    assert!(m["meterbook_sync_duration_seconds_count{direction=\"push\"}"] >= 2.0);
    assert!(m["meterbook_sync_bytes_total{direction=\"push\"}"] > 0.0);
    assert!(m["meterbook_last_finished_cycle_timestamp_seconds"] > 1.7e9);
    assert_eq!(
        m["meterbook_submission_lines{status=\"accepted\"}"],
        env.emulator().accepted().len() as f64
    );
    sigterm(run, 0);
}

#[test]
fn history_fits_a_terminal_and_wide_shows_everything() {
    let long = "contract-0675295f-8812-2e14-0fc0-55310b43b6dd";
    let env = TestEnv::new().with_emulator(&["--unknown-contract", long]);
    env.write_hour(
        "2025/06/01/00",
        "sub-a",
        long,
        &[("cpu_core_hours", json!(2)), ("replica_hours", json!(1))],
    );
    env.write_marker("2025-06-30T23:59:59Z");
    env.ingest().expect_code(0);
    env.meterbook(["submit"]).expect_code(3);
    let text = env.meterbook(["history"]).expect_code(0).stdout;
    assert!(text.lines().count() > 3, "{text}");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 120,
            "{} wide: {line}",
            line.chars().count()
        );
    }
    assert!(text.contains("rejected"), "{text}");
    let wide = env.meterbook(["history", "--wide"]).expect_code(0).stdout;
    assert!(
        wide.contains(long) && wide.contains("submission_id"),
        "{wide}"
    );
}

#[test]
fn serving_every_page_changes_nothing_and_leaves_no_file() {
    let env = full_ledger();
    let before = file_digests(env.dir.path());
    let server = Server::start(&env, None);
    for path in PAGES {
        let (status, _, body) = get(&format!("{}{path}", server.url), &[]).unwrap();
        assert_eq!(status, 200, "{path}: {body}");
    }
    server.stop();
    assert_eq!(file_digests(env.dir.path()), before);
}

#[test]
fn a_short_token_is_refused_and_help_never_shows_the_token() {
    let env = TestEnv::new();
    let out = env
        .meterbook(["serve", "--listen", "127.0.0.1:0"])
        .env("METERBOOK_SERVE_TOKEN", "short")
        .expect_code(2);
    assert!(
        out.stderr.contains("at least 16 characters"),
        "{}",
        out.stderr
    );
    let help = env
        .meterbook(["serve", "--help"])
        .env("METERBOOK_SERVE_TOKEN", TOKEN)
        .expect_code(0);
    assert!(
        help.stdout.contains("METERBOOK_SERVE_TOKEN"),
        "{}",
        help.stdout
    );
    assert!(!help.stdout.contains(TOKEN) && !help.stderr.contains(TOKEN));
}
