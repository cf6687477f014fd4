//! `meterbook sync` and `meterbook doctor` against the real S3-compatible server: snapshots that
//! round-trip between hosts, conditional writes that refuse lost updates, refused bad states,
//! generations and restore, the lease, and a full disk.

use std::collections::HashMap;
use std::process::{Command as StdCommand, Output};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use aws_sdk_s3::primitives::ByteStream;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::util::{file_digests, stderr_of, TestEnv};

const STATE_KEY: &str = "state/ledger.sqlite";

/// The test S3 server and a bucket of this test's own.
struct Store {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    endpoint: String,
    bucket: String,
}

impl Store {
    fn new(name: &str) -> Store {
        let endpoint = std::env::var("METERBOOK_TEST_S3_ENDPOINT")
            .expect("METERBOOK_TEST_S3_ENDPOINT: run the tests with scripts/test");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let bucket = format!("sync-{name}-{:08x}", rand::random::<u32>()).replace('_', "-");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(client.create_bucket().bucket(&bucket).send())
            .expect("create bucket");
        Store {
            rt,
            client,
            endpoint,
            bucket,
        }
    }

    fn state_url(&self) -> String {
        format!("s3://{}/{STATE_KEY}", self.bucket)
    }

    /// `meterbook` for `env`, pointed at this store and state.
    fn cmd(&self, env: &TestEnv) -> Command {
        Command::from_std(self.std_cmd(env, &[]))
    }

    /// The same as a `std::process::Command` with `args`, to run concurrently.
    fn std_cmd(&self, env: &TestEnv, args: &[&str]) -> StdCommand {
        let mut cmd = env.std_cmd();
        cmd.args(["--s3-endpoint-url", &self.endpoint, "--s3-path-style"])
            .args(args)
            .env("METERBOOK_STATE_URL", self.state_url());
        cmd
    }

    /// Starts `meterbook args` in the background, its output captured.
    fn spawn(&self, env: &TestEnv, args: &[&str]) -> std::process::Child {
        self.std_cmd(env, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn put(&self, key: &str, body: Vec<u8>, metadata: HashMap<String, String>) {
        self.rt
            .block_on(
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .body(ByteStream::from(body))
                    .set_metadata(Some(metadata))
                    .send(),
            )
            .expect("put object");
    }

    fn metadata(&self, key: &str) -> HashMap<String, String> {
        self.rt
            .block_on(
                self.client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .expect("head object")
            .metadata()
            .cloned()
            .unwrap_or_default()
    }

    fn delete(&self, key: &str) {
        self.rt
            .block_on(
                self.client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .send(),
            )
            .expect("delete object");
    }

    fn keys(&self) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_objects_v2().bucket(&self.bucket).send())
            .expect("list");
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    }
}

/// Every row of every table, in a fixed order: what "identical ledger" means.
fn dump(env: &TestEnv) -> Vec<String> {
    let db = Connection::open(&env.ledger).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut rows = Vec::new();
    for table in tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let n = stmt.column_count();
        let mut q = stmt.query([]).unwrap();
        while let Some(row) = q.next().unwrap() {
            let values: Vec<String> = (0..n)
                .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                .collect();
            rows.push(format!("{table}: {}", values.join(", ")));
        }
    }
    // Not every table has a rowid: compare the rows as a sorted list.
    rows.sort();
    rows
}

fn file_sha(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A host with a ledger ingested from a small generated export.
fn host_with_usage(hours: &str) -> TestEnv {
    let env = TestEnv::new();
    ingest_more(&env, hours);
    env
}

/// Ingests more hours into an existing host's ledger.
fn ingest_more(env: &TestEnv, hours: &str) {
    env.generate(&["--subscriptions", "2", "--hours", hours]);
    env.cmd()
        .args(["ingest", "--source"])
        .arg(env.export())
        .assert()
        .success();
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn push_then_pull_on_another_host_gives_an_identical_ledger() {
    let s3 = Store::new("roundtrip");
    let a = host_with_usage("6");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let meta = s3.metadata(STATE_KEY);
    assert_eq!(meta["meterbook-generation"], "1");
    assert_eq!(meta["meterbook-compression"], "zstd");

    let b = TestEnv::new();
    let out = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("pulled generation 1"));
    assert_eq!(dump(&a), dump(&b));
    assert!(dump(&b).iter().any(|r| r.starts_with("usage_records: ")));

    let before = file_digests(b.dir.path());
    let status = s3.cmd(&b).args(["sync", "status"]).output().unwrap();
    assert_eq!(file_digests(b.dir.path()), before, "status changed a file");
    let status = stdout_of(&status);
    assert!(status.contains("remote generation: 1"), "{status}");
    assert!(status.contains("local generation: 1"), "{status}");
    assert!(status.contains("unpushed changes: no"), "{status}");
    // The checksum in the metadata is the one status shows, and a second pull changes nothing.
    assert!(status.contains(&meta["meterbook-sha256"]));
    let again = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
    assert!(stdout_of(&again).contains("up to date: generation 1"));
}

#[test]
fn racing_pushes_one_wins_and_the_other_exits_4_keeping_its_ledger() {
    let s3 = Store::new("race");
    let a = host_with_usage("3");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let b = TestEnv::new();
    s3.cmd(&b).args(["sync", "pull"]).assert().success();
    ingest_more(&a, "5");
    ingest_more(&b, "7");
    let (dump_a, dump_b) = (dump(&a), dump(&b));

    let (push_a, push_b) = (
        s3.spawn(&a, &["sync", "push"]),
        s3.spawn(&b, &["sync", "push"]),
    );
    let (out_a, out_b) = (
        push_a.wait_with_output().unwrap(),
        push_b.wait_with_output().unwrap(),
    );
    let codes = [out_a.status.code(), out_b.status.code()];
    assert!(
        codes == [Some(0), Some(4)] || codes == [Some(4), Some(0)],
        "{codes:?}\n{}\n{}",
        stderr_of(&out_a),
        stderr_of(&out_b)
    );
    let (loser, loser_out, loser_dump, winner_dump) = if codes[0] == Some(4) {
        (&a, &out_a, &dump_a, &dump_b)
    } else {
        (&b, &out_b, &dump_b, &dump_a)
    };
    assert!(
        stderr_of(loser_out).contains("another host wrote in between"),
        "{}",
        stderr_of(loser_out)
    );
    assert!(stderr_of(loser_out).contains("`meterbook sync pull`"));
    assert_eq!(&dump(loser), loser_dump, "the loser keeps its ledger");
    assert_eq!(s3.metadata(STATE_KEY)["meterbook-generation"], "2");

    // The state is the winner's ledger.
    let c = TestEnv::new();
    s3.cmd(&c).args(["sync", "pull"]).assert().success();
    assert_eq!(&dump(&c), winner_dump);
}

/// A corrupted state: name, uncompressed body, claimed SHA-256, claimed schema version, and the
/// exit code and message `pull` must give.
type BadState<'a> = (&'a str, Vec<u8>, String, &'a str, i32, &'a str);

/// Replaces the state object with `snapshot` compressed, under metadata that claims `sha256`.
fn put_state(s3: &Store, snapshot: &[u8], sha256: &str, schema_version: &str) {
    let mut meta = s3.metadata(STATE_KEY);
    meta.insert("meterbook-generation".into(), "2".into());
    meta.insert("meterbook-sha256".into(), sha256.into());
    meta.insert("meterbook-schema-version".into(), schema_version.into());
    s3.put(STATE_KEY, zstd::encode_all(snapshot, 3).unwrap(), meta);
}

/// A copy of `env`'s ledger, changed by `sql`, as bytes.
fn changed_copy(env: &TestEnv, sql: &str) -> Vec<u8> {
    let copy = env.dir.path().join("copy.sqlite");
    let _ = std::fs::remove_file(&copy);
    env.db()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
    std::fs::read(&copy).unwrap()
}

#[test]
fn a_state_failing_a_check_is_refused_and_the_local_ledger_is_untouched() {
    let s3 = Store::new("refused");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let b = TestEnv::new();
    s3.cmd(&b).args(["sync", "pull"]).assert().success();
    let before = file_sha(&b.ledger);

    let good = changed_copy(&a, "SELECT 1");
    let newer = changed_copy(
        &a,
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (999, 'future', '2030-01-01T00:00:00Z', '0')",
    );
    let not_sqlite = b"this is not a database, but long enough to be read as one".repeat(100);
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    let cases: [BadState; 3] = [
        (
            "bad checksum",
            good.clone(),
            sha(b"something else"),
            "1",
            1,
            "SHA-256",
        ),
        (
            "not sqlite",
            not_sqlite.clone(),
            sha(&not_sqlite),
            "1",
            1,
            "not a readable SQLite database",
        ),
        (
            "newer schema",
            newer.clone(),
            sha(&newer),
            "999",
            2,
            "schema version 999",
        ),
    ];
    for (name, body, claimed, schema, code, says) in cases {
        put_state(&s3, &body, &claimed, schema);
        let out = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(err.contains("refusing the state"), "{name}: {err}");
        assert!(err.contains(says), "{name}: {err}");
        assert!(err.contains("left unchanged"), "{name}: {err}");
        assert_eq!(
            file_sha(&b.ledger),
            before,
            "{name}: the ledger file changed"
        );
        let leftovers: Vec<_> = std::fs::read_dir(b.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".ledger.sqlite."))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{name}: temporary files left: {leftovers:?}"
        );
    }

    // Metadata that is not a meterbook state's is refused too.
    s3.put(STATE_KEY, good, HashMap::new());
    let out = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("not a meterbook state (its metadata has no"));
    assert_eq!(file_sha(&b.ledger), before);
}

#[test]
fn generations_are_kept_up_to_the_limit_and_restore_brings_one_back() {
    let s3 = Store::new("generations");
    let a = host_with_usage("1");
    let push = |env: &TestEnv| {
        s3.cmd(env)
            .args(["sync", "push", "--keep-generations", "2"])
            .assert()
            .success();
    };
    push(&a);
    ingest_more(&a, "2");
    push(&a);
    let at_two = dump(&a);
    ingest_more(&a, "3");
    push(&a);
    let generations: Vec<String> = s3
        .keys()
        .into_iter()
        .filter(|k| k.contains(".generations/"))
        .collect();
    assert_eq!(
        generations,
        [
            format!("{STATE_KEY}.generations/00000000000000000002"),
            format!("{STATE_KEY}.generations/00000000000000000003"),
        ]
    );

    let out = s3
        .cmd(&a)
        .args(["sync", "restore", "--generation", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("kept generations: 2, 3"));

    let out = s3
        .cmd(&a)
        .args(["sync", "restore", "--generation", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("restored generation 2"));
    assert!(stdout_of(&out).contains("as generation 4"));
    assert_eq!(dump(&a), at_two);
    let meta = s3.metadata(STATE_KEY);
    assert_eq!(meta["meterbook-generation"], "4");
    assert_eq!(meta["meterbook-restored-from"], "2");

    // Another host gets the restored content.
    let b = TestEnv::new();
    s3.cmd(&b).args(["sync", "pull"]).assert().success();
    assert_eq!(dump(&b), at_two);
}

#[test]
fn a_state_deleted_by_hand_is_an_error_not_a_fresh_start() {
    let s3 = Store::new("deleted");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let pushed = dump(&a);
    s3.delete(STATE_KEY);

    for action in ["pull", "push"] {
        let out = s3.cmd(&a).args(["sync", action]).output().unwrap();
        assert_eq!(out.status.code(), Some(4), "{action}: {}", stderr_of(&out));
        assert!(stderr_of(&out).contains("is gone"), "{}", stderr_of(&out));
        assert!(stderr_of(&out).contains("sync restore --generation"));
    }
    assert_eq!(dump(&a), pushed);

    s3.cmd(&a)
        .args(["sync", "restore", "--generation", "1"])
        .assert()
        .success();
    assert_eq!(s3.metadata(STATE_KEY)["meterbook-generation"], "2");
    assert_eq!(dump(&a), pushed);
}

/// Every row of the tables `names` start with, as [`dump`] gives them.
fn dump_of(env: &TestEnv, prefixes: &[&str]) -> Vec<String> {
    dump(env)
        .into_iter()
        .filter(|row| prefixes.iter().any(|p| row.starts_with(p)))
        .collect()
}

const MONTHLY_STATE: &str = r#"{"pg:PROD:pt-1": {"last_processed_month": "2025-06",
    "success_contracts": {"2025-06": ["A"]}, "error_contracts": {}}}"#;

/// Records the predecessor's state and a grant on `env`: changes only that ledger knows.
fn import_and_grant(env: &TestEnv, user: &str) {
    let state = env.dir.path().join("metering_state.json");
    std::fs::write(&state, MONTHLY_STATE).unwrap();
    let out = env
        .cmd()
        .args(["import-state", "--from"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    load_grants(env, user);
}

/// Loads a grant for `user` from `grants.csv` in the host's folder.
fn load_grants(env: &TestEnv, user: &str) {
    let grants = env.dir.path().join("grants.csv");
    std::fs::write(
        &grants,
        format!("user,amount,start\n{user},10,2025-06-01\n"),
    )
    .unwrap();
    let out = env
        .cmd()
        .args(["costs", "grants", "load"])
        .arg(&grants)
        .output()
        .unwrap();
    // 3: no billing line item names the user yet.
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
}

const USAGE_TABLES: [&str; 3] = ["usage_files: ", "usage_records: ", "ingest_runs: "];
const KEPT_TABLES: [&str; 4] = [
    "submissions: ",
    "submission_lines: ",
    "predecessor_imports: ",
    "cost_grants: ",
];

#[test]
fn pull_keeps_what_only_the_local_ledger_knows_and_drops_what_the_export_rebuilds() {
    let s3 = Store::new("unpushed");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    // B was never synced: its own ingest (which any ingest repeats), an import and grants.
    let b = host_with_usage("4");
    import_and_grant(&b, "ada");
    let kept = dump_of(&b, &KEPT_TABLES);
    assert!(kept.iter().any(|r| r.starts_with("cost_grants: ")));

    let out = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out)
            .contains("keeping 1 submissions, 1 predecessor imports and the cost tables"),
        "{}",
        stdout_of(&out)
    );
    assert!(
        stderr_of(&out).contains("dropped 4 usage files ingested here"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(dump_of(&b, &USAGE_TABLES), dump_of(&a, &USAGE_TABLES));
    assert_eq!(dump_of(&b, &KEPT_TABLES), kept);
    let status = stdout_of(&s3.cmd(&b).args(["sync", "status"]).output().unwrap());
    assert!(status.contains("unpushed changes: yes"), "{status}");

    // Pushed, they reach every host.
    s3.cmd(&b).args(["sync", "push"]).assert().success();
    let c = TestEnv::new();
    s3.cmd(&c).args(["sync", "pull"]).assert().success();
    assert_eq!(dump(&c), dump(&b));

    // --discard-local takes the state as it is.
    let d = host_with_usage("3");
    import_and_grant(&d, "bob");
    s3.cmd(&d)
        .args(["sync", "pull", "--discard-local"])
        .assert()
        .success();
    assert_eq!(dump(&d), dump(&b));
}

#[test]
fn cost_tables_changed_on_both_sides_keep_the_states_and_say_what_to_load_again() {
    let s3 = Store::new("costs");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let b = TestEnv::new();
    s3.cmd(&b).args(["sync", "pull"]).assert().success();
    import_and_grant(&a, "ada");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    import_and_grant(&b, "bob");

    let out = s3.cmd(&b).args(["sync", "pull"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("only one version can be kept: the state's"),
        "{err}"
    );
    let grants = b.dir.path().join("grants.csv");
    assert!(
        err.contains(&format!(
            "`meterbook costs grants load {}`",
            grants.display()
        )),
        "{err}"
    );
    // The same import on both hosts (matched, or left out: the state holds it): recorded once.
    let costs_and_submissions = [
        "cost_grants: ",
        "submissions: ",
        "submission_lines: ",
        "usage_files: ",
    ];
    assert_eq!(
        dump_of(&b, &costs_and_submissions),
        dump_of(&a, &costs_and_submissions)
    );

    // Loading the file again brings this host's grants back, and a push shares them.
    load_grants(&b, "bob");
    s3.cmd(&b).args(["sync", "push"]).assert().success();
    s3.cmd(&a).args(["sync", "pull"]).assert().success();
    assert_eq!(
        a.count("SELECT COUNT(*) FROM cost_grants WHERE user = 'bob'"),
        1
    );
}

/// Temporary files a sync left beside the ledger (snapshots, downloads, their journals).
fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ledger.sqlite.") || n.ends_with("-journal"))
        .collect()
}

#[test]
fn an_unreachable_store_fails_and_leaves_the_ledger_as_it_is() {
    let s3 = Store::new("outage");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    ingest_more(&a, "3");
    let before = dump(&a);
    for action in [&["sync", "push"][..], &["sync", "pull", "--discard-local"]] {
        let out = a
            .cmd()
            .args(["--s3-endpoint-url", "http://127.0.0.1:1", "--s3-path-style"])
            .env("METERBOOK_STATE_URL", s3.state_url())
            .args(action)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{action:?}: {}",
            stderr_of(&out)
        );
        assert!(
            stderr_of(&out).contains(&s3.state_url()),
            "{}",
            stderr_of(&out)
        );
        assert_eq!(dump(&a), before, "{action:?}");
        assert_eq!(leftovers(a.dir.path()), Vec::<String>::new(), "{action:?}");
    }
    assert_eq!(s3.metadata(STATE_KEY)["meterbook-generation"], "1");
}

fn lease_cmd(s3: &Store, env: &TestEnv, args: &[&str]) -> Output {
    s3.cmd(env)
        .args(["sync", "lease"])
        .args(args)
        .args(["--lease-seconds", "2"])
        .output()
        .unwrap()
}

/// Polls `lease show` until it says `wanted`, or fails after `limit`.
fn wait_for_lease(s3: &Store, env: &TestEnv, wanted: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let shown = stdout_of(&lease_cmd(s3, env, &["show"]));
        if shown.contains(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "lease never said '{wanted}': {shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_acquirer_is_refused_naming_the_holder_and_takes_over_once_expired() {
    let s3 = Store::new("lease");
    let (a, b) = (TestEnv::new(), TestEnv::new());
    let first = lease_cmd(&s3, &a, &["acquire"]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    let holder = stdout_of(&first)
        .split(" as ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_string();

    let second = lease_cmd(&s3, &b, &["acquire"]);
    assert_eq!(second.status.code(), Some(4));
    let err = stderr_of(&second);
    assert!(err.contains("held until"), "{err}");
    assert!(err.contains(&holder), "{err}");

    // Nobody renews the first lease (its process ended): it expires and the next one takes over.
    wait_for_lease(&s3, &b, "expired at", Duration::from_secs(10));
    let third = lease_cmd(&s3, &b, &["acquire"]);
    assert!(third.status.success(), "{}", stderr_of(&third));
    assert!(stderr_of(&third).contains("taking over an expired lease"));
    assert!(!stdout_of(&third).contains(&holder));
}

#[test]
fn a_held_lease_is_renewed_while_working_and_released_at_the_end() {
    let s3 = Store::new("renew");
    let (a, b) = (TestEnv::new(), TestEnv::new());
    // Held for 5 s with a 2 s lease: only renewals keep it.
    let holder = s3.spawn(
        &a,
        &[
            "sync",
            "lease",
            "acquire",
            "--hold",
            "5",
            "--lease-seconds",
            "2",
        ],
    );
    wait_for_lease(&s3, &b, "held until", Duration::from_secs(10));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let refused = lease_cmd(&s3, &b, &["acquire"]);
        assert_eq!(refused.status.code(), Some(4), "{}", stderr_of(&refused));
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("released the lease"));
    assert!(stdout_of(&lease_cmd(&s3, &b, &["show"])).contains("released by"));
    let next = lease_cmd(&s3, &b, &["acquire", "--wait"]);
    assert!(next.status.success(), "{}", stderr_of(&next));
}

#[test]
fn a_waiting_acquirer_gets_the_lease_when_it_is_released() {
    let s3 = Store::new("wait");
    let (a, b) = (TestEnv::new(), TestEnv::new());
    assert!(lease_cmd(&s3, &a, &["acquire"]).status.success());
    let waiter = s3.spawn(
        &b,
        &[
            "sync",
            "lease",
            "acquire",
            "--wait",
            "--lease-seconds",
            "30",
        ],
    );
    let released = lease_cmd(&s3, &a, &["release"]);
    assert!(stdout_of(&released).contains("released the lease held until"));
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("acquired the lease"));
}

#[test]
fn doctor_on_a_good_setup_says_ok_to_every_check() {
    let s3 = Store::new("doctor");
    let env = host_with_usage("2");
    let marker = std::fs::read(
        env.export()
            .join("omnistrate-metering/last_success_export.json"),
    )
    .unwrap();
    s3.put(
        "omnistrate-metering/last_success_export.json",
        marker,
        HashMap::new(),
    );
    s3.put(
        "omnistrate-metering/pg/PROD/pt-1/2025/06/01/00/sub-1.json",
        b"[]".to_vec(),
        HashMap::new(),
    );
    s3.cmd(&env).args(["sync", "push"]).assert().success();
    let emu = crate::emulator::Emulator::start(&env, &[]);
    let out = s3
        .cmd(&env)
        .env("S3_BUCKET_NAME", &s3.bucket)
        .env("CLAZAR_CLIENT_ID", crate::emulator::CLIENT_ID)
        .env("CLAZAR_CLIENT_SECRET", crate::emulator::SECRET)
        .env(
            "DIMENSION_memory_gb_hours",
            "memory_byte_hours / 1073741824",
        )
        .args(["doctor", "--clazar-base-url", &emu.url()])
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert!(out.status.success(), "{text}{}", stderr_of(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 10, "{text}");
    assert!(
        text.contains("clazar authentication: authenticated"),
        "{text}"
    );
    assert!(
        text.contains("formulas: 1 valid: memory_gb_hours"),
        "{text}"
    );
    assert!(!text.contains(crate::emulator::SECRET));
    for line in &lines {
        assert!(line.starts_with("ok "), "{line}");
    }
    assert!(text.contains("conditional writes: If-None-Match and If-Match are honoured"));
    assert!(text.contains("state: "), "{text}");
    assert!(text.contains("is generation 1"), "{text}");
    // The probes leave nothing behind.
    assert!(s3.keys().iter().all(|k| !k.contains("doctor")));
}

#[test]
fn doctor_names_the_failing_check_and_exits_2() {
    let s3 = Store::new("doctor-bad");
    let env = TestEnv::new();
    let out = s3
        .cmd(&env)
        .env("S3_BUCKET_NAME", &s3.bucket)
        .env("DIMENSION_bad", "cpu_core_hours * nope")
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stdout_of(&out);
    let marker = text
        .lines()
        .find(|l| l.contains("completion marker"))
        .unwrap();
    assert!(marker.starts_with("FAIL"), "{marker}");
    assert!(marker.contains("fix: "), "{marker}");
    let clazar = text
        .lines()
        .find(|l| l.contains("clazar authentication"))
        .unwrap();
    assert!(
        clazar.starts_with("FAIL") && clazar.contains("CLAZAR_CLIENT_ID"),
        "{clazar}"
    );
    let formulas = text.lines().find(|l| l.contains("formulas")).unwrap();
    assert!(
        formulas.starts_with("FAIL") && formulas.contains("DIMENSION_bad"),
        "{formulas}"
    );
    assert!(
        stderr_of(&out).contains("3 of 10 checks failed"),
        "{}",
        stderr_of(&out)
    );
    assert!(!env.ledger.exists(), "doctor created a ledger");
}

/// A tmpfs of `size` mounted for the test's lifetime (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = StdCommand::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }

    /// Fills the file system up to the last `leave` bytes.
    fn fill(&self, leave: u64) {
        let stat = StdCommand::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        let avail: u64 = stdout_of(&stat)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let filler = vec![0u8; avail.saturating_sub(leave) as usize];
        let _ = std::fs::write(self.0.join("filler"), filler);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = StdCommand::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_while_writing_the_snapshot_is_a_clear_error_and_keeps_the_state() {
    let s3 = Store::new("diskfull");
    let mut env = host_with_usage("4");
    s3.cmd(&env).args(["sync", "push"]).assert().success();
    ingest_more(&env, "8");
    let Some(disk) = Tmpfs::mount(env.dir.path().join("small"), "2m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    // The ledger on a disk with no room for its snapshot.
    let ledger = disk.0.join("ledger.sqlite");
    Connection::open(&env.ledger)
        .unwrap()
        .execute("VACUUM INTO ?1", [ledger.to_str().unwrap()])
        .unwrap();
    std::fs::copy(
        env.dir.path().join("ledger.sqlite.sync.json"),
        disk.0.join("ledger.sqlite.sync.json"),
    )
    .unwrap();
    env.ledger = ledger;
    let before = dump(&env);
    disk.fill(8192);

    let out = s3.cmd(&env).args(["sync", "push"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no space left"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(s3.metadata(STATE_KEY)["meterbook-generation"], "1");
    assert_eq!(dump(&env), before);
    assert_eq!(leftovers(&disk.0), Vec::<String>::new());

    // Pulling onto the full disk fails the same way and keeps the local ledger.
    let out = s3
        .cmd(&env)
        .args(["sync", "pull", "--discard-local"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("no space left"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(dump(&env), before);
    assert_eq!(leftovers(&disk.0), Vec::<String>::new());
}

#[test]
fn a_file_that_is_not_a_ledger_is_never_replaced_by_a_pull() {
    let s3 = Store::new("foreign");
    let a = host_with_usage("2");
    s3.cmd(&a).args(["sync", "push"]).assert().success();
    let b = TestEnv::new();
    Connection::open(&b.ledger)
        .unwrap()
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        .unwrap();
    let before = file_digests(b.dir.path());
    for args in [
        &["sync", "pull"][..],
        &["sync", "pull", "--discard-local"],
        &["sync", "restore", "--generation", "1", "--discard-local"],
    ] {
        let out = s3.cmd(&b).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(
            stderr_of(&out).contains("not a meterbook ledger"),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert_eq!(file_digests(b.dir.path()), before, "{args:?}");
    }
}
