//! `meterbook sync` and `meterbook doctor` against the real S3-compatible server: snapshots that
//! round-trip between hosts, conditional writes that refuse lost updates, refused bad states,
//! generations and restore, the lease, and a full disk.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use crate::s3::Bucket;
use crate::util::{file_digests, python_script, TestCommand, TestEnv, MARKER_KEY};

const STATE_KEY: &str = "state/ledger.sqlite";

/// The first host of a deployment whose state is [`STATE_KEY`] in a bucket of the test's own;
/// [`TestEnv::another_host`] makes the others.
fn first_host(label: &str) -> TestEnv {
    let env = TestEnv::new().with_bucket(label);
    let state = state_url(&env);
    env.with_vars([("METERBOOK_STATE_URL", state)])
}

fn state_url(env: &TestEnv) -> String {
    format!("{}/{STATE_KEY}", env.bucket().url())
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

fn file_sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Ingests `hours` more hours of a small generated export into the host's ledger.
fn ingest_more(env: &TestEnv, hours: &str) {
    env.generate(&["--subscriptions", "2", "--hours", hours]);
    env.ingest().expect_code(0);
}

/// The first host (see [`first_host`]) with `hours` of usage ingested.
fn first_host_with_usage(label: &str, hours: &str) -> TestEnv {
    let env = first_host(label);
    ingest_more(&env, hours);
    env
}

/// Another host of `env`'s deployment with `hours` of usage of its own ingested.
fn another_host_with_usage(env: &TestEnv, hours: &str) -> TestEnv {
    let other = env.another_host();
    ingest_more(&other, hours);
    other
}

#[test]
fn a_store_that_ignores_conditional_writes_gets_no_state_and_doctor_says_so() {
    let env = first_host_with_usage("no-conditions", "2");
    let proxy = crate::s3_ingest::FaultProxy::start(&["--ignore-conditions"]);
    let out = env
        .meterbook(["sync", "push"])
        .s3_endpoint(&proxy.url)
        .expect_code(2);
    assert!(
        out.stderr.contains("ignores conditional writes"),
        "{}",
        out.stderr
    );
    // Nothing was written: no manifest, no segment, and the probe object is gone.
    assert_eq!(env.bucket().keys_under("state"), Vec::<String>::new());
    let doctor = env
        .meterbook(["doctor"])
        .s3_endpoint(&proxy.url)
        .expect_one_of(&[1, 2]);
    assert!(
        doctor.stdout.contains("ignores conditional writes"),
        "{}",
        doctor.stdout
    );
    // The same store honouring them takes the state.
    env.meterbook(["sync", "push"]).expect_code(0);
}

#[test]
fn push_then_pull_on_another_host_gives_an_identical_ledger() {
    let a = first_host_with_usage("roundtrip", "6");
    a.meterbook(["sync", "push"]).expect_code(0);
    let meta = a.bucket().metadata(STATE_KEY);
    assert_eq!(meta["meterbook-generation"], "1");
    assert_eq!(meta["meterbook-compression"], "zstd");

    let b = a.another_host();
    let out = b.meterbook(["sync", "pull"]).expect_code(0);
    assert!(out.stdout.contains("pulled generation 1"));
    assert_eq!(dump(&a), dump(&b));
    assert!(dump(&b).iter().any(|r| r.starts_with("usage_records: ")));

    let before = file_digests(b.dir.path());
    let status = b.meterbook(["sync", "status"]).expect_code(0).stdout;
    assert_eq!(file_digests(b.dir.path()), before, "status changed a file");
    assert!(status.contains("remote generation: 1"), "{status}");
    assert!(status.contains("local generation: 1"), "{status}");
    assert!(status.contains("unpushed changes: no"), "{status}");
    // The checksum in the metadata is the one status shows, and a second pull changes nothing.
    assert!(status.contains(&meta["meterbook-sha256"]));
    let again = b.meterbook(["sync", "pull"]).expect_code(0);
    assert!(again.stdout.contains("up to date: generation 1"));
}

#[test]
fn racing_pushes_one_wins_and_the_other_exits_4_keeping_its_ledger() {
    let a = first_host_with_usage("race", "3");
    a.meterbook(["sync", "push"]).expect_code(0);
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    ingest_more(&a, "5");
    ingest_more(&b, "7");
    let (dump_a, dump_b) = (dump(&a), dump(&b));

    let (push_a, push_b) = (
        a.meterbook(["sync", "push"]).spawn(),
        b.meterbook(["sync", "push"]).spawn(),
    );
    let (out_a, out_b) = (push_a.expect_one_of(&[0, 4]), push_b.expect_one_of(&[0, 4]));
    let codes = [out_a.code, out_b.code];
    assert!(
        codes == [Some(0), Some(4)] || codes == [Some(4), Some(0)],
        "{codes:?}\n{}\n{}",
        out_a.stderr,
        out_b.stderr
    );
    let (loser, loser_out, loser_dump, winner_dump) = if codes[0] == Some(4) {
        (&a, &out_a, &dump_a, &dump_b)
    } else {
        (&b, &out_b, &dump_b, &dump_a)
    };
    assert!(
        loser_out.stderr.contains("another host wrote in between"),
        "{}",
        loser_out.stderr
    );
    assert!(loser_out.stderr.contains("`meterbook sync pull`"));
    assert_eq!(&dump(loser), loser_dump, "the loser keeps its ledger");
    assert_eq!(a.bucket().metadata(STATE_KEY)["meterbook-generation"], "2");

    // The state is the winner's ledger.
    let c = a.another_host();
    c.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(&dump(&c), winner_dump);
}

/// A corrupted state: name, uncompressed body, claimed SHA-256, claimed schema version, and the
/// exit code and message `pull` must give.
type BadState<'a> = (&'a str, Vec<u8>, String, &'a str, i32, &'a str);

/// Replaces the state object with `snapshot` compressed, under metadata that claims `sha256`.
fn put_state(bucket: &Bucket, snapshot: &[u8], sha256: &str, schema_version: &str) {
    let mut meta = bucket.metadata(STATE_KEY);
    meta.insert("meterbook-generation".into(), "2".into());
    meta.insert("meterbook-sha256".into(), sha256.into());
    meta.insert("meterbook-schema-version".into(), schema_version.into());
    let body = zstd::encode_all(snapshot, 3).unwrap();
    bucket.put_with_metadata(STATE_KEY, &body, meta);
}

/// A copy of `env`'s ledger, changed by `sql`, as bytes.
fn changed_copy(env: &TestEnv, sql: &str) -> Vec<u8> {
    let copy = env.path("copy.sqlite");
    let _ = std::fs::remove_file(&copy);
    env.db()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
    std::fs::read(&copy).unwrap()
}

#[test]
fn a_state_failing_a_check_is_refused_and_the_local_ledger_is_untouched() {
    let a = first_host_with_usage("refused", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
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
        put_state(a.bucket(), &body, &claimed, schema);
        let err = b.meterbook(["sync", "pull"]).expect_code(code).stderr;
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
    a.bucket().put(STATE_KEY, &good);
    let out = b.meterbook(["sync", "pull"]).expect_code(1);
    assert!(out
        .stderr
        .contains("not a meterbook state (its metadata has no"));
    assert_eq!(file_sha(&b.ledger), before);
}

#[test]
fn generations_are_kept_up_to_the_limit_and_restore_brings_one_back() {
    let a = first_host_with_usage("generations", "1");
    let push = |env: &TestEnv| {
        env.meterbook(["sync", "push", "--keep-generations", "2"])
            .expect_code(0);
    };
    push(&a);
    ingest_more(&a, "2");
    push(&a);
    let at_two = dump(&a);
    ingest_more(&a, "3");
    push(&a);
    let generations: Vec<String> = a
        .bucket()
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

    let out = a
        .meterbook(["sync", "restore", "--generation", "1"])
        .expect_code(2);
    assert!(out.stderr.contains("kept generations: 2, 3"));

    let out = a
        .meterbook(["sync", "restore", "--generation", "2"])
        .expect_code(0);
    assert!(out.stdout.contains("restored generation 2"));
    assert!(out.stdout.contains("as generation 4"));
    assert_eq!(dump(&a), at_two);
    let meta = a.bucket().metadata(STATE_KEY);
    assert_eq!(meta["meterbook-generation"], "4");
    assert_eq!(meta["meterbook-restored-from"], "2");

    // Another host gets the restored content.
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&b), at_two);
}

#[test]
fn a_state_deleted_by_hand_is_an_error_not_a_fresh_start() {
    let a = first_host_with_usage("deleted", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let pushed = dump(&a);
    a.bucket().delete(STATE_KEY);

    for action in ["pull", "push"] {
        let out = a.meterbook(["sync", action]).expect_code(4);
        assert!(out.stderr.contains("is gone"), "{}", out.stderr);
        assert!(out.stderr.contains("sync restore --generation"));
    }
    assert_eq!(dump(&a), pushed);

    a.meterbook(["sync", "restore", "--generation", "1"])
        .expect_code(0);
    assert_eq!(a.bucket().metadata(STATE_KEY)["meterbook-generation"], "2");
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
    let state = env.path("metering_state.json");
    std::fs::write(&state, MONTHLY_STATE).unwrap();
    env.meterbook(["import-state", "--from"])
        .arg(&state)
        .expect_code(0);
    load_grants(env, user);
}

/// Loads a grant for `user` from `grants.csv` in the host's folder.
fn load_grants(env: &TestEnv, user: &str) {
    let grants = env.path("grants.csv");
    std::fs::write(
        &grants,
        format!("user,amount,start\n{user},10,2025-06-01\n"),
    )
    .unwrap();
    // 3: no billing line item names the user yet.
    env.meterbook(["costs", "grants", "load"])
        .arg(&grants)
        .expect_code(3);
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
    let a = first_host_with_usage("unpushed", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    // B was never synced: its own ingest (which any ingest repeats), an import and grants.
    let b = another_host_with_usage(&a, "4");
    import_and_grant(&b, "ada");
    let kept = dump_of(&b, &KEPT_TABLES);
    assert!(kept.iter().any(|r| r.starts_with("cost_grants: ")));

    let out = b.meterbook(["sync", "pull"]).expect_code(0);
    assert!(
        out.stdout
            .contains("keeping 1 submissions, 1 predecessor imports and the cost tables"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("dropped 4 usage files ingested here"),
        "{}",
        out.stderr
    );
    assert_eq!(dump_of(&b, &USAGE_TABLES), dump_of(&a, &USAGE_TABLES));
    assert_eq!(dump_of(&b, &KEPT_TABLES), kept);
    let status = b.meterbook(["sync", "status"]).expect_code(0).stdout;
    assert!(status.contains("unpushed changes: yes"), "{status}");

    // Pushed, they reach every host.
    b.meterbook(["sync", "push"]).expect_code(0);
    let c = a.another_host();
    c.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&c), dump(&b));

    // --discard-local takes the state as it is.
    let d = another_host_with_usage(&a, "3");
    import_and_grant(&d, "bob");
    d.meterbook(["sync", "pull", "--discard-local"])
        .expect_code(0);
    assert_eq!(dump(&d), dump(&b));
}

#[test]
fn cost_tables_changed_on_both_sides_keep_the_states_and_say_what_to_load_again() {
    let a = first_host_with_usage("costs", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    import_and_grant(&a, "ada");
    a.meterbook(["sync", "push"]).expect_code(0);
    import_and_grant(&b, "bob");

    let out = b.meterbook(["sync", "pull"]).expect_code(3);
    let err = out.stderr;
    assert!(
        err.contains("only one version can be kept: the state's"),
        "{err}"
    );
    let grants = b.path("grants.csv");
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
    b.meterbook(["sync", "push"]).expect_code(0);
    a.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(
        a.count("SELECT COUNT(*) FROM cost_grants WHERE user = 'bob'"),
        1
    );
}

/// Temporary files a sync left beside the ledger (snapshots, downloads, their journals).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ledger.sqlite.") || n.ends_with("-journal"))
        .collect()
}

#[test]
fn an_unreachable_store_fails_and_leaves_the_ledger_as_it_is() {
    let a = first_host_with_usage("outage", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    ingest_more(&a, "3");
    let before = dump(&a);
    for action in [&["sync", "push"][..], &["sync", "pull", "--discard-local"]] {
        let out = a
            .meterbook(action)
            .s3_endpoint("http://127.0.0.1:1")
            .expect_code(1);
        assert!(out.stderr.contains(&state_url(&a)), "{}", out.stderr);
        assert_eq!(dump(&a), before, "{action:?}");
        assert_eq!(leftovers(a.dir.path()), Vec::<String>::new(), "{action:?}");
    }
    assert_eq!(a.bucket().metadata(STATE_KEY)["meterbook-generation"], "1");
}

/// `meterbook sync lease args` with a lease of 2 s.
fn lease(env: &TestEnv, args: &[&str]) -> TestCommand {
    env.meterbook(["sync", "lease"])
        .args(args)
        .args(["--lease-seconds", "2"])
}

/// Polls `lease show` until it says `wanted`, or fails after `limit`.
fn wait_for_lease(env: &TestEnv, wanted: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let shown = lease(env, &["show"]).expect_code(0).stdout;
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
    let a = first_host("lease");
    let b = a.another_host();
    let first = lease(&a, &["acquire"]).expect_code(0);
    let holder = first
        .stdout
        .split(" as ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_string();

    let err = lease(&b, &["acquire"]).expect_code(4).stderr;
    assert!(err.contains("held until"), "{err}");
    assert!(err.contains(&holder), "{err}");

    // Nobody renews the first lease (its process ended): it expires and the next one takes over.
    wait_for_lease(&b, "expired at", Duration::from_secs(10));
    let third = lease(&b, &["acquire"]).expect_code(0);
    assert!(third.stderr.contains("taking over an expired lease"));
    assert!(!third.stdout.contains(&holder));
}

#[test]
fn a_held_lease_is_renewed_while_working_and_released_at_the_end() {
    let a = first_host("renew");
    let b = a.another_host();
    // Held for 5 s with a 2 s lease: only renewals keep it.
    let holder = lease(&a, &["acquire", "--hold", "5"]).spawn();
    wait_for_lease(&b, "held until", Duration::from_secs(10));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        lease(&b, &["acquire"]).expect_code(4);
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = holder.expect_code(0);
    assert!(out.stdout.contains("released the lease"));
    let shown = lease(&b, &["show"]).expect_code(0).stdout;
    assert!(shown.contains("released by"), "{shown}");
    lease(&b, &["acquire", "--wait"]).expect_code(0);
}

#[test]
fn a_waiting_acquirer_gets_the_lease_when_it_is_released() {
    let a = first_host("wait");
    let b = a.another_host();
    lease(&a, &["acquire"]).expect_code(0);
    let waiter = b
        .meterbook([
            "sync",
            "lease",
            "acquire",
            "--wait",
            "--lease-seconds",
            "30",
        ])
        .spawn();
    let released = lease(&a, &["release"]).expect_code(0);
    assert!(released.stdout.contains("released the lease held until"));
    let out = waiter.expect_code(0);
    assert!(out.stdout.contains("acquired the lease"));
}

#[test]
fn doctor_on_a_good_setup_says_ok_to_every_check() {
    let env = first_host("doctor").with_emulator(&[]);
    ingest_more(&env, "2");
    let bucket = env.bucket();
    bucket.put(
        MARKER_KEY,
        &std::fs::read(env.export().join(MARKER_KEY)).unwrap(),
    );
    bucket.put(
        "omnistrate-metering/pg/PROD/pt-1/2025/06/01/00/sub-1.json",
        b"[]",
    );
    env.meterbook(["sync", "push"]).expect_code(0);
    let text = env
        .meterbook(["doctor"])
        .env("S3_BUCKET_NAME", &bucket.name)
        .env(
            "DIMENSION_memory_gb_hours",
            "memory_byte_hours / 1073741824",
        )
        .expect_code(0)
        .stdout;
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
    assert!(bucket.keys().iter().all(|k| !k.contains("doctor")));
}

#[test]
fn doctor_names_the_failing_check_and_exits_2() {
    let env = first_host("doctor-bad");
    let out = env
        .meterbook(["doctor"])
        .env("S3_BUCKET_NAME", &env.bucket().name)
        .env("DIMENSION_bad", "cpu_core_hours * nope")
        .expect_code(2);
    let text = out.stdout;
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
        out.stderr.contains("3 of 10 checks failed"),
        "{}",
        out.stderr
    );
    assert!(!env.ledger.exists(), "doctor created a ledger");
}

/// A tmpfs of `size` mounted for the test's lifetime (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = TestCommand::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .succeeds();
        ok.then_some(Tmpfs(dir))
    }

    /// Fills the file system up to the last `leave` bytes.
    fn fill(&self, leave: u64) {
        let stat = TestCommand::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .expect_code(0);
        let avail: u64 = stat.stdout.lines().nth(1).unwrap().trim().parse().unwrap();
        let filler = vec![0u8; avail.saturating_sub(leave) as usize];
        let _ = std::fs::write(self.0.join("filler"), filler);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = TestCommand::new("umount").arg(&self.0).succeeds();
    }
}

#[test]
fn a_full_disk_while_writing_the_snapshot_is_a_clear_error_and_keeps_the_state() {
    let mut env = first_host_with_usage("diskfull", "4");
    env.meterbook(["sync", "push"]).expect_code(0);
    ingest_more(&env, "8");
    let Some(disk) = Tmpfs::mount(env.path("small"), "2m") else {
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
        env.path("ledger.sqlite.sync.json"),
        disk.0.join("ledger.sqlite.sync.json"),
    )
    .unwrap();
    env.ledger = ledger;
    let before = dump(&env);
    disk.fill(8192);

    let out = env.meterbook(["sync", "push"]).expect_code(1);
    assert!(out.stderr.contains("no space left"), "{}", out.stderr);
    assert_eq!(
        env.bucket().metadata(STATE_KEY)["meterbook-generation"],
        "1"
    );
    assert_eq!(dump(&env), before);
    assert_eq!(leftovers(&disk.0), Vec::<String>::new());

    // Pulling onto the full disk fails the same way and keeps the local ledger.
    let out = env
        .meterbook(["sync", "pull", "--discard-local"])
        .expect_code(1);
    assert!(out.stderr.contains("no space left"), "{}", out.stderr);
    assert_eq!(dump(&env), before);
    assert_eq!(leftovers(&disk.0), Vec::<String>::new());
}

#[test]
fn a_file_that_is_not_a_ledger_is_never_replaced_by_a_pull() {
    let a = first_host_with_usage("foreign", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let b = a.another_host();
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
        let out = b.meterbook(args).expect_code(2);
        assert!(
            out.stderr.contains("not a meterbook ledger"),
            "{args:?}: {}",
            out.stderr
        );
        assert_eq!(file_digests(b.dir.path()), before, "{args:?}");
    }
}

/// The keys of the state's segments on S3, sorted.
fn segment_keys(bucket: &Bucket) -> Vec<String> {
    bucket.keys_under(&format!("{STATE_KEY}.segments/"))
}

/// The hashes of the state's segments on S3.
fn segment_hashes(bucket: &Bucket) -> BTreeSet<String> {
    segment_keys(bucket)
        .iter()
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect()
}

/// The current manifest, as JSON.
fn manifest(bucket: &Bucket) -> serde_json::Value {
    serde_json::from_slice(&bucket.get(STATE_KEY)).expect("the state is a JSON manifest")
}

/// The hashes a manifest names: its segments and the ones it retains for kept generations.
fn named_in(manifest: &serde_json::Value) -> BTreeSet<String> {
    ["segments", "retained"]
        .iter()
        .flat_map(|list| manifest[list].as_array().unwrap().iter())
        .map(|entry| entry[0].as_str().unwrap().to_string())
        .collect()
}

/// `N` in a line "... (N new segments, ...)" or "... (N of M segments downloaded)".
fn count_before(text: &str, marker: &str) -> usize {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no '{marker}' in {text}"));
    text[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_push_uploads_only_new_segments_and_a_pull_downloads_only_missing_ones() {
    let a = first_host("incremental");
    a.generate(&["--subscriptions", "20", "--hours", "96"]);
    a.ingest().expect_code(0);
    let push = ["sync", "push", "--segment-size", "64KiB"];
    let first = a.meterbook(push).expect_code(0).stdout;
    let all = count_before(&first, " new segments");
    assert_eq!(segment_keys(a.bucket()).len(), all);
    assert!(all > 10, "{first}");
    let state = manifest(a.bucket());
    assert_eq!(state["format"], 2);
    assert_eq!(state["segment_size"], 64 << 10);
    assert_eq!(a.bucket().metadata(STATE_KEY)["meterbook-format"], "2");

    let b = a.another_host();
    let out = b.meterbook(["sync", "pull"]).expect_code(0).stdout;
    assert!(
        out.contains(&format!("{all} of {all} segments downloaded")),
        "{out}"
    );
    assert_eq!(dump(&a), dump(&b));

    // One more hour (of July, in an export of its own): a few segments change; the rest are
    // shared with generation 1.
    let july = a.path("july");
    python_script("scripts/gen-export.py")
        .args([
            "--subscriptions",
            "20",
            "--month",
            "2025-07",
            "--hours",
            "1",
            "--out",
        ])
        .arg(&july)
        .expect_code(0);
    a.meterbook(["ingest", "--all-months", "--source"])
        .arg(&july)
        .expect_code(0);
    let second = a.meterbook(push).expect_code(0).stdout;
    let new = count_before(&second, " new segments");
    // A new hour changes the end of the file and the right-most pages of each b-tree: about a
    // dozen segments, whatever the ledger's size.
    assert!(new >= 1 && new * 4 < all, "{new} of {all}");
    let hashes = |m: &serde_json::Value| -> BTreeSet<String> {
        m["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s[0].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        hashes(&manifest(a.bucket()))
            .difference(&hashes(&state))
            .count(),
        new,
        "uploaded exactly the segments generation 1 did not have"
    );
    assert_eq!(
        segment_keys(a.bucket()).len(),
        all + new,
        "generations share segments"
    );

    // B is one generation behind: it downloads only what changed, into its ledger.
    let out = b.meterbook(["sync", "pull"]).expect_code(0).stdout;
    let downloaded = count_before(&out, " of ");
    assert!(downloaded <= new, "{out}");
    assert_eq!(dump(&a), dump(&b));
    assert_eq!(
        b.count("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"),
        1
    );
    let status = b.meterbook(["sync", "status"]).expect_code(0).stdout;
    assert!(status.contains("remote format: 2"), "{status}");
    assert!(status.contains("unpushed changes: no"), "{status}");
}

/// A state as meterbook before segments wrote it (format 1): the whole ledger of `env`,
/// zstd-compressed, with its metadata, at generation `generation`, and its kept copy.
fn put_format_1(env: &TestEnv, generation: u64) {
    let bytes = changed_copy(env, "SELECT 1");
    let meta: HashMap<String, String> = [
        ("generation", generation.to_string()),
        ("sha256", hex::encode(Sha256::digest(&bytes))),
        ("content", "format-1 content".to_string()),
        ("schema-version", "9".to_string()),
        ("compression", "zstd".to_string()),
        ("size", bytes.len().to_string()),
        ("pushed-at", "2025-07-01T00:00:00Z".to_string()),
        ("pushed-by", "old-host".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("meterbook-{k}"), v))
    .collect();
    let body = zstd::encode_all(&bytes[..], 3).unwrap();
    let bucket = env.bucket();
    bucket.put_with_metadata(STATE_KEY, &body, meta.clone());
    bucket.put_with_metadata(
        &format!("{STATE_KEY}.generations/{generation:020}"),
        &body,
        meta,
    );
}

#[test]
fn a_state_of_format_1_is_read_restored_and_converted_by_the_next_push() {
    let old = first_host_with_usage("format-1", "3");
    put_format_1(&old, 7);

    let b = old.another_host();
    let out = b.meterbook(["sync", "pull"]).expect_code(0).stdout;
    assert!(out.contains("pulled generation 7"), "{out}");
    assert_eq!(dump(&b), dump(&old));
    let again = b.meterbook(["sync", "pull"]).expect_code(0).stdout;
    assert!(again.contains("up to date: generation 7"), "{again}");

    // The next push converts it: a manifest, segments, generation 8.
    ingest_more(&b, "5");
    b.meterbook(["sync", "push"]).expect_code(0);
    assert_eq!(manifest(b.bucket())["generation"], 8);
    assert_eq!(b.bucket().metadata(STATE_KEY)["meterbook-format"], "2");
    let c = old.another_host();
    c.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&c), dump(&b));

    // The kept copy of generation 7 is still format 1, and restores.
    let out = c
        .meterbook(["sync", "restore", "--generation", "7"])
        .expect_code(0)
        .stdout;
    assert!(out.contains("as generation 9"), "{out}");
    assert_eq!(dump(&c), dump(&old));
    assert_eq!(manifest(c.bucket())["restored_from"], 7);
    let d = old.another_host();
    d.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&d), dump(&old));
}

#[test]
fn a_state_of_a_newer_format_is_refused_naming_both_versions() {
    let a = first_host_with_usage("newer-format", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    let before = file_sha(&b.ledger);
    let mut meta = a.bucket().metadata(STATE_KEY);
    meta.insert("meterbook-format".into(), "3".into());
    meta.insert("meterbook-generation".into(), "2".into());
    a.bucket()
        .put_with_metadata(STATE_KEY, br#"{"format": 3, "generation": 2}"#, meta);
    for action in ["pull", "push", "status"] {
        let err = b.meterbook(["sync", action]).expect_code(2).stderr;
        assert!(
            err.contains("format 3, but this meterbook reads formats 1 to 2"),
            "{action}: {err}"
        );
    }
    assert_eq!(file_sha(&b.ledger), before);
}

#[test]
fn a_damaged_or_missing_segment_is_refused_by_pull_and_verify_and_the_ledger_is_kept() {
    let a = first_host_with_usage("bad-segment", "6");
    a.meterbook(["sync", "push"]).expect_code(0);
    let out = a.meterbook(["sync", "verify"]).expect_code(0).stdout;
    assert!(out.contains("verified generation 1"), "{out}");
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    let bucket = a.bucket();
    let first = named_in(&manifest(bucket));
    ingest_more(&a, "9");
    a.meterbook(["sync", "push"]).expect_code(0);
    let before = file_sha(&b.ledger);

    // The last segment of generation 2, which generation 1 did not have (usage grows at the end).
    let state = manifest(bucket);
    let changed = state["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap().to_string())
        .next_back()
        .unwrap();
    assert!(!first.contains(&changed));
    let key = format!("{STATE_KEY}.segments/{changed}");
    let good = bucket.get(&key);
    let (size, segment) = (
        state["size"].as_u64().unwrap(),
        state["segment_size"].as_u64().unwrap(),
    );
    let last_len = size - (size - 1) / segment * segment;
    let other = zstd::encode_all(&vec![7u8; last_len as usize][..], 3).unwrap();
    for (name, body, says) in [
        ("damaged", Some(other), "its BLAKE3 is"),
        ("missing", None, "it is missing"),
    ] {
        match body {
            Some(body) => bucket.put(&key, &body),
            None => bucket.delete(&key),
        }
        for action in [&["sync", "pull"][..], &["sync", "verify"]] {
            let err = b.meterbook(action).expect_code(1).stderr;
            assert!(
                err.contains(&changed) && err.contains(says),
                "{name} {action:?}: {err}"
            );
            assert_eq!(file_sha(&b.ledger), before, "{name} {action:?}");
            assert_eq!(leftovers(b.dir.path()), Vec::<String>::new());
        }
    }
    bucket.put(&key, &good);
    b.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&b), dump(&a));
}

#[test]
fn segments_no_kept_generation_names_are_deleted_once_older_than_the_grace_period() {
    let a = first_host_with_usage("gc", "24");
    let push = |grace: &str| {
        a.meterbook(["sync", "push", "--keep-generations", "2"])
            .args(["--segment-size", "64KiB", "--integrity-check-every", "1"])
            .args(["--gc-grace-seconds", grace])
            .expect_code(0);
    };
    push("3600");
    // A segment nothing names (as a push that died before its manifest leaves one).
    let stray = format!("{STATE_KEY}.segments/{}", "0".repeat(64));
    a.bucket().put(&stray, b"stray");
    for hours in ["25", "26", "27"] {
        ingest_more(&a, hours);
        push("3600");
    }
    // Within the grace period nothing is deleted, named or not.
    let kept = segment_keys(a.bucket());
    assert!(kept.contains(&stray));
    assert!(
        kept.len() > named_in(&manifest(a.bucket())).len() + 1,
        "generations 1 and 2 left segments"
    );

    ingest_more(&a, "28");
    push("0");
    assert_eq!(
        segment_hashes(a.bucket()),
        named_in(&manifest(a.bucket())),
        "exactly the segments the kept generations name"
    );
    // Both kept generations restore.
    for generation in ["4", "5"] {
        a.meterbook(["sync", "verify", "--generation", generation])
            .expect_code(0);
    }
}

#[test]
fn every_generation_pushed_while_another_process_writes_is_a_consistent_prefix() {
    let a = first_host_with_usage("writer", "2");
    a.meterbook(["sync", "push"]).expect_code(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let db = a.db();
            db.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                db.execute(
                    "INSERT INTO ingest_runs (source, scope, started_at) VALUES (?1, 'writer', 'now')",
                    [format!("w{n}")],
                )
                .unwrap();
            }
            n
        });
        let mut last = 0;
        for round in 0..4 {
            a.meterbook(["sync", "push", "--integrity-check-every", "1"])
                .expect_code(0);
            let b = a.another_host();
            b.meterbook(["sync", "pull"]).expect_code(0);
            let ok =
                b.count("SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'");
            assert_eq!(ok, 1, "round {round}");
            // The rows of the writer are w1..wN with no gap: a prefix of what it wrote.
            let (count, max) = (
                b.count("SELECT COUNT(*) FROM ingest_runs WHERE scope = 'writer'"),
                b.count(
                    "SELECT COALESCE(MAX(CAST(substr(source, 2) AS INTEGER)), 0)
                     FROM ingest_runs WHERE scope = 'writer'",
                ),
            );
            assert_eq!(count, max, "round {round}");
            assert!(count >= last, "round {round}: {count} after {last}");
            last = count;
        }
        stop.store(true, Ordering::SeqCst);
        let written = writer.join().unwrap();
        assert!(
            written as i64 > last,
            "the writer kept writing during the pushes"
        );
    });
}

#[test]
fn a_push_killed_between_its_segments_and_its_manifest_leaves_only_unnamed_segments() {
    let a = first_host_with_usage("killed-push", "3");
    a.meterbook(["sync", "push"]).expect_code(0);
    let before = manifest(a.bucket());
    ingest_more(&a, "7");
    a.meterbook(["sync", "push"])
        .env("METERBOOK_FAILPOINT", "after-segments")
        .expect_killed();
    assert_eq!(
        manifest(a.bucket()),
        before,
        "the state is still generation 1"
    );
    let stored = segment_hashes(a.bucket());
    let named = named_in(&before);
    assert!(
        stored.iter().any(|k| !named.contains(k)),
        "segments were uploaded"
    );
    assert!(named.is_subset(&stored));

    // Another host gets generation 1 whole, and the next push goes on.
    let b = a.another_host();
    b.meterbook(["sync", "pull"]).expect_code(0);
    b.meterbook(["sync", "verify"]).expect_code(0);
    a.meterbook(["sync", "push"]).expect_code(0);
    assert_eq!(manifest(a.bucket())["generation"], 2);
    b.meterbook(["sync", "pull"]).expect_code(0);
    assert_eq!(dump(&b), dump(&a));
}

#[test]
fn a_state_is_assembled_by_hand_with_boto3_and_zstd() {
    if !TestCommand::new("zstd").arg("--version").succeeds() {
        eprintln!("SKIPPED: no zstd command");
        return;
    }
    let a = first_host_with_usage("by-hand", "30");
    let push = ["sync", "push", "--segment-size", "64KiB"];
    a.meterbook(push).expect_code(0);
    ingest_more(&a, "31");
    a.meterbook(push).expect_code(0);
    let by_hand = a.another_host();
    // The Python of scripts/s3-server's virtualenv, which has boto3.
    let venv = std::env::var("METERBOOK_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/meterbook/venv", std::env::var("HOME").unwrap()));
    let out = TestCommand::new(format!("{venv}/bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/assemble-state"))
        .arg(state_url(&a))
        .arg(&by_hand.ledger)
        .args(["--endpoint-url", &crate::s3::endpoint()])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .expect_code(0);
    assert!(
        out.stderr.contains("PRAGMA integrity_check ok"),
        "{}",
        out.stderr
    );
    assert_eq!(dump(&by_hand), dump(&a));
}
